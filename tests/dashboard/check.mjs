// Browser check of the operator dashboard (GET /admin), driven by Debian's chromium through
// playwright-core. Meant to be spawned by a Rust integration test (or run by hand):
//
//   BASE_URL=http://127.0.0.1:8080 ADMIN_TOKEN=secret SCREENSHOT=/tmp/dash.png node check.mjs
//
// Env:
//   BASE_URL           required, the service origin (no trailing /admin)
//   ADMIN_TOKEN        the admin token ("" when the service has none)
//   SCREENSHOT         where to save a PNG of the final page (default: dashboard.png in the cwd)
//   SCREENSHOT_MOBILE  optional, also save a 390x844 (phone) screenshot there
//   TRIGGER_FAULTS     "0" = do not enable faults / submit jobs (the caller already did it,
//                      after the page showed "closed"); default: the script does it itself
//   CHROMIUM           browser binary (default /usr/bin/chromium)
//   STEP_TIMEOUT_MS    how long each wait may take (default 45000)
// Exit 0 on success; 1 with "dashboard check FAILED at <step>: <why>" on stderr otherwise.
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";

const started = Date.now();
const BASE_URL = (process.env.BASE_URL || "").replace(/\/+$/, "");
const TOKEN = process.env.ADMIN_TOKEN ?? "";
const SCREENSHOT = process.env.SCREENSHOT || path.resolve("dashboard.png");
const SCREENSHOT_MOBILE = process.env.SCREENSHOT_MOBILE || "";
const TRIGGER = process.env.TRIGGER_FAULTS !== "0";
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const STEP_TIMEOUT = Number(process.env.STEP_TIMEOUT_MS || 45_000);

let step = "setup";
const log = (msg) => console.log(`[dashboard-check +${((Date.now() - started) / 1000).toFixed(1)}s] ${msg}`);
const fail = (msg) => { throw new Error(msg); };

if (!BASE_URL) { console.error("dashboard check FAILED: BASE_URL is not set"); process.exit(2); }
const origin = new URL(BASE_URL).origin;

async function api(method, p, body, auth = true) {
  const headers = { "content-type": "application/json" };
  if (auth && TOKEN) headers.authorization = `Bearer ${TOKEN}`;
  const r = await fetch(BASE_URL + p, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await r.text();
  if (!r.ok) fail(`${method} ${p} answered ${r.status}: ${text.slice(0, 300)}`);
  return text ? JSON.parse(text) : null;
}

const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), "sandwarden-dash-"));
const foreign = [];
const pageErrors = [];
const consoleLines = [];
let context, page, navigations = 0;

async function breakerText() {
  return (await page.locator("#breaker-state").textContent({ timeout: 2000 }).catch(() => null))?.trim();
}
async function waitBreaker(want, onTick) {
  const deadline = Date.now() + STEP_TIMEOUT;
  let seen = null, nextTick = 0;
  while (Date.now() < deadline) {
    seen = await breakerText();
    if (seen === want) return;
    if (await page.locator("#token-form").isVisible().catch(() => false)) {
      fail(`the dashboard shows the token form again: the server refused ADMIN_TOKEN (401). ` +
        (await page.locator("#token-error").textContent().catch(() => "")));
    }
    if (onTick && Date.now() >= nextTick) { nextTick = Date.now() + 2000; await onTick(); }
    await page.waitForTimeout(150);
  }
  fail(`#breaker-state still shows ${JSON.stringify(seen)} after ${STEP_TIMEOUT} ms, wanted ${JSON.stringify(want)}` +
    ` (connection status: ${JSON.stringify(await page.locator("#conn-status").textContent().catch(() => "?"))})`);
}

