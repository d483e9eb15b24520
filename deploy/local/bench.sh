#!/usr/bin/env bash
# A first throughput run (`make bench-quick`): release builds, a real nats-server, the fixture
# MCP server over streamable HTTP (its echo tool answers at once), one `mcpq worker`, and
# `mcpq bench` publishing tools/call jobs to JetStream at several concurrencies.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$PWD/.tools/venv/bin:$PATH"
bin=target/release
calls=${MCPQ_BENCH_CALLS:-5000}
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
nats_port=$(free_port)
fixture_port=$(free_port)

nats-server -js -a 127.0.0.1 -p "$nats_port" -sd "$work/js" 2>"$work/nats.log" &
pids+=($!)
"$bin/mcpq-fixture" --http "127.0.0.1:$fixture_port" >"$work/fixture.url" &
pids+=($!)
cat >"$work/bench.yaml" <<YAML
version: "1.0"
nats: {url: "nats://127.0.0.1:$nats_port"}
servers:
  - name: fast
    type: http
    endpoint: http://127.0.0.1:$fixture_port/mcp
    concurrency: 256
YAML
for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$nats_port") 2>/dev/null && break; sleep 0.05; done
MCPQ_LOG=warn "$bin/mcpq" worker --config "$work/bench.yaml" &
pids+=($!)
worker=$!

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(nats-server --version)"
for c in 1 16 64 256; do
  n=$calls
  [ "$c" = 1 ] && n=$((calls / 5))
  "$bin/mcpq" bench --nats "nats://127.0.0.1:$nats_port" --server fast --tool echo --args '{"text":"x"}' --concurrency "$c" --calls "$n"
done
echo "worker peak RSS: $(grep VmHWM /proc/$worker/status | awk '{print $2, $3}')"
