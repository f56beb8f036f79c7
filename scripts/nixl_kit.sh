#!/usr/bin/env bash
# scripts/nixl_kit.sh - build UCX and NIXL from source into one prefix, for the nixl engine
# (native/src/engine_nixl*.cpp), with or without CUDA, and pack that prefix as a kit that
# another machine unpacks and uses as it is (scripts/gpu_nixl.sh does, on the GPU machine).
#
#   scripts/nixl_kit.sh sources SRC          lay the pinned sources into SRC (from git mirrors)
#   scripts/nixl_kit.sh build SRC PREFIX     Abseil, UCX, NIXL (UCX + POSIX plugins), CPU only
#   CUDA=/usr/local/cuda NVML_H=... CUFILE=... scripts/nixl_kit.sh build SRC PREFIX
#                                            the same with CUDA (UCX cuda_copy/cuda_ipc, NIXL
#                                            VRAM), and the GDS plugins when CUFILE is given
#   scripts/nixl_kit.sh kvport PREFIX DEST   our libkvport.so, libkvport_nixl.so, kvport-limits
#                                            and nixl-raw built against PREFIX, copied to DEST
#   scripts/nixl_kit.sh rpaths PREFIX        (part of build) make every RUNPATH in PREFIX relative
#   scripts/nixl_kit.sh pack PREFIX OUT.tar.xz
#                                            strip, make every RUNPATH relative ($ORIGIN),
#                                            bundle the libraries a bare machine may lack, tar
#
# Nothing fetched or built here belongs in the repository: SRC, the build folders (WORK,
# default /work/build/kit-<basename of PREFIX>) and PREFIX all live outside it.
#
# Environment:
#   MIRRORS   where `sources` finds the bare git mirrors, as <owner>+<name>/repo
#             (default /work/.mirror, where the fetch tool puts them)
#   JOBS      parallel compile jobs (default 2); builds run under `nice -n 10`
#   CUDA      a CUDA toolkit (nvcc, include/, lib64/ with libcudart); no driver needed:
#             link-only stand-ins for libcuda.so.1 and libnvidia-ml.so.1 are generated
#             from the headers' function names (the real ones come with the GPU driver)
#   NVML_H    nvml.h (UCX's CUDA transports need it; the CUDA wheels here lack it)
#   CUFILE    a folder with include/cufile.h and lib/libcufile.so.0 (the nvidia-cufile
#             wheel's nvidia/cu13); enables NIXL's GDS and GDS_MT plugins
#   CUDA_ARCH NIXL's CUDA targets (default 90: H100/H200); UCX gets the same one
#
# Pinned refs (override with NIXL_REF etc.): what the nixl engine was tested with.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
MIRRORS=${MIRRORS:-/work/.mirror}
JOBS=${JOBS:-2}
CUDA_ARCH=${CUDA_ARCH:-90}
NICE=(nice -n 10)

NIXL_REF=${NIXL_REF:-8770b655a6b17b5cdf7d2b56b6e0be5392496df5}  # 1.4.0 + fixes, 2026-08-21
UCX_REF=${UCX_REF:-9466d104a317c8ffddd9734e72055d8bbda021b3}    # 1.23.0 (master), 2026-08-21
ABSEIL_REF=${ABSEIL_REF:-20250814.1}                            # what NIXL's wrap names
TASKFLOW_REF=${TASKFLOW_REF:-v3.10.0}
ASIO_REF=${ASIO_REF:-asio-1-30-2}
TOML_REF=${TOML_REF:-v3.4.0}

say() { printf '== nixl_kit: %s\n' "$*" >&2; }
die() { printf 'nixl_kit: %s\n' "$*" >&2; exit 1; }

# ---- sources --------------------------------------------------------------------------
# One folder per project, exported (not cloned) at the pinned ref; SRC/VERSIONS records
# the commit of each.
lay() { # lay <owner+name> <ref> <dest> [path...]: only those paths when given
  local git="$MIRRORS/$1/repo" name=$1 ref=$2 dest=$3
  shift 3
  [ -d "$git" ] || die "no mirror $git (fetch github:${name/+//} first)"
  local commit
  commit=$(git -C "$git" rev-parse "$ref^{commit}") || die "$name has no ref $ref"
  rm -rf "$dest" && mkdir -p "$dest"
  git -C "$git" archive "$commit" "$@" | tar -x -C "$dest"
  printf '%s %s %s %s\n' "$(basename "$dest")" "$name" "$ref" "$commit" >>"$SRC/VERSIONS"
}

