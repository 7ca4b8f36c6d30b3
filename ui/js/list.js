// List view (#/): pick streams, a day range and times; one table of recordings per
// stream, newest first; a row opens the player. Everything chosen is in the URL's
// hash query, so a view can be bookmarked or shared:
//   s=1,2          stream ids (reference §8: Moonfire's `s=`)
//   start=, end=   'YYYY-MM-DD' (the server's zone); end absent = same day
//   st=, et=       'HH:MM:SS[.mmm]' start and end times; absent = the whole day
//   split=         max video duration: 1h (default), 4h, 24h, inf
//   trim=0         don't trim rows to the range (default: trim)
//   ts=1           add the timestamp subtitle track
// Rows come from `GET .../recordings` (aggregated by the server up to split90k);
// rows of one run and open with consecutive ids and equal sample entries are merged
// here too (as Moonfire's UI does) up to the same limit.

import * as api from './api.js';
import {h, icon, replace, showError} from './dom.js';
import {bytes as fmtBytes, fps as fmtFps, mbps, mib} from './format.js';
import {allStreams, daysWithVideo, fetchRecordings} from './model.js';
import {openPlayer} from './player.js';
import {TICKS, dayOf90k, dayTime90k, nextDay, parseDay, parseTime, timeOf90k, dateTime90k,
        today} from './time.js';

const SPLITS = {'1h': 3600, '4h': 4 * 3600, '24h': 24 * 3600, 'inf': null};
const SPLIT_LABELS = {'1h': '1 hour', '4h': '4 hours', '24h': '24 hours', 'inf': 'Infinite'};
const END_OF_DAY = '23:59:59';  // shown for "the end of the day"; means next midnight
const SKELETON_AFTER_MS = 1000;

