#!/usr/bin/env bash
# Proves the sanitizer CI step can fail: builds .ci/sanitizer_canary/canary.cpp with the compile flags the
# extension gets under FUSED_KINGMA_SANITIZE=1 (Python's CFLAGS, as torch's build uses them, plus setup.py's
# SANITIZE_OPT_FLAGS / SANITIZE_CXX_FLAGS / SANITIZE_LINK_FLAGS), loads it into Python under the same LD_PRELOAD
# and *SAN_OPTIONS as .ci/sanitize.sh, and requires: the correct function runs clean, the heap overflow is
# reported by AddressSanitizer, the signed overflow by UBSan, each stopping the process. Exits 1 otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${SELFCHECK_DIR:-build/sanitizer-selfcheck}
mkdir -p "$OUT"
read -r -a CFLAGS <<<"$("$PY" -c "import sysconfig; print(sysconfig.get_config_var('CFLAGS'), sysconfig.get_config_var('CCSHARED'))")"
read -r -a SAN_CXX <<<"$("$PY" .ci/setup_flags.py SANITIZE_CXX_FLAGS)"
read -r -a SAN_LINK <<<"$("$PY" .ci/setup_flags.py SANITIZE_LINK_FLAGS)"
read -r -a SAN_OPT <<<"$("$PY" .ci/setup_flags.py SANITIZE_OPT_FLAGS)"
# Compiled and linked in two steps, as the extension is: each list only where setup.py uses it.
g++ "${CFLAGS[@]}" "${SAN_OPT[@]}" "${SAN_CXX[@]}" -c .ci/sanitizer_canary/canary.cpp -o "$OUT/canary.o"
g++ -shared "$OUT/canary.o" "${SAN_LINK[@]}" -o "$OUT/canary.so"

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:abort_on_error=1:halt_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)"
fail=0

# expect NAME CALL WANT_RC(0|nonzero) REPORT_PATTERN
expect() {
  local name=$1 call=$2 want=$3 pattern=$4 rc=0
  # (in a subshell whose stderr is dropped: bash's own "Aborted" notice for the expected abort)
  (LD_PRELOAD="$PRELOAD" "$PY" -c "import ctypes; lib = ctypes.CDLL('$OUT/canary.so'); print($call)" \
    >"$OUT/$name.log" 2>&1; exit $?) 2>/dev/null || rc=$?
  if [[ $want == 0 && $rc -ne 0 ]] || [[ $want != 0 && $rc -eq 0 ]] || ! grep -q "$pattern" "$OUT/$name.log"; then
    echo "sanitizer self-check FAILED: $name (exit $rc, expected $want, pattern '$pattern'):"
    sed -n 1,15p "$OUT/$name.log"
    fail=1
  else
    echo "sanitizer self-check: $name -> exit $rc, '$pattern' found"
  fi
}
expect clean "lib.canary_ok(1000)" 0 "^999$"
expect heap_overflow "lib.canary_heap_overflow(1000)" nonzero "AddressSanitizer: heap-buffer-overflow"
expect signed_overflow "lib.canary_signed_overflow(2**31 - 1, 1)" nonzero "runtime error: signed integer overflow"
exit $fail
