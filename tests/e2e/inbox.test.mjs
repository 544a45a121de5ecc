// End-to-end tests of the console's team inbox (docs/inbox.md) in Debian's chromium:
//
//   IMGATE_BIN=$PWD/../../target/debug/imgate node --test inbox.test.mjs
//
// One gateway (the real binary, fresh data dir) with one WeChat account in plaintext mode
// under routing = "claim" and two agents, pointed at the WeChat stand-in (the real binary
// too). Followers write through signed callbacks posted to the gateway, as WeChat would.
// Two browser contexts: agent1 in Chinese at desktop width, agent2 in English at phone
// width (390×844). The two-agent test writes docs/inbox-zh.png and docs/inbox-en-phone.png
// only with UPDATE_SCREENSHOTS=1. `CONSOLE_DIR=path` serves the console from a directory
// (to run these tests against another version of it). No wall-clock assertions: every wait
// has a deadline that only fails a hung test.

import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { chromium } from 'playwright-core';
import { CHROMIUM, CHROMIUM_ARGS, HERE, WAIT, check, freePort, imgate, until } from './lib.mjs';

const P = '/im_component/wx_official_account';
const DOCS = path.resolve(HERE, '../../docs');
const CONSOLE = path.resolve(HERE, '../../crates/imgate/console');
const I18N = await import(path.join(CONSOLE, 'i18n.js')).catch(() => null);
const tr = (lang, key, params = {}) => I18N.format(I18N.tables[lang][key], params);

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'imgate-inbox-'));
const children = [];
const port = await freePort();
const standinPort = await freePort();
const BASE = `http://127.0.0.1:${port}`;
const STANDIN = `http://127.0.0.1:${standinPort}`;
const CONFIG = path.join(dir, 'imgate.toml');
const APPID = 'wx5c3f1ad2b7e90e10';
const ORIGINAL = 'gh_parcelhub';
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
company_id = "ParcelHub"
agents = ["agent1", "agent2"]
routing = "claim"
`);

let msgId = 1_000_000;
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

/** Many callbacks, a few at a time. */
async function followers(list, parallel = 8) {
  let i = 0;
  await Promise.all(Array.from({ length: parallel }, async () => {
    while (i < list.length) {
      const [from, text] = list[i++];
      await follower(from, text);
    }
  }));
}

/** The gateway's API as `agent`. */
async function api(agent, pathname, { method = 'GET', body, params = {} } = {}) {
  const u = new URL(`${BASE}${P}/${pathname}`);
  u.searchParams.set('userid', agent);
  for (const [k, v] of Object.entries(params)) u.searchParams.set(k, v);
  const r = await fetch(u, { method, body: body ? JSON.stringify(body) : undefined, headers: body ? { 'content-type': 'application/json' } : {} });
  const j = await r.json();
  if (!r.ok) throw new Error(`${method} ${pathname}: ${r.status} ${JSON.stringify(j)}`);
  return j.data;
}

/** Every conversation of a view, in the server's order (all pages). */
async function serverList(agent, params = {}) {
  const out = [];
  let cursor;
  for (;;) {
    const d = await api(agent, 'conversations', { params: { limit: 200, ...params, ...(cursor ? { cursor } : {}) } });
    out.push(...d.conversations.map((c) => c.contact_id));
    if (!d.next) return { contacts: out, counts: d.counts };
    cursor = d.next;
  }
}

async function standinSent() {
  return (await fetch(`${STANDIN}/standin/sent`)).json();
}

/** Serve the console from CONSOLE_DIR (see the top). */
async function consoleFromDisk(context) {
  const from = process.env.CONSOLE_DIR;
  if (!from) return;
  const types = { js: 'text/javascript; charset=utf-8', css: 'text/css; charset=utf-8', html: 'text/html; charset=utf-8' };
  await context.route((u) => u.origin === BASE && (u.pathname === '/' || u.pathname.startsWith('/console/')), async (route) => {
    const u = new URL(route.request().url());
    const name = u.pathname === '/' ? 'index.html' : u.pathname.slice('/console/'.length);
    const file = path.join(from, name);
    if (!fs.existsSync(file)) return route.fulfill({ status: 404, body: 'not found' });
    return route.fulfill({ status: 200, headers: { 'content-type': types[name.split('.').pop()] }, body: fs.readFileSync(file) });
  });
}

let browser;
let one;   // agent1: Chinese, desktop
let two;   // agent2: English, phone width
const errors = [];
function watch(p, label) {
  p.setDefaultTimeout(WAIT);
  // Refusals the tests provoke (403 not the assignee, 409 claimed, 404 a gateway user's
  // conversation, 400 a remark too long) are logged by the browser as failed requests: expected.
  const expected = (m) => (/status of (403|404|409)/.test(m.text()) && m.location()?.url?.includes(`${P}/conversations`))
    || (/status of 400/.test(m.text()) && m.location()?.url?.includes('/remark'));
  p.on('console', (m) => m.type() === 'error' && !expected(m) && errors.push(`${label}: ${m.text()}`));
  p.on('pageerror', (e) => errors.push(`${label}: ${e}`));
}

const row = (p, contact) => p.locator(`#conversations button[data-contact="${contact}"]`);
const rows = (p) => p.locator('#conversations button[data-contact]').evaluateAll((l) => l.map((b) => b.dataset.contact));
/** Scroll the list down until `contact`'s row is loaded (the index comes in pages). */
async function reach(p, contact) {
  await until(`${contact}'s row`, async () => {
    if (await row(p, contact).count()) return true;
    await p.locator('#conversations').evaluate((u) => (u.scrollTop = u.scrollHeight));
    return false;
  });
}
async function openConv(p, contact) {
  await reach(p, contact);
  await row(p, contact).click();
  await p.waitForFunction((c) => document.getElementById('contact-name').textContent === c, contact);
}
/** Scroll the list to its end until the index has no more pages (each scroll loads one). */
async function scrollAll(p) {
  await until('every page of the list', async () => {
    await p.locator('#conversations').evaluate((u) => (u.scrollTop = u.scrollHeight));
    return p.evaluate(() => !window.imgate.conversations.hasMore && !window.imgate.conversations.paging);
  });
}
const FOLLOWERS = Array.from({ length: 151 }, (_, i) => `oF${String(i).padStart(3, '0')}`);
const BUSY = 'oBusy';

