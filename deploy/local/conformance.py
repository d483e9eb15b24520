"""`make conformance`: the official MCP conformance suite, directly and through mcpq.

Runs `@modelcontextprotocol/conformance` 0.2.0-alpha.12 (npm, from `make tools`, on the Node 22
`make tools` puts in .tools/npm; the system's Node is not used) with `--suite all` against four
targets on loopback:

  fixture direct      the conformance fixture (tests/src/conformance.rs) over streamable HTTP
  fixture via mcpq    the same fixture as a stdio upstream, through /servers/conformance/mcp
  everything direct   the reference @modelcontextprotocol/server-everything over streamable HTTP
  everything via mcpq the same server as a stdio upstream, through /servers/everything/mcp

`mcpq up` (debug build) runs the dispatcher, the workers and its own nats-server. Prints the
table (scenario, then pass/fail per target) and exits 1 when a scenario passes directly (against
the fixture or server-everything) but not through mcpq, or when any scenario fails through mcpq
against the fixture (a scenario the suite skips itself, with no check run, is shown as such). `--write` also puts the table into docs/conformance.md.
"""

import argparse
import concurrent.futures
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
TOOLS = ROOT / ".tools"
NPM_BIN = TOOLS / "npm" / "node_modules" / ".bin"
NODE = TOOLS / "npm" / "node_modules" / "node" / "bin" / "node"
SUITE = TOOLS / "npm" / "node_modules" / "@modelcontextprotocol" / "conformance" / "dist" / "index.js"
SUITE_VERSION = "0.2.0-alpha.12"
TARGET = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "debug"
DOC = ROOT / "docs" / "conformance.md"
BEGIN, END = "<!-- conformance:begin -->", "<!-- conformance:end -->"
SUMMARY = re.compile(r"^[✓✗] ([a-z0-9-]+): (\d+) passed, (\d+) failed$")


from bench import free_port, wait_port  # noqa: E402 (the benchmark driver, beside this file)


def need(path, what):
    if not path.exists():
        sys.exit(f"conformance: {path} is missing: {what}")
    return path


class Processes:
    """Everything started here, stopped on exit (process groups, so children go too)."""

    def __init__(self):
        self.procs = []

    def start(self, args, env=None, log=None):
        proc = subprocess.Popen(
            [str(a) for a in args],
            env={**os.environ, **(env or {})},
            stdout=log or subprocess.DEVNULL,
            stderr=subprocess.STDOUT if log else subprocess.DEVNULL,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def stop(self):
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)
        # `mcpq up` drains for up to 30 s (calls a scenario left waiting for an answer), then
        # stops its nats-server: killed before that, it would leave that server behind.
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def run_suite(url, log_dir, name):
    """Runs every active server scenario against url: {scenario: (passed, failed)}."""
    log = log_dir / f"{name}.log"
    with log.open("w") as out:
        subprocess.run(
            [str(NODE), str(SUITE), "server", "--url", url, "--suite", "all"],
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=900,
            check=False,
        )
    results = {}
    for line in log.read_text().splitlines():
        m = SUMMARY.match(line.strip())
        if m:
            # Two scenarios may share a name (the suite runs some once per variant).
            name, n = m.group(1), 2
            while name in results:
                name, n = f"{m.group(1)} #{n}", n + 1
            results[name] = (int(m.group(2)), int(m.group(3)))
    if not results:
        sys.exit(f"conformance: no results from {url}; see {log}")
    return results


def passed(results, scenario):
    got = results.get(scenario)
    return got is not None and got[0] > 0 and got[1] == 0


def skipped(results, scenario):
    """The suite ran no check of the scenario (it skips it itself, e.g. pending a rewrite)."""
    return results.get(scenario) == (0, 0)