export function render(main, ctx) {
  const streams = allStreams(ctx.top).filter(s => s.type !== 'ext');
  if (!streams.length) {
    main.append(h('div', {class: 'page-message'}, h('p', null, 'There are no cameras yet. Add them with ',
      h('code', null, 'nvr.py config camera add'), '.')));
    return;
  }
  const st = readState(ctx.params, streams);
  let calMonth = (st.start || today()).slice(0, 7);
  let endCalMonth = (st.end || st.start || today()).slice(0, 7);
  let fetchAbort = null;

  const controls = h('div', {class: 'controls', id: 'list-controls'});
  const results = h('div', {class: 'results', 'aria-live': 'polite'});
  const filterButton = h('button', {type: 'button', class: 'button small', 'aria-expanded': 'true',
    'aria-controls': 'list-controls', onclick: () => {
      const collapsed = controls.classList.toggle('collapsed');
      filterButton.setAttribute('aria-expanded', String(!collapsed));
    }}, icon('filter'), ' Filters');
  const summary = h('span', {class: 'muted list-summary'});
  main.append(h('div', {class: 'toolbar'}, h('h1', {style: {margin: 0}}, 'Recordings'), summary,
                h('span', {class: 'spacer'}), filterButton),
              h('div', {class: 'list-layout'}, controls, results));
  // On a phone the filters would push the tables off the screen: start folded.
  if (matchMedia('(max-width: 720px)').matches) {
    controls.classList.add('collapsed');
    filterButton.setAttribute('aria-expanded', 'false');
  }

  function drawSummary() {
    const sel = selected();
    const end = st.endOther && st.end ? st.end : st.start;
    summary.textContent = `${sel.map(s => s.label).join(', ') || 'no streams'} · ${st.start || ''}` +
      `${end !== st.start ? ' – ' + end : ''}` +
      `${st.st !== '00:00:00' || st.et !== END_OF_DAY ? ` ${st.st}–${st.et}` : ''}`;
  }

  function selected() { return streams.filter(s => st.ids.has(s.id)); }

  function commit() {
    ctx.setParams({
      s: [...st.ids].join(','), start: st.start,
      end: st.end && st.end !== st.start ? st.end : undefined,
      st: st.st !== '00:00:00' ? st.st : undefined,
      et: st.et !== END_OF_DAY ? st.et : undefined,
      split: st.split !== '1h' ? st.split : undefined,
      trim: st.trim ? undefined : '0', ts: st.ts ? '1' : undefined,
    });
    drawControls();
    loadTables();
  }

  // ---- controls ----
  function drawControls() {
    drawSummary();
    const days = new Set(daysWithVideo(selected()));
    replace(controls,
      h('section', {class: 'card', 'aria-labelledby': 'streams-h'},
        h('h2', {id: 'streams-h'}, 'Streams'), streamSelector()),
      h('section', {class: 'card', 'aria-labelledby': 'range-h'},
        h('h2', {id: 'range-h'}, 'Time range'),
        h('div', {class: 'muted', style: {fontSize: '.85rem', marginBottom: '6px'}},
          `Times are in the server's zone, ${ctx.top.timeZoneName}.`),
        calendar('Start day', calMonth, m => { calMonth = m; drawControls(); }, days,
                 st.start, st.endOther ? st.end : st.start, day => {
                   st.start = day;
                   if (!st.endOther || !st.end || st.end < day) st.end = day;
                   commit();
                 }),
        h('div', {class: 'time-row'},
          h('label', null, 'Start time', h('input', {type: 'time', step: '1', value: st.st,
            'aria-label': 'Start time', onchange: ev => { st.st = ev.target.value || '00:00:00'; commit(); }}))),
        h('div', {class: 'time-row center', role: 'radiogroup', 'aria-label': 'End day'},
          h('span', {class: 'muted'}, 'End:'),
          h('label', {class: 'check'}, h('input', {type: 'radio', name: 'endday', checked: !st.endOther,
            onchange: () => { st.endOther = false; st.end = st.start; commit(); }}), 'Same day'),
          h('label', {class: 'check'}, h('input', {type: 'radio', name: 'endday', checked: st.endOther,
            onchange: () => { st.endOther = true; endCalMonth = (st.end || st.start).slice(0, 7); drawControls(); }}), 'Other day')),
        st.endOther ? calendar('End day', endCalMonth, m => { endCalMonth = m; drawControls(); },
          days, st.start, st.end, day => { st.end = day; commit(); }, st.start) : null,
        h('div', {class: 'time-row'},
          h('label', null, 'End time', h('input', {type: 'time', step: '1', value: st.et,
            'aria-label': 'End time', onchange: ev => { st.et = ev.target.value || END_OF_DAY; commit(); }})))),
      h('section', {class: 'card options', 'aria-labelledby': 'options-h'},
        h('h2', {id: 'options-h'}, 'Display'),
        h('label', {class: 'select'}, 'Max video duration',
          h('select', {'aria-label': 'Max video duration', onchange: ev => { st.split = ev.target.value; commit(); }},
            Object.keys(SPLITS).map(k => h('option', {value: k, selected: k === st.split}, SPLIT_LABELS[k])))),
        h('label', {class: 'check'}, h('input', {type: 'checkbox', checked: st.trim,
          onchange: ev => { st.trim = ev.target.checked; commit(); }}), 'Trim start and end'),
        h('label', {class: 'check'}, h('input', {type: 'checkbox', checked: st.ts,
          onchange: ev => { st.ts = ev.target.checked; commit(); }}), 'Timestamp track')));
  }

  function streamSelector() {
    const cams = [];
    for (const s of streams) if (!cams.includes(s.camera)) cams.push(s.camera);
    const types = ['main', 'sub'].filter(t => streams.some(s => s.type === t));
    const toggle = list => {
      const all = list.every(s => st.ids.has(s.id));
      for (const s of list) all ? st.ids.delete(s.id) : st.ids.add(s.id);
      commit();
    };
    return h('table', {class: 'stream-table'},
      h('thead', null, h('tr', null, h('th', null, 'Camera'),
        types.map(t => h('th', null, h('button', {type: 'button', class: 'linklike',
          title: `Select or clear every ${t} stream`,
          onclick: () => toggle(streams.filter(s => s.type === t))}, t))))),
      h('tbody', null, cams.map(c => h('tr', null,
        h('td', null, h('button', {type: 'button', class: 'linklike',
          title: `Select or clear every stream of ${c.shortName}`,
          onclick: () => toggle(streams.filter(s => s.camera === c))}, c.shortName)),
        types.map(t => {
          const s = streams.find(x => x.camera === c && x.type === t);
          return h('td', null, s ? h('input', {type: 'checkbox', checked: st.ids.has(s.id),
            'aria-label': `${c.shortName} ${t}`, dataset: {streamId: String(s.id)},
            onchange: ev => { ev.target.checked ? st.ids.add(s.id) : st.ids.delete(s.id); commit(); }}) : '');
        })))));
  }

  // ---- tables ----
  function range() {
    const start90k = dayTime90k(st.start, parseTime(st.st) ?? 0);
    const end = st.endOther && st.end ? st.end : st.start;
    const endT = parseTime(st.et);
    const end90k = st.et === END_OF_DAY || endT === null ? dayTime90k(nextDay(end), 0) : dayTime90k(end, endT);
    return {start90k, end90k};
  }

  function loadTables() {
    if (fetchAbort) fetchAbort.abort();
    fetchAbort = new AbortController();
    const signal = fetchAbort.signal;
    const sel = selected();
    results.replaceChildren();
    if (!sel.length) {
      results.append(h('div', {class: 'page-message'}, 'Select one or more streams.'));
      return;
    }
    if (!st.start) {
      results.append(h('div', {class: 'page-message'}, 'The selected streams have no video yet.'));
      return;
    }
    const r = range();
    if (r.end90k <= r.start90k) {
      results.append(h('div', {class: 'page-message', role: 'alert'}, 'The end is before the start.'));
      return;
    }
    const split90k = SPLITS[st.split] ? SPLITS[st.split] * TICKS : undefined;
    for (const s of sel) {
      const body = h('tbody');
      const table = h('table', {class: 'recordings', dataset: {streamId: String(s.id)},
                                'aria-label': `Recordings of ${s.label}`},
        h('thead', null, h('tr', null,
          h('th', {class: 'thumb-col'}, h('span', {class: 'sr-only'}, 'Picture')),
          h('th', null, 'Start'), h('th', null, 'End'), h('th', null, 'Resolution'),
          h('th', {class: 'num wide-only'}, 'FPS'), h('th', {class: 'num wide-only'}, 'Storage (MiB)'),
          h('th', {class: 'num wide-only'}, 'Bitrate (Mbps)'))),
        body);
      const section = h('section', {class: 'card', 'aria-busy': 'true'}, h('h2', null, s.label),
                        h('div', {class: 'table-wrap'}, table));
      results.append(section);
      const skel = setTimeout(() => {
        for (let i = 0; i < 3; i++) body.append(h('tr', {class: 'skeleton-row'}, [...Array(7)].map(() => h('td'))));
      }, SKELETON_AFTER_MS);
      fetchRecordings(s, r.start90k, r.end90k, split90k, signal).then(resp => {
        clearTimeout(skel);
        section.removeAttribute('aria-busy');
        fillTable(body, s, resp, r, split90k);
      }, e => {
        clearTimeout(skel);
        section.removeAttribute('aria-busy');
        if (e.name === 'AbortError') return;
        replace(body, h('tr', null, h('td', {colspan: 7, class: 'form-error'}, e.message)));
        showError(e, `Recordings of ${s.label}`);
      });
    }
  }

  function fillTable(body, s, resp, r, split90k) {
    const rows = mergeRows(resp.recordings || [], resp.videoSampleEntries || {}, split90k);
    body.replaceChildren();
    if (!rows.length) {
      body.append(h('tr', null, h('td', {colspan: 7, class: 'muted'}, 'No recordings in this range.')));
      return;
    }
    const multiDay = dayOf90k(r.start90k) !== dayOf90k(r.end90k - 1);
    const fmt = t => multiDay ? dateTime90k(t) : timeOf90k(t);
    for (const rec of rows) {
      const entry = resp.videoSampleEntries?.[rec.videoSampleEntryId] || {};
      const start = st.trim ? Math.max(rec.startTime90k, r.start90k) : rec.startTime90k;
      const end = st.trim ? Math.min(rec.endTime90k, r.end90k) : rec.endTime90k;
      const dur = rec.endTime90k - rec.startTime90k;
      const open = () => openPlayer({
        url: api.viewUrl(s.camera.uuid, s.type, rec, st.trim ? {start90k: start, end90k: end, ts: st.ts} : {ts: st.ts}),
        title: s.label, start90k: start, end90k: end, entry,
        keep: ctx.top.permissions?.protectRecordings ? {cameraUuid: s.camera.uuid, streamType: s.type} : undefined});
      body.append(h('tr', {class: 'clickable', tabindex: '0', role: 'button',
          'aria-label': `Play ${s.label} from ${fmt(start)} to ${fmt(end)}`,
          dataset: {startId: String(rec.startId), endId: String(rec.endId ?? rec.startId),
                    start90k: String(start), end90k: String(end)},
          onclick: open, onkeydown: ev => { if (ev.key === 'Enter' || ev.key === ' ') { ev.preventDefault(); open(); } }},
        h('td', {class: 'thumb-col'}, thumbnail(s, start, entry)),
        h('td', {class: 'nowrap'}, fmt(start)),
        h('td', {class: 'nowrap'}, fmt(end), rec.endReason ? h('span', {class: 'reason-icon',
          title: `Ended: ${rec.endReason}`, 'aria-label': `ended: ${rec.endReason}`, role: 'img'}, icon('info')) : null),
        h('td', null, entry.width ? `${entry.width}×${entry.height}` : '—'),
        h('td', {class: 'num wide-only'}, fmtFps(rec.videoSamples, dur)),
        h('td', {class: 'num wide-only', title: fmtBytes(rec.sampleFileBytes)}, mib(rec.sampleFileBytes)),
        h('td', {class: 'num wide-only'}, mbps(rec.sampleFileBytes, dur).toFixed(2))));
    }
  }

  drawControls();
  loadTables();
  return () => { if (fetchAbort) fetchAbort.abort(); };
}