before(async () => {
  imgate(['wechat', 'standin', '--listen', `127.0.0.1:${standinPort}`, '--config', CONFIG], { cwd: dir, children });
  await until('the stand-in', async () => (await fetch(`${STANDIN}/standin/sent`)).ok);
  imgate(['serve', '--config', CONFIG], { cwd: dir, children });
  await until('the gateway', async () => (await fetch(`${BASE}/healthz`)).ok);
  // Pages served by a route count as public: let them reach the loopback gateway.
  const lna = process.env.CONSOLE_DIR ? ['--disable-features=LocalNetworkAccessChecks'] : [];
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: [...CHROMIUM_ARGS, ...lna] });
});

after(async () => {
  if (errors.length) console.error(`console errors: ${errors.join(' | ')}`);
  if (browser) await browser.close().catch(() => {});
  for (const c of children) if (c.exitCode === null) c.kill('SIGKILL');
  fs.rmSync(dir, { recursive: true, force: true });
});

async function agentPage(userid, { lang, viewport }) {
  const context = await browser.newContext({ viewport, locale: lang, timezoneId: 'Asia/Shanghai' });
  await consoleFromDisk(context);
  const p = await context.newPage();
  watch(p, userid);
  await p.goto(`${BASE}/?userid=${userid}`);
  await p.locator('#state.connected').waitFor();
  return p;
}

test('defect 1: all 152 conversations are reachable in the list, in the server\'s order (one follower sent 500)', async () => {
  // The busy follower first: its 500 messages are far more than the 200 newest frames the
  // list used to be built from.
  await followers(FOLLOWERS.map((f) => [f, `你好，我是 ${f}`]));
  await followers(Array.from({ length: 500 }, (_, i) => [BUSY, `第 ${i + 1} 条：我的包裹在哪里？`]), 4);
  one = await agentPage('agent1', { lang: 'zh-CN', viewport: { width: 1200, height: 760 } });
  check(await one.locator('#views').isVisible(), 'the views show: the gateway has the conversation index');
  const first = await rows(one);
  check(first.length < 152, `the list starts with one page (${first.length} rows)`);
  await scrollAll(one);
  const server = await serverList('agent1');
  const shown = await rows(one);
  check(shown.length === 152 && new Set(shown).size === 152, `all 152 conversations are in the list (${shown.length})`);
  check(JSON.stringify(shown) === JSON.stringify(server.contacts), 'in the server\'s order (waiting first, the longest waiting first)');
  check(shown.includes(BUSY) && FOLLOWERS.every((f) => shown.includes(f)), 'the busy follower and every other one');
  // Live: a follower's message moves its conversation; a new follower joins the list.
  await follower('oNewcomer', '新来的');
  await row(one, 'oNewcomer').waitFor();
  await until('the list to follow the server', async () => JSON.stringify(await rows(one)) === JSON.stringify((await serverList('agent1')).contacts));
  check((await rows(one)).length === 153, 'a new follower\'s conversation joins the list live, where the server puts it');
});

