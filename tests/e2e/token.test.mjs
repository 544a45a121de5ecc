// The client module (console/client.js) in token mode, in Debian's chromium (playwright-core),
// against the real binary:
//
//   node tests/e2e/token.test.mjs
//
// The gateway closes a socket whose JWT expires with 4001 "token expired". A client given
// `getToken` calls it and reconnects with the fresh token (a message sent afterwards
// arrives); a client without it stops instead of knocking with a dead token forever.
// Tokens live 4 s (auth.leeway = 0s); every wait has a 30 s deadline that fails the test.

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { BIN, CHROMIUM, WAIT, check, freePort, jwt as signed, sleep, until } from './lib.mjs';

const SECRET = 'an-e2e-secret-of-at-least-32-bytes!';
const KEY = 'an-e2e-backend-key-of-32-characters-or-more';

/** An HS256 JWT for `sub`, valid for `ttl` seconds. */
const jwt = (sub, ttl) => signed(SECRET, sub, ttl);

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'imgate-token-'));
const port = await freePort();
const BASE = `http://127.0.0.1:${port}`;
const CONFIG = path.join(dir, 'imgate.toml');
fs.writeFileSync(CONFIG, `listen = "127.0.0.1:${port}"
data_dir = "${path.join(dir, 'data')}"
[auth]
mode = "token"
jwt_secret = "${SECRET}"
api_keys = ["${KEY}"]
leeway = "0s"
`);

