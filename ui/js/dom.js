// Small DOM helpers shared by every page: element creation, icons, snackbars and
// modal dialogs. No framework: pages build their DOM with h() and update it directly.

/** h('div', {class: 'x', onclick: fn}, child, ...) -> a new element. Children may be
 *  strings, nodes, arrays, or null/false (skipped). Attributes starting with "on" are
 *  event listeners; `hidden`, `disabled`, `checked` etc. take booleans. */
export function h(tag, attrs, ...children) {
  const el = tag.startsWith('svg:')
    ? document.createElementNS('http://www.w3.org/2000/svg', tag.slice(4))
    : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k === 'style' && typeof v === 'object') {
      for (const [sk, sv] of Object.entries(v)) {
        if (sk.startsWith('--')) el.style.setProperty(sk, sv); else el.style[sk] = sv;
      }
    }
    else if (k === 'value' || k === 'checked' || k === 'selected') el[k] = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : String(c));
  }
}

// Material-style icon paths (24x24 viewBox).
const ICONS = {
  menu: 'M3 6h18v2H3zm0 5h18v2H3zm0 5h18v2H3z',
  close: 'M19 6.4 17.6 5 12 10.6 6.4 5 5 6.4 10.6 12 5 17.6 6.4 19 12 13.4 17.6 19 19 17.6 13.4 12z',
  auto: 'M12 2a10 10 0 1 0 0 20 10 10 0 0 0 0-20zm0 18V4a8 8 0 0 1 0 16z',
  light: 'M12 7a5 5 0 1 0 0 10 5 5 0 0 0 0-10zM11 1h2v3h-2zm0 19h2v3h-2zM1 11h3v2H1zm19 0h3v2h-3zM4.2 5.6l1.4-1.4 2.1 2.1-1.4 1.4zm12.1 12.1 1.4-1.4 2.1 2.1-1.4 1.4zM4.2 18.4l2.1-2.1 1.4 1.4-2.1 2.1zM16.3 6.3l2.1-2.1 1.4 1.4-2.1 2.1z',
  dark: 'M12 3a9 9 0 1 0 9 9c0-.5 0-1-.1-1.4A5.5 5.5 0 0 1 12.4 3.1 9 9 0 0 0 12 3z',
  fullscreen: 'M7 14H5v5h5v-2H7zm-2-4h2V7h3V5H5zm12 7h-3v2h5v-5h-2zM14 5v2h3v3h2V5z',
  exitFullscreen: 'M5 16h3v3h2v-5H5zm3-8H5v2h5V5H8zm6 11h2v-3h3v-2h-5zm2-11V5h-2v5h5V8z',
  download: 'M5 20h14v-2H5zM19 9h-4V3H9v6H5l7 7z',
  camera: 'M12 9a4 4 0 1 0 0 8 4 4 0 0 0 0-8zm-3-5L7.2 6H4a2 2 0 0 0-2 2v11a2 2 0 0 0 2 2h16a2 2 0 0 0 2-2V8a2 2 0 0 0-2-2h-3.2L15 4z',
  filter: 'M10 18h4v-2h-4zM3 6v2h18V6zm3 7h12v-2H6z',
  left: 'M15.4 7.4 14 6l-6 6 6 6 1.4-1.4L10.8 12z',
  right: 'M8.6 16.6 10 18l6-6-6-6-1.4 1.4 4.6 4.6z',
  zoomIn: 'M15.5 14h-.8l-.3-.3A6.5 6.5 0 1 0 14 15.4l.3.3v.8l5 5 1.5-1.5zm-6 0a4.5 4.5 0 1 1 0-9 4.5 4.5 0 0 1 0 9zM12 10h-2v2H9v-2H7V9h2V7h1v2h2z',
  zoomOut: 'M15.5 14h-.8l-.3-.3A6.5 6.5 0 1 0 14 15.4l.3.3v.8l5 5 1.5-1.5zm-6 0a4.5 4.5 0 1 1 0-9 4.5 4.5 0 0 1 0 9zM7 9h5v1H7z',
  info: 'M11 7h2v2h-2zm0 4h2v6h-2zm1-9a10 10 0 1 0 0 20 10 10 0 0 0 0-20zm0 18a8 8 0 1 1 0-16 8 8 0 0 1 0 16z',
  lock: 'M18 8h-1V6A5 5 0 0 0 7 6v2H6a2 2 0 0 0-2 2v10a2 2 0 0 0 2 2h12a2 2 0 0 0 2-2V10a2 2 0 0 0-2-2zM9 6a3 3 0 0 1 6 0v2H9zm3 11a2 2 0 1 1 0-4 2 2 0 0 1 0 4z',
  edit: 'M3 17.3V21h3.8l11-11.1-3.7-3.7zM20.7 7a1 1 0 0 0 0-1.4l-2.3-2.3a1 1 0 0 0-1.4 0l-1.8 1.8 3.7 3.7z',
  delete: 'M6 19a2 2 0 0 0 2 2h8a2 2 0 0 0 2-2V7H6zM19 4h-3.5l-1-1h-5l-1 1H5v2h14z',
  refresh: 'M17.6 6.4A8 8 0 1 0 19.7 14h-2.1a6 6 0 1 1-1.4-6.2L13 11h7V4z',
};

