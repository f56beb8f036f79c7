#!/bin/sh
# Builds native/build/fake/libcudart.so from tools/fake_cudart.c (a CUDA runtime stand-in
# for testing the VRAM paths without a GPU, see that file) and prints its path.
#   KVPORT_CUDART=$(sh native/tools/fake-cudart.sh) make -C native test
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
out=$here/build/fake
mkdir -p "$out"
if [ ! -f "$out/libcudart.so" ] || [ "$here/tools/fake_cudart.c" -nt "$out/libcudart.so" ]; then
  ${CC:-gcc} -std=c11 -O2 -g -Wall -Wextra -Werror -fPIC -pthread -fvisibility=hidden \
    -D_GNU_SOURCE -shared -o "$out/libcudart.so" "$here/tools/fake_cudart.c" -pthread
fi
echo "$out/libcudart.so"
