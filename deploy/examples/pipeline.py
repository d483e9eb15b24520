"""Submit one MCP tool call to mcpq over NATS, with nothing but nats-py, and wait for the reply.

    python3 pipeline.py nats://127.0.0.1:4222 time get_current_time '{"timezone": "UTC"}'

The reply comes to the inbox; a call that completes at once leaves no record behind (its caller
has the answer). To read outcomes later instead, submit without an inbox: async_pipeline.py.
"""

import asyncio
import json
import sys
import time
import uuid

import nats


async def main(url, server, tool, arguments):
    nc = await nats.connect(url)
    js = nc.jetstream()
    job_id = str(uuid.uuid4())
    inbox = nc.new_inbox()
    replies = await nc.subscribe(inbox)
    job = {
        "v": 1,
        "id": job_id,
        "server": server,
        "request": {"method": "tools/call", "params": {"name": tool, "arguments": arguments}},
        "submittedAtMs": int(time.time() * 1000),
    }
    # Through JetStream: the publish returns once the job is stored.
    await js.publish(
        f"mcpq.jobs.{server}.normal",
        json.dumps(job).encode(),
        headers={"Mcpq-Reply-To": inbox},
    )
    reply = json.loads((await replies.next_msg(timeout=60)).data)
    print(json.dumps(reply))
    await nc.close()
    return 0 if reply["status"] == "ok" else 1


if __name__ == "__main__":
    url, server, tool = sys.argv[1:4]
    arguments = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
    sys.exit(asyncio.run(main(url, server, tool, arguments)))
