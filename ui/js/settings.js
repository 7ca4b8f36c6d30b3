// Settings (#/settings), for callers with the configureCameras permission: nvr's
// configuration while it records, through the configuration API (docs/api.md,
// "Configuration"):
//   GET    /api/config/                      cameras, their streams with live status, dirs
//   POST   /api/config/test-stream           the stream test (streamtest.py's JSON plus
//                                            snapshotJpeg, base64): within about 10 s
//   POST/PATCH/DELETE /api/config/cameras[/<id>[/streams/<type>]]
//   POST/PATCH/DELETE /api/config/dirs[/<id>]
// The page shows each camera with its streams and their status (recorder.py's status JSON:
// state, last frame age, measured fps and bitrate, run length, last error), refreshed every
// REFRESH_MS while it is open, and the sample file dirs. Changes go through dialogs:
// "Add camera" is the loop a person setting up a camera needs: URL and credentials, Test
// (visibly running, then the snapshot and what the camera sends, or the classified
// error), choose the stream type, record, directory and retention (with the days of
// history the byte limit holds at the measured bitrate), Save; the new stream then shows
// as recording on this page.
//
// Camera passwords are write-only: the API says `passwordSet`, and an empty password
// field keeps the stored one. A change the server wants confirmed (409: it would delete
// recordings) is shown with the server's message (counts and sizes) and sent again with
// `deleteRecordings: true` only if the person confirms.
//
// The refresh redraws nothing a person may be using: when only status and free space
// changed, the cells are updated in place; dialogs live outside the page's DOM.

import * as api from './api.js';
import {h, modal, replace, showError, snackbar, confirmDialog} from './dom.js';
import {bytes} from './format.js';
import {STREAM_TYPES} from './model.js';

export const REFRESH_MS = 3000;
const TEST_LIMIT_SEC = 10;   // streamtest.LIMIT_SEC: what the in-progress text promises
const TRANSPORTS = [['tcp', 'TCP'], ['udp', 'UDP'], ['default', "FFmpeg's default"]];
const STATE_LABEL = {off: 'off', connecting: 'connecting', recording: 'recording', failing: 'failing'};
const SIZE_UNITS = {'': 1, b: 1, k: 2 ** 10, kb: 2 ** 10, kib: 2 ** 10, m: 2 ** 20, mb: 2 ** 20,
                    mib: 2 ** 20, g: 2 ** 30, gb: 2 ** 30, gib: 2 ** 30, t: 2 ** 40, tb: 2 ** 40,
                    tib: 2 ** 40};

/** Bytes from "123", "500M", "1.5GiB", "2T" (binary units, as the CLI's parse_size);
 *  null for an empty string; NaN for anything else. */
export function parseSize(s) {
  const t = String(s ?? '').trim();
  if (!t) return null;
  const m = /^(\d+(?:\.\d+)?)\s*([a-zA-Z]*)$/.exec(t);
  if (!m || !(m[2].toLowerCase() in SIZE_UNITS)) return NaN;
  return Math.floor(Number(m[1]) * SIZE_UNITS[m[2].toLowerCase()]);
}

/** A size as the CLI would take it back: "10G", "1.5G", "500M", or bytes. */
export function sizeText(n) {
  if (!n) return '0';
  for (const [u, f] of [['T', 2 ** 40], ['G', 2 ** 30], ['M', 2 ** 20], ['K', 2 ** 10]]) {
    const v = n / f;   // exact to two decimals: parseSize gives the same bytes back
    if (v >= 1 && Math.floor(Math.round(v * 100) / 100 * f) === n) return `${Math.round(v * 100) / 100}${u}`;
  }
  return String(n);
}

/** Days of history `retainBytes` holds at `bitrateBps`, or null. */
export function historyDays(retainBytes, bitrateBps) {
  if (!(retainBytes > 0) || !(bitrateBps > 0)) return null;
  return retainBytes / (bitrateBps / 8) / 86400;
}

const fmtDays = d => d === null ? '—' : d >= 10 ? `${d.toFixed(0)} days` : `${d.toFixed(1)} days`;
const fmtRate = bps => bps === null || bps === undefined ? '—' : `${(bps / 1e6).toFixed(2)} Mbit/s`;
const fmtFps = f => f === null || f === undefined ? '—' : f.toFixed(f >= 10 ? 1 : 2);

/** "4 s", "3 min 12 s", "2 h 5 min", "3 d 4 h". */
export function fmtSpan(sec) {
  if (sec === null || sec === undefined || !isFinite(sec)) return '—';
  sec = Math.max(0, Math.round(sec));
  if (sec < 60) return `${sec} s`;
  if (sec < 3600) return `${Math.floor(sec / 60)} min ${sec % 60} s`;
  if (sec < 86400) return `${Math.floor(sec / 3600)} h ${Math.floor(sec % 3600 / 60)} min`;
  return `${Math.floor(sec / 86400)} d ${Math.floor(sec % 86400 / 3600)} h`;
}

