// Protected footage (issue 17 item 3) in the UI: the calls of the protections API
// (docs/api.md, "Protections": listing needs viewVideo, changes protectRecordings) and
// the two dialogs they need. A protection keeps every recording overlapping
// [startTime90k, endTime90k) of one stream (`streamType`) or, with streamType null, of
// every stream of the camera, from retention of any kind, until it is removed.
// Used by the player ("Keep this clip"), the timeline (drawn ranges) and the Storage
// page (the list, with edit label and remove).

import * as api from './api.js';
import {h, modal} from './dom.js';

export const MAX_LABEL = 200;

/** GET /api/protections with optional filters; resolves the list, or null when this
 *  server has no protections API (404), so pages can leave the feature out. */
export async function list(params = {}, {signal} = {}) {
  try {
    const r = await api.get(`/api/protections${api.query(params)}`, {signal});
    return r.protections || [];
  } catch (e) {
    if (e.status === 404) return null;
    throw e;
  }
}

export const create = body => api.post('/api/protections', body);
export const update = (id, body) => api.patch(`/api/protections/${id}`, body);
export const remove = id => api.del(`/api/protections/${id}`);

/** A dialog asking for a protection's label (and, for a new one, whether it covers
 *  every stream of the camera). Resolves {label, allStreams} or null when cancelled. */
export function labelDialog({title, label = '', note, askStreams = false}) {
  return new Promise(resolve => {
    let result = null;
    const input = h('input', {type: 'text', name: 'label', required: true, maxlength: String(MAX_LABEL),
                              value: label, 'aria-label': 'Label', autocomplete: 'off'});
    const all = h('input', {type: 'checkbox', name: 'allStreams', checked: true});
    const form = h('form', {method: 'dialog', class: 'form', onsubmit: ev => {
        if (ev.submitter?.value !== 'ok') return;
        const v = input.value.trim();
        if (!v) { ev.preventDefault(); input.focus(); return; }
        result = {label: v, allStreams: all.checked};
      }},
      h('h2', null, title),
      note ? h('p', {class: 'dialog-note'}, note) : null,
      h('label', null, 'Label', input),
      askStreams ? h('label', {class: 'check'}, all, 'Every stream of this camera (main and sub)') : null,
      h('div', {class: 'actions'},
        h('button', {type: 'submit', class: 'button', value: 'cancel', formnovalidate: true}, 'Cancel'),
        h('button', {type: 'submit', class: 'button primary', value: 'ok'}, 'Save')));
    modal(form, {label: title, className: 'protect-dialog', onclose: () => resolve(result)});
    input.focus();
    input.select();
  });
}
