// The demo page: uses the npm package exactly as a user would.
import { createGenerator, detect } from './pkg/index.js';
import { withText } from './png.js';

const $ = (id) => document.getElementById(id);
const state = { gen: null, photos: [], subjects: new Map(), abort: null, count: 0 };

function showError(e) {
  const name = e && e.name ? e.name : 'Error';
  const msg = e && e.message ? e.message : String(e);
  $('error').textContent = name === 'Cancelled' ? 'Cancelled.' : `${name}: ${msg}`;
}

function clearError() { $('error').textContent = ''; }

// ------------------------------------------------------------------ capabilities
detect().then((c) => {
  const gpu = c.webgpu ? `WebGPU${c.adapterInfo && c.adapterInfo.software ? ' (software adapter)' : ''}${c.shaderF16 ? ', f16' : ''}` : 'no WebGPU';
  $('caps').textContent = `This browser: ${gpu}; wasm SIMD ${c.wasmSimd ? 'yes' : 'no'}; threads ${c.threads ? 'yes' : 'no'}.`;
});

// ------------------------------------------------------------------ model
async function loadModel() {
  clearError();
  $('load').disabled = true;
  $('model-file').disabled = true; // one load at a time
  $('model-preset').disabled = true;
  $('generate').disabled = true;
  $('load-status').textContent = 'Loading…';
  state.subjects.clear();
  try {
    if (state.gen) { await state.gen.dispose(); state.gen = null; }
    // A picked file wins over the URL (editing the URL clears the pick).
    const file = $('model-file').files[0];
    state.gen = await createGenerator({
      model: file || $('model-url').value.trim(),
      device: $('device').value,
      precision: $('precision').value,
      attention: $('attention').value,
      onProgress: (p) => {
        if (p.status === 'download') {
          $('load-progress').max = p.total || 1;
          $('load-progress').value = p.loaded;
          $('load-status').textContent = p.cached ? 'From cache' : `Downloading ${(p.loaded / 1e6).toFixed(1)} / ${(p.total / 1e6).toFixed(1)} MB`;
        } else if (p.status === 'read') {
          $('load-progress').max = p.total || 1;
          $('load-progress').value = p.loaded;
          $('load-status').textContent = `Reading ${p.file}: ${(p.loaded / 1e6).toFixed(1)} / ${(p.total / 1e6).toFixed(1)} MB`;
        } else if (p.status === 'cache-invalid') {
          $('load-status').textContent = 'Cached copy was damaged; downloading again';
        } else if (p.status === 'loading') {
          $('load-status').textContent = `Loading on ${p.device} (${p.reason})…`;
        }
      },
    });
    const cpuThreads = state.gen.device === 'cpu' ? `, ${state.gen.threads} thread${state.gen.threads > 1 ? 's' : ''}` : '';
    const flash = state.gen.attention === 'fused' ? ', flash attention' : '';
    $('load-status').textContent = `Ready on ${state.gen.device}${cpuThreads}, ${state.gen.precision}${flash} (${state.gen.imageSize}×${state.gen.imageSize} px): ${state.gen.deviceReason}`;
    fillSizes(state.gen.imageSize, state.gen.sizeStep);
    applyModelDefaults(state.gen.defaults);
    $('decoder').querySelector('[value=tiny]').disabled = !state.gen.hasTinyDecoder;
    if (!state.gen.hasTinyDecoder) $('decoder').value = 'full';
    const m = state.gen.model;
    $('model-card').textContent = `Model: ${m.name} (${m.quantization}); licence: ${m.license.split('\n')[0]}`;
    $('generate').disabled = false;
  } catch (e) {
    $('load-status').textContent = 'Not loaded';
    // A file that failed is unpicked, so that "Load model" goes back to the URL.
    $('model-file').value = '';
    showError(e);
  } finally {
    $('load').disabled = false;
    $('model-file').disabled = false;
    $('model-preset').disabled = false;
  }
}
$('load').addEventListener('click', loadModel);
$('model-file').addEventListener('change', () => { if ($('model-file').files.length) loadModel(); });
$('model-url').addEventListener('input', () => {
  $('model-file').value = '';
  const url = $('model-url').value.trim();
  $('model-preset').value = [...$('model-preset').options].some((o) => o.value && o.value === url) ? url : '';
});
// The built-in models one choice away: picking one loads it; "Another URL…" waits for the URL.
$('model-preset').addEventListener('change', () => {
  const url = $('model-preset').value;
  if (!url) { $('model-url').focus(); return; }
  $('model-url').value = url;
  $('model-file').value = '';
  loadModel();
});