cmd_sources() {
  SRC=${1:?usage: sources SRC}
  mkdir -p "$SRC" && : >"$SRC/VERSIONS"
  lay ai-dynamo+nixl "$NIXL_REF" "$SRC/nixl"
  lay openucx+ucx "$UCX_REF" "$SRC/ucx"
  lay abseil+abseil-cpp "$ABSEIL_REF" "$SRC/abseil-cpp"
  lay taskflow+taskflow "$TASKFLOW_REF" "$SRC/taskflow"
  # asio is header-only: its headers are all NIXL needs (and all a mirror may hold of an old tag)
  lay chriskohlhoff+asio "$ASIO_REF" "$SRC/asio" asio/include
  lay marzer+tomlplusplus "$TOML_REF" "$SRC/tomlplusplus"
  say "UCX autogen"
  (cd "$SRC/ucx" && "${NICE[@]}" ./autogen.sh >"$SRC/ucx-autogen.log" 2>&1) ||
    die "UCX autogen.sh failed: $SRC/ucx-autogen.log"
  cat "$SRC/VERSIONS"
}

# ---- link-only stand-ins for the driver's libraries -----------------------------------
# UCX and NIXL link libcuda.so.1 (and UCX libnvidia-ml.so.1), which come with the GPU
# driver, not with the toolkit. To link without a driver, make libraries of that soname
# that define every cu*/nvml* name the headers mention; they are never loaded at run
# time: the driver's own are (the kit does not contain these).
stand_in() { # stand_in <header> <name prefix regex> <soname> <out dir>
  local c="$WORK/stub-$3.c"
  grep -oE "\\b$2[A-Za-z0-9_]*\\b" "$1" | sort -u |
    awk '{ printf "int %s(void) { return 999; }\n", $1 }' >"$c"
  mkdir -p "$4"
  gcc -shared -fPIC -w -Wl,-soname,"$3" -o "$4/$3" "$c"
  ln -sf "$3" "$4/${3%.*}"
}

# ---- build ----------------------------------------------------------------------------
pc_header_only() { # pc_header_only <name> <include dir> <version>: for meson's dependency()
  mkdir -p "$WORK/pc"
  printf 'Name: %s\nDescription: header-only, laid by nixl_kit.sh\nVersion: %s\nCflags: -I%s\n' \
    "$1" "$3" "$2" >"$WORK/pc/$1.pc"
}

