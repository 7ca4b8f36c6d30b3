// Timeline (#/timeline), beyond Moonfire (its issue #32): for a day range, one lane per
// stream showing the recorded spans and the gaps between them; each gap is labelled
// with the end reason of the recording that ended the run before it (`endReason` in
// `GET .../recordings`). Zoom from a week to a minute (buttons, ctrl+wheel, keys),
// pan by dragging, the arrow buttons or keys. A click on a span plays from that
// instant (a `view.mp4` trimmed to start there, to the end of its row); a click on a
// gap zooms to it. Hovering or dragging over a span shows the picture there (the key
// frame at or before that instant, `still.jpg?key=true`).
// Protected ranges (`GET /api/protections`, protect.js) are drawn over their lanes (a
// camera-wide one over each of the camera's lanes), labelled; the player opened here
// offers "Keep this clip" to protectRecordings, and the new range is drawn at once.
// State in the URL: #/timeline?start=YYYY-MM-DD&end=YYYY-MM-DD&v0=<90k>&v1=<90k>.

import * as api from './api.js';
import {h, icon, replace, showError, snackbar} from './dom.js';
import {allStreams, daysWithVideo, fetchRecordings} from './model.js';
import {openPlayer} from './player.js';
import * as protect from './protect.js';
import {TICKS, dayOf90k, dayTime90k, duration90k, nextDay, offsetMs, parseDay, timeOf90k,
        dateTime90k, to90k, toMs, today} from './time.js';

const MIN_VIEW = 60 * TICKS;             // a minute
const WEEK = 7 * 86400 * TICKS;
const MAX_RANGE_DAYS = 31;
const ROW_SPLIT = 3600 * TICKS;          // rows of at most an hour: what a click plays
const TICK_STEPS_SEC = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800,
                        21600, 43200, 86400, 172800];
const MIN_TICK_PX = 90;
const PREVIEW_WIDTH = 240;               // the hover picture's CSS width
const PREVIEW_DELAY_MS = 60;             // the pointer must rest this long before a fetch
const PRESETS = [['Week', WEEK], ['Day', 86400 * TICKS], ['Hour', 3600 * TICKS],
                 ['10 min', 600 * TICKS], ['Minute', MIN_VIEW]];

