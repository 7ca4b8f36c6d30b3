// The modal player: a <video> playing one `view.mp4` URL, its aspect ratio forced from
// the sample entry's pixel aspect ratio (`aspectWidth:aspectHeight`, reference §8:
// Firefox ignores `pasp`), with a download link; the server's Content-Disposition
// gives the file its name.

import {h, icon, modal} from './dom.js';
import {dateTime90k, timeOf90k} from './time.js';

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
  const d = modal([
    h('div', {class: 'player-head'},
      h('span', {class: 'title'}, `${title}: ${dateTime90k(start90k, {millis: true})} – ${timeOf90k(end90k, {millis: true})}`),
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
