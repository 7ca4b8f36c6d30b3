// Number formatting shared by the pages (binary units for sizes, as the CLI's).

export function bytes(n) {
  if (n === undefined || n === null) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0, v = n;
  while (Math.abs(v) >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return i === 0 ? `${v} B` : `${v.toFixed(v < 10 ? 2 : 1)} ${units[i]}`;
}

export const mib = n => (n / 1048576).toFixed(1);

/** Megabits per second of `nbytes` over `t90k` ticks. */
export function mbps(nbytes, t90k) {
  return t90k > 0 ? (nbytes * 8 / (t90k / 90000) / 1e6) : 0;
}

export function fps(frames, t90k) {
  if (!(t90k > 0)) return '—';
  const f = frames / (t90k / 90000);
  return Math.abs(f - Math.round(f)) < 0.05 ? String(Math.round(f)) : f.toFixed(1);
}
