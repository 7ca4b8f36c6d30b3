// Users (#/users), for callers with the adminUsers permission: the list from
// `GET /api/users/` ({users: [{id, user: UserSubset}]}), add (`POST /api/users/` with
// {user}), edit (`PATCH /api/users/<id>` with {update}: username, password (a string
// sets it, null clears it, absent leaves it), permissions, disabled) and delete
// (`DELETE /api/users/<id>`, which also ends the user's sessions), after a
// confirmation. The api module adds the CSRF token to each mutation.
// Each user's "Sessions" lists where they are logged in (`GET /api/users/<id>/sessions`:
// created, last used, peer address, user agent) with Revoke
// (`POST /api/users/<id>/sessions/<sid>/revoke`), which cuts a session off at once.

import * as api from './api.js';
import {h, modal, replace, showError, snackbar, confirmDialog} from './dom.js';
import {dateTime90k} from './time.js';

export const PERMISSIONS = [
  ['viewVideo', 'View video', 'Watch live and recorded video, list recordings.'],
  ['readCameraConfigs', 'Read camera configs', 'Read camera settings, including their passwords. For trusted users only.'],
  ['updateSignals', 'Update signals', 'Set signals such as motion detection state.'],
  ['adminUsers', 'Administer users', 'Add, edit and delete users (this page).'],
  ['configureCameras', 'Configure cameras', 'Add, edit and delete cameras, streams and sample file directories, and test streams (the Settings page).'],
  ['protectRecordings', 'Protect recordings', 'Create, edit and delete protected ranges of recordings.'],
];
const MIN_PASSWORD = 8;

