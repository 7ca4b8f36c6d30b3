// System (#/system): how nvr is doing, for a person, from `GET /api/system` (system.py;
// docs/api.md): each stream's state (recording since when; connecting or reconnecting
// since when; failing, with the last error), its frame rate and bitrate against what its
// recordings of the last day (or its SPS) lead to expect, each disk's use and free space
// against its floor, the last flush, uptime and versions. It asks again every
// REFRESH_MS while shown (not while the tab is hidden), and keeps the last answer up
// if a refresh fails, saying so.
//
// Ages ("12 s ago") are reckoned from the server's `nowSec`, not the browser's clock; times
// are in the server's zone. Each stream row carries data-state, and each figure's cell
// its raw number in data-value, for tests.

import * as api from './api.js';
import {h, icon, replace} from './dom.js';
import {bytes} from './format.js';
import {TICKS, dateTime90k} from './time.js';

export const REFRESH_MS = 3000;

// A measured frame rate this far (as a fraction) from the expected one is flagged; a
// bitrate under half or over twice the expected one (a variable bitrate swings with the
// scene, so the 10 s measurement strays further from the day's average than fps does).
const FPS_TOLERANCE = 0.25;
const BITRATE_FACTOR = 2;

const at = sec => dateTime90k(Math.round(sec * TICKS));

/** "0.4 s", "12 s", "5 min", "3 h 10 min", "2 d 4 h". */
export function duration(sec) {
  if (sec === null || sec === undefined) return '—';
  if (sec < 10) return `${Math.max(0, sec).toFixed(1)} s`;
  if (sec < 90) return `${Math.round(sec)} s`;
  const m = Math.round(sec / 60);
  if (m < 60) return `${m} min`;
  const hr = Math.floor(m / 60);
  if (hr < 48) return m % 60 ? `${hr} h ${m % 60} min` : `${hr} h`;
  const d = Math.floor(hr / 24);
  return hr % 24 ? `${d} d ${hr % 24} h` : `${d} d`;
}

const fmtFps = f => f === null || f === undefined ? '—'
  : Math.abs(f - Math.round(f)) < 0.05 ? String(Math.round(f)) : f.toFixed(1);
const fmtMbps = b => b === null || b === undefined ? '—' : (b / 1e6).toFixed(2);

/** The state as a person says it: [headline, detail or null]. */
export function describeState(st, doc) {
  const since = st.sinceSec !== null && st.sinceSec !== undefined ? ` since ${at(st.sinceSec)}` : '';
  switch (st.state) {
    case 'recording':
      return [`Recording since ${at(st.runStartSec ?? st.sinceSec)}`, null];
    case 'connecting':
      // A first attempt is "connecting"; one after a run or a failure, "reconnecting".
      return [(st.runs > 0 || st.lastError ? 'Reconnecting' : 'Connecting') + since,
              st.lastError ? `Last error: ${st.lastError}` : null];
    case 'failing':
      return [`Failing${since}`, st.lastError || null];
    default:
      return [doc.recording ? 'Off (not recorded)' : 'Off (nvr is not recording)', null];
  }
}

function fpsOffBy(measured, expected) {
  return measured !== null && measured !== undefined && expected > 0 &&
    Math.abs(measured - expected) > FPS_TOLERANCE * expected;
}

function bitrateOffBy(measured, expected) {
  return measured !== null && measured !== undefined && expected > 0 &&
    (measured * BITRATE_FACTOR < expected || measured > expected * BITRATE_FACTOR);
}