const THUMB_WIDTH = 128;

/** A row's picture: the key frame at or before its start (`still.jpg?key=true`),
 *  loaded lazily as the row scrolls into view; cached by the browser (ETag). */
function thumbnail(s, start90k, entry) {
  const aspect = entry.aspectWidth && entry.aspectHeight ? entry.aspectHeight / entry.aspectWidth : 9 / 16;
  const width = THUMB_WIDTH * Math.min(2, Math.ceil(window.devicePixelRatio || 1));
  const img = h('img', {class: 'thumb', alt: '', loading: 'lazy', decoding: 'async',
                        width: String(THUMB_WIDTH), height: String(Math.round(THUMB_WIDTH * aspect)),
                        src: api.stillUrl(s.camera.uuid, s.type, {t: start90k, key: 'true', width})});
  img.addEventListener('error', () => img.classList.add('missing'), {once: true});
  return img;
}

/** The view's state from the URL, with defaults filled in. */
function readState(params, streams) {
  const known = new Set(streams.map(s => s.id));
  let ids = new Set((params.get('s') || '').split(',').filter(Boolean).map(Number).filter(i => known.has(i)));
  if (!params.has('s')) {
    ids = new Set(streams.filter(s => s.type === 'main').map(s => s.id));
    if (!ids.size) ids = new Set(streams.map(s => s.id));
  }
  const sel = streams.filter(s => ids.has(s.id));
  const days = daysWithVideo(sel);
  let start = parseDay(params.get('start')) ? params.get('start') : (days.at(-1) || today());
  let end = parseDay(params.get('end')) ? params.get('end') : start;
  if (end < start) end = start;
  const split = SPLITS[params.get('split')] !== undefined ? params.get('split') : '1h';
  return {
    ids, start, end, endOther: end !== start,
    st: parseTime(params.get('st')) !== null ? params.get('st') : '00:00:00',
    et: parseTime(params.get('et')) !== null ? params.get('et') : END_OF_DAY,
    split, trim: params.get('trim') !== '0', ts: params.get('ts') === '1',
  };
}

