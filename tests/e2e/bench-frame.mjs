// How long the console takes to apply one incoming message frame with 1,000
// conversations listed, in Debian's chromium (a measurement, not a test):
//
//   IMGATE_BIN=$PWD/../../target/debug/imgate node bench-frame.mjs
//
// The page is the real console from a real gateway; 1,000 conversations are fed to it as
// live frames (the client's own 'message' event), then 300 more frames, each for a
// conversation from the middle of the list (so its row moves to the top). One sample:
// dispatching the frame until style and layout are done (a forced layout), the work the
// browser must do before the next paint. Prints median, p95 and max in ms.
// CONSOLE_DIR=dir serves the console from that directory (to measure another version).

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { CHROMIUM, CHROMIUM_ARGS, freePort, imgate, until } from './lib.mjs';

const CONVERSATIONS = 1000;
const SAMPLES = 300;
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'imgate-bench-'));
const children = [];
const port = await freePort();
const BASE = `http://127.0.0.1:${port}`;
fs.writeFileSync(path.join(dir, 'imgate.toml'), `listen = "127.0.0.1:${port}"\ndata_dir = "${path.join(dir, 'data')}"\n`);
imgate(['serve', '--config', path.join(dir, 'imgate.toml')], { cwd: dir, children });
let browser;
try {
  await until('the gateway', async () => (await fetch(`${BASE}/healthz`)).ok);
  const lna = process.env.CONSOLE_DIR ? ['--disable-features=LocalNetworkAccessChecks'] : [];
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: [...CHROMIUM_ARGS, ...lna] });
  const context = await browser.newContext({ viewport: { width: 1200, height: 760 }, locale: 'zh-CN' });
  if (process.env.CONSOLE_DIR) {
    const from = process.env.CONSOLE_DIR;
    await context.route((u) => u.origin === BASE && (u.pathname === '/' || u.pathname.startsWith('/console/')), (route) => {
      const u = new URL(route.request().url());
      const name = u.pathname === '/' ? 'index.html' : u.pathname.slice('/console/'.length);
      const type = { js: 'text/javascript', css: 'text/css', html: 'text/html' }[name.split('.').pop()];
      return route.fulfill({ status: 200, headers: { 'content-type': `${type}; charset=utf-8` }, body: fs.readFileSync(path.join(from, name)) });
    });
  }
  const page = await context.newPage();
  await page.goto(`${BASE}/?userid=agent1`);
  await page.locator('#state.connected').waitFor({ timeout: 30_000 });
  const result = await page.evaluate(({ n, samples }) => {
    const client = window.imgate.client;
    let seq = 1_000_000;
    const now = Math.floor(Date.now() / 1000) - 3600;
    const frame = (i, t) => ({ data: { id: `b${seq}`, seq: seq++, contact_id: `user${String(i).padStart(4, '0')}`, name: '', msg_type: 'text', msg: { content: `message ${seq} for ${i}` }, send_time: t, company_id: 'acme' }, result: { code: 1001, message: 'common' } });
    for (let i = 0; i < n; i += 1) client.dispatchEvent(new CustomEvent('message', { detail: frame(i, now + i) }));
    document.body.getBoundingClientRect();
    const listed = document.querySelectorAll('#conversations li').length;
    const times = [];
    for (let k = 0; k < samples; k += 1) {
      const i = (k * 7919) % n; // spread over the list
      const f = frame(i, now + n + k);
      const t0 = performance.now();
      client.dispatchEvent(new CustomEvent('message', { detail: f }));
      document.body.getBoundingClientRect();
      void document.body.offsetHeight;
      times.push(performance.now() - t0);
    }
    times.sort((a, b) => a - b);
    const q = (p) => times[Math.min(times.length - 1, Math.floor(p * times.length))];
    return { listed, median: q(0.5), p95: q(0.95), max: times.at(-1) };
  }, { n: CONVERSATIONS, samples: SAMPLES });
  console.log(`listed ${result.listed} conversations; one frame: median ${result.median.toFixed(2)} ms, p95 ${result.p95.toFixed(2)} ms, max ${result.max.toFixed(2)} ms (${SAMPLES} frames)`);
} finally {
  if (browser) await browser.close().catch(() => {});
  for (const c of children) if (c.exitCode === null) c.kill('SIGKILL');
  fs.rmSync(dir, { recursive: true, force: true });
}