// A bundle's own generation settings (a few-step bundle: LCM, 4 steps, guidance 1, alpha 0.8) become the
// form's when it loads; a model that records none gets the page's own (DDIM, 25 steps, guidance
// 5, alpha 0.7), so that switching from the few-step model back to the 25-step one does not keep 4 LCM steps.
const FORM_DEFAULTS = { scheduler: $('scheduler').value, steps: $('steps').defaultValue, guidance: $('guidance').defaultValue, alpha: $('alpha').defaultValue };
function applyModelDefaults(d) {
  const use = { ...FORM_DEFAULTS };
  for (const k of Object.keys(use)) if (d && d[k] !== undefined && d[k] !== null) use[k] = d[k];
  $('scheduler').value = use.scheduler;
  for (const id of ['steps', 'guidance', 'alpha']) {
    $(id).value = String(use[id]);
    $(`${id}-out`).textContent = $(id).value;
  }
}

// Image sizes offered for this model: its own, and half, three quarters and one and a half
// times it, each a multiple of the model's size step (smaller is faster: a step's cost grows
// with the pixel count).
function fillSizes(native, step) {
  const sel = $('size');
  const keep = sel.value;
  sel.textContent = '';
  const sizes = [...new Set([0.5, 0.75, 1, 1.5].map((f) => Math.max(step, Math.round((native * f) / step) * step)))];
  for (const s of sizes) {
    const o = document.createElement('option');
    o.value = String(s);
    o.textContent = `${s} × ${s}${s === native ? ' (native)' : ''}`;
    sel.append(o);
  }
  sel.value = sizes.includes(Number(keep)) ? keep : String(native);
}

// ------------------------------------------------------------------ subjects
// Each photo goes with one marker in the prompt, in order. A photo takes the first marker no photo
// has yet (the example prompt's, or one the user typed); when there is none, a marker goes after
// the word at the cursor (at the end when the cursor was never placed, or is at the start: a
// marker follows its subject's noun). Removing a photo removes its marker.
const marker = () => (state.gen && state.gen.marker) || '<|image|>';
const markerCount = (text) => text.split(marker()).length - 1;
let cursorPlaced = false;
for (const ev of ['focus', 'click', 'keyup', 'select']) $('prompt').addEventListener(ev, () => { cursorPlaced = true; });

function placeMarker() {
  const ta = $('prompt');
  if (markerCount(ta.value) >= state.photos.length) return;
  let at = cursorPlaced ? ta.selectionStart ?? ta.value.length : ta.value.length;
  while (at < ta.value.length && /\S/.test(ta.value[at])) at++; // to the end of the word
  if (!/\S/.test(ta.value.slice(0, at))) at = ta.value.length;
  const before = ta.value.slice(0, at).replace(/\s+$/, '');
  const after = ta.value.slice(at).replace(/^\s+/, '');
  ta.value = `${before}${before ? ' ' : ''}${marker()}${after ? ' ' : ''}${after}`;
  const pos = before.length + (before ? 1 : 0) + marker().length;
  ta.setSelectionRange(pos, pos);
}

// Remove the `i`-th marker (0-based) and the space before it.
function removeMarker(i) {
  const ta = $('prompt');
  const parts = ta.value.split(marker());
  if (i >= parts.length - 1) return;
  const left = parts[i].replace(/ $/, '');
  ta.value = [...parts.slice(0, i), left + parts[i + 1], ...parts.slice(i + 2)].join(marker());
}

// "n photos · m markers", and what to do when they differ.
function showCounts() {
  const m = markerCount($('prompt').value);
  const p = state.photos.length;
  const plural = (n, w) => `${n} ${w}${n === 1 ? '' : 's'}`;
  let hint = '';
  if (m < p) hint = ` — put a marker ${marker()} right after the noun of each subject (${p - m} missing)`;
  else if (m > p) hint = ` — add a photo for each marker, or remove ${m - p} marker${m - p === 1 ? '' : 's'}`;
  $('marker-count').textContent = `${plural(p, 'photo')} · ${plural(m, 'marker')}${hint}`;
  $('marker-count').classList.toggle('warn', m !== p);
}
$('prompt').addEventListener('input', showCounts);

