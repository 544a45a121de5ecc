// A quick behaviour check of the benchmark's peers (scripts/bench --check-peers): each peer
// is started on a free loopback port and must do what imgate-bench and the seed's test
// (seed §3) rely on. Every wait has a deadline; the whole check takes a few seconds.
//
//   node bench/peers/check.mjs NAME=COMMAND... (the port is appended to COMMAND as
//   --listen 127.0.0.1:PORT)
// Exit status 0 when every peer passed.
import { spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import net from 'node:net';
import assert from 'node:assert/strict';

const require = createRequire(new URL('./node-ws/package.json', import.meta.url));
const WebSocket = require('ws');

const STEP_MS = 5000;

// The seed's test message (seed §3), exactly as written there.
const SEED_XML = `<xml>
  <ToUserName>1</ToUserName>
  <FromUserName>魏秀兰</FromUserName>
  <CreateTime>1976-04-10 12:21:47</CreateTime>
  <MsgType>enim</MsgType>
  <Content>occaecat ut in fugiat dolor</Content>
  <MsgId>19</MsgId>
  <MsgDataId>27</MsgDataId>
  <Idx>74</Idx>
</xml>`;

function deadline(promise, what, ms = STEP_MS) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(`timed out: ${what}`)), ms); }),
  ]).finally(() => clearTimeout(timer));
}

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => resolve(port)); });
  });
}

// A WebSocket whose text frames are queued, so that none is missed between awaits.
function connect(url, protocols) {
  const ws = new WebSocket(url, protocols);
  const frames = [];
  const waiters = [];
  ws.on('message', (data, binary) => {
    if (binary) return;
    const f = JSON.parse(data.toString('utf8'));
    const w = waiters.shift();
    if (w) w(f); else frames.push(f);
  });
  // The next frame, within ms; a waiter that timed out is withdrawn, so no frame is lost to it.
  ws.next = (what, ms = STEP_MS) => {
    if (frames.length) return Promise.resolve(frames.shift());
    let waiter;
    return deadline(new Promise((resolve) => { waiter = resolve; waiters.push(waiter); }), what, ms)
      .finally(() => { const i = waiters.indexOf(waiter); if (i >= 0) waiters.splice(i, 1); });
  };
  return deadline(new Promise((resolve, reject) => {
    ws.once('open', () => resolve(ws));
    ws.once('error', reject);
  }), `connect ${url}`);
}

async function post(base, path, body, contentType) {
  const res = await deadline(fetch(base + path, { method: 'POST', headers: { 'content-type': contentType }, body }), `POST ${path}`);
  return { status: res.status, body: await res.text() };
}

