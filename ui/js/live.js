// Live view (#/live): a grid of cells (layouts 1, 2, 2x2, main+5, 3x3), each playing
// one camera's main or sub stream from its `live.m4s` WebSocket (reference §5.3)
// through Media Source Extensions (ManagedMediaSource where the browser has that).
//
// The wire: each binary message is HTTP-style headers, a blank line, then a media
// segment (moof+mdat) holding one frame with baseMediaDecodeTime 0; text messages are
// JSON: {"type":"dropped","frames":N} (we were too slow; the server skipped to the
// next key frame) or {"type":"error","message":...} before the server closes.
// The first frame's `X-Video-Sample-Entry-Id` names the init segment to fetch from
// `/api/init/<id>.mp4`; its `Content-Type` (with codecs) creates the SourceBuffer.
// Each frame is placed right after the previous one with `timestampOffset`, its
// duration taken from `X-Media-Time-Range`. Appends go through one queue (never two
// at once: Firefox fails otherwise, Moonfire #343); the buffer is trimmed to the last
// few seconds; a viewer that falls behind (a hidden tab) jumps to the live edge.
// A closed socket reconnects with backoff (1 s doubling to 30 s, reset by a frame),
// with a fresh MediaSource: a new sample entry (after a camera or server restart)
// needs a new SourceBuffer anyway. Until video plays, and while paused, a cell shows
// the stream's latest key frame (`latest.jpg`) as the video's poster.
//
// The choice of layout and cells persists in localStorage and the URL:
//   #/live?layout=2x2&cams=<uuid>/sub,<uuid>/main,,

import * as api from './api.js';
import {h, icon, replace} from './dom.js';

const LAYOUTS = {'1': 1, '2': 2, '2x2': 4, 'main5': 6, '3x3': 9};
const LAYOUT_LABELS = {'1': '1', '2': '2', '2x2': '2×2', 'main5': 'Main + 5', '3x3': '3×3'};
const STORAGE_KEY = 'nvr.live';
const KEEP_SEC = 5;          // buffer kept behind the live edge
const TRIM_AFTER_SEC = 10;   // trim once the buffer is this long
const MAX_LAG_SEC = 3;       // jump to the live edge when further behind
const BACKOFF_SEC = [1, 2, 4, 8, 15, 30];

const MS = window.ManagedMediaSource || window.MediaSource;