test('defect 6: unread from the server survives a reload; viewing reads it; 待回复 with its clock', async () => {
  const badge = (contact) => row(one, contact).locator('.badge');
  await one.reload();
  await one.locator('#state.connected').waitFor();
  await reach(one, BUSY);
  check(await badge(BUSY).textContent() === '500', `after a reload the server's unread shows (${await badge(BUSY).textContent()})`);
  await openConv(one, BUSY);
  await until('the server to count it read', async () => (await api('agent1', `conversations/${BUSY}`)).unread === 0);
  check((await api('agent2', `conversations/${BUSY}`)).unread === 500, 'agent1 reading leaves agent2\'s unread alone');
  await one.reload();
  await one.locator('#state.connected').waitFor();
  await scrollAll(one);
  check(await badge(BUSY).isHidden(), 'read stays read after a reload');
  // A message while the agent looks at the conversation is read at once.
  await openConv(one, BUSY);
  await follower(BUSY, '还在吗？');
  await one.locator('.msg.in .bubble', { hasText: '还在吗' }).waitFor();
  await until('the live message read on the server', async () => (await api('agent1', `conversations/${BUSY}`)).unread === 0 && (await api('agent1', `conversations/${BUSY}`)).last_message.preview.includes('还在吗'));

  // The waiting view: the server's list, its count, and how long each has waited.
  await one.locator('#views button[data-view="waiting"]').click();
  await one.locator('#views button[data-view="waiting"][aria-pressed="true"]').waitFor();
  await scrollAll(one);
  const waiting = await serverList('agent1', { view: 'waiting' });
  await until('the waiting view', async () => JSON.stringify(await rows(one)) === JSON.stringify(waiting.contacts));
  check(await one.locator('#views button[data-view="waiting"] .count').textContent() === String(waiting.counts.waiting), `its count (${waiting.counts.waiting})`);
  const clock = await row(one, waiting.contacts[0]).locator('.waiting').textContent();
  check(clock.startsWith(tr('zh-CN', 'waiting.for', { d: '' }).trim()), `a waiting row shows how long (${clock})`);
  // Answered: it leaves the waiting view (claim first: routing is "claim").
  await openConv(one, 'oF000');
  await one.locator('#actions button[data-act="claim"]').click();
  await one.locator('#assignee[data-assignee="agent1"]').waitFor();
  await one.locator('#text').fill('您好，马上帮您查');
  await one.keyboard.press('Enter');
  await one.locator('.msg.out[data-state="sent"]', { hasText: '马上帮您查' }).waitFor();
  await until('the answered conversation to leave the waiting view', async () => (await row(one, 'oF000').count()) === 0);
  check(!(await rows(one)).includes('oF000'), 'an answered conversation leaves 待回复');
});