cmd_build() {
  SRC=${1:?usage: build SRC PREFIX}
  PREFIX=${2:?usage: build SRC PREFIX}
  WORK=${WORK:-/work/build/kit-$(basename "$PREFIX")}
  local multi=lib/x86_64-linux-gnu
  mkdir -p "$WORK" "$PREFIX"
  SRC=$(cd "$SRC" && pwd)
  cp "$SRC/VERSIONS" "$PREFIX/VERSIONS" 2>/dev/null || true

  # A step that finished once is not redone (its stamp in WORK); delete WORK to redo all.
  if [ ! -f "$WORK/abseil.done" ]; then
  say "Abseil $(awk '$1=="abseil-cpp"{print $3}' "$SRC/VERSIONS") (C++20, shared, $PREFIX/$multi)"
  cmake -S "$SRC/abseil-cpp" -B "$WORK/abseil" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_CXX_STANDARD=20 -DABSL_PROPAGATE_CXX_STD=ON -DBUILD_SHARED_LIBS=ON \
    -DBUILD_TESTING=OFF -DABSL_BUILD_TESTING=OFF -DCMAKE_INSTALL_PREFIX="$PREFIX" \
    -DCMAKE_INSTALL_LIBDIR="$multi" -DCMAKE_INSTALL_RPATH='$ORIGIN' >"$WORK/abseil.log"
  "${NICE[@]}" ninja -C "$WORK/abseil" -j "$JOBS" install >>"$WORK/abseil.log"
  touch "$WORK/abseil.done"
  fi

  local ucx_cuda=(--without-cuda) cuda_cppflags="" cuda_ldflags=""
  if [ -n "${CUDA:-}" ]; then
    [ -x "$CUDA/bin/nvcc" ] || die "CUDA=$CUDA has no bin/nvcc"
    [ -f "${NVML_H:-}" ] || die "NVML_H must name nvml.h for a CUDA build"
    mkdir -p "$WORK/cuda-extra/include"
    cp "$NVML_H" "$WORK/cuda-extra/include/nvml.h"
    stand_in "$CUDA/include/cuda.h" 'cu[A-Z]' libcuda.so.1 "$WORK/cuda-extra/stubs"
    stand_in "$NVML_H" 'nvml[A-Z]' libnvidia-ml.so.1 "$WORK/cuda-extra/stubs"
    cuda_cppflags="-I$WORK/cuda-extra/include"
    cuda_ldflags="-L$WORK/cuda-extra/stubs"
    ucx_cuda=(--with-cuda="$CUDA" "--with-nvcc-gencode=-gencode=arch=compute_$CUDA_ARCH,code=sm_$CUDA_ARCH")
  fi

  if [ ! -f "$WORK/ucx.done" ]; then
  say "UCX $(awk '$1=="ucx"{print substr($4,1,7)}' "$SRC/VERSIONS") (${CUDA:+with CUDA }into $PREFIX/lib)"
  rm -rf "$WORK/ucx" && mkdir -p "$WORK/ucx"
  (cd "$WORK/ucx" && "${NICE[@]}" "$SRC/ucx/configure" --prefix="$PREFIX" \
    --enable-mt --enable-optimizations --disable-debug --disable-assertions \
    --disable-params-check --without-java --without-go --without-rocm \
    --without-knem --without-xpmem --without-gdrcopy "${ucx_cuda[@]}" \
    CPPFLAGS="$cuda_cppflags" LDFLAGS="$cuda_ldflags" >"$WORK/ucx.log" 2>&1) ||
    die "UCX configure failed: $WORK/ucx.log"
  "${NICE[@]}" make -C "$WORK/ucx" -j "$JOBS" >>"$WORK/ucx.log" 2>&1 || die "UCX build failed: $WORK/ucx.log"
  make -C "$WORK/ucx" install >>"$WORK/ucx.log" 2>&1 || die "UCX install failed: $WORK/ucx.log"
  touch "$WORK/ucx.done"
  fi

  # NIXL: header-only dependencies through pkg-config files of our own; Abseil through
  # the .pc files it installed; no downloads (meson's wraps would fetch).
  pc_header_only asio "$SRC/asio/asio/include" 1.30.2
  pc_header_only taskflow "$SRC/taskflow" 3.10.0
  pc_header_only tomlplusplus "$SRC/tomlplusplus/include" 3.4.0
  local plugins=UCX,POSIX nixl_cuda=()
  if [ -n "${CUDA:-}" ]; then
    nixl_cuda=(-Dcudapath_inc="$CUDA/include" -Dcudapath_lib="$CUDA/lib64"
      -Dcudapath_stub="$WORK/cuda-extra/stubs" -Dnixl_cuda_arch_list="$CUDA_ARCH")
    if [ -n "${CUFILE:-}" ]; then
      [ -f "$CUFILE/include/cufile.h" ] || die "CUFILE=$CUFILE has no include/cufile.h"
      mkdir -p "$WORK/gds/include" "$WORK/gds/lib64" "$PREFIX/lib/deps"
      cp "$CUFILE/include/cufile.h" "$WORK/gds/include/"
      cp "$CUFILE"/lib/libcufile*.so* "$PREFIX/lib/deps/"
      ln -sf "$PREFIX/lib/deps/libcufile.so.0" "$WORK/gds/lib64/libcufile.so"
      nixl_cuda+=(-Dgds_path="$WORK/gds")
      plugins=$plugins,GDS,GDS_MT
    else
      nixl_cuda+=(-Ddisable_gds_backend=true)
    fi
  fi
  say "NIXL $(awk '$1=="nixl"{print substr($4,1,7)}' "$SRC/VERSIONS") (plugins $plugins, into $PREFIX/$multi)"
  rm -rf "$WORK/nixl"
  # Without CUDA, point NIXL's CUDA fallback lookup (CUDA_HOME, else /usr/local/cuda)
  # somewhere empty: a toolkit without a driver would otherwise be taken and fail to link.
  (export PKG_CONFIG_PATH="$PREFIX/$multi/pkgconfig:$WORK/pc" LIBRARY_PATH="$PREFIX/lib/deps"
    [ -n "${CUDA:-}" ] || export CUDA_HOME=/nonexistent CUDA_PATH=/nonexistent
    "${NICE[@]}" meson setup "$WORK/nixl" "$SRC/nixl" --prefix="$PREFIX" --libdir="$multi" \
      --buildtype=release --wrap-mode=nodownload -Ducx_path="$PREFIX" -Dbuild_tests=false \
      -Dbuild_examples=false -Dwith_trace=false -Denable_plugins="$plugins" \
      "${nixl_cuda[@]}" >"$WORK/nixl.log" 2>&1 || die "NIXL meson setup failed: $WORK/nixl.log"
    "${NICE[@]}" ninja -C "$WORK/nixl" -j "$JOBS" >>"$WORK/nixl.log" 2>&1 || die "NIXL build failed: $WORK/nixl.log"
    ninja -C "$WORK/nixl" install >>"$WORK/nixl.log" 2>&1 || die "NIXL install failed: $WORK/nixl.log")
  command -v patchelf >/dev/null || die "patchelf is needed (apt-get install patchelf)"
  relative_rpaths "$PREFIX"
  ls "$PREFIX/$multi/plugins"
  say "built into $PREFIX"
}