/** The server's one-line reason from an ApiError ("METHOD url: 409 Conflict: reason"). */
const reasonOf = e => e.reason ?? e.message;

export function render(main, ctx) {
  const canConfigure = !!ctx.top.permissions?.configureCameras;
  const body = h('div', {class: 'settings'});
  const stale = h('p', {class: 'form-error settings-stale', role: 'status', hidden: true});
  main.append(h('div', {class: 'toolbar'}, h('h1', {style: {margin: 0, flex: 1}}, 'Settings'),
    h('button', {type: 'button', class: 'button primary', hidden: !canConfigure,
                 onclick: () => cameraWizard()}, '+ Add camera')), stale, body);
  if (!canConfigure) {
    body.append(h('div', {class: 'page-message', role: 'alert'},
      'Only users with the configureCameras permission can see this page.'));
    return;
  }

  let cfg = null;          // the last GET /api/config/ answer
  let shape = null;        // its configuration without status and free space
  let loading = false;
  let again = false;
  let timer = null;

  async function load({quiet = false} = {}) {
    // One request at a time; a load asked for meanwhile (after a save) runs after it, so
    // the page never stays on an answer from before the change.
    if (loading) { again = true; return; }
    loading = true;
    if (!quiet) body.setAttribute('aria-busy', 'true');
    try {
      const next = await api.get('/api/config/', {signal: ctx.signal});
      const nextShape = shapeOf(next);
      cfg = next;
      stale.hidden = true;
      if (nextShape !== shape) { shape = nextShape; draw(); } else updateLive();
    } catch (e) {
      if (e.name === 'AbortError') return;
      // The status below is as of the last answer: say so rather than show it as live.
      stale.hidden = !cfg;
      stale.textContent = `The status below is not being updated: ${e.message}`;
      if (!quiet || !cfg) showError(e, 'Settings');
      if (!cfg) replace(body, h('div', {class: 'page-message form-error'}, e.message));
    } finally {
      loading = false;
      body.removeAttribute('aria-busy');
      if (again && !ctx.signal.aborted) { again = false; load({quiet: true}); }
    }
  }

  /** The part of the answer that decides the DOM: changes redraw the page. */
  function shapeOf(c) {
    return JSON.stringify({
      cameras: c.cameras.map(cam => ({...cam, streams: Object.fromEntries(
        Object.entries(cam.streams || {}).map(([t, s]) => [t, {...s, status: undefined, fsBytes: undefined}]))})),
      dirs: c.dirs.map(d => ({...d, freeBytes: undefined, usedBytes: undefined, totalBytes: undefined,
                              freeSpaceFloorBytes: undefined}))});
  }

  const dirById = id => cfg.dirs.find(d => d.id === id);

  function draw() {
    const cams = [...cfg.cameras].sort((a, b) => a.shortName.localeCompare(b.shortName));
    replace(body,
      h('section', {'aria-label': 'Cameras'},
        cams.length ? cams.map(cameraCard)
          : h('div', {class: 'page-message'}, 'There are no cameras yet: "+ Add camera" adds one.')),
      dirsSection());
    updateLive();
  }

  function cameraCard(cam) {
    const types = STREAM_TYPES.filter(t => cam.streams?.[t]);
    const free = STREAM_TYPES.filter(t => !cam.streams?.[t]);
    return h('div', {class: 'card camera-card', dataset: {cameraId: String(cam.id), shortName: cam.shortName}},
      h('div', {class: 'toolbar'},
        h('h2', {style: {margin: 0, flex: 1}}, cam.shortName,
          cam.description ? h('span', {class: 'muted', style: {fontWeight: 400}}, ` — ${cam.description}`) : null),
        h('button', {type: 'button', class: 'button small', 'aria-label': `Edit camera ${cam.shortName}`,
                     onclick: () => cameraDialog(cam)}, 'Edit'),
        free.length ? h('button', {type: 'button', class: 'button small',
                                   'aria-label': `Add a stream to ${cam.shortName}`,
                                   onclick: () => streamDialog(cam, free[0], null)}, '+ Stream') : null,
        h('button', {type: 'button', class: 'button small', 'aria-label': `Delete camera ${cam.shortName}`,
                     onclick: () => deleteCamera(cam)}, 'Delete')),
      h('p', {class: 'muted settings-note'},
        cam.username ? `User ${cam.username}, password ${cam.passwordSet ? 'set' : 'not set'}`
                     : (cam.passwordSet ? 'Password set, no username' : 'No credentials'),
        cam.onvifBaseUrl ? `; ONVIF ${cam.onvifBaseUrl}` : ''),
      types.length ? h('div', {class: 'table-wrap'}, h('table', {class: 'settings-table', 'aria-label': `Streams of ${cam.shortName}`},
        h('thead', null, h('tr', null, ['Stream', 'State', 'Last frame', 'fps', 'Bitrate', 'Run',
          'Recording to', 'Last error', ''].map((x, i) => h('th', {class: i >= 2 && i <= 5 ? 'num' : null}, x)))),
        h('tbody', null, types.map(t => streamRow(cam, t, cam.streams[t])))))
        : h('p', {class: 'muted'}, 'No streams.'));
  }

  function streamRow(cam, type, s) {
    const d = s.sampleFileDirId !== null && s.sampleFileDirId !== undefined ? dirById(s.sampleFileDirId) : null;
    const limits = [s.retainBytes ? `${bytes(s.retainBytes)}` : null,
                    s.retainDays ? `${s.retainDays} days` : null].filter(Boolean).join(', ') || 'no limit';
    const name = `${cam.shortName} ${type}`;
    return h('tr', {dataset: {streamId: String(s.id), streamType: type}},
      h('th', {scope: 'row'}, type, h('div', {class: 'muted settings-url', title: s.url}, s.url || 'no URL')),
      h('td', {'data-label': 'State', dataset: {field: 'state'}}),
      h('td', {class: 'num nowrap', 'data-label': 'Last frame', dataset: {field: 'lastFrame'}}),
      h('td', {class: 'num', 'data-label': 'fps', dataset: {field: 'fps'}}),
      h('td', {class: 'num nowrap', 'data-label': 'Bitrate', dataset: {field: 'bitrate'}}),
      h('td', {class: 'num nowrap', 'data-label': 'Run', dataset: {field: 'run'}}),
      h('td', {'data-label': 'Recording to'}, s.record ? null : h('span', {class: 'chip'}, 'not recorded'),
        d ? d.path : (s.record ? '—' : null),
        h('div', {class: 'muted settings-note'}, `keep ${limits}`)),
      h('td', {class: 'settings-error', 'data-label': 'Last error', dataset: {field: 'lastError'}}),
      h('td', {class: 'nowrap'},
        h('button', {type: 'button', class: 'button small', 'aria-label': `Edit stream ${name}`,
                     onclick: () => streamDialog(cam, type, s)}, 'Edit'), ' ',
        h('button', {type: 'button', class: 'button small', 'aria-label': `Delete stream ${name}`,
                     onclick: () => deleteStream(cam, type)}, 'Delete')));
  }

  /** Fills the status cells and dir figures from `cfg` (every refresh). */
  function updateLive() {
    for (const cam of cfg.cameras) {
      for (const [, s] of Object.entries(cam.streams || {})) {
        const tr = body.querySelector(`tr[data-stream-id="${s.id}"]`);
        if (tr) fillStatus(tr, s.status || {state: 'off'});
      }
    }
    for (const d of cfg.dirs) {
      const tr = body.querySelector(`tr[data-dir-id="${d.id}"]`);
      if (tr) fillDir(tr, d);
    }
  }

  function fillStatus(tr, st) {
    const cell = f => tr.querySelector(`[data-field="${f}"]`);
    const state = st.state || 'off';
    replace(cell('state'), h('span', {class: `chip state state-${state}`}, STATE_LABEL[state] || state));
    cell('state').dataset.state = state;
    replace(cell('lastFrame'), st.lastFrameAgeSec === null || st.lastFrameAgeSec === undefined
      ? '—' : `${fmtSpan(st.lastFrameAgeSec)} ago`);
    replace(cell('fps'), fmtFps(st.fps));
    replace(cell('bitrate'), fmtRate(st.bitrateBps));
    // The run's length on the server's clock: (last frame − run start) + the last frame's
    // age, so a browser whose clock is off doesn't skew it.
    let run = null;
    if (st.runStartSec !== null && st.runStartSec !== undefined && st.lastFrameSec !== null &&
        st.lastFrameSec !== undefined) run = st.lastFrameSec - st.runStartSec + (st.lastFrameAgeSec || 0);
    replace(cell('run'), run === null ? '—' : fmtSpan(run),
      st.runs ? h('div', {class: 'muted settings-note'}, `${st.runs} run${st.runs === 1 ? '' : 's'}`) : null);
    replace(cell('lastError'), st.lastError || '');
    cell('lastError').title = st.lastError || '';
  }

  // ---- sample file dirs ----
  function dirsSection() {
    return h('section', {class: 'card', 'aria-label': 'Sample file directories'},
      h('div', {class: 'toolbar'}, h('h2', {style: {margin: 0, flex: 1}}, 'Sample file directories'),
        h('button', {type: 'button', class: 'button small', onclick: () => dirDialog(null)}, '+ Add directory')),
      cfg.dirs.length ? h('div', {class: 'table-wrap'}, h('table', {class: 'settings-table', 'aria-label': 'Sample file directories'},
        h('thead', null, h('tr', null, ['Id', 'Path', 'Used by nvr', 'Free', 'Size', 'Free space floor',
          'Streams', ''].map((x, i) => h('th', {class: [0, 2, 3, 4].includes(i) ? 'num' : null}, x)))),
        h('tbody', null, cfg.dirs.map(d => h('tr', {dataset: {dirId: String(d.id)}},
          h('td', {class: 'num', 'data-label': 'Id'}, String(d.id)),
          h('td', {'data-label': 'Path'}, d.path, d.open === false ? h('span', {class: 'chip warn'}, 'not open') : null),
          h('td', {class: 'num', 'data-label': 'Used by nvr', dataset: {field: 'usedBytes'}}),
          h('td', {class: 'num', 'data-label': 'Free', dataset: {field: 'freeBytes'}}),
          h('td', {class: 'num', 'data-label': 'Size', dataset: {field: 'totalBytes'}}),
          h('td', {'data-label': 'Free space floor', dataset: {field: 'floor'}}),
          h('td', {'data-label': 'Streams'}, streamNames(d.streamIds || []) || h('span', {class: 'muted'}, 'none')),
          h('td', {class: 'nowrap'},
            h('button', {type: 'button', class: 'button small', 'aria-label': `Edit directory ${d.path}`,
                         onclick: () => dirDialog(d)}, 'Edit'), ' ',
            h('button', {type: 'button', class: 'button small', 'aria-label': `Delete directory ${d.path}`,
                         onclick: () => deleteDir(d)}, 'Delete')))))))
        : h('p', {class: 'muted'}, 'No directories: add one before recording.'));
  }

  function streamNames(ids) {
    const names = [];
    for (const cam of cfg.cameras) for (const [t, s] of Object.entries(cam.streams || {}))
      if (ids.includes(s.id)) names.push(`${cam.shortName} ${t}`);
    return names.join(', ');
  }

  function fillDir(tr, d) {
    const cell = f => tr.querySelector(`[data-field="${f}"]`);
    for (const f of ['usedBytes', 'freeBytes', 'totalBytes']) {
      replace(cell(f), bytes(d[f]));
      cell(f).dataset.value = d[f] ?? '';
    }
    replace(cell('floor'), d.freeSpaceFloor ?? bytes(d.freeSpaceFloorBytes));
    cell('floor').title = d.freeSpaceFloorBytes === undefined || d.freeSpaceFloorBytes === null ? ''
      : `${bytes(d.freeSpaceFloorBytes)} kept free now`;
  }

  function dirDialog(prior) {
    const title = prior ? `Edit directory ${prior.path}` : 'Add a sample file directory';
    const c = prior?.config || {};
    const floorText = c.freeSpaceFloorPercent !== undefined ? `${c.freeSpaceFloorPercent}%`
      : c.freeSpaceFloorBytes !== undefined ? sizeText(c.freeSpaceFloorBytes) : '';
    const err = h('p', {class: 'form-error', role: 'alert', hidden: true});
    const form = h('form', {class: 'form', method: 'dialog'},
      h('h2', null, title),
      prior ? h('p', {class: 'dialog-note'},
        'Moving: give the path where this directory now is (e.g. its disk mounted elsewhere). ',
        'nvr checks that the directory there is this one; its recordings stay.') : null,
      h('label', null, 'Path', h('input', {name: 'path', required: true, value: prior?.path ?? '',
                                           autocomplete: 'off', placeholder: '/media/nvr/sample'})),
      h('label', null, 'Free space floor',
        h('input', {name: 'floor', value: floorText, autocomplete: 'off', placeholder: 'default'}),
        h('span', {class: 'muted settings-note'},
          'Keep this much free on the filesystem: a size (5G) or a percentage (3%); empty: the default.')),
      err,
      h('div', {class: 'actions'},
        h('button', {type: 'button', class: 'button', onclick: () => d.close()}, 'Cancel'),
        h('button', {type: 'submit', class: 'button primary'}, prior ? 'Save' : 'Add')));
    form.addEventListener('submit', async ev => {
      ev.preventDefault();
      err.hidden = true;
      const req = {};
      const path = form.path.value.trim();
      if (!prior || path !== prior.path) req.path = path;
      const f = form.floor.value.trim();
      if (f.endsWith('%')) {
        const p = Number(f.slice(0, -1));
        if (!(f.length > 1 && p >= 0 && p <= 50)) return fail(err, 'The floor percentage must be from 0% to 50%.');
        req.freeSpaceFloorPercent = p;
      } else if (f) {
        const b = parseSize(f);
        if (isNaN(b)) return fail(err, `Bad size "${f}": use bytes or a number with K, M, G or T (e.g. 5G).`);
        req.freeSpaceFloorBytes = b;
      } else if (prior && (c.freeSpaceFloorPercent !== undefined || c.freeSpaceFloorBytes !== undefined)) {
        req.freeSpaceFloorBytes = null;
        req.freeSpaceFloorPercent = null;
      }
      await submitting(form, async () => {
        try {
          if (prior) await api.patch(`/api/config/dirs/${prior.id}`, req);
          else await api.post('/api/config/dirs', req);
          d.close();
          snackbar(prior ? `Saved directory ${path}.` : `Added directory ${path}.`);
          load();
        } catch (e) {
          fail(err, reasonOf(e));
        }
      });
    });
    const d = modal(form, {label: title});
    form.path.focus();
  }

  async function deleteDir(dir) {
    if (!await confirmDialog(`Delete directory ${dir.path}?`,
      'nvr forgets this directory; the files in it stay on disk. A directory that a stream records into can\'t be deleted.',
      {confirmLabel: 'Delete', danger: true})) return;
    try {
      await api.del(`/api/config/dirs/${dir.id}`);
      snackbar(`Deleted directory ${dir.path}.`);
      load();
    } catch (e) {
      showError({message: reasonOf(e)}, `Deleting ${dir.path}`);
    }
  }

  // ---- cameras and streams ----
  async function deleteWithConfirmation(what, url, body = {}) {
    if (!await confirmDialog(`Delete ${what}?`, `This can't be undone.`,
                             {confirmLabel: 'Delete', danger: true})) return null;
    try {
      return await api.del(url, body);
    } catch (e) {
      if (e.status !== 409) throw e;
      // The server says what would go (recordings: how many, how big).
      if (!await confirmDialog(`Delete ${what} and its recordings?`, reasonOf(e),
                               {confirmLabel: 'Delete recordings too', danger: true})) return null;
      return await api.del(url, {...body, deleteRecordings: true});
    }
  }

  async function deleteCamera(cam) {
    try {
      const r = await deleteWithConfirmation(`camera ${cam.shortName}`, `/api/config/cameras/${cam.id}`);
      if (r === null) return;
      snackbar(`Deleted camera ${cam.shortName}` +
               (r?.deletedRecordings ? ` and ${r.deletedRecordings} recordings.` : '.'));
      load();
    } catch (e) {
      showError({message: reasonOf(e)}, `Deleting ${cam.shortName}`);
    }
  }

  async function deleteStream(cam, type) {
    try {
      const r = await deleteWithConfirmation(`stream ${cam.shortName} ${type}`,
                                             `/api/config/cameras/${cam.id}/streams/${type}`);
      if (r === null) return;
      snackbar(`Deleted stream ${cam.shortName} ${type}` +
               (r?.deletedRecordings ? ` and ${r.deletedRecordings} recordings.` : '.'));
      load();
    } catch (e) {
      showError({message: reasonOf(e)}, `Deleting ${cam.shortName} ${type}`);
    }
  }

  function cameraDialog(cam) {
    const title = `Edit camera ${cam.shortName}`;
    const err = h('p', {class: 'form-error', role: 'alert', hidden: true});
    const form = h('form', {class: 'form', method: 'dialog'},
      h('h2', null, title),
      h('label', null, 'Name', h('input', {name: 'shortName', required: true, value: cam.shortName, autocomplete: 'off'})),
      h('label', null, 'Description', h('input', {name: 'description', value: cam.description ?? '', autocomplete: 'off'})),
      h('label', null, 'ONVIF base URL', h('input', {name: 'onvifBaseUrl', value: cam.onvifBaseUrl ?? '', autocomplete: 'off'})),
      credentialFields(cam),
      err,
      h('div', {class: 'actions'},
        h('button', {type: 'button', class: 'button', onclick: () => d.close()}, 'Cancel'),
        h('button', {type: 'submit', class: 'button primary'}, 'Save')));
    form.addEventListener('submit', async ev => {
      ev.preventDefault();
      err.hidden = true;
      const req = {};
      for (const k of ['shortName', 'description', 'onvifBaseUrl', 'username']) {
        const v = form[k].value.trim();
        if (v !== (cam[k] ?? '')) req[k] = v;
      }
      Object.assign(req, passwordChange(form));
      await submitting(form, async () => {
        try {
          await api.patch(`/api/config/cameras/${cam.id}`, req);
          d.close();
          snackbar(`Saved camera ${req.shortName ?? cam.shortName}.`);
          load();
        } catch (e) {
          fail(err, reasonOf(e));
        }
      });
    });
    const d = modal(form, {label: title});
    form.shortName.focus();
  }

  /** Username and password inputs; with `cam`, an empty password keeps the stored one. */
  function credentialFields(cam) {
    return h('fieldset', null, h('legend', null, 'Camera login'),
      h('label', null, 'Username', h('input', {name: 'username', value: cam?.username ?? '', autocomplete: 'off',
                                               autocapitalize: 'none'})),
      h('label', null, 'Password', h('input', {name: 'password', type: 'password', autocomplete: 'new-password',
        placeholder: cam?.passwordSet ? 'unchanged' : ''})),
      cam?.passwordSet ? [
        h('span', {class: 'muted settings-note'}, 'A password is set; leave the field empty to keep it.'),
        h('label', {class: 'check'}, h('input', {type: 'checkbox', name: 'clearPassword'}), 'Clear the password')] : null);
  }

  function passwordChange(form) {
    if (form.clearPassword?.checked) return {password: null};
    return form.password.value ? {password: form.password.value} : {};
  }

  /** The stream test UI: a Test button, the in-progress state, then the result.
   *  `request()` gives the test's request body (or throws an Error to show).
   *  `onResult(json)` gets streamtest's JSON (ok true or false). */
  function testPanel(request, onResult) {
    const button = h('button', {type: 'button', class: 'button'}, 'Test');
    const progress = h('span', {class: 'test-progress', hidden: true},
      h('span', {class: 'spinner', 'aria-hidden': 'true'}), ` Testing… up to ${TEST_LIMIT_SEC} s`);
    const out = h('div', {class: 'test-result', 'aria-live': 'polite'});
    const panel = h('div', {class: 'test-panel'}, h('div', {class: 'toolbar', style: {marginBottom: 0}}, button, progress), out);
    let seq = 0;
    button.addEventListener('click', async () => {
      let req;
      try { req = request(); } catch (e) { replace(out, h('p', {class: 'form-error', role: 'alert'}, e.message)); return; }
      const mine = ++seq;
      button.disabled = true;
      progress.hidden = false;
      panel.setAttribute('aria-busy', 'true');
      replace(out);
      try {
        const r = await api.post('/api/config/test-stream', req);
        if (mine !== seq) return;
        replace(out, r.ok ? testDetails(r) : testFailure(r));
        onResult(r);
      } catch (e) {
        if (mine !== seq) return;
        replace(out, h('p', {class: 'form-error test-error', role: 'alert'}, reasonOf(e)));
        onResult(null);
      } finally {
        if (mine === seq) {
          button.disabled = false;
          progress.hidden = true;
          panel.removeAttribute('aria-busy');
        }
      }
    });
    return panel;
  }

  function testDetails(r) {
    const par = r.pixelAspectRatio && (r.pixelAspectRatio[0] !== r.pixelAspectRatio[1])
      ? `, pixel aspect ratio ${r.pixelAspectRatio[0]}:${r.pixelAspectRatio[1]}, shown as ${r.displayWidth}×${r.displayHeight}` : '';
    const gop = r.gopFrames !== null && r.gopFrames !== undefined
      ? `every ${r.gopFrames} frames (${r.gopSec.toFixed(2)} s)`
      : `over ${(r.gopMinSec || 0).toFixed(1)} s apart`;
    const row = (field, label, value) => [h('dt', null, label), h('dd', {dataset: {field}}, value)];
    return h('div', {class: 'test-ok', dataset: {ok: 'true'}},
      r.snapshotJpeg ? h('img', {class: 'test-snapshot', alt: `Snapshot from the camera, ${r.displayWidth}×${r.displayHeight}`,
                                 src: `data:image/jpeg;base64,${r.snapshotJpeg}`}) : null,
      h('dl', {class: 'test-details'},
        row('codec', 'Codec', `${r.codec === 'h265' ? 'H.265' : 'H.264'} (${r.rfc6381Codec})`),
        row('profile', 'Profile, level', `${r.profile}, level ${r.level}`),
        row('size', 'Size', `${r.width}×${r.height}${par}`),
        row('frameRate', 'Frame rate', r.frameRate === null ? '—' : `${fmtFps(r.frameRate)} fps`),
        row('bitrate', 'Bitrate', fmtRate(r.bitrateBps)),
        row('gop', 'Key frames', gop),
        row('browser', 'Plays in a browser', r.browser)),
      r.browserNote ? h('p', {class: 'muted settings-note', dataset: {field: 'browserNote'}},
                        `Browser playback: ${r.browserNote}.`) : null,
      (r.warnings || []).map(w => h('p', {class: 'form-error'}, `Warning: ${w}`)),
      h('p', {class: 'muted settings-note'}, `Tested in ${Number(r.elapsedSec).toFixed(1)} s.`));
  }

  function testFailure(r) {
    return h('div', {class: 'test-failed', dataset: {ok: 'false', error: r.error || ''}},
      h('p', {class: 'form-error test-error', role: 'alert'}, r.message),
      r.detail ? h('p', {class: 'muted settings-note'}, `Details: ${r.detail}`) : null);
  }

  /** The RTSP transport select (STREAM_IN's rtspTransport; "" stored means default). */
  function transportSelect(s) {
    return h('label', null, 'RTSP transport', h('select', {name: 'rtspTransport'},
      TRANSPORTS.map(([v, label]) => h('option', {value: v, selected: (s ? s.rtspTransport || 'default' : 'tcp') === v}, label))));
  }

  /** Inputs of a stream's settings (STREAM_IN) but its URL and transport; `s` is the
   *  stream being edited or null. */
  function streamFields(s, {typeChoices = null} = {}) {
    const dirs = cfg.dirs;
    const defaultDir = s?.sampleFileDirId ?? (dirs.length === 1 ? dirs[0].id : null);
    const hint = h('span', {class: 'muted settings-note', dataset: {field: 'historyHint'}});
    const el = h('fieldset', null, h('legend', null, 'Stream'),
      typeChoices ? h('label', null, 'Type', h('select', {name: 'streamType'},
        typeChoices.map(t => h('option', {value: t}, t === 'main' ? 'main (full size)' : t === 'sub' ? 'sub (smaller picture)' : t)))) : null,
      h('label', {class: 'check'}, h('input', {type: 'checkbox', name: 'record', checked: s ? !!s.record : true}), 'Record'),
      h('label', null, 'Directory', h('select', {name: 'sampleFileDirId'},
        h('option', {value: '', selected: defaultDir === null}, 'none'),
        dirs.map(d => h('option', {value: String(d.id), selected: d.id === defaultDir}, d.path)))),
      h('label', null, 'Keep at most (bytes)', h('input', {name: 'retainBytes', autocomplete: 'off',
        value: s ? sizeText(s.retainBytes) : '10G', placeholder: 'e.g. 100G; 0 for no byte limit'}), hint),
      h('label', null, 'Keep at most (days)', h('input', {name: 'retainDays', type: 'number', min: '0', step: 'any',
        value: s?.retainDays ?? '', placeholder: 'no age limit'})),
      h('label', null, 'Commit within (seconds)', h('input', {name: 'flushIfSec', type: 'number', min: '0', step: '1',
        value: s?.flushIfSec ?? '', placeholder: 'default'})));
    let bitrate = s?.status?.bitrateBps ?? null;
    const updateHint = () => {
      const b = parseSize(el.querySelector('[name=retainBytes]').value);
      const days = historyDays(b, bitrate);
      hint.textContent = isNaN(b) ? 'Use bytes or a number with K, M, G or T (e.g. 100G).'
        : days === null ? (bitrate ? '' : 'Test the stream to see how many days this holds.')
        : `At the measured ${fmtRate(bitrate)} this holds about ${fmtDays(days)} of history.`;
      hint.dataset.days = days === null ? '' : String(days);
    };
    el.querySelector('[name=retainBytes]').addEventListener('input', updateHint);
    updateHint();
    return {el, setBitrate: b => { bitrate = b; updateHint(); }};
  }

  /** The STREAM_IN object from streamFields' inputs (throws an Error for bad input). */
  function streamIn(form, url) {
    const out = {url, record: form.record.checked, rtspTransport: form.rtspTransport.value};
    out.sampleFileDirId = form.sampleFileDirId.value ? Number(form.sampleFileDirId.value) : null;
    const b = parseSize(form.retainBytes.value);
    if (isNaN(b)) throw new Error(`Bad size "${form.retainBytes.value}": use bytes or a number with K, M, G or T (e.g. 100G).`);
    out.retainBytes = b ?? 0;
    const days = form.retainDays.value.trim();
    out.retainDays = days === '' ? null : Number(days);
    if (out.retainDays !== null && !(out.retainDays >= 0)) throw new Error('Days must be 0 or more (empty: no age limit).');
    if (form.flushIfSec.value.trim() !== '') out.flushIfSec = Number(form.flushIfSec.value);
    if (out.record && out.sampleFileDirId === null) throw new Error('A recorded stream needs a directory: add one under "Sample file directories".');
    if (out.record && !out.retainBytes && !out.retainDays) throw new Error('A recorded stream needs a limit: bytes, days or both.');
    return out;
  }

  /** Add camera: name, URL, credentials → Test → stream settings → Save. */
  function cameraWizard() {
    const title = 'Add camera';
    const err = h('p', {class: 'form-error', role: 'alert', hidden: true});
    const fields = streamFields(null, {typeChoices: ['main', 'sub', 'ext']});
    const form = h('form', {class: 'form', method: 'dialog'},
      h('h2', null, title),
      h('label', null, 'Name', h('input', {name: 'shortName', required: true, autocomplete: 'off', placeholder: 'e.g. driveway'})),
      h('label', null, 'Description', h('input', {name: 'description', autocomplete: 'off'})),
      h('label', null, 'RTSP URL', h('input', {name: 'url', required: true, autocomplete: 'off', autocapitalize: 'none',
        placeholder: 'rtsp://192.168.1.10:554/stream1', spellcheck: 'false'})),
      transportSelect(null),
      credentialFields(null),
      testPanel(() => {
        const url = form.url.value.trim();
        if (!url) throw new Error('Give the RTSP URL to test.');
        const req = {url, rtspTransport: form.rtspTransport.value};
        if (form.username.value) req.username = form.username.value;
        if (form.password.value) req.password = form.password.value;
        return req;
      }, r => fields.setBitrate(r?.ok ? r.bitrateBps : null)),
      fields.el,
      err,
      h('div', {class: 'actions'},
        h('button', {type: 'button', class: 'button', onclick: () => d.close()}, 'Cancel'),
        h('button', {type: 'submit', class: 'button primary'}, 'Save')));
    form.addEventListener('submit', async ev => {
      ev.preventDefault();
      err.hidden = true;
      let req;
      try {
        const type = form.streamType.value;
        req = {shortName: form.shortName.value.trim(), description: form.description.value.trim(),
               streams: {[type]: streamIn(form, form.url.value.trim())}};
        if (form.username.value) req.username = form.username.value;
        if (form.password.value) req.password = form.password.value;
      } catch (e) {
        return fail(err, e.message);
      }
      await submitting(form, async () => {
        try {
          await api.post('/api/config/cameras', req);
          d.close();
          snackbar(`Added camera ${req.shortName}.`);
          load();
        } catch (e) {
          fail(err, reasonOf(e));
        }
      });
    });
    const d = modal(form, {label: title, className: 'wide-dialog'});
    form.shortName.focus();
  }

  /** Add (s null) or edit a stream of `cam`. */
  function streamDialog(cam, type, s) {
    const title = s ? `Edit stream ${cam.shortName} ${type}` : `Add a stream to ${cam.shortName}`;
    const err = h('p', {class: 'form-error', role: 'alert', hidden: true});
    const free = STREAM_TYPES.filter(t => !cam.streams?.[t]);
    const fields = streamFields(s, {typeChoices: s ? null : free});
    const form = h('form', {class: 'form', method: 'dialog'},
      h('h2', null, title),
      h('label', null, 'RTSP URL', h('input', {name: 'url', required: true, autocomplete: 'off', autocapitalize: 'none',
        value: s?.url ?? '', spellcheck: 'false'})),
      transportSelect(s),
      h('p', {class: 'muted settings-note'}, 'The camera\'s login (Edit camera) is used.'),
      testPanel(() => {
        const url = form.url.value.trim();
        if (!url) throw new Error('Give the RTSP URL to test.');
        // The camera's stored credentials, through one of its streams (this one, or for a
        // new stream an existing one); the URL and transport typed here override its own.
        const via = s ? type : STREAM_TYPES.find(t => cam.streams?.[t]);
        return via ? {cameraId: cam.id, streamType: via, url, rtspTransport: form.rtspTransport.value}
                   : {url, rtspTransport: form.rtspTransport.value};
      }, r => fields.setBitrate(r?.ok ? r.bitrateBps : (s?.status?.bitrateBps ?? null))),
      fields.el,
      err,
      h('div', {class: 'actions'},
        h('button', {type: 'button', class: 'button', onclick: () => d.close()}, 'Cancel'),
        h('button', {type: 'submit', class: 'button primary'}, s ? 'Save' : 'Add')));
    form.addEventListener('submit', async ev => {
      ev.preventDefault();
      err.hidden = true;
      let body, t;
      try {
        t = s ? type : form.streamType.value;
        body = streamIn(form, form.url.value.trim());
      } catch (e) {
        return fail(err, e.message);
      }
      const url = `/api/config/cameras/${cam.id}/streams/${t}`;
      await submitting(form, async () => {
        try {
          if (!s) {
            await api.post(url, body);
          } else {
            try {
              await api.patch(url, body);
            } catch (e) {
              if (e.status !== 409) throw e;
              // A lower limit would delete recordings now: the server's message says how many.
              if (!await confirmDialog('Delete recordings?', reasonOf(e),
                                       {confirmLabel: 'Delete recordings', danger: true})) return;
              await api.patch(url, {...body, deleteRecordings: true});
            }
          }
          d.close();
          snackbar(s ? `Saved stream ${cam.shortName} ${t}.` : `Added stream ${cam.shortName} ${t}.`);
          load();
        } catch (e) {
          fail(err, reasonOf(e));
        }
      });
    });
    const d = modal(form, {label: title, className: 'wide-dialog'});
    form.url.focus();
  }

  load();
  timer = setInterval(() => { if (!document.hidden) load({quiet: true}); }, REFRESH_MS);
  return () => clearInterval(timer);
}

function fail(err, message) {
  err.hidden = false;
  err.textContent = message;
}

/** Runs `fn` with the form's submit button disabled. */
async function submitting(form, fn) {
  const submit = form.querySelector('[type=submit]');
  submit.disabled = true;
  try { await fn(); } finally { submit.disabled = false; }
}
