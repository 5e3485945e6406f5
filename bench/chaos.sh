#!/usr/bin/env bash
# The chaos suite at full size: 1,000 jobs at 10/s against the E2B emulator with 20 % 503s,
# 5 % 429s (Retry-After 1 s) and one 60 s outage, for the full protection and for the two
# baselines (no protection; retry-only), one after the other in one run. About 6 minutes.
# Usage: bench/chaos.sh [jobs]
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo run --release --quiet --example chaos -- "${1:-1000}"
