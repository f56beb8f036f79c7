#!/usr/bin/env bash
# scripts/gpu_lease.sh - everything GPU-related, in one go, on a machine with a GPU (one
# device lease): the VRAM C tests, the GPU TypeScript tests, the PD demo with
# pd_buffer_device cuda, and bench/gpu_bench.ts; then a short table of what passed and
# the figures, last.
#
# The GPU machine has no Deno, no npm and no compiler for our purposes, so what it needs
# is prepared here and carried in .device/ (ignored by git):
#   .device/deno.xz              xz of node_modules/@deno/linux-x64-glibc/deno
#   .device/node_modules.tar.xz  the npm packages the code imports (yaml, zod, msgpack, tweetnacl)
#   .device/build/               libkvport.so, kvport-limits, kvport-tests built here
# `scripts/gpu_lease.sh --prepare` makes the last two (and checks the first).
#
# On the GPU machine:  bash scripts/gpu_lease.sh      (writes $OUT/gpu_lease.log when
# $OUT is set). KVPORT_RUNTIME=bun runs the same steps under Bun, from .device-bun/bun.xz
# (Deno and Bun together are more than one lease carries: carry .device/build,
# .device/node_modules.tar.xz and .device-bun for that run). Locally, without a GPU, it runs too: set KVPORT_CUDART to the fake
# runtime (sh native/tools/fake-cudart.sh) to rehearse, or see every step skip.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD

if [ "${1:-}" = "--prepare" ]; then
  set -e
  make -C native all build/kvport-tests >/dev/null
  mkdir -p .device/build
  cp native/build/libkvport.so native/build/kvport-limits native/build/kvport-tests .device/build/
  tar -cJf .device/node_modules.tar.xz node_modules/yaml node_modules/zod node_modules/@msgpack node_modules/tweetnacl
  [ -f .device/deno.xz ] || xz -9c node_modules/@deno/linux-x64-glibc/deno >.device/deno.xz
  du -sh .device
  exit 0
fi

out=${OUT:-/tmp/kvport-gpu-lease}
mkdir -p "$out"
log=$out/gpu_lease.log
: >"$log"
exec > >(tee -a "$log") 2>&1

unxz_to() { # unxz_to <file.xz> <dest>: xz, else Python's lzma
  if command -v xz >/dev/null; then xz -dc "$1" >"$2"
  else python3 -c 'import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],"wb"))' "$1" "$2"
  fi
}

# ---- runtime and shim ----------------------------------------------------------------
runtime=${KVPORT_RUNTIME:-deno}
deno=node_modules/deno/deno
if [ "$runtime" = deno ] && [ -f .device/deno.xz ] && ! "$deno" --version >/dev/null 2>&1; then
  unxz_to .device/deno.xz /tmp/kvport-deno && chmod +x /tmp/kvport-deno && deno=/tmp/kvport-deno
fi
bun=node_modules/.bin/bun
if [ "$runtime" = bun ] && [ -f .device-bun/bun.xz ] && ! "$bun" --version >/dev/null 2>&1; then
  unxz_to .device-bun/bun.xz /tmp/kvport-bun && chmod +x /tmp/kvport-bun && bun=/tmp/kvport-bun
fi
if [ "$runtime" = bun ]; then
  rt_version="bun $("$bun" --version 2>&1 | head -1)"
  rt_test="'$bun' test --timeout 120000"
  rt_run="'$bun'"
else
  rt_version=$("$deno" --version 2>&1 | head -1)
  rt_test="'$deno' test -A --no-check"
  rt_run="'$deno' run -A --no-check"
fi
if [ -f .device/node_modules.tar.xz ] && [ ! -d node_modules/zod ]; then
  if command -v xz >/dev/null; then tar -xJf .device/node_modules.tar.xz
  else python3 -c 'import tarfile,sys; tarfile.open(sys.argv[1]).extractall(".")' .device/node_modules.tar.xz
  fi