function renderThumbs() {
  const ol = $('thumbs');
  ol.textContent = '';
  state.photos.forEach((p, i) => {
    const li = document.createElement('li');
    const img = document.createElement('img');
    img.src = p.url;
    img.alt = `Subject ${i + 1}: ${p.file.name}`;
    const rm = document.createElement('button');
    rm.type = 'button';
    rm.textContent = '×';
    rm.setAttribute('aria-label', `Remove subject ${i + 1}`);
    rm.addEventListener('click', () => {
      URL.revokeObjectURL(p.url);
      state.photos.splice(i, 1);
      if (markerCount($('prompt').value) > state.photos.length) removeMarker(i);
      renderThumbs();
    });
    li.append(img, rm);
    ol.append(li);
  });
  renderAttributeRows();
  showCounts();
}

// One attribute slider row per subject photo: from-word, to-word, strength. The values live with
// the photo, so removing a photo removes its row and the others keep theirs.
const NO_ATTRIBUTE = { from: '', to: '', strength: 0 };
function renderAttributeRows() {
  const ol = $('attribute-rows');
  ol.textContent = '';
  state.photos.forEach((p, i) => {
    const a = (p.attribute ||= { ...NO_ATTRIBUTE });
    const n = i + 1;
    const li = document.createElement('li');
    li.className = 'row';
    const field = (key, label, attrs) => {
      const id = `attr-${key}-${n}`;
      const l = document.createElement('label');
      l.htmlFor = id;
      l.textContent = label;
      const input = document.createElement('input');
      input.id = id;
      Object.assign(input, attrs);
      li.append(l, input);
      return input;
    };
    const from = field('from', `Subject ${n} from`, { type: 'text', value: a.from, placeholder: 'e.g. young' });
    const to = field('to', `Subject ${n} to`, { type: 'text', value: a.to, placeholder: 'e.g. old' });
    const strength = field('strength', `Subject ${n} attribute strength`, { type: 'range', min: -2, max: 2, step: 0.1, value: a.strength });
    const out = document.createElement('output');
    out.htmlFor = strength.id;
    out.textContent = String(a.strength);
    li.append(out);
    from.addEventListener('input', () => { a.from = from.value; });
    to.addEventListener('input', () => { a.to = to.value; });
    strength.addEventListener('input', () => { a.strength = Number(strength.value); out.textContent = strength.value; });
    ol.append(li);
  });
}

// Whether the browser can decode `file` as an image (what encodeSubject will need).
async function decodable(file) {
  try {
    const bmp = await createImageBitmap(file);
    const ok = bmp.width > 0 && bmp.height > 0;
    bmp.close();
    return ok;
  } catch {
    return false;
  }
}

async function addFiles(files, { placeMarkers = true } = {}) {
  clearError();
  for (const file of files) {
    if (state.photos.length >= 4) { showError({ name: 'InvalidInput', message: 'at most 4 subject photos' }); break; }
    if (!(await decodable(file))) {
      showError({ name: 'InvalidInput', message: `${file.name} is not an image this browser can read (PNG, JPEG, WebP, …); it was not added` });
      continue;
    }
    state.photos.push({ file, url: URL.createObjectURL(file) });
    if (placeMarkers) placeMarker();
  }
  renderThumbs();
}

// Example subjects (renders of identities the built-in model never saw in training). The first
// one sets the prompt to the example's own ("a robot <|image|> on the beach"); later ones join
// after the last subject ("... and a cup <|image|> ...").
for (const b of document.querySelectorAll('#examples button')) {
  b.addEventListener('click', async () => {
    try {
      const res = await fetch(`examples/${b.dataset.example}.png`);
      if (!res.ok) throw new Error(`examples/${b.dataset.example}.png: HTTP ${res.status}`);
      const file = new File([await res.blob()], `${b.dataset.example}.png`, { type: 'image/png' });
      const ta = $('prompt');
      const n = markerCount(ta.value);
      if (state.photos.length === 0) {
        ta.value = `a ${b.dataset.noun} ${marker()} on the beach`;
      } else if (n === state.photos.length && n > 0) {
        const at = ta.value.lastIndexOf(marker()) + marker().length;
        ta.value = `${ta.value.slice(0, at)} and a ${b.dataset.noun} ${marker()}${ta.value.slice(at)}`;
      }
      await addFiles([file]);
    } catch (e) {
      showError({ name: 'IoError', message: String(e.message || e) });
    }
  });
}

