// The demo page: uses the npm package exactly as a user would.
import { createGenerator, detect } from './pkg/index.js';

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
  const gpu = c.webgpu ? `WebGPU${c.adapterInfo && c.adapterInfo.isFallbackAdapter ? ' (software adapter)' : ''}${c.shaderF16 ? ', f16' : ''}` : 'no WebGPU';
  $('caps').textContent = `This browser: ${gpu}; wasm SIMD ${c.wasmSimd ? 'yes' : 'no'}; threads ${c.threads ? 'yes' : 'no'}.`;
});

// ------------------------------------------------------------------ model
async function loadModel() {
  clearError();
  $('load').disabled = true;
  $('model-file').disabled = true; // one load at a time
  $('generate').disabled = true;
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
          $('load-status').textContent = `Loading on ${p.device}…`;
        }
      },
    });
    const cpuThreads = state.gen.device === 'cpu' ? `, ${state.gen.threads} thread${state.gen.threads > 1 ? 's' : ''}` : '';
    const flash = state.gen.attention === 'fused' ? ', flash attention' : '';
    $('load-status').textContent = `Ready on ${state.gen.device}${cpuThreads}, ${state.gen.precision}${flash} (${state.gen.imageSize}×${state.gen.imageSize} px)`;
    fillSizes(state.gen.imageSize, state.gen.sizeStep);
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
  }
}
$('load').addEventListener('click', loadModel);
$('model-file').addEventListener('change', () => { if ($('model-file').files.length) loadModel(); });
$('model-url').addEventListener('input', () => { $('model-file').value = ''; });

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
function insertMarker() {
  const marker = (state.gen && state.gen.marker) || '<|image|>';
  const ta = $('prompt');
  const at = ta.selectionStart ?? ta.value.length;
  const before = ta.value.slice(0, at);
  const after = ta.value.slice(at);
  const pad = before && !/\s$/.test(before) ? ' ' : '';
  const gap = /^\s/.test(after) ? '' : ' ';
  ta.value = `${before}${pad}${marker}${gap}${after}`.replace(/\s+$/, '');
  const pos = Math.min((before + pad + marker + gap).length, ta.value.length);
  ta.setSelectionRange(pos, pos);
}

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
      renderThumbs();
    });
    li.append(img, rm);
    ol.append(li);
  });
}

function addFiles(files) {
  clearError();
  for (const file of files) {
    if (state.photos.length >= 4) { showError({ name: 'InvalidInput', message: 'at most 4 subject photos' }); break; }
    if (!file.type.startsWith('image/')) { showError({ name: 'InvalidInput', message: `${file.name} is not an image` }); continue; }
    state.photos.push({ file, url: URL.createObjectURL(file) });
    insertMarker();
  }
  renderThumbs();
}

// Example subjects (renders of identities the built-in model never saw in training).
for (const b of document.querySelectorAll('#examples button')) {
  b.addEventListener('click', async () => {
    try {
      const res = await fetch(`examples/${b.dataset.example}.png`);
      if (!res.ok) throw new Error(`examples/${b.dataset.example}.png: HTTP ${res.status}`);
      const file = new File([await res.blob()], `${b.dataset.example}.png`, { type: 'image/png' });
      if (state.photos.length === 0) {
        // A fresh prompt for this example, the cursor right after its noun (where the marker goes).
        const ta = $('prompt');
        ta.value = `a ${b.dataset.noun} on the beach`;
        const end = 2 + b.dataset.noun.length;
        ta.setSelectionRange(end, end);
      }
      addFiles([file]);
    } catch (e) {
      showError({ name: 'IoError', message: String(e.message || e) });
    }
  });
}

$('subject-photos').addEventListener('change', (e) => { addFiles(e.target.files); e.target.value = ''; });
const drop = $('drop');
drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('over'); });
drop.addEventListener('dragleave', () => drop.classList.remove('over'));
drop.addEventListener('drop', (e) => { e.preventDefault(); drop.classList.remove('over'); addFiles(e.dataTransfer.files); });
drop.addEventListener('keydown', (e) => { if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); $('subject-photos').click(); } });

// ------------------------------------------------------------------ sliders
for (const id of ['steps', 'guidance', 'alpha']) {
  $(id).addEventListener('input', () => { $(`${id}-out`).textContent = $(id).value; });
}

// ------------------------------------------------------------------ generate
function drawPreview(imageData) {
  const c = $('preview');
  c.width = imageData.width;
  c.height = imageData.height;
  c.getContext('2d').putImageData(imageData, 0, 0);
}

async function generate() {
  clearError();
  if (!state.gen) { showError({ name: 'InvalidInput', message: 'load a model first' }); return; }
  $('generate').disabled = true;
  $('cancel').disabled = false;
  state.abort = new AbortController();
  try {
    const subjects = [];
    for (const p of state.photos) {
      if (!state.subjects.has(p.file)) state.subjects.set(p.file, await state.gen.encodeSubject(p.file));
      subjects.push(state.subjects.get(p.file));
    }
    const prompt = $('prompt').value;
    const steps = Number($('steps').value);
    const size = Number($('size').value) || undefined;
    $('step-progress').value = 0;
    $('step-status').textContent = 'Starting…';
    const result = await state.gen.generate({
      prompt,
      subjects,
      negativePrompt: $('negative').value,
      steps,
      guidance: Number($('guidance').value),
      alpha: Number($('alpha').value),
      seed: Number($('seed').value),
      scheduler: $('scheduler').value,
      width: size,
      height: size,
    }, {
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
    addResult(result, prompt);
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

function addResult(result, prompt) {
  state.count++;
  const li = document.createElement('li');
  const fig = document.createElement('figure');
  const img = document.createElement('img');
  const url = URL.createObjectURL(result.blob);
  img.src = url;
  img.alt = `Generated image ${state.count}: ${prompt}`;
  const cap = document.createElement('figcaption');
  const a = document.createElement('a');
  a.href = url;
  a.download = `fastcomposer-${state.count}.png`;
  a.textContent = 'Download PNG';
  cap.append(a);
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

// Load the default model right away.
loadModel();
