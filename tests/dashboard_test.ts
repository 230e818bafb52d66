/**
 * @module
 * The dashboard page (lib/dashboard.ts): a check of its source, and real headless-Chromium runs
 * against the admin handler over two services with three real backends (tests/admin_harness.ts:
 * real pools, health checks and requests), driven by playwright-core.
 *
 * The browser tests need Debian's Chromium at /usr/bin/chromium (`apt-get install chromium`).
 * Whether it can be launched is decided once at module load; when it cannot, the browser tests
 * report themselves as ignored with the reason in their names, never passing silently.
 *
 * The browser test takes the screenshot in docs/operations.md into a temporary file and checks it; only
 * `deno task screenshot` (which sets UPDATE_SCREENSHOT=1) copies it over docs/dashboard.png, so
 * a test run leaves the working tree as it found it.
 */
import assert from "node:assert/strict";
import { type BrowserContext, chromium, type Page } from "playwright-core";
import { DASHBOARD_CSP, DASHBOARD_HTML } from "../lib/dashboard.ts";
import type { RouteView } from "../lib/admin.ts";
import {
  type AdminHarness,
  type HarnessBackend,
  startAdmin,
  startBackend,
} from "./admin_harness.ts";

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

const CHROMIUM = "/usr/bin/chromium";
/** As on the build machines: without the networking flags Chromium tries to reach Google. */
const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];
/** The screenshot in docs/operations.md, rewritten only when the environment asks (`deno task screenshot`). */
const SCREENSHOT = new URL("../docs/dashboard.png", import.meta.url);
const UPDATE_SCREENSHOT = Deno.env.get("UPDATE_SCREENSHOT") === "1";
/** Width of the browser's viewport, and so of the screenshot. */
const VIEWPORT = { width: 1360, height: 660 };
/** Longest wait for the page to show a change (it polls every second). */
const WAIT_MS = 5000;

/** A browser with a fresh profile in a temporary directory; disposing removes both. */
async function openBrowser(): Promise<BrowserContext & AsyncDisposable> {
  const profile = await Deno.makeTempDir({ prefix: "dashboard-test-" });
  try {
    const context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      args: CHROMIUM_ARGS,
      viewport: VIEWPORT,
      timeout: 30_000,
    });
    return Object.assign(context, {
      async [Symbol.asyncDispose]() {
        await context.close();
        await Deno.remove(profile, { recursive: true });
      },
    });
  } catch (error) {
    await Deno.remove(profile, { recursive: true });
    throw error;
  }
}

/** Launches Chromium once to learn whether the browser tests can run here. */
async function browserUnavailable(): Promise<string> {
  try {
    await Deno.stat(CHROMIUM);
  } catch {
    return `no Chromium at ${CHROMIUM} (apt-get install chromium)`;
  }
  try {
    await using _browser = await openBrowser();
    return "";
  } catch (error) {
    return `Chromium does not start: ${String((error as Error).message).split("\n")[0]}`;
  }
}

const skipReason = await browserUnavailable();
if (skipReason !== "") console.log(`dashboard browser tests skipped: ${skipReason}`);
const skipped = skipReason === "" ? "" : ` (skipped: ${skipReason})`;

if (UPDATE_SCREENSHOT && skipReason !== "") {
  // Asked for explicitly: an ignored test must not look like an updated screenshot.
  Deno.test("UPDATE_SCREENSHOT=1: the screenshot can be taken", () => {
    assert.fail(`cannot take the screenshot: ${skipReason}`);
  });
}

/** Width and height from a PNG's IHDR chunk; throws when `bytes` is not a PNG. */
function pngSize(bytes: Uint8Array): { width: number; height: number } {
  const signature = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];
  assert.deepEqual([...bytes.subarray(0, 8)], signature, "not a PNG file");
  assert.equal(new TextDecoder().decode(bytes.subarray(12, 16)), "IHDR");
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return { width: view.getUint32(16), height: view.getUint32(20) };
}

/**
 * Takes a full-page screenshot into a temporary file, checks it is a PNG of the viewport's width
 * and at least its height, and copies it to docs/dashboard.png when UPDATE_SCREENSHOT=1.
 */
