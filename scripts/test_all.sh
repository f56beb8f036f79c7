#!/usr/bin/env bash
# Runs the whole suite - native C tests, the TypeScript suite under Deno, the same files
# under Bun - and ends with one line "N passed, N failed, N skipped" summing all three.
# Used by `deno task test`; .ci/run calls that task.
#
#   bash scripts/test_all.sh                  # everything
#   bash scripts/test_all.sh --no-native F... # only the TypeScript files F, under both runtimes
#
# Skipped tests are counted by why they skip (tests/helpers/skip.ts writes one line per
# skipped test to $KVPORT_SKIP_LOG; the native tests print "skipped: <reason>"). Under CI
# (CI=true, or KVPORT_REQUIRE_NATIVE=1) only tests that need a GPU or NIXL (or test the
# other runtime's behaviour) may skip: any other skip, or a skip the helper did not label,
# fails the run.
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
strict=0
for v in "${CI:-}" "${KVPORT_REQUIRE_NATIVE:-}"; do
  case "${v,,}" in 1 | true | yes) strict=1 ;; esac
done

native=1
if [ "${1:-}" = "--no-native" ]; then
  native=0
  shift
fi
files=("$@")

run() { # name, command...
  local name=$1
  shift
  echo "=== $name: $*"
  KVPORT_SKIP_LOG="$logs/$name.skips" "$@" 2>&1 | tee "$logs/$name.log"
  local rc=${PIPESTATUS[0]}
  [ "$rc" -eq 0 ] || { echo "=== $name failed (exit $rc)"; status=1; }
}

# The leak tests measure the whole process's memory and descriptors, so they run in a
# process of their own, where no other file's agents (or a loaded NIXL) share the count.
leak=tests/agent_leak_test.ts
runs=(deno bun)
if [ ${#files[@]} -eq 0 ]; then
  [ "$native" -eq 1 ] && run native make -C native test
  run deno "$deno_bin" test -A --ignore="$leak" tests/
  run deno_leak "$deno_bin" test -A "$leak"
  run bun "$bun_bin" test --timeout 120000 --path-ignore-patterns="$leak" tests/
  run bun_leak "$bun_bin" test --timeout 120000 "$leak"
  runs=(deno deno_leak bun bun_leak)
else
  [ "$native" -eq 1 ] && run native make -C native test
  run deno "$deno_bin" test -A "${files[@]}"
  bun_files=()
  for f in "${files[@]}"; do case $f in /*) bun_files+=("$f") ;; *) bun_files+=("./$f") ;; esac; done
  run bun "$bun_bin" test --timeout 120000 "${bun_files[@]}"
fi

strip() { sed -e 's/\x1b\[[0-9;]*m//g' "$1"; }
passed=0
failed=0
skipped=0
declare -A by_reason=()
add_reason() { by_reason[$1]=$((${by_reason[$1]:-0} + $2)); }
summary=""

if [ "$native" -eq 1 ]; then
  # native: "N passed, N failed"; a skipped test passes after a line "    skipped: why"
  read -r np nf < <(strip "$logs/native.log" | sed -n 's/^\([0-9]\+\) passed, \([0-9]\+\) failed.*/\1 \2/p' | tail -1)
  np=${np:-0}
  nf=${nf:-1}
  ns=0
  while IFS= read -r why; do
    ns=$((ns + 1))
    case $why in
      *CUDA* | *GPU* | *cuda*) add_reason "needs GPU" 1 ;;
      *NIXL* | *nixl*) add_reason "needs NIXL" 1 ;;
      *)
        add_reason other 1
        echo "native: ${why:0:200}" >>"$logs/other.txt"
        ;;
    esac
  done < <(strip "$logs/native.log" | sed -n 's/^ \+skipped: \(.*\)/\1/p')
  passed=$((passed + np - ns))
  failed=$((failed + nf))
  skipped=$((skipped + ns))
  summary="native $((np - ns))/$nf/$ns"
fi

# deno: "ok | N passed [(S steps)] | N failed | N ignored [(S steps)]"
deno_counts() {
  strip "$logs/$1.log" | grep -E '^(ok|FAILED) \| [0-9]+ passed' | tail -1 | awk '{
    p = 0; f = 1; s = 0
    if (match($0, /[0-9]+ passed/)) p = substr($0, RSTART, RLENGTH) + 0
    if (match($0, /[0-9]+ failed/)) f = substr($0, RSTART, RLENGTH) + 0
    if (match($0, /[0-9]+ ignored( \([0-9]+ steps?\))?/)) {
      t = substr($0, RSTART, RLENGTH); s = t + 0
      if (match(t, /\([0-9]+/)) s += substr(t, RSTART + 1, RLENGTH - 1) + 0
    }
    print p, f, s
  }'
}
# bun: " N pass" / " N fail" / " N skip"
bun_counts() {
  local p f s
  p=$(strip "$logs/$1.log" | sed -n 's/^ *\([0-9]\+\) pass$/\1/p' | tail -1)
  f=$(strip "$logs/$1.log" | sed -n 's/^ *\([0-9]\+\) fail$/\1/p' | tail -1)
  s=$(strip "$logs/$1.log" | sed -n 's/^ *\([0-9]\+\) skip$/\1/p' | tail -1)
  echo "${p:-0} ${f:-1} ${s:-0}"
}

for name in "${runs[@]}"; do
  case $name in deno*) counts=$(deno_counts "$name") ;; *) counts=$(bun_counts "$name") ;; esac
  read -r p f s <<<"${counts:-0 1 0}"
  passed=$((passed + p))
  failed=$((failed + f))
  skipped=$((skipped + s))
  labelled=0
  if [ -s "$logs/$name.skips" ]; then
    while IFS=$'\t' read -r category _runtime _test why; do
      labelled=$((labelled + 1))
      add_reason "$category" 1
      [ "$category" = other ] && echo "$name: ${why:0:200}" >>"$logs/other.txt"
    done <"$logs/$name.skips"
  fi
  # A skip the runner counted that tests/helpers/skip.ts did not see (node:test's own
  # skip): nobody said why.
  if [ "$s" -gt "$labelled" ]; then
    add_reason unlabelled $((s - labelled))
    echo "$name: $((s - labelled)) skipped test(s) not through tests/helpers/skip.ts" >>"$logs/other.txt"
  fi
  summary="${summary:+$summary, }$name $p/$f/$s"
done

reasons=""
for r in "needs GPU" "needs NIXL" "needs Deno" "needs Bun" other unlabelled; do
  reasons="${reasons:+$reasons, }$r ${by_reason[$r]:-0}"
done
if [ -s "$logs/other.txt" ]; then
  echo "skipped for a reason other than a GPU or NIXL (count, run: reason):"
  sort "$logs/other.txt" | uniq -c
fi
echo "$summary (passed/failed/skipped)"
echo "skipped by reason: $reasons"
bad_skips=$((${by_reason[other]:-0} + ${by_reason[unlabelled]:-0}))
if [ "$strict" -eq 1 ] && [ "$bad_skips" -gt 0 ]; then
  echo "=== CI: $bad_skips test(s) skipped for a reason other than a GPU or NIXL (listed above)"
  status=1
fi
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ] || status=1
exit $status
