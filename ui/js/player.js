// The modal player: a <video> playing one `view.mp4` URL, its aspect ratio forced from
// the sample entry's pixel aspect ratio (`aspectWidth:aspectHeight`, reference §8:
// Firefox ignores `pasp`), with a download link; the server's Content-Disposition
// gives the file its name. "Save still" downloads the frame on screen as a JPEG:
// `still.jpg` with the view's own `s=` values and `at=` its media time (the frame a
// player shows there, frame-exact across the view's recordings).

import * as api from './api.js';
import {h, icon, modal, showError} from './dom.js';
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
 *  the URL covers (shown in the header and as data attributes, which tests read). */
export function openPlayer({url, title, start90k, end90k, entry}) {
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
  const d = modal([
    h('div', {class: 'player-head'},
      h('span', {class: 'title'}, `${title}: ${dateTime90k(start90k, {millis: true})} – ${timeOf90k(end90k, {millis: true})}`),
      h('button', {type: 'button', class: 'button small', title: 'Download the frame on screen as a JPEG',
                   onclick: saveStill}, icon('camera'), ' Save still'),
      h('a', {class: 'button small', href: url, download: '', title: 'Download this .mp4'},
        icon('download'), ' Download'),
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