export function render(main, ctx) {
  const updated = h('span', {class: 'muted system-updated', 'aria-live': 'polite'});
  const refresh = h('button', {type: 'button', class: 'button small', onclick: () => load()},
                    icon('refresh'), ' Refresh');
  const body = h('div', null, h('div', {class: 'page-message'}, 'Loading…'));
  main.append(h('div', {class: 'toolbar'}, h('h1', {style: {margin: 0, flex: 1}}, 'System'),
                updated, refresh), body);
  let timer = null;
  let stopped = false;
  let loading = false;
  let lastDoc = null;

  function schedule() {
    clearTimeout(timer);
    if (!stopped && !document.hidden) timer = setTimeout(load, REFRESH_MS);
  }

  async function load() {
    if (loading || stopped) return;
    loading = true;
    clearTimeout(timer);
    try {
      const doc = await api.get('/api/system', {signal: ctx.signal});
      if (stopped) return;
      lastDoc = doc;
      draw(doc);
      updated.textContent = `Updated ${at(doc.nowSec).slice(11)}`;
      updated.classList.remove('error');
    } catch (e) {
      if (e.name === 'AbortError' || stopped) return;
      // Keep the last answer up; say the refresh failed (nvr restarting, network down).
      updated.textContent = `Couldn't refresh: ${e.message}`;
      updated.classList.add('error');
      if (!lastDoc) replace(body, h('div', {class: 'page-message'}, e.message));
    } finally {
      loading = false;
      schedule();
    }
  }

  const onVisibility = () => { if (!document.hidden) load(); else clearTimeout(timer); };
  document.addEventListener('visibilitychange', onVisibility);

  function cell(field, value, text, cls = 'num') {
    return h('td', {class: cls, dataset: {field, value: value === null || value === undefined ? '' : String(value)}},
             text);
  }

  /** A measured rate's cell; `warning` (or null) becomes its title and flags it. */
  function rateCell(field, value, warning, text) {
    const td = cell(field, value, text);
    if (warning) { td.title = warning; td.classList.add('off'); }
    return td;
  }

  function streamsCard(doc) {
    if (!doc.streams.length) return h('div', {class: 'card'}, h('h2', null, 'Streams'),
                                      h('p', {class: 'muted'}, 'There are no streams.'));
    const rows = doc.streams.map(s => {
      const st = s.status, ex = s.expected;
      const [headline, detail] = describeState(st, doc);
      const live = st.state === 'recording';
      const fpsOff = live && fpsOffBy(st.fps, ex.fps);
      const bpsOff = live && bitrateOffBy(st.bitrateBps, ex.bitrateBps);
      const expectFps = ex.fps !== null ? `expected ${fmtFps(ex.fps)} (${ex.fpsFrom === 'sps' ? 'SPS' : 'last day'})` : '';
      const expectBps = ex.bitrateBps !== null ? `expected ${fmtMbps(ex.bitrateBps)} (last day)` : '';
      return h('tr', {dataset: {streamId: String(s.id), state: st.state}},
        h('th', {scope: 'row'}, `${s.cameraShortName} ${s.streamType}`),
        h('td', {class: 'state'},
          h('span', {class: `chip state-${st.state}`}, st.state),
          ' ', h('span', {class: 'state-text'}, headline),
          detail ? h('div', {class: 'state-error' + (st.state === 'failing' ? ' error' : ' muted')}, detail) : null),
        rateCell('fps', st.fps, fpsOff ? `measured ${fmtFps(st.fps)} fps is more than ${FPS_TOLERANCE * 100} % off the ${expectFps}` : null, [live ? `${fmtFps(st.fps)} fps` : '—',
             expectFps ? h('div', {class: 'muted small' + (fpsOff ? ' warn' : '')}, expectFps) : null]),
        rateCell('bitrateBps', st.bitrateBps, bpsOff ? `measured ${fmtMbps(st.bitrateBps)} Mbps is under half or over twice the ${expectBps}` : null, [live ? `${fmtMbps(st.bitrateBps)} Mbps` : '—',
             expectBps ? h('div', {class: 'muted small' + (bpsOff ? ' warn' : '')}, expectBps) : null]),
        cell('lastFrameAgeSec', st.lastFrameAgeSec,
             st.lastFrameAgeSec !== null && st.lastFrameAgeSec !== undefined ? `${duration(st.lastFrameAgeSec)} ago` : '—'),
        cell('runs', st.runs, String(st.runs ?? 0)),
        // The error the State cell already shows (failing, reconnecting): only its time.
        cell('lastError', st.lastError, st.lastError
          ? [detail ? null : st.lastError,
             st.lastErrorSec ? h('div', {class: detail ? null : 'muted small'},
                                 detail ? `at ${at(st.lastErrorSec)}` : at(st.lastErrorSec)) : null]
          : '—', 'last-error'));
    });
    return h('div', {class: 'card'}, h('h2', null, 'Streams'),
      h('div', {class: 'table-wrap'}, h('table', {'aria-label': 'Streams', class: 'system-streams'},
        h('thead', null, h('tr', null, ['Stream', 'State', 'Frame rate', 'Bitrate (Mbps)', 'Last frame', 'Runs', 'Last error']
          .map((x, i) => h('th', {class: i >= 2 && i <= 5 ? 'num' : null}, x)))),
        h('tbody', null, rows))));
  }

  function dirsCard(doc) {
    const rows = doc.dirs.map(d => {
      const low = d.freeBytes !== null && d.freeSpaceFloorBytes !== null && d.freeBytes < d.freeSpaceFloorBytes;
      const frac = d.totalBytes ? (d.totalBytes - d.freeBytes) / d.totalBytes : 0;
      return h('tr', {dataset: {dirId: String(d.id)}},
        h('th', {scope: 'row', class: 'path'}, d.path, d.open ? null : h('span', {class: 'chip'}, 'not open')),
        cell('usedBytes', d.usedBytes, bytes(d.usedBytes)),
        cell('freeBytes', d.freeBytes, d.freeBytes !== null ? bytes(d.freeBytes) : '—'),
        cell('totalBytes', d.totalBytes, d.totalBytes !== null ? bytes(d.totalBytes) : '—'),
        cell('freeSpaceFloorBytes', d.freeSpaceFloorBytes,
             [d.freeSpaceFloorBytes !== null ? bytes(d.freeSpaceFloorBytes) : '—',
              h('div', {class: 'muted small'}, d.freeSpaceFloor)]),
        h('td', null, h('div', {class: 'bar' + (low ? ' full' : ''), role: 'progressbar', 'aria-valuemin': '0',
                                'aria-valuemax': '100', 'aria-valuenow': String(Math.round(frac * 100)),
                                'aria-label': `Disk used: ${d.path}`},
                        h('div', {style: {width: `${Math.min(100, frac * 100)}%`}})),
          low ? h('div', {class: 'error small'}, 'Free space is below the floor: retention deletes the oldest recordings.') : null));
    });
    return h('div', {class: 'card'}, h('h2', null, 'Disks'),
      rows.length ? h('div', {class: 'table-wrap'}, h('table', {'aria-label': 'Sample file directories', class: 'system-dirs'},
        h('thead', null, h('tr', null, ['Directory', 'Used by nvr', 'Free', 'Size', 'Floor', 'Disk used']
          .map((x, i) => h('th', {class: i >= 1 && i <= 4 ? 'num' : null}, x)))),
        h('tbody', null, rows)))
        : h('p', {class: 'muted'}, 'There are no sample file directories.'));
  }

  function serverCard(doc) {
    const v = doc.versions, p = doc.process, f = doc.lastFlush, fe = doc.lastFlushError;
    const item = (field, label, ...value) => [h('dt', null, label), h('dd', {dataset: {field}}, ...value)];
    const flush = x => `${duration(doc.nowSec - x.timeSec)} ago (${at(x.timeSec)}), ` +
      `took ${(x.durationSec * 1000).toFixed(0)} ms: ${x.reason}`;
    return h('div', {class: 'card'}, h('h2', null, 'Server'),
      h('dl', {class: 'system-facts'},
        item('uptime', 'Up', `${duration(doc.uptimeSec)} (since ${at(doc.startSec)})`),
        item('lastFlush', 'Last flush', f ? flush(f) : 'none yet',
             h('span', {class: 'muted'}, ` · ${doc.flushes} since start`)),
        fe ? item('lastFlushError', 'Last failed flush', h('span', {class: 'error'}, `${flush(fe)}: ${fe.error}`),
                  h('span', {class: 'muted'}, ` · ${doc.flushErrors} since start`)) : null,
        item('process', 'Process', `${p.cpuSec.toFixed(1)} CPU s, ` +
             (p.rssBytes !== null ? `${bytes(p.rssBytes)} resident, ` : '') +
             (p.threads !== null ? `${p.threads} threads, ` : '') +
             (p.openFds !== null ? `${p.openFds} of ${p.maxFds} files open` : '')),
        item('versions', 'Versions', `nvr ${v.nvr} · Python ${v.python} · PyAV ${v.pyav} · ` +
             `FFmpeg ${v.ffmpeg} · SQLite ${v.sqlite} · argon2-cffi ${v.argon2Cffi}`)));
  }

  function draw(doc) {
    replace(body, streamsCard(doc), dirsCard(doc), serverCard(doc),
      h('p', {class: 'muted', style: {fontSize: '.85rem'}},
        'Frame rate and bitrate are measured over the last 10 s; "expected" is the average of the stream\'s ',
        'recordings of the last day, or the frame rate its SPS states when it has none. A stream is failing ',
        'after 3 failed attempts in a row or 30 s without a frame. Times are in ', ctx.top?.timeZoneName || 'the server\'s zone',
        '; this page refreshes every ', String(REFRESH_MS / 1000), ' s.'));
  }

  load();
  return () => {
    stopped = true;
    clearTimeout(timer);
    document.removeEventListener('visibilitychange', onVisibility);
  };
}
