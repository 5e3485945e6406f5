#!/usr/bin/env bash
# sandwarden through its HTTP API under a real HTTP load tool (wrk, from Debian): C connections
# POST a no-op job to /v1/jobs for D seconds against the release binary with provider = "noop";
# every 201 is a job acknowledged only once durable (fsynced). Then waits until every accepted
# job has ended and prints wrk's figures (submits/s, latency percentiles) and the completion
# throughput from the first submit to the last completion.
# Usage: bench/http.sh [seconds=10] [connections=64] [workers=8]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
conns=${2:-64}
workers=${3:-8}
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
cargo build --release --quiet --bin sandwarden

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
work=$(mktemp -d)
cleanup() {
    [[ -n "${pid:-}" ]] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
SANDWARDEN_PROVIDER=noop SANDWARDEN_WORKERS__COUNT="$workers" \
    target/release/sandwarden serve --listen "127.0.0.1:$port" --data-dir "$work/data" \
    >"$work/service.log" 2>&1 &
pid=$!
base="http://127.0.0.1:$port"
for _ in $(seq 1 100); do
    curl -fsS "$base/readyz" >/dev/null 2>&1 && break
    sleep 0.1
done
curl -fsS "$base/readyz" >/dev/null || { cat "$work/service.log"; exit 1; }

cat >"$work/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"user_id":"bench","steps":[{"run":{"cmd":"true"}}]}'
wrk.headers["Content-Type"] = "application/json"
LUA
start=$(date +%s.%N)
wrk -t2 -c"$conns" -d"${secs}s" --latency -s "$work/post.lua" "$base/v1/jobs" | tee "$work/wrk.txt"

# Wait for every accepted job to end, then count them.
python3 - "$base" "$start" <<'PY'
import json, sys, time, urllib.request
base, start = sys.argv[1], float(sys.argv[2])
def stats():
    with urllib.request.urlopen(base + "/v1/admin/queue") as r:
        return json.load(r)
while True:
    s = stats()
    by = s["by_status"]
    if by.get("pending", 0) == 0 and by.get("running", 0) == 0:
        break
    time.sleep(0.05)
end = time.time()
done = by.get("completed", 0)
print(f"jobs by status: {by}")
print(f"completed {done} jobs in {end - start:.2f} s from the first submit: {done / (end - start):.0f} jobs/s")
PY