export function render(main, ctx) {
  const streams = allStreams(ctx.top);
  const days = daysWithVideo(streams);
  const p = ctx.params;
  let end = parseDay(p.get('end')) ? p.get('end') : (days.at(-1) || today());
  let start = parseDay(p.get('start')) ? p.get('start') : end;
  if (start > end) [start, end] = [end, start];
  if (nextDay(start, MAX_RANGE_DAYS) <= end) start = nextDay(end, 1 - MAX_RANGE_DAYS);
  let r0, r1, v0, v1;
  let lanes = [];   // [{s, rows, spans, gaps, track}]
  let protections = [];  // GET /api/protections over [r0, r1)
  let loadAbort = null;

  const startInput = h('input', {type: 'date', value: start, 'aria-label': 'First day',
    onchange: ev => { if (parseDay(ev.target.value)) { start = ev.target.value; if (start > end) end = start; setRange(); } }});
  const endInput = h('input', {type: 'date', value: end, 'aria-label': 'Last day',
    onchange: ev => { if (parseDay(ev.target.value)) { end = ev.target.value; if (end < start) start = end; setRange(); } }});
  const hover = h('div', {class: 'tl-hover muted', 'aria-live': 'off'}, '\u00a0');
  const previewImg = h('img', {alt: '', width: String(PREVIEW_WIDTH)});
  const previewTime = h('div', {class: 'tl-preview-time'});
  const preview = h('div', {class: 'tl-preview', hidden: true, 'aria-hidden': 'true'}, previewImg, previewTime);
  let previewAbort = null, previewTimer = null, previewKey = null, previewUrl = null;
  const axis = h('div', {class: 'tl-axis', 'aria-hidden': 'true'});
  const lanesBox = h('div', {class: 'tl-lanes'});
  const timeline = h('div', {class: 'timeline', style: {'--lane-label': 'min(8rem, 28vw)'}}, axis, lanesBox, preview);
  const viewLabel = h('span', {class: 'muted', 'aria-live': 'polite'});

  main.append(
    h('div', {class: 'toolbar'}, h('h1', {style: {margin: 0, flex: 1}}, 'Timeline'),
      h('label', null, 'From', startInput), h('label', null, 'to', endInput)),
    h('div', {class: 'toolbar'},
      h('div', {class: 'segmented', role: 'group', 'aria-label': 'Zoom to'},
        PRESETS.map(([label, w]) => h('button', {type: 'button', onclick: () => zoomTo(w)}, label))),
      h('button', {type: 'button', class: 'icon-button', 'aria-label': 'Zoom in', onclick: () => zoom(0.5)}, icon('zoomIn')),
      h('button', {type: 'button', class: 'icon-button', 'aria-label': 'Zoom out', onclick: () => zoom(2)}, icon('zoomOut')),
      h('button', {type: 'button', class: 'icon-button', 'aria-label': 'Earlier', onclick: () => pan(-0.5)}, icon('left')),
      h('button', {type: 'button', class: 'icon-button', 'aria-label': 'Later', onclick: () => pan(0.5)}, icon('right')),
      viewLabel),
    h('div', {class: 'card'}, timeline, hover,
      h('div', {class: 'tl-legend'},
        h('span', null, h('span', {class: 'swatch', style: {background: 'var(--span)'}}), 'recorded (click to play from there)'),
        h('span', null, h('span', {class: 'swatch', style: {background: 'var(--gap)'}}), 'gap, labelled with why the recording before it ended'),
        h('span', null, h('span', {class: 'swatch protected'}), 'protected from retention (kept clips)'),
        h('span', null, `Times in ${ctx.top.timeZoneName}. Drag to pan, Ctrl+wheel to zoom.`))));

  /** Loads the range [start, end]; then shows all of it, or (`fit`) where its video is. */
  function setRange(fit = true) {
    startInput.value = start;
    endInput.value = end;
    r0 = dayTime90k(start, 0);
    r1 = dayTime90k(nextDay(end), 0);
    v0 = r0; v1 = r1;
    load(fit);
  }

  function commitView() {
    ctx.setParams({start, end, v0: Math.round(v0), v1: Math.round(v1)});
    draw();
  }

  function clampView(a, b) {
    let w = Math.min(Math.max(b - a, MIN_VIEW), Math.max(r1 - r0, MIN_VIEW));
    a = Math.min(Math.max(a, r0), r1 - w);
    return [a, a + w];
  }

  function zoomTo(w) {
    if (w > r1 - r0 && w >= WEEK) {  // widen the range to a week ending on its last day
      start = nextDay(end, -6);
      setRange(false);
      return;
    }
    const c = (v0 + v1) / 2;
    [v0, v1] = clampView(c - w / 2, c + w / 2);
    commitView();
  }

  function zoom(f, at) {
    const c = at ?? (v0 + v1) / 2;
    [v0, v1] = clampView(c - (c - v0) * f, c + (v1 - c) * f);
    commitView();
  }

  function pan(f) {
    const w = v1 - v0;
    [v0, v1] = clampView(v0 + w * f, v1 + w * f);
    commitView();
  }

  async function load(fit) {
    if (loadAbort) loadAbort.abort();
    loadAbort = new AbortController();
    const signal = loadAbort.signal;
    lanesBox.setAttribute('aria-busy', 'true');
    // Every stream that records or has video in the range (days only count committed video).
    const shown = streams.filter(s => s.stream.record || Object.keys(s.stream.days || {}).some(d => d >= start && d <= end));
    try {
      const [results, prots] = await Promise.all([
        Promise.all(shown.map(s => fetchRecordings(s, r0, r1, ROW_SPLIT, signal))),
        protect.list({startTime90k: r0, endTime90k: r1}, {signal})]);
      lanes = shown.map((s, i) => buildLane(s, results[i].recordings || [], results[i].videoSampleEntries || {}));
      protections = prots || [];
    } catch (e) {
      if (e.name !== 'AbortError') showError(e, 'Timeline');
      return;
    } finally {
      if (!signal.aborted) lanesBox.removeAttribute('aria-busy');
    }
    // A view from the URL applies to the range it was saved with.
    const uv0 = Number(p.get('v0')), uv1 = Number(p.get('v1'));
    if (uv1 > uv0 && uv0 >= r0 && uv1 <= r1) {
      [v0, v1] = clampView(uv0, uv1);
    } else if (fit) {
      // Show where the video is, with a margin.
      const spans = lanes.flatMap(l => l.spans);
      if (spans.length) {
        const a = Math.min(...spans.map(x => x.start)), b = Math.max(...spans.map(x => x.end));
        const pad = Math.max((b - a) * 0.05, 5 * TICKS);
        [v0, v1] = clampView(a - pad, b + pad);
      }
    }
    p.delete('v0');
    p.delete('v1');
    drawLanes();
    commitView();
  }

  /** Fetches the range's protections again and redraws (after "Keep this clip"). */
  async function reloadProtections() {
    try {
      protections = (await protect.list({startTime90k: r0, endTime90k: r1})) || [];
      draw();
    } catch (e) {
      showError(e, 'Protections');
    }
  }

  function drawLanes() {
    lanesBox.replaceChildren();
    if (!lanes.length) {
      lanesBox.append(h('div', {class: 'page-message'}, 'No video in this range.'));
      return;
    }
    for (const lane of lanes) {
      lane.track = h('div', {class: 'tl-track', tabindex: '0', role: 'group',
        'aria-label': `${lane.s.label}: recorded spans and gaps. Arrow keys pan, + and - zoom, Enter plays from the middle.`,
        dataset: {streamId: String(lane.s.id)}});
      attachPointer(lane);
      lanesBox.append(h('div', {class: 'tl-lane', dataset: {streamId: String(lane.s.id)}},
        h('div', {class: 'tl-label', title: lane.s.label}, lane.s.label), lane.track));
    }
  }

  function draw() {
    viewLabel.textContent = `${dateTime90k(v0)} – ${dayOf90k(v0) === dayOf90k(v1) ? timeOf90k(v1) : dateTime90k(v1)} (${duration90k(v1 - v0)})`;
    drawAxis();
    const w = v1 - v0;
    const px = (lanes[0]?.track?.clientWidth || 800) / w;  // pixels per tick
    const pct = t => `${((t - v0) / w) * 100}%`;
    const len = (a, b) => `${((Math.min(b, v1) - Math.max(a, v0)) / w) * 100}%`;
    for (const lane of lanes) {
      const kids = [];
      for (const sp of lane.spans) {
        if (sp.end <= v0 || sp.start >= v1) continue;
        kids.push(h('div', {class: 'tl-span',
          style: {left: pct(Math.max(sp.start, v0)), width: len(sp.start, sp.end)},
          dataset: {start90k: String(sp.start), end90k: String(sp.end)}}));
      }
      for (const g of lane.gaps) {
        if (g.end <= v0 || g.start >= v1) continue;
        const text = `${g.reason}`;
        const wide = (Math.min(g.end, v1) - Math.max(g.start, v0)) * px > 48;
        kids.push(h('div', {class: 'tl-gap', role: 'img',
          title: `No video ${timeOf90k(g.start, {millis: true})} – ${timeOf90k(g.end, {millis: true})} (${duration90k(g.end - g.start)}): ${text}`,
          'aria-label': `Gap from ${timeOf90k(g.start)} to ${timeOf90k(g.end)}: ${text}`,
          style: {left: pct(Math.max(g.start, v0)), width: len(g.start, g.end)},
          dataset: {start90k: String(g.start), end90k: String(g.end), reason: g.reason}},
          wide ? h('span', {class: 'tl-gap-label'}, text) : null));
      }
      for (const p of protectionsOf(lane.s, protections)) {
        if (p.endTime90k <= v0 || p.startTime90k >= v1) continue;
        const wide = (Math.min(p.endTime90k, v1) - Math.max(p.startTime90k, v0)) * px > 48;
        const text = `Protected: ${p.label} (${dateTime90k(p.startTime90k)} – ${timeOf90k(p.endTime90k)}` +
          `${p.streamType ? '' : ', every stream of the camera'}; by ${p.createdBy})`;
        kids.push(h('div', {class: 'tl-protected', role: 'img', title: text, 'aria-label': text,
          style: {left: pct(Math.max(p.startTime90k, v0)), width: len(p.startTime90k, p.endTime90k)},
          dataset: {protectionId: String(p.id), start90k: String(p.startTime90k), end90k: String(p.endTime90k)}},
          wide ? h('span', {class: 'tl-protected-label'}, p.label) : null));
      }
      lane.track.replaceChildren(...kids);
    }
  }

  function drawAxis() {
    const width = axis.clientWidth || 800;
    const w = v1 - v0;
    let step = TICK_STEPS_SEC.find(s => (w / TICKS / s) <= width / MIN_TICK_PX) ?? 172800;
    const ticks = [];
    if (step >= 86400) {
      for (let d = dayOf90k(v0); ; d = nextDay(d, step / 86400)) {
        const t = dayTime90k(d, 0);
        if (t >= v1) break;
        if (t >= v0) ticks.push([t, d.slice(5)]);
      }
    } else {
      const stepMs = step * 1000;
      const off = offsetMs(toMs(v0));
      for (let ms = Math.ceil((toMs(v0) + off) / stepMs) * stepMs - off; to90k(ms) < v1; ms += stepMs) {
        const t = to90k(ms);
        const label = timeOf90k(t);
        ticks.push([t, label.startsWith('00:00:00') ? dayOf90k(t).slice(5) : step < 60 ? label : label.slice(0, 5)]);
      }
    }
    replace(axis, ticks.map(([t, label]) => h('div', {class: 'tl-tick', style: {left: `${((t - v0) / w) * 100}%`}}, label)));
  }

  function timeAt(lane, clientX) {
    const rect = lane.track.getBoundingClientRect();
    return v0 + ((clientX - rect.left) / rect.width) * (v1 - v0);
  }

  function describe(lane, t) {
    const row = lane.rows.find(r => r.startTime90k <= t && t < r.endTime90k);
    if (row) return `${lane.s.label} ${dateTime90k(t)}: recorded — click to play from here`;
    const g = lane.gaps.find(g => g.start <= t && t < g.end);
    if (g) return `${lane.s.label} ${dateTime90k(t)}: no video (${g.reason}) — click to zoom in`;
    return `${lane.s.label} ${dateTime90k(t)}: no video`;
  }

  function activate(lane, t) {
    const row = lane.rows.find(r => r.startTime90k <= t && t < r.endTime90k);
    if (row) {
      const t0 = Math.max(Math.round(t), row.startTime90k);
      openPlayer({url: api.viewUrl(lane.s.camera.uuid, lane.s.type, row, {start90k: t0}),
                  title: lane.s.label, start90k: t0, end90k: row.endTime90k,
                  entry: lane.entries[row.videoSampleEntryId],
                  keep: ctx.top.permissions?.protectRecordings
                    ? {cameraUuid: lane.s.camera.uuid, streamType: lane.s.type} : undefined,
                  onKept: () => reloadProtections()});
      return;
    }
    const g = lane.gaps.find(g => g.start <= t && t < g.end);
    if (g) {
      const c = (g.start + g.end) / 2, w = Math.max((g.end - g.start) * 3, MIN_VIEW);
      [v0, v1] = clampView(c - w / 2, c + w / 2);
      commitView();
      return;
    }
    snackbar(`No video of ${lane.s.label} at ${dateTime90k(t)}.`);
  }

  /** The picture under the pointer: the key frame at or before time `t` of the lane's
   *  stream (`still.jpg?key=true`, one decoded frame), fetched once the pointer rests
   *  PREVIEW_DELAY_MS; a fetch still running when the pointer moves on is aborted. */
  function showPreview(lane, t, clientX) {
    const row = lane.rows.find(r => r.startTime90k <= t && t < r.endTime90k);
    if (!row) { hidePreview(); return; }
    const tb = timeline.getBoundingClientRect();
    const x = Math.min(Math.max(clientX - tb.left - PREVIEW_WIDTH / 2, 0), Math.max(0, tb.width - PREVIEW_WIDTH));
    const laneTop = lane.track.getBoundingClientRect().top - tb.top;
    preview.style.left = `${x}px`;
    preview.style.top = `${laneTop}px`;
    clearTimeout(previewTimer);
    const key = `${lane.s.id}:${Math.round(t)}`;
    if (key === previewKey) return;
    previewTimer = setTimeout(async () => {
      if (previewAbort) previewAbort.abort();
      previewAbort = new AbortController();
      const signal = previewAbort.signal;
      previewKey = key;
      const width = PREVIEW_WIDTH * Math.min(2, Math.ceil(window.devicePixelRatio || 1));
      try {
        const still = await api.fetchStill(api.stillUrl(lane.s.camera.uuid, lane.s.type,
          {t: Math.round(t), key: 'true', width}), {signal});
        if (signal.aborted) { URL.revokeObjectURL(still.url); return; }
        if (previewUrl) URL.revokeObjectURL(previewUrl);
        previewUrl = still.url;
        previewImg.src = still.url;
        await previewImg.decode().catch(() => {});
        previewTime.textContent = `${lane.s.label} ${timeOf90k(still.frameTime90k)}`;
        preview.dataset.streamId = String(lane.s.id);
        preview.dataset.frameTime90k = String(still.frameTime90k);
        preview.hidden = false;
      } catch (e) {
        if (e.name !== 'AbortError') hidePreview();
      }
    }, PREVIEW_DELAY_MS);
  }

  function hidePreview() {
    clearTimeout(previewTimer);
    if (previewAbort) previewAbort.abort();
    previewAbort = null;
    previewKey = null;
    preview.hidden = true;
  }

  function attachPointer(lane) {
    const track = lane.track;
    let drag = null;
    track.addEventListener('pointerdown', ev => {
      if (ev.button !== 0) return;
      drag = {x: ev.clientX, v0, v1, moved: false, id: ev.pointerId};
    });
    track.addEventListener('pointermove', ev => {
      const t = timeAt(lane, ev.clientX);
      hover.textContent = describe(lane, t);
      showPreview(lane, t, ev.clientX);
      if (!drag || drag.id !== ev.pointerId) return;
      const dx = ev.clientX - drag.x;
      if (!drag.moved && Math.abs(dx) < 6) return;
      if (!drag.moved) { drag.moved = true; track.setPointerCapture(ev.pointerId); }
      const dt = -dx / track.clientWidth * (drag.v1 - drag.v0);
      [v0, v1] = clampView(drag.v0 + dt, drag.v1 + dt);
      draw();
    });
    const endDrag = ev => {
      if (!drag || drag.id !== ev.pointerId) return;
      const d = drag;
      drag = null;
      if (d.moved) commitView();
      else if (ev.type === 'pointerup') activate(lane, timeAt(lane, ev.clientX));
    };
    track.addEventListener('pointerup', endDrag);
    track.addEventListener('pointercancel', endDrag);
    track.addEventListener('pointerleave', () => { hover.textContent = '\u00a0'; hidePreview(); });
    track.addEventListener('wheel', ev => {
      if (ev.ctrlKey || ev.metaKey) {
        ev.preventDefault();
        zoom(ev.deltaY > 0 ? 1.25 : 0.8, timeAt(lane, ev.clientX));
      } else if (Math.abs(ev.deltaX) > Math.abs(ev.deltaY) || ev.shiftKey) {
        ev.preventDefault();
        pan((ev.shiftKey ? ev.deltaY : ev.deltaX) / track.clientWidth);
      }
    }, {passive: false});
    track.addEventListener('keydown', ev => {
      const keys = {ArrowLeft: () => pan(-0.1), ArrowRight: () => pan(0.1), '+': () => zoom(0.5),
                    '=': () => zoom(0.5), '-': () => zoom(2), Enter: () => activate(lane, (v0 + v1) / 2)};
      if (keys[ev.key]) { ev.preventDefault(); keys[ev.key](); }
    });
  }

  const ro = new ResizeObserver(() => { if (lanes.length) draw(); });
  ro.observe(timeline);
  setRange();
  return () => {
    ro.disconnect();
    if (loadAbort) loadAbort.abort();
    hidePreview();
    if (previewUrl) URL.revokeObjectURL(previewUrl);
  };
}