export function icon(name) {
  const svg = h('svg:svg', {viewBox: '0 0 24 24', width: '20', height: '20', 'aria-hidden': 'true',
                           focusable: 'false', fill: 'currentColor'});
  svg.append(h('svg:path', {d: ICONS[name]}));
  return svg;
}

/** Shows a message at the bottom of the screen. Errors stay until closed (or 12 s);
 *  others go after 5 s. Returns the element. */
export function snackbar(message, {error = false, timeoutMs} = {}) {
  const box = document.getElementById('snackbars');
  const el = h('div', {class: 'snackbar' + (error ? ' error' : ''),
                       role: error ? 'alert' : 'status'},
    h('span', {class: 'text'}, message),
    h('button', {type: 'button', class: 'icon-button', 'aria-label': 'Dismiss',
                 onclick: () => el.remove()}, icon('close')));
  box.append(el);
  while (box.children.length > 4) box.firstElementChild.remove();
  setTimeout(() => el.remove(), timeoutMs ?? (error ? 12000 : 5000));
  return el;
}

/** An error caught by a page: shown as an error snackbar (aborts are ignored). */
export function showError(e, context) {
  if (e && e.name === 'AbortError') return;
  const msg = e && e.message ? e.message : String(e);
  snackbar(context ? `${context}: ${msg}` : msg, {error: true});
}

/** Opens a modal <dialog> built from `content` (appended to <body>, removed when
 *  closed). Returns the dialog; `onclose` runs once it is closed. */
export function modal(content, {className = '', label, onclose} = {}) {
  const d = h('dialog', {class: className, 'aria-label': label}, content);
  d.addEventListener('close', () => { d.remove(); if (onclose) onclose(d.returnValue); });
  document.body.append(d);
  d.showModal();
  return d;
}

/** A yes/no confirmation dialog; resolves true when confirmed. */
export function confirmDialog(title, text, {confirmLabel = 'OK', danger = false} = {}) {
  return new Promise(resolve => {
    let ok = false;
    const form = h('form', {method: 'dialog', class: 'form'},
      h('h2', null, title), h('p', {class: 'dialog-note'}, text),
      h('div', {class: 'actions'},
        h('button', {type: 'submit', class: 'button', value: 'cancel',
                     onclick: () => { ok = false; }}, 'Cancel'),
        h('button', {type: 'submit', class: 'button ' + (danger ? 'danger' : 'primary'),
                     value: 'ok', onclick: () => { ok = true; }}, confirmLabel)));
    modal(form, {label: title, onclose: () => resolve(ok)});
  });
}

/** Replaces the children of `el`. */
export function replace(el, ...children) {
  el.textContent = '';
  append(el, children);
}