export function render(main, ctx) {
  const cameras = (ctx.top.cameras || []).filter(c => c.streams?.main || c.streams?.sub);
  const saved = loadSaved(ctx.params, cameras);
  let layout = saved.layout;
  let cams = saved.cams;
  const players = [];

  const grid = h('div', {class: 'live-grid', role: 'region', 'aria-label': 'Live video'});
  const fsButton = h('button', {type: 'button', class: 'button small', onclick: () => toggleFullscreen(grid)},
                     icon('fullscreen'), ' Full screen');
  const layoutButtons = Object.keys(LAYOUTS).map(k => h('button', {type: 'button',
    'aria-pressed': String(k === layout), dataset: {layout: k}, onclick: () => { layout = k; save(); draw(); }},
    LAYOUT_LABELS[k]));
  main.append(
    h('div', {class: 'toolbar'}, h('h1', {style: {margin: 0, flex: 1}}, 'Live'),
      h('div', {class: 'segmented', role: 'group', 'aria-label': 'Layout'}, layoutButtons), fsButton),
    cameras.length ? grid : h('div', {class: 'page-message'}, 'There are no cameras with a main or sub stream.'));

  function save() {
    const n = LAYOUTS[layout];
    cams = cams.slice(0, 9);
    while (cams.length < n) cams.push('');
    localStorage.setItem(STORAGE_KEY, JSON.stringify({layout, cams}));
    const used = cams.slice(0, n);
    while (used.length && !used.at(-1)) used.pop();
    ctx.setParams({layout, cams: used.join(',')});
  }

  function draw() {
    for (const p of players.splice(0)) p.stop();
    revokePosters(grid);
    for (const b of layoutButtons) b.setAttribute('aria-pressed', String(b.dataset.layout === layout));
    grid.className = `live-grid layout-${layout}`;
    grid.replaceChildren();
    const n = LAYOUTS[layout];
    for (let i = 0; i < n; i++) grid.append(makeCell(i));
  }

  function makeCell(i) {
    const [uuid, type] = (cams[i] || '').split('/');
    const camera = cameras.find(c => c.uuid === uuid);
    const video = h('video', {muted: true, playsinline: true, autoplay: true, disablepictureinpicture: true,
                              'aria-label': camera ? `Live: ${camera.shortName} ${type}` : 'Empty cell'});
    video.muted = true;
    if ('disableRemotePlayback' in video) video.disableRemotePlayback = true;  // needed by ManagedMediaSource
    const status = h('div', {class: 'status', role: 'status'});
    const cell = h('div', {class: 'cell', dataset: {index: String(i), state: 'idle', connections: '0', frames: '0'}});
    const camSelect = h('select', {'aria-label': `Camera of cell ${i + 1}`, onchange: ev => {
      const c = cameras.find(x => x.uuid === ev.target.value);
      cams[i] = c ? `${c.uuid}/${c.streams.sub ? 'sub' : 'main'}` : '';
      save(); draw();
    }}, h('option', {value: ''}, '— none —'),
      cameras.map(c => h('option', {value: c.uuid, selected: c === camera}, c.shortName)));
    const typeSelect = h('select', {'aria-label': `Stream of cell ${i + 1}`, disabled: !camera, onchange: ev => {
      cams[i] = `${camera.uuid}/${ev.target.value}`;
      save(); draw();
    }}, ['main', 'sub'].map(t => h('option', {value: t, selected: t === type,
                                              disabled: !camera?.streams?.[t]}, t)));
    // Pause closes the WebSocket (nothing is sent while nobody watches); Play reopens it
    // and starts again at the latest key frame, as Moonfire's live view does.
    let player = null;
    const pauseButton = h('button', {type: 'button', class: 'pause-button', disabled: true,
                                     'aria-label': `Pause: cell ${i + 1}`, onclick: () => {
      if (!player) return;
      const pausing = !player.stopped;
      if (pausing) {
        player.stop();
        setStatus(cell, status, 'Paused: press Play to watch live again.', 'paused');
        refreshPoster(cell, video, camera, type);
      } else {
        player.start();
      }
      pauseButton.textContent = pausing ? 'Play' : 'Pause';
      pauseButton.setAttribute('aria-label', `${pausing ? 'Play' : 'Pause'}: cell ${i + 1}`);
    }}, 'Pause');
    cell.append(video, status, h('div', {class: 'cell-bar'}, camSelect, typeSelect, pauseButton,
      h('button', {type: 'button', class: 'icon-button', 'aria-label': `Full screen: cell ${i + 1}`,
                   onclick: () => toggleFullscreen(cell)}, icon('fullscreen'))));
    if (!camera) {
      status.textContent = cameras.length ? 'Choose a camera.' : '';
      return cell;
    }
    const stream = camera.streams[type];
    if (!stream) {
      setStatus(cell, status, `${camera.shortName} has no ${type} stream.`, 'error');
    } else if (stream.record === false) {
      setStatus(cell, status, `${camera.shortName} ${type} isn't recording; live view needs a recording stream ` +
                              '(nvr.py config stream edit … --record).', 'error');
    } else {
      const p = new LivePlayer(cell, video, status, camera, type);
      players.push(p);
      player = p;
      pauseButton.disabled = false;
      p.start();
      queueMicrotask(() => refreshPoster(cell, video, camera, type));  // once in the grid: sized
    }
    return cell;
  }

  const onFs = () => replace(fsButton, icon(document.fullscreenElement ? 'exitFullscreen' : 'fullscreen'),
                             document.fullscreenElement ? ' Exit full screen' : ' Full screen');
  document.addEventListener('fullscreenchange', onFs);
  if (cameras.length) { save(); draw(); }
  return () => {
    document.removeEventListener('fullscreenchange', onFs);
    for (const p of players.splice(0)) p.stop();
    revokePosters(grid);
  };
}

