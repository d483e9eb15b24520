"""Drives the official MCP Python SDK (PyPI `mcp`) as an MCP client, for mcpq's tests.

    python sdk_client.py URL MODE STEPS_JSON

MODE is `auto` (the SDK's default: 2026-07-28 where the server speaks it), `legacy` (the
2025-era initialize handshake) or a revision. STEPS_JSON is a list of steps, each
`[op, args...]`:

    ["list_tools"] ["call_tool", name, arguments, meta?] ["list_resources"] ["list_resource_templates"]
    ["read_resource", uri] ["list_prompts"] ["get_prompt", name, arguments]
    ["complete", ref, argument_name, value] ["set_logging_level", level]

Prints one JSON object: `version` (negotiated), `steps` (per step `{"ok": result}` or
`{"error": message, "code": code}`), and what the server sent or asked on the way: `progress`,
`logs`, `asked` (sampling and elicitation requests, answered with fixed answers, and roots).

Flags: `--no-answers` (declare no sampling, elicitation or roots), `--log-level LEVEL`,
`--wait-logs N` (before closing, wait up to 5 s until N log messages have come).
"""

import asyncio
import json
import sys
import warnings

from mcp import types
from mcp.client.client import Client

warnings.simplefilter("ignore")


def dump(value):
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json", by_alias=True, exclude_none=True)
    return value


async def main(url, mode, steps):
    seen = {"progress": [], "logs": [], "asked": []}

    async def sampling(context, params):
        seen["asked"].append({"method": "sampling/createMessage", "params": dump(params)})
        return types.CreateMessageResult(
            role="assistant",
            content=types.TextContent(type="text", text="sampled by the test client"),
            model="test-model",
        )

    async def elicitation(context, params):
        seen["asked"].append({"method": "elicitation/create", "params": dump(params)})
        return types.ElicitResult(action="accept", content={"username": "ada", "email": "ada@example.com"})

    async def roots(context):
        seen["asked"].append({"method": "roots/list"})
        return types.ListRootsResult(roots=[types.Root(uri="file:///work/project", name="project")])

    async def logging(params):
        seen["logs"].append(dump(params))

    async def progress(value, total, message):
        seen["progress"].append([value, total, message])

    kwargs = {
        "mode": mode,
        "logging_callback": logging,
        "read_timeout_seconds": 60,
    }
    if "--no-answers" not in sys.argv:
        kwargs.update(sampling_callback=sampling, elicitation_callback=elicitation, list_roots_callback=roots)
    if "--log-level" in sys.argv:
        kwargs["log_level"] = sys.argv[sys.argv.index("--log-level") + 1]
    out = {"steps": []}
    async with Client(url, **kwargs) as client:
        out["version"] = client.protocol_version
        for step in steps:
            op, args = step[0], step[1:]
            try:
                if op == "call_tool":
                    result = await client.call_tool(args[0], args[1] if len(args) > 1 else {}, progress_callback=progress,
                                                    meta=args[2] if len(args) > 2 else None)
                elif op == "complete":
                    ref = args[0]
                    ref = (types.PromptReference(type="ref/prompt", name=ref["name"]) if ref["type"] == "ref/prompt"
                           else types.ResourceTemplateReference(type="ref/resource", uri=ref["uri"]))
                    result = await client.complete(ref, {"name": args[1], "value": args[2]})
                elif op in ("read_resource",):
                    result = await client.read_resource(args[0])
                elif op == "get_prompt":
                    result = await client.get_prompt(args[0], args[1] if len(args) > 1 else None)
                else:
                    result = await getattr(client, op)(*args)
                out["steps"].append({"ok": dump(result)})
            except Exception as e:  # the test reads the error
                error = getattr(e, "error", None)
                out["steps"].append({"error": str(e), "code": getattr(error, "code", None)})
        # A 2025-era session hears log messages on its standalone stream, which may deliver the
        # last of them after the response: --wait-logs N waits (up to 5 s) until N have come.
        if "--wait-logs" in sys.argv:
            wanted = int(sys.argv[sys.argv.index("--wait-logs") + 1])
            for _ in range(100):
                if len(seen["logs"]) >= wanted:
                    break
                await asyncio.sleep(0.05)
    out.update(seen)
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], json.loads(sys.argv[3])))
