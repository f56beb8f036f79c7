#!/bin/sh
# find-nixl.sh - where NIXL is, for the Makefile's nixl engine (libkvport_nixl.so).
#
#   sh scripts/find-nixl.sh found|why|version|prefix|cxxflags|ldflags|absl
#
# Looks in $NIXL_PREFIX (default /opt/nvidia/nvda_nixl): include/nixl.h and libnixl.so
# under lib/x86_64-linux-gnu, lib64 or lib; else asks pkg-config for "nixl". The NIXL
# version comes from pkg-config, else from the string NIXL logs at start-up in
# libnixl_common.so. Abseil (for capturing NIXL's log messages into errors) is used when
# the Abseil that libnixl.so links has its headers installed next to it (<p>/include for
# libraries in <p>/lib, <p>/lib64 or <p>/lib/x86_64-linux-gnu). Never fails: "found" prints 0 and "why" says
# what is missing.
set -u
what="${1:-found}"
prefix="${NIXL_PREFIX:-/opt/nvidia/nvda_nixl}"
found=0 why="" libdir="" cflags="" libs="" version=""

if [ -f "$prefix/include/nixl.h" ]; then
  for d in lib/x86_64-linux-gnu lib64 lib; do
    if [ -f "$prefix/$d/libnixl.so" ]; then libdir="$prefix/$d"; break; fi
  done
  if [ -n "$libdir" ]; then
    found=1
    cflags="-isystem $prefix/include"
    libs="-L$libdir -Wl,-rpath,$libdir -lnixl -lnixl_build -lserdes"
  else
    why="$prefix/include/nixl.h exists but no libnixl.so under $prefix/lib/x86_64-linux-gnu, lib64 or lib"
  fi
else
  why="no $prefix/include/nixl.h (set NIXL_PREFIX)"
fi
if [ "$found" = 0 ] && command -v pkg-config >/dev/null 2>&1 && pkg-config --exists nixl 2>/dev/null; then
  found=1 why=""
  prefix="$(pkg-config --variable=prefix nixl)"
  libdir="$(pkg-config --variable=libdir nixl)"
  cflags="$(pkg-config --cflags nixl | sed 's/-I/-isystem /g')"
  libs="$(pkg-config --libs nixl) -Wl,-rpath,$libdir"
  version="$(pkg-config --modversion nixl)"
elif [ "$found" = 0 ]; then
  why="$why; pkg-config has no nixl"
fi

if [ "$found" = 1 ] && [ -z "$version" ]; then
  if command -v pkg-config >/dev/null 2>&1 && pkg-config --exists nixl 2>/dev/null; then
    version="$(pkg-config --modversion nixl)"
  elif [ -f "$libdir/libnixl_common.so" ] && command -v strings >/dev/null 2>&1; then
    version="$(strings "$libdir/libnixl_common.so" | sed -n '/^NIXL version: *$/{n;p;q;}')"
  fi
  [ -n "$version" ] || version=unknown
fi

absl=0 absl_cflags="" absl_libs=""
if [ "$found" = 1 ] && command -v ldd >/dev/null 2>&1; then
  # The Abseil libnixl.so is linked with: its headers must sit next to it (lib/../include).
  so="$(ldd "$libdir/libnixl.so" 2>/dev/null | sed -n 's/.*libabsl_log_internal_message[^ ]* => \([^ ]*\).*/\1/p' | head -n1)"
  if [ -n "$so" ]; then
    # ($ORIGIN-relative RUNPATHs make ldd print paths such as <dir>/./libabsl_...)
    so="$(readlink -f "$so" 2>/dev/null || echo "$so")"
    adir="$(dirname "$so")"
    # <p>/lib/libabsl_*.so has its headers in <p>/include; so has a multiarch
    # <p>/lib/x86_64-linux-gnu (or <p>/lib64): try one and two levels up.
    for up in "$(dirname "$adir")" "$(dirname "$(dirname "$adir")")"; do
      ainc="$up/include"
      if [ -f "$ainc/absl/log/log_sink_registry.h" ] && [ -e "$adir/libabsl_log_internal_log_sink_set.so" ] &&
        [ -e "$adir/libabsl_log_sink.so" ]; then
        absl=1
        absl_cflags="-DKVPN_HAVE_ABSL_SINK -isystem $ainc"
        absl_libs="-L$adir -Wl,-rpath,$adir -labsl_log_internal_log_sink_set -labsl_log_sink"
        break
      fi
    done
  fi
fi

case "$what" in
  found) echo "$found" ;;
  why) echo "$why" ;;
  version) echo "$version" ;;
  prefix) echo "$prefix" ;;
  cxxflags) echo "$cflags $absl_cflags" ;;
  ldflags) echo "$libs $absl_libs" ;;
  absl) echo "$absl" ;;
  *) echo "find-nixl.sh: unknown query $what" >&2; exit 2 ;;
esac
