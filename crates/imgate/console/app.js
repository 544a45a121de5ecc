// The agent console: conversations on the left, one conversation on the right, a reply
// box at the bottom. Everything live comes through ImgateClient (client.js); history,
// media and the WeChat window come from the gateway's HTTP endpoints.

import { ImgateClient, newId } from './client.js';

const P = '/im_component/wx_official_account';
const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
// A token left in the address bar stays in the history, in bookmarks, in screenshots and
// in what is pasted to a colleague: keep it for this tab only (sessionStorage, so that a
// reload still works) and take it out of the URL at once.
const TOKEN_KEY = 'imgate.token';
const token = params.get('token') || sessionStorage.getItem(TOKEN_KEY) || '';
if (params.has('token')) {
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  params.delete('token');
  const rest = params.toString();
  history.replaceState(history.state, '', `${location.pathname}${rest ? `?${rest}` : ''}${location.hash}`);
}
const userid = params.get('userid') || params.get('userId') || '';

if (!token && !userid) {
  $('login').hidden = false;
  $('login').addEventListener('submit', (e) => {
    e.preventDefault();
    location.search = `?userid=${encodeURIComponent($('login-user').value.trim())}`;
  });
} else {
  start();
}

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') e.className = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) e.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) e.append(c instanceof Node ? c : String(c));
  return e;
}

/** A URL from message data, if it is one a page may follow: http(s) only. Anything else
 *  (javascript:, data:…) is made into neither a link nor a source. */
function safeUrl(u) {
  try {
    const url = new URL(String(u), location.origin);
    if (url.protocol === 'http:' || url.protocol === 'https:') return url.toString();
  } catch { /* not a URL */ }
  return null;
}