test('views and search: mine, unassigned, all with their counts; q', async () => {
  // agent1 holds oF000 (claimed above); claims oF001 through the API as another console would.
  await api('agent1', 'conversations/oF001/claim', { method: 'POST' });
  const view = async (v) => {
    await one.locator(`#views button[data-view="${v}"]`).click();
    await one.locator(`#views button[data-view="${v}"][aria-pressed="true"]`).waitFor();
    await scrollAll(one);
    const s = await serverList('agent1', { view: v });
    await until(`the ${v} view`, async () => JSON.stringify(await rows(one)) === JSON.stringify(s.contacts));
    for (const k of ['waiting', 'mine', 'unassigned', 'all']) {
      await until(`the ${k} count`, async () => await one.locator(`#views button[data-view="${k}"] .count`).textContent() === String(s.counts[k]));
    }
    return s;
  };
  const mine = await view('mine');
  check(JSON.stringify([...mine.contacts].sort()) === JSON.stringify(['oF000', 'oF001']), `mine: exactly agent1's (${mine.contacts})`);
  const unassigned = await view('unassigned');
  check(unassigned.contacts.length === 151 && !unassigned.contacts.includes('oF001'), `unassigned: the others (${unassigned.contacts.length})`);
  await view('all');
  // Search: the box asks the server (q), counts follow it.
  await one.locator('#search').fill('oF01');
  await until('the search', async () => JSON.stringify(await rows(one)) === JSON.stringify((await serverList('agent1', { q: 'oF01' })).contacts));
  const found = await rows(one);
  check(found.length === 10 && found.every((c) => c.startsWith('oF01')), `q finds oF010–oF019 (${found})`);
  check(await one.locator('#views button[data-view="all"] .count').textContent() === '10', 'the counts follow the search');
  await one.locator('#search').fill('');
  await until('the whole list back', async () => (await rows(one)).length >= 50);
  // A live claim by another agent leaves agent1's unassigned view.
  await view('unassigned');
  await api('agent2', 'conversations/oF002/claim', { method: 'POST' });
  await until('oF002 to leave the unassigned view', async () => (await row(one, 'oF002').count()) === 0);
  await view('all');
});

test('a claim lost to another agent names who holds it (409)', async () => {
  await openConv(one, 'oF003');
  await one.locator('#assignee[data-assignee=""]').waitFor();
  await api('agent2', 'conversations/oF003/claim', { method: 'POST' });
  // The shortcut asks the server whatever the header shows by now (the 104 frame may be in).
  await one.keyboard.press('Alt+C');
  await one.locator('#act-error:not([hidden])').waitFor();
  const text = await one.locator('#act-error').textContent();
  check(text === `${tr('zh-CN', 'act.conflict')}agent2`, `the console says who holds it (${text})`);
  await one.locator('#assignee[data-assignee="agent2"]').waitFor();
  check(await one.locator('#actions button[data-act="claim"]').isHidden(), 'and no longer offers a claim');
});

