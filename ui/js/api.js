// The JSON API client (reference §5): fetch with descriptive errors, the session's
// CSRF token added to every mutation, and a 401 answered by the login dialog, after
// which the request is sent again. Error bodies are text/plain; they become the
// ApiError's message together with the method, path and status.

export class ApiError extends Error {
  constructor(status, message, retryAfter, reason) {
    super(message);
    this.name = 'ApiError';
    this.status = status;          // 0: the server couldn't be reached
    this.retryAfter = retryAfter;  // seconds, from a 429's Retry-After
    this.reason = reason;          // the server's one-line text/plain body, if any
  }
}

let csrf = null;
let onUnauthenticated = null;

/** The token from `GET /api/`'s user.session.csrf (null when not logged in). */
export function setCsrf(token) { csrf = token || null; }

/** fn(message) -> Promise that resolves once logged in (or rejects if the user gives
 *  up); called for a 401 from any request. */
export function setUnauthenticatedHandler(fn) { onUnauthenticated = fn; }

/** Sends a request; returns the parsed JSON, the text, or null for a 204.
 *  `body` (an object) is sent as JSON with `csrf` added when logged in. */
export async function request(method, url, body, {signal, login = true} = {}) {
  const init = {method, headers: {Accept: 'application/json'}, signal,
                credentials: 'same-origin', cache: 'no-store'};
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(csrf && !('csrf' in body) ? {...body, csrf} : body);
  }
  let resp;
  try {
    resp = await fetch(url, init);
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new ApiError(0, `${method} ${url}: can't reach the server (${e.message}); ` +
                          'check that nvr is running and the network is up');
  }
  if (resp.status === 401 && login && onUnauthenticated) {
    const text = (await resp.text()).trim();
    await onUnauthenticated(text);
    return request(method, url, body, {signal, login});
  }
  if (!resp.ok) {
    const text = (await resp.text()).trim();
    const retry = resp.headers.get('Retry-After');
    throw new ApiError(resp.status,
      `${method} ${url}: ${resp.status} ${resp.statusText || statusText(resp.status)}` +
      (text ? `: ${text}` : ''), retry ? Number(retry) : undefined, text || undefined);
  }
  if (resp.status === 204) return null;
  const ct = resp.headers.get('Content-Type') || '';
  return ct.includes('json') ? resp.json() : resp.text();
}

function statusText(s) {
  return {400: 'Bad Request', 401: 'Unauthorized', 403: 'Forbidden', 404: 'Not Found',
          412: 'Precondition Failed', 429: 'Too Many Requests',
          500: 'Internal Server Error'}[s] || '';
}

export const get = (url, opts) => request('GET', url, undefined, opts);
export const post = (url, body, opts) => request('POST', url, body, opts);
export const patch = (url, body, opts) => request('PATCH', url, body, opts);
export const del = (url, body, opts) => request('DELETE', url, body ?? {}, opts);

/** Builds a query string from an object, skipping undefined/null values. */
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null) q.set(k, v);
  const s = q.toString();
  return s ? '?' + s : '';
}

// ---- URLs of the API ----
export const streamBase = (cameraUuid, type) =>
  `/api/cameras/${encodeURIComponent(cameraUuid)}/${type}`;
export const recordingsUrl = (cameraUuid, type, params) =>
  `${streamBase(cameraUuid, type)}/recordings${query(params)}`;
export const initUrl = (vseId) => `/api/init/${vseId}.mp4`;
/** `still.jpg` (params: t, s, at, key, width, height) and `latest.jpg` of a stream. */
export const stillUrl = (cameraUuid, type, params) =>
  `${streamBase(cameraUuid, type)}/still.jpg${query(params)}`;
export const latestUrl = (cameraUuid, type, params) =>
  `${streamBase(cameraUuid, type)}/latest.jpg${query(params)}`;

/** Fetches a JPEG still; resolves {url (an object URL: revoke it when done), frameTime90k,
 *  blob}. Errors are ApiErrors with the server's one-line reason (404: no video there). */
export async function fetchStill(url, {signal} = {}) {
  let resp;
  try {
    resp = await fetch(url, {credentials: 'same-origin', signal});
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new ApiError(0, `GET ${url}: can't reach the server (${e.message})`);
  }
  if (!resp.ok) {
    const text = (await resp.text()).trim();
    throw new ApiError(resp.status, `GET ${url}: ${resp.status}${text ? `: ${text}` : ''}`);
  }
  const blob = await resp.blob();
  return {url: URL.createObjectURL(blob), blob,
          frameTime90k: Number(resp.headers.get('X-Frame-Time-90k'))};
}
export function liveUrl(cameraUuid, type) {
  const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${proto}//${location.host}${streamBase(cameraUuid, type)}/live.m4s`;
}

/** `view.mp4` of aggregated recording row `r` (as `GET .../recordings` lists it),
 *  optionally from `start90k` to `end90k` (wall time, clipped to the row). Adds
 *  `@openId` when the row includes uncommitted recordings, and caps a growing row
 *  at its known length (reference §8, like Moonfire's UI). */
export function viewUrl(cameraUuid, type, r, {start90k, end90k, ts = false} = {}) {
  const endId = r.endId ?? r.startId;
  let s = endId !== r.startId ? `${r.startId}-${endId}` : `${r.startId}`;
  if (r.firstUncommitted !== undefined && r.firstUncommitted !== null) s += `@${r.openId}`;
  let rel0 = '', rel1 = '';
  if (start90k !== undefined && start90k > r.startTime90k) rel0 = String(start90k - r.startTime90k);
  if (end90k !== undefined && end90k < r.endTime90k) rel1 = String(end90k - r.startTime90k);
  else if (r.growing) rel1 = String(r.endTime90k - r.startTime90k);
  if (rel0 || rel1) s += `.${rel0}-${rel1}`;
  return `${streamBase(cameraUuid, type)}/view.mp4?s=${s}${ts ? '&ts=true' : ''}`;
}