/** Newest first; merges rows of one run/open with consecutive ids and the same sample
 *  entry (resolution and aspect) while the merged row stays under `split90k`. */
export function mergeRows(recordings, entries, split90k) {
  const rows = [...recordings].sort((a, b) => a.startId - b.startId);
  const out = [];
  for (const r of rows) {
    const prev = out.at(-1);
    const pe = prev && entries[prev.videoSampleEntryId], re = entries[r.videoSampleEntryId];
    if (prev && prev.runStartId === r.runStartId && prev.openId === r.openId &&
        (prev.endId ?? prev.startId) + 1 === r.startId && prev.endTime90k === r.startTime90k &&
        pe && re && pe.width === re.width && pe.height === re.height &&
        pe.aspectWidth === re.aspectWidth && pe.aspectHeight === re.aspectHeight &&
        prev.videoSampleEntryId === r.videoSampleEntryId &&
        (split90k === undefined || r.endTime90k - prev.startTime90k <= split90k)) {
      out[out.length - 1] = {
        ...prev, endId: r.endId ?? r.startId, endTime90k: r.endTime90k,
        videoSamples: prev.videoSamples + r.videoSamples,
        sampleFileBytes: prev.sampleFileBytes + r.sampleFileBytes,
        firstUncommitted: prev.firstUncommitted ?? r.firstUncommitted,
        growing: r.growing, endReason: r.endReason,
      };
    } else {
      out.push({...r});
    }
  }
  return out.reverse();
}