fi
if [ -d .device/build ] && [ ! -f native/build/libkvport.so ]; then
  mkdir -p native/build # the shim built where the compiler is (not carried as native/build)
  cp -f .device/build/* native/build/
fi
export KVPORT_ENGINE=${KVPORT_ENGINE:-builtin} # NIXL, if any, is measured elsewhere
# Guard: no NVLink SHARP / multicast objects on the lent machines (NCCL would create
# them through cuMulticastCreate); nothing here calls it either.
export NCCL_NVLS_ENABLE=0

echo "== gpu_lease $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -4
echo "runtime: $rt_version"

steps=()
step() { # step <seconds> <name> <shell command>: a hung step cannot eat the whole lease
  local limit=$1 name=$2 cmd=$3
  echo
  echo "== $name"
  local t0=$SECONDS
  timeout -k 5 "$limit" bash -c "$cmd"
  local rc=$?
  [ $rc -eq 124 ] && echo "!! $name: stopped after ${limit}s"
  local dt=$((SECONDS - t0))
  steps+=("$name|$([ $rc -eq 0 ] && echo ok || echo "FAILED ($rc)")|${dt}s")
  return 0
}

# ---- 1. C tests of the VRAM paths and the staging pipelines ---------------------------
step 100 "C tests: VRAM paths" "native/build/kvport-tests cuda_"
step 20 "C tests: staging pipelines (no GPU needed)" "native/build/kvport-tests stage_"

# ---- 2. TypeScript GPU tests ----------------------------------------------------------
step 150 "$runtime: VRAM tests (agent, two processes, channels)" \
  "$rt_test tests/agent_vram_test.ts tests/gpu_pair_test.ts tests/channel_vram_test.ts tests/pd_vram_test.ts tests/gpu_two_devices_test.ts"

# ---- 3. PD demo on GPU buffers --------------------------------------------------------
# (the last JSON line of a run is kept for the summary)
demo_json=$out/demo.json
step 100 "PD demo, pd_buffer_device cuda (two processes, every byte checked)" \
  "$rt_run cli/main.ts demo --device cuda --json | tee '$out/demo.txt';
   rc=\${PIPESTATUS[0]}; grep '^{' '$out/demo.txt' | tail -1 >'$demo_json'; exit \$rc"

# ---- 4. benchmark ---------------------------------------------------------------------
bench_json=$out/gpu_bench.json
step 200 "bench/gpu_bench.ts" \
  "$rt_run bench/gpu_bench.ts | tee '$out/gpu_bench.txt';
   rc=\${PIPESTATUS[0]}; grep '^{' '$out/gpu_bench.txt' | tail -1 >'$bench_json'; exit \$rc"

# ---- summary, last ----------------------------------------------------------------------
echo
echo "== summary"
printf '| %-70s | %-10s | %5s |\n' step result time
for s in "${steps[@]}"; do
  IFS='|' read -r n r t <<<"$s"
  printf '| %-70s | %-10s | %5s |\n' "$n" "$r" "$t"
done
python3 - "$bench_json" "$demo_json" <<'EOF'
import json, sys
def load(p):
    try:
        with open(p) as f:
            return json.loads(f.read().strip() or "null")
    except Exception:
        return None
bench, demo = load(sys.argv[1]), load(sys.argv[2])
print()
if bench and bench.get("results"):
    print(f"| figure ({bench.get('gpu', '?')}) | GB/s | limit | ratio | goal |")
    for r in bench["results"]:
        ratio = f"{r['ratio']:.2f}" if "ratio" in r else "-"
        limit = f"{r['limit']:.1f} {r.get('limitName', '')}" if "limit" in r else "-"
        goal = "met" if r.get("pass") is True else "MISSED" if r.get("pass") is False else ""
        print(f"| {r['name']} | {r['value']:.1f} | {limit} | {ratio} | {goal} |")
elif bench:
    print(f"gpu bench: {bench.get('skipped', 'no results')}")
if demo:
    print(f"| PD demo cuda: {demo.get('bytes', 0) / 2**20:.0f} MiB warm | {demo.get('gbps', 0):.1f} "
          f"| {demo.get('memcpyGbps', 0):.1f} {demo.get('limit', '')} | {demo.get('ratio', 0):.2f} "
          f"| verified {demo.get('verified')} notified {demo.get('notified')} ok {demo.get('ok')} |")
EOF