/** The protections drawn over stream `s`'s lane: its own and its camera's. */
export function protectionsOf(s, protections) {
  return protections.filter(p => p.cameraUuid === s.camera.uuid &&
                                 (p.streamType === null || p.streamType === undefined || p.streamType === s.type));
}

/** A lane: the stream's rows by time, merged into spans (one per run, split where
 *  the wall times don't touch), and the gaps between spans with their reasons. */
export function buildLane(s, recordings, entries) {
  const rows = [...recordings].sort((a, b) => a.startTime90k - b.startTime90k);
  const spans = [], gaps = [];
  let cur = null, last = null;
  for (const r of rows) {
    if (cur && r.runStartId === last.runStartId && r.startTime90k <= cur.end) {
      cur.end = Math.max(cur.end, r.endTime90k);
    } else {
      if (cur) {
        spans.push(cur);
        if (r.startTime90k > cur.end) {
          gaps.push({start: cur.end, end: r.startTime90k,
                     reason: last.endReason || (last.runStartId === r.runStartId ? 'no reason recorded' : 'run ended; no reason recorded')});
        }
      }
      cur = {start: r.startTime90k, end: r.endTime90k};
    }
    last = r;
  }
  if (cur) spans.push(cur);
  return {s, rows, spans, gaps, entries};
}