let failed = false;
let browser;
const gateway = spawn(BIN, ['serve', '--config', CONFIG], { cwd: dir, env: { ...process.env, RUST_LOG: 'imgate=info' }, stdio: ['ignore', 'ignore', 'pipe'] });
gateway.log = '';
gateway.stderr.on('data', (d) => (gateway.log += d));
try {
  await until('the gateway', async () => (await fetch(`${BASE}/healthz`)).ok);
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'] });
  const page = await browser.newPage();
  page.setDefaultTimeout(WAIT);
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  // The page's getToken asks this process, which holds the secret (as an app's backend would).
  let minted = 0;
  await page.exposeFunction('mintToken', (sub, ttl) => {
    if (ttl > 60) minted += 1;
    return jwt(sub, ttl);
  });
  // A page of the gateway's origin, so that the module loads as the console loads it.
  await page.goto(`${BASE}/healthz`);
  await page.evaluate(async (base) => {
    const { ImgateClient } = await import('/console/client.js');
    const watch = (c) => {
      const log = { closes: [], states: [], messages: [] };
      c.addEventListener('close', (e) => log.closes.push(e.detail));
      c.addEventListener('state', (e) => log.states.push(e.detail));
      c.addEventListener('message', (e) => log.messages.push(e.detail.data.msg.content));
      return log;
    };
    // Four seconds of token each.
    const renewing = new ImgateClient({ base, token: await window.mintToken('agent1', 4), getToken: () => window.mintToken('agent1', 600) });
    const stuck = new ImgateClient({ base, token: await window.mintToken('agent2', 4) });
    window.t = { renewing, stuck, r: watch(renewing), s: watch(stuck) };
    renewing.connect();
    stuck.connect();
  }, BASE);
  await page.waitForFunction(() => t.renewing.state === 'connected' && t.stuck.state === 'connected');
  check(minted === 0, 'the first connection uses the token given, not getToken');

  await page.waitForFunction(() => t.r.closes.length > 0 && t.s.closes.length > 0);
  const closes = await page.evaluate(() => [t.r.closes[0], t.s.closes[0]]);
  for (const c of closes) check(c.code === 4001 && c.reason === 'token expired', `the expired socket closes with 4001 "token expired" (${JSON.stringify(c)})`);

  // With getToken: connected again, on a fresh token.
  await page.waitForFunction(() => t.renewing.state === 'connected' && t.r.states.includes('reconnecting'));
  check(minted >= 1, `getToken was called on the reconnect (${minted} times)`);
  const token = await page.evaluate(() => t.renewing.token);
  check(JSON.parse(Buffer.from(token.split('.')[1], 'base64url')).exp > Date.now() / 1000 + 60, 'the client holds the fresh token');
  const r = await fetch(`${BASE}/send?userid=alice`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-api-key': KEY },
    body: JSON.stringify({ data: { msg_type: 'text', contact_id: 'agent1', msg: { content: 'after renewal' } }, result: { code: 1001, message: 'common' } }),
  });
  check(r.status === 200, 'a backend sends with its key in a header');
  await page.waitForFunction(() => t.r.messages.includes('after renewal'));
  check(await page.evaluate(() => t.r.messages.filter((m) => m === 'after renewal').length) === 1, 'the renewed connection receives live messages, once');

  // Without getToken: stopped, not retrying with the dead token.
  const stuck = await page.evaluate(() => ({ state: t.stuck.state, closed: t.stuck.closed, closes: t.s.closes.length }));
  check(stuck.state === 'offline' && stuck.closed === true && stuck.closes === 1, `a client without getToken stops on 4001 (${JSON.stringify(stuck)})`);

  // The console with `?token_url=`: the token leaves the address bar, and when it expires
  // the page asks the same-origin URL (here an auth proxy's endpoint, played by the
  // browser's router) for a fresh one. A token_url of another origin is never asked: the
  // page refuses it, and the console's CSP (connect-src 'self') would block it anyway.
  const consolePage = await browser.newPage();
  consolePage.setDefaultTimeout(WAIT);
  consolePage.on('pageerror', (e) => errors.push(String(e)));
  let asked = 0;
  let foreign = 0;
  await consolePage.route(`${BASE}/auth/token`, (route) => {
    asked += 1;
    return route.fulfill({ status: 200, contentType: 'text/plain', body: jwt('agent3', 600) });
  });
  await consolePage.route('http://elsewhere.invalid/**', (route) => {
    foreign += 1;
    return route.abort();
  });
  await consolePage.goto(`${BASE}/?token=${jwt('agent3', 4)}&token_url=/auth/token`);
  await until('the token to leave the address bar', async () => !consolePage.url().includes('token='));
  check(!/[?&]token=/.test(consolePage.url()), `the address bar holds no token (${consolePage.url()})`);
  await until('a token asked of token_url after the first expired', async () => asked >= 1);
  const viaProxy = await fetch(`${BASE}/send?userid=bob`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-api-key': KEY },
    body: JSON.stringify({ data: { msg_type: 'text', contact_id: 'agent3', msg: { content: 'via token_url' } }, result: { code: 1001, message: 'common' } }),
  });
  check(viaProxy.status === 200, 'a message to the console user is accepted');
  await consolePage.getByText('via token_url').first().waitFor();
  check(asked >= 1, `the console renewed its token from token_url (${asked} times) and shows live messages`);
  const other = await browser.newPage();
  other.on('pageerror', (e) => errors.push(String(e)));
  await other.route('http://elsewhere.invalid/**', (route) => {
    foreign += 1;
    return route.abort();
  });
  await other.goto(`${BASE}/?token=${jwt('agent4', 3)}&token_url=${encodeURIComponent('http://elsewhere.invalid/t')}`);
  // The token lives 3 s; a page that would follow the link asks within a second or two of
  // the 4001 close. (A negative check: it waits, then looks.)
  await sleep(8000);
  check(foreign === 0, 'a token_url of another origin is never fetched');
  check(errors.length === 0, `no page errors${errors.length ? `: ${errors.join(' | ')}` : ''}`);
} catch (e) {
  failed = true;
  console.error(`FAIL: ${e.message}`);
  console.error(`gateway log:\n${gateway.log.slice(-3000)}`);
} finally {
  if (browser) await browser.close().catch(() => {});
  if (gateway.exitCode === null) gateway.kill('SIGKILL');
  fs.rmSync(dir, { recursive: true, force: true });
}
console.log(failed ? 'FAIL: token' : 'PASS: token');
process.exit(failed ? 1 : 0);