/** Text with its links clickable; never HTML. */
function linkify(text) {
  const out = [];
  const re = /https?:\/\/[^\s<>"]+/g;
  let last = 0;
  for (const m of String(text).matchAll(re)) {
    if (m.index > last) out.push(text.slice(last, m.index));
    out.push(el('a', { href: m[0], target: '_blank', rel: 'noopener noreferrer' }, m[0]));
    last = m.index + m[0].length;
  }
  if (last < text.length) out.push(text.slice(last));
  return out;
}

function clock(unix) {
  if (!unix) return '';
  const d = new Date(unix * 1000);
  const today = new Date().toDateString() === d.toDateString();
  return today ? d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' }) : d.toLocaleDateString();
}

function duration(secs) {
  if (secs <= 0) return '0 min';
  const h = Math.floor(secs / 3600);
  const m = Math.floor((secs % 3600) / 60);
  return h ? `${h} h ${m} min` : `${Math.max(m, 1)} min`;
}

/** Token mode: `?token_url=/path` names where a fresh token comes from (an auth proxy's
 *  endpoint answering the JWT as text), asked on every reconnect, as when the token expires.
 *  Same origin only, so a link cannot send the page's cookies elsewhere. */
function tokenSource() {
  const raw = params.get('token_url');
  if (!raw) return null;
  let u;
  try {
    u = new URL(raw, location.origin);
  } catch {
    return null;
  }
  if (u.origin !== location.origin) return null;
  return async () => {
    const r = await fetch(u, { credentials: 'same-origin', cache: 'no-store' });
    if (!r.ok) throw new Error(`${u.pathname}: ${r.status}`);
    return (await r.text()).trim();
  };
}

function start() {
  const client = new ImgateClient({ userid, token, getToken: tokenSource() });
  const conversations = new Map(); // contact → conversation
  let current = null;
  let unseen = 0;
  let sound = false;

  $('app').hidden = false;
  $('me').textContent = client.userid;
  document.title = `${client.userid} · imgate`;

  const conv = (contact) => {
    let c = conversations.get(contact);
    if (!c) {
      c = { contact, company: '', wechat: null, window: null, messages: new Map(), last: null, unread: 0, before: undefined, loaded: false };
      conversations.set(contact, c);
    }
    return c;
  };

  // --- frames into conversations -------------------------------------------------------
  function preview(d) {
    const m = d.msg || {};
    switch (d.msg_type) {
      case 'text': return m.content || '';
      case 'image': return '[image]';
      case 'voice': return m.recognition ? `[voice] ${m.recognition}` : '[voice]';
      case 'video': case 'shortvideo': return '[video]';
      case 'location': return `[location] ${m.label || ''}`;
      case 'link': return `[link] ${m.title || ''}`;
      case 'event': return `[${m.event || 'event'}]`;
      case 'system': return '[system]';
      default: return m.content || `[${d.msg_type}]`;
    }
  }

  function add(frame, { live = false } = {}) {
    const d = frame.data || {};
    const code = Number(frame.result?.code);
    if (code === 103) return status(frame);
    const contact = d.contact_id || '';
    const c = conv(contact);
    if (d.company_id) c.company = d.company_id;
    if (d.window) c.window = d.window;
    const out = d.direction === 'out';
    const known = c.messages.get(d.id);
    const msg = known || { id: d.id, out };
    Object.assign(msg, { seq: d.seq || msg.seq, data: d, code });
    if (!known) {
      msg.state = out ? (d.status === 'sending' ? 'sending' : 'sent') : undefined;
      c.messages.set(d.id, msg);
    } else if (out && msg.state === 'sending' && d.status !== 'sending') {
      msg.state = 'sent';
    } else if (out && msg.state === 'failed' && msg.lost) {
      // It was stored after all: the copy (or the status frame to come) tells the outcome.
      msg.state = d.status === 'sending' ? 'sending' : 'sent';
      msg.error = '';
      msg.lost = false;
    }
    if (!c.last || (msg.seq || Infinity) >= (c.last.seq || 0)) c.last = msg;
    if (live && !out && !known) {
      if (contact !== current || document.hidden) {
        c.unread += 1;
        if (document.hidden) notify(c, d);
      }
    }
    renderList();
    if (contact === current) renderMessage(c, msg);
  }

  function status(frame) {
    const d = frame.data;
    const c = conv(d.contact_id);
    if (d.window) c.window = d.window;
    const m = c.messages.get(d.msg?.ref);
    if (m) {
      m.state = d.msg.status === 'sent' ? 'sent' : 'failed';
      m.error = d.msg.reason || '';
      if (d.contact_id === current) renderMessage(c, m);
    }
    if (d.contact_id === current) renderWindow(c);
  }

  function notify(c, d) {
    unseen += 1;
    document.title = `(${unseen}) ${client.userid} · imgate`;
    if (sound) beep();
    if (window.Notification && Notification.permission === 'granted') {
      try { new Notification(c.contact, { body: preview(d), tag: c.contact }); } catch { /* not allowed here */ }
    }
  }

  let audio;
  function beep() {
    try {
      audio ||= new AudioContext();
      const o = audio.createOscillator();
      const g = audio.createGain();
      o.frequency.value = 880;
      g.gain.value = 0.05;
      o.connect(g).connect(audio.destination);
      o.start();
      o.stop(audio.currentTime + 0.12);
    } catch { /* no audio */ }
  }

  document.addEventListener('visibilitychange', () => {
    if (!document.hidden) {
      unseen = 0;
      document.title = `${client.userid} · imgate`;
      if (current) {
        conv(current).unread = 0;
        renderList();
      }
    }
  });

  $('sound').addEventListener('click', () => {
    sound = !sound;
    $('sound').querySelector('.sr').textContent = sound ? 'sound on' : 'sound off';
    $('sound').classList.toggle('on', sound);
    $('sound').setAttribute('aria-pressed', String(sound));
    if (sound && window.Notification && Notification.permission === 'default') Notification.requestPermission().catch(() => {});
  });

  // --- the list --------------------------------------------------------------------------
  function renderList() {
    const list = $('conversations');
    const sorted = [...conversations.values()].filter((c) => c.last).sort((a, b) => (b.last.data.send_time || 0) - (a.last.data.send_time || 0) || (b.last.seq || 0) - (a.last.seq || 0));
    $('empty-list').hidden = sorted.length > 0;
    list.replaceChildren(...sorted.map((c) => el('li', {},
      el('button', { type: 'button', 'aria-current': String(c.contact === current), 'data-contact': c.contact, onclick: () => open(c.contact) },
        el('span', { class: 'name' }, c.contact || '(unknown)'),
        el('span', { class: 'time' }, clock(c.last.data.send_time)),
        el('span', { class: 'preview' }, (c.last.out ? `${byline(c.last.data)}: ` : '') + preview(c.last.data)),
        c.unread ? el('span', { class: 'badge', 'aria-label': `${c.unread} unread` }, String(c.unread)) : el('span'),
        c.company || c.wechat ? el('span', { class: 'account' }, [c.wechat ? 'WeChat' : '', c.company].filter(Boolean).join(' · ')) : null))));
  }

  // --- one conversation --------------------------------------------------------------------
  async function open(contact) {
    current = contact;
    const c = conv(contact);
    c.unread = 0;
    document.body.classList.add('show-conv');
    $('contact-name').textContent = contact;
    $('contact-meta').textContent = c.company ? `company ${c.company}` : '';
    $('composer').hidden = false;
    $('messages').replaceChildren();
    renderList();
    renderWindow(c);
    if (!c.loaded) {
      c.loaded = true;
      await loadOlder(c);
    }
    renderAll(c);
    scrollDown();
    loadContact(c);
    $('text').focus();
  }

  async function loadContact(c) {
    try {
      const r = await fetch(client.url(`${P}/contact`, { contact_id: c.contact }), { headers: client.headers() });
      const j = await r.json();
      const w = j.data?.wechat;
      if (w) {
        c.wechat = w;
        if (w.company_id) c.company = w.company_id;
        if (w.window) c.window = w.window;
        if (c.contact === current) {
          $('contact-meta').textContent = [`WeChat ${w.original_id}`, c.company && `company ${c.company}`].filter(Boolean).join(' · ');
          renderWindow(c);
        }
        renderList();
      }
    } catch { /* shown as a plain conversation */ }
  }

  async function loadOlder(c) {
    if (c.before === null) return;
    const r = await fetch(client.url(`${P}/history`, { contact_id: c.contact, limit: 50, before: c.before }), { headers: client.headers() });
    if (!r.ok) return;
    const j = await r.json();
    for (const f of j.data.messages) add(f);
    c.before = j.data.next_before ?? null;
  }

  function renderAll(c) {
    const box = $('messages');
    const msgs = [...c.messages.values()].sort((a, b) => (a.seq || Infinity) - (b.seq || Infinity));
    box.replaceChildren(...(c.before ? [el('p', { class: 'older' }, 'Scroll up for older messages')] : []), ...msgs.map((m) => bubble(c, m)));
  }

  function renderMessage(c, m) {
    const box = $('messages');
    const node = bubble(c, m);
    const old = box.querySelector(`[data-id="${CSS.escape(m.id)}"]`);
    if (old) {
      old.replaceWith(node);
      return;
    }
    const stick = box.scrollHeight - box.scrollTop - box.clientHeight < 80;
    // In seq order: before the first message with a higher seq.
    const after = [...box.querySelectorAll('[data-seq]')].find((n) => Number(n.dataset.seq) > (m.seq || Infinity));
    if (after) box.insertBefore(node, after);
    else box.append(node);
    if (stick || m.out) scrollDown();
  }

  function scrollDown() {
    const box = $('messages');
    box.scrollTop = box.scrollHeight;
  }

  $('messages').addEventListener('scroll', async () => {
    const box = $('messages');
    if (box.scrollTop > 40 || !current) return;
    const c = conv(current);
    if (!c.before || c.loadingOlder) return;
    c.loadingOlder = true;
    const height = box.scrollHeight;
    await loadOlder(c);
    renderAll(c);
    box.scrollTop = box.scrollHeight - height;
    c.loadingOlder = false;
  });

  function bubble(c, m) {
    const d = m.data;
    const attrs = { 'data-id': m.id, 'data-seq': m.seq || undefined };
    if (d.msg_type === 'event' || d.msg_type === 'system') {
      return el('p', { class: 'notice', ...attrs }, notice(d), ' · ', clock(d.send_time));
    }
    const state = m.out ? stateLine(c, m) : null;
    const colleague = m.out && d.name && d.name !== client.userid ? `${d.name} · ` : '';
    return el('div', { class: `msg ${m.out ? 'out' : 'in'}`, ...attrs },
      el('div', { class: 'bubble' }, body(d)),
      el('span', { class: 'when' }, colleague, clock(d.send_time), state ? ' · ' : '', state));
  }

  /** Who wrote an outgoing message: you, or a colleague on the same account. */
  function byline(d) {
    return d.name && d.name !== client.userid ? d.name : 'You';
  }

  function stateLine(c, m) {
    if (m.state === 'sending') return el('span', { class: 'sending' }, 'sending…');
    if (m.state === 'failed') {
      return el('span', { class: 'failed' }, `failed: ${m.error || 'not delivered'}`,
        m.retried ? null : el('button', { type: 'button', onclick: () => retry(c, m) }, 'Retry'));
    }
    return el('span', {}, 'sent');
  }

  function notice(d) {
    const m = d.msg || {};
    if (d.msg_type === 'system') return `System: ${m.content || m.text || JSON.stringify(m)}`;
    switch (m.event) {
      case 'subscribe': return m.event_key ? `followed the account (scene ${String(m.event_key).replace(/^qrscene_/, '')})` : 'followed the account';
      case 'unsubscribe': return 'unfollowed the account';
      case 'CLICK': return `clicked the menu “${m.event_key || ''}”`;
      case 'VIEW': return `opened a menu link ${m.event_key || ''}`;
      case 'SCAN': return `scanned QR code ${m.event_key || ''}`;
      case 'LOCATION': return `shared location ${m.latitude}, ${m.longitude}`;
      default: return `event ${m.event || ''} ${JSON.stringify(m)}`;
    }
  }

  function body(d) {
    const m = d.msg || {};
    switch (d.msg_type) {
      case 'text': return linkify(m.content || '');
      case 'image': return media(m, (src) => el('img', { class: 'thumb', src, alt: 'image', tabindex: 0, onclick: () => zoom(src), onkeydown: (e) => e.key === 'Enter' && zoom(src) }));
      case 'voice': return [media(m, (src, type) => (type && document.createElement('audio').canPlayType(type) ? el('audio', { controls: true, src }) : el('a', { href: src, download: '', rel: 'noopener' }, 'voice message (download)'))),
        m.recognition ? el('div', {}, `“${m.recognition}”`) : null];
      case 'video': case 'shortvideo': return media(m, (src) => el('video', { controls: true, src, preload: 'metadata' }));
      case 'location': return [el('div', {}, `📍 ${m.label || 'location'}`), el('div', { class: 'when' }, `${m.latitude}, ${m.longitude}`)];
      case 'link': {
        const href = safeUrl(m.url);
        const card = [el('strong', {}, m.title || m.url || 'link'), el('span', {}, m.description || '')];
        return href ? el('a', { class: 'card', href, target: '_blank', rel: 'noopener noreferrer' }, ...card) : el('span', { class: 'card' }, ...card);
      }
      default: return [el('div', { class: 'when' }, d.msg_type), el('dl', {}, ...Object.entries(m).flatMap(([k, v]) => [el('dt', {}, k), el('dd', {}, typeof v === 'string' ? v : JSON.stringify(v))]))];
    }
  }

  /** Media that imgate may still be downloading from WeChat: shown once it is there.
   *  Only this gateway's own media is loaded, from the short-lived signed URL its status
   *  answer carries (no token in it). Anything else a message names (another host's
   *  picture: a tracking pixel) is a link the agent may choose to open, never a request. */
  function media(m, make) {
    const path = String(m.media_path || '');
    const id = path.startsWith(`${P}/media/`) ? path.slice(`${P}/media/`.length) : '';
    if (!/^[A-Za-z0-9]{1,64}$/.test(id)) {
      const url = path && safeUrl(path);
      return url
        ? el('a', { href: url, target: '_blank', rel: 'noopener noreferrer', class: 'external' }, 'external media (not loaded)')
        : el('span', { class: 'when' }, '(media not available)');
    }
    const holder = el('span', { class: 'when' }, 'loading media…');
    const status = new URL(`${client.base}${P}/media/${id}/status`);
    if (!client.token) status.searchParams.set('userid', client.userid);
    let tries = 0;
    const poll = async () => {
      try {
        const r = await fetch(status, { headers: client.headers() });
        const s = (await r.json()).data || {};
        if (s.status === 'ready' && s.url) return holder.replaceWith(make(new URL(s.url, client.base).toString(), s.content_type));
        if (s.status === 'failed') return (holder.textContent = `media unavailable: ${s.error}`);
        if (s.status === 'ready') return (holder.textContent = '(media not available)');
      } catch { /* try again */ }
      if (++tries < 60) setTimeout(poll, Math.min(5000, 300 * tries));
    };
    poll();
    return holder;
  }

  function zoom(src) {
    const lb = $('lightbox');
    lb.querySelector('img').src = src;
    lb.hidden = false;
    lb.tabIndex = -1;
    lb.focus();
  }
  $('lightbox').addEventListener('click', () => ($('lightbox').hidden = true));
  addEventListener('keydown', (e) => {
    if (e.key !== 'Escape') return;
    if (!$('lightbox').hidden) $('lightbox').hidden = true;
    else if (document.body.classList.contains('show-conv')) back();
  });

  function back() {
    document.body.classList.remove('show-conv');
    current = null;
    renderList();
  }
  $('back').addEventListener('click', back);

  // --- the WeChat window ----------------------------------------------------------------------
  function renderWindow(c) {
    const w = c.window;
    const p = $('window');
    const closed = $('closed');
    if (!w || c.contact !== current) {
      p.hidden = true;
      closed.hidden = true;
      setComposer(true);
      return;
    }
    const left = w.closes_at - Date.now() / 1000;
    const open = w.open && left > 0 && w.remaining > 0;
    p.hidden = false;
    p.className = open ? 'window' : 'window closed';
    p.textContent = open ? `Reply window: ${duration(left)} left · ${w.remaining} of ${w.quota} messages left` : 'Reply window closed';
    closed.hidden = open;
    closed.textContent = open ? '' : left <= 0
      ? 'WeChat lets you reply only within 48 hours of the follower’s last message. You can write again when they do.'
      : `The ${w.quota} replies this window allows are used up. You can write again when the follower does.`;
    setComposer(open);
  }
  setInterval(() => current && renderWindow(conv(current)), 30000);

  function setComposer(on) {
    for (const id of ['text', 'send', 'file']) $(id).disabled = !on;
  }

  // --- sending --------------------------------------------------------------------------------
  async function send(c, msg_type, msg) {
    const id = newId();
    const m = { id, out: true, state: 'sending', data: { id, msg_type, msg, contact_id: c.contact, send_time: Math.floor(Date.now() / 1000), direction: 'out' } };
    c.messages.set(id, m);
    c.last = m;
    renderMessage(c, m);
    renderList();
    try {
      await client.send({ contact_id: c.contact, msg_type, msg, id });
      if (m.state === 'sending') m.state = 'sent';
    } catch (e) {
      m.state = 'failed';
      m.error = e.message;
      m.lost = Boolean(e.lost);
      const w = e.frame?.data?.errcode;
      if (w === 45015 || w === 45047) loadContact(c);
    }
    if (c.contact === current) renderMessage(c, m);
    renderList();
  }

  function retry(c, m) {
    if (m.lost) {
      // The answer was lost, perhaps not the message: the same id lets the gateway say
      // whether it has it already, so nothing goes out twice.
      m.state = 'sending';
      m.error = '';
      renderMessage(c, m);
      client.send({ contact_id: c.contact, msg_type: m.data.msg_type, msg: m.data.msg, id: m.id })
        .then(() => { if (m.state === 'sending') m.state = 'sent'; })
        .catch((e) => { m.state = 'failed'; m.error = e.message; m.lost = Boolean(e.lost); })
        .finally(() => c.contact === current && renderMessage(c, m));
      return;
    }
    m.retried = true;
    renderMessage(c, m);
    send(c, m.data.msg_type, m.data.msg);
  }

  $('composer').addEventListener('submit', (e) => {
    e.preventDefault();
    const text = $('text').value;
    if (!text.trim() || !current) return;
    $('text').value = '';
    send(conv(current), 'text', { content: text });
  });
  $('text').addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      $('composer').requestSubmit();
    }
  });
  $('file').addEventListener('change', async () => {
    const file = $('file').files[0];
    $('file').value = '';
    if (!file || !current) return;
    const c = conv(current);
    try {
      const r = await fetch(client.url(`${P}/media`), { method: 'POST', body: file, headers: { ...client.headers(), 'content-type': file.type || 'application/octet-stream' } });
      const j = await r.json();
      if (!r.ok) throw new Error(j.result?.message || `upload failed (${r.status})`);
      send(c, 'image', { media_path: j.data.media_path });
    } catch (e) {
      const id = newId();
      const m = { id, out: true, state: 'failed', error: e.message, retried: true, data: { id, msg_type: 'text', msg: { content: `[image ${file.name}]` }, contact_id: c.contact, send_time: Math.floor(Date.now() / 1000) } };
      c.messages.set(id, m);
      renderMessage(c, m);
    }
  });

  // --- live -----------------------------------------------------------------------------------
  client.addEventListener('state', (e) => {
    const s = $('state');
    s.textContent = e.detail;
    s.className = `state ${e.detail}`;
  });
  client.addEventListener('message', (e) => add(e.detail, { live: true }));
  client.addEventListener('status', (e) => add(e.detail, { live: true }));

  // History first (the list), then live from where it ends.
  (async () => {
    try {
      const r = await fetch(client.url(`${P}/history`, { limit: 200 }), { headers: client.headers() });
      if (r.ok) {
        const j = await r.json();
        for (const f of j.data.messages) {
          add(f);
          client.since = Math.max(client.since, Number(f.data.seq || 0));
        }
      }
    } catch { /* the socket will bring what is there */ }
    renderList();
    client.connect();
  })();
  window.imgate = { client, conversations };
}
