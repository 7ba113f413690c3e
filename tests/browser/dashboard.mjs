// Drives the daemon's dashboard in a real headless chromium:
//   node dashboard.mjs URL TOKEN SCREENSHOT_PATH
// (1) loads the dashboard of a daemon that holds a dead letter, sees the partitions view and,
// on a click, the dead letter's payload and error, (2) sees the projections, (3) clicks retry on
// the dead letter and sees it gone and the projection caught up, then sees the lag charts grow,
// (4) saves a screenshot. Prints what it saw as JSON lines; exits non-zero on any failure.
// cli/tests/browser.rs prepares the daemon and runs this script.
import { mkdirSync } from "node:fs";
import { dirname } from "node:path";
import { chromium } from "playwright-core";

const [url, token, shot] = process.argv.slice(2);
if (!url || !token || !shot) {
  console.error("usage: node dashboard.mjs URL TOKEN SCREENSHOT_PATH");
  process.exit(2);
}
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
const seen = (step, what) => console.log(JSON.stringify({ step, ...what }));

async function rowFacts(page) {
  return page.$$eval("#projections tbody tr[data-projection]", (rows) => rows.map((r) => ({
    name: r.dataset.projection,
    state: r.dataset.state,
    checkpoint: r.querySelector('[data-field="checkpoint"]')?.textContent,
    lag: r.querySelector('[data-field="lag"]')?.textContent,
    errors: r.querySelector('[data-field="errors"]')?.textContent,
    dead_letters: r.querySelector('[data-field="dead-letters"]')?.textContent,
    background: getComputedStyle(r.querySelector("td")).backgroundColor,
  })));
}

