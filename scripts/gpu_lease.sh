#!/usr/bin/env bash
# scripts/gpu_lease.sh - everything GPU-related, in one go, on a machine with a GPU (one
# device lease): the VRAM C tests, the GPU TypeScript tests, the PD demo with
# pd_buffer_device cuda, bench/gpu_bench.ts, and the PD timeline (bench/latency_bench.ts
# on GPU and on host buffers), under Deno and/or Bun; then a short table of what passed
# and the figures, last.
#
# The GPU machine has no Deno, no npm and no compiler for our purposes, so what it needs
# is prepared here and carried (ignored by git):
#   .device/deno.xz              xz of node_modules/@deno/linux-x64-glibc/deno
#   .device-bun/bun.xz           xz of node_modules/bun/bin/bun.exe
#   .device/node_modules.tar.xz  the npm packages the code imports (yaml, zod, msgpack, tweetnacl)
#   .device/build/               libkvport.so, kvport-limits, kvport-tests built here
# `bash scripts/gpu_lease.sh --prepare` makes them all and prints whether one command can
# carry them (64 MiB) and the exact command(s) to run.
#
# On the GPU machine:  bash scripts/gpu_lease.sh      (writes $OUT/gpu_lease.log and the
# JSON lines when $OUT is set). Environment:
#   KVPORT_RUNTIMES  "deno", "bun" or "deno bun" (default: deno; the old KVPORT_RUNTIME
#                    is still read)
#   KVPORT_STEPS     comma list of c,ts,demo,bench,latency,host,ce (default: all of them), so
#                    that a lease can be split into commands of under 10 minutes each
# Locally, without a GPU, it runs too: KVPORT_CUDART=$(sh native/tools/fake-cudart.sh)
# rehearses every step on the fake runtime (figures meaningless); without it the GPU
# steps skip or fail saying why.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD

if [ "${1:-}" = "--prepare" ]; then
  set -e
  make -C native all build/kvport-tests >/dev/null
  mkdir -p .device/build .device-bun
  cp native/build/libkvport.so native/build/kvport-limits native/build/kvport-tests .device/build/
  tar -cJf .device/node_modules.tar.xz node_modules/yaml node_modules/zod node_modules/@msgpack node_modules/tweetnacl
  [ -f .device/deno.xz ] || xz -9c node_modules/@deno/linux-x64-glibc/deno >.device/deno.xz
  [ -f .device-bun/bun.xz ] || xz -9c "$(readlink -f node_modules/.bin/bun)" >.device-bun/bun.xz
  du -sh .device .device-bun
  total=$(du -sbc .device .device-bun | tail -1 | cut -f1)
  if [ "$total" -le $((64 * 1024 * 1024)) ]; then
    echo "one command carries both runtimes ($((total >> 20)) MiB <= 64 MiB):"
    echo '  carry [".device", ".device-bun"]'
    echo '  KVPORT_RUNTIMES="deno bun" bash scripts/gpu_lease.sh'
  else
    echo "both runtimes are $((total >> 20)) MiB > 64 MiB: two commands on the same warm machine:"
    echo '  1. carry [".device"]:'
    echo '     KVPORT_RUNTIMES=deno bash scripts/gpu_lease.sh'
    echo '  2. carry [".device/build", ".device/node_modules.tar.xz", ".device-bun"]:'
    echo '     KVPORT_RUNTIMES=bun KVPORT_STEPS=ts,demo,bench,latency bash scripts/gpu_lease.sh'
  fi
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

# ---- runtimes and shim ------------------------------------------------------------------
runtimes=${KVPORT_RUNTIMES:-${KVPORT_RUNTIME:-deno}}
steps_wanted=",${KVPORT_STEPS:-c,ts,demo,bench,latency,host,ce},"
want() { [[ $steps_wanted == *",$1,"* ]]; }
deno=node_modules/deno/deno
if [[ " $runtimes " == *" deno "* ]] && ! "$deno" --version >/dev/null 2>&1; then
  if [ -f .device/deno.xz ]; then
    unxz_to .device/deno.xz /tmp/kvport-deno && chmod +x /tmp/kvport-deno && deno=/tmp/kvport-deno
  else
    echo "!! KVPORT_RUNTIMES has deno but there is neither $deno nor .device/deno.xz (carry .device)"
  fi
fi
bun=node_modules/.bin/bun
if [[ " $runtimes " == *" bun "* ]] && ! "$bun" --version >/dev/null 2>&1; then
  if [ -f .device-bun/bun.xz ]; then
    unxz_to .device-bun/bun.xz /tmp/kvport-bun && chmod +x /tmp/kvport-bun && bun=/tmp/kvport-bun
  else
    echo "!! KVPORT_RUNTIMES has bun but there is neither $bun nor .device-bun/bun.xz (carry .device-bun)"
  fi