let code = 0;
try {
  step = "launch chromium";
  if (!fs.existsSync(CHROMIUM)) fail(`${CHROMIUM} not found (apt-get install -y chromium)`);
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    viewport: { width: 1280, height: 900 },
    timeout: 30_000,
  });
  context.on("request", (req) => {
    const u = req.url();
    if (/^(data|blob|about|chrome|chrome-extension|devtools):/i.test(u)) return;
    let o;
    try { o = new URL(u).origin; } catch { o = "(unparsable)"; }
    if (o !== origin) foreign.push(`${req.method()} ${u}`);
  });
  page = context.pages()[0] || (await context.newPage());
  page.on("pageerror", (e) => pageErrors.push(String(e && e.stack || e)));
  page.on("console", (m) => { consoleLines.push(`${m.type()}: ${m.text()}`); if (consoleLines.length > 50) consoleLines.shift(); });
  page.on("framenavigated", (f) => { if (f === page.mainFrame()) navigations += 1; });
  page.setDefaultTimeout(STEP_TIMEOUT);

  step = "open /admin";
  const resp = await page.goto(`${BASE_URL}/admin`, { waitUntil: "domcontentloaded" });
  if (!resp || resp.status() !== 200) fail(`GET /admin answered ${resp && resp.status()}`);
  log(`opened ${BASE_URL}/admin`);

  step = "enter the admin token";
  await page.locator("#token-form").waitFor({ state: "visible" });
  await page.locator("#token-input").fill(TOKEN);
  await page.locator("#token-input").press("Enter");
  await page.locator("#token-form").waitFor({ state: "hidden" });

  step = "wait for the breaker to show closed";
  await waitBreaker("closed");
  const navBefore = navigations;
  await page.evaluate(() => { window.__dashCheckMarker = 42; });
  log("breaker closed");

  step = "rate-limit usage bar for sandbox_create";
  await page.locator("#usage-sandbox_create").waitFor({ state: "attached" });

  step = "make the provider fail and wait for the breaker to show open";
  let submitted = 0;
  const submit = async () => {
    await api("POST", "/v1/jobs", { user_id: "dash", steps: [{ run: { cmd: "true" } }] }, false);
    submitted += 1;
  };
  if (TRIGGER) {
    await api("PUT", "/v1/admin/faults", { enabled: true, error_rate: 1.0, status: 503 });
    for (let i = 0; i < 3; i++) await submit();
  }
  // Keep a job arriving every 2 s while waiting, in case the breaker needs more failures.
  await waitBreaker("open", TRIGGER ? submit : undefined);
  if (navigations !== navBefore || (await page.evaluate(() => window.__dashCheckMarker)) !== 42) fail("the page reloaded; it must update in place");
  log(`breaker open (submitted ${submitted} jobs), page not reloaded`);

  step = "rate-limit usage bar for sandbox_create (after faults)";
  if ((await page.locator("#usage-sandbox_create").count()) !== 1) fail("#usage-sandbox_create is missing");
  if ((await page.locator("#jobs-table tbody tr[data-id]").count()) < 1 && TRIGGER) fail("#jobs-table lists no jobs after submitting some");

  step = "switch faults off and reset the breaker from the page";
  await api("PUT", "/v1/admin/faults", { enabled: false });
  await page.locator("#reset-breaker").click();
  await waitBreaker("closed");
  log("breaker closed again after #reset-breaker");

  step = "screenshot";
  await page.waitForTimeout(1200); // one more poll so every panel shows the final state
  fs.mkdirSync(path.dirname(path.resolve(SCREENSHOT)), { recursive: true });
  await page.screenshot({ path: SCREENSHOT, fullPage: true });
  log(`screenshot ${SCREENSHOT}`);
  if (SCREENSHOT_MOBILE) {
    await page.setViewportSize({ width: 390, height: 844 });
    await page.waitForTimeout(1200);
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    if (overflow > 2) fail(`at 390 px wide the page scrolls sideways by ${overflow} px`);
    await page.screenshot({ path: SCREENSHOT_MOBILE, fullPage: true });
    log(`phone screenshot ${SCREENSHOT_MOBILE}`);
  }

  step = "requests stay on the page's origin";
  if (foreign.length) fail(`the page made ${foreign.length} request(s) to another origin than ${origin}:\n  ${foreign.slice(0, 10).join("\n  ")}`);

  step = "no uncaught page errors";
  if (pageErrors.length) fail(`uncaught errors in the page:\n  ${pageErrors.slice(0, 5).join("\n  ")}`);

  log(`OK in ${((Date.now() - started) / 1000).toFixed(1)} s`);
} catch (e) {
  code = 1;
  console.error(`dashboard check FAILED at "${step}": ${e && e.message || e}`);
  if (consoleLines.length) console.error("last browser console lines:\n  " + consoleLines.slice(-10).join("\n  "));
  if (page) {
    const failShot = SCREENSHOT.replace(/(\.png)?$/i, ".failed.png");
    await page.screenshot({ path: failShot, fullPage: true }).then(() => console.error(`failure screenshot: ${failShot}`), () => {});
  }
} finally {
  if (context) await context.close().catch(() => {});
  fs.rmSync(userDataDir, { recursive: true, force: true });
}
process.exit(code);
