"""The MCP half of `make demo`: plain JSON-RPC over HTTP to mcpq's aggregated endpoint, with
nothing but the standard library, as any MCP client would do it."""

import json
import sys
import time
import urllib.request

url = sys.argv[1]


def rpc(request_id, method, params=None):
    body = {"jsonrpc": "2.0", "id": request_id, "method": method}
    if params is not None:
        body["params"] = params
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={
            "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream",
            "MCP-Protocol-Version": "2025-06-18",
        },
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)


for _ in range(100):
    try:
        tools = rpc(1, "tools/list")["result"]["tools"]
        if tools:
            break
    except OSError:
        pass
    time.sleep(0.1)
print("tools:", ", ".join(tool["name"] for tool in tools))

answer = rpc(2, "tools/call", {
    "name": "time__convert_time",
    "arguments": {"source_timezone": "UTC", "time": "12:00", "target_timezone": "Asia/Tokyo"},
})
result = answer["result"]["structuredContent"]
print(f"time__convert_time: 12:00 UTC is {result['target']['datetime']} in Tokyo ({result['time_difference']})")
