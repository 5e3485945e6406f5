#!/usr/bin/env bash
# Side-by-side peer benchmark: sandwarden (embedded, sled, fsync before ack) against BullMQ over
# a private Redis (AOF, appendfsync always), same N jobs, same worker concurrency C, 64
# concurrent producers each, timed from first enqueue to last completion, no-op jobs.
#
#   bench/peer.sh                      N=20000 C=8
#   QUICK=1 bench/peer.sh              N=2000 (quick run)
#   N=50000 C=16 bench/peer.sh         any size
#   FSYNC=everysec bench/peer.sh       Redis appendfsync everysec (less durable: an acknowledged
#                                      add may be lost in the last second of a crash)
#   FSYNC="always everysec" ...        both, one BullMQ line per setting
#
# Installs what it lacks (redis-server via apt-get, npm ci in bench/bullmq), builds the example
# in release, stops everything it started on exit. Each run is bounded by TIMEOUT seconds.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -n "${QUICK:-}" ]]; then N="${N:-2000}"; fi
N="${N:-20000}"
C="${C:-8}"
FSYNC="${FSYNC:-always}"
TIMEOUT="${TIMEOUT:-600}"

if ! command -v redis-server >/dev/null; then
  echo "peer.sh: installing redis-server" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server >/dev/null ||
    { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server >/dev/null; }
fi
command -v node >/dev/null || { echo "peer.sh: node is required" >&2; exit 1; }
if [[ ! -d "$root/bench/bullmq/node_modules/bullmq" ]]; then
  (cd "$root/bench/bullmq" && npm ci --no-audit --no-fund >/dev/null)
fi

work="$(mktemp -d)"
redis_pid=""
cleanup() {
  if [[ -n "$redis_pid" ]] && kill -0 "$redis_pid" 2>/dev/null; then
    kill "$redis_pid" 2>/dev/null || true
    wait "$redis_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

start_redis() { # $1 = appendfsync policy
  local dir="$work/redis-$1"
  mkdir -p "$dir"
  port="$(free_port)"
  redis-server --bind 127.0.0.1 --port "$port" --dir "$dir" --save '' \
    --appendonly yes --appendfsync "$1" --maxmemory-policy noeviction \
    --logfile "$dir/redis.log" &
  redis_pid=$!
  for _ in $(seq 100); do
    redis-cli -p "$port" ping 2>/dev/null | grep -q PONG && return 0
    sleep 0.1
  done
  echo "peer.sh: redis-server did not start (see $dir/redis.log)" >&2
  return 1
}

stop_redis() {
  redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || kill "$redis_pid" 2>/dev/null || true
  wait "$redis_pid" 2>/dev/null || true
  redis_pid=""
}

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
(cd "$root" && cargo build --release --quiet --example throughput)

echo "peer benchmark: N=$N jobs, C=$C workers, 64 producers, no-op jobs, $(nproc) cores"
sw_out="$(timeout "$TIMEOUT" "$CARGO_TARGET_DIR/release/examples/throughput" "$N" "$C")"
echo "$sw_out"
sw="$(sed -n 's/^sandwarden: .* \([0-9.]*\) jobs\/s$/\1/p' <<<"$sw_out")"

for policy in $FSYNC; do
  start_redis "$policy"
  bq_out="$(cd "$root/bench/bullmq" && REDIS_PORT="$port" timeout "$TIMEOUT" node throughput.mjs "$N" "$C")"
  stop_redis
  label=""
  [[ "$policy" != always ]] && label=" [appendfsync $policy: less durable]"
  sed "s/^\(bullmq: .* jobs\/s\)$/\1$label/" <<<"$bq_out"
  bq="$(sed -n 's/^bullmq: .* \([0-9.]*\) jobs\/s$/\1/p' <<<"$bq_out")"
  awk -v a="$sw" -v b="$bq" -v l="$label" 'BEGIN { printf "ratio sandwarden/bullmq: %.2f%s\n", a / b, l }'
done
