#!/bin/sh
# Checks that libkvport.so exports every kvp_ function of include/kvport.h and nothing
# else of ours (the rest of the library is hidden).
set -eu
lib="$1"
here="$(cd "$(dirname "$0")/.." && pwd)"
want="$(grep -oE '\bkvp_[a-z0-9_]+\(' "$here/include/kvport.h" | tr -d '(' | sort -u)"
have="$(nm -D --defined-only "$lib" | awk '{print $3}' | grep -E '^kvp_' | sort -u)"
tmpw="$(mktemp)"; tmph="$(mktemp)"
printf '%s\n' "$want" >"$tmpw"; printf '%s\n' "$have" >"$tmph"
missing="$(comm -23 "$tmpw" "$tmph")"
extra="$(comm -13 "$tmpw" "$tmph")"
other="$(nm -D --defined-only "$lib" | awk '$2 ~ /[TDB]/ {print $3}' | grep -vE '^kvp_' | grep -vE '^(_init|_fini|_edata|_end|__bss_start)$' || true)"
rm -f "$tmpw" "$tmph"
status=0
if [ -n "$missing" ]; then echo "check-exports: missing from $lib: $missing" >&2; status=1; fi
if [ -n "$extra" ]; then echo "check-exports: exported but not in kvport.h: $extra" >&2; status=1; fi
if [ -n "$other" ]; then echo "check-exports: unexpected exports: $other" >&2; status=1; fi
[ $status -eq 0 ] && echo "check-exports: $(printf '%s\n' "$want" | wc -l) kvp_ functions exported, nothing else"
exit $status
