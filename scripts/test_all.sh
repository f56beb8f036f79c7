#!/usr/bin/env bash
# Runs the whole suite - native C tests, the TypeScript suite under Deno, the same files
# under Bun - and ends with one line "N passed, N failed" summing all three.
# Used by `deno task test`; .ci/run calls that task.
set -uo pipefail
cd "$(dirname "$0")/.."
deno_bin=${DENO_BIN:-node_modules/deno/deno}
bun_bin=${BUN_BIN:-node_modules/.bin/bun}
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
status=0
# NIXL reads NIXL_LOG_LEVEL once, when libnixl.so loads: in a run of every file that is
# whichever file loads NIXL first, not tests/helpers/nixl_env.ts, so set it for the run
# (NIXL's warnings that the tests provoke on purpose stay off stderr). UCX likewise reads
# UCX_NET_DEVICES when it starts: keep it on loopback. A caller's own values win.
export NIXL_LOG_LEVEL=${NIXL_LOG_LEVEL:-ERROR} UCX_NET_DEVICES=${UCX_NET_DEVICES:-lo}

run() { # name, command...
  local name=$1
  shift
  echo "=== $name: $*"
  "$@" 2>&1 | tee "$logs/$name.log"
  local rc=${PIPESTATUS[0]}
  [ "$rc" -eq 0 ] || { echo "=== $name failed (exit $rc)"; status=1; }
}

# The leak tests measure the whole process's memory and descriptors, so they run in a
# process of their own, where no other file's agents (or a loaded NIXL) share the count.
leak=tests/agent_leak_test.ts
run native make -C native test
run deno "$deno_bin" test -A --ignore="$leak" tests/
run deno_leak "$deno_bin" test -A "$leak"
run bun "$bun_bin" test --timeout 120000 --path-ignore-patterns="$leak" tests/
run bun_leak "$bun_bin" test --timeout 120000 "$leak"

strip() { sed -e 's/\x1b\[[0-9;]*m//g' "$1"; }
passed=0
failed=0
add() { passed=$((passed + ${1:-0})); failed=$((failed + ${2:-0})); }
# native: "N passed, N failed"
read -r np nf < <(strip "$logs/native.log" | sed -n 's/^\([0-9]\+\) passed, \([0-9]\+\) failed.*/\1 \2/p' | tail -1)
add "${np:-0}" "${nf:-1}"
# deno: "ok | N passed | N failed" or "FAILED | N passed | N failed"
deno_counts() {
  strip "$logs/$1.log" | sed -n 's/.*| \([0-9]\+\) passed[^|]*| \([0-9]\+\) failed.*/\1 \2/p' | tail -1
}
# bun: " N pass" / " N fail"
bun_counts() {
  local p f
  p=$(strip "$logs/$1.log" | sed -n 's/^ *\([0-9]\+\) pass$/\1/p' | tail -1)
  f=$(strip "$logs/$1.log" | sed -n 's/^ *\([0-9]\+\) fail$/\1/p' | tail -1)
  echo "${p:-0} ${f:-1}"
}
summary="native ${np:-?}/${nf:-?}"
for name in deno deno_leak bun bun_leak; do
  case $name in deno*) counts=$(deno_counts $name) ;; *) counts=$(bun_counts $name) ;; esac
  read -r p f <<<"${counts:-0 1}"
  add "$p" "$f"
  summary="$summary, $name $p/$f"
done
echo "$summary (passed/failed)"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] || status=1
exit $status