async function checkPeer(name, command, port) {
  const base = `http://127.0.0.1:${port}`;
  const wsBase = `ws://127.0.0.1:${port}`;
  const [cmd, ...args] = command.split(' ');
  const child = spawn(cmd, [...args, '--listen', `127.0.0.1:${port}`], { stdio: ['ignore', 'ignore', 'inherit'] });
  const exited = new Promise((resolve) => child.once('exit', resolve));
  const sockets = [];
  try {
    // Up within 10 s.
    const up = Date.now() + 10000;
    for (;;) {
      const ok = await fetch(`${base}/healthz`).then((r) => r.ok, () => false);
      if (ok) break;
      if (Date.now() > up || child.exitCode !== null) throw new Error('did not start');
      await new Promise((r) => setTimeout(r, 100));
    }

    // Seed §3: the page connects as userId 1 asking for "echo"; the XML posted to /send reaches it.
    const page = await connect(`${wsBase}?userId=1`, 'echo');
    sockets.push(page);
    assert.equal(page.protocol, 'echo', 'the offered sub-protocol is selected');
    page.send('pong'); // the page's button; the peer ignores it
    let r = await post(base, '/send', SEED_XML, 'text/xml');
    assert.equal(r.status, 200, `POST /send (XML) answered ${r.status} ${r.body}`);
    let f = await page.next('the seed XML frame');
    assert.equal(f.result.code, 1001, 'unknown type enim is sent as text');
    assert.equal(f.result.message, 'common');
    assert.equal(f.data.msg.content, 'occaecat ut in fugiat dolor');
    assert.equal(f.data.contact_id, '魏秀兰', 'contact_id: the other party (FromUserName)');
    assert.equal(f.data.name, '魏秀兰');
    assert.equal(f.data.id, '19');
    assert.equal(f.data.msg_type, 'enim');
    assert.equal(f.data.send_time, Date.parse('1976-04-10T12:21:47+08:00') / 1000);

    // imgate-bench's push: JSON to /send?userid=SENDER, recipient = contact_id; the frame's
    // text carries "content":"<index>:..." and contact_id = the sender.
    const u = await connect(`${wsBase}/?userid=b1`);
    sockets.push(u);
    const json = '{"data":{"msg_type":"text","contact_id":"b1","msg":{"content":"7:xxxx"}},"result":{"code":1001,"message":"common"}}';
    r = await post(base, '/send?userid=benchA', json, 'application/json');
    assert.equal(r.status, 200);
    assert.equal(JSON.parse(r.body).result.code, 0);
    f = await u.next('the JSON frame');
    assert.deepEqual(f.data.msg, { content: '7:xxxx' });
    assert.equal(f.data.contact_id, 'benchA');
    assert.equal(f.result.code, 1001);

    // The seed's path, and the cache: a message for a user who is away waits until it connects.
    r = await post(base, '/im_component/wx_official_account/send?userid=agent', '{"data":{"msg_type":"image","contact_id":"away","msg":{"media_path":"m1"}}}', 'application/json');
    assert.equal(r.status, 200);
    r = await post(base, '/im_component/wx_official_account/send_xml', '<xml><ToUserName><![CDATA[away]]></ToUserName><FromUserName><![CDATA[o1]]></FromUserName><CreateTime>1348831860</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[this is a test]]></Content><MsgId>1234567890123456</MsgId></xml>', 'application/xml');
    assert.equal(r.status, 200);
    const away = await connect(`${wsBase}/im_component/wx_official_account/msg?userid=away`);
    sockets.push(away);
    f = await away.next('the first cached frame');
    assert.equal(f.result.code, 1002);
    assert.deepEqual(f.data.msg, { media_path: 'm1' });
    f = await away.next('the second cached frame');
    assert.equal(f.data.msg.content, 'this is a test');
    assert.equal(f.data.send_time, 1348831860);

    // Two tabs of one user both get a message. The peers register a socket after answering
    // its handshake, so tab 2 may miss what is posted right after it opened (the cache is
    // only for users with no socket): probe until it is registered.
    const tab2 = await connect(`${wsBase}/?userid=b1`);
    sockets.push(tab2);
    for (let k = 0; ; k++) {
      assert.ok(k < 40, 'tab 2 never registered');
      r = await post(base, '/send?userid=benchA', json.replace('7:xxxx', `probe${k}`), 'application/json');
      assert.equal(r.status, 200);
      assert.equal((await u.next('probe on tab 1')).data.msg.content, `probe${k}`);
      const seen = await tab2.next('probe on tab 2', 250).catch(() => null);
      if (seen) {
        assert.match(seen.data.msg.content, /^probe/);
        break;
      }
    }
    r = await post(base, '/send?userid=benchA', json.replace('7:xxxx', '8:yy'), 'application/json');
    assert.equal(r.status, 200);
    assert.equal((await u.next('tab 1')).data.msg.content, '8:yy');
    let late; // a probe that came after its 250 ms is skipped
    do late = (await tab2.next('tab 2')).data.msg.content; while (late.startsWith('probe'));
    assert.equal(late, '8:yy');

    // Bad input: the seed's error frame and 400.
    for (const bad of ['{"data":', '<xml><ToUserName>1</ToUserName>', '{"data":{"msg_type":"text","msg":{"content":"x"}}}']) {
      r = await post(base, '/send', bad, 'application/json');
      assert.equal(r.status, 400, `bad body ${bad} answered ${r.status}`);
      assert.equal(JSON.parse(r.body).result.code, -1);
    }
    // Nothing else reached user 1 (no stray frames).
    page.send('pong');
    r = await post(base, '/send?userid=z', '{"data":{"msg_type":"voice","contact_id":"1","msg":{"media_path":"v"}}}', 'application/json');
    assert.equal((await page.next('the voice frame')).result.code, 1003);
  } finally {
    for (const s of sockets) s.terminate();
    child.kill('SIGTERM');
    await deadline(exited, `${name} to exit`).catch(() => child.kill('SIGKILL'));
  }
}

const peers = process.argv.slice(2).map((a) => { const i = a.indexOf('='); return [a.slice(0, i), a.slice(i + 1)]; });
if (peers.length === 0) {
  console.error('usage: node check.mjs NAME=COMMAND...');
  process.exit(2);
}
let failed = 0;
for (const [name, command] of peers) {
  try {
    await checkPeer(name, command, await freePort());
    console.log(`ok   ${name}`);
  } catch (e) {
    failed += 1;
    console.log(`FAIL ${name}: ${e.message}`);
  }
}
process.exit(failed ? 1 : 0);