$('subject-photos').addEventListener('change', async (e) => { const files = [...e.target.files]; e.target.value = ''; await addFiles(files); });
const drop = $('drop');
drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('over'); });
drop.addEventListener('dragleave', () => drop.classList.remove('over'));
drop.addEventListener('drop', (e) => { e.preventDefault(); drop.classList.remove('over'); addFiles(e.dataTransfer.files); });
drop.addEventListener('keydown', (e) => { if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); $('subject-photos').click(); } });

// ------------------------------------------------------------------ sliders
for (const id of ['steps', 'guidance', 'alpha', 'suppress-strength', 'self-attention']) {
  $(id).addEventListener('input', () => { $(`${id}-out`).textContent = $(id).value; });
}

// ------------------------------------------------------------------ generate
function drawPreview(imageData) {
  const c = $('preview');
  c.width = imageData.width;
  c.height = imageData.height;
  c.getContext('2d').putImageData(imageData, 0, 0);
}

// The form's settings, as the gallery keeps them and the PNG carries them.
function readSettings() {
  const size = Number($('size').value) || (state.gen && state.gen.imageSize) || undefined;
  return {
    prompt: $('prompt').value,
    negativePrompt: $('negative').value,
    steps: Number($('steps').value),
    guidance: Number($('guidance').value),
    alpha: Number($('alpha').value),
    seed: Number($('seed').value),
    scheduler: $('scheduler').value,
    width: size,
    height: size,
    decoder: $('decoder').value,
    // A row counts once it has a word or a strength; the generator names what is missing.
    attributes: state.photos.map((p, i) => ({ subject: i + 1, ...(p.attribute || NO_ATTRIBUTE) }))
      .filter((a) => a.strength !== 0 || a.from.trim() || a.to.trim()),
    suppress: $('suppress-text').value.trim()
      ? [{ text: $('suppress-text').value, strength: Number($('suppress-strength').value) }] : [],
    selfAttention: Number($('self-attention').value),
  };
}

function applySettings(s, photos) {
  $('prompt').value = s.prompt;
  $('negative').value = s.negativePrompt;
  for (const id of ['steps', 'guidance', 'alpha']) {
    $(id).value = String(s[id]);
    $(`${id}-out`).textContent = $(id).value;
  }
  $('seed').value = String(s.seed);
  $('scheduler').value = s.scheduler;
  if (!$('decoder').querySelector(`[value=${s.decoder}]`).disabled) $('decoder').value = s.decoder;
  if ([...$('size').options].some((o) => o.value === String(s.width))) $('size').value = String(s.width);
  for (const p of state.photos) if (!photos.some((q) => q.file === p.file)) URL.revokeObjectURL(p.url);
  state.photos = photos.map((p) => (state.photos.find((q) => q.file === p.file) || { file: p.file, url: URL.createObjectURL(p.file) }));
  state.photos.forEach((p, i) => {
    const a = (s.attributes || []).find((x) => x.subject === i + 1);
    p.attribute = a ? { from: a.from, to: a.to, strength: a.strength } : { ...NO_ATTRIBUTE };
  });
  const sup = (s.suppress || [])[0];
  $('suppress-text').value = sup ? sup.text : '';
  $('suppress-strength').value = String(sup ? sup.strength : 1);
  $('suppress-strength-out').textContent = $('suppress-strength').value;
  $('self-attention').value = String(s.selfAttention || 0);
  $('self-attention-out').textContent = $('self-attention').value;
  renderThumbs();
}

