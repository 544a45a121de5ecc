// End-to-end run of the seed's test procedure (seed §3, SPEC §2) in a real browser.
//
//   node tests/e2e/seed.test.mjs
//
// 1. starts the imgate binary on 127.0.0.1:1234 (the seed's port) with a fresh data dir
//    and a short heartbeat (300 ms) and an idle timeout ten times longer (3 s), so that a
//    stalled CI machine does not close a live page;
// 2. serves the seed's HTML page, unchanged, from a tiny static server (the seed uses a
//    separate file server on localhost:8080; any free port does);
// 3. opens it in Debian's chromium (through playwright-core, no downloaded browser): the page
//    connects to ws://localhost:1234?userId=1 asking for the sub-protocol "echo";
// 4. POSTs the seed's XML body to localhost:1234/send; the page's console must print it;
// 5. a live page that never writes stays connected over several idle timeouts (the server
//    only sees it alive through the browser's automatic pong replies to its pings), and a
//    second message still arrives;
// 6. the page's "Send Message" button (it sends the text "pong") draws no error frame.
//
// Environment: IMGATE_BIN (default ../../target/debug/imgate relative to this file),
// CHROMIUM (default /usr/bin/chromium).
// No wall-clock assertions: the timeouts only fail a hung test.

import { spawn } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { SEED_XML, seedXml } from './lib.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const IMGATE_BIN = path.resolve(process.env.IMGATE_BIN || path.join(HERE, '../../target/debug/imgate'));
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const PAGE_FILE = path.join(HERE, 'seed.html');

const GATEWAY_HOST = '127.0.0.1';
const GATEWAY_PORT = 1234;
const WS_URI = 'ws://localhost:1234?userId=1'; // hardcoded in the seed's page
const SEND_URL = 'http://localhost:1234/send'; // the seed: 向 localhost:1234/send 发送 post
const HEALTHZ_URL = `http://${GATEWAY_HOST}:${GATEWAY_PORT}/healthz`;

const WAIT_MS = 30_000; // per wait; only fails a hung test
const WATCHDOG_MS = 240_000; // the whole run
const MIN_HEARTBEATS = 21; // 21 x 300 ms heartbeat = 2 idle timeouts of 3 s

// The seed's XML body (seed §3), byte for byte, and a second message of the same shape
// (another MsgId, so it is not a retry of the first): shared with the other tests.
const SECOND_XML = seedXml(20, 'second');

// ---------------------------------------------------------------------------------------
// bookkeeping

class TestFailure extends Error {}

function fail(message) {
  throw new TestFailure(message);
}

function assert(cond, message) {
  if (!cond) fail(message);
}

const t0 = Date.now();
function log(...args) {
  const s = ((Date.now() - t0) / 1000).toFixed(2).padStart(7);
  console.log(`[${s}s]`, ...args);
}

// Everything the page printed, in order, plus what the browser saw on the WebSocket.
const consoleLines = []; // { text, at }
const consoleWaiters = new Set();
const wsEvents = []; // human-readable record of the page's WebSocket
const pageErrors = [];
let framesSentByPage = 0;

function onConsoleLine(text) {
  consoleLines.push({ text, at: Date.now() - t0 });
  for (const w of consoleWaiters) w.check();
}

// Resolves with the first console line at index >= from that satisfies pred.
function waitForConsole(pred, what, { from = 0, timeoutMs = WAIT_MS } = {}) {
  return new Promise((resolve, reject) => {
    const waiter = {
      next: from,
      check() {
        while (this.next < consoleLines.length) {
          const line = consoleLines[this.next++];
          if (pred(line.text)) {
            done();
            resolve(line.text);
            return;
          }
        }
      },
    };
    const timer = setTimeout(() => {
      done();
      const desc = typeof what === 'function' ? what() : what;
      reject(new TestFailure(`timed out after ${timeoutMs / 1000} s waiting for ${desc}`));
    }, timeoutMs);
    const fatal = (err) => {
      done();
      reject(err);
    };
    function done() {
      clearTimeout(timer);
      consoleWaiters.delete(waiter);
      fatalListeners.delete(fatal);
    }
    consoleWaiters.add(waiter);
    fatalListeners.add(fatal);
    waiter.check();
  });
}

