// The console's state: who is signed in, which conversation is open, and per conversation
// what the message view needs (messages, paging, the WeChat window, the draft). The list's
// data (which conversations exist, their last message, unread) is conversations.js's.

export const state = {
  userid: '',
  /** The open conversation's contact id, or null. */
  current: null,
  /** contact → Thread */
  threads: new Map(),
  sound: false,
  /** Messages that arrived while the tab was hidden (the title counts them). */
  unseen: 0,
};

/**
 * @typedef {object} Message
 * @property {string} id
 * @property {boolean} out
 * @property {number} [seq]
 * @property {object} data     the frame's data
 * @property {'sending'|'queued'|'sent'|'failed'} [state]   outgoing only
 * @property {string} [error]  a failure's reason
 */

/** A conversation's messages and reply state. */
export function thread(contact) {
  let t = state.threads.get(contact);
  if (!t) {
    t = {
      contact,
      messages: new Map(),   // id → Message
      statuses: new Set(),   // ids of status frames seen (history pages count them)
      minSeq: Infinity,      // the oldest seq known: where the next older page starts
      complete: false,       // no older history
      opened: false,         // its newest page was fetched
      loading: false,
      window: null,          // WeChat's reply window, from the newest source only
      windowVersion: 0,      // bumped by each live window, so an older lookup cannot win
      wechat: null,          // the account, once the contact lookup says so
      company: '',
      draft: '',
      newBelow: 0,           // live messages below the view while scrolled up
    };
    state.threads.set(contact, t);
  }
  return t;
}

/** The window is open now (WeChat allows a reply). No window known: a plain contact. */
export function windowOpen(w, now = Date.now() / 1000) {
  return !w || (w.open && w.closes_at > now && w.remaining > 0);
}