async function takeScreenshot(page: Page): Promise<void> {
  const path = await Deno.makeTempFile({ prefix: "dashboard-", suffix: ".png" });
  try {
    await page.screenshot({ path, fullPage: true });
    const bytes = await Deno.readFile(path);
    const { width, height } = pngSize(bytes);
    assert.equal(width, VIEWPORT.width);
    assert.ok(height >= VIEWPORT.height, `screenshot is ${width}x${height}`);
    assert.ok(bytes.length > 10_000, `a ${bytes.length}-byte screenshot is a blank page`);
    if (UPDATE_SCREENSHOT) {
      await Deno.copyFile(path, SCREENSHOT);
      console.log(`updated ${SCREENSHOT.pathname} (${width}x${height})`);
    }
  } finally {
    await Deno.remove(path);
  }
}

/** A backend that answers after `latencyMs`, with a 500 for paths containing "fail". */
function slowBackend(latencyMs: number): HarnessBackend {
  return startBackend(async (req) => {
    await delay(latencyMs);
    const failing = new URL(req.url).pathname.includes("fail");
    return new Response(failing ? "failed\n" : "ok\n", { status: failing ? 500 : 200 });
  });
}

/**
 * Sends about `perSecond` requests a second, alternately through the `api` route to service
 * `api` and the `site` route to service `web` (every tenth to a failing path), until stopped,
 * or at most for `maxMs`.
 */
function startTraffic(h: AdminHarness, perSecond = 40, maxMs = 60_000) {
  let stopped = false;
  const deadline = Date.now() + maxMs;
  const running = (async () => {
    for (let i = 0; !stopped && Date.now() < deadline; i++) {
      const path = `/${i % 10 === 9 ? "fail" : "page"}/${i}`;
      await (i % 2 === 0 ? h.send("api", "api", path) : h.send("site", "web", path));
      await delay(1000 / perSecond);
    }
  })();
  return {
    async [Symbol.asyncDispose]() {
      stopped = true;
      await running;
    },
  };
}

/** The status of `url` in `service` as the admin API reports it. */
async function apiStatus(h: AdminHarness, service: string, url: string): Promise<string> {
  const response = await fetch(`${h.url}/api/services`);
  const body = await response.json();
  assert.equal(response.status, 200);
  const found = body.services.find((s: { name: string }) => s.name === service);
  return found?.backends.find((b: { url: string }) => b.url === url)?.status;
}

const ROUTES: RouteView[] = [
  { name: "api", match: "host=api.example path=/v1", action: "service api (strip)" },
  { name: "legacy", match: "path=/old", action: "redirect 308 https://example.com/new" },
  { name: "site", match: "any", action: "service web" },
];

/** Polls `check` every 100 ms until it holds; fails naming `what` after {@linkcode WAIT_MS}. */
async function waitUntil(what: string, check: () => Promise<boolean>): Promise<void> {
  const deadline = Date.now() + WAIT_MS;
  while (!(await check())) {
    if (Date.now() > deadline) assert.fail(`the page did not show ${what} within ${WAIT_MS} ms`);
    await delay(100);
  }
}

const row = (url: string) => `tr[data-url="${url}"]`;

/** Waits until the row of `url` shows `status` (and its badge says so). */
async function expectRowStatus(page: Page, url: string, status: string): Promise<void> {
  await page.waitForSelector(`${row(url)}[data-status="${status}"]`, { timeout: WAIT_MS });
  assert.equal(await page.textContent(`${row(url)} .badge`), status);
}

