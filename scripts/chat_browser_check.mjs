// Headless-Chromium end-to-end check of the tethernet-gateway chat page.
//
// Usage: node scripts/chat_browser_check.mjs http://127.0.0.1:PORT/ TOKEN_A TOKEN_B [SCREENSHOT.png]
//
// Opens the chat page served by a running gateway in two separate browser
// contexts (A and B, no shared storage), logs each in with its own token
// (A types the token into #token, B passes it as the URL fragment #token=...,
// so both ways the page accepts a token are exercised), waits until both have
// joined the room from #room (default "lobby"), lets A and then B send a
// message with a random suffix, and checks that EACH page shows BOTH messages
// as div.chat elements in #log -- i.e. each page received the other's message
// over the WebSocket -- and that #log[data-messages] agrees with the number of
// div.chat elements and no data-seq appears twice.
// With a fourth argument it writes a screenshot of page B.
//
// playwright-core is loaded with `import("playwright-core")` or, failing that,
// with require() -- which, unlike import, honours NODE_PATH -- so
// `NODE_PATH=/some/cache/node_modules node scripts/chat_browser_check.mjs ...`
// works without a node_modules next to this file
// (scripts/chat_browser_check.sh does exactly that).
//
// Environment: CHROMIUM (browser binary, default /usr/bin/chromium),
// STEP_TIMEOUT_MS (per step, default 15000).
//
// Exit codes: 0 ok, 1 check failed, 2 usage error / playwright-core or chromium missing.

import { createRequire } from "node:module";
import { randomBytes } from "node:crypto";
import { existsSync } from "node:fs";

const STEP_MS = Number(process.env.STEP_TIMEOUT_MS) || 15_000;
// Hard limit for the whole run, in case something hangs outside a step timeout.
const WATCHDOG_MS = 60_000;
const started = Date.now();

function log(msg) {
  const t = ((Date.now() - started) / 1000).toFixed(1).padStart(5);
  console.log(`[chat-check ${t}s] ${msg}`);
}

class CheckFailure extends Error {}

function usage(msg) {
  if (msg) console.error(`error: ${msg}`);
  console.error("usage: node chat_browser_check.mjs http://HOST:PORT/ TOKEN_A TOKEN_B [SCREENSHOT.png]");
  process.exit(2);
}

const args = process.argv.slice(2);
if (args.length < 3 || args.length > 4 || args.includes("-h") || args.includes("--help")) usage();
let [baseUrl, tokenA, tokenB, screenshot] = args;
try {
  const u = new URL(baseUrl);
  if (u.protocol !== "http:" && u.protocol !== "https:") throw new Error("not http(s)");
  u.hash = "";
  baseUrl = u.toString();
} catch {
  usage(`not an http(s) URL: ${baseUrl}`);
}
if (!tokenA.trim() || !tokenB.trim()) usage("empty token");

async function loadPlaywright() {
  try {
    return await import("playwright-core");
  } catch (e) {
    if (e?.code !== "ERR_MODULE_NOT_FOUND") throw e;
  }
  try {
    // require() searches NODE_PATH as well as node_modules folders upwards.
    return createRequire(import.meta.url)("playwright-core");
  } catch (e) {
    if (e?.code !== "MODULE_NOT_FOUND") throw e;
  }
  console.error(
    "error: cannot load playwright-core. Install it (npm install playwright-core@1) next to this script, " +
      "or into some directory D and run with NODE_PATH=D/node_modules.",
  );
  process.exit(2);
}

const { chromium } = await loadPlaywright();
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
if (!existsSync(executablePath)) {
  console.error(`error: chromium not found at ${executablePath} (install it with: apt-get install -y chromium, or set CHROMIUM)`);
  process.exit(2);
}

const suffix = randomBytes(4).toString("hex");
const textA = `hello from A ${suffix}`;
const textB = `hello from B ${suffix}`;

let browser = null;
const pages = {}; // name -> { page, events: [] }