def table(columns, results):
    scenarios = []
    for key, _ in columns:
        scenarios += [s for s in results[key] if s not in scenarios]
    lines = [
        "| scenario | " + " | ".join(title for _, title in columns) + " |",
        "| --- |" + " --- |" * len(columns),
    ]
    for scenario in scenarios:
        cells = [
            "pass" if passed(results[key], scenario)
            else "skipped by the suite" if skipped(results[key], scenario)
            else "**fail**"
            for key, _ in columns
        ]
        lines.append(f"| {scenario} | " + " | ".join(cells) + " |")
    totals = [
        f"{sum(passed(results[key], s) for s in scenarios)}/{len(scenarios)}" for key, _ in columns
    ]
    lines.append("| **passing** | " + " | ".join(totals) + " |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="put the table into docs/conformance.md")
    args = parser.parse_args()

    mcpq = need(TARGET / "mcpq", "run `make build`")
    fixture = need(TARGET / "mcpq-fixture", "run `make build`")
    everything = need(NPM_BIN / "mcp-server-everything", "run `make tools` (needs npm)")
    need(NODE, "run `make tools` (needs npm: it installs Node 22 into .tools/npm)")
    need(SUITE, "run `make tools` (needs npm)")
    nats_bin = TOOLS / "venv" / "bin"

    work = pathlib.Path(tempfile.mkdtemp(prefix="mcpq-conformance-"))
    procs = Processes()
    try:
        fixture_port, everything_port, mcpq_port, nats_port = (free_port() for _ in range(4))
        procs.start([fixture, "conformance", "--http", f"127.0.0.1:{fixture_port}"])
        procs.start([everything, "streamableHttp"], env={"PORT": str(everything_port)})
        config = work / "conformance.yaml"
        config.write_text(
            'version: "1.0"\n'
            "servers:\n"
            f"  - name: conformance\n    type: stdio\n    command: {fixture}\n    args: [conformance]\n"
            f"  - name: everything\n    type: stdio\n    command: {everything}\n    args: [stdio]\n"
        )
        procs.start(
            [mcpq, "up", "--config", config, "--listen", f"127.0.0.1:{mcpq_port}",
             "--nats-port", nats_port, "--data-dir", work / "mcpq"],
            env={"PATH": f"{nats_bin}:{os.environ.get('PATH', '')}", "MCPQ_LOG": "warn"},
            log=(work / "mcpq.log").open("w"),
        )
        for port in (fixture_port, everything_port, mcpq_port):
            wait_port(port)
        # mcpq answers once the workers have published both catalogs.
        wait_catalog(mcpq_port)

        targets = {
            "fixture-direct": f"http://127.0.0.1:{fixture_port}/mcp",
            "fixture-mcpq": f"http://127.0.0.1:{mcpq_port}/servers/conformance/mcp",
            "everything-direct": f"http://127.0.0.1:{everything_port}/mcp",
            "everything-mcpq": f"http://127.0.0.1:{mcpq_port}/servers/everything/mcp",
        }
        started = time.time()
        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
            futures = {key: pool.submit(run_suite, url, work, key) for key, url in targets.items()}
            results = {key: f.result() for key, f in futures.items()}
        elapsed = time.time() - started
    finally:
        procs.stop()

    columns = [
        ("fixture-direct", "fixture direct"),
        ("fixture-mcpq", "fixture through mcpq"),
        ("everything-direct", "server-everything direct"),
        ("everything-mcpq", "server-everything through mcpq"),
    ]
    rendered = table(columns, results)
    print(rendered)
    print(f"\nconformance {SUITE_VERSION} --suite all, four runs in {elapsed:.0f} s; logs in {work}")

    lost = [
        f"{s} ({upstream})"
        for upstream in ("fixture", "everything")
        for s in results[f"{upstream}-direct"]
        if passed(results[f"{upstream}-direct"], s) and not passed(results[f"{upstream}-mcpq"], s)
    ]
    failing = [
        s
        for s in results["fixture-mcpq"]
        if not passed(results["fixture-mcpq"], s) and not skipped(results["fixture-mcpq"], s)
    ]
    if args.write:
        text = DOC.read_text()
        if BEGIN not in text or END not in text:
            sys.exit(f"conformance: docs/conformance.md has no {BEGIN} ... {END} section")
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        DOC.write_text(f"{head}{BEGIN}\n{rendered}\n{END}{tail}")
        print("docs/conformance.md updated")
    if lost:
        print(f"\nconformance: FAILED: passes directly but not through mcpq: {', '.join(lost)}")
    if failing:
        print(f"\nconformance: FAILED: fails through mcpq against the fixture: {', '.join(failing)}")
    if lost or failing:
        sys.exit(1)
    shutil.rmtree(work, ignore_errors=True)
    print(
        "conformance: every scenario passes through mcpq against the fixture (those the suite "
        "skips itself aside), and every one that passes directly passes through mcpq"
    )


def wait_catalog(port, timeout=60):
    """Waits until both servers' tools are listed through mcpq (their catalogs are published)."""
    import json
    import urllib.request

    deadline = time.time() + timeout
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {
        "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                  "io.modelcontextprotocol/clientInfo": {"name": "conformance.py", "version": "1"},
                  "io.modelcontextprotocol/clientCapabilities": {}}}}).encode()
    while time.time() < deadline:
        ready = True
        for server in ("conformance", "everything"):
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/servers/{server}/mcp", data=body, method="POST",
                headers={"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
                         "MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/list"})
            try:
                with urllib.request.urlopen(request, timeout=5) as answer:
                    ready &= b'"name"' in answer.read()
            except OSError:
                ready = False
        if ready:
            return
        time.sleep(0.2)
    sys.exit(f"conformance: mcpq on port {port} lists no tools after {timeout}s")


if __name__ == "__main__":
    main()
