// Storage (#/storage): per camera and stream, from `GET /api/`'s stream totals
// (reference §5.2): bytes used on disk (`fsBytes`, whole 4 KiB blocks, what retention
// counts) against the limit (`retainBytes`), the video's own bytes
// (`totalSampleFileBytes`), the recorded duration (`totalDuration90k`), the oldest and
// newest recording (`minStartTime90k`, `maxEndTime90k`), the average bitrate, and the
// days of history the limit holds at that rate:
//     retainBytes / (fsBytes / totalDuration seconds) / 86400.
// Each figure's cell carries the raw API number in data-value (tests compare them).

import * as api from './api.js';
import {h, icon, replace, showError} from './dom.js';
import {bytes, mbps} from './format.js';
import {STREAM_TYPES} from './model.js';
import {TICKS, dateTime90k, duration90k} from './time.js';

export function historyDays(s) {
  if (!(s.totalDuration90k > 0) || !(s.fsBytes > 0) || !s.retainBytes) return null;
  return s.retainBytes / (s.fsBytes / (s.totalDuration90k / TICKS)) / 86400;
}

export function render(main, ctx) {
  const body = h('div', {'aria-live': 'polite'});
  const refresh = h('button', {type: 'button', class: 'button small', onclick: () => load()},
                    icon('refresh'), ' Refresh');
  main.append(h('div', {class: 'toolbar'}, h('h1', {style: {margin: 0, flex: 1}}, 'Storage'), refresh), body);

  async function load() {
    body.setAttribute('aria-busy', 'true');
    try {
      const top = await api.get('/api/', {signal: ctx.signal});
      draw(top);
    } catch (e) {
      showError(e, 'Storage');
    } finally {
      body.removeAttribute('aria-busy');
    }
  }

  function draw(top) {
    const rows = [];
    for (const c of top.cameras || []) {
      for (const t of STREAM_TYPES) if (c.streams?.[t]) rows.push({c, t, s: c.streams[t]});
    }
    if (!rows.length) {
      replace(body, h('div', {class: 'page-message'}, 'There are no streams.'));
      return;
    }
    const cell = (field, value, text, cls = 'num') =>
      h('td', {class: cls, dataset: {field, value: value === undefined || value === null ? '' : String(value)},
               title: typeof value === 'number' && field.endsWith('Bytes') ? `${value.toLocaleString()} bytes` : null}, text);
    const used = s => {
      const frac = s.retainBytes ? s.fsBytes / s.retainBytes : 0;
      return h('div', {class: 'bar' + (frac >= 1 ? ' full' : ''), role: 'progressbar', 'aria-valuemin': '0',
                       'aria-valuemax': '100', 'aria-valuenow': String(Math.round(frac * 100)),
                       'aria-label': 'Used of the limit'},
               h('div', {style: {width: `${Math.min(100, frac * 100)}%`}}));
    };
    const fmtDays = d => d === null ? '—' : d >= 10 ? `${d.toFixed(0)} days` : `${d.toFixed(1)} days`;
    const tr = ({c, t, s}) => {
      const days = historyDays(s);
      return h('tr', {dataset: {streamId: String(s.id)}},
        h('th', {scope: 'row'}, `${c.shortName} ${t}`, s.record === false ? h('span', {class: 'chip'}, 'not recording') : null),
        cell('fsBytes', s.fsBytes, bytes(s.fsBytes)),
        cell('retainBytes', s.retainBytes, bytes(s.retainBytes)),
        h('td', null, used(s), h('span', {class: 'muted', style: {fontSize: '.8rem'}},
          s.retainBytes ? `${(s.fsBytes / s.retainBytes * 100).toFixed(1)} %` : 'no limit')),
        cell('totalSampleFileBytes', s.totalSampleFileBytes, bytes(s.totalSampleFileBytes)),
        cell('totalDuration90k', s.totalDuration90k, duration90k(s.totalDuration90k || 0)),
        cell('minStartTime90k', s.minStartTime90k, s.minStartTime90k !== undefined && s.minStartTime90k !== null ? dateTime90k(s.minStartTime90k) : '—', 'nowrap'),
        cell('maxEndTime90k', s.maxEndTime90k, s.maxEndTime90k !== undefined && s.maxEndTime90k !== null ? dateTime90k(s.maxEndTime90k) : '—', 'nowrap'),
        cell('bitrate', s.totalDuration90k ? mbps(s.totalSampleFileBytes, s.totalDuration90k) : null,
             s.totalDuration90k ? `${mbps(s.totalSampleFileBytes, s.totalDuration90k).toFixed(2)} Mbps` : '—'),
        cell('historyDays', days, fmtDays(days)));
    };
    const sum = f => rows.reduce((a, r) => a + (r.s[f] || 0), 0);
    const table = h('div', {class: 'card table-wrap storage-table'}, h('table', {'aria-label': 'Storage per stream'},
      h('thead', null, h('tr', null, ['Stream', 'Used', 'Limit', '', 'Video', 'Recorded', 'Oldest', 'Newest',
        'Bitrate', 'History at the limit'].map((x, i) => h('th', {class: i && i !== 3 && i !== 6 && i !== 7 ? 'num' : null}, x)))),
      h('tbody', null, rows.map(tr)),
      h('tfoot', null, h('tr', {class: 'total'}, h('th', {scope: 'row'}, 'Total'),
        cell('fsBytes', sum('fsBytes'), bytes(sum('fsBytes'))),
        cell('retainBytes', sum('retainBytes'), bytes(sum('retainBytes'))), h('td'),
        cell('totalSampleFileBytes', sum('totalSampleFileBytes'), bytes(sum('totalSampleFileBytes'))),
        cell('totalDuration90k', sum('totalDuration90k'), duration90k(sum('totalDuration90k'))),
        h('td'), h('td'), h('td'), h('td')))));
    // Narrow screens: one card per stream instead of the wide table.
    const cards = h('div', {class: 'storage-cards'}, rows.map(({c, t, s}) => h('div', {class: 'card'},
      h('h2', null, `${c.shortName} ${t}`), used(s),
      h('dl', null,
        h('dt', null, 'Used'), h('dd', null, `${bytes(s.fsBytes)} of ${bytes(s.retainBytes)}`),
        h('dt', null, 'Video'), h('dd', null, bytes(s.totalSampleFileBytes)),
        h('dt', null, 'Recorded'), h('dd', null, duration90k(s.totalDuration90k || 0)),
        h('dt', null, 'Oldest'), h('dd', null, s.minStartTime90k != null ? dateTime90k(s.minStartTime90k) : '—'),
        h('dt', null, 'Newest'), h('dd', null, s.maxEndTime90k != null ? dateTime90k(s.maxEndTime90k) : '—'),
        h('dt', null, 'History at the limit'), h('dd', null, fmtDays(historyDays(s)))))));
    replace(body, table, cards,
      h('p', {class: 'muted', style: {fontSize: '.85rem'}},
        'Used counts whole 4 KiB filesystem blocks, as retention does; when a stream passes its limit its oldest ',
        'recordings are deleted. "History at the limit" is how many days of video the limit holds at the ',
        'stream\'s average rate so far. Times are in ', top.timeZoneName, '.'));
  }

  load();
}
