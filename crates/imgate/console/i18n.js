// Every string the console shows, one table per language. The language follows the
// browser (a `zh*` browser gets Chinese) until the agent picks one (kept in localStorage).
// Pure data and functions: no DOM at import, so tests can read the tables.

export const LANGS = ['zh-CN', 'en'];
const KEY = 'imgate.lang';

export const tables = {
  'zh-CN': {
    'doc.title': '{user} · imgate 客服台',
    'login.title': 'imgate 客服台',
    'login.user': '你的用户 ID',
    'login.open': '打开',
    skip: '跳到对话',
    'sidebar.aria': '会话列表',
    'list.aria': '会话',
    'list.empty': '还没有会话。消息到达时会出现在这里。',
    'state.connecting': '连接中',
    'state.connected': '已连接',
    'state.reconnecting': '重新连接中',
    'state.offline': '离线',
    'sound.title': '新消息提示音和通知',
    'sound.on': '提示音已开',
    'sound.off': '提示音已关',
    'lang.label': '语言',
    'help.button': '键盘快捷键',
    'conversation.aria': '对话',
    back: '返回会话列表',
    pick: '选择一个会话',
    'messages.aria': '消息',
    upload: '发送图片',
    placeholder: '输入回复 — Enter 发送，Shift+Enter 换行',
    'reply.aria': '回复',
    send: '发送',
    'counter.title': '微信文本回复最多 {max} 字节（UTF-8）',
    'lightbox.aria': '图片',
    'lightbox.close': '关闭',
    'new.below': '{n} 条新消息 ↓',
    'older.more': '向上滚动加载更早的消息',
    'older.loading': '正在加载更早的消息…',
    'older.none': '没有更早的消息了',
    'preview.image': '[图片]',
    'preview.voice': '[语音]',
    'preview.video': '[视频]',
    'preview.location': '[位置] {label}',
    'preview.link': '[链接] {title}',
    'preview.system': '[系统消息]',
    'preview.other': '[{type}]',
    you: '你',
    unread: '{n} 条未读',
    'account.wechat': '微信',
    'meta.wechat': '微信公众号',
    'meta.company': '公司',
    'window.open': '回复窗口：剩余 {left} · 还可回复 {remaining}/{quota} 条',
    'window.closed': '回复窗口已关闭',
    'closed.time': '微信只允许在粉丝最后一条消息后 48 小时内回复。粉丝再次发消息后即可回复。',
    'closed.quota': '本窗口允许的 {quota} 条回复已用完。粉丝再次发消息后即可回复。',
    'dur.hm': '{h} 小时 {m} 分钟',
    'dur.m': '{m} 分钟',
    'msg.sending': '发送中…',
    'msg.queued': '等待连接，连上后自动发送…',
    'msg.sent': '已发送',
    'msg.failed': '发送失败：',
    retry: '重试',
    'err.45015': '已超过 48 小时回复窗口',
    'err.45047': '本窗口的回复条数已用完',
    'err.notdelivered': '未送达',
    'err.lost': '连接中断，未收到网关答复：请检查后重试',
    'err.timeout': '网关暂未答复',
    'err.upload': '图片上传失败',
    'err.toolong': '超过 {max} 字节，微信不接受',
    'event.subscribe': '关注了公众号',
    'event.subscribe.scene': '扫码关注了公众号（场景 {scene}）',
    'event.unsubscribe': '取消关注了公众号',
    'event.CLICK': '点击了菜单「{key}」',
    'event.VIEW': '打开了菜单链接 {key}',
    'event.SCAN': '扫描了二维码（场景 {key}）',
    'event.LOCATION': '上报了地理位置 {lat}, {lng}',
    'event.scancode_push': '通过菜单扫了码',
    'event.scancode_waitmsg': '通过菜单扫码，等待回复',
    'event.pic_sysphoto': '通过菜单拍照发图',
    'event.pic_photo_or_album': '通过菜单拍照或从相册发图',
    'event.pic_weixin': '通过菜单从微信相册发图',
    'event.location_select': '通过菜单发送了位置',
    'event.view_miniprogram': '打开了小程序',
    'event.TEMPLATESENDJOBFINISH': '模板消息的送达结果',
    'event.MASSSENDJOBFINISH': '群发消息的结果',
    'event.unknown': '其他事件',
    system: '系统消息：',
    'body.voice.download': '语音消息（下载）',
    'body.location': '位置',
    'body.link': '链接',
    'body.loading': '正在加载媒体…',
    'body.none': '（媒体不可用）',
    'body.failed': '媒体不可用：',
    'body.external': '外部媒体（未加载）',
    'body.type': '未知类型的消息：',
    'alt.in': '{who} 发来的图片',
    'alt.out': '你发送的图片',
    'help.title': '键盘快捷键',
    'help.close': '关闭',
    'sc.help': '打开或关闭本帮助',
    'sc.list': '转到会话列表',
    'sc.listnav': '在会话列表中移动',
    'sc.open': '打开会话',
    'sc.next': '下一个会话',
    'sc.prev': '上一个会话',
    'sc.reply': '转到回复框',
    'sc.send': '发送回复',
    'sc.newline': '换行',
    'sc.upload': '发送图片（也可粘贴或拖入）',
    'sc.newest': '跳到最新消息',
    'sc.retry': '重试最近一条失败的消息',
    'sc.sound': '打开或关闭提示音',
    'sc.lang': '切换语言',
    'sc.back': '关闭弹窗；手机宽度下返回会话列表',
    unknown: '（未知）',
  },
  en: {
    'doc.title': '{user} · imgate console',
    'login.title': 'imgate console',
    'login.user': 'Your user id',
    'login.open': 'Open',
    skip: 'Skip to the conversation',
    'sidebar.aria': 'Conversation list',
    'list.aria': 'Conversations',
    'list.empty': 'No conversations yet. Messages appear here as they arrive.',
    'state.connecting': 'connecting',
    'state.connected': 'connected',
    'state.reconnecting': 'reconnecting',
    'state.offline': 'offline',
    'sound.title': 'Sound and notifications for new messages',
    'sound.on': 'sound on',
    'sound.off': 'sound off',
    'lang.label': 'Language',
    'help.button': 'Keyboard shortcuts',
    'conversation.aria': 'Conversation',
    back: 'Back to conversations',
    pick: 'Pick a conversation',
    'messages.aria': 'Messages',
    upload: 'Send an image',
    placeholder: 'Write a reply — Enter sends, Shift+Enter for a new line',
    'reply.aria': 'Reply',
    send: 'Send',
    'counter.title': 'WeChat takes at most {max} bytes (UTF-8) in a text reply',
    'lightbox.aria': 'Image',
    'lightbox.close': 'Close',
    'new.below': '{n} new messages ↓',
    'older.more': 'Scroll up for older messages',
    'older.loading': 'Loading older messages…',
    'older.none': 'No older messages',
    'preview.image': '[image]',
    'preview.voice': '[voice]',
    'preview.video': '[video]',
    'preview.location': '[location] {label}',
    'preview.link': '[link] {title}',
    'preview.system': '[system]',
    'preview.other': '[{type}]',
    you: 'You',
    unread: '{n} unread',
    'account.wechat': 'WeChat',
    'meta.wechat': 'WeChat account',
    'meta.company': 'company',
    'window.open': 'Reply window: {left} left · {remaining} of {quota} messages left',
    'window.closed': 'Reply window closed',
    'closed.time': 'WeChat lets you reply only within 48 hours of the follower’s last message. You can write again when they do.',
    'closed.quota': 'The {quota} replies this window allows are used up. You can write again when the follower does.',
    'dur.hm': '{h} h {m} min',
    'dur.m': '{m} min',
    'msg.sending': 'sending…',
    'msg.queued': 'waiting for the connection, goes out when it is back…',
    'msg.sent': 'sent',
    'msg.failed': 'failed: ',
    retry: 'Retry',
    'err.45015': 'outside the 48-hour reply window',
    'err.45047': 'no replies left in this window',
    'err.notdelivered': 'not delivered',
    'err.lost': 'connection lost before the answer: check the message, then retry',
    'err.timeout': 'no answer from the gateway yet',
    'err.upload': 'the image upload failed',
    'err.toolong': 'over {max} bytes: WeChat refuses it',
    'event.subscribe': 'followed the account',
    'event.subscribe.scene': 'followed the account from a QR code (scene {scene})',
    'event.unsubscribe': 'unfollowed the account',
    'event.CLICK': 'clicked the menu “{key}”',
    'event.VIEW': 'opened a menu link {key}',
    'event.SCAN': 'scanned a QR code (scene {key})',
    'event.LOCATION': 'reported their location {lat}, {lng}',
    'event.scancode_push': 'scanned a code from the menu',
    'event.scancode_waitmsg': 'scanned a code from the menu, waiting for an answer',
    'event.pic_sysphoto': 'took a photo from the menu',
    'event.pic_photo_or_album': 'sent a photo or album picture from the menu',
    'event.pic_weixin': 'sent a picture from the WeChat album',
    'event.location_select': 'sent a location from the menu',
    'event.view_miniprogram': 'opened a mini program',
    'event.TEMPLATESENDJOBFINISH': 'a template message’s delivery report',
    'event.MASSSENDJOBFINISH': 'a mass message’s report',
    'event.unknown': 'another event',
    system: 'System: ',
    'body.voice.download': 'voice message (download)',
    'body.location': 'location',
    'body.link': 'link',
    'body.loading': 'loading media…',
    'body.none': '(media not available)',
    'body.failed': 'media unavailable: ',
    'body.external': 'external media (not loaded)',
    'body.type': 'A message of a type the console does not know: ',
    'alt.in': 'Image from {who}',
    'alt.out': 'Image you sent',
    'help.title': 'Keyboard shortcuts',
    'help.close': 'Close',
    'sc.help': 'open or close this help',
    'sc.list': 'go to the conversation list',
    'sc.listnav': 'move in the conversation list',
    'sc.open': 'open the conversation',
    'sc.next': 'next conversation',
    'sc.prev': 'previous conversation',
    'sc.reply': 'go to the reply box',
    'sc.send': 'send the reply',
    'sc.newline': 'new line',
    'sc.upload': 'send an image (or paste or drop one)',
    'sc.newest': 'jump to the newest message',
    'sc.retry': 'retry the latest failed message',
    'sc.sound': 'sound on or off',
    'sc.lang': 'switch the language',
    'sc.back': 'close a dialog; at phone width, back to the list',
    unknown: '(unknown)',
  },
};