export function render(main, ctx) {
  const body = h('div');
  main.append(h('div', {class: 'toolbar'}, h('h1', {style: {margin: 0, flex: 1}}, 'Users'),
    h('button', {type: 'button', class: 'button primary', hidden: !ctx.top.permissions?.adminUsers,
                 onclick: () => editDialog(null)}, '+ Add user')), body);

  if (!ctx.top.permissions?.adminUsers) {
    body.append(h('div', {class: 'page-message', role: 'alert'},
      'Only users with the adminUsers permission can see this page.'));
    return;
  }

  async function load() {
    body.setAttribute('aria-busy', 'true');
    try {
      const resp = await api.get('/api/users/', {signal: ctx.signal});
      draw(resp.users || []);
    } catch (e) {
      showError(e, 'Users');
      replace(body, h('div', {class: 'page-message form-error'}, e.message));
    } finally {
      body.removeAttribute('aria-busy');
    }
  }

  function draw(users) {
    users.sort((a, b) => a.id - b.id);
    const me = ctx.top.user?.id;
    replace(body, h('div', {class: 'card table-wrap'}, h('table', {'aria-label': 'Users'},
      h('thead', null, h('tr', null, h('th', {class: 'num'}, 'Id'), h('th', null, 'Username'),
        h('th', {class: 'wide-only'}, 'Permissions'), h('th', null, 'Status'), h('th', null, h('span', {class: 'muted'}, 'Actions')))),
      h('tbody', null, users.map(u => h('tr', {dataset: {userId: String(u.id), username: u.user.username}},
        h('td', {class: 'num'}, String(u.id)),
        h('td', null, u.user.username, u.id === me ? h('span', {class: 'muted'}, ' (you)') : null),
        h('td', {class: 'wide-only'}, PERMISSIONS.filter(([k]) => u.user.permissions?.[k])
          .map(([k, label]) => h('span', {class: 'chip', title: label}, k))),
        h('td', null,
          u.user.disabled ? h('span', {class: 'chip warn'}, 'disabled') : null,
          u.user.password ? null : h('span', {class: 'chip'}, 'no password')),
        h('td', {class: 'nowrap'},
          h('button', {type: 'button', class: 'button small', 'aria-label': `Edit ${u.user.username}`,
                       onclick: () => editDialog(u)}, 'Edit'), ' ',
          h('button', {type: 'button', class: 'button small', 'aria-label': `Sessions of ${u.user.username}`,
                       onclick: () => sessionsDialog(u)}, 'Sessions'), ' ',
          h('button', {type: 'button', class: 'button small', 'aria-label': `Delete ${u.user.username}`,
                       onclick: () => deleteUser(u)}, 'Delete'))))))));
  }

  async function deleteUser(u) {
    const ok = await confirmDialog(`Delete user ${u.user.username}?`,
      `This deletes the user and ends every session they have. It can't be undone.`,
      {confirmLabel: 'Delete', danger: true});
    if (!ok) return;
    try {
      await api.del(`/api/users/${u.id}`);
      snackbar(`Deleted user ${u.user.username}.`);
      load();
    } catch (e) {
      showError(e, `Deleting ${u.user.username}`);
    }
  }

  function sessionsDialog(u) {
    const title = `Sessions of ${u.user.username}`;
    const list = h('div', {'aria-live': 'polite'});
    const content = h('div', {class: 'form'}, h('h2', null, title),
      h('p', {class: 'dialog-note'}, 'Where this user is logged in. Revoke ends a session at once: ',
        'its browser or app has to log in again.'),
      list,
      h('div', {class: 'actions'},
        h('button', {type: 'button', class: 'button', onclick: () => d.close()}, 'Close')));
    const when = (t90k, ua, addr) => t90k === null || t90k === undefined ? h('span', {class: 'muted'}, 'never')
      : [dateTime90k(t90k), h('div', {class: 'muted session-detail'}, [addr, ua].filter(Boolean).join(' · '))];
    async function loadSessions() {
      list.setAttribute('aria-busy', 'true');
      try {
        const r = await api.get(`/api/users/${u.id}/sessions`);
        const sessions = r.sessions || [];
        replace(list, sessions.length ? h('div', {class: 'table-wrap'}, h('table', {'aria-label': title},
          h('thead', null, h('tr', null, ['Session', 'Created', 'Last used', ''].map(x => h('th', null, x)))),
          h('tbody', null, sessions.map(s => h('tr', {dataset: {sessionId: s.id}},
            h('td', null, h('code', null, s.id), s.current ? h('span', {class: 'chip'}, 'this one') : null,
              s.description ? h('div', {class: 'muted session-detail'}, s.description) : null),
            h('td', {dataset: {field: 'created'}}, when(s.creationTime90k, s.creationUserAgent, s.creationPeerAddr)),
            h('td', {dataset: {field: 'lastUsed'}}, when(s.lastUseTime90k, s.lastUseUserAgent, s.lastUsePeerAddr),
              s.useCount ? h('div', {class: 'muted session-detail'}, `${s.useCount} requests`) : null),
            h('td', null, h('button', {type: 'button', class: 'button small',
              'aria-label': `Revoke session ${s.id}`, onclick: () => revoke(s)}, 'Revoke')))))))
          : h('p', {class: 'muted'}, 'No sessions: this user isn\'t logged in anywhere.'));
      } catch (e) {
        replace(list, h('p', {class: 'form-error', role: 'alert'}, e.message));
      } finally {
        list.removeAttribute('aria-busy');
      }
    }
    async function revoke(s) {
      const ok = await confirmDialog(`Revoke session ${s.id}?`,
        s.current ? 'This is the session you are using: this page stops working until you log in again.'
                  : `${u.user.username} will have to log in again there.`,
        {confirmLabel: 'Revoke', danger: true});
      if (!ok) return;
      try {
        await api.post(`/api/users/${u.id}/sessions/${s.id}/revoke`, {});
        snackbar(`Revoked session ${s.id}.`);
      } catch (e) {
        showError(e, 'Revoking the session');
      }
      if (d.open) loadSessions();
    }
    const d = modal(content, {label: title, className: 'wide-dialog'});
    loadSessions();
  }

  function editDialog(prior) {
    const hasPassword = !!prior?.user?.password;
    const title = prior ? `Edit user ${prior.user.username}` : 'Add user';
    const pwChoices = prior
      ? (hasPassword ? [['leave', 'Leave set'], ['clear', 'Clear'], ['set', 'Set a new password']]
                     : [['leave', 'Leave unset'], ['set', 'Set a new password']])
      : [['leave', 'No password (can\'t log in)'], ['set', 'Set a password']];
    const pwInput = h('input', {type: 'password', name: 'newPassword', autocomplete: 'new-password',
                                minlength: String(MIN_PASSWORD), 'aria-label': 'New password'});
    const pwLabel = h('label', {hidden: true}, `New password (at least ${MIN_PASSWORD} characters)`, pwInput);
    const err = h('p', {class: 'form-error', role: 'alert', hidden: true});
    const defaultPw = prior ? 'leave' : 'set';
    const form = h('form', {class: 'form', method: 'dialog'},
      h('h2', null, title),
      prior ? h('p', {class: 'dialog-note'}, `Id ${prior.id}`) : null,
      h('label', null, 'Username', h('input', {name: 'username', required: true, autocomplete: 'off',
        autocapitalize: 'none', value: prior?.user?.username ?? ''})),
      h('fieldset', null, h('legend', null, 'Password'),
        pwChoices.map(([v, label]) => h('label', {class: 'check'},
          h('input', {type: 'radio', name: 'pwAction', value: v, checked: v === defaultPw,
                      onchange: () => sync()}), label)),
        pwLabel),
      h('fieldset', null, h('legend', {title: 'Permissions apply to sessions created after the change.'}, 'Permissions'),
        PERMISSIONS.map(([k, label, help]) => [
          h('label', {class: 'check', title: help}, h('input', {type: 'checkbox', name: k,
            checked: prior ? !!prior.user.permissions?.[k] : k === 'viewVideo'}), label),
          h('div', {class: 'hint'}, help)])),
      h('label', {class: 'check'}, h('input', {type: 'checkbox', name: 'disabled', checked: !!prior?.user?.disabled}),
        'Disabled (can\'t log in; existing sessions stop working)'),
      err,
      h('div', {class: 'actions'},
        h('button', {type: 'button', class: 'button', onclick: () => d.close()}, 'Cancel'),
        h('button', {type: 'submit', class: 'button primary'}, prior ? 'Save' : 'Add')));
    const sync = () => {
      const set = form.pwAction.value === 'set';
      pwLabel.hidden = !set;
      pwInput.required = set;
    };
    sync();
    form.addEventListener('submit', async ev => {
      ev.preventDefault();
      err.hidden = true;
      const action = form.pwAction.value;
      const user = {username: form.username.value.trim()};
      if (action === 'set') {
        if (pwInput.value.length < MIN_PASSWORD) {
          err.hidden = false;
          err.textContent = `The password needs at least ${MIN_PASSWORD} characters.`;
          return;
        }
        user.password = pwInput.value;
      } else if (action === 'clear') {
        user.password = null;
      }
      user.permissions = Object.fromEntries(PERMISSIONS.map(([k]) => [k, form[k].checked]));
      user.disabled = form.disabled.checked;
      const submit = form.querySelector('[type=submit]');
      submit.disabled = true;
      try {
        if (prior) await api.patch(`/api/users/${prior.id}`, {update: user});
        else await api.post('/api/users/', {user});
        d.close();
        snackbar(prior ? `Saved user ${user.username}.` : `Added user ${user.username}.`);
        if (prior && prior.id === ctx.top.user?.id) await ctx.reloadTop();
        load();
      } catch (e) {
        err.hidden = false;
        err.textContent = e.message;
      } finally {
        submit.disabled = false;
      }
    });
    const d = modal(form, {label: title});
    form.username.focus();
  }

  load();
}
