// The agent console: conversations on the left, one conversation on the right, a reply
// box at the bottom. Everything live comes through ImgateClient (client.js); history,
// media and the WeChat window come from the gateway's HTTP endpoints.
//
// Modules: state.js (what is open, per-conversation state), conversations.js (the list's
// data source), list.js (the list's rows), thread.js (one conversation's view),
// composer.js (the reply box), messages.js (a message's look), i18n.js (every string).

import { ImgateClient } from './client.js';
import { Composer } from './composer.js';
import { Conversations } from './conversations.js';
import * as i18n from './i18n.js';
import { ListView } from './list.js';
import { preview } from './messages.js';
import { state, thread } from './state.js';
import { ThreadView } from './thread.js';
import { $, clock, data, el } from './util.js';

const { t } = i18n;
const P = '/im_component/wx_official_account';
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

i18n.setLang(i18n.detect());
i18n.applyStatic(document);
$('lang').value = i18n.getLang();

if (!token && !userid) {
  document.title = t('login.title');
  $('login').hidden = false;
  $('login').addEventListener('submit', (e) => {
    e.preventDefault();
    location.search = `?userid=${encodeURIComponent($('login-user').value.trim())}`;
  });
} else {
  start();
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

/** Phone width: the list and the conversation take turns. */
const narrow = () => matchMedia('(max-width: 700px)').matches;

function start() {
  const client = new ImgateClient({ userid, token, getToken: tokenSource() });
  state.userid = client.userid;
  const source = new Conversations(client);
  /** The gateway has the team inbox (its conversation index answered). */
  let inboxShown = false;
  let agents = [];   // [{agent, status}] of the agent's accounts (GET P/presence, frames 106)
  const list = new ListView(source, { onOpen: (c) => open(c), userid: client.userid });
  const view = new ThreadView(client, {
    onRetry: (th, m) => composer.retry(th, m),
    onZoom: (src) => zoom(src),
    onWindow: (on) => composer.setOpen(on),
  });
  const composer = new Composer(client, { view, list: source });
  composer.onRefused = (th) => loadContact(th);

  $('app').hidden = false;
  $('me').textContent = client.userid;
  const title = () => (document.title = `${state.unseen ? `(${state.unseen}) ` : ''}${t('doc.title', { user: client.userid })}`);
  title();
  $('contact-name').textContent = '';
  $('contact-meta').replaceChildren(t('pick'));

  // --- frames -------------------------------------------------------------------------------
  function frame(f, { live = false } = {}) {
    const d = f.data || {};
    const contact = d.contact_id || '';
    const viewing = contact === state.current && !document.hidden;
    const code = Number(f.result?.code);
    if (live && (code === 102 || code >= 1000) && d.direction !== 'out' && !viewing && !thread(contact).messages.has(d.id)) notify(contact, d);
    view.ingest(f, { live });
    // At phone width with the list shown, the open conversation is not in view.
    const inView = contact === state.current && (!narrow() || document.body.classList.contains('show-conv'));
    source.ingest(f, { live, open: inView, hidden: document.hidden });
    if (code === 104 && d.msg?.action === 'remark' && typeof d.msg.name === 'string') renamed(contact, d.msg.name);
  }

  function notify(contact, d) {
    if (!document.hidden) return;
    state.unseen += 1;
    title();
    if (state.sound) beep();
    if (window.Notification && Notification.permission === 'granted') {
      // A follower's name (their remark) where agents gave one.
      const title = (d.window !== undefined && d.name) || source.get(contact)?.name || contact;
      try { new Notification(title, { body: preview(d), tag: contact }); } catch { /* not allowed here */ }
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
    if (document.hidden) return;
    state.unseen = 0;
    title();
    if (state.current !== null) source.markRead(state.current);
  });

  function toggleSound() {
    state.sound = !state.sound;
    $('sound').querySelector('.sr').dataset.i18n = state.sound ? 'sound.on' : 'sound.off';
    $('sound').querySelector('.sr').textContent = t(state.sound ? 'sound.on' : 'sound.off');
    $('sound').classList.toggle('on', state.sound);
    $('sound').setAttribute('aria-pressed', String(state.sound));
    if (state.sound && window.Notification && Notification.permission === 'default') Notification.requestPermission().catch(() => {});
  }
  $('sound').addEventListener('click', toggleSound);

  // --- one conversation ------------------------------------------------------------------------
  async function open(contact) {
    if (state.current !== null) thread(state.current).draft = $('text').value;
    state.current = contact;
    const th = thread(contact);
    source.markRead(contact);
    list.select(contact);
    $('act-error').hidden = true;
    $('compose-error').hidden = true;
    document.body.classList.add('show-conv');
    $('remark-form').hidden = true;
    renderName(th);
    renderMeta(th);
    renderProfile(th);
    $('composer').hidden = false;
    view.show(th);
    composer.show(th);
    $('text').focus({ preventScroll: true });
    loadContact(th);
    renderActions();
    await view.loadNewest(th);
  }

  /** Another agent (or this one elsewhere) named the follower: the open header and
   *  profile follow (the list follows its own frame). */
  function renamed(contact, name) {
    const th = thread(contact);
    if (th.profile) th.profile = { ...th.profile, remark: name };
    if (contact === state.current) renderName(th);
  }

  /** The header's name: the follower's remark, else their id (kept in the title). */
  function renderName(th) {
    const name = source.get(th.contact)?.name || th.profile?.remark || '';
    $('contact-name').textContent = name || th.contact;
    $('contact-name').title = name ? th.contact : '';
  }

  /** A WeChat follower's profile: unionid, subscription, scene, tags, language; and the
   *  agents' remark, which names them. */
  function renderProfile(th) {
    const p = th.profile;
    $('profile').hidden = !p;
    $('rename').hidden = !p;
    if (!p) return;
    const parts = [];
    // UnionID is WeChat's name for it in every language.
    if (p.unionid) parts.push([el('abbr', { translate: 'no' }, 'UnionID'), ' ', data(p.unionid)]);
    parts.push([t(p.subscribed ? 'profile.subscribed' : 'profile.unsubscribed'), ...(p.subscribed && p.subscribe_time ? [' ', clock(p.subscribe_time)] : [])]);
    if (p.subscribe_scene) parts.push([t('profile.scene'), ' ', data(p.subscribe_scene)]);
    if (p.tags?.length) parts.push([t('profile.tags'), ' ', data(p.tags.join(', '))]);
    if (p.language) parts.push([t('profile.language'), ' ', data(p.language)]);
    $('profile-text').replaceChildren(...parts.flatMap((x, i) => (i ? [' · ', ...x] : x)));
  }

  function editRemark() {
    const th = state.current !== null && thread(state.current);
    if (!th?.profile) return;
    $('remark-input').value = th.profile.remark || '';
    $('remark-form').hidden = false;
    $('remark-input').focus();
  }

  async function saveRemark(e) {
    e.preventDefault();
    const contact = state.current;
    if (contact === null) return;
    const th = thread(contact);
    const remark = $('remark-input').value.trim();
    $('act-error').hidden = true;
    try {
      const r = await fetch(client.url(`${P}/contacts/${encodeURIComponent(contact)}/remark`), {
        method: 'PUT',
        headers: { ...client.headers(), 'content-type': 'application/json' },
        body: JSON.stringify({ remark }),
      });
      const j = await r.json().catch(() => ({}));
      if (!r.ok) throw new Error(j.result?.message || String(r.status));
      th.profile = j.data.profile;
      source.setName(contact, th.profile.remark);
      if (contact !== state.current) return;
      $('remark-form').hidden = true;
      renderName(th);
      renderProfile(th);
      $('rename').focus();
    } catch (err) {
      if (contact !== state.current) return;
      $('act-error').hidden = false;
      $('act-error').replaceChildren(t('remark.failed'), data(err.message));
    }
  }
  $('rename').addEventListener('click', editRemark);
  $('remark-form').addEventListener('submit', saveRemark);
  $('remark-cancel').addEventListener('click', () => {
    $('remark-form').hidden = true;
    $('rename').focus();
  });
  $('remark-input').addEventListener('keydown', (e) => {
    if (e.key !== 'Escape') return;
    e.stopPropagation();
    $('remark-form').hidden = true;
    $('rename').focus();
  });
  // A name learnt from a frame or the index shows in the header too.
  source.addEventListener('change', (e) => {
    if (e.detail.contact === state.current) renderName(thread(state.current));
  });

  function renderMeta(th) {
    const s = source.get(th.contact);
    const parts = [];
    if (th.wechat) parts.push([t('meta.wechat'), ' ', data(th.wechat.original_id)]);
    const company = th.company || s?.company;
    if (company) parts.push([t('meta.company'), ' ', data(company)]);
    $('contact-meta').replaceChildren(...parts.flatMap((p, i) => (i ? [' · ', ...p] : p)));
  }

  /** The contact lookup: the account and the window now (the newest word on it). */
  async function loadContact(th) {
    const version = th.windowVersion;
    try {
      const r = await fetch(client.url(`${P}/contact`, { contact_id: th.contact }), { headers: client.headers() });
      const j = await r.json();
      const w = j.data?.wechat;
      if (!w) return;
      th.wechat = w;
      if (w.company_id) th.company = w.company_id;
      source.setAccount(th.contact, { company: th.company, wechat: true });
      if (w.profile) {
        th.profile = w.profile;
        source.setName(th.contact, w.profile.remark);
      }
      // A live frame that came meanwhile is newer than this answer.
      if (w.window && th.windowVersion === version) view.setWindow(th, w.window);
      if (th.contact === state.current) {
        renderMeta(th);
        renderName(th);
        renderProfile(th);
        composer.count();
      }
    } catch { /* shown as a plain conversation */ }
  }

  function back() {
    document.body.classList.remove('show-conv');
    list.focus();
  }
  $('back').addEventListener('click', back);

  // --- the image viewer and the help: dialogs that keep focus and give it back ------------------
  let returnTo = null;
  const FOCUSABLE = 'select, input, textarea, button';
  const DIALOGS = ['lightbox', 'help', 'transfer', 'canned'];
  const anyDialog = () => DIALOGS.some((id) => !$(id).hidden);
  function dialog(id, show) {
    const d = $(id);
    if (show) {
      returnTo = document.activeElement;
      d.hidden = false;
      d.querySelector(FOCUSABLE).focus();
    } else if (!d.hidden) {
      d.hidden = true;
      if (returnTo?.isConnected) returnTo.focus();
      returnTo = null;
    }
  }
  function zoom(src) {
    $('lightbox').querySelector('img').src = src;
    $('lightbox').querySelector('img').alt = document.activeElement?.alt || '';
    dialog('lightbox', true);
  }
  $('lightbox').addEventListener('click', (e) => e.target !== $('lightbox').querySelector('img') && dialog('lightbox', false));
  $('help-close').addEventListener('click', () => dialog('help', false));
  $('help-button').addEventListener('click', () => dialog('help', true));
  $('help').addEventListener('click', (e) => e.target === $('help') && dialog('help', false));
  for (const id of ['transfer', 'canned']) $(id).addEventListener('click', (e) => e.target === $(id) && dialog(id, false));
  for (const id of DIALOGS) {
    $(id).addEventListener('keydown', (e) => {
      if (e.key !== 'Tab') return;
      // Focus stays inside the dialog.
      const f = [...$(id).querySelectorAll(FOCUSABLE)].filter((n) => !n.disabled && n.offsetParent !== null);
      const i = f.indexOf(document.activeElement);
      e.preventDefault();
      f[(i + (e.shiftKey ? f.length - 1 : 1)) % f.length].focus();
    });
  }

  // --- keyboard ----------------------------------------------------------------------------------
  const SHORTCUTS = [
    ['?', 'sc.help'], ['Alt+L', 'sc.list'], ['↑ ↓ Home End', 'sc.listnav'], ['Enter', 'sc.open'],
    ['Alt+↓', 'sc.next'], ['Alt+↑', 'sc.prev'], ['Alt+R', 'sc.reply'], ['Enter', 'sc.send'],
    ['Shift+Enter', 'sc.newline'], ['Alt+U', 'sc.upload'], ['Alt+End', 'sc.newest'], ['Alt+T', 'sc.retry'],
    ['Alt+S', 'sc.sound'], ['Alt+G', 'sc.lang'], ['Esc', 'sc.back'],
  ];
  // The team inbox's, where the gateway has it.
  const INBOX_SHORTCUTS = [
    ['Alt+1 Alt+2 Alt+3 Alt+4', 'sc.views'], ['Alt+F', 'sc.search'], ['Alt+C', 'sc.claim'], ['Alt+X', 'sc.transfer'],
    ['Alt+D', 'sc.resolve'], ['Alt+O', 'sc.reopen'], ['Alt+N', 'sc.note'], ['/', 'sc.canned'], ['Alt+K', 'sc.cannedpanel'],
    ['Alt+A', 'sc.away'],
  ];
  function renderHelp() {
    $('help-keys').replaceChildren(...[...SHORTCUTS, ...(inboxShown ? INBOX_SHORTCUTS : [])].flatMap(([keys, key]) => [
      el('dt', {}, ...keys.split(' ').flatMap((k, i) => [i ? ' ' : null, el('kbd', { translate: 'no' }, k)])),
      el('dd', {}, t(key)),
    ]));
  }
  renderHelp();

  const typing = (e) => e.target.closest?.('input, textarea, select, [contenteditable]');
  addEventListener('keydown', (e) => {
    if (e.key === 'Escape') {
      if (!$('lightbox').hidden) return dialog('lightbox', false);
      for (const id of DIALOGS) if (!$(id).hidden) return dialog(id, false);
      // Only at phone width is there a list to go back to; on a desktop the conversation
      // stays open (and a reply typed next is sent).
      if (narrow() && document.body.classList.contains('show-conv')) back();
      return;
    }
    if (anyDialog()) return;
    if (e.key === '?' && !typing(e) && !e.altKey && !e.ctrlKey && !e.metaKey) {
      e.preventDefault();
      return dialog('help', true);
    }
    if (!e.altKey || e.ctrlKey || e.metaKey) return;
    const act = {
      ArrowDown: () => { const c = list.neighbour(1); if (c !== null) open(c); },
      ArrowUp: () => { const c = list.neighbour(-1); if (c !== null) open(c); },
      KeyL: () => { if (narrow()) back(); else list.focus(); },
      KeyR: () => state.current !== null && $('text').focus(),
      KeyU: () => state.current !== null && !$('file').disabled && $('file').click(),
      End: () => view.toBottom(),
      KeyT: () => composer.retryLatest(),
      KeyS: () => toggleSound(),
      KeyG: () => switchLang(i18n.getLang() === 'en' ? 'zh-CN' : 'en'),
      ...(inboxShown ? {
        Digit1: () => setView('waiting'),
        Digit2: () => setView('mine'),
        Digit3: () => setView('unassigned'),
        Digit4: () => setView('all'),
        KeyF: () => { if (narrow()) back(); $('search').focus(); },
        KeyC: () => doAct('claim'),
        KeyX: () => doAct('transfer'),
        KeyD: () => doAct('resolve'),
        KeyO: () => doAct('reopen'),
        KeyN: () => { if (state.current !== null) { composer.setNote(!composer.note); $('text').focus(); } },
        KeyK: () => dialog('canned', true),
        KeyA: () => toggleAway(),
      } : {}),
    }[e.key.startsWith('Arrow') || e.key === 'End' ? e.key : e.code];
    if (act) {
      e.preventDefault();
      act();
    }
  });

  // --- language ------------------------------------------------------------------------------------
  function switchLang(l) {
    i18n.setLang(l, { keep: true });
    $('lang').value = i18n.getLang();
    i18n.applyStatic(document);
    title();
    renderHelp();
    list.refresh();
    setState(client.state);
    if (inboxShown) {
      renderPresence();
      renderCanned();
      composer.setNote(composer.note);
    }
    if (state.current !== null) {
      const th = thread(state.current);
      renderMeta(th);
      renderProfile(th);
      view.refresh(th);
      view.renderWindow(th);
      composer.count();
      renderActions();
    } else {
      $('contact-meta').replaceChildren(t('pick'));
    }
  }
  $('lang').addEventListener('change', () => switchLang($('lang').value));

  // --- live ------------------------------------------------------------------------------------------
  function setState(s) {
    $('state').textContent = t(`state.${s}`);
    $('state').className = `state ${s}`;
  }
  setState('offline');
  client.addEventListener('state', (e) => setState(e.detail));
  client.addEventListener('message', (e) => frame(e.detail, { live: true }));
  client.addEventListener('status', (e) => frame(e.detail, { live: true }));
  client.addEventListener('erased', (e) => erased(e.detail.data?.contact_id || ''));

  /** A person was erased (frame 107, docs/operations.md): their messages, draft and row
   *  go; an open conversation with them closes. */
  function erased(contact) {
    source.forget(contact);
    state.threads.delete(contact);
    if (state.current !== contact) return;
    state.current = null;
    view.clear();
    $('composer').hidden = true;
    $('actions').hidden = true;
    $('assignee').hidden = true;
    $('contact-name').textContent = '';
    $('contact-meta').replaceChildren(t('pick'));
    document.body.classList.remove('show-conv');
  }

  // The list first, then live from where it ends.
  (async () => {
    try {
      const frames = await source.load();
      for (const f of frames) {
        // History is oldest first: an erasure drops what came before it (source.load did
        // the same for the list), and what the person wrote after it shows.
        if (Number(f.result?.code) === 107) erased(f.data?.contact_id || '');
        else view.ingest(f);
        client.since = Math.max(client.since, Number(f.data.seq || 0));
      }
    } catch { /* the socket will bring what is there */ }
    $('empty-list').hidden = source.size > 0;
    if (source.server) {
      inbox();
      renderHelp();
    }
    client.connect();
  })();

  // --- the team inbox: views, search, actions, presence, canned replies -----------------------
  // Shown only where the gateway has the conversation index (docs/inbox.md).
  const api = async (path, { method = 'GET', body, params } = {}) => {
    const r = await fetch(client.url(`${P}/${path}`, params), {
      method,
      headers: { ...client.headers(), ...(body ? { 'content-type': 'application/json' } : {}) },
      body: body ? JSON.stringify(body) : undefined,
    });
    const j = await r.json().catch(() => ({}));
    if (!r.ok) throw Object.assign(new Error(j.result?.message || String(r.status)), { status: r.status, data: j.data });
    return j.data;
  };

  function renderCounts() {
    for (const b of $('views').querySelectorAll('button')) {
      const n = source.counts[b.dataset.view];
      b.querySelector('.count').textContent = n === undefined ? '' : String(n);
      b.setAttribute('aria-pressed', String(b.dataset.view === source.view));
    }
  }

  async function setView(v) {
    await source.setView(v);
    renderCounts();
    list.more();
  }

  function inbox() {
    $('views').hidden = false;
    $('inbox-tools').hidden = false;
    $('composer').querySelector('.tools').hidden = false;
    renderCounts();
    source.addEventListener('counts', renderCounts);
    $('views').addEventListener('click', (e) => {
      const b = e.target.closest('button[data-view]');
      if (b) setView(b.dataset.view);
    });
    let searchTimer;
    $('search').addEventListener('input', () => {
      clearTimeout(searchTimer);
      searchTimer = setTimeout(async () => {
        await source.setQuery($('search').value.trim());
        list.more();
      }, 250);
    });
    source.addEventListener('change', (e) => e.detail.contact === state.current && renderActions());
    $('actions').addEventListener('click', (e) => {
      const b = e.target.closest('button[data-act]');
      if (b) doAct(b.dataset.act);
    });
    inboxShown = true;
    loadPresence();
    loadCanned();
    list.more();
  }

  /** claim | resolve | reopen at once; transfer through its dialog. */
  async function doAct(action, body) {
    if (state.current === null || !inboxShown) return;
    if (action === 'transfer' && !body) return openTransfer();
    const contact = state.current;
    $('act-error').hidden = true;
    try {
      await source.act(contact, action, body);
    } catch (err) {
      if (contact !== state.current) return;
      $('act-error').hidden = false;
      const who = err.assignee;
      $('act-error').replaceChildren(...(who ? [t('act.conflict'), data(who)] : [t('act.failed'), data(err.message)]));
      return;
    }
    renderActions();
  }

  /** The open conversation's assignee and state, and the actions that apply to it. */
  function renderActions() {
    if (!inboxShown || state.current === null) return;
    const c = source.get(state.current) || {};
    // Between two gateway users (or a conversation the index does not hold) nobody is
    // assigned: no owner, state or actions to show.
    if (c.direct || c.local || !c.state) {
      $('actions').hidden = true;
      $('assignee').hidden = true;
      return;
    }
    const resolved = c.state === 'resolved';
    $('actions').hidden = false;
    for (const b of $('actions').querySelectorAll('button')) {
      // What the server allows (docs/inbox.md): claim an unassigned one; transfer and
      // resolve one's own (or an unassigned one); reopen any resolved one.
      const free = !c.assignee || c.assignee === client.userid;
      b.hidden = { claim: Boolean(c.assignee), transfer: !free, resolve: resolved || !free, reopen: !resolved }[b.dataset.act];
    }
    $('assignee').hidden = false;
    $('assignee').dataset.assignee = c.assignee || '';
    $('assignee').dataset.state = c.state || '';
    $('assignee').replaceChildren(
      ...(c.assignee ? [t('act.assignee'), data(c.assignee)] : [t('act.nobody')]),
      ' · ', t(resolved ? 'act.resolved' : 'act.open'),
    );
  }

  // The transfer dialog: the account's agents (from presence), an optional note.
  function openTransfer() {
    const sel = $('transfer-to');
    const others = agents.filter((a) => a.agent !== client.userid);
    sel.replaceChildren(...others.map((a) => el('option', { value: a.agent, translate: 'no' }, `${a.agent} · ${t(`presence.${a.status}`)}`)));
    $('transfer-note').value = '';
    dialog('transfer', true);
  }
  $('transfer-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const to = $('transfer-to').value;
    const note = $('transfer-note').value.trim();
    dialog('transfer', false);
    if (to) doAct('transfer', note ? { to, note } : { to });
  });
  $('transfer-cancel').addEventListener('click', () => dialog('transfer', false));

  // Presence: who is online, away or offline; the agent sets itself away or back.
  async function loadPresence() {
    try {
      agents = (await api('presence')).agents || [];
    } catch { agents = []; }
    // A gateway user who is no account's agent: no colleagues, nothing to claim.
    const agent = agents.some((a) => a.agent === client.userid);
    $('presence').hidden = !agent;
    $('views').querySelector('[data-view="unassigned"]').hidden = !agent;
    renderPresence();
  }
  function renderPresence() {
    const me = agents.find((a) => a.agent === client.userid);
    const away = me?.status === 'away';
    $('away').textContent = t(away ? 'presence.back' : 'presence.goaway');
    $('away').setAttribute('aria-pressed', String(away));
    $('agents').replaceChildren(...agents.map((a) => el('li', { 'data-agent': a.agent, 'data-status': a.status },
      el('span', { class: 'dot', 'aria-hidden': 'true' }), el('span', { translate: 'no' }, a.agent), el('span', { class: 'sr' }, ` ${t(`presence.${a.status}`)}`))));
    for (const li of $('agents').children) li.title = t(`presence.${li.dataset.status}`);
  }
  function presence(f) {
    const m = f.data?.msg || {};
    if (!m.agent) return;
    const a = agents.find((x) => x.agent === m.agent);
    if (a) a.status = m.status;
    else agents.push({ agent: m.agent, status: m.status });
    renderPresence();
  }
  async function toggleAway() {
    if (!inboxShown) return;
    const me = agents.find((a) => a.agent === client.userid);
    const status = me?.status === 'away' ? 'online' : 'away';
    try {
      const r = await api('presence', { method: 'PUT', body: { status } });
      presence({ data: { msg: r } });
    } catch { /* shown unchanged */ }
  }
  $('away').addEventListener('click', toggleAway);

  // Canned replies: `/` in the reply box offers them; the panel adds and removes them.
  let canned = [];
  async function loadCanned() {
    try {
      canned = (await api('canned')).canned || [];
    } catch { canned = []; }
    composer.setCanned(canned);
    renderCanned();
  }
  function renderCanned() {
    $('canned-list').replaceChildren(...canned.map((c, i) => el('li', {},
      el('b', { translate: 'no' }, `/${c.shortcut}`), ' ', el('span', { translate: 'no' }, c.text), ' ',
      el('button', { type: 'button', 'data-remove': c.shortcut, 'aria-label': t('canned.remove', { shortcut: c.shortcut }), onclick: () => saveCanned(canned.filter((_, j) => j !== i)) }, '×'))));
  }
  async function saveCanned(next) {
    $('canned-error').hidden = true;
    try {
      canned = (await api('canned', { method: 'PUT', body: { canned: next } })).canned || next;
    } catch (err) {
      $('canned-error').hidden = false;
      $('canned-error').replaceChildren(t('act.failed'), data(err.message));
      return false;
    }
    composer.setCanned(canned);
    renderCanned();
    return true;
  }
  $('canned-add').addEventListener('submit', async (e) => {
    e.preventDefault();
    const shortcut = $('canned-shortcut').value.trim().replace(/^\//, '');
    const text = $('canned-text').value.trim();
    if (!shortcut || !text) return;
    if (await saveCanned([...canned.filter((c) => c.shortcut !== shortcut), { shortcut, text }])) {
      $('canned-shortcut').value = '';
      $('canned-text').value = '';
      $('canned-shortcut').focus();
    }
  });
  $('canned-button').addEventListener('click', () => dialog('canned', true));
  $('canned-close').addEventListener('click', () => dialog('canned', false));

  client.addEventListener('conversation', (e) => frame(e.detail, { live: true }));
  client.addEventListener('note', (e) => frame(e.detail, { live: true }));
  client.addEventListener('presence', (e) => presence(e.detail));
  // Asked before the socket opened, the answer had this agent offline: ask again once on.
  client.addEventListener('state', (e) => e.detail === 'connected' && inboxShown && loadPresence());

  window.imgate = { client, state, conversations: source, list, view, composer, i18n };
}