fi
use_runtime() { # use_runtime deno|bun: sets runtime, rt_version, rt_test, rt_run
  runtime=$1
  if [ "$runtime" = bun ]; then
    rt_version="bun $("$bun" --version 2>&1 | head -1)"
    rt_test="'$bun' test --timeout 120000"
    rt_run="'$bun'"
  else
    rt_version=$("$deno" --version 2>&1 | head -1)
    rt_test="'$deno' test -A --no-check"
    rt_run="'$deno' run -A --no-check"
  fi
}
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
for r in $runtimes; do
  use_runtime "$r"
  echo "runtime: $rt_version"
done
echo "steps: ${steps_wanted:1:-1}; shim: $(ls -l native/build/libkvport.so 2>&1 | awk '{print $5, $9}')"
[ -n "${KVPORT_CUDART:-}" ] && echo "KVPORT_CUDART=$KVPORT_CUDART (a rehearsal: the figures mean nothing)"

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
# json_step <seconds> <name> <file stem> <command>: runs it, keeps its output in
# $out/<stem>.txt and its last JSON line in $out/<stem>.json (for the summary)
json_step() {
  step "$1" "$2" "$4 | tee '$out/$3.txt'; rc=\${PIPESTATUS[0]};
    grep '^{' '$out/$3.txt' | tail -1 >'$out/$3.json'; exit \$rc"
}

# ---- 1. C tests of the VRAM paths, the staging pipelines, the event descriptor ----------
if want c; then
  step 100 "C tests: VRAM paths" "native/build/kvport-tests cuda_"
  step 20 "C tests: staging pipelines (no GPU needed)" "native/build/kvport-tests stage_"
  step 20 "C tests: event descriptor, prefault (no GPU needed)" \
    "native/build/kvport-tests event_ && native/build/kvport-tests prefault_"
fi

for r in $runtimes; do
  use_runtime "$r"
  # ---- 2. TypeScript GPU tests ----------------------------------------------------------
  if want ts; then
    step 150 "$runtime: VRAM tests (agent, two processes, channels)" \
      "$rt_test tests/agent_vram_test.ts tests/gpu_pair_test.ts tests/channel_vram_test.ts tests/pd_vram_test.ts tests/gpu_two_devices_test.ts"
  fi
  # ---- 3. PD demo on GPU buffers: 16 requests x 16 chunks of 28 MiB (the figure is the
  # last one's: a server's code has run many times); batches of 8 (two pipelined sends per
  # request) and of 16 (one send)
  if want demo; then
    for b in 8 16; do
      json_step 100 "$runtime: PD demo, pd_buffer_device cuda, 16 x 28 MiB, batch $b (every byte checked)" \
        "demo-$runtime-b$b" "$rt_run cli/main.ts demo --device cuda --chunks 16 --batch $b --requests 16 --json"
    done
  fi
  # ---- 4. benchmark -----------------------------------------------------------------------
  if want bench; then
    json_step 200 "$runtime: bench/gpu_bench.ts" "gpu_bench-$runtime" "$rt_run bench/gpu_bench.ts"
  fi
  # ---- 5. PD timeline: each stage of one request on both sides (GPU, then host buffers)
  if want latency; then
    json_step 200 "$runtime: bench/latency_bench.ts --device cuda" "latency-$runtime-cuda" \
      "$rt_run bench/latency_bench.ts --device cuda --sizes 1x28,8x28,16x28,1x0.25 --inflight 4"
    json_step 200 "$runtime: bench/latency_bench.ts --device cpu" "latency-$runtime-cpu" \
      "$rt_run bench/latency_bench.ts --device cpu --sizes 1x28,16x28,1x0.25"
  fi
  # ---- 6. the host paths users run, on this host's idle cores: PD of 1 and 64 chunks of
  # 28 MiB (pd_bench), a P2P retrieve of one 4 MiB chunk (p2p_bench), a storage get of one
  # 4 MiB chunk (storage_bench), each against its limit measured in the same run
  if want host; then
    json_step 200 "$runtime: bench/pd_bench.ts --sizes 1,64" "pd-$runtime" \
      "$rt_run bench/pd_bench.ts --sizes 1,64"
    json_step 200 "$runtime: bench/p2p_bench.ts --reps 20" "p2p-$runtime" \
      "$rt_run bench/p2p_bench.ts --reps 20"
    json_step 200 "$runtime: bench/storage_bench.ts --size-mib 4 --batch 1" "storage-$runtime" \
      "$rt_run bench/storage_bench.ts --size-mib 4 --batch 1 --dir /tmp/kvport-storage-bench"
  fi
  # ---- 7. the GPU requests with the copy kernel off (runtime copies on the copy engines),
  # to tell whether scattered 28 MiB pages copy faster by kernel or by copy engine
  if want ce; then
    json_step 200 "$runtime: latency_bench --device cuda, KVPORT_CUDA_COPY_KERNEL=0" \
      "latency-$runtime-cuda-ce" \
      "KVPORT_CUDA_COPY_KERNEL=0 $rt_run bench/latency_bench.ts --device cuda --sizes 16x28,8x28"
  fi