/** Shows the stream's latest key frame (`latest.jpg`) as the cell's poster: what the
 *  cell shows until live video plays, and again while paused or reconnecting. The
 *  width asked for is the cell's in device pixels, in steps of 160 (cache-friendly). */
function refreshPoster(cell, video, camera, type) {
  const px = (cell.clientWidth || 640) * (window.devicePixelRatio || 1);
  const width = Math.min(1920, Math.max(160, Math.ceil(px / 160) * 160));
  api.fetchStill(api.latestUrl(camera.uuid, type, {width})).then(still => {
    if (!video.isConnected) { URL.revokeObjectURL(still.url); return; }
    if (video.dataset.posterUrl) URL.revokeObjectURL(video.dataset.posterUrl);
    video.dataset.posterUrl = still.url;
    video.poster = still.url;
    cell.dataset.posterTime90k = String(still.frameTime90k);
  }, () => { /* nothing recorded yet: the status line says what is happening */ });
}

function revokePosters(grid) {
  for (const v of grid.querySelectorAll('video[data-poster-url]')) {
    URL.revokeObjectURL(v.dataset.posterUrl);
    delete v.dataset.posterUrl;
  }
}

function toggleFullscreen(el) {
  if (document.fullscreenElement) document.exitFullscreen().catch(() => {});
  else if (el.requestFullscreen) el.requestFullscreen().catch(() => {});
}

function loadSaved(params, cameras) {
  let saved = {};
  try { saved = JSON.parse(localStorage.getItem(STORAGE_KEY) || '{}') || {}; } catch { saved = {}; }
  let layout = params.get('layout') || saved.layout;
  let cams = params.has('cams') ? params.get('cams').split(',') : saved.cams;
  if (!LAYOUTS[layout]) layout = cameras.length <= 1 ? '1' : cameras.length === 2 ? '2' : cameras.length <= 4 ? '2x2' : '3x3';
  if (!Array.isArray(cams)) {
    cams = cameras.map(c => `${c.uuid}/${c.streams.sub ? 'sub' : 'main'}`);
  }
  cams = cams.map(x => (typeof x === 'string' && cameras.some(c => x.startsWith(c.uuid + '/'))) ? x : '');
  return {layout, cams};
}

function setStatus(cell, el, text, state) {
  el.textContent = text;
  el.classList.toggle('error', state === 'error');
  cell.dataset.state = state;
}

/** Parses a live message: headers (one per line, "Name: value"), a blank line, then
 *  the media segment. Returns {headers (lower-case names), data (Uint8Array)}. */
export function parseLivePart(buf) {
  const bytes = new Uint8Array(buf);
  let i = 0, lineStart = 0;
  const headers = {};
  while (i < bytes.length) {
    if (bytes[i] === 10) {  // '\n'
      let end = i;
      if (end > lineStart && bytes[end - 1] === 13) end--;
      if (end === lineStart) return {headers, data: bytes.subarray(i + 1)};
      const line = new TextDecoder().decode(bytes.subarray(lineStart, end));
      const colon = line.indexOf(':');
      if (colon > 0) headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
      lineStart = i + 1;
    }
    i++;
  }
  throw new Error('live message without the blank line ending its headers');
}

class LivePlayer {
  constructor(cell, video, statusEl, camera, type) {
    Object.assign(this, {cell, video, statusEl, camera, type});
    this.generation = 0;
    this.attempt = 0;
    this.stopped = true;
    this.connections = 0;
  }