// Everything a page said that may explain a failure: console errors, page
// errors, failed requests, WebSocket open/close/errors.
function watch(name, page) {
  const events = [];
  const note = (s) => {
    events.push(s);
    if (events.length > 40) events.shift();
  };
  page.on("console", (m) => {
    // "Failed to load resource" duplicates the response handler below, minus the URL.
    if ((m.type() === "error" || m.type() === "warning") && !m.text().startsWith("Failed to load resource"))
      note(`console.${m.type()}: ${m.text()}`);
  });
  page.on("response", (r) => {
    // Chromium asks for /favicon.ico on its own; the gateway has none (harmless).
    if (r.status() >= 400 && new URL(r.url()).pathname !== "/favicon.ico") note(`HTTP ${r.status()} for ${r.url()}`);
  });
  page.on("pageerror", (e) => note(`page error: ${e.message}`));
  page.on("requestfailed", (r) => note(`request failed: ${r.url()} (${r.failure()?.errorText})`));
  page.on("websocket", (ws) => {
    note(`websocket opened: ${ws.url()}`);
    ws.on("socketerror", (e) => note(`websocket error: ${e}`));
    ws.on("close", () => note("websocket closed"));
    ws.on("framereceived", (f) => {
      const p = String(f.payload);
      if (p.includes('"type":"error"')) note(`server error frame: ${p.slice(0, 300)}`);
    });
  });
  pages[name] = { page, events };
}

async function logText(page) {
  try {
    return await page.$$eval("#log > div", (divs) => divs.map((d) => d.textContent));
  } catch (e) {
    return [`(could not read #log: ${e.message})`];
  }
}

async function diagnostics() {
  for (const [name, { page, events }] of Object.entries(pages)) {
    if (page.isClosed()) continue;
    const lines = await logText(page);
    const joined = await page.evaluate(() => document.body?.dataset.joined).catch(() => undefined);
    console.error(`--- page ${name}: body[data-joined]=${joined ?? "(unset)"}; #log has ${lines.length} line(s):`);
    for (const l of lines.slice(-20)) console.error(`    ${l}`);
    if (events.length) {
      console.error(`--- page ${name}: browser events:`);
      for (const e of events) console.error(`    ${e}`);
    }
  }
}

// Runs one step; turns a timeout into a CheckFailure with a readable message.
async function step(desc, fn) {
  log(`${desc} ...`);
  try {
    const r = await fn();
    return r;
  } catch (e) {
    if (e instanceof CheckFailure) throw e;
    const first = String(e?.message ?? e).split("\n")[0];
    throw new CheckFailure(`${desc}: ${first}`);
  }
}

async function openPage(name, token, viaFragment) {
  const context = await browser.newContext({ viewport: { width: 900, height: 640 } });
  context.setDefaultTimeout(STEP_MS);
  context.setDefaultNavigationTimeout(STEP_MS);
  const page = await context.newPage();
  watch(name, page);
  const url = viaFragment ? `${baseUrl}#token=${encodeURIComponent(token)}` : baseUrl;
  await step(`page ${name}: load ${baseUrl}${viaFragment ? " (token in URL fragment)" : ""}`, async () => {
    const resp = await page.goto(url, { waitUntil: "load" });
    if (!resp) throw new CheckFailure(`page ${name}: no response for ${baseUrl}`);
    if (!resp.ok()) throw new CheckFailure(`page ${name}: GET ${baseUrl} answered HTTP ${resp.status()}`);
    for (const sel of ["#token", "#room", "#connect", "#body", "#send", "#log"]) {
      if ((await page.locator(sel).count()) !== 1) throw new CheckFailure(`page ${name}: no ${sel} element on the chat page`);
    }
  });
  if (viaFragment) {
    const v = await page.inputValue("#token");
    if (v !== token) throw new CheckFailure(`page ${name}: #token was not filled from the URL fragment (got ${JSON.stringify(v.slice(0, 20))}...)`);
  } else {
    await page.fill("#token", token);
  }
  const room = await page.inputValue("#room");
  await step(`page ${name}: connect and join room "${room}"`, async () => {
    await page.click("#connect");
    // Joined, or an error line / "disconnected" in #log (the gateway answers a
    // bad token with an error frame and keeps the socket open, so don't wait
    // out the timeout then).
    const outcome = await page
      .waitForFunction(
        () => {
          if (document.body.dataset.joined === "true") return "joined";
          const bad = [...document.querySelectorAll("#log > div")].find(
            (d) => d.classList.contains("err") || (d.classList.contains("sys") && d.textContent === "disconnected"),
          );
          return bad ? `error: ${bad.textContent}` : false;
        },
        null,
        { timeout: STEP_MS, polling: 100 },
      )
      .then((h) => h.jsonValue())
      .catch(() => "timeout");
    if (outcome === "timeout") {
      throw new CheckFailure(`page ${name} never joined the room within ${STEP_MS / 1000}s (no error shown on the page)`);
    } else if (outcome !== "joined") {
      throw new CheckFailure(`page ${name} could not join the room -- the page shows ${JSON.stringify(outcome.slice(7))}`);
    }
    await page.waitForSelector("#send:enabled", { timeout: STEP_MS });
  });
  return page;
}