// The `parameters` text in the layout other SD front ends write.
function parametersText(s, model) {
  const sampler = { ddim: 'DDIM', pndm: 'PLMS', euler: 'Euler', lcm: 'LCM' }[s.scheduler] || s.scheduler;
  return `${s.prompt}\nNegative prompt: ${s.negativePrompt}\nSteps: ${s.steps}, Sampler: ${sampler}, CFG scale: ${s.guidance}, `
    + `Seed: ${s.seed}, Size: ${s.width}x${s.height}, Subject strength (alpha): ${s.alpha}, Model: ${model}`
    + (s.decoder === 'tiny' ? ', VAE: TAESD' : '')
    + ((s.attributes || []).length ? `, Attributes: ${s.attributes.map((a) => `${a.subject} ${a.from}→${a.to} ${a.strength}`).join('; ')}` : '')
    + ((s.suppress || []).length ? `, Suppress: ${s.suppress.map((x) => `${x.text} ${x.strength}`).join('; ')}` : '')
    + (s.selfAttention ? `, Self-subject attention: ${s.selfAttention}` : '');
}

async function generate() {
  clearError();
  if (!state.gen) { showError({ name: 'InvalidInput', message: 'load a model first' }); return; }
  $('generate').disabled = true;
  $('cancel').disabled = false;
  state.abort = new AbortController();
  try {
    const photos = state.photos.slice();
    const subjects = [];
    for (const p of photos) {
      if (!state.subjects.has(p.file)) state.subjects.set(p.file, await state.gen.encodeSubject(p.file));
      subjects.push(state.subjects.get(p.file));
    }
    const settings = readSettings();
    $('step-progress').value = 0;
    $('step-status').textContent = 'Starting…';
    const result = await state.gen.generate({ ...settings, subjects }, {
      signal: state.abort.signal,
      previewEvery: 1,
      onStep: ({ step, steps: total, preview }) => {
        $('step-progress').max = total;
        $('step-progress').value = step;
        $('step-status').textContent = `Step ${step} / ${total}`;
        if (preview) drawPreview(preview);
      },
    });
    drawPreview(result.image);
    await addResult(result, settings, photos);
    $('step-status').textContent = `Done in ${(result.timings.totalMs / 1000).toFixed(1)} s`;
    if (result.warnings.length) $('error').textContent = `Note: ${result.warnings.join('; ')}`;
  } catch (e) {
    $('step-status').textContent = '';
    showError(e);
  } finally {
    $('generate').disabled = false;
    $('cancel').disabled = true;
    state.abort = null;
  }
}

// A result: the image, its settings, a PNG download that carries them, and a button that puts
// them (and the subject photos) back into the form.
async function addResult(result, settings, photos) {
  state.count++;
  const model = state.gen.model ? state.gen.model.name : 'unknown model';
  const png = result.blob && await withText(result.blob, {
    parameters: parametersText(settings, model),
    fastcomposer: JSON.stringify({ ...settings, model, subjects: photos.map((p) => p.file.name) }),
  });
  const li = document.createElement('li');
  const fig = document.createElement('figure');
  const img = document.createElement('img');
  const url = png ? URL.createObjectURL(png) : '';
  img.src = url;
  img.alt = `Generated image ${state.count}: ${settings.prompt}`;
  const cap = document.createElement('figcaption');
  const text = document.createElement('p');
  text.className = 'settings';
  text.textContent = `${settings.prompt} · seed ${settings.seed}, ${settings.steps} steps, guidance ${settings.guidance}, `
    + `alpha ${settings.alpha}, ${settings.scheduler}, ${settings.width}×${settings.height}`;
  const a = document.createElement('a');
  a.href = url;
  a.download = `fastcomposer-${state.count}-seed${settings.seed}.png`;
  a.textContent = 'Download PNG';
  const again = document.createElement('button');
  again.type = 'button';
  again.textContent = 'Use these settings again';
  again.addEventListener('click', () => { clearError(); applySettings(settings, photos); });
  cap.append(text, a, again);
  fig.append(img, cap);
  li.append(fig);
  $('gallery').prepend(li);
}

$('generate').addEventListener('click', generate);
$('cancel').addEventListener('click', () => state.abort && state.abort.abort());

// Offline: the page itself comes from a service worker's cache on later visits.
if ('serviceWorker' in navigator) {
  navigator.serviceWorker.register('sw.js').catch(() => {});
}

showCounts();

// Load the default model right away.
loadModel();
