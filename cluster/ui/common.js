// Shared helpers of the OpenGrid dashboard pages. Plain ES modules, no build step.
// Every value from the colony is inserted as text (textContent), never as HTML.

/** Creates an element: el('td', {class: 'x', 'data-node': 'a'}, 'text', child, ...). */
export function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k === 'title') e.title = String(v);
    else e.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

/** Replaces the rows of a table body. */
export function fillTable(table, rows) {
  const body = table.tBodies[0];
  body.replaceChildren(...rows);
}

// ---- operator sign-in (ADR 0026) --------------------------------------------------------------
// The dashboard's data needs an operator token (`opengrid token operator --key <data dir>`). It is
// given once, as `#token=…` in the URL or in the sign-in box, and kept in this tab's session
// storage only; the URL fragment is removed at once (it never reaches a server or a log).
const TOKEN_KEY = 'opengrid-operator-token';
(function takeTokenFromFragment() {
  const m = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (m) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]));
    history.replaceState(null, '', location.pathname + location.search);
  }
})();

/** The operator token of this tab, or ''. */
export function token() {
  return sessionStorage.getItem(TOKEN_KEY) || '';
}

/** `url` with the token as `access_token` (for EventSource, which cannot send headers). */
export function withToken(url) {
  const t = token();
  return t ? `${url}${url.includes('?') ? '&' : '?'}access_token=${encodeURIComponent(t)}` : url;
}

/** Shows the sign-in box (once): paste a token, kept for this tab. */
export function signIn(why) {
  if (document.getElementById('signin')) return;
  const input = el('input', {type: 'password', id: 'signin-token', autocomplete: 'off',
    placeholder: 'operator token', 'aria-label': 'operator token'});
  const form = el('form', {id: 'signin', class: 'warn'},
    el('p', {}, why, ' Paste an operator token (', el('code', {}, 'opengrid token operator --key <data dir>'), '):'),
    input, el('button', {type: 'submit'}, 'Sign in'));
  form.addEventListener('submit', e => {
    e.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, input.value.trim());
    location.reload();
  });
  document.querySelector('main').prepend(form);
}

/** Fetches JSON with the operator token; throws an Error naming the URL and status on failure
 * (and asks to sign in on 401). */
export async function getJson(url) {
  const headers = {accept: 'application/json'};
  if (token()) headers.authorization = `Bearer ${token()}`;
  const r = await fetch(url, {cache: 'no-store', headers});
  if (r.status === 401) {
    signIn(token() ? 'The operator token was refused (expired, or not an operator of this process).'
      : 'This dashboard needs an operator token.');
  }
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  return r.json();
}

/** Milliseconds as a short age: 80ms, 4.2s, 3m10s, 2h05m. */
export function age(ms) {
  if (ms === undefined || ms === null) return '';
  if (ms < 1000) return `${ms}ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(1)}s`;
  if (ms < 3600000) return `${Math.floor(ms / 60000)}m${String(Math.floor(ms % 60000 / 1000)).padStart(2, '0')}s`;
  return `${Math.floor(ms / 3600000)}h${String(Math.floor(ms % 3600000 / 60000)).padStart(2, '0')}m`;
}

/** Bytes as KiB/MiB/GiB. */
export function bytes(n) {
  if (n === undefined || n === null) return '';
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let x = Number(n);
  while (x >= 1024 && i < u.length - 1) { x /= 1024; i++; }
  return i === 0 ? `${x} B` : `${x.toFixed(x < 10 ? 1 : 0)} ${u[i]}`;
}

/** Micro-units as a decimal amount with thousands separators. */
export function micros(n) {
  if (n === undefined || n === null) return '';
  return Number(n).toLocaleString('en-US') + ' µ';
}

/** The last `n` characters of an id (DIDs are long). */
export function short(id, n = 10) {
  const s = String(id || '');
  return s.length > n ? '…' + s.slice(-n) : s;
}

/** A phi value: two decimals, or >999 for a long-silent node, - when unknown. */
export function phi(p) {
  if (typeof p !== 'number') return '-';
  return p > 999 ? '>999' : p.toFixed(2);
}

/** A small coloured badge. */
export function badge(text, kind) {
  return el('span', {class: `badge ${kind || text}`}, text);
}

/** Shows "updated Xs ago" in #updated and keeps it ticking. */
export function updatedClock() {
  const node = document.getElementById('updated');
  let at = 0;
  setInterval(() => {
    if (at) node.textContent = `updated ${age(Date.now() - at)} ago`;
  }, 1000);
  return () => { at = Date.now(); node.textContent = 'updated just now'; };
}

/** Reports a failed refresh on the page (and not as an uncaught error). */
export function showError(err) {
  let box = document.getElementById('error');
  if (!box) {
    box = el('p', {id: 'error', class: 'warn', role: 'alert'});
    document.querySelector('main').prepend(box);
  }
  box.hidden = !err;
  box.textContent = err ? `Cannot refresh: ${err.message || err}` : '';
}
