#!/usr/bin/env bash
# Crash suite (issue 9): SIGKILL the real service at random moments under steady HTTP load and
# restart it on the same data dir, CYCLES times; then kill it while thousands of large submits
# are being written, BATCH_KILLS times. Prints a per-cycle table and a summary: accepted,
# completed, lost (must be 0), re-executed, stored-unacknowledged. Exits non-zero on any loss.
#
#   bench/crash.sh                         20 cycles at 50 jobs/s, 3 batch kills of 4000 submits
#   QUICK=1 bench/crash.sh                 5 cycles, 1 batch kill of 1000 (a quick look)
#   CYCLES=50 RATE=100 bench/crash.sh      any size; see examples/crash_cycles.rs for every knob
#   ISOLATION=namespaces bench/crash.sh    sandboxes isolated as by default in `serve` (slower)
#
# Builds the release binary and the driver first. Each run is bounded by TIMEOUT seconds.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -n "${QUICK:-}" ]]; then
  export CYCLES="${CYCLES:-5}" BATCH="${BATCH:-1000}" BATCH_KILLS="${BATCH_KILLS:-1}"
fi
TIMEOUT="${TIMEOUT:-1800}"

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
(cd "$root" && cargo build --release --quiet --bin sandwarden --example crash_cycles)

echo "crash suite: $(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ)"
timeout "$TIMEOUT" "$CARGO_TARGET_DIR/release/examples/crash_cycles" \
  "$CARGO_TARGET_DIR/release/sandwarden"