test('two agents: claim, transfer with a note, reply, internal note, resolve, reopen (done-when)', async () => {
  const FAN = 'oWang';
  await follower(FAN, '你好，我的快递显示已签收，但我没有收到。');
  two = await agentPage('agent2', { lang: 'en-US', viewport: { width: 390, height: 844 } });
  await openConv(one, FAN);
  await openConv(two, FAN);
  await two.locator('#assignee[data-assignee=""]').waitFor();

  // agent1 claims: agent2 sees it assigned and cannot reply (403, and the console says why).
  await one.keyboard.press('Alt+C');
  await one.locator('#assignee[data-assignee="agent1"]').waitFor();
  await two.locator('#assignee[data-assignee="agent1"]').waitFor();
  await two.locator('.notice[data-event="conv.claim"]').waitFor();
  await two.locator('#text').fill('Let me check that for you.');
  await two.keyboard.press('Enter');
  const refused = two.locator('.msg.out[data-state="failed"]', { hasText: 'Let me check' });
  await refused.waitFor();
  const why = await refused.locator('.failed').textContent();
  check(why.includes('assigned to agent1') && why.includes('only agent1 may reply'), `agent2's reply is refused, and says why (${why})`);
  check(!(await standinSent()).some((b) => b.touser === FAN), 'nothing reached WeChat');
  const offered = async (p) => (await p.locator('#actions button:not([hidden])').evaluateAll((l) => l.map((b) => b.dataset.act))).join();
  check(await offered(two) === '', `agent2 is offered no action on agent1's conversation (${await offered(two)})`);
  check(await offered(one) === 'transfer,resolve', `agent1 is offered transfer and resolve (${await offered(one)})`);

  // agent1 transfers to agent2 with a note (the dialog lists the account's agents).
  await one.locator('#actions button[data-act="transfer"]').click();
  await one.locator('#transfer:not([hidden])').waitFor();
  const options = await one.locator('#transfer-to option').evaluateAll((o) => o.map((x) => x.value));
  check(JSON.stringify(options) === JSON.stringify(['agent2']), `the dialog lists the other agents (${options})`);
  await one.locator('#transfer-note').fill('VIP 客户，请优先处理');
  await one.locator('#transfer-form button[type="submit"]').click();
  await one.locator('#assignee[data-assignee="agent2"]').waitFor();
  await two.locator('#assignee[data-assignee="agent2"]').waitFor();
  const notice = await two.locator('.notice[data-event="conv.transfer"]').textContent();
  check(notice.includes('agent2') && notice.includes('VIP 客户'), `agent2 sees the transfer and its note (${notice})`);

  // agent2 replies: the stand-in receives it.
  await two.locator('#text').fill('Sorry about that — I have asked the courier to call you today.');
  await two.keyboard.press('Enter');
  await two.locator('.msg.out[data-state="sent"]', { hasText: 'asked the courier' }).waitFor();
  await until('the reply at the stand-in', async () => (await standinSent()).some((b) => b.touser === FAN && b.text?.content?.includes('asked the courier')));

  // agent2 writes an internal note: agent1 sees it, WeChat never does.
  await two.keyboard.press('Alt+N');
  await two.locator('#composer.note').waitFor();
  await two.locator('#text').fill('Courier ticket #4471 opened; call back tomorrow.');
  await two.keyboard.press('Enter');
  await two.locator('.note .bubble', { hasText: 'ticket #4471' }).waitFor();
  await one.locator('.note .bubble', { hasText: 'ticket #4471' }).waitFor();
  check(await one.locator('.note', { hasText: 'ticket #4471' }).locator('.when').textContent().then((s) => s.includes('agent2')), 'agent1 sees the note, with its author');
  check(await one.locator('.msg .bubble', { hasText: 'ticket #4471' }).count() === 0, 'the note is shown apart from the messages');
  await two.keyboard.press('Alt+N');

  // agent2 resolves; the follower writes again: open again.
  await two.locator('#actions button[data-act="resolve"]').click();
  await one.locator('#assignee[data-state="resolved"]').waitFor();
  await two.locator('#assignee[data-state="resolved"]').waitFor();
  await follower(FAN, '好的，谢谢！还有一个问题。');
  await one.locator('#assignee[data-state="open"]').waitFor();
  await two.locator('#assignee[data-state="open"]').waitFor();
  await one.locator('.notice[data-event="conv.reopen"]').waitFor();
  check(!(await standinSent()).some((b) => JSON.stringify(b).includes('4471')), 'the stand-in never received the note');

  const write = process.env.UPDATE_SCREENSHOTS === '1';
  const zhShot = write ? path.join(DOCS, 'inbox-zh.png') : path.join(dir, 'inbox-zh.png');
  const enShot = write ? path.join(DOCS, 'inbox-en-phone.png') : path.join(dir, 'inbox-en-phone.png');
  await one.locator('#views button[data-view="mine"]').click();
  await one.locator('#views button[data-view="all"]').click();
  await one.locator('#search').fill('');
  await openConv(one, FAN);
  await one.screenshot({ path: zhShot });
  await two.screenshot({ path: enShot });
  check(fs.statSync(zhShot).size > 10_000 && fs.statSync(enShot).size > 10_000, `screenshots written (${zhShot}, ${enShot})`);
});

test('client.js: frames 104-106 reach the page and move `since` (a reconnect neither misses nor repeats them)', async () => {
  // agent1's newest mailbox frames are the inbox's own (the reopen above, presence).
  await follower('oWang', '在吗？');
  const { assignee } = await api('agent1', 'conversations/oWang');
  await api(assignee || 'agent1', 'conversations/oWang/resolve', { method: 'POST' });
  const newest = async () => {
    const u = `${BASE}${P}/history?userid=agent1&limit=1`;
    const f = (await (await fetch(u)).json()).data.messages[0];
    return { seq: Number(f.data.seq), code: Number(f.result.code) };
  };
  const last = await newest();
  check(last.code === 104, `the newest frame of agent1's mailbox is a 104 (${JSON.stringify(last)})`);
  await until('since to reach it', async () => (await one.evaluate(() => window.imgate.client.since)) >= last.seq);
  check(await one.evaluate(() => Number(localStorage.getItem('imgate.since.agent1'))) >= last.seq, 'and it is kept for the next connection');
});