/** The calendar: one month, days with video enabled, the [from, to] range marked. */
function calendar(label, month, setMonth, days, from, to, onPick, minDay) {
  const [y, m] = month.split('-').map(Number);
  const first = new Date(Date.UTC(y, m - 1, 1));
  const ndays = new Date(Date.UTC(y, m, 0)).getUTCDate();
  const lead = (first.getUTCDay() + 6) % 7;  // Monday first
  const monthName = first.toLocaleString(undefined, {month: 'long', year: 'numeric', timeZone: 'UTC'});
  const shift = n => {
    const d = new Date(Date.UTC(y, m - 1 + n, 1));
    setMonth(`${d.getUTCFullYear()}-${String(d.getUTCMonth() + 1).padStart(2, '0')}`);
  };
  const cells = [];
  for (let i = 0; i < lead; i++) cells.push(h('span'));
  for (let d = 1; d <= ndays; d++) {
    const key = `${month}-${String(d).padStart(2, '0')}`;
    const has = days.has(key) && (!minDay || key >= minDay);
    const picked = key === from || key === to;
    cells.push(h('button', {type: 'button', class: 'day' + (from && to && key > from && key < to ? ' in-range' : ''),
      disabled: !has, 'aria-pressed': String(!!picked), dataset: {day: key},
      'aria-label': `${key}${has ? '' : ', no video'}`, onclick: () => onPick(key)}, String(d)));
  }
  return h('div', {class: 'calendar', role: 'group', 'aria-label': label},
    h('div', {class: 'cal-head'},
      h('button', {type: 'button', class: 'icon-button', 'aria-label': `${label}: previous month`,
                   onclick: () => shift(-1)}, icon('left')),
      h('strong', {'aria-live': 'polite'}, `${label}: ${monthName}`),
      h('button', {type: 'button', class: 'icon-button', 'aria-label': `${label}: next month`,
                   onclick: () => shift(1)}, icon('right'))),
    h('div', {class: 'cal-grid'},
      ['Mo', 'Tu', 'We', 'Th', 'Fr', 'Sa', 'Su'].map(d => h('span', {class: 'dow', 'aria-hidden': 'true'}, d)),
      cells));
}
