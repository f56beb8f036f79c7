#!/usr/bin/env bash
# scripts/gpu_nixl.sh - the nixl engine on a GPU machine, in one go (one device lease):
# UCX and NIXL built with CUDA (a kit made by scripts/nixl_kit.sh on a machine with the
# CUDA toolkit but no GPU), the VRAM tests with KVPORT_ENGINE=nixl, the GPU benchmark
# with both engines and raw NIXL, and GDS when NIXL has it; a short table last.
#
# Prepare (here, where the kit was built):
#   bash scripts/gpu_nixl.sh --prepare [KIT]    KIT default .device/nixl-cuda-kit.tar.xz
# which runs scripts/gpu_lease.sh --prepare (Deno, npm packages, the builtin shim in
# .device/) and copies the kit to .device/nixl-cuda-kit.tar.xz (where
# `scripts/nixl_kit.sh pack /opt/nixl-cuda .device/nixl-cuda-kit.tar.xz` puts it
# already, in the checkout that runs the GPU jobs). Carry .device, then on
# the GPU machine:
#   bash scripts/gpu_nixl.sh [all|tests|bench]  (writes $OUT/gpu_nixl_<all/tests/bench>.log with $OUT)
# "tests" and "bench" run half each (set-up, then the tests, or the benchmark), for leases
# whose commands are limited to 10 minutes; the kit stays unpacked between the two.
#
# Steps: unpack the kit to $NIXL_KIT_DIR (default /opt/nixl-cuda: the prefix it was built
# for), point NIXL_PREFIX, NIXL_PLUGIN_DIR and LD_LIBRARY_PATH at it, check that UCX sees
# its CUDA transports (ucx_info -d), build our shim against the kit when a compiler is
# there (else take the kit's prebuilt libkvport*.so), then the tests and the benchmark.
#
# Rehearsal without a GPU: KVPORT_CUDART=$(sh native/tools/fake-cudart.sh) and
# NIXL_KIT_STUBS=<the kit build's cuda-extra/stubs> (libcuda.so.1 for the loader only)
# run every step; the CUDA-transport check and the nixl VRAM steps then fail, as they must
# without a GPU, and the table says so.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD

if [ "${1:-}" = "--prepare" ]; then
  set -e
  kit=${2:-.device/nixl-cuda-kit.tar.xz}
  [ -f "$kit" ] || { echo "no kit at $kit (scripts/nixl_kit.sh pack makes it)" >&2; exit 1; }
  bash scripts/gpu_lease.sh --prepare
  [ "$kit" -ef .device/nixl-cuda-kit.tar.xz ] || cp "$kit" .device/nixl-cuda-kit.tar.xz
  du -sh .device .device/*
  exit 0
fi

what=${1:-all}
case "$what" in all | tests | bench) ;; *) echo "usage: gpu_nixl.sh [--prepare [KIT] | all | tests | bench]" >&2; exit 2 ;; esac
out=${OUT:-/tmp/kvport-gpu-nixl}
mkdir -p "$out"
log=$out/gpu_nixl_$what.log
: >"$log"
exec > >(tee -a "$log") 2>&1

unxz_cat() { # unxz_cat <file.xz>: to stdout, with xz or Python's lzma
  if command -v xz >/dev/null; then xz -dc "$1"
  else python3 -c 'import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), sys.stdout.buffer)' "$1"
  fi
}

steps=()
step() { # step <seconds> <name> <command>: a hung step cannot eat the whole lease
  local limit=$1 name=$2 cmd=$3
  echo
  echo "== $name"
  local t0=$SECONDS
  timeout -k 5 "$limit" bash -c "$cmd"
  local rc=$?
  [ $rc -eq 124 ] && echo "!! $name: stopped after ${limit}s"
  steps+=("$name|$([ $rc -eq 0 ] && echo ok || echo "FAILED ($rc)")|$((SECONDS - t0))s")
  return 0
}

echo "== gpu_nixl $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -4

# ---- 1. the kit ----------------------------------------------------------------------
kitdir=${NIXL_KIT_DIR:-/opt/nixl-cuda}
kit=${NIXL_KIT:-.device/nixl-cuda-kit.tar.xz}
if [ ! -f "$kitdir/lib/x86_64-linux-gnu/libnixl.so" ]; then
  [ -f "$kit" ] || { echo "no kit: $kit (bash scripts/gpu_nixl.sh --prepare, then carry .device)"; exit 1; }
  mkdir -p "$kitdir"
  # The tar holds one folder (nixl-cuda/): strip it, so any NIXL_KIT_DIR works.
  unxz_cat "$kit" | tar -x -C "$kitdir" --strip-components=1 || { echo "kit unpack failed"; exit 1; }
fi
cat "$kitdir/VERSIONS" 2>/dev/null | awk '{print "kit: " $1 " " $3 " " substr($4,1,12)}'
export NIXL_PREFIX=$kitdir
export NIXL_PLUGIN_DIR=$kitdir/lib/x86_64-linux-gnu/plugins
# The machine's CUDA runtime first (the one its driver goes with), the kit's copy only
# when there is none; the driver's libcuda/libnvidia-ml come from the system.
cudalib=""
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/lib/x86_64-linux-gnu; do
  if ls "$d"/libcudart.so.1[0-9]* >/dev/null 2>&1; then cudalib=$d; break; fi
done
ldp=$kitdir/lib:$kitdir/lib/x86_64-linux-gnu:$kitdir/lib/deps
[ -n "$cudalib" ] && ldp=$cudalib:$ldp || ldp=$ldp:$kitdir/lib/cuda-fallback
[ -n "${NIXL_KIT_STUBS:-}" ] && ldp=$ldp:$NIXL_KIT_STUBS # rehearsal only: no driver here
export LD_LIBRARY_PATH=$ldp${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export PATH=$kitdir/bin:$PATH
# cuFile's settings for GDS: compatibility mode allowed (no nvidia-fs needed).
if [ -z "${CUFILE_ENV_PATH_JSON:-}" ]; then
  printf '{ "properties": { "allow_compat_mode": true }, "logging": { "level": "ERROR" } }\n' \
    >"$out/cufile.json"
  export CUFILE_ENV_PATH_JSON=$out/cufile.json
fi
export NIXL_LOG_LEVEL=${NIXL_LOG_LEVEL:-WARN}
# A shim that does not load is a failure here, not a skip (as under CI).
export KVPORT_REQUIRE_NATIVE=1
export NCCL_NVLS_ENABLE=0 # no NVLink SHARP / multicast objects on the lent machines
echo "NIXL_PREFIX=$NIXL_PREFIX"
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"

step 30 "UCX sees its CUDA transports (ucx_info -d: cuda_copy, cuda_ipc)" \
  "ucx_info -v | head -3; ucx_info -d | grep -E 'Transport|Device' | sort | uniq -c;
   ucx_info -d | grep -q 'Transport: cuda_copy' && ucx_info -d | grep -q 'Transport: cuda_ipc'"

# ---- 2. runtime and shim -------------------------------------------------------------
deno=node_modules/deno/deno
if ! "$deno" --version >/dev/null 2>&1 && [ -f .device/deno.xz ]; then
  unxz_cat .device/deno.xz >/tmp/kvport-deno && chmod +x /tmp/kvport-deno && deno=/tmp/kvport-deno
fi
if [ -f .device/node_modules.tar.xz ] && [ ! -d node_modules/zod ]; then
  unxz_cat .device/node_modules.tar.xz | tar -x
fi
"$deno" --version | head -1
# Our shim against the kit: built here when g++ is there (the checkout may be newer than
# the kit), else the kit's copies (built with it). Either way libkvport_nixl.so sits next
# to libkvport.so, where the shim looks for it.
mkdir -p native/build
if command -v g++ >/dev/null && command -v make >/dev/null &&
  make -C native -s NIXL_PREFIX="$kitdir" -j"$(nproc)" >"$out/make.log" 2>&1 &&
  [ -f native/build/libkvport_nixl.so ]; then
  echo "shim: built here against the kit ($(tail -1 "$out/make.log"))"
else
  echo "shim: the kit's prebuilt copies (no compiler, or the build failed: $out/make.log)"
  tail -5 "$out/make.log" 2>/dev/null | sed 's/^/  make: /'
  cp -f "$kitdir"/kvport/* native/build/
fi
[ -f native/build/kvport-limits ] || cp -f "$kitdir/kvport/kvport-limits" native/build/
[ -f native/build/nixl-raw ] || cp -f "$kitdir/kvport/nixl-raw" native/build/

rt_test="'$deno' test -A --no-check"
rt_run="'$deno' run -A --no-check"
step 60 "nixl engine loads the CUDA NIXL (kvport check --engine nixl)" \
  "$rt_run cli/main.ts check --engine nixl"

# ---- 3. tests on the nixl engine -----------------------------------------------------
if [ "$what" != bench ]; then
step 300 "VRAM tests, KVPORT_ENGINE=nixl (agent, two processes, channels, PD cuda)" \
  "KVPORT_ENGINE=nixl $rt_test tests/agent_vram_test.ts tests/gpu_pair_test.ts \
     tests/channel_vram_test.ts tests/pd_vram_test.ts"
step 200 "NIXL tests (engine, pair, restart, storage) with the CUDA NIXL" \
  "UCX_NET_DEVICES=\${UCX_NET_DEVICES:-lo} $rt_test tests/nixl_engine_test.ts tests/nixl_pair_test.ts \
     tests/nixl_restart_test.ts tests/nixl_storage_test.ts"
if [ -f "$NIXL_PLUGIN_DIR/libplugin_GDS.so" ]; then
  step 200 "GDS: VRAM <-> FILE and NixlStorageBackend nixl_backend GDS, every byte checked" \
    "KVPORT_GDS_DIR=\${KVPORT_GDS_DIR:-$out} $rt_test tests/nixl_gds_test.ts"
else
  steps+=("GDS|skipped: the kit has no GDS plugin|0s")
fi
fi

# ---- 4. the GPU benchmark: both engines and raw NIXL ----------------------------------
bench_json=$out/gpu_bench_nixl.json
[ "$what" = tests ] && : >"$bench_json"
[ "$what" != tests ] && step 400 "bench/gpu_bench.ts (builtin, nixl and raw NIXL VRAM -> VRAM)" \
  "$rt_run bench/gpu_bench.ts | tee '$out/gpu_bench_nixl.txt';
   rc=\${PIPESTATUS[0]}; grep '^{' '$out/gpu_bench_nixl.txt' | tail -1 >'$bench_json'; exit \$rc"

# ---- summary, last --------------------------------------------------------------------
echo
echo "== summary"
printf '| %-78s | %-10s | %5s |\n' step result time
for s in "${steps[@]}"; do
  IFS='|' read -r n r t <<<"$s"
  printf '| %-78s | %-10s | %5s |\n' "$n" "$r" "$t"
done
python3 - "$bench_json" <<'EOF'
import json, sys
try:
    bench = json.loads(open(sys.argv[1]).read().strip() or "null")
except Exception:
    bench = None
if bench and bench.get("results"):
    print(f"\n| figure ({bench.get('gpu', '?')}, NIXL {bench.get('nixl', '-')}) | GB/s | limit | ratio | goal |")
    for r in bench["results"]:
        if "vram_ipc" not in r["name"]:
            continue
        ratio = f"{r['ratio']:.2f}" if "ratio" in r else "-"
        limit = f"{r['limit']:.1f} {r.get('limitName', '')}" if "limit" in r else "-"
        goal = "met" if r.get("pass") is True else "MISSED" if r.get("pass") is False else ""
        print(f"| {r['name']} | {r['value']:.1f} | {limit} | {ratio} | {goal} |")
elif bench:
    print(f"gpu bench: {bench.get('skipped', 'no results')}")
EOF
