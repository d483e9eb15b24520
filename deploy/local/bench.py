"""`make bench`: mcpq beside the floor and the direct call, measured in one run on one machine.

Starts a real nats-server, the fixture MCP server over streamable HTTP (its `echo` tool answers at
once), one `mcpq worker` and one `mcpq dispatcher` (release builds, separate processes so their
memory can be read), then runs `mcpq bench` in four modes at several concurrencies:

  floor      a raw JetStream work-queue round trip (persisted publish, pull, core reply, ack)
  direct     an rmcp client calling the fixture, no mcpq in between
  mcpq-nats  the same calls as NATS-native jobs through the worker
  mcpq-mcp   the same calls through the dispatcher's /servers/<name>/mcp endpoint

and prints a table with ratios to direct; `--write` also puts it into BENCHMARKS.md.
`--scale N` instead queues N jobs with no worker running, then starts one and reports the drain.
`--limits` measures the dispatcher's memory with 1,000 MCP calls in flight and with 1,000 silent
connections, and 20 MB results through the object store.
`--scale-out` measures calls/s with 1, 2 and 3 worker processes on a server whose calls take 20 ms
and whose workers run 16 at a time each (the workload more workers are for).
`--metrics-cost` measures mcpq with and without metrics (`--no-metrics`), alternating, in one run.
`--soak MINUTES` runs calls at full speed (concurrency 64, MCP and NATS-native in turns of 30 s) for
that long with default settings, sampling the RSS of nats-server, the dispatcher and the worker and
the size of the JetStream store every 30 s, and reports the growth over the second half.
`--smoke` runs every mode for a moment (CI uses it so the benchmark never rots; no assertions).
"""

import argparse
import json
import os
import pathlib
import platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
VENV_BIN = ROOT / ".tools" / "venv" / "bin"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    sys.exit(f"bench: nothing listens on port {port} after {timeout}s")


def rss_mb(proc, field):
    """VmRSS (now) or VmHWM (peak) of a process, in MB."""
    for line in pathlib.Path(f"/proc/{proc.pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Rig:
    """The processes under test, stopped on exit."""

    def __init__(self, profile, work):
        self.procs = []
        try:
            self.start(profile, work)
        except BaseException:
            self.stop()  # nothing started is left behind, whatever failed
            raise

    def start(self, profile, work):
        self.bin = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / profile

        self.work = pathlib.Path(work)
        self.env = dict(os.environ, PATH=f"{VENV_BIN}:{os.environ['PATH']}", MCPQ_LOG="warn")
        self.nats_port = free_port()
        self.monitor_port = free_port()
        self.fixture_port = free_port()
        self.listen_port = free_port()
        self.nats_url = f"nats://127.0.0.1:{self.nats_port}"
        nats_server = shutil.which("nats-server", path=self.env["PATH"])
        if not nats_server:
            sys.exit("bench: no nats-server: run `make tools`")
        self.nats = self.spawn([nats_server, "-js", "-a", "127.0.0.1", "-p", str(self.nats_port), "-m",
                                str(self.monitor_port), "-sd", str(self.work / "js")],
                               stderr=open(self.work / "nats.log", "w"))

        self.fixture = self.spawn([self.bin / "mcpq-fixture", "--http", f"127.0.0.1:{self.fixture_port}"],
                                  stdout=subprocess.DEVNULL)
        wait_port(self.nats_port)
        wait_port(self.fixture_port)
        self.config = self.work / "bench.yaml"
        self.config.write_text(
            'version: "1.0"\n'
            f'nats: {{url: "{self.nats_url}"}}\n'
            "servers:\n"
            "  - name: fast\n"
            "    type: http\n"
            f"    endpoint: http://127.0.0.1:{self.fixture_port}/mcp\n"
            "    concurrency: 256\n"
            "    timeout: 60s\n"
            "    maxQueued: 10000000\n"  # --scale queues its jobs with no worker running
            "  - name: fair\n"  # --fairness-cost: principals' queues (fair shares)
            "    type: http\n"
            f"    endpoint: http://127.0.0.1:{self.fixture_port}/mcp\n"
            "    concurrency: 256\n"
            "    timeout: 60s\n"
            "    fairness: {by: principal}\n"
            "  - name: bounded\n"  # --scale-out: each worker runs 16 calls at a time
            "    type: http\n"
            f"    endpoint: http://127.0.0.1:{self.fixture_port}/mcp\n"
            "    concurrency: 16\n"
            "    timeout: 60s\n"
        )
        self.worker = None
        self.dispatcher = self.spawn([self.bin / "mcpq", "dispatcher", "--config", self.config,
                                      "--listen", f"127.0.0.1:{self.listen_port}"])
        wait_port(self.listen_port)

    def spawn(self, argv, **kwargs):
        proc = subprocess.Popen([str(a) for a in argv], env=self.env, **kwargs)
        self.procs.append(proc)
        return proc

    def start_worker(self, *extra):
        self.worker = self.spawn([self.bin / "mcpq", "worker", "--config", self.config,
                                  "--metrics-listen", "127.0.0.1:0", *extra])

    def restart_mcpq(self, *extra):
        """Dispatcher and worker again, with `extra` flags for both (e.g. --no-metrics)."""
        for proc in (self.dispatcher, self.worker):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=30)
        self.dispatcher = self.spawn([self.bin / "mcpq", "dispatcher", "--config", self.config,
                                      "--listen", f"127.0.0.1:{self.listen_port}", *extra])
        wait_port(self.listen_port)
        self.start_worker(*extra)

    def bench(self, *args):
        argv = [self.bin / "mcpq", "bench", "--json", "--nats", self.nats_url, *args]
        out = subprocess.run([str(a) for a in argv], env=self.env, capture_output=True, text=True)
        if not out.stdout.strip():
            sys.exit(f"bench: mcpq bench printed nothing: {out.stderr}")
        return json.loads(out.stdout.strip().splitlines()[-1])

    def stop(self):
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def modes(rig):
    direct = f"http://127.0.0.1:{rig.fixture_port}/mcp"
    through = f"http://127.0.0.1:{rig.listen_port}/servers/fast/mcp"
    call = ["--tool", "echo", "--args", '{"text": "x"}']
    return {
        "floor": ["--floor"],
        "direct": ["--mcp", direct, *call],
        "mcpq-nats": ["--server", "fast", *call],
        "mcpq-mcp": ["--mcp", through, *call],
    }