test('canned replies: / offers them by shortcut or text; the panel adds and removes them', async () => {
  await api('agent1', 'canned', { method: 'PUT', body: { canned: [{ shortcut: 'hi', text: '您好，请问有什么可以帮您？' }] } });
  await one.reload();
  await one.locator('#state.connected').waitFor();
  await openConv(one, 'oF000');
  // The panel: add one, remove one (PUT P/canned).
  await one.keyboard.press('Alt+K');
  await one.locator('#canned:not([hidden])').waitFor();
  await one.locator('#canned-shortcut').fill('track');
  await one.locator('#canned-text').fill('您的包裹正在派送中，预计今天送达。');
  await one.locator('#canned-add button[type="submit"]').click();
  await one.locator('#canned-list li', { hasText: '/track' }).waitFor();
  await until('the server to keep it', async () => (await api('agent2', 'canned')).canned.map((c) => c.shortcut).join() === 'hi,track');
  await one.locator('#canned-list button[data-remove="hi"]').click();
  await until('the server to drop it', async () => (await api('agent2', 'canned')).canned.map((c) => c.shortcut).join() === 'track');
  await one.keyboard.press('Escape');
  await one.locator('#canned').waitFor({ state: 'hidden' });
  await api('agent2', 'canned', { method: 'PUT', body: { canned: [{ shortcut: 'track', text: '您的包裹正在派送中，预计今天送达。' }, { shortcut: 'bye', text: '感谢您的耐心，祝您生活愉快！' }] } });
  await one.reload();
  await one.locator('#state.connected').waitFor();
  await openConv(one, 'oF000');
  // `/` offers them; by shortcut, then by text.
  await one.locator('#text').fill('/tr');
  await one.locator('#canned-menu:not([hidden])').waitFor();
  const offered = await one.locator('#canned-menu li').allTextContents();
  check(offered.length === 1 && offered[0].startsWith('/track'), `by shortcut (${offered})`);
  await one.locator('#text').fill('/愉快');
  await one.locator('#canned-menu li', { hasText: '/bye' }).waitFor();
  await one.keyboard.press('Enter');
  check(await one.locator('#text').inputValue() === '感谢您的耐心，祝您生活愉快！', 'Enter takes the offered reply into the box (not sent)');
  await one.keyboard.press('Enter');
  await one.locator('.msg.out[data-state="sent"]', { hasText: '祝您生活愉快' }).waitFor();
});

test('presence: each agent\'s shows; the agent sets itself away and back', async () => {
  const status = (p, agent) => p.locator(`#agents li[data-agent="${agent}"]`).getAttribute('data-status');
  await until('agent2 online at agent1', async () => await status(one, 'agent2') === 'online');
  await until('agent1 online at agent1 (itself)', async () => await status(one, 'agent1') === 'online');
  await two.locator('#back').click();
  await two.locator('#away').click();
  await until('agent2 away at agent1 (frame 106)', async () => await status(one, 'agent2') === 'away');
  check((await api('agent1', 'presence')).agents.find((a) => a.agent === 'agent2').status === 'away', 'the server keeps it (PUT P/presence)');
  check(await two.locator('#away').getAttribute('aria-pressed') === 'true', 'agent2\'s own switch shows away');
  await two.keyboard.press('Alt+A');
  await until('agent2 back online at agent1', async () => await status(one, 'agent2') === 'online');
  await two.context().close();
  await until('agent2 offline at agent1', async () => await status(one, 'agent2') === 'offline');
});

