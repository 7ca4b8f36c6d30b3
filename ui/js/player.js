// The modal player: a <video> playing one `view.mp4` URL, its aspect ratio forced from
// the sample entry's pixel aspect ratio (`aspectWidth:aspectHeight`, reference §8:
// Firefox ignores `pasp`), with a download link; the server's Content-Disposition
// gives the file its name. "Save still" downloads the frame on screen as a JPEG:
// `still.jpg` with the view's own `s=` values and `at=` its media time (the frame a
// player shows there, frame-exact across the view's recordings). "Keep this clip"
// (only for protectRecordings: callers pass `keep`) protects the range shown from
// retention, with a label (POST /api/protections, protect.js).

import * as api from './api.js';
import {h, icon, modal, showError, snackbar} from './dom.js';
import * as protect from './protect.js';
import {dateTime90k, timeOf90k} from './time.js';

/** `still.jpg` of the frame `view.mp4` URL `url` shows at `currentTime` seconds. The
 *  browser shows the frame whose time range holds currentTime; one tick more keeps a
 *  time read as a hair before a frame's start (float seconds) on that frame. */
export function stillUrlOf(url, currentTime) {
  const [path, q] = url.split('?');
  const params = new URLSearchParams(q);
  params.delete('ts');
  params.set('at', String(Math.max(0, Math.round(currentTime * 90000) + 1)));
  return `${path.replace(/view\.mp4$/, 'still.jpg')}?${params}`;
}

/** Opens the player. `title` names the stream; `start90k`/`end90k` are the wall times
 *  the URL covers (shown in the header and as data attributes, which tests read).
 *  `keep` ({cameraUuid, streamType}, given when the caller may protect recordings)
 *  adds "Keep this clip"; `onKept(protection id)` runs after one is made. */
export function openPlayer({url, title, start90k, end90k, entry, keep, onKept}) {
  const video = h('video', {controls: true, autoplay: true, muted: true, playsinline: true,
                            preload: 'auto', 'aria-label': `Video: ${title}`,
                            dataset: {start90k: String(start90k), end90k: String(end90k)}});
  video.muted = true;
  if (entry && entry.aspectWidth && entry.aspectHeight) {
    // As large as the window allows, in the entry's display aspect ratio.
    video.style.aspectRatio = `${entry.aspectWidth} / ${entry.aspectHeight}`;
    video.style.width = `min(calc(100vw - 18px), calc((100vh - 120px) * ${entry.aspectWidth} / ${entry.aspectHeight}))`;
  }
  video.src = url;
  const saveStill = async (ev) => {
    const button = ev.currentTarget;
    button.disabled = true;
    try {
      const still = await api.fetchStill(stillUrlOf(url, video.currentTime));
      const name = `${title}-${dateTime90k(still.frameTime90k, {millis: true})}`
        .replace(/[^A-Za-z0-9._-]+/g, '-') + '.jpg';
      const a = h('a', {href: still.url, download: name, hidden: true});
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(still.url), 60_000);
    } catch (e) {
      showError(e, 'Save still');
    } finally {
      button.disabled = false;
    }
  };
  const keepClip = async (ev) => {
    const button = ev.currentTarget;
    const range = `${dateTime90k(start90k)} – ${timeOf90k(end90k)}`;
    const r = await protect.labelDialog({title: 'Keep this clip', askStreams: true,
      note: `${title}, ${range}: recordings overlapping this range are never deleted by ` +
            'retention until the protection is removed (Storage page).'});
    if (!r) return;
    button.disabled = true;
    try {
      const out = await protect.create({cameraUuid: keep.cameraUuid,
        streamType: r.allStreams ? null : keep.streamType,
        startTime90k: start90k, endTime90k: end90k, label: r.label});
      button.dataset.protectionId = String(out.id);
      button.replaceChildren(icon('lock'), ' Kept');
      button.title = `Kept as "${r.label}"`;
      snackbar(`Kept "${r.label}": ${title} ${range}.`);
      if (onKept) onKept(out.id);
    } catch (e) {
      button.disabled = false;
      showError(e, 'Keep this clip');
    }
  };
  const d = modal([
    h('div', {class: 'player-head'},
      h('span', {class: 'title'}, `${title}: ${dateTime90k(start90k, {millis: true})} – ${timeOf90k(end90k, {millis: true})}`),
      h('button', {type: 'button', class: 'button small', title: 'Download the frame on screen as a JPEG',
                   onclick: saveStill}, icon('camera'), ' Save still'),
      h('a', {class: 'button small', href: url, download: '', title: 'Download this .mp4'},
        icon('download'), ' Download'),
      keep ? h('button', {type: 'button', class: 'button small keep-clip',
                          title: 'Protect this range from retention, with a label',
                          onclick: keepClip}, icon('lock'), ' Keep this clip') : null,
      h('button', {type: 'button', class: 'icon-button', 'aria-label': 'Close player',
                   onclick: () => d.close()}, icon('close'))),
    video,
  ], {className: 'player', label: `Player: ${title}`, onclose: () => {
    video.pause();
    video.removeAttribute('src');
    video.load();  // releases the connection
  }});
  return d;
}