# ---- our shim against the prefix --------------------------------------------------------
cmd_kvport() {
  PREFIX=${1:?usage: kvport PREFIX DEST}
  WORK=${WORK:-/work/build/kit-$(basename "$PREFIX")}
  DEST=${2:?usage: kvport PREFIX DEST}
  local b="$WORK/kvport-build"
  rm -rf "$b"
  # A CUDA build of NIXL needs libcuda.so.1 to link against: the stand-ins (link only).
  local llp=${LD_LIBRARY_PATH:-}
  [ -d "$WORK/cuda-extra/stubs" ] && llp="$WORK/cuda-extra/stubs${llp:+:$llp}"
  LD_LIBRARY_PATH="$llp" NIXL_PREFIX="$PREFIX" "${NICE[@]}" make -C "$here/native" BUILD="$b" -j "$JOBS" >&2
  [ -f "$b/libkvport_nixl.so" ] || die "the nixl engine was not built against $PREFIX"
  mkdir -p "$DEST"
  cp "$b/libkvport.so" "$b/libkvport_nixl.so" "$b/kvport-limits" "$b/nixl-raw" "$DEST/"
}

# ---- pack -----------------------------------------------------------------------------
# Base libraries any glibc Linux has; anything else an ELF file in the kit needs and the
# kit does not have is copied into lib/deps (libnuma, ...), except the GPU driver's
# libcuda/libnvidia-ml and the CUDA runtime, which the GPU machine brings (a copy of
# libcudart is kept in lib/cuda-fallback for machines whose CUDA is not on the path).
base_lib() {
  case "$1" in
    linux-vdso* | ld-linux* | libc.so* | libm.so* | libdl.so* | libpthread.so* | librt.so* | \
      libstdc++.so* | libgcc_s.so* | libutil.so* | libresolv.so* | libcuda.so* | \
      libnvidia-ml.so* | libcudart.so* | libcufile*) return 0 ;;
  esac
  return 1
}

elf_files() { # elf_files <dir>: the ELF files under dir
  find "$1" -type f \( -name '*.so*' -o -perm -u+x \) -exec sh -c \
    'head -c4 "$1" | grep -q ELF && echo "$1"' _ {} \;
}

