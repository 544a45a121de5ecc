// Helpers shared by the end-to-end tests (tests/e2e/*.test.mjs): the real binary, free
// ports, deadlines that fail (never hang), and the seed's XML bodies.

import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const HERE = path.dirname(fileURLToPath(import.meta.url));
export const BIN = path.resolve(process.env.IMGATE_BIN || path.join(HERE, '../../target/debug/imgate'));
export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
/** Every wait's deadline: it only fails a hung test. */
export const WAIT = 30_000;
export const CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'];

/** Ports this process was given already: a port is closed before the next is asked for,
 *  so the system may hand the same one out again, and two servers would want it. */
const given = new Set();

/** A free port on 127.0.0.1, never one given before in this process. */
export async function freePort() {
  for (;;) {
    const port = await new Promise((resolve) => {
      const s = net.createServer().listen(0, '127.0.0.1', () => {
        const { port: p } = s.address();
        s.close(() => resolve(p));
      });
    });
    if (!given.has(port)) {
      given.add(port);
      return port;
    }
  }
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** `f()` until it returns something truthy (errors count as not yet), or fail after `WAIT`. */
export async function until(what, f, wait = WAIT) {
  const end = Date.now() + wait;
  for (;;) {
    const v = await f().catch(() => false);
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

/** A check that fails the test with `msg`, and logs it when it holds. */
export const check = (cond, msg) => {
  if (!cond) throw new Error(msg);
  console.log(`ok - ${msg}`);
};

/** Start the imgate binary in `cwd`; `children` collects it for the cleanup. Its stderr is
 *  kept in `child.log`. */
export function imgate(args, { cwd, env = {}, capture = false, children = [] } = {}) {
  const child = spawn(BIN, args, { cwd, env: { ...process.env, RUST_LOG: 'imgate=warn', ...env }, stdio: ['ignore', capture ? 'pipe' : 'ignore', 'pipe'] });
  child.log = '';
  child.stderr.on('data', (d) => (child.log += d));
  children.push(child);
  return child;
}

/** An HS256 JWT for `sub`, valid for `ttl` seconds. */
export function jwt(secret, sub, ttl = 3600) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const head = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ sub, exp: Math.floor(Date.now() / 1000) + ttl })}`;
  return `${head}.${crypto.createHmac('sha256', secret).update(head).digest('base64url')}`;
}

/** The seed's XML body (seed §3), byte for byte. */
export const SEED_XML = `<xml>
  <ToUserName>1</ToUserName>
  <FromUserName>魏秀兰</FromUserName>
  <CreateTime>1976-04-10 12:21:47</CreateTime>
  <MsgType>enim</MsgType>
  <Content>occaecat ut in fugiat dolor</Content>
  <MsgId>19</MsgId>
  <MsgDataId>27</MsgDataId>
  <Idx>74</Idx>
</xml>`;

/** The seed's shape with another MsgId and content (so it is not a retry of the first). */
export const seedXml = (id, content, createTime = '1976-04-10 12:21:48') => `<xml>
  <ToUserName>1</ToUserName>
  <FromUserName>魏秀兰</FromUserName>
  <CreateTime>${createTime}</CreateTime>
  <MsgType>enim</MsgType>
  <Content>${content}</Content>
  <MsgId>${id}</MsgId>
  <MsgDataId>${id + 8}</MsgDataId>
  <Idx>${id + 55}</Idx>
</xml>`;
