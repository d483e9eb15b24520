#!/usr/bin/env bash
# `make demo`: start `mcpq up` with the demo config (a local nats-server, the dispatcher and a
# worker for mcp-server-time), make real calls through the queue — NATS-native and over MCP
# HTTP — then stop everything.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$PWD/.tools/venv/bin:$PATH"

mcpq="${CARGO_TARGET_DIR:-target}/debug/mcpq"

nats_port=${MCPQ_DEMO_NATS_PORT:-4222}
listen=${MCPQ_DEMO_LISTEN:-127.0.0.1:7400}
data=$(mktemp -d)

"$mcpq" up --config deploy/local/demo.yaml --data-dir "$data" --nats-port "$nats_port" --listen "$listen" &
up=$!
cleanup() {
  kill -INT "$up" 2>/dev/null || true
  wait "$up" 2>/dev/null || true
  rm -rf "$data"
}
trap cleanup EXIT

# Ready when the dispatcher answers: by then mcpq's streams and buckets exist.
for _ in $(seq 1 200); do
  python3 -c "import urllib.request,sys; urllib.request.urlopen('http://$listen/healthz', timeout=1)" 2>/dev/null && break
  kill -0 "$up" 2>/dev/null || { echo "demo: mcpq up exited early" >&2; exit 1; }
  sleep 0.1
done

echo
echo "== mcpq call time get_current_time '{\"timezone\": \"Europe/Paris\"}'   (NATS-native, through JetStream)"
"$mcpq" call --nats "nats://127.0.0.1:$nats_port" time get_current_time '{"timezone": "Europe/Paris"}' --timeout 60s

echo
echo "== tools/list and tools/call over MCP HTTP at http://$listen/mcp"
python3 deploy/local/mcp_http_demo.py "http://$listen/mcp"
echo
echo "== a call for later: POST http://$listen/v1/jobs, then GET /v1/jobs/{id}/wait"
python3 - "$listen" <<'PY'
import json, sys, urllib.request
base = f"http://{sys.argv[1]}"
body = json.dumps({"server": "time", "tool": "convert_time",
                   "arguments": {"source_timezone": "UTC", "time": "12:00", "target_timezone": "Asia/Tokyo"}}).encode()
request = urllib.request.Request(f"{base}/v1/jobs", data=body, headers={"Content-Type": "application/json"})
accepted = json.load(urllib.request.urlopen(request, timeout=10))
print("accepted:", json.dumps(accepted))
record = json.load(urllib.request.urlopen(f"{base}/v1/jobs/{accepted['id']}/wait?timeout=60s", timeout=70))
print(f"record: {record['status']} after {record['attempts']} attempt(s):", record["result"]["content"][0]["text"])
PY
echo
echo "== a call on a schedule: POST http://$listen/v1/jobs with \"delay\": \"2s\" (scheduled, then run)"
python3 - "$listen" <<'PY'
import json, sys, time, urllib.request
base = f"http://{sys.argv[1]}"
body = json.dumps({"server": "time", "tool": "get_current_time", "arguments": {"timezone": "UTC"},
                   "delay": "2s"}).encode()
request = urllib.request.Request(f"{base}/v1/jobs", data=body, headers={"Content-Type": "application/json"})
submitted = time.time()
accepted = json.load(urllib.request.urlopen(request, timeout=10))
print("accepted:", json.dumps(accepted))
record = json.load(urllib.request.urlopen(f"{base}/v1/jobs/{accepted['id']}/wait?timeout=60s", timeout=70))
print(f"record: {record['status']} {time.time() - submitted:.1f} s after submission:",
      record["result"]["content"][0]["text"].replace("\n", " "))
PY
echo
echo "== a callback: the same kind of job with \"callbackUrl\"; mcpq POSTs its record when it ends, signed (Standard Webhooks)"
python3 - "$listen" <<'PY'
import http.server, json, queue, sys, threading, urllib.request
from standardwebhooks.webhooks import Webhook
base, received = f"http://{sys.argv[1]}", queue.Queue()
class Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        received.put((self.rfile.read(int(self.headers["content-length"])), dict(self.headers.items())))
        self.send_response(204); self.end_headers()
    def log_message(self, *args): pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
threading.Thread(target=server.serve_forever, daemon=True).start()
body = json.dumps({"server": "time", "tool": "get_current_time", "arguments": {"timezone": "Asia/Kolkata"},
                   "callbackUrl": f"http://127.0.0.1:{server.server_port}/hook"}).encode()
request = urllib.request.Request(f"{base}/v1/jobs", data=body, headers={"Content-Type": "application/json"})
print("accepted:", json.dumps(json.load(urllib.request.urlopen(request, timeout=10))))
payload, headers = received.get(timeout=60)
event = Webhook("whsec_ZGVtby1zZWNyZXQtbm90LWZvci1wcm9kdWN0aW9uIQ==").verify(payload, headers)
print(f"callback: webhook-id {headers['webhook-id']}, signature verified, job {event['data']['status']}:",
      event["data"]["result"]["content"][0]["text"].replace("\n", " "))
PY
echo
echo "== what operators see: mcpq_calls_total at http://$listen/metrics (the status page is http://$listen/)"
python3 - "$listen" <<'PY'
import sys, time, urllib.request
# Counted once each job's outcome is kept: a moment after the replies.
for _ in range(50):
    text = urllib.request.urlopen(f"http://{sys.argv[1]}/metrics", timeout=5).read().decode()
    lines = [l for l in text.splitlines() if l.startswith("mcpq_calls_total{") and not l.endswith(" 0")]
    if sum(float(l.rsplit(" ", 1)[1]) for l in lines) >= 5:
        break
    time.sleep(0.1)
print("\n".join(lines))
PY
"$mcpq" audit --nats "nats://127.0.0.1:$nats_port" tail --last 3
echo
echo "demo: done (stopping mcpq)"
