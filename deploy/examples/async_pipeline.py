"""Submit MCP tool calls to mcpq over NATS for later, with nothing but nats-py: no reply inbox,
results read from each job's record subject and from the results bucket.

    python3 async_pipeline.py nats://127.0.0.1:4222 < calls.jsonl > results.jsonl

Each input line is {"server": ..., "tool": ..., "arguments": {...}}; each output line, in input
order, is {"id": ..., "status": ..., "result" or "error": ...}.
"""

import asyncio
import json
import sys
import time
import uuid

import nats

ENDED = {"completed", "failed", "dead", "cancelled", "expired"}


async def main(url, calls):
    nc = await nats.connect(url)
    js = nc.jetstream()
    jobs = []
    for call in calls:
        job_id = str(uuid.uuid4())
        # Every update of a job's record is published on $KV.mcpq_results.<job id>: subscribe
        # before submitting, so the end cannot be missed.
        updates = await nc.subscribe(f"$KV.mcpq_results.{job_id}")
        job = {
            "v": 1,
            "id": job_id,
            "server": call["server"],
            "request": {
                "method": "tools/call",
                "params": {"name": call["tool"], "arguments": call.get("arguments", {})},
            },
            "submittedAtMs": int(time.time() * 1000),
        }
        # No Mcpq-Reply-To header: nobody waits on an inbox. The publish returns once stored.
        await js.publish(
            f"mcpq.jobs.{call['server']}.{call.get('lane', 'normal')}",
            json.dumps(job).encode(),
            headers={"Nats-Msg-Id": job_id, "Mcpq-Job-Id": job_id},
        )
        jobs.append((job_id, updates))
    print(f"submitted {len(jobs)} jobs", file=sys.stderr)

    # Wait for each job to end on its record subject (records show queued, running, retrying...).
    for job_id, updates in jobs:
        while True:
            record = json.loads((await updates.next_msg(timeout=120)).data)
            if record["status"] in ENDED:
                break
        await updates.unsubscribe()

    # The records stay readable by id in the results bucket (until their TTL), from anywhere.
    kv = await js.key_value("mcpq_results")
    for job_id, _ in jobs:
        record = json.loads((await kv.get(job_id)).value)
        line = {"id": job_id, "status": record["status"]}
        for field in ("result", "error"):
            if field in record:
                line[field] = record[field]
        print(json.dumps(line))
    await nc.close()


if __name__ == "__main__":
    calls = [json.loads(line) for line in sys.stdin if line.strip()]
    asyncio.run(main(sys.argv[1], calls))
