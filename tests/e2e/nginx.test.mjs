// The seed's test page through nginx in front of two imgate nodes sharing one Redis:
//
//   node tests/e2e/nginx.test.mjs
//
// redis-server, two `imgate serve` nodes (store.engine = "redis") and nginx with
// deploy/nginx.conf (its example node addresses swapped for this run's) on the seed's
// port 1234. The seed's page, unchanged, connects through nginx; the seed's XML posted
// through nginx — to whichever node nginx picks — and to each node directly must all
// print in the page's console. No wall-clock assertions: timeouts only fail a hung test.

import { spawn, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { BIN, CHROMIUM, HERE, freePort, sleep, until } from './lib.mjs';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'imgate-nginx-'));
const children = [];

function start(cmd, args, env = {}) {
  const c = spawn(cmd, args, { cwd: dir, env: { ...process.env, ...env }, stdio: ['ignore', 'ignore', 'pipe'] });
  c.log = '';
  c.stderr.on('data', (d) => (c.log += d));
  children.push(c);
  return c;
}

const seedXml = (id, content) => `<xml>
  <ToUserName>1</ToUserName>
  <FromUserName>魏秀兰</FromUserName>
  <CreateTime>1976-04-10 12:21:47</CreateTime>
  <MsgType>enim</MsgType>
  <Content>${content}</Content>
  <MsgId>${id}</MsgId>
  <MsgDataId>27</MsgDataId>
  <Idx>74</Idx>
</xml>`;

async function post(url, body) {
  const r = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/xml' }, body });
  if (!r.ok) throw new Error(`POST ${url}: ${r.status} ${await r.text()}`);
}

let failed = false;
let browser;
const lines = [];
try {
  for (const port of [1234]) {
    await new Promise((resolve, reject) => {
      const s = net.createServer().once('error', () => reject(new Error(`port ${port} is taken: this test runs nginx there for the seed's page (ws://localhost:1234); stop whatever listens on it`))).listen(port, '127.0.0.1', () => s.close(resolve));
    });
  }
  const redisPort = await freePort();
  start('redis-server', ['--port', String(redisPort), '--bind', '127.0.0.1', '--daemonize', 'no', '--save', '', '--dir', dir]);
  await until('redis-server', async () => execFileSync('redis-cli', ['-p', String(redisPort), 'ping'], { stdio: ['ignore', 'pipe', 'ignore'] }).toString().includes('PONG'));

  const nodes = [];
  for (const name of ['a', 'b']) {
    const port = await freePort();
    start(BIN, ['serve', '--listen', `127.0.0.1:${port}`, '--data-dir', path.join(dir, name)], {
      IMGATE_STORE__ENGINE: 'redis',
      IMGATE_STORE__REDIS_URL: `redis://127.0.0.1:${redisPort}`,
      RUST_LOG: 'imgate=warn',
    });
    await until(`node ${name}`, async () => (await fetch(`http://127.0.0.1:${port}/readyz`)).ok);
    nodes.push(port);
  }

  // The documented configuration, with this run's node ports; nginx's files in the temp dir (-p).
  const conf = fs.readFileSync(path.join(HERE, '../../deploy/nginx.conf'), 'utf8')
    .replaceAll('127.0.0.1:1235', `127.0.0.1:${nodes[0]}`)
    .replaceAll('127.0.0.1:1236', `127.0.0.1:${nodes[1]}`);
  if (conf.includes(':1235') || conf.includes(':1236')) throw new Error('deploy/nginx.conf changed shape: update this test');
  fs.mkdirSync(path.join(dir, 'logs'));
  fs.writeFileSync(path.join(dir, 'nginx.conf'), conf);
  const nginx = start('nginx', ['-p', dir, '-c', path.join(dir, 'nginx.conf'), '-g', `daemon off; pid ${dir}/nginx.pid; error_log ${dir}/logs/error.log;`]);
  await until('nginx on :1234', async () => (await fetch('http://127.0.0.1:1234/healthz')).ok);
  console.log(`ok - nginx on :1234 in front of nodes :${nodes[0]} and :${nodes[1]}`);

  // The seed's page, unchanged, from a static server.
  const page = fs.readFileSync(path.join(HERE, 'seed.html'));
  const pageServer = http.createServer((req, res) => {
    if (req.url === '/seed.html') res.end(page);
    else { res.statusCode = 204; res.end(); }
  });
  await new Promise((r) => pageServer.listen(0, '127.0.0.1', r));
  const pagePort = pageServer.address().port;

  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'] });
  const tab = await browser.newPage();
  tab.on('console', (m) => lines.push(m.text()));
  await tab.goto(`http://localhost:${pagePort}/seed.html`);
  await until('the page to connect through nginx', async () => lines.some((l) => l.startsWith('connected to ws://localhost:1234?userId=1')));
  console.log('ok - the seed page connects through nginx');

  const expect = async (content) => {
    await until(`"${content}" in the page's console`, async () => lines.some((l) => l.startsWith('message received:') && l.includes(content)));
    console.log(`ok - the page printed "${content}"`);
  };
  await post('http://localhost:1234/send', seedXml(19, 'occaecat ut in fugiat dolor'));
  await expect('occaecat ut in fugiat dolor');
  await post(`http://127.0.0.1:${nodes[0]}/send`, seedXml(20, 'posted to node A'));
  await expect('posted to node A');
  await post(`http://127.0.0.1:${nodes[1]}/send`, seedXml(21, 'posted to node B'));
  await expect('posted to node B');
  if (lines.some((l) => l.startsWith('connection closed'))) throw new Error('the page lost its connection');
  pageServer.close();
  process.kill(nginx.pid, 'SIGQUIT');
} catch (e) {
  failed = true;
  console.error(`FAIL: ${e.message}`);
  console.error(lines.slice(-10).join('\n'));
  for (const c of children) if (c.log) console.error(c.log.slice(-1500));
} finally {
  if (browser) await browser.close().catch(() => {});
  for (const c of children) if (c.exitCode === null) c.kill('SIGKILL');
  await sleep(200);
  fs.rmSync(dir, { recursive: true, force: true });
}
console.log(failed ? 'FAIL: nginx' : 'PASS: nginx');
process.exit(failed ? 1 : 0);
