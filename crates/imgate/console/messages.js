// What one message looks like: the list's one-line preview, an event's words, a bubble's
// body (text, media, location, link, the fields of a type the console does not know).

import { t } from './i18n.js';
import { emojify } from './emoji.js';
import { data, el, linkify, safeUrl } from './util.js';

const P = '/im_component/wx_official_account';
/** template_id → title, as the account's list (GET P/templates) names them. */
export const templateTitles = new Map();

/** One line for the list (and notifications). `m` has msg_type and msg. */
export function preview(m) {
  const msg = m.msg || {};
  switch (m.msg_type) {
    case 'text': return emojify(msg.content || '');
    case 'image': return t('preview.image');
    case 'voice': return msg.recognition ? `${t('preview.voice')} ${msg.recognition}` : t('preview.voice');
    case 'video': case 'shortvideo': return t('preview.video');
    case 'location': return t('preview.location', { label: msg.label || '' });
    case 'link': return t('preview.link', { title: msg.title || '' });
    case 'event': return eventWords(msg).map((n) => (typeof n === 'string' ? n : n.textContent)).join('');
    case 'system': return t('preview.system');
    // From the server's list, a row carries only the words it shows, as `content`.
    case 'news': case 'miniprogrampage': return t('preview.link', { title: msg.title || msg.content || '' });
    case 'msgmenu': return msg.head_content || (msg.list || []).map((i) => i?.content).join(' / ') || msg.content || '';
    case 'template': return t('preview.template', { title: templateTitles.get(msg.template_id) || '' });
    default: return msg.content || t('preview.other', { type: m.msg_type });
  }
}

/** An event in words: a list of strings and nodes (its key is data, not translated). */
export function eventWords(m) {
  const words = (key, params = {}) => {
    // Fill the placeholders with nodes, so that ids stay untranslated.
    const parts = t(key, Object.fromEntries(Object.keys(params).map((k) => [k, `\u0000${k}\u0000`]))).split('\u0000');
    return parts.map((p, i) => (i % 2 ? data(params[p]) : p)).filter((p) => p !== '');
  };
  switch (m.event) {
    case 'subscribe': return m.event_key ? words('event.subscribe.scene', { scene: String(m.event_key).replace(/^qrscene_/, '') }) : words('event.subscribe');
    case 'unsubscribe': return words('event.unsubscribe');
    case 'CLICK': return words('event.CLICK', { key: m.event_key || '' });
    case 'VIEW': return words('event.VIEW', { key: m.event_key || '' });
    case 'SCAN': return words('event.SCAN', { key: m.event_key || '' });
    case 'LOCATION': return words('event.LOCATION', { lat: m.latitude ?? '', lng: m.longitude ?? '' });
    case 'scancode_push': case 'scancode_waitmsg': case 'pic_sysphoto': case 'pic_photo_or_album': case 'pic_weixin':
    case 'location_select': case 'TEMPLATESENDJOBFINISH': case 'MASSSENDJOBFINISH':
      return words(`event.${m.event}`);
    case 'view_miniprogram': return words('event.view_miniprogram');
    default: return [...words('event.unknown'), ' ', data(m.event || '')];
  }
}

/** A notice line's content (events and system messages). */
export function notice(d) {
  const m = d.msg || {};
  if (d.msg_type === 'system') return [t('system'), data(m.content || m.text || JSON.stringify(m))];
  return eventWords(m);
}

