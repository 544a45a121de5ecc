// End-to-end test of erasure (`DELETE P/contacts/{id}`, docs/operations.md "Erasure") in
// Debian's chromium: an agent's open console drops the erased person's conversation live,
// the open thread included, and a reload does not bring it back.
//
//   IMGATE_BIN=$PWD/../../target/debug/imgate node --test erase.test.mjs
//
// One gateway (the real binary, fresh data dir, free ports) with one WeChat account in
// plaintext mode, aimed at the WeChat stand-in (the real binary too); followers write
// through signed callbacks. A second gateway without WeChat covers the console that builds
// its list from history. No wall-clock assertions: every wait has a deadline that only
// fails a hung test.

import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { chromium } from 'playwright-core';
import { CHROMIUM, CHROMIUM_ARGS, WAIT, check, freePort, imgate, until } from './lib.mjs';

const P = '/im_component/wx_official_account';
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'imgate-erase-'));
const children = [];
const [port, plainPort, standinPort] = [await freePort(), await freePort(), await freePort()];
const BASE = `http://127.0.0.1:${port}`;
const PLAIN = `http://127.0.0.1:${plainPort}`;
const STANDIN = `http://127.0.0.1:${standinPort}`;
const CONFIG = path.join(dir, 'imgate.toml');
const APPID = 'wx5c3f1ad2b7e90e10';
const ORIGINAL = 'gh_erasure';
const TOKEN = 'demo-token';
fs.writeFileSync(CONFIG, `listen = "127.0.0.1:${port}"
data_dir = "${path.join(dir, 'data')}"
[wechat]
api_base = "${STANDIN}"
[[wechat.accounts]]
original_id = "${ORIGINAL}"
appid = "${APPID}"
secret = "demo-secret"
token = "${TOKEN}"
company_id = "Acme"
agents = ["agent1"]
`);

let msgId = 2_000_000;
/** A follower's text message, as WeChat posts it (plaintext mode, signed). */
async function follower(from, content) {
  const timestamp = String(Math.floor(Date.now() / 1000));
  const nonce = crypto.randomBytes(8).toString('hex');
  const signature = crypto.createHash('sha1').update([TOKEN, timestamp, nonce].sort().join('')).digest('hex');
  msgId += 1;
  const xml = `<xml><ToUserName><![CDATA[${ORIGINAL}]]></ToUserName><FromUserName><![CDATA[${from}]]></FromUserName><CreateTime>${timestamp}</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[${content}]]></Content><MsgId>${msgId}</MsgId></xml>`;
  const r = await fetch(`${BASE}${P}/callback/${APPID}?signature=${signature}&timestamp=${timestamp}&nonce=${nonce}`, { method: 'POST', body: xml, headers: { 'content-type': 'text/xml' } });
  const body = await r.text();
  if (!r.ok || body !== 'success') throw new Error(`callback from ${from}: ${r.status} ${body}`);
}

async function erase(base, contact) {
  const r = await fetch(`${base}${P}/contacts/${encodeURIComponent(contact)}`, { method: 'DELETE' });
  const j = await r.json();
  if (!r.ok) throw new Error(`DELETE ${contact}: ${r.status} ${JSON.stringify(j)}`);
  return j.data;
}

let browser;
const errors = [];
async function page(base, userid) {
  const context = await browser.newContext({ viewport: { width: 1200, height: 760 }, locale: 'en' });
  const p = await context.newPage();
  p.setDefaultTimeout(WAIT);
  // A 404 for a gateway user's conversation (not in the index) is expected.
  p.on('console', (m) => m.type() === 'error' && !/status of 404/.test(m.text()) && errors.push(`${userid}: ${m.text()} (${m.location()?.url})`));
  p.on('pageerror', (e) => errors.push(`${userid}: ${e}`));
  await p.goto(`${base}/?userid=${userid}`);
  await p.locator('#state.connected').waitFor();
  return p;
}
const row = (p, contact) => p.locator(`#conversations button[data-contact="${contact}"]`);
const rows = (p) => p.locator('#conversations button[data-contact]').evaluateAll((l) => l.map((b) => b.dataset.contact).sort());
const bubbles = (p) => p.locator('#log .bubble').allInnerTexts();
async function open(p, contact) {
  await row(p, contact).click();
  await p.waitForFunction((c) => document.getElementById('contact-name').textContent === c, contact);
}

