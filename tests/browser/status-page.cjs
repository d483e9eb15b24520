// The status page in headless Chromium, driven by playwright-core (from `make tools`).
//
//   node tests/browser/status-page.cjs <dispatcher base URL> <screenshot.png> <server,server,...> [load seconds]
//
// Loads the page, waits for a row per server, runs load through /v1/jobs (echo calls on the
// first server) until the page shows calls per second above zero, takes a screenshot, and prints
// one JSON object: console errors, failed requests, the servers shown, the numbers before and after.
"use strict";
const { chromium } = require("playwright-core");

async function main() {
  const [base, screenshot, serverList, loadSecs = "6"] = process.argv.slice(2);
  const servers = serverList.split(",");
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  const problems = [];
  const page = await browser.newPage({ viewport: { width: 1280, height: 760 } });
  page.on("console", (m) => { if (m.type() === "error" || m.type() === "warning") problems.push(`console ${m.type()}: ${m.text()}`); });
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("requestfailed", (r) => problems.push(`request failed: ${r.url()} ${r.failure() && r.failure().errorText}`));
  page.on("response", (r) => { if (r.status() >= 400) problems.push(`HTTP ${r.status()}: ${r.url()}`); });
  await page.goto(base + "/", { waitUntil: "load" });
  await page.waitForFunction((n) => document.querySelectorAll("tr[data-server]").length === n, servers.length, { timeout: 30000 });
  const read = () => page.$$eval("tr[data-server]", (rows) => rows.map((r) => {
    const cell = (f) => r.querySelector(`[data-field="${f}"]`).textContent;
    return { server: r.dataset.server, calls: parseFloat(cell("calls")), queued: parseInt(cell("queued"), 10), health: cell("health"), workers: parseInt(cell("workers"), 10) };
  }));
  const before = await read();

  // Load: echo calls to the first server, 16 at a time, for `loadSecs` seconds at least and
  // until the page shows them.
  let stop = false, sent = 0;
  const until = Date.now() + parseFloat(loadSecs) * 1000;
  const worker = async () => {
    while (!stop) {
      const r = await fetch(base + "/v1/jobs", {
        method: "POST", headers: { "content-type": "application/json" },
        body: JSON.stringify({ server: servers[0], tool: "echo", arguments: { text: "load " + sent++ } }),
      });
      if (r.status !== 202) problems.push(`load: /v1/jobs answered ${r.status}`);
      await new Promise((ok) => setTimeout(ok, 5));
    }
  };
  const load = Array.from({ length: 16 }, worker);
  let after = before;
  const deadline = Date.now() + 60000;
  while (Date.now() < deadline) {
    await new Promise((ok) => setTimeout(ok, 500));
    after = await read();
    if (Date.now() >= until && after.some((s) => s.calls > 0)) break;
  }
  await page.screenshot({ path: screenshot, fullPage: true });
  stop = true;
  await Promise.all(load);
  await browser.close();
  console.log(JSON.stringify({ problems, shown: after.map((s) => s.server), before, after, sent }));
}

main().catch((e) => { console.error(e && e.stack || String(e)); process.exit(1); });
