// Time: 90 kHz ticks since the epoch (the API's unit) and the server's time zone
// (`GET /api/`'s timeZoneName), in which every date and time of the UI is shown and
// entered (reference §8: "times use the NVR's zone"). Intl does the zone arithmetic;
// a wall time that a DST change skips or repeats resolves to the later offset's reading.

export const TICKS = 90000;
let zone = 'UTC';
let partsFmt = null;

export function setZone(name) {
  try {
    partsFmt = new Intl.DateTimeFormat('en-US', {
      timeZone: name, hourCycle: 'h23', year: 'numeric', month: '2-digit', day: '2-digit',
      hour: '2-digit', minute: '2-digit', second: '2-digit'});
    zone = name;
  } catch (e) {
    console.warn(`unknown time zone ${name}; using UTC`);
    setZone('UTC');
  }
}
setZone('UTC');
export const zoneName = () => zone;

/** {y, mo, d, h, mi, s} of epoch milliseconds `ms` in the server's zone. */
export function zoneParts(ms) {
  const p = {};
  for (const {type, value} of partsFmt.formatToParts(new Date(Math.floor(ms / 1000) * 1000))) {
    p[type] = value;
  }
  return {y: +p.year, mo: +p.month, d: +p.day, h: +p.hour % 24, mi: +p.minute, s: +p.second};
}

/** The zone's offset from UTC at `ms`, in milliseconds. */
export function offsetMs(ms) {
  const t = Math.floor(ms / 1000) * 1000;
  const p = zoneParts(t);
  return Date.UTC(p.y, p.mo - 1, p.d, p.h, p.mi, p.s) - t;
}

/** Epoch ms of a wall-clock reading in the server's zone. */
export function zonedMs(y, mo, d, h = 0, mi = 0, s = 0, ms = 0) {
  const guess = Date.UTC(y, mo - 1, d, h, mi, s, ms);
  const off1 = offsetMs(guess - offsetMs(guess));
  const t = guess - off1;
  const off2 = offsetMs(t);
  return off2 === off1 ? t : guess - off2;
}

const pad = (n, w = 2) => String(n).padStart(w, '0');

export const to90k = ms => Math.round(ms * 90);
export const toMs = t90k => t90k / 90;

/** 'YYYY-MM-DD' of a 90k time in the zone. */
export function dayOf90k(t90k) {
  const p = zoneParts(toMs(t90k));
  return `${p.y}-${pad(p.mo)}-${pad(p.d)}`;
}

/** 'HH:MM:SS' (plus '.mmm' if `millis` and not whole) of a 90k time in the zone. */
export function timeOf90k(t90k, {millis = false} = {}) {
  const ms = toMs(t90k);
  const p = zoneParts(ms);
  let s = `${pad(p.h)}:${pad(p.mi)}:${pad(p.s)}`;
  const frac = Math.round(((ms % 1000) + 1000) % 1000);
  if (millis && frac) s += '.' + pad(frac, 3);
  return s;
}

export const dateTime90k = (t90k, opts) => `${dayOf90k(t90k)} ${timeOf90k(t90k, opts)}`;

/** Parses 'YYYY-MM-DD' -> [y, m, d] or null. */
export function parseDay(s) {
  const m = /^(\d{4})-(\d{2})-(\d{2})$/.exec(s || '');
  return m ? [+m[1], +m[2], +m[3]] : null;
}

/** Parses 'HH:MM[:SS[.mmm]]' -> ms since midnight, or null. */
export function parseTime(s) {
  const m = /^(\d{1,2}):(\d{2})(?::(\d{2})(?:\.(\d{1,3}))?)?$/.exec(s || '');
  if (!m) return null;
  return ((+m[1] * 60 + +m[2]) * 60 + +(m[3] || 0)) * 1000 + +((m[4] || '0').padEnd(3, '0'));
}

/** 90k time of `day` ('YYYY-MM-DD') at `time` ms past midnight, in the zone. */
export function dayTime90k(day, timeMs = 0) {
  const [y, m, d] = parseDay(day);
  const hh = Math.floor(timeMs / 3600000), mm = Math.floor(timeMs / 60000) % 60;
  const ss = Math.floor(timeMs / 1000) % 60, ms = timeMs % 1000;
  return to90k(zonedMs(y, m, d, hh, mm, ss, ms));
}

/** The day after 'YYYY-MM-DD'. */
export function nextDay(day, n = 1) {
  const [y, m, d] = parseDay(day);
  const t = new Date(Date.UTC(y, m - 1, d + n));
  return `${t.getUTCFullYear()}-${pad(t.getUTCMonth() + 1)}-${pad(t.getUTCDate())}`;
}

/** Today's date in the server's zone. */
export const today = () => dayOf90k(to90k(Date.now()));

/** A duration as "1 d 2 h", "3 h 4 min", "5 min 6 s" or "7.3 s". */
export function duration90k(t90k) {
  const s = t90k / TICKS;
  if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${Math.floor(s % 60)} s`;
  const hh = Math.floor(m / 60);
  if (hh < 24) return `${hh} h ${m % 60} min`;
  return `${Math.floor(hh / 24)} d ${hh % 24} h`;
}