done

# ---- summary, last ------------------------------------------------------------------------
echo
echo "== summary"
printf '| %-78s | %-10s | %5s |\n' step result time
for s in "${steps[@]}"; do
  IFS='|' read -r n r t <<<"$s"
  printf '| %-78s | %-10s | %5s |\n' "$n" "$r" "$t"
done
python3 - "$out" <<'PYEOF'
import glob, json, os, sys
out = sys.argv[1]

def load(p):
    try:
        with open(p) as f:
            return json.loads(f.read().strip() or "null")
    except Exception:
        return None

def results_table(title, doc):
    print(f"| {title} | value | limit | ratio | goal |")
    for r in doc["results"]:
        ratio = f"{r['ratio']:.2f}" if "ratio" in r else "-"
        limit = f"{r['limit']:.1f} {r.get('limitName', '')}" if "limit" in r else "-"
        goal = "met" if r.get("pass") is True else "MISSED" if r.get("pass") is False else ""
        print(f"| {r['name']} | {r['value']:.1f} {r.get('unit', '')} | {limit} | {ratio} | {goal} |")

for p in sorted(glob.glob(os.path.join(out, "gpu_bench-*.json"))):
    doc, rt = load(p), os.path.basename(p)[len("gpu_bench-"):-5]
    print()
    if doc and doc.get("results"):
        results_table(f"gpu bench, {rt} ({doc.get('gpu', '?')})", doc)
    else:
        print(f"gpu bench ({rt}): {(doc or {}).get('skipped', 'no JSON line: see its step')}")
demos = sorted(glob.glob(os.path.join(out, "demo-*.json")))
if demos:
    print()
    print("| PD demo, warm request (16 x 28 MiB) | ms | GB/s | limit GB/s | ratio (goal >= 0.7) | checks |")
for p in demos:
    d, name = load(p), os.path.basename(p)[5:-5]
    if not d:
        print(f"| {name} | no JSON line: see its step | | | | |")
        continue
    print(f"| {name} | {d.get('seconds', 0) * 1000:.2f} | {d.get('gbps', 0):.1f} | "
          f"{d.get('memcpyGbps', 0):.1f} ({d.get('limit', '')}) | {d.get('ratio', 0):.2f} | "
          f"verified {d.get('verified')}, notified {d.get('notified')}, ok {d.get('ok')} |")
keep = ("AllocRequest round trip", "write -> posted (create + post)",
        "posted -> data landed (copy + wait)", "data landed -> decoder sees notification",
        "ProxyNotif sent -> delivered (proxy)", "end to end: send() -> decoder landed")
for kind in ("pd", "p2p", "storage"):
    # These print a JSON line per figure (pd, storage) or one report (p2p): every line counts.
    for p in sorted(glob.glob(os.path.join(out, f"{kind}-*.txt"))):
        name, found = os.path.basename(p)[:-4], []
        for line in open(p, errors="replace"):
            if not line.startswith("{"):
                continue
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            found += doc.get("results") or ([doc] if "name" in doc and "value" in doc else [])
        print()
        if found:
            results_table(name, {"results": found})
        else:
            print(f"{name}: no JSON line: see its step")
for p in sorted(glob.glob(os.path.join(out, "latency-*.json"))):
    doc, name = load(p), os.path.basename(p)[8:-5]
    print()
    if not doc or not doc.get("results"):
        print(f"latency {name}: no JSON line: see its step")
        continue
    results_table(f"latency, {name}", doc)
    for row in doc.get("stages", []):
        cells = "; ".join(f"{k.strip()} {v['p50']:.0f}" for k, v in row["stats"].items()
                          if k.strip() in keep)
        print(f"  {row['size']} p50 us: {cells}; copy of the bytes {row['copyUs']:.0f}")
PYEOF
