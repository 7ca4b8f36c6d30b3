// Storage (#/storage): what is kept, under which limits, for how long, from
// `GET /api/storage` (storage.py; docs/api.md):
// - per stream: the byte limit (`retainBytes`, null: none) against the committed bytes
//   on disk (`committedFsBytes`, whole 4 KiB blocks, what retention counts) and the
//   *uncommitted* bytes (written, not yet flushed, and the growing recording: shown as
//   such, so a new stream doesn't show 0 B for its first minutes); the age limit
//   (`retainDays`); the days the byte limit keeps at the recent rate
//   (`daysAtBytesLimit` = retainBytes / recentBytesPerSec / 86400) and the days the
//   stream actually keeps (`daysKept`, the smaller limit); the oldest recording; which
//   rule last deleted something (`lastDeletion`: bytes, age, floor; forgotten at a
//   restart); protected bytes.
// - warnings: protected bytes over a stream's byte limit (retention deletes nothing
//   protected, so the stream holds more than its limit); a dir below its free-space
//   floor.
// - per sample file dir: total, free against the floor, used by nvr, protected.
// - the protections (`GET /api/protections`), with edit label and remove for
//   protectRecordings.
// With configureCameras each stream's limits are set inline: PATCH
// /api/config/cameras/<id>/streams/<type> {retainBytes, retainDays}; a 409 (the new
// limit deletes recordings now) is shown with the server's message for confirmation,
// then sent again with deleteRecordings: true.
// Each figure's cell carries the raw API number in data-value (tests compare them).

import * as api from './api.js';
import {confirmDialog, h, icon, replace, showError, snackbar} from './dom.js';
import {bytes} from './format.js';
import * as protect from './protect.js';
import {dateTime90k, timeOf90k} from './time.js';

const UNITS = {'': 1, B: 1, K: 1024, KB: 1024, KIB: 1024, M: 1024 ** 2, MB: 1024 ** 2, MIB: 1024 ** 2,
               G: 1024 ** 3, GB: 1024 ** 3, GIB: 1024 ** 3, T: 1024 ** 4, TB: 1024 ** 4, TIB: 1024 ** 4};

/** "500M", "1.5 GiB", "1000000" -> bytes (binary units, as the CLI's); '' -> 0 (no byte
 *  limit); null when unreadable. */
export function parseBytes(text) {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$/.exec(text);
  if (!text.trim()) return 0;
  if (!m || !(m[2].toUpperCase() in UNITS)) return null;
  return Math.round(Number(m[1]) * UNITS[m[2].toUpperCase()]);
}

/** `n` bytes as the limit editor shows it: exact (a whole number of the largest binary
 *  unit that divides it, or plain bytes), so saving unchanged text changes nothing. */
export function exactBytes(n) {
  for (const [unit, size] of [['TiB', 1024 ** 4], ['GiB', 1024 ** 3], ['MiB', 1024 ** 2], ['KiB', 1024]]) {
    if (n >= size && n % size === 0) return `${n / size} ${unit}`;
  }
  return String(n);
}

export const fmtDays = d => d === null || d === undefined ? '—'
  : d >= 10 ? `${d.toFixed(0)} days` : d >= 1 ? `${d.toFixed(1)} days`
  : d * 24 >= 1 ? `${(d * 24).toFixed(1)} hours` : d * 1440 >= 1 ? `${(d * 1440).toFixed(0)} minutes`
  : `${(d * 86400).toFixed(0)} seconds`;

const RULE_TEXT = {bytes: 'byte limit', age: 'age limit', floor: 'free-space floor'};

// While start-up still counts older recordings (`totalsComplete` false) the committed
// figure is a lower bound: shown as "≥ size, counting…".
function committed(s) {
  if (s.totalsComplete !== false) return bytes(s.committedFsBytes);
  return h('span', {title: 'nvr is still counting older recordings since it started'},
           `≥ ${bytes(s.committedFsBytes)}, counting…`);
}