def limits(rig, idle=1000, hold_s=40):
    """Memory and large results: the dispatcher's RSS with `idle` connections opened and left
    silent (and whether it closes them), then its peak RSS with 1,000 MCP calls in flight, and
    20 MB results through the object store."""
    import resource
    rig.start_worker()
    for args in modes(rig).values():
        rig.bench(*args, "--concurrency", "4", "--calls", "200")
    idle_rss = rss_mb(rig.dispatcher, "VmRSS")

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, idle + 256)), hard))
    sockets = []
    for n in range(idle):
        s = socket.create_connection(("127.0.0.1", rig.listen_port))
        if n % 2:
            s.sendall(b"GET /healthz HTTP/1.1\r\n")  # and never the rest of the headers
        s.setblocking(False)
        sockets.append(s)
    time.sleep(1)
    held_rss = rss_mb(rig.dispatcher, "VmRSS")
    started = time.time()
    open_ = set(range(idle))
    while open_ and time.time() - started < hold_s:
        time.sleep(0.5)
        for n in list(open_):
            try:
                if sockets[n].recv(1 << 16) == b"":
                    open_.discard(n)
            except BlockingIOError:
                pass
            except OSError:
                open_.discard(n)
    closed_after = time.time() - started
    for s in sockets:
        s.close()
    closed = idle - len(open_)
    print(f"  {idle} silent connections: dispatcher RSS {held_rss:.0f} MB (idle: {idle_rss:.0f} MB); "
          f"{closed} closed by the dispatcher after {closed_after:.0f} s", flush=True)

    rig.bench(*modes(rig)["mcpq-mcp"], "--concurrency", "1000", "--calls", "20000")
    peak = rss_mb(rig.dispatcher, "VmHWM")
    print(f"  1,000 MCP calls in flight: dispatcher peak RSS {peak:.0f} MB", flush=True)

    big = ["--tool", "big", "--args", '{"tag": "b", "bytes": 20000000}', "--concurrency", "1", "--calls", "8"]
    direct = f"http://127.0.0.1:{rig.fixture_port}/mcp"
    through = f"http://127.0.0.1:{rig.listen_port}/servers/fast/mcp"
    runs = {
        "direct": rig.bench("--mcp", direct, *big),
        "mcpq-nats": rig.bench("--server", "fast", *big),
        "mcpq-mcp": rig.bench("--mcp", through, *big),
    }
    rows = ["| 20 MB results, one at a time | calls/s | MB/s | p50 ms | errors | ÷ direct |",
            "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, r in runs.items():
        ratio = r["calls_per_s"] / runs["direct"]["calls_per_s"] if runs["direct"]["calls_per_s"] else float("nan")
        rows.append(f"| {name} | {r['calls_per_s']:.2f} | {r['calls_per_s'] * 20:.0f} | {r['p50_ms']:.0f} "
                    f"| {r['errors']} | {ratio:.2f} |")
        print(f"  20 MB {name:<10} {r['calls_per_s']:.2f} calls/s  p50 {r['p50_ms']:.0f} ms  errors {r['errors']}", flush=True)
    return (
        f"- {idle:,} connections opened and left silent (half after a partial request line), on a fresh "
        f"dispatcher: RSS **{held_rss:.0f} MB** (idle: {idle_rss:.0f} MB); **{closed:,}** closed by the "
        f"dispatcher after {closed_after:.0f} s (`--idle-timeout`, default 30 s)\n"
        f"- dispatcher peak RSS with 1,000 MCP calls in flight (`mcpq bench --mcp`, concurrency 1,000, "
        f"20,000 echo calls): **{peak:.0f} MB** (bound: 64 MB)\n\n"
        + "\n".join(rows) + "\n"
    )


def versions(rig):
    nats = subprocess.run([shutil.which("nats-server", path=rig.env["PATH"]), "--version"],
                          capture_output=True, text=True).stdout.strip()
    rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    mem = next((int(l.split()[1]) // (1024 * 1024) for l in open("/proc/meminfo") if l.startswith("MemTotal")), 0)
    return f"{os.cpu_count()} cores ({cpu}), {mem} GiB, {platform.system()} {platform.release()}; {nats}; {rustc}"


def cpu_seconds(proc):
    """The process's CPU time so far (user + system), in seconds."""
    fields = pathlib.Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds():
    """CPU time of this script's finished children (the `mcpq bench` load clients)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cpu_sample(rig):
    return {
        "upstream": cpu_seconds(rig.fixture),
        "nats-server": cpu_seconds(rig.nats),
        "dispatcher": cpu_seconds(rig.dispatcher),
        "worker": cpu_seconds(rig.worker),
        "load client": children_cpu_seconds(),
    }


def compare(rig, concurrencies, seconds, in_flight_calls):
    rig.start_worker()
    # Warm up every path once (sessions, catalog, consumers).
    for args in modes(rig).values():
        rig.bench(*args, "--concurrency", "4", "--calls", "200")
    rows = []
    for c in concurrencies:
        for name, args in modes(rig).items():
            before = cpu_sample(rig)
            r = rig.bench(*args, "--concurrency", str(c), "--calls", "10000000", "--duration", f"{seconds}s")
            after = cpu_sample(rig)
            # Each process's CPU per call of this run, in µs.
            r["cpu_us"] = {k: (after[k] - before[k]) * 1e6 / max(r["calls"], 1) for k in before}
            r["name"] = name
            rows.append(r)
            print(f"  c={c:<4} {name:<10} {r['calls_per_s']:>8.0f} calls/s  p50 {r['p50_ms']:.2f} ms  "
                  f"p99 {r['p99_ms']:.2f} ms  errors {r['errors']}", flush=True)
    # Memory with 1,000 calls in flight through each process.
    rig.bench(*modes(rig)["mcpq-nats"], "--concurrency", "1000", "--calls", str(in_flight_calls))
    rig.bench(*modes(rig)["mcpq-mcp"], "--concurrency", "1000", "--calls", str(in_flight_calls))
    rss = {"worker": rss_mb(rig.worker, "VmHWM"), "dispatcher": rss_mb(rig.dispatcher, "VmHWM")}
    return rows, rss


def table(rows, rss, concurrencies):
    by = {(r["name"], r["concurrency"]): r for r in rows}
    lines = [
        "| concurrency | mode | calls/s | p50 ms | p99 ms | errors | calls/s ÷ direct |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for c in concurrencies:
        direct = by[("direct", c)]["calls_per_s"]
        for name in ["floor", "direct", "mcpq-nats", "mcpq-mcp"]:
            r = by[(name, c)]
            ratio = r["calls_per_s"] / direct if direct else float("nan")
            lines.append(f"| {c} | {name} | {r['calls_per_s']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} "
                         f"| {r['errors']} | {ratio:.2f} |")
    c1 = min(concurrencies)
    added_nats = by[("mcpq-nats", c1)]["p50_ms"] - by[("direct", c1)]["p50_ms"]
    added_mcp = by[("mcpq-mcp", c1)]["p50_ms"] - by[("direct", c1)]["p50_ms"]
    c64 = 64 if 64 in concurrencies else max(concurrencies)
    d64 = by[("direct", c64)]["calls_per_s"]
    summary = [
        f"- at concurrency {c64}: mcpq-nats ÷ direct = **{by[('mcpq-nats', c64)]['calls_per_s'] / d64:.2f}** "
        f"(target ≥ 0.6), mcpq-mcp ÷ direct = **{by[('mcpq-mcp', c64)]['calls_per_s'] / d64:.2f}** (target ≥ 0.4); "
        f"floor ÷ direct = {by[('floor', c64)]['calls_per_s'] / d64:.2f}",
        f"- added p50 latency over direct at concurrency {c1}: mcpq-nats **{added_nats:+.2f} ms**, "
        f"mcpq-mcp **{added_mcp:+.2f} ms** (target ≤ 1 ms)",
        f"- peak RSS after runs up to 1,000 calls in flight: worker **{rss['worker']:.0f} MB**, "
        f"dispatcher **{rss['dispatcher']:.0f} MB** (target ≤ 64 MB each)",
    ]
    return "\n".join(lines) + "\n\n" + "\n".join(summary) + "\n\n" + cpu_table(by, c64)


# Which processes take part in each mode (the others idle; their CPU is not the mode's).
TAKES_PART = {
    "floor": ["nats-server", "load client"],
    "direct": ["upstream", "load client"],
    "mcpq-nats": ["upstream", "nats-server", "worker", "load client"],
    "mcpq-mcp": ["upstream", "nats-server", "dispatcher", "worker", "load client"],
}


def cpu_table(by, c):
    """CPU per call of every process, per mode, at concurrency `c` (utime + stime from /proc)."""
    columns = ["upstream", "nats-server", "dispatcher", "worker", "load client"]
    lines = [
        f"CPU per call at concurrency {c}, µs (utime + stime from /proc over the run, ÷ calls):",
        "",
        "| mode | calls/s | " + " | ".join(columns) + " | total µs/call | ÷ direct |",
        "| --- | ---: | " + " | ".join("---:" for _ in columns) + " | ---: | ---: |",
    ]
    totals = {}
    for name in ["direct", "mcpq-nats", "mcpq-mcp", "floor"]:
        r = by[(name, c)]
        cells = [f"{r['cpu_us'][k]:.0f}" if k in TAKES_PART[name] else "—" for k in columns]
        totals[name] = sum(r["cpu_us"][k] for k in TAKES_PART[name])
        ratio = totals[name] / totals["direct"] if totals.get("direct") else float("nan")
        lines.append(f"| {name} | {r['calls_per_s']:,.0f} | " + " | ".join(cells)
                     + f" | {totals[name]:.0f} | {ratio:.2f}× |")
    return "\n".join(lines) + "\n"


def scale(rig, jobs):
    """Queue `jobs` jobs with no worker, then start one and time the drain."""
    t0 = time.time()
    r = rig.bench("--server", "fast", "--tool", "echo", "--args", '{"text": "x"}', "--no-wait",
                  "--concurrency", "256", "--calls", str(jobs))
    queued_s = time.time() - t0
    print(f"  queued {jobs} jobs in {queued_s:.1f} s ({r['calls_per_s']:.0f} jobs/s accepted), "
          f"dispatcher RSS {rss_mb(rig.dispatcher, 'VmRSS'):.0f} MB", flush=True)
    t1 = time.time()
    rig.start_worker()
    peak = 0.0
    while True:
        time.sleep(1)
        pending = stream_messages(rig, "MCPQ_JOBS_")
        rss = rss_mb(rig.worker, "VmRSS")
        peak = max(peak, rss)
        print(f"  t={time.time() - t1:5.1f}s queued={pending} worker RSS {rss:.0f} MB", flush=True)
        if pending == 0:
            break
    drain_s = time.time() - t1
    records = stream_messages(rig, "KV_mcpq_results")
    dead = stream_messages(rig, "MCPQ_DLQ")
    who = subprocess.run([str(rig.bin / "mcpq"), "call", "--nats", rig.nats_url, "fast", "whoami"],
                         env=rig.env, capture_output=True, text=True)
    calls = json.loads(json.loads(who.stdout)["content"][0]["text"])["calls"] - 1
    text = (
        f"- {jobs:,} jobs queued with no worker running: accepted at **{r['calls_per_s']:,.0f} jobs/s** "
        f"(`mcpq bench --no-wait`, concurrency 256); dispatcher RSS meanwhile {rss_mb(rig.dispatcher, 'VmRSS'):.0f} MB\n"
        f"- one worker started: drained in {drain_s:.1f} s = **{jobs / drain_s:,.0f} jobs/s**; worker RSS peak while "
        f"jobs waited **{peak:.0f} MB**\n"
        f"- job records written: {records:,}; dead letters: {dead}; calls the upstream saw: {calls:,} "
        f"({'every job completed exactly once' if records == jobs == calls and dead == 0 else 'MISMATCH'})\n"
    )
    return text


def asynchronous(rig, jobs):
    """Calls for later with a worker running: submissions accepted per second over NATS and over
    the HTTP jobs API, then a batch run end to end."""
    base = f"http://127.0.0.1:{rig.listen_port}"
    call = ["--server", "fast", "--tool", "echo", "--args", '{"text": "x"}', "--calls", str(jobs)]
    nats = rig.bench(*call, "--no-wait", "--concurrency", "64")
    http = rig.bench(*call, "--jobs-api", base, "--concurrency", "64")
    wait_drained(rig)
    calls = rig.work / "calls.jsonl"
    calls.write_text("".join(json.dumps({"server": "fast", "tool": "echo", "arguments": {"text": f"b{i}"}}) + "\n"
                             for i in range(jobs)))
    t0 = time.time()
    out = subprocess.run([str(rig.bin / "mcpq"), "batch", "run", "--config", str(rig.config), str(calls),
                          "-o", str(rig.work / "results.jsonl"), "--in-flight", "256"],
                         env=rig.env, capture_output=True, text=True)
    batch_s = time.time() - t0
    if out.returncode != 0:
        sys.exit(f"bench: batch run failed: {out.stderr}")
    lines = (rig.work / "results.jsonl").read_text().splitlines()
    completed = sum(1 for l in lines if json.loads(l)["status"] == "completed")
    print(f"  nats submit {nats['calls_per_s']:.0f}/s, http submit {http['calls_per_s']:.0f}/s, "
          f"batch {jobs / batch_s:.0f} calls/s", flush=True)
    return (
        f"- async submission over NATS (`mcpq bench --no-wait`: `queued` record + JetStream publish, "
        f"concurrency 64, {jobs:,} jobs, a worker draining meanwhile): **{nats['calls_per_s']:,.0f} jobs/s accepted**, "
        f"p50 {nats['p50_ms']:.2f} ms, p99 {nats['p99_ms']:.2f} ms, errors {nats['errors']}\n"
        f"- async submission over HTTP (`mcpq bench --jobs-api`: `POST /v1/jobs`, concurrency 64): "
        f"**{http['calls_per_s']:,.0f} jobs/s accepted**, p50 {http['p50_ms']:.2f} ms, p99 {http['p99_ms']:.2f} ms, "
        f"errors {http['errors']}\n"
        f"- `mcpq batch run` of {jobs:,} echo calls (in-flight 256, one worker of concurrency 256): "
        f"**{jobs / batch_s:,.0f} calls/s** end to end ({batch_s:.1f} s, submission to the last result line written); "
        f"{completed:,} of {len(lines):,} lines completed\n"
    )


def wait_drained(rig, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if stream_messages(rig, "MCPQ_JOBS_") == 0:
            return
        time.sleep(0.5)
    sys.exit("bench: the queue did not drain")


def stream_messages(rig, prefix):
    """Messages in all streams whose names start with `prefix` (the job streams, one per server)."""
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{rig.monitor_port}/jsz?streams=true") as response:
        info = json.load(response)
    found = None
    for account in info.get("account_details", []):
        for stream in account.get("stream_detail", []):
            if stream["name"].startswith(prefix):
                found = (found or 0) + stream["state"]["messages"]
    return found


def scale_out(rig, seconds, most=3):
    """Calls/s of 20 ms calls with 1, 2 and 3 worker processes (16 calls at a time each)."""
    call = ["--server", "bounded", "--tool", "slow", "--args", '{"ms": 20}']
    rows = []
    workers = []
    for n in range(1, most + 1):
        workers.append(rig.spawn([rig.bin / "mcpq", "worker", "--config", rig.config, "--server", "bounded",
                                  "--id", f"w{n}", "--metrics-listen", "127.0.0.1:0"]))
        # Warm up until the new worker takes calls (its consumers bound, its session open).
        rig.bench(*call, "--concurrency", str(16 * n), "--calls", str(200 * n))
        r = rig.bench(*call, "--concurrency", "64", "--calls", "10000000", "--duration", f"{seconds}s")
        rows.append((n, r))
        print(f"  {n} worker(s): {r['calls_per_s']:>7.0f} calls/s  p50 {r['p50_ms']:.1f} ms  "
              f"p99 {r['p99_ms']:.1f} ms  errors {r['errors']}", flush=True)
    one = rows[0][1]["calls_per_s"]
    lines = ["| worker processes | calls/s | p50 ms | p99 ms | errors | ÷ one worker |",
             "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    for n, r in rows:
        lines.append(f"| {n} | {r['calls_per_s']:,.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['errors']} | "
                     f"{r['calls_per_s'] / one:.2f} |")
    return ("\n".join(lines) + "\n\n"
            "Calls of the fixture's `slow` tool (20 ms each) through JetStream (`mcpq bench --server bounded`, "
            "64 in flight), the server's `concurrency: 16` per worker process: one worker can run at most "
            "800 calls/s, so each added process adds capacity until the machine's 2 cores are the limit.\n")


def metrics_cost(rig, seconds, rounds=4):
    """Calls/s of mcpq with metrics (the default) and with --no-metrics, alternating the two
    `rounds` times in one run so that drift on a shared machine hits both alike."""
    cells = [(mode, c) for c in (16, 64) for mode in ("mcpq-nats", "mcpq-mcp")]
    seen = {True: {cell: [] for cell in cells}, False: {cell: [] for cell in cells}}
    for r in range(rounds):
        for on in (True, False):
            rig.restart_mcpq(*([] if on else ["--no-metrics"]))
            for mode in ("mcpq-nats", "mcpq-mcp"):
                rig.bench(*modes(rig)[mode], "--concurrency", "4", "--calls", "200")
            for mode, c in cells:
                res = rig.bench(*modes(rig)[mode], "--concurrency", str(c), "--calls", "10000000",
                                "--duration", f"{seconds}s")
                seen[on][(mode, c)].append(res["calls_per_s"])
                print(f"  round {r + 1} metrics {'on ' if on else 'off'} {mode:<10} c={c:<3} "
                      f"{res['calls_per_s']:>8.0f} calls/s  errors {res['errors']}", flush=True)
    mean = lambda xs: sum(xs) / len(xs)
    lines = ["| path | concurrency | with metrics, calls/s | without, calls/s | cost |",
             "| --- | ---: | ---: | ---: | ---: |"]
    costs = []
    for mode, c in cells:
        on, off = mean(seen[True][(mode, c)]), mean(seen[False][(mode, c)])
        cost = (off - on) / off * 100
        costs.append(cost)
        lines.append(f"| {mode} | {c} | {on:,.0f} | {off:,.0f} | {cost:+.1f} % |")
    return ("\n".join(lines) + "\n\n"
            f"Mean of {rounds} alternating rounds of {seconds:g} s per cell; cost = (without - with) / without. "
            f"Over all cells: **{mean(costs):+.1f} %**. With metrics: the Prometheus recorder and every counter, "
            "gauge and histogram of a call in both processes. Both sides write the audit record, sample the "
            "queues every 5 s and send heartbeats: `--no-metrics` turns off metrics only.\n")


def fairness_cost(rig, seconds, rounds=3):
    """The same calls through a lane's own queue and through a principal's queue (fair
    shares: a bell per job, then a pull), alternating; calls/s, p50 and CPU per call."""
    rig.start_worker()
    paths = {"lane queue": [], "principal queue": ["--principal-queue", "alice"]}
    for extra in paths.values():
        rig.bench("--server", "fair", *extra, "--concurrency", "8", "--calls", "500")
    rows = []
    for c in (1, 64):
        for _ in range(rounds):
            for name, extra in paths.items():
                before = cpu_sample(rig)
                r = rig.bench("--server", "fair", *extra, "--concurrency", str(c),
                              "--calls", "10000000", "--duration", f"{seconds}s")
                after = cpu_sample(rig)
                cpu = {k: (after[k] - before[k]) * 1e6 / max(r["calls"], 1) for k in before}
                rows.append((c, name, r, cpu))
                print(f"  c={c:<3} {name:<16} {r['calls_per_s']:>7.0f} calls/s  p50 {r['p50_ms']:.2f} ms  "
                      f"p99 {r['p99_ms']:.2f} ms  worker {cpu['worker']:.0f} µs  "
                      f"nats-server {cpu['nats-server']:.0f} µs per call", flush=True)
    lines = ["| concurrency | path | calls/s (median) | p50 ms (median) | p99 ms (median) | worker µs/call | nats-server µs/call |",
             "| ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
    for c in (1, 64):
        for name in paths:
            mine = [(r, cpu) for (cc, n, r, cpu) in rows if cc == c and n == name]
            med = lambda xs: sorted(xs)[len(xs) // 2]
            lines.append(f"| {c} | {name} | {med([r['calls_per_s'] for r, _ in mine]):,.0f} | "
                         f"{med([r['p50_ms'] for r, _ in mine]):.2f} | {med([r['p99_ms'] for r, _ in mine]):.2f} | "
                         f"{med([cpu['worker'] for _, cpu in mine]):.0f} | "
                         f"{med([cpu['nats-server'] for _, cpu in mine]):.0f} |")
    return "\n".join(lines) + "\n"


def dir_mb(path):
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass
    return total / 1e6


def soak(rig, minutes, turn_s=30.0):
    """Full speed for `minutes`, MCP and NATS-native in turns; a sample of memory and store every turn."""
    rig.start_worker()
    for args in modes(rig).values():
        rig.bench(*args, "--concurrency", "4", "--calls", "200")
    nats = rig.procs[0]
    samples = []
    calls = 0
    errors = 0

    def sample(t):
        samples.append({
            "t": t, "calls": calls, "nats": rig_rss(nats), "dispatcher": rig_rss(rig.dispatcher),
            "worker": rig_rss(rig.worker), "store": dir_mb(rig.work / "js"),
        })
        last = samples[-1]
        print(f"  {t / 60:5.1f} min  {calls:>10,} calls  nats-server {last['nats']:6.0f} MB  "
              f"store {last['store']:6.0f} MB  dispatcher {last['dispatcher']:5.0f} MB  "
              f"worker {last['worker']:5.0f} MB", flush=True)

    started = time.time()
    sample(0.0)
    turn = 0
    while time.time() - started < minutes * 60:
        mode = "mcpq-mcp" if turn % 2 == 0 else "mcpq-nats"
        left = minutes * 60 - (time.time() - started)
        r = rig.bench(*modes(rig)[mode], "--concurrency", "64", "--calls", "1000000000",
                      "--duration", f"{min(turn_s, max(left, 1.0)):.1f}s")
        calls += r["calls"]
        errors += r["errors"]
        turn += 1
        sample(time.time() - started)
    half = samples[len(samples) // 2]
    end = samples[-1]

    def growth(key):
        return (end[key] - half[key]) / half[key] * 100 if half[key] else float("nan")

    lines = [
        "| minute | calls | nats-server RSS MB | store MB | dispatcher RSS MB | worker RSS MB |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in samples:
        lines.append(f"| {s['t'] / 60:.1f} | {s['calls']:,} | {s['nats']:.0f} | {s['store']:.0f} "
                     f"| {s['dispatcher']:.0f} | {s['worker']:.0f} |")
    rate = calls / max(end["t"], 1e-9)
    audit_mb = stream_bytes_on_disk(rig, "MCPQ_AUDIT") / 1e6
    audit = stream_state(rig, "MCPQ_AUDIT")
    summary = [
        f"- {calls:,} calls in {end['t'] / 60:.1f} minutes ({rate:,.0f} calls/s), {errors} errors",
        f"- growth over the second half: nats-server RSS **{growth('nats'):+.1f} %**, store **{growth('store'):+.1f} %**, "
        f"dispatcher {growth('dispatcher'):+.1f} %, worker {growth('worker'):+.1f} % (target ≤ 10 % for nats-server and store)",
        f"- at the end: nats-server **{end['nats']:.0f} MB**, store **{end['store']:.0f} MB** (target ≤ 512 MB), "
        f"dispatcher **{end['dispatcher']:.0f} MB**, worker **{end['worker']:.0f} MB** (target ≤ 64 MB)",
        f"- the audit stream: {audit.get('messages', 0):,} batches, {audit.get('bytes', 0) / 1e6:.0f} MB of entries"
        + (" (at its `audit.maxBytes` cap: the oldest batches went)" if audit.get('bytes', 0) >= 128 * 2**20 * 0.95 else "")
        + f", {audit_mb:.0f} MB on disk with S2 compression "
        f"({audit_mb * 1e6 / max(audit.get('bytes', 1), 1) * 100:.0f} %; every call here has the same arguments, so "
        "their digests repeat — distinct arguments compress less)",
    ]
    return "\n".join(lines) + "\n\n" + "\n".join(summary) + "\n"


def stream_state(rig, name):
    """The stream's state as nats-server reports it (messages, bytes before compression...)."""
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{rig.monitor_port}/jsz?streams=true") as response:
        info = json.load(response)
    for account in info.get("account_details", []):
        for stream in account.get("stream_detail", []):
            if stream["name"] == name:
                return stream["state"]
    return {}


def stream_bytes_on_disk(rig, name):
    """Bytes the stream `name` takes in the JetStream store directory."""
    root = rig.work / "js" / "jetstream"
    for account in root.iterdir() if root.exists() else []:
        path = account / "streams" / name
        if path.exists():
            return dir_mb(path) * 1e6
    return 0.0


def capacity(rig, jobs):
    """Bytes on disk per queued job, per job record and per audit entry, and nats-server memory
    per queued job, measured on `jobs` calls submitted for later."""
    nats = rig.procs[0]
    base_rss = rss_mb(nats, "VmRSS")
    base_jobs = stream_bytes_on_disk(rig, "MCPQ_JOBS_fast")
    base_records = stream_bytes_on_disk(rig, "KV_mcpq_results")
    r = rig.bench("--server", "fast", "--tool", "echo", "--args", '{"text": "x"}', "--no-wait",
                  "--concurrency", "64", "--calls", str(jobs))
    queued = stream_messages(rig, "MCPQ_JOBS_fast")
    queued_rss = rss_mb(nats, "VmRSS")
    per_job = (stream_bytes_on_disk(rig, "MCPQ_JOBS_fast") - base_jobs) / max(queued, 1)
    per_queued_record = (stream_bytes_on_disk(rig, "KV_mcpq_results") - base_records) / max(queued, 1)
    rig.start_worker()
    wait_drained(rig)
    time.sleep(2)  # the last audit batch
    per_record = (stream_bytes_on_disk(rig, "KV_mcpq_results") - base_records) / jobs
    audit_entries = jobs
    per_entry = stream_bytes_on_disk(rig, "MCPQ_AUDIT") / audit_entries
    print(f"  queued {queued:,} of {jobs:,}: {per_job:.0f} B/job, {per_queued_record:.0f} B/queued record; "
          f"done: {per_record:.0f} B/record, {per_entry:.0f} B/audit entry", flush=True)
    return (
        f"- a queued job (an `echo` call, `mcpq bench --no-wait`): **{per_job:,.0f} B** on disk in its job stream, "
        f"and nats-server RSS grew {(queued_rss - base_rss) * 1e6 / max(queued, 1):,.0f} B per queued job "
        f"({queued:,} queued, {r['errors']} errors)\n"
        f"- a job record: **{per_queued_record:,.0f} B** on disk while `queued`, **{per_record:,.0f} B** once "
        f"`completed` with its result (one KV entry per job; a quick synchronous call has none)\n"
        f"- an audit entry: **{per_entry:,.0f} B** on disk (batches, S2 compression; the stream's whole "
        f"directory divided by the {audit_entries:,} calls)\n"
    )


def rig_rss(proc):
    return rss_mb(proc, "VmRSS") if proc is not None and proc.poll() is None else float("nan")


def write(section, text):
    path = ROOT / "BENCHMARKS.md"
    doc = path.read_text() if path.exists() else "# mcpq benchmarks\n"
    begin, end = f"<!-- {section}:begin -->", f"<!-- {section}:end -->"
    block = f"{begin}\n{text}{end}"
    if begin in doc:
        doc = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, doc, flags=re.S)
    else:
        doc = doc.rstrip() + "\n\n" + block + "\n"
    path.write_text(doc)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5, help="length of each measurement")
    parser.add_argument("--concurrency", default="1,16,64,256")
    parser.add_argument("--profile", default="release")
    parser.add_argument("--write", action="store_true", help="write the results into BENCHMARKS.md")
    parser.add_argument("--smoke", action="store_true", help="every mode for a moment; no file written")
    parser.add_argument("--scale", type=int, metavar="N", help="queue N jobs, then drain them")
    parser.add_argument("--scale-out", action="store_true",
                        help="calls/s with 1, 2 and 3 worker processes")
    parser.add_argument("--metrics-cost", action="store_true",
                        help="calls/s with and without metrics, alternating, in one run")
    parser.add_argument("--fairness-cost", action="store_true",
                        help="calls through a lane's own queue and a principal's queue, alternating")
    parser.add_argument("--soak", type=float, metavar="MINUTES",
                        help="full speed for MINUTES, sampling memory and store size every 30 s")
    parser.add_argument("--capacity", type=int, metavar="N",
                        help="bytes on disk per queued job, job record and audit entry, over N calls for later")
    parser.add_argument("--limits", action="store_true",
                        help="dispatcher memory at 1,000 calls in flight and 1,000 idle connections; 20 MB results")
    args = parser.parse_args()
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    if args.smoke:
        args.seconds, concurrencies = 0.5, [1, 8]
    with tempfile.TemporaryDirectory() as work:
        rig = Rig(args.profile, work)
        try:
            print(f"machine: {versions(rig)}", flush=True)
            # The single-section modes: what to run, and where its text goes.
            single = ("capacity", lambda: capacity(rig, args.capacity)) if args.capacity else (
                ("soak", lambda: soak(rig, args.soak, 30.0 if args.soak >= 2 else 10.0)) if args.soak else (
                ("limits", lambda: limits(rig)) if args.limits else (
                ("scale", lambda: scale(rig, args.scale)) if args.scale else (
                    ("metrics", lambda: metrics_cost(rig, args.seconds)) if args.metrics_cost else (
                        ("fairness", lambda: fairness_cost(rig, args.seconds)) if args.fairness_cost else (
                        ("scale-out", lambda: scale_out(rig, args.seconds)) if args.scale_out else None))))))
            if single:
                section, run = single
                text = run()
                print()
                print(text)
                if args.write:
                    command = (f"make soak SOAK_MINUTES={args.soak:g}" if section == "soak" else
                               f"python3 deploy/local/bench.py --capacity {args.capacity} --write"
                               if section == "capacity" else f"make bench-{section}")
                    header = (f"Measured {time.strftime('%Y-%m-%d')} with `{command}` on {versions(rig)}.\n\n")
                    write(section, header + text)
                return

            rows, rss = compare(rig, concurrencies, args.seconds, 2000 if args.smoke else 20000)
            text = table(rows, rss, concurrencies)
            async_text = asynchronous(rig, 500 if args.smoke else 20000)
            print()
            print(text)
            print(async_text)
            errors = sum(r["errors"] for r in rows)
            if args.write:
                command = "make bench"
                header = (f"Measured {time.strftime('%Y-%m-%d')} with `{command}` "
                          f"({args.seconds:g} s per cell), on {versions(rig)}.\n\n")
                write("bench", header + text)
                write("async", header + async_text)
            if errors:
                sys.exit(f"bench: {errors} calls failed")
        finally:
            rig.stop()


if __name__ == "__main__":
    main()