async function sendMessage(name, page, text) {
  await step(`page ${name}: send "${text}"`, async () => {
    await page.fill("#body", text);
    await page.click("#send");
    // The page clears the input once the message has been handed to the socket.
    await page.waitForFunction(() => document.getElementById("body").value === "", null, { timeout: STEP_MS });
  });
}

async function waitForMessage(name, page, text) {
  await step(`page ${name}: wait for "${text}" in #log`, async () => {
    try {
      await page.waitForFunction(
        (t) => [...document.querySelectorAll("#log div.chat span.body")].some((s) => s.textContent === t),
        text,
        { timeout: STEP_MS, polling: 100 },
      );
    } catch {
      throw new CheckFailure(`page ${name} did not show "${text}" within ${STEP_MS / 1000}s`);
    }
  });
}

async function checkLog(name, page) {
  const info = await page.evaluate(() => {
    const chats = [...document.querySelectorAll("#log div.chat")];
    return {
      count: chats.length,
      dataMessages: document.getElementById("log").dataset.messages,
      seqs: chats.map((c) => c.dataset.seq),
      bodies: chats.map((c) => c.querySelector("span.body")?.textContent ?? null),
    };
  });
  const problems = [];
  if (String(info.count) !== info.dataMessages)
    problems.push(`#log[data-messages]=${info.dataMessages} but there are ${info.count} div.chat elements`);
  const dup = info.seqs.filter((s, i) => info.seqs.indexOf(s) !== i);
  if (dup.length) problems.push(`duplicate data-seq ${[...new Set(dup)].join(", ")}`);
  if (info.seqs.some((s) => !/^\d+$/.test(s ?? ""))) problems.push(`a div.chat without a numeric data-seq: ${JSON.stringify(info.seqs)}`);
  for (const t of [textA, textB]) {
    const n = info.bodies.filter((b) => b === t).length;
    if (n !== 1) problems.push(`"${t}" shown ${n} times (expected once)`);
  }
  if (problems.length) throw new CheckFailure(`page ${name}: ${problems.join("; ")}`);
  const seqOf = (t) => info.seqs[info.bodies.indexOf(t)];
  log(`page ${name}: ${info.count} chat message(s); A's is #${seqOf(textA)}, B's is #${seqOf(textB)}`);
  return { seqA: seqOf(textA), seqB: seqOf(textB) };
}

let exitCode = 0;
const watchdog = setTimeout(async () => {
  console.error(`FAIL: chat browser check did not finish within ${WATCHDOG_MS / 1000}s`);
  await diagnostics().catch(() => {});
  await browser?.close().catch(() => {});
  process.exit(1);
}, WATCHDOG_MS);

try {
  browser = await step(`launch ${executablePath} (headless)`, () =>
    chromium.launch({
      executablePath,
      headless: true,
      timeout: STEP_MS,
      args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"],
    }),
  );
  log(`browser version ${browser.version()}`);

  const pageA = await openPage("A", tokenA, false);
  const pageB = await openPage("B", tokenB, true);

  await sendMessage("A", pageA, textA);
  await waitForMessage("A", pageA, textA);
  await waitForMessage("B", pageB, textA);
  await sendMessage("B", pageB, textB);
  await waitForMessage("B", pageB, textB);
  await waitForMessage("A", pageA, textB);

  const seqsA = await checkLog("A", pageA);
  const seqsB = await checkLog("B", pageB);
  if (seqsA.seqA !== seqsB.seqA || seqsA.seqB !== seqsB.seqB)
    throw new CheckFailure(`pages disagree on sequence numbers: A sees #${seqsA.seqA}/#${seqsA.seqB}, B sees #${seqsB.seqA}/#${seqsB.seqB}`);
  if (!(Number(seqsA.seqA) < Number(seqsA.seqB)))
    throw new CheckFailure(`A's message (#${seqsA.seqA}) should have a lower seq than B's (#${seqsA.seqB}), it was sent first`);

  if (screenshot) {
    await step(`page B: screenshot to ${screenshot}`, () => pageB.screenshot({ path: screenshot, fullPage: true }));
  }
} catch (e) {
  exitCode = 1;
  console.error(`FAIL: ${e instanceof CheckFailure ? e.message : (e?.stack ?? e)}`);
  await diagnostics().catch(() => {});
} finally {
  clearTimeout(watchdog);
  if (browser) await browser.close().catch((e) => console.error(`warning: closing the browser: ${e.message}`));
}
if (exitCode === 0) console.log(`chat browser check passed (${((Date.now() - started) / 1000).toFixed(1)}s)`);
process.exit(exitCode);