const browser = await chromium.launch({
  executablePath,
  headless: true,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run"],
});
let failed = false;
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 720 } });
  const consoleErrors = [];
  // Failed loads are checked by status below (/health/ready may answer 503 on purpose).
  page.on("console", (m) => {
    if (m.type() === "error" && !m.text().startsWith("Failed to load resource")) consoleErrors.push(m.text());
  });
  page.on("response", (r) => {
    if (r.status() >= 400 && !r.url().endsWith("/health/ready")) consoleErrors.push(`${r.status()} ${r.url()}`);
  });
  page.on("pageerror", (e) => consoleErrors.push(String(e)));
  const external = [];
  page.on("request", (r) => { if (!r.url().startsWith(url)) external.push(r.url()); });

  // (1) The dashboard loads, with a dead letter.
  await page.goto(url, { waitUntil: "load" });
  await page.waitForSelector("#dead-letters tbody tr[data-dead-letter]", { timeout: 15000 });
  const title = await page.title();
  const letters = await page.$$eval("#dead-letters tbody tr[data-dead-letter]", (rows) =>
    rows.map((r) => ({ id: r.dataset.deadLetter, projection: r.dataset.projection, text: r.innerText.replace(/\s+/g, " ").trim() })));
  seen("loaded", { title, health: await page.textContent("#health"), dead_letters: letters });

  // (1b) The partitions view: one row per partition, with its owner, checkpoint and lag.
  await page.waitForSelector('#partitions tbody tr[data-partition="items/0"]', { timeout: 15000 });
  const partitions = await page.$$eval("#partitions tbody tr[data-partition]", (rows) => rows.map((r) => ({
    partition: r.dataset.partition,
    owner: r.querySelector('[data-field="owner"]')?.textContent,
    checkpoint: r.querySelector('[data-field="checkpoint"]')?.textContent,
    lag: r.querySelector('[data-field="lag"]')?.textContent,
  })));
  seen("partitions", { partitions });
  for (const name of ["items", "totals", "audit"]) {
    const p = partitions.find((r) => r.partition === `${name}/0`);
    if (!p) throw new Error(`no partition row for ${name}`);
    if (!p.owner || !/^[\d,]+$/.test(p.checkpoint) || !/^[\d,]+$/.test(p.lag)) {
      throw new Error(`partition row of ${name} lacks its owner, checkpoint or lag: ${JSON.stringify(p)}`);
    }
  }

  // (1c) A click on a dead letter shows its payload and its error.
  const letter = letters.find((l) => l.projection === "items") || letters[0];
  await page.locator(`#dead-letters tbody tr[data-dead-letter="${letter.id}"] td:nth-child(2)`).click();
  const details = `#dead-letters tr.dl-details[data-details-for="${letter.id}"]`;
  await page.waitForSelector(`${details} pre[data-field="payload"]`, { timeout: 5000 });
  const payload = await page.textContent(`${details} pre[data-field="payload"]`);
  const shownError = await page.textContent(`${details} pre[data-field="error"]`);
  seen("dead_letter_details", { dead_letter: letter.id, payload, error: shownError });
  if (JSON.parse(payload).code !== "Z") throw new Error(`the payload shown is not the failing event's: ${payload}`);
  if (!shownError || !letter.text.includes(shownError.slice(0, 20))) {
    throw new Error(`the error shown is not the dead letter's: ${shownError}`);
  }

  // (2) The projections.
  await page.waitForSelector('#projections tbody tr[data-projection="items"]');
  const before = await rowFacts(page);
  seen("projections", { projections: before });
  if (before.length < 2) throw new Error(`expected the projections in the table, saw ${before.length}`);
  const stopped = before.find((r) => r.state === "stopped");
  const running = before.find((r) => r.state === "running");
  if (stopped && running && stopped.background === running.background) {
    throw new Error("a stopped projection does not stand out: same background as a running one");
  }

  // (3) Retry the dead letter with the token; it disappears, and its projection is caught up.
  await page.fill("#token", token);
  await page.click('#token-form button[type="submit"]');
  const target = letters.find((l) => l.projection === "items") || letters[0];
  const row = page.locator(`#dead-letters tbody tr[data-dead-letter="${target.id}"]`);
  await row.locator('button[data-action="retry"]').click();
  await page.waitForSelector(`#dead-letters tbody tr[data-dead-letter="${target.id}"]`, { state: "detached", timeout: 15000 });
  const message = await page.textContent("#message");
  seen("retried", { dead_letter: target.id, message });
  await page.waitForFunction((name) => {
    const r = document.querySelector(`#projections tbody tr[data-projection="${name}"]`);
    return r && r.dataset.state === "running" &&
      r.querySelector('[data-field="lag"]').textContent === "0" &&
      r.querySelector('[data-field="dead-letters"]').textContent === "0";
  }, target.projection, { timeout: 15000 });
  const after = await rowFacts(page);
  const remaining = await page.$$eval("#dead-letters tbody tr[data-dead-letter]", (rows) => rows.map((r) => r.dataset.deadLetter));
  seen("caught_up", { projection: target.projection, projections: after, dead_letters_left: remaining });

  // (3b) The lag charts: one per projection, drawn from the daemon's samples, which grow.
  const points = () => page.$$eval("#lag-charts svg[data-chart]", (svgs) => Object.fromEntries(
    svgs.map((s) => [s.dataset.chart, Number(s.dataset.points)])));
  const first = await points();
  await page.waitForFunction((before) => {
    const svgs = [...document.querySelectorAll("#lag-charts svg[data-chart]")];
    return ["items", "totals", "audit"].every((n) => {
      const s = svgs.find((x) => x.dataset.chart === n);
      return s && Number(s.dataset.points) >= 2 && Number(s.dataset.points) > (before[n] || 0) &&
        s.querySelector("polyline").getAttribute("points").split(" ").length === Number(s.dataset.points);
    });
  }, first, { timeout: 20000 });
  const history = await (await page.request.get(`${url}api/lag-history`)).json();
  const charts = await points();
  seen("lag_chart", { before: first, after: charts, samples: Object.fromEntries(
    Object.entries(history.projections).map(([n, s]) => [n, s.length])) });
  if (history.window_seconds !== 900) throw new Error(`the history spans ${history.window_seconds} s, not 15 minutes`);

  // (4) The screenshot, after a few refreshes so that the sparklines have a history.
  await page.waitForTimeout(4000);
  mkdirSync(dirname(shot), { recursive: true });
  await page.screenshot({ path: shot, fullPage: true });
  seen("screenshot", { path: shot });
  if (external.length) throw new Error(`the dashboard fetched from elsewhere: ${external.join(", ")}`);
  if (consoleErrors.length) throw new Error(`console errors: ${consoleErrors.join(" | ")}`);
} catch (e) {
  failed = true;
  console.error(`browser test failed: ${e.stack || e}`);
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