/** A bubble's content. `media(m, make)` resolves a gateway media path (see thread.js). */
export function body(d, { media, zoom, alt, local }) {
  const m = d.msg || {};
  const image = (src) => el('img', { class: 'thumb', src, alt, tabindex: 0, onclick: () => zoom(src), onkeydown: (e) => {
    if (e.key !== 'Enter') return;
    // Not also a click on the viewer's close button, which has focus by then.
    e.preventDefault();
    zoom(src);
  } });
  switch (d.msg_type) {
    // A follower's tap on a menu message's item: the item's id says which.
    case 'text': return m.bizmsgmenuid ? [linkify(m.content || ''), el('div', { class: 'when' }, t('body.menu_answer'), data(m.bizmsgmenuid))] : linkify(m.content || '');
    // Reply types sent to WeChat followers: their text, no composer.
    case 'news': case 'miniprogrampage': return el('span', { class: 'card' }, el('strong', {}, m.title || ''), el('span', {}, m.description || m.pagepath || m.url || ''));
    case 'msgmenu': return [m.head_content || '', el('ul', {}, ...(Array.isArray(m.list) ? m.list : []).map((i) => el('li', {}, String(i?.content ?? ''), ' ', data(String(i?.id ?? ''))))), m.tail_content || ''];
    // A template message: its title (once the account's list is known) and the values sent.
    case 'template': return el('span', { class: 'card template' }, el('strong', {}, templateTitles.get(m.template_id) || t('body.template')),
      el('dl', {}, ...Object.entries(m.data && typeof m.data === 'object' ? m.data : {}).flatMap(([k, v]) => [el('dt', {}, k), el('dd', {}, String(v?.value ?? ''))])));
    case 'image': return local ? image(local) : media(m, image);
    case 'voice': return [media(m, voice), m.recognition ? el('div', { class: 'recognition' }, `“${m.recognition}”`) : null];
    case 'video': case 'shortvideo': return media(m, (src) => el('video', { controls: true, src, preload: 'metadata' }));
    case 'location': return [el('div', {}, '📍 ', m.label || t('body.location')), el('div', { class: 'when' }, `${m.latitude}, ${m.longitude}`)];
    case 'link': {
      const href = safeUrl(m.url);
      const card = [el('strong', {}, m.title || m.url || t('body.link')), el('span', {}, m.description || '')];
      return href ? el('a', { class: 'card', href, target: '_blank', rel: 'noopener noreferrer' }, ...card) : el('span', { class: 'card' }, ...card);
    }
    default: return [el('div', { class: 'when' }, t('body.type'), data(d.msg_type)), el('dl', { translate: 'no' }, ...Object.entries(m).flatMap(([k, v]) => [el('dt', {}, k), el('dd', {}, typeof v === 'string' ? v : JSON.stringify(v))]))];
  }
}

/** A voice player. WeChat's AMR plays in no browser: the gateway gives it as Ogg
 *  (`?format=ogg`, transcoded by its ffmpeg); where it cannot, the original is a download. */
function voice(src, type) {
  const download = () => el('a', { href: src, download: '', rel: 'noopener' }, t('body.voice.download'));
  if (type && document.createElement('audio').canPlayType(type)) return el('audio', { controls: true, preload: 'metadata', src });
  const ogg = new URL(src);
  ogg.searchParams.set('format', 'ogg');
  const player = el('audio', { controls: true, preload: 'metadata', src: ogg.toString() });
  player.addEventListener('error', () => player.replaceWith(download()), { once: true });
  return player;
}

/** Media that imgate may still be downloading from WeChat: shown once it is there.
 *  Only this gateway's own media is loaded, from the short-lived signed URL its status
 *  answer carries (no token in it). Anything else a message names (another host's
 *  picture: a tracking pixel) is a link the agent may choose to open, never a request.
 *  `onReady` is told when it has replaced its placeholder (the view may grow). */
export function mediaLoader(client, onReady) {
  return (m, make) => {
    const path = String(m.media_path || '');
    const id = path.startsWith(`${P}/media/`) ? path.slice(`${P}/media/`.length) : '';
    if (!/^[A-Za-z0-9]{1,64}$/.test(id)) {
      const url = path && safeUrl(path);
      return url
        ? el('a', { href: url, target: '_blank', rel: 'noopener noreferrer', class: 'external' }, t('body.external'))
        : el('span', { class: 'when' }, t('body.none'));
    }
    const holder = el('span', { class: 'when' }, t('body.loading'));
    const status = new URL(`${client.base}${P}/media/${id}/status`);
    if (!client.token) status.searchParams.set('userid', client.userid);
    let tries = 0;
    const poll = async () => {
      if (!holder.isConnected && tries > 0) return;
      try {
        const r = await fetch(status, { headers: client.headers() });
        const s = (await r.json()).data || {};
        if (s.status === 'ready' && s.url) {
          holder.replaceWith(make(new URL(s.url, client.base).toString(), s.content_type));
          onReady();
          return;
        }
        if (s.status === 'failed') return holder.replaceChildren(t('body.failed'), data(s.error));
        if (s.status === 'ready') return (holder.textContent = t('body.none'));
      } catch { /* try again */ }
      if (++tries < 60) setTimeout(poll, Math.min(5000, 300 * tries));
    };
    poll();
    return holder;
  };
}