# Every library folder of the prefix, relative to each ELF file in it ($ORIGIN/...): NIXL
# installs libnixl_common.so & co without a RUNPATH to its Abseil, and UCX and NIXL name
# the build prefix; with this the prefix works wherever it is unpacked, without
# LD_LIBRARY_PATH.
relative_rpaths() { # relative_rpaths <prefix>
  local f d rp dirs="lib lib/ucx lib/x86_64-linux-gnu lib/x86_64-linux-gnu/plugins lib/deps"
  for f in $(elf_files "$1"); do
    rp=""
    for d in $dirs; do rp="$rp:\$ORIGIN/$(relpath "$1/$d" "$(dirname "$f")")"; done
    patchelf --set-rpath "${rp#:}" "$f"
  done
}

relpath() { python3 -c 'import os,sys; print(os.path.relpath(sys.argv[1], sys.argv[2]))' "$1" "$2"; }

cmd_pack() {
  PREFIX=${1:?usage: pack PREFIX OUT.tar.xz}
  WORK=${WORK:-/work/build/kit-$(basename "$PREFIX")}
  OUT=${2:?usage: pack PREFIX OUT.tar.xz}
  # The tar below runs in the staging folder: a relative OUT is of the caller's folder.
  mkdir -p "$(dirname "$OUT")" && OUT=$(cd "$(dirname "$OUT")" && pwd)/$(basename "$OUT")
  PREFIX=$(cd "$PREFIX" && pwd)
  command -v patchelf >/dev/null || die "patchelf is needed (apt-get install patchelf)"
  local stage="$WORK/pack/$(basename "$PREFIX")"
  rm -rf "$WORK/pack" && mkdir -p "$stage"
  # What a user of the library needs: libraries, plugins, headers, ucx_info and friends.
  (cd "$PREFIX" && tar -c --exclude='share/doc' --exclude='*.a' --exclude='*.la' \
    --exclude='lib/cmake' --exclude='include/ucs' --exclude='include/uct' --exclude='share/ucx/examples' \
    --exclude='include/absl/**/*_test*' --exclude='bin/ucx_perftest*' --exclude='bin/io_demo' \
    --exclude='bin/ucx_perftest_daemon' --exclude='lib/ucx/libucx_perftest*' --exclude='lib/ucx/libucs_signal*' \
    --exclude='lib/python3*' --exclude='lib/pkgconfig' --exclude='lib/x86_64-linux-gnu/pkgconfig' \
    --exclude='lib/x86_64-linux-gnu/libnixl_test_utils.so' \
    .) | tar -x -C "$stage"
  mkdir -p "$stage/lib/deps" "$stage/lib/cuda-fallback"
  if [ -n "${CUDA:-}" ] && [ -f "$CUDA/lib64/libcudart.so.13" ]; then
    cp -L "$CUDA/lib64/libcudart.so.13" "$stage/lib/cuda-fallback/"
  fi
  local elfs f
  elfs=$(find "$stage" -type f \( -name '*.so*' -o -perm -u+x \) -exec sh -c \
    'head -c4 "$1" | grep -q ELF && echo "$1"' _ {} \;)
  # Bundle missing non-base dependencies (one level is enough for libnuma and the like).
  for f in $elfs; do
    ldd "$f" 2>/dev/null | awk '$2=="=>" && $3 ~ /^\// {print $1, $3}' | while read -r name path; do
      base_lib "$name" && continue
      [ -n "$(find "$stage" -name "$name" -print -quit)" ] && continue
      cp -L "$path" "$stage/lib/deps/$name"
    done
  done
  for f in $(elf_files "$stage"); do strip --strip-unneeded "$f" 2>/dev/null || true; done
  relative_rpaths "$stage"
  # UCX's pkg-config and NIXL's .pc files name the build prefix; the shim does not use them.
  cp "$here/scripts/gpu_nixl.sh" "$stage/" 2>/dev/null || true
  (cd "$WORK/pack" && tar -c "$(basename "$stage")" | xz -9 -T"$JOBS" >"$OUT")
  say "kit $OUT: $(du -h "$OUT" | cut -f1) ($(du -sh "$stage" | cut -f1) unpacked)"
}

case "${1:-}" in
  sources) shift; cmd_sources "$@" ;;
  build) shift; cmd_build "$@" ;;
  kvport) shift; cmd_kvport "$@" ;;
  pack) shift; cmd_pack "$@" ;;
  rpaths) shift; relative_rpaths "${1:?usage: rpaths PREFIX}" ;;
  *) sed -n '2,40p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