Deno.test("DASHBOARD_HTML loads nothing from elsewhere and never parses API data as HTML", () => {
  const html = DASHBOARD_HTML;
  // No external resources: no absolute or protocol-relative URL in src/href/url()/@import.
  assert.doesNotMatch(html, /\b(src|href)\s*=\s*["']?\s*(https?:)?\/\//i);
  assert.doesNotMatch(html, /url\(|@import|\/\/cdn/i);
  // The only absolute URL is the SVG namespace, an identifier that is never fetched.
  const urls = html.match(/https?:\/\/[^\s"')]+/g) ?? [];
  assert.deepEqual([...new Set(urls)], ["http://www.w3.org/2000/svg"]);
  // Requests go only to the same-origin admin API, and the CSP enforces it in the browser.
  assert.deepEqual(html.match(/fetch\([^,)]*/g), ["fetch(path"]);
  assert.deepEqual(
    [...new Set(html.match(/"\/api\/[a-z/]*"/g))].sort(),
    ['"/api/backends/"', '"/api/services"'],
  );
  assert.match(DASHBOARD_CSP, /default-src 'none'/);
  assert.match(DASHBOARD_CSP, /connect-src 'self'/);
  assert.doesNotMatch(DASHBOARD_CSP, /unsafe-inline|unsafe-eval/);
  assert.ok(html.includes(`content="${DASHBOARD_CSP}"`));
  // Data reaches the DOM through textContent/setAttribute only: no HTML parsing at run time.
  assert.doesNotMatch(html, /innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval\(/);
  assert.doesNotMatch(html, /new Function|setTimeout\(\s*["']/);
  // One script and one style, both inline.
  assert.equal(html.match(/<script/g)?.length, 1);
  assert.equal(html.match(/<style/g)?.length, 1);
});

Deno.test({
  name:
    `dashboard shows live backends by service, routes, health flips, drain and enable in Chromium${skipped}`,
  ignore: skipReason !== "",
  async fn() {
    const started = performance.now();
    await using a = slowBackend(2);
    await using b = slowBackend(6);
    await using c = slowBackend(12);
    const h = startAdmin({
      services: [
        { name: "api", backends: [a.url, b.url] },
        { name: "web", backends: [c.url], policy: "least-conn" },
      ],
      routes: ROUTES,
      healthIntervalMs: 200,
    });
    let open = true;
    try {
      await using browser = await openBrowser();
      const page = browser.pages()[0] ?? await browser.newPage();
      const problems: string[] = [];
      page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
      page.on("console", (message) => {
        if (message.type() === "error") problems.push(`console: ${message.text()}`);
      });

      const response = await page.goto(`${h.url}/`);
      assert.equal(response?.status(), 200);
      for (const backend of [a, b, c]) await expectRowStatus(page, backend.url, "up");
      await page.waitForSelector('#conn[data-state="live"]', { timeout: WAIT_MS });

      // A heading per service with its policy, each with its own backends' rows.
      const service = (name: string) => `section.service[data-service="${name}"]`;
      assert.deepEqual(
        await page.locator("section.service .service-name").allTextContents(),
        ["api", "web"],
      );
      assert.equal(await page.textContent(`${service("api")} .policy`), "round-robin");
      assert.equal(await page.textContent(`${service("web")} .policy`), "least-conn");
      assert.deepEqual(
        await page.locator(`${service("api")} tr[data-url]`).evaluateAll((trs) =>
          trs.map((tr) => tr.getAttribute("data-url"))
        ),
        [a.url, b.url],
      );
      assert.equal(await page.locator(`${service("web")} ${row(c.url)}`).count(), 1);
      // The routes in match order.
      const routeCells = await page.locator("#routes tr").evaluateAll((trs) =>
        trs.map((tr) => [...tr.children].map((td) => td.textContent))
      );
      assert.deepEqual(
        routeCells,
        ROUTES.map((r, i) => [String(i + 1), r.name, r.match, r.action]),
      );
      assert.match((await page.textContent("#summary")) ?? "", /^2 services, 3 backends, 3 up$/);

      {
        await using _traffic = startTraffic(h);
        // Rates need two polls with traffic between them; latency needs answered requests.
        await waitUntil("a request rate and a p50 latency for a backend", async () => {
          const rate = Number(await page.textContent(`${row(c.url)} .c-rps`));
          const p50 = Number(await page.textContent(`${row(c.url)} .c-p50`));
          return rate > 0 && p50 > 0;
        });
        await waitUntil(
          "a request-rate line per backend",
          async () => await page.locator("#chart-rps path.series").count() === 3,
        );
        assert.deepEqual(
          await page.locator("#legend li").allTextContents(),
          [`api: ${a.url}`, `api: ${b.url}`, `web: ${c.url}`],
        );

        // Some history for the charts (and the screenshot) before things change.
        await delay(4000);

        // A backend that dies is shown down (health checks every 200 ms, fall 1).
        await a.close();
        await expectRowStatus(page, a.url, "down");

        // Drain from the page: the request names the service, the page and the API agree.
        await page.click(`${row(b.url)} button[data-action="drain"]`);
        await expectRowStatus(page, b.url, "draining");
        assert.equal(await apiStatus(h, "api", b.url), "draining");
        assert.match((await page.textContent("#message-text")) ?? "", /drain .* in api.*draining/);
        assert.equal(await page.isDisabled(`${row(b.url)} button[data-action="drain"]`), true);
        await page.waitForSelector(`${service("api")} .service-summary`, { timeout: WAIT_MS });
        await waitUntil(
          "no backend available in api",
          async () =>
            /0 available$/.test(
              (await page.textContent(`${service("api")} .service-summary`)) ?? "",
            ),
        );

        // Let the charts show the failure and the drain, then take the screenshot in docs/operations.md.
        await delay(4000);
        await takeScreenshot(page);

        await page.click(`${row(b.url)} button[data-action="enable"]`);
        await expectRowStatus(page, b.url, "up");
        assert.equal(await apiStatus(h, "api", b.url), "up");
        await expectRowStatus(page, c.url, "up");
        // No script error and no CSP violation so far (the faked 404 below logs one error).
        assert.deepEqual(problems, []);

        // A refused action shows the API's error, as text: markup in it is not interpreted.
        await page.route(
          (url) => url.pathname === "/api/backends/disable",
          (route) =>
            route.fulfill({
              status: 404,
              contentType: "application/json",
              body: JSON.stringify({ error: "<b>no such backend</b>" }),
            }),
        );
        await page.click(`${row(c.url)} button[data-action="disable"]`);
        await page.waitForSelector('#message[data-kind="error"]', { timeout: WAIT_MS });
        assert.match((await page.textContent("#message-text")) ?? "", /<b>no such backend<\/b>/);
        assert.equal(await page.locator("#message b").count(), 0);
        await page.unrouteAll();
        assert.equal(await apiStatus(h, "web", c.url), "up");
      }

      // A service removed by a reload leaves the page.
      h.services = [h.service("api")];
      await page.waitForSelector(`${service("web")}`, { state: "detached", timeout: WAIT_MS });
      assert.equal(await page.locator(row(c.url)).count(), 0);

      // When the admin listener goes away, the page says so instead of showing stale numbers.
      open = false;
      await h[Symbol.asyncDispose]();
      await page.waitForSelector('#conn[data-state="lost"]', { timeout: WAIT_MS });
      assert.equal(await page.textContent("#conn"), "connection lost");
      console.log(`browser test took ${Math.round(performance.now() - started)} ms`);
    } finally {
      if (open) await h[Symbol.asyncDispose]();
    }
  },
});

Deno.test({
  name: `dashboard asks for the admin token and keeps it for the session${skipped}`,
  ignore: skipReason !== "",
  async fn() {
    const token = "dashboard-test-token-0123456789";
    await using backend = slowBackend(1);
    await using h = startAdmin({ services: [{ name: "only", backends: [backend.url] }], token });
    await using browser = await openBrowser();
    const page = browser.pages()[0] ?? await browser.newPage();

    // The page itself needs no token; the API does, so the page asks for it.
    const response = await page.goto(`${h.url}/`);
    assert.equal(response?.status(), 200);
    await page.waitForSelector("#token-form:not([hidden])", { timeout: WAIT_MS });
    assert.equal(await page.getAttribute("#conn", "data-state"), "auth");
    assert.equal(await page.locator("tr[data-url]").count(), 0);
    // Nothing is loaded yet: the page does not claim there are no routes.
    assert.equal(await page.isHidden("#no-routes"), true);

    await page.fill("#token-input", token);
    await page.click('#token-form button[type="submit"]');
    await expectRowStatus(page, backend.url, "up");
    assert.equal(await page.isHidden("#token-form"), true);
    assert.equal(await page.evaluate(() => sessionStorage.getItem("lb-admin-token")), token);
    // No routes: the page says so.
    assert.equal(await page.isVisible("#no-routes"), true);
    assert.equal(await page.isHidden("#routes-table"), true);

    // A reload keeps the token (same tab session) and needs no form.
    await page.reload();
    await expectRowStatus(page, backend.url, "up");
    assert.equal(await page.isHidden("#token-form"), true);
  },
});
