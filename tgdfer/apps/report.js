// tgdfer timeline report: plain JavaScript, no library, nothing fetched. Reads the JSON in #data (written by
// tgdfer/apps/report.py): per-window columns as base64 little-endian typed arrays, probabilities in thousandths.
(() => {
  'use strict';
  const D = JSON.parse(document.getElementById('data').textContent);
  const TAB10 = ['#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b', '#e377c2', '#7f7f7f', '#bcbd22', '#17becf'];
  const TAB20 = ['#1f77b4', '#aec7e8', '#ff7f0e', '#ffbb78', '#2ca02c', '#98df8a', '#d62728', '#ff9896', '#9467bd', '#c5b0d5',
    '#8c564b', '#c49c94', '#e377c2', '#f7b6d2', '#7f7f7f', '#c7c7c7', '#bcbd22', '#dbdb8d', '#17becf', '#9edae5'];
  const PERSON_COLOURS = ['#e6194b', '#3cb44b', '#4363d8', '#f58231', '#911eb4', '#1fb5c9', '#f032e6', '#8a9a00', '#9a6324', '#000075'];
  const NO_FACE = '#d9d9d9';
  const MISSING_U16 = 65535, MISSING_BOX = -32768, NO_TOP = 255;
  const AREA_H = 82, STRIP_GAP = 4, STRIP_H = 12, CHART_H = 100; // css pixels of a person's chart canvas

  // ------------------------------------------------------------------------------------------------ the data
  function typed(b64, Type) {
    const text = atob(b64);
    const bytes = new Uint8Array(text.length);
    for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
    return new Type(bytes.buffer, 0, bytes.byteLength / Type.BYTES_PER_ELEMENT);
  }
  const W = D.windows, C = D.classes.length;
  const classColour = D.classes.map((_, c) => (C <= 10 ? TAB10 : TAB20)[c % 20]);
  const startMs = typed(D.start_ms, Int32Array), endMs = typed(D.end_ms, Int32Array);
  const boundsMs = typed(D.bounds_ms, Int32Array); // (W+1,) the stretch of time each row stands for
  const centres = new Float64Array(W); // seconds
  for (let w = 0; w < W; w++) centres[w] = (startMs[w] + endMs[w]) / 2000;
  const tStart = boundsMs[0] / 1000, tEnd = Math.max(boundsMs[W] / 1000, D.duration_s || 0);
  const persons = D.persons.map((p, i) => ({
    index: i, name: p.name, summary: p.summary, colour: PERSON_COLOURS[i % PERSON_COLOURS.length],
    status: typed(p.status, Uint8Array), face: typed(p.face, Uint16Array), probs: typed(p.probs, Uint16Array),
    top: typed(p.top, Uint8Array), boxes: p.boxes ? typed(p.boxes, Int16Array) : null,
  }));

  function rowAt(t) { // the row whose stretch holds t (its window's centre is the nearest), -1 outside the video
    const ms = t * 1000;
    if (!(ms >= boundsMs[0]) || ms > boundsMs[W]) return -1;
    let lo = 0, hi = W - 1;
    while (lo < hi) { const mid = (lo + hi + 1) >> 1; if (boundsMs[mid] <= ms) lo = mid; else hi = mid - 1; }
    return lo;
  }
  function firstCentreFrom(t, from) { // smallest w >= from with centres[w] >= t
    let lo = from, hi = W;
    while (lo < hi) { const mid = (lo + hi) >> 1; if (centres[mid] < t) lo = mid + 1; else hi = mid; }
    return lo;
  }
  function prob(p, w, c) { const v = p.probs[w * C + c]; return v === MISSING_U16 ? NaN : v / 1000; }
  function box(p, w) {
    if (!p.boxes || w < 0 || w >= W || p.boxes[4 * w] === MISSING_BOX) return null;
    return [p.boxes[4 * w], p.boxes[4 * w + 1], p.boxes[4 * w + 2], p.boxes[4 * w + 3]];
  }
  function boxAt(p, t) { // the nearest centre's box, moved linearly towards the neighbouring centre's when they
    const k = rowAt(t), here = box(p, k); // overlap (boxes apart: a cut or a jump, where the box is held)
    if (!here) return null;
    const j = t >= centres[k] ? k + 1 : k - 1, there = box(p, j);
    if (!there || there[0] >= here[2] || there[2] <= here[0] || there[1] >= here[3] || there[3] <= here[1]) return here;
    const a = Math.abs(t - centres[k]) / Math.abs(centres[j] - centres[k]);
    return here.map((v, i) => v + a * (there[i] - v));
  }
  function clock(t, decimals = 1) {
    const sign = t < 0 ? '-' : '', s = Math.abs(t), h = Math.floor(s / 3600), m = Math.floor(s / 60) % 60;
    const sec = (s % 60).toFixed(decimals).padStart(decimals ? decimals + 3 : 2, '0');
    return sign + (h ? `${h}:${String(m).padStart(2, '0')}` : String(m)) + ':' + sec;
  }
  function el(tag, attrs = {}, text) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }
  const chip = colour => el('span', { class: 'chip', style: `background:${colour}` });

  // ---------------------------------------------------------------------------------------------- the page
  const video = document.getElementById('video'), overlay = document.getElementById('overlay');
  const note = document.getElementById('video-note'), blurBox = document.getElementById('blur');
  const spanSelect = document.getElementById('span'), clockText = document.getElementById('clock');
  const peopleSection = document.getElementById('people'), axisCanvas = document.getElementById('axis-canvas');
  let now = tStart, videoOk = false, spanS = 0;
  const view = { t0: tStart, t1: tEnd };
  const sizes = { chart: 0, overlayW: 0, overlayH: 0 }; // css pixels, measured on (re)draws, not on every frame
  function measure() {
    sizes.chart = persons.length ? persons[0].wrap.clientWidth : 0;
    sizes.overlayW = overlay.clientWidth;
    sizes.overlayH = overlay.clientHeight;
  }

  function fillHeader() {
    document.getElementById('title').textContent = `${D.title}: emotion timeline`;
    const run = D.run ? String(D.run) : 'unknown';
    document.getElementById('facts').textContent = `run ${run} · ${W} windows of ${D.window_s ?? '?'} s every ` +
      `${D.stride_s ?? '?'} s · ${clock(tEnd, 0)} · ${persons.length} person${persons.length === 1 ? '' : 's'}`;
    const legend = document.getElementById('legend');
    legend.append(el('h2', {}, 'Run'));
    const facts = el('dl');
    const add = (k, v) => { if (v !== null && v !== undefined) facts.append(el('dt', {}, k), el('dd', {}, String(v))); };
    add('run', D.run); add('window', D.window ?? `${D.window_s} s`); add('stride', D.stride ?? `${D.stride_s} s`);
    add('video', D.video.name ? D.video.name + (D.video.embedded ? ' (embedded)' : '') : 'none');
    add('length', `${clock(tEnd, 1)} (${W} windows)`);
    add('short tracks left out', D.short_tracks_left_out);
    legend.append(facts, el('h2', {}, 'Classes'));
    const chips = el('div', { class: 'chips' });
    D.classes.forEach((name, c) => { const s = el('span', {}, name); s.prepend(chip(classColour[c])); chips.append(s); });
    const none = el('span', {}, 'no face'); none.prepend(chip(NO_FACE)); chips.append(none);
    legend.append(chips, el('h2', {}, 'Persons'));
    for (const p of persons) legend.append(whoLine(p));
    document.getElementById('footer').textContent = `tgdfer ${D.tgdfer} · from the timeline CSV: each row stands ` +
      'for the time from midway to the previous window centre to midway to the next; the readouts show the row under ' +
      'the cursor. Click a chart to seek; keys ← → previous / next window, b blur faces.';
  }
  function topShares(share) { // {class: share} -> 'anger 57%, fear 37%, disgust 4%' (the three largest)
    return Object.entries(share).filter(e => e[1] > 0).sort((a, b) => b[1] - a[1]).slice(0, 3)
      .map(([k, v]) => `${k} ${Math.round(v * 100)}%`).join(', ');
  }
  function whoLine(p) {
    const line = el('div', { class: 'who' }), s = p.summary;
    const name = el('button', { type: 'button', title: 'seek to the first appearance' }, p.name);
    name.prepend(chip(p.colour));
    let text, first;
    if (s) { // the JSON header's persons
      first = s.first_seen_s ?? tStart;
      text = ` screen ${clock(s.screen_time_s ?? 0, 0)}, seen ${clock(first, 0)}–${clock(s.last_seen_s ?? 0, 0)}`;
      text += s.share && topShares(s.share) ? `; ${topShares(s.share)}` : '';
    } else { // none there (the one-face timeline): from the rows
      const share = {};
      let ok = 0;
      for (let w = 0; w < W; w++) {
        if (p.status[w] !== 0) continue;
        ok++;
        if (p.top[w] !== NO_TOP) share[D.classes[p.top[w]]] = (share[D.classes[p.top[w]]] || 0) + 1;
      }
      for (const k in share) share[k] /= ok;
      const w0 = p.status.findIndex(v => v === 0);
      first = w0 >= 0 ? centres[w0] : tStart;
      text = ` face in ${ok} of ${W} windows` + (ok ? `; ${topShares(share)}` : '');
    }
    name.addEventListener('click', () => seek(first));
    line.append(name, el('small', {}, text));
    return line;
  }
  function buildPeople() {
    for (const p of persons) {
      const part = el('div', { class: 'person', id: `person-${p.index + 1}`, 'data-person': p.name });
      const head = el('div', { class: 'person-head' });
      const name = el('strong', {}, p.name);
      name.prepend(chip(p.colour));
      p.readout = el('div', { class: 'readout', id: `readout-${p.index + 1}`, 'data-person': p.name });
      p.state = el('span', { class: 'state' });
      p.readout.append(p.state);
      p.values = D.classes.map((cls, c) => {
        const span = el('span', { class: 'prob', 'data-class': cls }, `${cls} `);
        span.prepend(chip(classColour[c]));
        const b = el('b', {}, '–');
        span.append(b);
        p.readout.append(span);
        return { span, b };
      });
      head.append(name, p.readout);
      p.wrap = el('div', { class: 'chart', id: `chart-${p.index + 1}`, 'data-person': p.name });
      p.canvas = el('canvas', { height: CHART_H, role: 'img', 'aria-label': `${p.name}: class probabilities over time` });
      p.cursor = el('div', { class: 'cursor', id: `cursor-${p.index + 1}` });
      p.wrap.append(p.canvas, p.cursor);
      p.wrap.addEventListener('click', e => {
        const r = p.wrap.getBoundingClientRect();
        seek(view.t0 + ((e.clientX - r.left) / r.width) * (view.t1 - view.t0));
      });
      part.append(head, p.wrap);
      peopleSection.append(part);
    }
  }

  // ------------------------------------------------------------------------------------------------ charts
  // One chart column per device pixel: the mean of the rows whose window centre falls in the column's time (or
  // the row under the column's middle when none does), so a chart costs the same for minutes and for hours.
  function columns(p, width) {
    const mean = new Float32Array(width * C), kind = new Int16Array(width); // kind: class index, -1 no face, -2 none
    const dt = (view.t1 - view.t0) / width;
    let lo = firstCentreFrom(view.t0, 0);
    const sum = new Float64Array(C);
    for (let x = 0; x < width; x++) {
      const ta = view.t0 + x * dt, hi = firstCentreFrom(ta + dt, lo);
      let first = lo, last = hi;
      if (hi === lo) { const k = rowAt(ta + dt / 2); if (k < 0) { kind[x] = -2; continue; } first = k; last = k + 1; }
      sum.fill(0);
      let ok = 0;
      for (let w = first; w < last; w++) {
        if (p.status[w] !== 0) continue;
        ok++;
        for (let c = 0; c < C; c++) sum[c] += p.probs[w * C + c];
      }
      lo = hi;
      if (ok === 0 || ok * 2 < last - first) { kind[x] = -1; continue; } // mostly without a face
      let best = 0;
      for (let c = 0; c < C; c++) { mean[x * C + c] = sum[c] / ok / 1000; if (sum[c] > sum[best]) best = c; }
      kind[x] = last - first === 1 && p.top[first] !== NO_TOP ? p.top[first] : best;
    }
    return { mean, kind };
  }
  function sizeCanvas(canvas, cssWidth, cssHeight) {
    const dpr = window.devicePixelRatio || 1, w = Math.max(1, Math.round(cssWidth * dpr));
    const h = Math.round(cssHeight * dpr);
    if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
    const ctx = canvas.getContext('2d');
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, w, h);
    return { ctx, w, h, dpr };
  }
  function ticks() { // about one label per 110 css pixels, at round times
    const steps = [0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400];
    const span = view.t1 - view.t0, want = Math.max(2, axisCanvas.clientWidth / 110);
    const step = steps.find(s => span / s <= want) || steps[steps.length - 1];
    const out = [];
    for (let t = Math.ceil(view.t0 / step) * step; t <= view.t1; t += step) out.push([t, step]);
    return out;
  }
  const rgba = hex => { // '#rrggbb' -> the opaque pixel as a little-endian Uint32 (bytes r, g, b, a)
    const v = parseInt(hex.slice(1), 16);
    return (0xff000000 | ((v & 0xff) << 16) | (v & 0xff00) | (v >> 16)) >>> 0;
  };
  const classPixel = classColour.map(rgba), noFacePixel = rgba(NO_FACE);
  function drawChart(p) { // pixels written directly: a few ms for any length of video
    const { ctx, w, h, dpr } = sizeCanvas(p.canvas, sizes.chart, CHART_H);
    const { mean, kind } = columns(p, w);
    const areaH = Math.round(AREA_H * dpr), stripY = Math.round((AREA_H + STRIP_GAP) * dpr);
    const stripEnd = Math.min(h, stripY + Math.round(STRIP_H * dpr));
    const image = ctx.createImageData(w, h), px = new Uint32Array(image.data.buffer);
    const column = (x, y0, y1, pixel) => { for (let y = y0; y < y1; y++) px[y * w + x] = pixel; };
    for (let x = 0; x < w; x++) {
      const k = kind[x];
      if (k === -2) continue;
      if (k === -1) { column(x, 0, areaH, noFacePixel); column(x, stripY, stripEnd, noFacePixel); continue; }
      let cum = 0, below = areaH; // stacked from the bottom in class order
      for (let c = 0; c < C; c++) {
        cum += mean[x * C + c];
        const top = Math.max(0, areaH - Math.round(cum * areaH));
        column(x, top, below, classPixel[c]);
        below = top;
      }
      column(x, stripY, stripEnd, classPixel[k]);
    }
    ctx.putImageData(image, 0, 0);
    ctx.fillStyle = 'rgba(255,255,255,0.55)';
    for (const [t] of ticks()) ctx.fillRect(Math.round(((t - view.t0) / (view.t1 - view.t0)) * w), 0, dpr, areaH);
    ctx.fillRect(0, Math.round(areaH / 2), w, dpr);
  }
  function drawAxis() {
    const { ctx, w, dpr } = sizeCanvas(axisCanvas, axisCanvas.clientWidth, 20);
    ctx.fillStyle = '#5b6474';
    ctx.font = `${11 * dpr}px system-ui, sans-serif`;
    ctx.textBaseline = 'top';
    for (const [t, step] of ticks()) {
      const x = ((t - view.t0) / (view.t1 - view.t0)) * w;
      ctx.fillRect(Math.round(x), 12 * dpr, dpr, 6 * dpr);
      const label = clock(t, step < 1 ? 1 : 0);
      const width = ctx.measureText(label).width;
      ctx.fillText(label, Math.min(Math.max(0, x - width / 2), w - width), 0);
    }
  }
  function drawAll() {
    const began = performance.now();
    measure();
    drawAxis();
    for (const p of persons) drawChart(p);
    placeCursors();
    document.body.dataset.drawMs = (performance.now() - began).toFixed(1); // the charts' last redraw, for benchmarks
  }

  // ---------------------------------------------------------------------------------------- time and cursor
  function fitView() { // the whole video, or a page of spanS seconds holding the cursor; true when it moved
    let t0 = tStart, t1 = tEnd;
    if (spanS > 0 && spanS < tEnd - tStart) {
      if (now >= view.t0 && now < view.t1 && Math.abs(view.t1 - view.t0 - spanS) < 1e-9) return false;
      t0 = Math.min(Math.max(tStart, now - 0.1 * spanS), tEnd - spanS);
      t1 = t0 + spanS;
    }
    if (t0 === view.t0 && t1 === view.t1) return false;
    view.t0 = t0; view.t1 = t1;
    return true;
  }
  function placeCursors() {
    const frac = (now - view.t0) / (view.t1 - view.t0);
    for (const p of persons) {
      const x = frac * sizes.chart;
      p.cursor.style.left = `${x.toFixed(2)}px`;
      p.cursor.hidden = frac < 0 || frac > 1;
      p.cursor.dataset.t = now.toFixed(3);
    }
    peopleSection.dataset.t0 = view.t0.toFixed(3);
    peopleSection.dataset.t1 = view.t1.toFixed(3);
  }
  function showReadouts() {
    const k = rowAt(now);
    for (const p of persons) {
      const r = p.readout, status = k < 0 ? 'outside' : D.status_names[p.status[k]] || 'other';
      r.dataset.t = now.toFixed(3);
      if (k === p.shownRow) continue; // during playback most frames stay in the same row
      p.shownRow = k;
      r.dataset.row = k;
      r.dataset.status = status;
      r.dataset.start = k < 0 ? '' : (startMs[k] / 1000).toFixed(3);
      r.dataset.end = k < 0 ? '' : (endMs[k] / 1000).toFixed(3);
      const top = k < 0 || p.top[k] === NO_TOP ? -1 : p.top[k];
      const face = k < 0 || p.face[k] === MISSING_U16 || !p.face[k] ? '' : ` (face on ${(p.face[k] / 10).toFixed(0)}%)`;
      p.state.textContent = status === 'ok' ? `${D.classes[top] ?? '?'}${face}` : `${status.replace('_', ' ')}${face}`;
      p.values.forEach(({ span, b }, c) => {
        const v = k < 0 ? NaN : prob(p, k, c);
        b.textContent = Number.isNaN(v) ? '–' : v.toFixed(3);
        span.dataset.value = Number.isNaN(v) ? '' : v.toFixed(3);
        span.classList.toggle('top', c === top);
      });
    }
    const shown = k < 0 ? 'outside the timeline' : `window ${clock(startMs[k] / 1000)}–${clock(endMs[k] / 1000)}`;
    clockText.textContent = `${clock(now, 2)} · ${shown}`;
  }
  function setTime(t) {
    now = Math.min(Math.max(t, tStart), tEnd);
    if (fitView()) drawAll(); else placeCursors();
    showReadouts();
    drawOverlay();
  }
  function seek(t) {
    t = Math.min(Math.max(t, tStart), tEnd);
    if (videoOk && video.readyState >= 1) video.currentTime = t;
    setTime(t);
  }

  // ------------------------------------------------------------------------------------ video, boxes, blur
  const small = document.createElement('canvas');
  function blurRegion(ctx, sx, sy, sw, sh, x, y, w, h) { // shrink to a few pixels and stretch back: unrecognisable
    small.width = 6;
    small.height = Math.max(1, Math.round((6 * sh) / Math.max(sw, 1)));
    const sctx = small.getContext('2d');
    sctx.drawImage(video, sx, sy, sw, sh, 0, 0, small.width, small.height);
    ctx.imageSmoothingEnabled = true;
    ctx.drawImage(small, 0, 0, small.width, small.height, x, y, w, h);
  }
  function drawOverlay() {
    const { ctx, dpr } = sizeCanvas(overlay, sizes.overlayW, sizes.overlayH);
    const vw = video.videoWidth, vh = video.videoHeight;
    overlay.dataset.boxes = '[]';
    if (!videoOk || !vw || !vh) return;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    const ew = sizes.overlayW, eh = sizes.overlayH, s = Math.min(ew / vw, eh / vh);
    const ox = (ew - vw * s) / 2, oy = (eh - vh * s) / 2;
    const [srcW, srcH] = D.size && D.size[0] ? D.size : [vw, vh]; // the boxes' pixels, maybe not the decoded size
    const blur = blurBox.checked && video.readyState >= 2, k = rowAt(now), drawn = [];
    ctx.font = '600 12px system-ui, sans-serif';
    ctx.textBaseline = 'bottom';
    for (const p of persons) {
      const b = boxAt(p, now);
      if (!b) continue;
      const x = ox + (b[0] / srcW) * vw * s, y = oy + (b[1] / srcH) * vh * s;
      const w = ((b[2] - b[0]) / srcW) * vw * s, h = ((b[3] - b[1]) / srcH) * vh * s;
      if (blur) { // the box and a margin of a fifth around it, inside the frame
        const mx = 0.2 * w, my = 0.2 * h, x0 = Math.max(ox, x - mx), y0 = Math.max(oy, y - my);
        const x1 = Math.min(ox + vw * s, x + w + mx), y1 = Math.min(oy + vh * s, y + h + my);
        if (x1 > x0 && y1 > y0) blurRegion(ctx, (x0 - ox) / s, (y0 - oy) / s, (x1 - x0) / s, (y1 - y0) / s, x0, y0, x1 - x0, y1 - y0);
      }
      drawn.push([p.name, +x.toFixed(1), +y.toFixed(1), +w.toFixed(1), +h.toFixed(1)]);
      ctx.lineWidth = 2;
      ctx.strokeStyle = p.colour;
      ctx.strokeRect(x, y, w, h);
      const top = k >= 0 && p.status[k] === 0 && p.top[k] !== NO_TOP ? p.top[k] : -1;
      const label = top >= 0 ? `${p.name} · ${D.classes[top]} ${prob(p, k, top).toFixed(2)}` : `${p.name} · no face`;
      const tw = ctx.measureText(label).width + 8, ty = y > 18 ? y : y + h + 18;
      ctx.fillStyle = p.colour;
      ctx.fillRect(x - 1, ty - 17, tw, 17);
      ctx.fillStyle = '#fff';
      ctx.fillText(label, x + 3, ty - 2);
    }
    overlay.dataset.boxes = JSON.stringify(drawn); // [person, x, y, w, h] css pixels, for tests and scripts
  }
  function setUpVideo() {
    if (!D.video.src) {
      document.getElementById('stage').hidden = true;
      note.hidden = false;
      note.textContent = 'No video was recorded for this timeline: the charts and readouts work without it (click a chart).';
      return;
    }
    const where = D.video.embedded ? 'the embedded copy' : decodeURI(D.video.src);
    const convert = 'convert it (ffmpeg -i in.mp4 -c:v libvpx-vp9 -crf 32 -b:v 0 out.webm) and re-create the report';
    video.addEventListener('error', () => {
      videoOk = false;
      drawOverlay();
      note.hidden = false;
      note.textContent = `The video cannot be played: ${where}. Put it at that path relative to this page, or ` +
        're-create the report with --embed-video (small videos). If it is there, this browser cannot decode it: ' +
        `${convert}. The charts still work.`;
    });
    video.addEventListener('loadedmetadata', () => { // a codec the browser lacks can leave the sound alone
      if (video.videoWidth) return;
      note.hidden = false;
      note.textContent = `This browser cannot decode the picture of ${where} (only its sound): ${convert}.`;
    });
    for (const name of ['loadeddata', 'seeked', 'timeupdate', 'pause']) video.addEventListener(name, () => setTime(video.currentTime));
    video.addEventListener('loadedmetadata', () => { videoOk = true; measure(); setTime(video.currentTime); });
    const follow = () => { if (!video.paused && !video.ended) { setTime(video.currentTime); requestAnimationFrame(follow); } };
    video.addEventListener('play', () => requestAnimationFrame(follow));
    video.src = D.video.src;
  }
  function setUpControls() {
    const choices = [[0, 'whole video'], [3600, '1 h'], [600, '10 min'], [60, '1 min'], [10, '10 s']];
    for (const [s, label] of choices) if (s === 0 || s < tEnd - tStart) spanSelect.append(el('option', { value: s }, label));
    spanSelect.addEventListener('change', () => { spanS = Number(spanSelect.value); view.t0 = view.t1 = NaN; fitView(); drawAll(); });
    blurBox.addEventListener('change', () => { document.body.dataset.blur = blurBox.checked ? 'on' : 'off'; drawOverlay(); });
    document.addEventListener('keydown', e => { // b: blur; left/right: the previous/next window's centre
      if (e.ctrlKey || e.metaKey || e.altKey || ['INPUT', 'SELECT', 'VIDEO'].includes(e.target.tagName)) return;
      const k = rowAt(now);
      if (e.key === 'b') blurBox.click();
      else if (e.key === 'ArrowRight' && k + 1 < W) seek(centres[k + 1]);
      else if (e.key === 'ArrowLeft' && k > 0) seek(centres[now > centres[k] ? k : k - 1]);
      else return;
      e.preventDefault();
    });
    let pending = 0;
    window.addEventListener('resize', () => { cancelAnimationFrame(pending); pending = requestAnimationFrame(() => { drawAll(); drawOverlay(); }); });
  }

  fillHeader();
  buildPeople();
  setUpControls();
  fitView();
  drawAll();
  setTime(tStart);
  setUpVideo();
  document.body.dataset.readyMs = performance.now().toFixed(1);
  document.body.dataset.ready = 'yes';
})();
