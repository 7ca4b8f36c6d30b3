// The shell: loads `GET /api/?days=true` (cameras, streams, days, the caller's user and
// permissions, the CSRF token), keeps the header in step with it (navigation, account
// menu, theme), answers every 401 with the login dialog, and routes the URL's hash to a
// page module:
//   #/          list.js      recordings per stream, calendar, player
//   #/live      live.js      live view grid
//   #/timeline  timeline.js  lanes of recorded spans and gaps
//   #/storage   storage.js   bytes used against retention limits
//   #/system    system.js    how nvr is doing: streams' states, disks, flushes, versions
//   #/users     users.js     user administration (adminUsers only)
//   #/settings  settings.js  cameras, streams, dirs while recording (configureCameras only)
// A page module exports `render(main, ctx)`, which may return a cleanup function run
// when the page is left. `ctx` has the /api/ answer (`top`), the hash's query
// (`params`), `setParams` (updates the URL without re-rendering) and an AbortSignal.

import * as api from './api.js';
import {h, icon, replace, snackbar, showError} from './dom.js';
import {setZone} from './time.js';

const PAGES = {
  '/': {name: 'list', title: 'Recordings', load: () => import('./list.js')},
  '/live': {name: 'live', title: 'Live', load: () => import('./live.js')},
  '/timeline': {name: 'timeline', title: 'Timeline', load: () => import('./timeline.js')},
  '/storage': {name: 'storage', title: 'Storage', load: () => import('./storage.js')},
  '/system': {name: 'system', title: 'System', load: () => import('./system.js')},
  '/users': {name: 'users', title: 'Users', load: () => import('./users.js')},
  '/settings': {name: 'settings', title: 'Settings', load: () => import('./settings.js')},
};

const state = {top: null, ready: false, cleanup: null, abort: null, renderSeq: 0};
export const getTop = () => state.top;

// ---- theme ----
const THEMES = ['auto', 'light', 'dark'];
const THEME_LABEL = {auto: 'Theme: automatic (follows the system); switch to light',
                     light: 'Theme: light; switch to dark', dark: 'Theme: dark; switch to automatic'};

function applyTheme(t) {
  if (t === 'auto') delete document.documentElement.dataset.theme;
  else document.documentElement.dataset.theme = t;
  const b = document.getElementById('theme-button');
  b.replaceChildren(icon(t));
  b.setAttribute('aria-label', THEME_LABEL[t]);
  b.title = THEME_LABEL[t];
  b.dataset.theme = t;
}

function initTheme() {
  let t = localStorage.getItem('nvr.theme');
  if (!THEMES.includes(t)) t = 'auto';
  applyTheme(t);
  document.getElementById('theme-button').addEventListener('click', () => {
    const cur = document.getElementById('theme-button').dataset.theme;
    const next = THEMES[(THEMES.indexOf(cur) + 1) % THEMES.length];
    localStorage.setItem('nvr.theme', next);
    applyTheme(next);
  });
}

// ---- session ----
export async function loadTop() {
  const top = await api.get('/api/?days=true');
  state.top = top;
  setZone(top.timeZoneName || 'UTC');
  api.setCsrf(top.user?.session?.csrf);
  updateHeader();
  return top;
}

function updateHeader() {
  const top = state.top;
  const user = top?.user;
  document.getElementById('login-button').hidden = !!user;
  document.querySelector('.account').hidden = !user;
  if (user) {
    replace(document.getElementById('account-button'), user.name, ' ▾');
    document.getElementById('account-button').setAttribute('aria-label', `Account: ${user.name}`);
  }
  document.querySelector('nav a[data-page="users"]').hidden = !top?.permissions?.adminUsers;
  document.querySelector('nav a[data-page="settings"]').hidden = !top?.permissions?.configureCameras;
}

let loginPromise = null;

/** Opens the login dialog (once, however many requests got a 401); resolves after a
 *  successful login and a fresh /api/, rejects if the user cancels. */
function requireLogin(reason) {
  if (!loginPromise) {
    loginPromise = new Promise((resolve, reject) => openLoginDialog(reason, resolve, reject))
      .finally(() => { loginPromise = null; });
  }
  return loginPromise;
}