// Rejects pending waits at once when imgate dies under the test.
const fatalListeners = new Set();
function fatalEvent(err) {
  for (const f of [...fatalListeners]) f(err);
}

const MSG_PREFIX = 'message received: ';

// The parsed frames the page printed ("message received: <json>").
function receivedFrames(from = 0) {
  const out = [];
  for (const { text } of consoleLines.slice(from)) {
    if (!text.startsWith(MSG_PREFIX)) continue;
    try {
      out.push(JSON.parse(text.slice(MSG_PREFIX.length)));
    } catch {
      out.push({ unparsable: text });
    }
  }
  return out;
}

function frameCode(frame) {
  const c = frame?.result?.code;
  return typeof c === 'string' ? Number(c) : c;
}

const isHeartbeat = (f) => frameCode(f) === 101;
const isError = (f) => frameCode(f) === -1;

function parseFrameLine(text) {
  if (!text.startsWith(MSG_PREFIX)) return null;
  try {
    return JSON.parse(text.slice(MSG_PREFIX.length));
  } catch {
    return null;
  }
}

function isMessage(content) {
  return (text) => {
    const f = parseFrameLine(text);
    return (
      f !== null &&
      f.data?.msg?.content === content &&
      f.data?.msg_type === 'enim' &&
      f.data?.contact_id === '魏秀兰'
    );
  };
}

// Waits for a message frame; on timeout, says which (non-heartbeat) frames came instead.
async function waitForMessage(content, what, from) {
  try {
    return await waitForConsole(isMessage(content), what, { from });
  } catch (e) {
    if (!(e instanceof TestFailure)) throw e;
    const others = receivedFrames(from).filter((f) => !isHeartbeat(f));
    const seen = others.length ? others.map((f) => JSON.stringify(f)).join('\n    ') : '(none)';
    const misplaced = others.find((f) => f.data?.msg?.Content === content);
    const hint = misplaced ? '\n  (the text arrived under data.msg.Content, not data.msg.content as in the seed\'s frames)' : '';
    fail(
      `${e.message}\n  expected data.msg.content ${JSON.stringify(content)}, data.msg_type "enim", ` +
        `data.contact_id "魏秀兰"; non-heartbeat frames the page printed instead:\n    ${seen}${hint}`,
    );
  }
}

function closedLines() {
  return consoleLines.filter((l) => l.text.startsWith('connection closed'));
}

// ---------------------------------------------------------------------------------------
// the gateway

let imgate = null;
let imgateExit = null; // { code, signal } once exited
let imgateStopping = false;
const imgateLog = [];
let dataDir = null;