  start() {
    this.stopped = false;
    this.connect();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    this.teardown();
  }

  status(text, state) { setStatus(this.cell, this.statusEl, text, state); }

  teardown() {
    this.generation++;
    if (this.ws) {
      this.ws.onmessage = this.ws.onclose = this.ws.onerror = this.ws.onopen = null;
      try { this.ws.close(); } catch { /* already closed */ }
      this.ws = null;
    }
    this.srcBuf = null;
    if (this.ms && this.ms.readyState === 'open') {
      try { this.ms.endOfStream(); } catch { /* not possible mid-update; harmless */ }
    }
    this.ms = null;
    if (this.objUrl) { URL.revokeObjectURL(this.objUrl); this.objUrl = null; }
    this.video.removeAttribute('src');
    this.video.load();
  }

  connect() {
    this.teardown();
    const gen = this.generation;
    this.queue = [];
    this.vseId = null;
    this.nextTs = 0;
    this.frames = 0;
    this.lastError = null;
    this.status('Connecting…', 'connecting');
    if (!MS) {
      this.status('This browser has no Media Source Extensions: live view needs them.', 'error');
      return;
    }
    this.ms = new MS();
    this.msOpen = new Promise(resolve => this.ms.addEventListener('sourceopen', resolve, {once: true}));
    this.objUrl = URL.createObjectURL(this.ms);
    this.video.src = this.objUrl;
    this.video.onerror = () => {
      if (gen !== this.generation || !this.video.error) return;
      this.fail(`the browser couldn't play the stream (${this.video.error.message || 'media error ' + this.video.error.code})`);
    };
    const ws = new WebSocket(api.liveUrl(this.camera.uuid, this.type));
    ws.binaryType = 'arraybuffer';
    ws.onopen = () => {
      this.connections++;
      this.cell.dataset.connections = String(this.connections);
      this.status('Waiting for the next key frame…', 'waiting');
    };
    ws.onmessage = ev => {
      if (gen !== this.generation) return;
      try {
        if (typeof ev.data === 'string') this.onText(ev.data);
        else this.onPart(gen, parseLivePart(ev.data));
      } catch (e) {
        this.fail(e.message);
      }
    };
    ws.onclose = ev => {
      if (gen !== this.generation) return;
      const why = this.lastError || ev.reason ||
        (ev.code === 1006 ? 'lost the connection to nvr' : `connection closed (code ${ev.code})`);
      if (ev.code === 1008) {
        // Policy violation: no viewVideo permission. Retrying can't help until the
        // user logs in (which redraws the page).
        this.stop();
        this.status(`${why}`, 'error');
        return;
      }
      this.retry(why);
    };
    ws.onerror = () => { /* onclose follows with the details there are */ };
    this.ws = ws;
  }

  onText(text) {
    let msg;
    try { msg = JSON.parse(text); } catch { msg = {type: 'error', message: text}; }
    if (msg.type === 'dropped') {
      this.statusEl.textContent = `Skipped ${msg.frames ?? 'some'} frames to keep up.`;
    } else if (msg.type === 'error') {
      this.lastError = msg.message || 'error';
      this.status(`Server: ${this.lastError}`, 'error');
    }
  }

  onPart(gen, part) {
    const vse = part.headers['x-video-sample-entry-id'];
    if (this.vseId === null) {
      this.vseId = vse;
      this.setupBuffer(gen, part.headers['content-type'], vse).catch(e => {
        if (gen === this.generation) this.fail(e.message);
      });
    } else if (vse !== this.vseId) {
      // New parameters (camera restarted with other settings): start afresh.
      this.retry('the stream changed its parameters', 0);
      return;
    }
    const m = /^(\d+)-(\d+)$/.exec(part.headers['x-media-time-range'] || '');
    const dur90k = m ? Number(m[2]) - Number(m[1]) : 0;
    this.queue.push({data: part.data, dur: dur90k / 90000});
    this.pump();
  }