function openLoginDialog(reason, resolve, reject) {
  const d = document.getElementById('login-dialog');
  const form = d.querySelector('form');
  const err = form.querySelector('.form-error');
  const note = document.getElementById('login-reason');
  note.hidden = !reason;
  note.textContent = reason ? `The server says: ${reason}` : '';
  err.hidden = true;
  form.reset();
  let done = false;
  const finish = (ok, value) => {
    if (done) return;
    done = true;
    form.removeEventListener('submit', onSubmit);
    d.removeEventListener('close', onClose);
    if (d.open) d.close();
    ok ? resolve(value) : reject(value);
  };
  const onSubmit = async (ev) => {
    ev.preventDefault();
    const submit = form.querySelector('[type=submit]');
    submit.disabled = true;
    err.hidden = true;
    try {
      await api.post('/api/login', {username: form.username.value,
                                    password: form.password.value}, {login: false});
      await loadTop();
      finish(true);
      state.fresh = true;
      if (state.ready) route();
    } catch (e) {
      err.hidden = false;
      if (e.status === 401) err.textContent = 'Wrong username or password.';
      else if (e.status === 429) err.textContent =
        `Too many failed logins: try again in ${e.retryAfter ?? 'a few'} seconds.`;
      else err.textContent = e.message;
      form.password.select();
    } finally {
      submit.disabled = false;
    }
  };
  const onClose = () => finish(false, new api.ApiError(401, 'not logged in'));
  form.addEventListener('submit', onSubmit);
  d.addEventListener('close', onClose);
  if (!d.open) d.showModal();
  form.username.focus();
}

function initLoginDialog() {
  const d = document.getElementById('login-dialog');
  d.querySelector('[data-cancel]').addEventListener('click', () => d.close());
  document.getElementById('login-button').addEventListener('click', () => {
    requireLogin().catch(() => {});
  });
}

function initAccountMenu() {
  const button = document.getElementById('account-button');
  const menu = document.getElementById('account-menu');
  const setOpen = open => {
    menu.hidden = !open;
    button.setAttribute('aria-expanded', String(open));
    if (open) menu.querySelector('button').focus();
  };
  button.addEventListener('click', () => setOpen(menu.hidden));
  document.addEventListener('click', ev => {
    if (!menu.hidden && !ev.target.closest('.account')) setOpen(false);
  });
  menu.addEventListener('keydown', ev => { if (ev.key === 'Escape') { setOpen(false); button.focus(); } });
  document.getElementById('logout-item').addEventListener('click', async () => {
    setOpen(false);
    try {
      await api.post('/api/logout', {});
      api.setCsrf(null);
      state.top = null;
      updateHeader();
      snackbar('Logged out.');
      state.fresh = false;
      route();
    } catch (e) {
      if (e.status === 401) { showLoggedOut(); return; }
      showError(e, 'Log out');
    }
  });
  document.getElementById('change-password-item').addEventListener('click', () => {
    setOpen(false);
    openPasswordDialog();
  });
}

function openPasswordDialog() {
  const d = document.getElementById('password-dialog');
  const form = d.querySelector('form');
  const err = form.querySelector('.form-error');
  form.reset();
  err.hidden = true;
  form.username.value = state.top?.user?.name || '';
  form.onsubmit = async ev => {
    ev.preventDefault();
    err.hidden = true;
    if (form.new.value !== form.confirm.value) {
      err.hidden = false;
      err.textContent = 'The new passwords differ.';
      return;
    }
    try {
      await api.patch(`/api/users/${state.top.user.id}`, {
        update: {password: form.new.value}, precondition: {password: form.current.value}});
      d.close();
      snackbar('Password changed.');
    } catch (e) {
      err.hidden = false;
      err.textContent = e.status === 412 ? 'The current password is wrong.' : e.message;
    }
  };
  d.querySelector('[data-cancel]').onclick = () => d.close();
  d.showModal();
}

function initMenuButton() {
  const b = document.getElementById('menu-button');
  const nav = document.getElementById('nav');
  b.append(icon('menu'));
  b.addEventListener('click', () => {
    const open = !nav.classList.contains('open');
    nav.classList.toggle('open', open);
    b.setAttribute('aria-expanded', String(open));
  });
  nav.addEventListener('click', ev => {
    if (ev.target.closest('a')) {
      nav.classList.remove('open');
      b.setAttribute('aria-expanded', 'false');
    }
  });
}