before(async () => {
  imgate(['wechat', 'standin', '--listen', `127.0.0.1:${standinPort}`, '--config', CONFIG], { cwd: dir, children });
  await until('the stand-in', async () => (await fetch(`${STANDIN}/standin/sent`)).ok);
  imgate(['serve', '--config', CONFIG], { cwd: dir, children });
  // Its own directory: `imgate serve` reads ./imgate.toml, the other gateway's.
  const plain = path.join(dir, 'plain');
  fs.mkdirSync(plain);
  imgate(['serve', '--listen', `127.0.0.1:${plainPort}`, '--data-dir', path.join(plain, 'data')], { cwd: plain, children });
  await until('the gateways', async () => (await fetch(`${BASE}/healthz`)).ok && (await fetch(`${PLAIN}/healthz`)).ok);
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });
});

after(async () => {
  if (browser) await browser.close().catch(() => {});
  for (const c of children) if (c.exitCode === null) c.kill('SIGKILL');
  fs.rmSync(dir, { recursive: true, force: true });
});

test('an erased follower\'s open conversation leaves the console live, and stays gone after a reload', async () => {
  await follower('oErase', 'please forget me');
  await follower('oErase', 'my address is 1 Main St');
  await follower('oKeep', 'I stay');
  const p = await page(BASE, 'agent1');
  await row(p, 'oErase').waitFor();
  await row(p, 'oKeep').waitFor();
  await open(p, 'oErase');
  await until('oErase\'s messages', async () => (await bubbles(p)).some((b) => b.includes('1 Main St')));

  const d = await erase(BASE, 'oErase');
  check(d.messages === 2 && d.conversations === 1 && d.follower === true, `the gateway erased them (${JSON.stringify(d)})`);
  await row(p, 'oErase').waitFor({ state: 'detached' });
  check(JSON.stringify(await rows(p)) === JSON.stringify(['oKeep']), 'their row left the list live; the other stays');
  await until('the open thread to close', async () => (await p.locator('#contact-name').textContent()) === '' && (await bubbles(p)).length === 0);
  check(await p.locator('#composer').isHidden(), 'the reply box closed with it');
  check(!(await p.evaluate(() => window.imgate.state.threads.has('oErase'))), 'nothing of theirs is kept in the page');
  // The other conversation still works.
  await open(p, 'oKeep');
  await until('oKeep\'s message', async () => (await bubbles(p)).some((b) => b.includes('I stay')));

  await p.reload();
  await p.locator('#state.connected').waitFor();
  await row(p, 'oKeep').waitFor();
  check(JSON.stringify(await rows(p)) === JSON.stringify(['oKeep']), 'a reload does not bring them back');
  // They write again: a new conversation, with only what came after.
  await follower('oErase', 'hello again');
  await row(p, 'oErase').waitFor();
  await open(p, 'oErase');
  await until('the new message', async () => JSON.stringify(await bubbles(p)) === JSON.stringify(['hello again']));
  await p.context().close();
});

test('without WeChat, the list built from history drops an erased user live and after a reload', async () => {
  const send = async (from, to, content) => {
    const r = await fetch(`${PLAIN}/send?userid=${from}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ data: { msg_type: 'text', contact_id: to, msg: { content } } }) });
    if (!r.ok) throw new Error(`send: ${r.status}`);
  };
  await send('u1', 'agent', 'from u1');
  await send('u2', 'agent', 'from u2');
  const p = await page(PLAIN, 'agent');
  await row(p, 'u1').waitFor();
  await open(p, 'u1');
  await until('u1\'s message', async () => (await bubbles(p)).includes('from u1'));
  const d = await erase(PLAIN, 'u1');
  check(d.messages === 1, `the gateway erased u1 (${JSON.stringify(d)})`);
  await row(p, 'u1').waitFor({ state: 'detached' });
  await until('the open thread to close', async () => (await bubbles(p)).length === 0);
  await p.reload();
  await p.locator('#state.connected').waitFor();
  await row(p, 'u2').waitFor();
  check(JSON.stringify(await rows(p)) === JSON.stringify(['u2']), 'a reload does not bring u1 back');
  check(errors.length === 0, `no console errors (${errors.join(' | ')})`);
  await p.context().close();
});
