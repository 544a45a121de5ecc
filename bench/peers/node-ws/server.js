// node-ws: the seed's design (seed §1-§3) as a Node.js team would write it, for
// scripts/bench. The same behaviour as ../seed-go, on the `ws` package:
//   - WebSocket at /?userId=U (or userid), and /im_component/wx_official_account/msg?userid=U;
//     the sub-protocol the client offers (the seed's page asks for "echo") is selected;
//   - a Map of live sockets per user and a Map as the seed's message cache for users who are
//     not connected, flushed when they connect; memory only, `since` is ignored;
//   - POST /send (and .../send, .../send_xml) with the seed's JSON or WeChat XML pushes a frame
//     to the recipient (JSON: data.contact_id, XML: ToUserName); the frame's contact_id is the
//     sender, the other party;
//   - a heartbeat frame (code 101) every 25 s per connection.
// A socket with more than 1 MiB unsent is a slow client and is dropped.
//
//   npm ci && node server.js --listen 127.0.0.1:1234
'use strict';
const http = require('node:http');
const { WebSocketServer } = require('ws');

const PREFIX = '/im_component/wx_official_account';
const SEND_PATHS = new Set(['/send', `${PREFIX}/send`, `${PREFIX}/send_xml`]);
const WS_PATHS = new Set(['/', `${PREFIX}/msg`]);
const CODES = { text: 1001, image: 1002, voice: 1003, video: 1004 };
const BODY_MAX = 1 << 20;
const SLOW_CLIENT_BYTES = 1 << 20;
const HEARTBEAT = JSON.stringify({ data: {}, result: { code: 101, message: 'heartbeat' } });
const OK = JSON.stringify({ data: {}, result: { code: 0, message: 'ok' } });

function listenArg() {
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--listen' || argv[i] === '-listen') return argv[i + 1];
    const m = /^--?listen=(.*)$/.exec(argv[i]);
    if (m) return m[1];
  }
  return '127.0.0.1:1234';
}

const live = new Map(); // user -> Set of sockets
const cache = new Map(); // user -> frames (strings) waiting for the user to connect

function push(user, frame) {
  const sockets = live.get(user);
  if (!sockets || sockets.size === 0) {
    const waiting = cache.get(user);
    if (waiting) waiting.push(frame);
    else cache.set(user, [frame]);
    return;
  }
  for (const ws of sockets) {
    if (ws.bufferedAmount > SLOW_CLIENT_BYTES) {
      ws.terminate();
      continue;
    }
    ws.send(frame);
  }
}

// One element of a WeChat XML message: CDATA or plain text (entities unescaped).
function element(xml, name) {
  const m = new RegExp(`<${name}>\\s*(?:<!\\[CDATA\\[([\\s\\S]*?)\\]\\]>|([^<]*))\\s*</${name}>`).exec(xml);
  if (!m) return '';
  if (m[1] !== undefined) return m[1];
  return m[2]
    .replace(/&lt;/g, '<').replace(/&gt;/g, '>').replace(/&quot;/g, '"').replace(/&apos;/g, "'")
    .replace(/&amp;/g, '&');
}

// CreateTime: unix seconds, or the seed's "1976-04-10 12:21:47" (Beijing time).
function sendTime(s) {
  if (/^-?\d+$/.test(s)) return Number(s);
  const t = Date.parse(`${s.replace(' ', 'T')}+08:00`);
  return Number.isFinite(t) ? Math.floor(t / 1000) : Math.floor(Date.now() / 1000);
}

function answer(res, status, body) {
  res.writeHead(status, { 'Content-Type': 'application/json' });
  res.end(body);
}

function fail(res, status, reason) {
  answer(res, status, JSON.stringify({ data: {}, result: { code: -1, message: reason } }));
}

function send(res, url, body) {
  const text = body.trim();
  let to;
  let data;
  if (text.startsWith('<')) {
    if (!/<\/xml>$/.test(text)) return fail(res, 400, 'bad xml');
    to = element(text, 'ToUserName');
    const from = element(text, 'FromUserName');
    const content = element(text, 'Content');
    const media = element(text, 'MediaId');
    data = {
      id: element(text, 'MsgId'), name: from, avatar: '', msg_type: element(text, 'MsgType'),
      contact_id: from, company_id: '', send_time: sendTime(element(text, 'CreateTime')),
      msg: content || !media ? { content } : { media_path: media },
    };
  } else {
    let req;
    try {
      req = JSON.parse(text);
    } catch (e) {
      return fail(res, 400, `bad json: ${e.message}`);
    }
    if (!req || typeof req.data !== 'object' || req.data === null) return fail(res, 400, 'missing data');
    to = req.data.contact_id;
    // The recipient sees the sender as the other party.
    data = { ...req.data, contact_id: url.searchParams.get('userid') || '', send_time: Math.floor(Date.now() / 1000) };
  }
  if (typeof to !== 'string' || to === '') return fail(res, 400, 'missing recipient');
  push(to, JSON.stringify({ data, result: { code: CODES[data.msg_type] || CODES.text, message: 'common' } }));
  return answer(res, 200, OK);
}

const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://peer');
  if (url.pathname === '/healthz') return answer(res, 200, 'ok');
  if (!SEND_PATHS.has(url.pathname)) return fail(res, 404, 'not found');
  if (req.method !== 'POST') return fail(res, 405, 'POST only');
  const chunks = [];
  let size = 0;
  req.on('data', (chunk) => {
    size += chunk.length;
    if (size > BODY_MAX) {
      fail(res, 413, 'body too large');
      req.destroy();
    } else {
      chunks.push(chunk);
    }
  });
  req.on('end', () => send(res, url, Buffer.concat(chunks).toString('utf8')));
  return undefined;
});

const wss = new WebSocketServer({
  noServer: true,
  // Select the first sub-protocol offered: browsers drop a connection that asked for one
  // and got none.
  handleProtocols: (protocols) => protocols.values().next().value || false,
});

server.on('upgrade', (req, socket, head) => {
  const url = new URL(req.url, 'http://peer');
  const user = url.searchParams.get('userid') || url.searchParams.get('userId');
  if (!WS_PATHS.has(url.pathname) || !user) {
    socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n');
    return;
  }
  wss.handleUpgrade(req, socket, head, (ws) => {
    let sockets = live.get(user);
    if (!sockets) live.set(user, (sockets = new Set()));
    sockets.add(ws);
    const waiting = cache.get(user);
    if (waiting) {
      cache.delete(user);
      for (const frame of waiting) ws.send(frame);
    }
    const beat = setInterval(() => ws.send(HEARTBEAT), 25000);
    ws.on('error', () => {});
    ws.on('close', () => {
      clearInterval(beat);
      sockets.delete(ws);
      if (sockets.size === 0 && live.get(user) === sockets) live.delete(user);
    });
  });
});

const listen = listenArg();
const colon = listen.lastIndexOf(':');
server.listen(Number(listen.slice(colon + 1)), listen.slice(0, colon));
