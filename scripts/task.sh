#!/usr/bin/env bash
# The body of deno.json's tasks. Deno's task runner resolves `deno` inside a task to
# node_modules/.bin/deno (npm's deno package) and runs that binary as a script, so tasks
# call this file instead, which installs the npm packages on a fresh machine, builds the
# shim, and runs Deno's binary by path.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -d node_modules/yaml ] || [ ! -x node_modules/deno/deno ]; then
  npm ci --no-audit --no-fund
fi
deno_bin=$PWD/node_modules/deno/deno
task=${1:?usage: scripts/task.sh build|test|test:package|bench|demo|check [args...]}
shift
case "$task" in
  build) exec make -C native ;;
  test)
    make -C native
    exec bash scripts/test_all.sh "$@"
    ;;
  test:package)
    # The user paths, from the package alone: a Deno project importing the files
    # `deno publish` lists over HTTP (as from JSR), and a Bun project installing the
    # `npm pack` tarball; each builds the shim with `kvport build` and runs PD over it.
    "$deno_bin" test -A tests/package/jsr_user.ts
    exec node_modules/.bin/bun test --timeout 300000 ./tests/package/bun_consumer.ts
    ;;
  bench)
    make -C native
    exec "$deno_bin" run -A bench/main.ts "$@"
    ;;
  demo)
    make -C native
    exec "$deno_bin" run -A cli/main.ts demo "$@"
    ;;
  check)
    "$deno_bin" fmt --check
    "$deno_bin" lint
    "$deno_bin" check mod.ts src/ ffi/ cli/ tests/ bench/ scripts/
    "$deno_bin" check --doc mod.ts src/ ffi/ cli/
    "$deno_bin" check --doc-only README.md docs/
    "$deno_bin" doc --lint mod.ts src/config/mod.ts src/channel/wire/mod.ts src/metrics/mod.ts cli/main.ts
    exec "$deno_bin" publish --dry-run --allow-dirty
    ;;
  *)
    echo "unknown task: $task (expected build, test, test:package, bench, demo or check)" >&2
    exit 2
    ;;
esac