test('keyboard and language: the inbox\'s shortcuts under ?, every string in both tables', async () => {
  await one.locator('#messages').focus();
  await one.keyboard.press('?');
  await one.locator('#help:not([hidden])').waitFor();
  const help = await one.locator('#help-keys').textContent();
  for (const k of ['Alt+C', 'Alt+X', 'Alt+D', 'Alt+O', 'Alt+N', 'Alt+K', 'Alt+A', 'Alt+F']) check(help.includes(k), `? lists ${k}`);
  await one.keyboard.press('Escape');
  check(JSON.stringify(Object.keys(I18N.tables['zh-CN']).sort()) === JSON.stringify(Object.keys(I18N.tables.en).sort()), 'both tables have the same keys');
  const missing = await one.evaluate(() => window.imgate.i18n.missing());
  check(missing.length === 0, `no key missing from the zh table (${missing})`);
  const p = await agentPage('agent2', { lang: 'en-US', viewport: { width: 1200, height: 760 } });
  await openConv(p, 'oWang');
  await p.keyboard.press('Alt+X');
  await p.locator('#transfer:not([hidden])').waitFor();
  const han = await p.evaluate(() => {
    const out = [];
    const skip = (n) => n.closest('[translate="no"], script, style, svg, [hidden], .bubble');
    const w = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
    while (w.nextNode()) if (w.currentNode.textContent.trim() && !skip(w.currentNode.parentElement)) out.push(w.currentNode.textContent.trim());
    return out.filter((s) => /\p{Script=Han}/u.test(s));
  });
  check(han.length === 0, `no Chinese in the English page's own strings (${han.join(' | ')})`);
  check((await p.evaluate(() => window.imgate.i18n.missing())).length === 0, 'no key missing from the en table');
  await p.context().close();
});

test('followers with names: the profile shows the unionid; a remark set in the console names the follower in the list, the header and the other agent\'s list', async () => {
  await follower('oNamed', '我的快递到了吗？');
  const one = await agentPage('agent1', { lang: 'zh-CN', viewport: { width: 1200, height: 760 } });
  const p = await agentPage('agent2', { lang: 'en-US', viewport: { width: 1200, height: 760 } });
  const contact = () => api('agent1', 'contact', { params: { contact_id: 'oNamed' } });
  const unionid = await until('the follower\'s profile (user/info)', async () => (await contact()).wechat.profile?.unionid);
  await openConv(one, 'oNamed');
  await openConv(p, 'oNamed');
  await one.locator('#profile:not([hidden])').waitFor();
  check((await one.locator('#profile-text').textContent()).includes(unionid), `the profile shows the unionid (${unionid})`);
  await one.locator('#rename').click();
  await one.locator('#remark-input').fill('李安娜（VIP）');
  await one.keyboard.press('Enter');
  const name = (q, c) => row(q, c).locator('.name').textContent();
  await until('the row to show the name', async () => await name(one, 'oNamed') === '李安娜（VIP）');
  check(await one.locator('#contact-name').textContent() === '李安娜（VIP）', 'the header shows the name');
  check(await row(one, 'oNamed').getAttribute('title') === 'oNamed', 'the openid stays in the row\'s title');
  check((await contact()).wechat.profile.remark === '李安娜（VIP）', 'the gateway keeps it (WeChat took it: updateremark)');
  // The other agent, with the conversation open, hears it at once (104, action remark): the
  // list, the header, and a line saying who named the follower.
  await until('agent2\'s row to show the name', async () => await name(p, 'oNamed') === '李安娜（VIP）');
  await p.waitForFunction((n) => document.getElementById('contact-name').textContent === n, '李安娜（VIP）');
  const told = await p.locator('.notice[data-event="conv.remark"]').textContent();
  check(told.includes('agent1') && told.includes('李安娜（VIP）'), `agent2 sees who named the follower (${told})`);
  // The follower's next message carries the name (data.name), and the index has it on a new page.
  await follower('oNamed', '在吗？');
  await p.locator('.msg.in .bubble', { hasText: '在吗？' }).waitFor();
  check(await name(p, 'oNamed') === '李安娜（VIP）', 'the next message keeps the name');
  await p.reload();
  await p.locator('#state.connected').waitFor();
  await reach(p, 'oNamed');
  await until('the name from the index after a reload', async () => await name(p, 'oNamed') === '李安娜（VIP）');
  // Over 30 characters: WeChat's limit, said plainly; the name stays.
  await one.locator('#rename').click();
  await one.locator('#remark-input').evaluate((i) => i.removeAttribute('maxlength'));
  await one.locator('#remark-input').fill('名'.repeat(31));
  await one.keyboard.press('Enter');
  await one.locator('#act-error:not([hidden])', { hasText: '31' }).waitFor();
  check(await one.locator('#contact-name').textContent() === '李安娜（VIP）', 'a refused name changes nothing');
  await one.locator('#remark-cancel').click();
  await one.context().close();
  await p.context().close();
});

test('the pages log no errors', () => {
  check(errors.length === 0, `no console errors (${errors.join(' | ')})`);
});