  async setupBuffer(gen, mime, vseId) {
    if (!mime) throw new Error('live message without a Content-Type');
    const [init] = await Promise.all([fetchInit(vseId), this.msOpen]);
    if (gen !== this.generation) return;
    if (!MS.isTypeSupported(mime)) throw new Error(`this browser can't play ${mime}`);
    const sb = this.ms.addSourceBuffer(mime);
    sb.mode = 'segments';
    sb.addEventListener('updateend', () => { if (gen === this.generation) this.afterUpdate(); });
    sb.addEventListener('error', () => { if (gen === this.generation) this.fail('the browser rejected a frame'); });
    this.queue.unshift({data: new Uint8Array(init), init: true});
    this.srcBuf = sb;
    this.pump();
  }

  pump() {
    const sb = this.srcBuf;
    if (!sb || sb.updating || !this.queue.length) return;
    const item = this.queue.shift();
    try {
      if (!item.init) {
        sb.timestampOffset = this.nextTs;
        this.nextTs += item.dur;
      }
      sb.appendBuffer(item.data);
    } catch (e) {
      if (e.name === 'QuotaExceededError' && this.trim(true)) {
        this.queue.unshift(item);
        if (!item.init) this.nextTs -= item.dur;
        return;
      }
      this.fail(`appending a frame failed: ${e.message}`);
      return;
    }
    if (!item.init) {
      this.frames++;
      this.cell.dataset.frames = String(this.frames);
    }
  }

  afterUpdate() {
    const v = this.video, sb = this.srcBuf;
    if (!sb) return;
    if (this.frames > 0 && this.cell.dataset.state !== 'playing') {
      this.attempt = 0;
      this.status('', 'playing');
    }
    if (sb.buffered.length) {
      const start = sb.buffered.start(0), end = sb.buffered.end(sb.buffered.length - 1);
      if (v.currentTime < start || end - v.currentTime > MAX_LAG_SEC) v.currentTime = Math.max(start, end - 0.5);
      if (v.paused && this.frames > 0) v.play().catch(() => { /* autoplay refused or torn down */ });
      if (this.trim(false)) return;
    }
    this.pump();
  }

  /** Removes what lies more than KEEP_SEC behind the end; true if a removal started. */
  trim(force) {
    const sb = this.srcBuf;
    if (!sb || sb.updating || !sb.buffered.length) return false;
    const start = sb.buffered.start(0), end = sb.buffered.end(sb.buffered.length - 1);
    const cut = Math.min(end - KEEP_SEC, this.video.currentTime - 1);
    if (cut > start && (force || end - start > TRIM_AFTER_SEC)) {
      sb.remove(0, cut);
      return true;
    }
    return false;
  }

  fail(message) {
    this.lastError = message;
    this.retry(message);
  }

  retry(why, delaySec) {
    if (this.stopped) return;
    const delay = delaySec ?? BACKOFF_SEC[Math.min(this.attempt, BACKOFF_SEC.length - 1)];
    this.attempt++;
    this.teardown();
    clearTimeout(this.retryTimer);
    let left = delay;
    const tick = () => {
      if (this.stopped) return;
      if (left <= 0) { this.connect(); return; }
      this.status(`${why}; reconnecting in ${left} s…`, 'error');
      left--;
      this.retryTimer = setTimeout(tick, 1000);
    };
    tick();
  }
}

async function fetchInit(vseId) {
  let resp;
  try {
    resp = await fetch(api.initUrl(vseId), {credentials: 'same-origin'});
  } catch (e) {
    throw new Error(`can't fetch the init segment: ${e.message}`);
  }
  if (!resp.ok) throw new Error(`GET ${api.initUrl(vseId)}: ${resp.status} ${(await resp.text()).trim()}`);
  return resp.arrayBuffer();
}