// ---- routing ----
function parseHash() {
  const raw = location.hash.replace(/^#/, '') || '/';
  const [path, q] = raw.split('?', 2);
  // "#live" (typed by hand) means "#/live".
  return {path: path ? (path.startsWith('/') ? path : '/' + path) : '/',
          params: new URLSearchParams(q || '')};
}

/** Replaces the hash's query with `params` (an object; empty values dropped), without
 *  re-rendering the page: history.replaceState fires no hashchange. */
function setParams(path, obj) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(obj)) if (v !== undefined && v !== null && v !== '') q.set(k, v);
  const s = q.toString();
  history.replaceState(null, '', `#${path}${s ? '?' + s : ''}`);
}

function showLoggedOut() {
  const main = document.getElementById('main');
  replace(main, h('div', {class: 'page-message'},
    h('p', null, 'Log in to use nvr.'),
    h('button', {type: 'button', class: 'button primary',
                 onclick: () => requireLogin().then(() => route(), () => {})}, 'Log in')));
}

export async function route() {
  const seq = ++state.renderSeq;
  if (state.cleanup) { try { state.cleanup(); } catch (e) { console.warn(e); } }
  state.cleanup = null;
  if (state.abort) state.abort.abort();
  state.abort = new AbortController();
  const {path, params} = parseHash();
  const page = PAGES[path];
  for (const a of document.querySelectorAll('nav a')) {
    if (page && a.dataset.page === page.name) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  const main = document.getElementById('main');
  main.dataset.page = page ? page.name : 'not-found';
  if (!page) {
    document.title = 'nvr: not found';
    replace(main, h('div', {class: 'page-message'}, h('p', null, `There is no page ${path}.`),
                    h('a', {href: '#/'}, 'Go to the recordings')));
    return;
  }
  document.title = `nvr: ${page.title}`;
  let mod;
  try {
    mod = await page.load();
  } catch (e) {
    if (seq !== state.renderSeq) return;
    // The old page is already stopped (cleanup above): don't leave it up, dead, under
    // this page's name. Say what failed and offer to try again.
    showError(e, `Loading the ${page.title} page`);
    replace(main, h('div', {class: 'page-message'},
      h('p', null, `The ${page.title} page could not be loaded; is nvr running? `),
      h('button', {type: 'button', class: 'button', onclick: () => route()}, 'Retry')));
    return;
  }
  if (!state.fresh || !state.top) {
    // A fresh /api/ for each page: days with video and stream totals change as nvr
    // records. Without a session this is the 401 that opens the login dialog.
    try {
      await loadTop();
    } catch (e) {
      if (seq !== state.renderSeq) return;
      if (e.status === 401 || !state.top) { showLoggedOut(); return; }
      showError(e, 'Refreshing the camera list');
    }
  }
  state.fresh = false;
  if (seq !== state.renderSeq) return;
  main.replaceChildren();
  main.removeAttribute('aria-busy');
  const ctx = {
    top: state.top,
    params,
    signal: state.abort.signal,
    setParams: obj => setParams(path, obj),
    reloadTop: loadTop,
  };
  try {
    state.cleanup = mod.render(main, ctx) || null;
  } catch (e) {
    showError(e, page.title);
  }
}

async function start() {
  initTheme();
  initMenuButton();
  initLoginDialog();
  initAccountMenu();
  api.setUnauthenticatedHandler(requireLogin);
  window.addEventListener('hashchange', route);
  // The skip link moves focus without touching the hash, which is the router's.
  document.querySelector('.skip-link').addEventListener('click', e => {
    e.preventDefault();
    document.getElementById('main').focus();
  });
  try {
    await loadTop();
  } catch (e) {
    state.ready = true;
    if (e.status === 401) showLoggedOut();
    else {
      showError(e, 'Loading the camera list');
      replace(document.getElementById('main'), h('div', {class: 'page-message'},
        h('p', null, 'nvr could not be reached. '),
        h('button', {type: 'button', class: 'button', onclick: () => location.reload()}, 'Retry')));
    }
    return;
  }
  state.ready = true;
  state.fresh = true;
  route();
}

start();