let lang = 'en';
const asked = new Set();

/** `{name}` placeholders filled from `params`. */
export function format(s, params = {}) {
  return String(s).replace(/\{(\w+)\}/g, (m, k) => (k in params ? String(params[k]) : m));
}

/** The string for `key` in the current language. A key missing from the table is noted
 *  (the tests look) and shown as the English one, never as the key. */
export function t(key, params) {
  let s = tables[lang][key];
  if (s === undefined) {
    asked.add(`${lang}:${key}`);
    s = tables.en[key] ?? key;
  }
  return format(s, params);
}

/** Keys asked for that the current table lacks. */
export const missing = () => [...asked];

/** The language to start with: the agent's choice, else the browser's. */
export function detect(stored = globalThis.localStorage?.getItem(KEY), langs = globalThis.navigator?.languages || []) {
  if (LANGS.includes(stored)) return stored;
  for (const l of langs) {
    if (/^zh/i.test(l)) return 'zh-CN';
    if (/^en/i.test(l)) return 'en';
  }
  return 'zh-CN';
}

export function setLang(l, { keep = false } = {}) {
  lang = LANGS.includes(l) ? l : 'en';
  if (keep) globalThis.localStorage?.setItem(KEY, lang);
  return lang;
}

export const getLang = () => lang;

/** The page's own strings: `data-i18n="key"` (text) and `data-i18n-aria-label`,
 *  `-title`, `-placeholder`, `-alt` (attributes). */
export function applyStatic(root) {
  root.documentElement?.setAttribute('lang', lang);
  for (const e of root.querySelectorAll('[data-i18n]')) e.textContent = t(e.dataset.i18n);
  for (const attr of ['aria-label', 'title', 'placeholder', 'alt']) {
    const data = `data-i18n-${attr}`;
    for (const e of root.querySelectorAll(`[${data}]`)) e.setAttribute(attr, t(e.getAttribute(data)));
  }
}