function portInUse(host, port) {
  return new Promise((resolve) => {
    const s = net.connect({ host, port });
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

async function startImgate() {
  assert(
    fs.existsSync(IMGATE_BIN),
    `imgate binary not found at ${IMGATE_BIN} (run \`cargo build\` first, or set IMGATE_BIN)`,
  );
  assert(
    !(await portInUse(GATEWAY_HOST, GATEWAY_PORT)),
    `port ${GATEWAY_PORT} is already in use: the seed's page needs it; stop whatever listens there`,
  );
  dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'imgate-e2e-'));
  const args = ['serve', '--listen', `${GATEWAY_HOST}:${GATEWAY_PORT}`, '--data-dir', path.join(dataDir, 'data')];
  log(`starting ${IMGATE_BIN} ${args.join(' ')}`);
  // imgate reads every IMGATE_* variable as configuration and refuses unknown keys, so
  // this script's own IMGATE_BIN must not reach it.
  const { IMGATE_BIN: _ownSetting, ...env } = process.env;
  imgate = spawn(IMGATE_BIN, args, {
    cwd: dataDir, // so no ./imgate.toml of the caller is picked up
    env: {
      ...env,
      IMGATE_HUB__HEARTBEAT_INTERVAL: '300ms',
      IMGATE_HUB__IDLE_TIMEOUT: '3000ms',
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const collect = (stream) => {
    let buf = '';
    stream.setEncoding('utf8');
    stream.on('data', (chunk) => {
      buf += chunk;
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        imgateLog.push(buf.slice(0, i));
        buf = buf.slice(i + 1);
      }
    });
    stream.on('end', () => buf && imgateLog.push(buf));
  };
  collect(imgate.stdout);
  collect(imgate.stderr);
  imgate.on('exit', (code, signal) => {
    imgateExit = { code, signal };
    if (!imgateStopping) {
      fatalEvent(new TestFailure(`imgate exited unexpectedly (code ${code}, signal ${signal})`));
    }
  });
  imgate.on('error', (err) => fatalEvent(new TestFailure(`cannot run imgate: ${err.message}`)));

  const deadline = Date.now() + WAIT_MS;
  for (;;) {
    if (imgateExit) fail(`imgate exited before it was ready (code ${imgateExit.code}, signal ${imgateExit.signal})`);
    try {
      const r = await fetch(HEALTHZ_URL, { signal: AbortSignal.timeout(2000) });
      if (r.ok) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) fail(`imgate not healthy after ${WAIT_MS / 1000} s (${HEALTHZ_URL})`);
    await new Promise((r) => setTimeout(r, 100));
  }
  log(`imgate ready (pid ${imgate.pid})`);
}

// SIGTERM, then the process must leave on its own with code 0.
async function stopImgate() {
  if (!imgate || imgateExit) return imgateExit;
  imgateStopping = true;
  imgate.kill('SIGTERM');
  const exited = once(imgate, 'exit');
  const timer = new Promise((r) => setTimeout(r, WAIT_MS, 'timeout'));
  if ((await Promise.race([exited, timer])) === 'timeout') {
    imgate.kill('SIGKILL');
    await exited;
    return { code: null, signal: 'SIGKILL', hung: true };
  }
  return imgateExit;
}

// ---------------------------------------------------------------------------------------
// the seed's static file server (it serves the page from localhost:8080; any port will do)

async function startPageServer() {
  const html = fs.readFileSync(PAGE_FILE);
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://localhost');
    if (req.method === 'GET' && (url.pathname === '/seed.html' || url.pathname === '/')) {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'content-length': html.length });
      res.end(html);
    } else if (url.pathname === '/favicon.ico') {
      res.writeHead(204);
      res.end();
    } else {
      res.writeHead(404, { 'content-type': 'text/plain' });
      res.end('not found\n');
    }
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return server;
}

// ---------------------------------------------------------------------------------------
// the seed's POST

async function postXml(xml, contentType) {
  const headers = contentType ? { 'content-type': contentType } : {};
  const res = await fetch(SEND_URL, { method: 'POST', body: xml, headers, signal: AbortSignal.timeout(WAIT_MS) });
  const text = await res.text();
  log(`POST ${SEND_URL} (${contentType || 'fetch default content-type'}) -> ${res.status} ${text}`);
  let body;
  try {
    body = JSON.parse(text);
  } catch {
    fail(`POST /send answered ${res.status} with a body that is not JSON: ${text}`);
  }
  assert(res.status === 200, `POST /send answered HTTP ${res.status}, expected 200: ${text}`);
  assert(frameCode(body) === 0, `POST /send answered result.code ${body?.result?.code}, expected 0: ${text}`);
  return body;
}

// ---------------------------------------------------------------------------------------
// the test

let browser = null;
let pageServer = null;

async function run() {
  await startImgate();
  pageServer = await startPageServer();
  const pageUrl = `http://localhost:${pageServer.address().port}/seed.html`;

  assert(fs.existsSync(CHROMIUM), `chromium not found at ${CHROMIUM} (apt-get install chromium)`);
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    timeout: WAIT_MS,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
  log(`chromium ${browser.version()} launched`);
  const page = await browser.newPage();
  let heartbeatsSeen = 0;
  page.on('console', (msg) => {
    const text = msg.text();
    const f = parseFrameLine(text);
    if (f && isHeartbeat(f)) {
      heartbeatsSeen++;
      if (heartbeatsSeen === 1 || heartbeatsSeen % 10 === 0) log(`console.${msg.type()}: ${text} (heartbeat #${heartbeatsSeen})`);
    } else {
      log(`console.${msg.type()}: ${text}`);
    }
    onConsoleLine(text);
  });
  page.on('pageerror', (err) => {
    pageErrors.push(String(err));
    log(`page error: ${err}`);
  });
  page.on('websocket', (ws) => {
    wsEvents.push(`open ${ws.url()}`);
    ws.on('framesent', (f) => {
      framesSentByPage++;
      wsEvents.push(`page sent: ${f.payload}`);
      log(`page sent a frame: ${f.payload}`);
    });
    ws.on('socketerror', (e) => {
      wsEvents.push(`socket error: ${e}`);
      log(`WebSocket error: ${e}`);
    });
    ws.on('close', () => {
      wsEvents.push('close');
      log('WebSocket closed (as seen by the browser)');
    });
  });

  // 1. the page loads and connects with the sub-protocol "echo"
  log(`opening ${pageUrl}`);
  await page.goto(pageUrl, { timeout: WAIT_MS });
  const connected = `connected to ${WS_URI}`;
  await waitForConsole((t) => t === connected || t.startsWith('connection closed'), `"${connected}"`);
  assert(
    consoleLines.some((l) => l.text === connected),
    `the page could not connect: ${closedLines().map((l) => l.text).join('; ')}`,
  );
  const protocol = await page.evaluate(() => sock.protocol);
  log(`connected; negotiated sub-protocol ${JSON.stringify(protocol)}`);
  assert(protocol === 'echo', `negotiated sub-protocol is ${JSON.stringify(protocol)}, expected "echo"`);

  // 2. the seed's XML message reaches the page's console
  const mark1 = consoleLines.length;
  const ack1 = await postXml(SEED_XML, 'application/xml');
  const line1 = await waitForMessage('occaecat ut in fugiat dolor', "the seed's message in the console", mark1);
  const frame1 = parseFrameLine(line1);
  log('first message arrived');
  if (ack1?.data?.seq !== undefined && frame1?.data?.seq !== undefined && ack1.data.seq !== frame1.data.seq) {
    log(`NOTE: POST answered seq ${ack1.data.seq} but the frame carries seq ${frame1.data.seq}`);
  }

  // 3. a live page that never writes stays connected: wait for MIN_HEARTBEATS heartbeats
  //    (several idle timeouts; only the browser's automatic pongs keep it alive)
  await waitForConsole(
    () => receivedFrames().filter(isHeartbeat).length >= MIN_HEARTBEATS,
    () => `${MIN_HEARTBEATS} heartbeat frames (code 101); the page got ${receivedFrames().filter(isHeartbeat).length}`,
  );
  log(`${receivedFrames().filter(isHeartbeat).length} heartbeats received`);
  assert(framesSentByPage === 0, `the page sent ${framesSentByPage} frames on its own; the idle check needs a silent page`);
  assert(
    closedLines().length === 0,
    `the page's console printed "${closedLines()[0]?.text}" although the page was live (only silent)`,
  );
  const errors1 = receivedFrames().filter(isError);
  assert(errors1.length === 0, `error frames arrived: ${JSON.stringify(errors1)}`);

  const mark2 = consoleLines.length;
  await postXml(SECOND_XML); // no explicit content type: fetch sends text/plain;charset=UTF-8
  await waitForMessage('second', 'the second message in the console', mark2);
  log('second message arrived');

  // 4. the page's "Send Message" button sends "pong": no error frame for it
  const mark3 = consoleLines.length;
  await page.click('text=Send Message', { timeout: WAIT_MS });
  log('clicked "Send Message"');
  // Let the server answer if it would: wait until two more heartbeats arrived after the click.
  await waitForConsole(
    () => receivedFrames(mark3).filter(isHeartbeat).length >= 2,
    () => `two heartbeats after clicking "Send Message"; got ${receivedFrames(mark3).filter(isHeartbeat).length}`,
    { from: mark3 },
  );
  assert(
    wsEvents.some((e) => e === 'page sent: pong'),
    `the button did not send "pong" (WebSocket record: ${JSON.stringify(wsEvents)})`,
  );
  const errors2 = receivedFrames(mark3).filter(isError);
  assert(errors2.length === 0, `the server answered "pong" with an error frame: ${JSON.stringify(errors2)}`);
  assert(closedLines().length === 0, `the page's console printed "${closedLines()[0]?.text}"`);
  assert(pageErrors.length === 0, `the page threw: ${pageErrors.join('; ')}`);

  log(`frames received by the page: ${receivedFrames().length} (${receivedFrames().filter(isHeartbeat).length} heartbeats)`);
}

async function cleanup() {
  const problems = [];
  if (browser) {
    try {
      await Promise.race([
        browser.close(),
        new Promise((_, rej) => setTimeout(() => rej(new Error('browser.close() hung')), WAIT_MS)),
      ]);
    } catch (e) {
      problems.push(`closing chromium: ${e.message}`);
      try {
        browser.process?.()?.kill('SIGKILL');
      } catch {
        // already gone
      }
    }
  }
  if (pageServer) {
    pageServer.closeAllConnections?.();
    pageServer.close();
  }
  if (imgate) {
    const exit = await stopImgate();
    if (exit?.hung) problems.push(`imgate did not exit within ${WAIT_MS / 1000} s of SIGTERM (killed)`);
    else if (imgateStopping && (exit?.code !== 0 || exit?.signal)) {
      problems.push(`imgate exited with code ${exit?.code}, signal ${exit?.signal} after SIGTERM, expected code 0`);
    } else if (imgateStopping) log('imgate stopped cleanly (exit code 0)');
  }
  if (dataDir) fs.rmSync(dataDir, { recursive: true, force: true });
  return problems;
}

function dumpDiagnostics() {
  console.error('\n--- page console (runs of heartbeat frames summarised) ---');
  let run = 0;
  const flush = () => {
    if (run) console.error(`  ... ${run} heartbeat frame(s) {"data":{},"result":{"code":101,...}}`);
    run = 0;
  };
  for (const l of consoleLines) {
    const f = parseFrameLine(l.text);
    if (f && isHeartbeat(f)) {
      run++;
      continue;
    }
    flush();
    console.error(`  [${(l.at / 1000).toFixed(2)}s] ${l.text}`);
  }
  flush();
  console.error('--- page WebSocket (as seen by the browser) ---');
  for (const e of wsEvents) console.error(`  ${e}`);
  if (pageErrors.length) console.error(`--- page errors ---\n  ${pageErrors.join('\n  ')}`);
  console.error('--- imgate log (last 80 lines) ---');
  for (const l of imgateLog.slice(-80)) console.error(`  ${l}`);
}

let failure = null;
const watchdog = setTimeout(() => {
  console.error(`FAIL: the whole test hung for ${WATCHDOG_MS / 1000} s`);
  dumpDiagnostics();
  try {
    imgate?.kill('SIGKILL');
    browser?.process?.()?.kill('SIGKILL');
  } catch {
    // best effort
  }
  if (dataDir) fs.rmSync(dataDir, { recursive: true, force: true });
  process.exit(2);
}, WATCHDOG_MS);

for (const sig of ['SIGINT', 'SIGTERM']) {
  process.once(sig, async () => {
    console.error(`interrupted (${sig}), cleaning up`);
    await cleanup();
    process.exit(130);
  });
}

try {
  await run();
} catch (e) {
  failure = e;
}
const problems = await cleanup();
clearTimeout(watchdog);

if (failure || problems.length) {
  if (failure) console.error(`\nFAIL: ${failure instanceof TestFailure ? failure.message : failure.stack || failure}`);
  for (const p of problems) console.error(`FAIL: ${p}`);
  dumpDiagnostics();
  process.exitCode = 1;
} else {
  console.log('\nPASS: seed test procedure (seed §3) in chromium');
}