export function render(main, ctx) {
  const perms = ctx.top.permissions || {};
  const body = h('div', {'aria-live': 'polite'});
  const refresh = h('button', {type: 'button', class: 'button small', onclick: () => load()},
                    icon('refresh'), ' Refresh');
  main.append(h('div', {class: 'toolbar'}, h('h1', {style: {margin: 0, flex: 1}}, 'Storage'), refresh), body);
  let editing = null;   // stream id whose limit editor is open (kept across refreshes)
  let shown = null;     // the last [report, protections] drawn
  const redraw = () => { if (shown) draw(...shown); };

  async function load() {
    body.setAttribute('aria-busy', 'true');
    try {
      const [rep, prots] = await Promise.all([api.get('/api/storage', {signal: ctx.signal}),
                                              protect.list({}, {signal: ctx.signal})]);
      shown = [rep, prots];
      draw(rep, prots);
    } catch (e) {
      showError(e, 'Storage');
    } finally {
      body.removeAttribute('aria-busy');
    }
  }

  const cell = (field, value, text, cls = 'num') =>
    h('td', {class: cls, dataset: {field, value: value === undefined || value === null ? '' : String(value)},
             title: typeof value === 'number' && /Bytes$/.test(field) ? `${value.toLocaleString()} bytes` : null}, text);

  function draw(rep, prots) {
    const streams = rep.streams || [];
    const label = s => `${s.cameraShortName} ${s.streamType}`;
    const warnings = [];
    for (const s of streams) {
      if (s.protectedOverLimit) {
        warnings.push(h('li', {dataset: {streamId: String(s.id), warning: 'protected-over-limit'}},
          `${label(s)}: protected recordings (${bytes(s.protectedBytes)}) exceed its byte limit ` +
          `(${bytes(s.retainBytes)}). Retention deletes nothing protected, so this stream holds ` +
          'more than its limit; remove protections or raise the limit.'));
      }
    }
    for (const d of rep.dirs || []) {
      if (d.belowFloor) {
        warnings.push(h('li', {dataset: {dirId: String(d.id), warning: 'below-floor'}},
          `${d.path}: free space ${bytes(d.freeBytes)} is below its floor of ${bytes(d.floorBytes)}; ` +
          'the oldest unprotected recordings of its streams are being deleted.'));
      }
      if (d.error) warnings.push(h('li', {dataset: {dirId: String(d.id), warning: 'error'}}, d.error));
    }
    replace(body,
      warnings.length ? h('div', {class: 'card warnings', role: 'alert'}, h('h2', null, 'Warnings'),
                          h('ul', null, warnings)) : null,
      streams.length ? streamTable(streams, label) : h('div', {class: 'page-message'}, 'There are no streams.'),
      h('p', {class: 'muted', style: {fontSize: '.85rem'}},
        'On disk counts whole 4 KiB filesystem blocks, as retention does. Uncommitted is video ',
        'written but not yet in the database (it is committed within the stream\'s flush interval). ',
        'Days are at the stream\'s recent rate (its last hour or so); "Keeps" is the smaller of the ',
        'limits. "Last deleted" is since nvr started. Times are in ', ctx.top.timeZoneName, '.'),
      dirTable(rep.dirs || [], streams, label),
      prots === null ? null : protectionTable(prots, streams));
  }

  function streamTable(streams, label) {
    const canEdit = !!perms.configureCameras;
    const used = s => {
      const frac = s.retainBytes ? (s.committedFsBytes + s.uncommittedFsBytes) / s.retainBytes : 0;
      return h('div', {class: 'bar' + (frac >= 1 ? ' full' : ''), role: 'progressbar', 'aria-valuemin': '0',
                       'aria-valuemax': '100', 'aria-valuenow': String(Math.round(frac * 100)),
                       'aria-label': `${label(s)}: used of the byte limit`},
               h('div', {style: {width: `${Math.min(100, frac * 100)}%`}}));
    };
    const rows = [];
    for (const s of streams) {
      const last = s.lastDeletion;
      rows.push(h('tr', {dataset: {streamId: String(s.id)}},
        h('th', {scope: 'row'}, label(s), s.record ? null : h('span', {class: 'chip'}, 'not recording')),
        cell('committedFsBytes', s.committedFsBytes, committed(s)),
        cell('uncommittedBytes', s.uncommittedBytes,
             s.uncommittedBytes ? h('span', {class: 'chip uncommitted',
                                             title: `${s.uncommittedRecordings} recording(s) written, not yet committed`},
                                    `+${bytes(s.uncommittedBytes)}`) : '—'),
        cell('retainBytes', s.retainBytes, s.retainBytes === null ? 'none' : bytes(s.retainBytes)),
        h('td', null, s.retainBytes ? used(s) : h('span', {class: 'muted', style: {fontSize: '.8rem'}}, 'no byte limit')),
        cell('retainDays', s.retainDays, s.retainDays === null ? 'none' : fmtDays(s.retainDays)),
        cell('daysAtBytesLimit', s.daysAtBytesLimit, fmtDays(s.daysAtBytesLimit)),
        cell('daysKept', s.daysKept, fmtDays(s.daysKept)),
        cell('recentBitrateBps', s.recentBitrateBps,
             s.recentBitrateBps === null ? '—' : `${(s.recentBitrateBps / 1e6).toFixed(2)} Mbps`),
        cell('oldestStartTime90k', s.oldestStartTime90k,
             s.oldestStartTime90k === null ? '—' : dateTime90k(s.oldestStartTime90k), 'nowrap'),
        cell('lastDeletion', last ? last.rule : null, last
          ? h('span', {title: `${last.count} recording(s), ${bytes(last.bytes)} at ${dateTime90k(Math.round(last.timeSec * 90000))}`},
              `${RULE_TEXT[last.rule] || last.rule}, ${timeOf90k(Math.round(last.timeSec * 90000))}`)
          : h('span', {class: 'muted'}, 'nothing yet'), 'nowrap'),
        cell('protectedBytes', s.protectedBytes,
             h('span', {class: s.protectedOverLimit ? 'chip warn' : null}, bytes(s.protectedBytes))),
        canEdit ? h('td', null, h('button', {type: 'button', class: 'icon-button', 'aria-expanded': String(editing === s.id),
            'aria-label': `Set the limits of ${label(s)}`, title: 'Set the limits',
            onclick: () => { editing = editing === s.id ? null : s.id; redraw(); }}, icon('edit'))) : null));
      if (canEdit && editing === s.id) rows.push(limitEditor(s, label));
    }
    const heads = ['Stream', 'On disk', 'Uncommitted', 'Byte limit', '', 'Age limit', 'Byte limit keeps',
                   'Keeps', 'Recent rate', 'Oldest', 'Last deleted by', 'Protected'];
    if (canEdit) heads.push('');
    // Narrow screens: one card per stream instead of the wide table (no editing there).
    const cards = h('div', {class: 'storage-cards'}, streams.map(s => h('div', {class: 'card', dataset: {streamId: String(s.id)}},
      h('h2', null, label(s)), s.retainBytes ? used(s) : null,
      h('dl', null,
        h('dt', null, 'On disk'), h('dd', null, committed(s)),
        h('dt', null, 'Uncommitted'), h('dd', null, s.uncommittedBytes ? `+${bytes(s.uncommittedBytes)}` : '—'),
        h('dt', null, 'Byte limit'), h('dd', null, s.retainBytes === null ? 'none' : bytes(s.retainBytes)),
        h('dt', null, 'Age limit'), h('dd', null, s.retainDays === null ? 'none' : fmtDays(s.retainDays)),
        h('dt', null, 'Keeps'), h('dd', null, fmtDays(s.daysKept)),
        h('dt', null, 'Oldest'), h('dd', null, s.oldestStartTime90k === null ? '—' : dateTime90k(s.oldestStartTime90k)),
        h('dt', null, 'Last deleted by'), h('dd', null, s.lastDeletion ? RULE_TEXT[s.lastDeletion.rule] : 'nothing yet'),
        h('dt', null, 'Protected'), h('dd', null, bytes(s.protectedBytes))))));
    return [h('div', {class: 'card table-wrap storage-table'}, h('table', {'aria-label': 'Storage per stream', class: 'storage-streams'},
      h('thead', null, h('tr', null, heads.map((x, i) => h('th', {class: [1, 2, 3, 5, 6, 7, 8, 11].includes(i) ? 'num' : null}, x)))),
      h('tbody', null, rows))), cards];
  }

  function limitEditor(s, label) {
    const bytesIn = h('input', {type: 'text', name: 'retainBytes', 'aria-label': 'Byte limit', size: '10',
                                value: s.retainBytes ? exactBytes(s.retainBytes) : '',
                                placeholder: 'e.g. 100 GiB'});
    const daysIn = h('input', {type: 'number', name: 'retainDays', 'aria-label': 'Age limit in days', min: '0',
                               step: 'any', value: s.retainDays ?? '', placeholder: 'none'});
    const err = h('p', {class: 'form-error', role: 'alert'});
    const save = async ev => {
      ev.preventDefault();
      const nbytes = parseBytes(bytesIn.value);
      const days = daysIn.value.trim() === '' ? null : Number(daysIn.value);
      if (nbytes === null) { err.textContent = `Byte limit "${bytesIn.value}": give a size like 500 MiB or 2 GiB.`; return; }
      if (days !== null && !(days >= 0)) { err.textContent = 'Age limit: a number of days from 0 up, or empty for none.'; return; }
      if (!nbytes && !days) { err.textContent = 'A recording stream needs a byte limit, an age limit or both.'; return; }
      const url = `/api/config/cameras/${s.cameraId}/streams/${s.streamType}`;
      const change = {retainBytes: nbytes, retainDays: days || null};
      try {
        try {
          await api.patch(url, change);
        } catch (e) {
          if (e.status !== 409) throw e;
          // The server's one line says how many and how big; its "set deleteRecordings:
          // true to go ahead" is the button here.
          const text = e.message.replace(/^PATCH \S+: 409 [^:]*: /, '')
            .replace(/;\s*set deleteRecordings: true[^;]*$/, '.') + ' Delete them and save the new limits?';
          if (!await confirmDialog(`Delete recordings of ${label(s)}?`, text,
                                   {confirmLabel: 'Delete and save', danger: true})) return;
          await api.patch(url, {...change, deleteRecordings: true});
        }
        editing = null;
        snackbar(`Limits of ${label(s)} saved.`);
        load();
      } catch (e) {
        err.textContent = e.message;
      }
    };
    return h('tr', {class: 'limit-editor', dataset: {streamId: String(s.id)}},
      h('td', {colspan: '13'}, h('form', {class: 'inline-form', onsubmit: save,
                                          'aria-label': `Limits of ${label(s)}`},
        h('label', null, 'Byte limit ', bytesIn),
        h('label', null, 'Age limit (days) ', daysIn),
        h('button', {type: 'submit', class: 'button small primary'}, 'Save'),
        h('button', {type: 'button', class: 'button small', onclick: () => { editing = null; redraw(); }}, 'Cancel'),
        h('span', {class: 'muted', style: {fontSize: '.85rem'}},
          'Empty byte limit: none (needs an age limit). Whichever limit bites first deletes the oldest recordings.'),
        err)));
  }

  function dirTable(dirs, streams, label) {
    if (!dirs.length) return null;
    return h('div', {class: 'card table-wrap'}, h('h2', null, 'Sample file directories'),
      h('table', {'aria-label': 'Storage per directory', class: 'dir-table'},
        h('thead', null, h('tr', null, ['Directory', 'Streams', 'Size', 'Free', 'Floor', '', 'Used by nvr',
          'Protected'].map((x, i) => h('th', {class: i >= 2 && i !== 5 ? 'num' : null}, x)))),
        h('tbody', null, dirs.map(d => h('tr', {dataset: {dirId: String(d.id)}},
          h('th', {scope: 'row', class: 'dir-path'}, d.path, d.open ? null : h('span', {class: 'chip'}, 'not open')),
          h('td', null, d.streamIds.map(id => streams.find(s => s.id === id)).filter(Boolean).map(label).join(', ') || '—'),
          cell('totalBytes', d.totalBytes, bytes(d.totalBytes)),
          cell('freeBytes', d.freeBytes, bytes(d.freeBytes)),
          cell('floorBytes', d.floorBytes, h('span', {title: `configured: ${d.floorSetting}`}, bytes(d.floorBytes))),
          h('td', {dataset: {field: 'belowFloor', value: String(d.belowFloor)}},
            d.belowFloor ? h('span', {class: 'chip warn'}, 'below the floor') : d.error ? h('span', {class: 'chip warn'}, 'unknown') : h('span', {class: 'chip'}, 'ok')),
          cell('usedBytes', d.usedBytes, bytes(d.usedBytes)),
          cell('protectedBytes', d.protectedBytes, bytes(d.protectedBytes)))))));
  }

  function protectionTable(prots, streams) {
    const canEdit = !!perms.protectRecordings;
    const camName = uuid => streams.find(s => s.cameraUuid === uuid)?.cameraShortName || uuid;
    const edit = async p => {
      const r = await protect.labelDialog({title: 'Edit protection', label: p.label});
      if (!r) return;
      try {
        await protect.update(p.id, {label: r.label});
        load();
      } catch (e) { showError(e, 'Edit protection'); }
    };
    const del = async p => {
      if (!await confirmDialog('Remove protection?', `"${p.label}": its recordings become subject to ` +
                               'retention again and may be deleted at the next check.',
                               {confirmLabel: 'Remove', danger: true})) return;
      try {
        await protect.remove(p.id);
        snackbar(`Protection "${p.label}" removed.`);
        load();
      } catch (e) { showError(e, 'Remove protection'); }
    };
    return h('div', {class: 'card table-wrap'}, h('h2', null, 'Protections'),
      prots.length ? h('table', {'aria-label': 'Protections', class: 'protections'},
        h('thead', null, h('tr', null, ['Label', 'Camera', 'Stream', 'From', 'To', 'By', 'Protected', '']
          .map((x, i) => h('th', {class: i === 6 ? 'num' : null}, x)))),
        h('tbody', null, prots.map(p => h('tr', {dataset: {protectionId: String(p.id)}},
          h('th', {scope: 'row'}, p.label),
          h('td', null, camName(p.cameraUuid)),
          h('td', null, p.streamType || 'all'),
          cell('startTime90k', p.startTime90k, dateTime90k(p.startTime90k), 'nowrap'),
          cell('endTime90k', p.endTime90k, dateTime90k(p.endTime90k), 'nowrap'),
          h('td', null, p.createdBy),
          cell('protectedBytes', p.protectedBytes, bytes(p.protectedBytes)),
          h('td', {class: 'nowrap'}, canEdit ? [
            h('button', {type: 'button', class: 'icon-button', 'aria-label': `Edit the label of ${p.label}`,
                         onclick: () => edit(p)}, icon('edit')),
            h('button', {type: 'button', class: 'icon-button', 'aria-label': `Remove ${p.label}`,
                         onclick: () => del(p)}, icon('delete'))] : null)))))
        : h('p', {class: 'muted'}, 'Nothing is protected. "Keep this clip" in the player protects a range from retention.'));
  }

  load();
}
