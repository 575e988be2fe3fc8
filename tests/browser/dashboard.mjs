// Drives the /ui dashboard of a live `hangar serve` in headless Chromium (Debian's
// chromium through playwright-core) and fails on any broken page.
//
//   node dashboard.mjs BASE_URL ADMIN_TOKEN READER_KEY SCREENSHOT_DIR
//
// Checks: every page loads with no JavaScript error or console error; the overview
// charts draw samples from the server; the request log is searchable and a request
// opens in full; drift shows the served model; a reader's promote is refused with the
// server's message while an admin's promote moves the version to production.
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";

const [base, adminToken, readerKey, shots] = process.argv.slice(2);
if (!base || !adminToken || !readerKey || !shots) {
  console.error("usage: node dashboard.mjs BASE_URL ADMIN_TOKEN READER_KEY SCREENSHOT_DIR");
  process.exit(2);
}
mkdirSync(shots, { recursive: true });

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
});
const failures = [];
const check = (ok, what) => { if (!ok) failures.push(what); console.log((ok ? "ok   " : "FAIL ") + what); };

async function session(key) {
  const page = await browser.newPage({ viewport: { width: 1366, height: 900 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push("page error: " + e.message));
  page.on("console", (m) => {
    // A refused call (403 for a reader) is logged by the browser itself; the page
    // shows it to the user, which the checks below assert.
    if (m.type() === "error" && !m.text().startsWith("Failed to load resource")) errors.push("console: " + m.text());
  });
  await page.goto(base + "/ui/");
  await page.fill("#key", key);
  await page.click("#key-form button");
  return { page, errors };
}

async function visit(page, hash) {
  await page.evaluate((h) => { location.hash = h; }, hash);
  await page.waitForLoadState("networkidle");
}

try {
  // --- as the admin
  const { page, errors } = await session(adminToken);

  await visit(page, "#overview");
  await page.waitForSelector(".uplot", { timeout: 15000 });
  const drawn = await page.$$eval(".uplot", (n) => n.length);
  check(drawn === 6, `overview draws 6 charts (${drawn})`);
  const samples = Number(await page.locator(".stat", { hasText: "Samples" }).locator("b").innerText());
  check(samples > 0, `overview charts hold server samples (${samples})`);
  const tps = await page.locator(".stat", { hasText: "Models" }).locator("b").innerText();
  check(tps.length > 0 && tps !== "none", `overview names the served model (${tps})`);
  await page.screenshot({ path: `${shots}/overview.png`, fullPage: true });

  await visit(page, "#requests");
  await page.fill("#q", "lighthouse");
  await page.click("form[role=search] button");
  await page.waitForSelector("table[aria-label=Requests] tbody tr", { timeout: 10000 });
  const rows = await page.locator("table[aria-label=Requests] tbody tr").count();
  check(rows >= 1, `request search finds the logged request (${rows} rows)`);
  await page.locator("table[aria-label=Requests] tbody tr").first().press("Enter");
  await page.waitForSelector("#detail h3");
  const detail = await page.locator("#detail").innerText();
  check(detail.includes("lighthouse") && detail.includes("Answer"), "a request opens in full with the keyboard");
  await page.screenshot({ path: `${shots}/requests.png`, fullPage: true });

  await visit(page, "#drift");
  await page.waitForSelector("section[aria-label^='Drift of']", { timeout: 10000 });
  const driftText = await page.locator("main").innerText();
  check(driftText.includes("unseen-token share") && driftText.includes("Usage and cost"), "drift page shows the tests and usage");
  await page.waitForSelector("#drift-over-time .uplot", { timeout: 10000 });
  const series = await page.locator("#drift-over-time .u-legend .u-series").count();
  check(series === 4, `drift page draws drift and quality over time (${series - 1} series)`);
  await page.screenshot({ path: `${shots}/drift.png`, fullPage: true });

  await visit(page, "#runs");
  await page.waitForSelector("table[aria-label=Runs] tbody tr", { timeout: 10000 });
  await page.check("input[aria-label='Compare run ui-run']");
  await page.waitForSelector(".card.chart .uplot", { timeout: 10000 });
  const runChart = await page.locator(".card.chart .uplot .u-title").first().innerText();
  check(runChart.includes("loss"), `a run's metric history draws (${runChart})`);
  await page.screenshot({ path: `${shots}/runs.png`, fullPage: true });

  // --- a reader cannot promote
  const reader = await session(readerKey);
  await visit(reader.page, "#models");
  await reader.page.waitForSelector("section[aria-label='Model tiny'] button");
  await reader.page.click("button[aria-label='Promote tiny version 1 to production']");
  await reader.page.waitForSelector("#alert:not([hidden])", { timeout: 10000 });
  const refusal = await reader.page.locator("#alert").innerText();
  check(refusal.includes("403"), `a reader's promote is refused (${refusal.slice(0, 120)})`);
  const readerStage = await reader.page.locator("section[aria-label='Model tiny'] tbody tr").filter({ hasText: "v1" }).locator(".pill").innerText();
  check(readerStage !== "production", `the version did not move for the reader (stage ${readerStage})`);
  check(reader.errors.length === 0, "reader session has no console errors: " + reader.errors.join(" | "));

  // --- the admin can
  await visit(page, "#models");
  await page.waitForSelector("section[aria-label='Model tiny'] button");
  await page.click("button[aria-label='Promote tiny version 1 to production']");
  await page.waitForSelector("button[aria-label='Demote tiny version 1']", { timeout: 10000 });
  const stage = await page.locator("section[aria-label='Model tiny'] tbody tr").filter({ hasText: "v1" }).locator(".pill").innerText();
  check(stage === "production", `an admin promotes version 1 to production (stage ${stage})`);
  await page.screenshot({ path: `${shots}/models.png`, fullPage: true });

  check(errors.length === 0, "admin session has no console errors: " + errors.join(" | "));
} catch (e) {
  failures.push("exception: " + (e.stack || e));
  console.log("FAIL " + e);
} finally {
  await browser.close();
}
if (failures.length) {
  console.error(`${failures.length} dashboard check(s) failed:\n- ` + failures.join("\n- "));
  process.exit(1);
}
console.log("all dashboard checks passed");
