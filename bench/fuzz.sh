#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ one after the other, one libFuzzer process at a time.
#
#   bench/fuzz.sh              60 s per target
#   bench/fuzz.sh 480          8 minutes per target
#   TARGETS="job_spec repl" bench/fuzz.sh 30
#
# Needs the nightly toolchain; installs cargo-fuzz if it is missing. Each target starts from the
# seeds in fuzz/corpus/<target>/ (grown corpora stay there, ignored by git) and its dictionary in
# fuzz/dict/ if any. Prints libFuzzer's final stats line per target and any crash, whose input
# lands in fuzz/artifacts/<target>/; exits non-zero if any target crashed.
#
# One libFuzzer process (no -jobs/-workers: those fork and hide the stats in fuzz-N.log files).
# Built without a sanitizer: the crate forbids unsafe code, so AddressSanitizer would find
# nothing that a panic does not, at about half the executions per second. Debug assertions
# stay on, so integer overflow panics.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
secs="${1:-60}"
targets="${TARGETS:-job_spec config connect_frames repl}"


command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
cd "$root/fuzz"
cargo +nightly fuzz build -s none

failed=()
for t in $targets; do
  mkdir -p "corpus/$t" "artifacts/$t"
  args=(-max_total_time="$secs" -print_final_stats=1)
  [[ -f "dict/$t.dict" ]] && args+=(-dict="dict/$t.dict")
  log="$(mktemp)"
  echo "== $t: ${secs}s"
  if cargo +nightly fuzz run -s none "$t" "corpus/$t" -- "${args[@]}" >"$log" 2>&1; then
    status=ok
  else
    status=crashed
    failed+=("$t")
  fi
  grep -E '^(Done|stat::number_of_executed_units|stat::peak_rss_mb)' "$log" || true
  if [[ $status == crashed ]]; then
    grep -E -A30 'panicked at|ERROR: libFuzzer|SUMMARY' "$log" | head -60
    grep -E 'Test unit written to' "$log" || true
  fi
  rm -f "$log"
done

if ((${#failed[@]})); then
  echo "crashed: ${failed[*]}"
  exit 1
fi
echo "no crashes"
