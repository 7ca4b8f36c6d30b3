// Helpers over the `GET /api/` answer (reference §5.2): the list of streams, their
// day summaries, and fetching a stream's recordings.

import * as api from './api.js';

export const STREAM_TYPES = ['main', 'sub', 'ext'];

/** Every stream of every camera: [{camera, type, stream, id, label}], in camera order. */
export function allStreams(top) {
  const out = [];
  for (const camera of top.cameras || []) {
    for (const type of STREAM_TYPES) {
      const stream = camera.streams?.[type];
      if (stream) out.push({camera, type, stream, id: stream.id, label: `${camera.shortName} ${type}`});
    }
  }
  return out;
}

export function streamById(top, id) {
  return allStreams(top).find(s => s.id === id);
}

/** Sorted day keys ('YYYY-MM-DD') with video in any of `streams`. */
export function daysWithVideo(streams) {
  const days = new Set();
  for (const s of streams) for (const d of Object.keys(s.stream.days || {})) days.add(d);
  return [...days].sort();
}

/** `GET .../recordings` of stream `s` over [start90k, end90k). */
export function fetchRecordings(s, start90k, end90k, split90k, signal) {
  return api.get(api.recordingsUrl(s.camera.uuid, s.type, {
    startTime90k: start90k, endTime90k: end90k, split90k}), {signal});
}
