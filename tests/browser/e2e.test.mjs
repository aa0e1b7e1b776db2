// End-to-end tests of the web demo and the npm package in Debian Chromium (headless), driven by
// playwright-core. Every test fails on any page error or wasm trap, not only on a wrong result.
//   cd tests/browser && npm test        (needs pkg/ built, models/default.gguf, target/release/fastcomposer)
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ROOT, serve, launch } from './harness.mjs';

const CLI = path.join(ROOT, 'target', 'release', 'fastcomposer');
const PHOTO = path.join(ROOT, 'crate', 'tests', 'fixtures', 'pipeline', 'photos', 'chelsea.png');
const MODEL = path.join(ROOT, 'models', 'default.gguf');
// What the demo loads by itself: the default model's few-step (distilled, LCM) bundle.
const DEMO_MODEL = path.join(ROOT, 'models', 'default-lcm.gguf');
const STEPS = Number(process.env.E2E_STEPS || 4);
const GPU_STEPS = Number(process.env.E2E_GPU_STEPS || 2);

// ------------------------------------------------------------------ server
const startServer = (port = 0) => serve({ '/pkg/': 'pkg', '/models/': 'models', '/fixtures/': 'crate/tests/fixtures' }, { port });

let server;
let browser;
let chromiumProfile;

before(async () => {
  assert.ok(fs.existsSync(path.join(ROOT, 'pkg', 'fastcomposer_bg.wasm')), 'pkg/ is not built: pkg-scripts/build-wasm.sh');
  assert.ok(fs.existsSync(MODEL), 'models/default.gguf is missing');
  assert.ok(fs.existsSync(DEMO_MODEL), 'models/default-lcm.gguf is missing');
  server = await startServer();
  chromiumProfile = await launch('fc-chromium-');
  browser = chromiumProfile.ctx;
});

after(async () => {
  if (chromiumProfile) await chromiumProfile.close();
  if (server) server.kill();
});

// A page that records every page error, wasm trap and failed request.
async function openPage(ctx, url) {
  const page = await ctx.newPage();
  const problems = [];
  page.on('pageerror', (e) => problems.push(`pageerror: ${e.message}`));
  page.on('console', (m) => {
    const t = m.text();
    if (m.type() === 'error' && !/favicon/.test(t)) problems.push(`console.error: ${t}`);
    if (/RuntimeError|unreachable|panicked/.test(t)) problems.push(`trap: ${t}`);
  });
  page.on('worker', (w) => w.on('console', (m) => {
    const t = m.text();
    if (m.type() === 'error' || /RuntimeError|unreachable|panicked/.test(t)) problems.push(`worker: ${t}`);
  }));
  if (url) await page.goto(url);
  return { page, problems };
}

function assertClean(problems) {
  assert.deepEqual(problems, [], `page errors: ${problems.join('\n')}`);
}

// Native CLI output for the same options as the demo (its model, that model's scheduler).
function nativeImage({ prompt, steps, guidance, alpha, seed }, extra = []) {
  const out = path.join(os.tmpdir(), `fc-native-${process.pid}-${seed}-${steps}-${extra.length}.png`);
  execFileSync(CLI, ['generate', '--model', DEMO_MODEL, '--prompt', prompt, '--subject', PHOTO, '--steps', String(steps),
    '--guidance', String(guidance), '--alpha', String(alpha), '--seed', String(seed), ...extra, '--out', out], { stdio: 'pipe' });
  return out;
}

// Decode a PNG to RGBA in the page (the browser's decoder, same for both images).
async function pngPixels(page, bytes) {
  return page.evaluate(async (b64) => {
    const blob = await (await fetch(`data:image/png;base64,${b64}`)).blob();
    const bmp = await createImageBitmap(blob);
    const c = new OffscreenCanvas(bmp.width, bmp.height);
    c.getContext('2d').drawImage(bmp, 0, 0);
    return Array.from(c.getContext('2d').getImageData(0, 0, bmp.width, bmp.height).data);
  }, Buffer.from(bytes).toString('base64'));
}

async function galleryPixels(page) {
  return page.evaluate(async () => {
    const img = document.querySelector('#gallery img');
    const blob = await (await fetch(img.src)).blob();
    const bmp = await createImageBitmap(blob);
    const c = new OffscreenCanvas(bmp.width, bmp.height);
    c.getContext('2d').drawImage(bmp, 0, 0);
    return Array.from(c.getContext('2d').getImageData(0, 0, bmp.width, bmp.height).data);
  });
}

function diffStats(a, b) {
  assert.equal(a.length, b.length, 'image sizes differ');
  let max = 0;
  let sum = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]);
    max = Math.max(max, d);
    sum += d;
  }
  return { max, mean: sum / a.length };
}

function notBlank(px) {
  let min = 255;
  let maxv = 0;
  for (let i = 0; i < px.length; i += 4) {
    for (let c = 0; c < 3; c++) { min = Math.min(min, px[i + c]); maxv = Math.max(maxv, px[i + c]); }
  }
  return maxv - min > 16;
}

async function setRange(page, id, value) {
  await page.$eval(`#${id}`, (el, v) => { el.value = String(v); el.dispatchEvent(new Event('input')); }, value);
}

// Load the model on `device` through the demo's controls and generate from a real photo.
async function demoGenerate(page, { device, steps, seed, guidance = 1, alpha = 0.7, prompt = 'a cat <|image|> on the beach', setControls }) {
  await page.getByLabel('Device').selectOption(device);
  await page.getByRole('button', { name: 'Load model' }).click();
  await page.waitForFunction(() => /Ready on/.test(document.getElementById('load-status').textContent), null, { timeout: 300_000 });
  // The precision select is left on auto: f32 on the CPU and on this software adapter (no shader-f16).
  assert.match(await page.locator('#load-status').textContent(), /, f32 \(/);
  await page.getByLabel('Subject photos', { exact: true }).setInputFiles(PHOTO);
  await page.getByLabel('Prompt', { exact: true }).fill(prompt);
  await setRange(page, 'steps', steps);
  await setRange(page, 'guidance', guidance);
  await setRange(page, 'alpha', alpha);
  await page.getByLabel('Seed').fill(String(seed));
  if (setControls) await setControls(page);
  const before = await page.locator('#gallery img').count();
  await page.getByRole('button', { name: 'Generate' }).click();
  await page.waitForFunction((n) => document.querySelectorAll('#gallery img').length > n
    || document.querySelector('[role=alert]').textContent.length > 0, before, { timeout: 600_000 });
  const alertText = await page.getByRole('alert').textContent();
  assert.equal(alertText, '', `error shown: ${alertText}`);
  const alt = await page.locator('#gallery img').first().getAttribute('alt');
  assert.match(alt, /^Generated/);
  return { prompt, steps, guidance, alpha, seed };
}

test('CPU path: a real photo, a non-blank image equal to the native CLI output', async () => {
  const { page, problems } = await openPage(browser, server.url);
  const opts = await demoGenerate(page, { device: 'cpu', steps: STEPS, seed: 11 });
  const web = await galleryPixels(page);
  assert.ok(notBlank(web), 'the image is blank');
  const native = await pngPixels(page, fs.readFileSync(nativeImage(opts)));
  const d = diffStats(web, native);
  console.log(`cpu wasm vs native: max |diff| ${d.max}, mean ${d.mean.toFixed(3)} (8-bit levels)`);
  // Tolerance (CPU, wasm SIMD vs native AVX-512 kernels): mean <= 1 level, max <= 24 levels.
  assert.ok(d.mean <= 1 && d.max <= 24, JSON.stringify(d));
  assertClean(problems);
  await page.close();
});

test('controls: the demo\'s attribute slider, suppression and self-subject attention give the native CLI\'s image with the same options', async () => {
  const { page, problems } = await openPage(browser, server.url);
  const opts = await demoGenerate(page, {
    device: 'cpu',
    steps: STEPS,
    seed: 13,
    prompt: 'a cat <|image|> wearing a hat',
    setControls: async (p) => {
      // One slider row per subject photo, as a visitor finds it after choosing the photo.
      assert.equal(await p.locator('#attribute-rows li').count(), 1);
      await p.getByLabel('Subject 1 from').fill('red');
      await p.getByLabel('Subject 1 to').fill('blue');
      await setRange(p, 'attr-strength-1', 1.5);
      await p.getByLabel('Suppress', { exact: true }).fill('hat');
      await setRange(p, 'suppress-strength', 0.5);
      await setRange(p, 'self-attention', 1);
    },
  });
  const web = await galleryPixels(page);
  const controls = ['--attribute', '1:red:blue:1.5', '--suppress', 'hat:0.5', '--self-attention', '1'];
  const native = await pngPixels(page, fs.readFileSync(nativeImage(opts, controls)));
  const plain = await pngPixels(page, fs.readFileSync(nativeImage(opts)));
  const d = diffStats(web, native);
  const moved = diffStats(plain, native);
  console.log(`controls: page vs native max |diff| ${d.max}, mean ${d.mean.toFixed(3)}; the controls move the native image by mean ${moved.mean.toFixed(2)}`);
  // The CPU path's tolerance (wasm SIMD vs native kernels), far below what the controls change.
  assert.ok(d.mean <= 1 && d.max <= 24, JSON.stringify(d));
  assert.ok(moved.mean > 4 * Math.max(d.mean, 0.5), `the controls barely change the image: ${JSON.stringify(moved)}`);
  // A slider with no words is a typed error shown to the visitor; nothing is added to the gallery.
  await page.getByLabel('Subject 1 from').fill('');
  await page.getByRole('button', { name: 'Generate' }).click();
  await page.waitForFunction(() => document.querySelector('[role=alert]').textContent.length > 0, null, { timeout: 120_000 });
  assert.match(await page.getByRole('alert').textContent(), /^InvalidInput: .*`from`: the text is empty/);
  assert.equal(await page.locator('#gallery img').count(), 1);
  // Through the API: a Subject carries its photo's latents (the model has a VAE encoder: 8 x 16 x 16
  // at 128 px); self-attention without them, or at a negative strength, is a typed error.
  const api = await page.evaluate(async () => {
    const { createGenerator, Subject } = await import('./pkg/index.js');
    const g = await createGenerator({ model: 'models/default-lcm.gguf', device: 'cpu', threads: 1 });
    const s = await g.encodeSubject(await (await fetch('fixtures/pipeline/photos/chelsea.png')).blob());
    const r = s.reference;
    const shape = r && [r.channels, r.height, r.width, r.latents.length, r.mask.length];
    const err = async (o) => {
      try { await g.generate({ prompt: 'a cat <|image|>', steps: 1, ...o }); return 'no error'; } catch (e) { return `${e.name}: ${e.message}`; }
    };
    const bare = await err({ subjects: [new Subject(s.values)], selfAttention: 1 });
    const negative = await err({ subjects: [s], selfAttention: -1 });
    await g.dispose();
    return { shape, bare, negative };
  });
  assert.deepEqual(api.shape, [8, 16, 16, 8 * 256, 256]);
  assert.match(api.bare, /^InvalidInput: .*subject 1 has none/);
  assert.match(api.negative, /^InvalidInput: .*self-attention strength/);
  assertClean(problems);
  await page.close();
});

test('WebGPU path (software adapter): non-blank image close to the native CLI output', async () => {
  const { page, problems } = await openPage(browser, server.url);
  const hasGpu = await page.evaluate(async () => !!(navigator.gpu && (await navigator.gpu.requestAdapter())));
  assert.ok(hasGpu, 'no WebGPU adapter (Chromium needs --enable-unsafe-webgpu)');
  const opts = await demoGenerate(page, { device: 'webgpu', steps: GPU_STEPS, seed: 12 });
  const web = await galleryPixels(page);
  assert.ok(notBlank(web), 'the image is blank');
  const native = await pngPixels(page, fs.readFileSync(nativeImage(opts)));
  const d = diffStats(web, native);
  console.log(`webgpu vs native: max |diff| ${d.max}, mean ${d.mean.toFixed(3)} (8-bit levels)`);
  // Tolerance (different kernels and accumulation order on the GPU): mean <= 2, max <= 48 levels.
  assert.ok(d.mean <= 2 && d.max <= 48, JSON.stringify(d));
  assertClean(problems);
  await page.close();
});

// Device loss, forced by destroying the worker's GPUDevice while a generation runs (a hook added
// to the first worker script served; a separate browser without service workers, so that the
// route sees the request).
test('WebGPU device loss: the interrupted call is a DeviceError and the next call works', async () => {
  const second = await launch('fc-chromium-loss-', { serviceWorkers: 'block' });
  const ctx = second.ctx;
  try {
    const { page, problems } = await openPage(ctx);
    let served = 0;
    await page.route('**/pkg/worker.js', async (route) => {
      const res = await route.fetch();
      let body = await res.text();
      if (served++ === 0) {
        body += `
;(() => {
  const rd = GPUAdapter.prototype.requestDevice;
  GPUAdapter.prototype.requestDevice = async function (...a) { const d = await rd.apply(this, a); self.__device = d; return d; };
  self.addEventListener('message', (e) => { if (e.data && e.data.op === 'generate') setTimeout(() => self.__device.destroy(), 50); });
})();
`;
      }
      await route.fulfill({ response: res, body });
    });
    await page.goto(`${server.url}sw.js`); // a same-origin page without the demo's own model load
    const r = await page.evaluate(async () => {
      const { createGenerator } = await import('/pkg/index.js');
      const gen = await createGenerator({ model: '/models/default.gguf', device: 'webgpu' });
      const s = await gen.encodeSubject(await (await fetch('/fixtures/pipeline/photos/chelsea.png')).blob());
      const opts = { prompt: 'a cat <|image|> on the beach', subjects: [s], steps: 2, seed: 3 };
      let first = 'no error';
      try { await gen.generate(opts); } catch (e) { first = `${e.name}: ${e.message}`; }
      const second = await gen.generate(opts);
      const adapter = await navigator.gpu.requestAdapter();
      return { first, width: second.image.width, device: gen.device, precision: gen.precision, f16: adapter.features.has('shader-f16') };
    });
    assert.ok(served >= 2, `the worker was not restarted (${served} worker scripts served)`);
    assert.match(r.first, /^DeviceError: .*lost/);
    assert.equal(r.width, 128);
    assert.equal(r.device, 'webgpu');
    // precision 'auto': f16 exactly when the adapter has shader-f16 (kept across the reload).
    assert.equal(r.precision, r.f16 ? 'f16' : 'f32');
    assertClean(problems);
  } finally {
    await second.close();
  }
});

test('attention: fused runs the flash kernel on WebGPU and gives the sliced kernel\'s image; the CPU keeps sliced; a bad name is a typed error', async () => {
  const { page, problems } = await apiPage();
  const r = await page.evaluate(async (steps) => {
    const { createGenerator } = await import('./pkg/index.js');
    const photo = await (await fetch('fixtures/pipeline/photos/chelsea.png')).blob();
    const out = {};
    for (const attention of ['sliced', 'fused']) {
      const gen = await createGenerator({ model: 'models/default.gguf', device: 'webgpu', attention });
      const s = await gen.encodeSubject(photo);
      const t0 = performance.now();
      const { image } = await gen.generate({ prompt: 'a cat <|image|> on the beach', subjects: [s], steps, seed: 5 });
      out[attention] = { kernel: gen.attention, ms: performance.now() - t0, pixels: Array.from(image.data) };
      await gen.dispose();
    }
    const cpu = await createGenerator({ model: 'models/default.gguf', device: 'cpu', attention: 'fused' });
    out.cpu = cpu.attention;
    await cpu.dispose();
    try {
      await createGenerator({ model: 'models/default.gguf', device: 'cpu', attention: 'paged' });
      out.bad = 'no error';
    } catch (e) {
      out.bad = `${e.name}: ${e.message}`;
    }
    return out;
  }, GPU_STEPS);
  const d = diffStats(r.fused.pixels, r.sliced.pixels);
  console.log(`fused vs sliced on WebGPU: max |diff| ${d.max}, mean ${d.mean.toFixed(4)} (8-bit levels); ` +
    `generate ${r.sliced.ms.toFixed(0)} ms sliced, ${r.fused.ms.toFixed(0)} ms fused`);
  assert.equal(r.sliced.kernel, 'sliced');
  assert.equal(r.fused.kernel, 'fused', 'the flash kernel does not run on this adapter');
  assert.ok(d.max <= 2, `the fused kernel changed the image: ${JSON.stringify(d)}`);
  assert.equal(r.cpu, 'sliced');
  assert.match(r.bad, /^InvalidInput: .*unknown attention kernel `paged`/);
  assertClean(problems);
  await page.close();
});

test('the demo\'s scheduler and size controls reach the generator: its image is the API\'s with the same options', async () => {
  const { page, problems } = await openPage(browser, server.url);
  await page.waitForFunction(() => /Ready on/.test(document.getElementById('load-status').textContent), null, { timeout: 300_000 });
  await page.getByLabel('Device').selectOption('cpu');
  await page.getByRole('button', { name: 'Load model' }).click();
  await page.waitForFunction(() => /Ready on cpu/.test(document.getElementById('load-status').textContent), null, { timeout: 300_000 });
  const sizes = await page.locator('#size option').evaluateAll((os) => os.map((o) => Number(o.value)));
  const picked = Number(await page.getByLabel('Size').inputValue());
  const { native, step } = await page.evaluate(async () => {
    const { createGenerator } = await import('./pkg/index.js');
    const g = await createGenerator({ model: 'models/default-lcm.gguf', device: 'cpu', threads: 1 });
    const r = { native: g.imageSize, step: g.sizeStep };
    await g.dispose();
    return r;
  });
  assert.ok(Number.isInteger(step) && step > 0 && native % step === 0, `size step ${step}, native ${native}`);
  assert.equal(picked, native, 'the size select does not start at the model\'s own size');
  assert.ok(sizes.every((v) => v % step === 0) && sizes.some((v) => v < native), `sizes offered: ${sizes}`);
  const small = Math.min(...sizes);
  await page.getByLabel('Size').selectOption(String(small));
  await page.getByLabel('Scheduler').selectOption('euler');
  await page.getByLabel('Subject photos', { exact: true }).setInputFiles(PHOTO);
  await page.getByLabel('Prompt', { exact: true }).fill('a cat <|image|> in the snow');
  await setRange(page, 'steps', 3);
  await page.getByLabel('Seed').fill('21');
  await page.getByRole('button', { name: 'Generate' }).click();
  await page.waitForFunction(() => document.querySelectorAll('#gallery img').length > 0
    || document.querySelector('[role=alert]').textContent.length > 0, null, { timeout: 300_000 });
  assert.equal(await page.getByRole('alert').textContent(), '');
  const shown = await page.locator('#gallery img').first().evaluate(async (img) => { await img.decode(); return [img.naturalWidth, img.naturalHeight]; });
  assert.deepEqual(shown, [small, small]);
  const web = await galleryPixels(page);
  const api = await page.evaluate(async (size) => {
    const { createGenerator } = await import('./pkg/index.js');
    const g = await createGenerator({ model: 'models/default-lcm.gguf', device: 'cpu' });
    const s = await g.encodeSubject(await (await fetch('fixtures/pipeline/photos/chelsea.png')).blob());
    // alpha: the bundle's own (0.8), as the demo's form took it.
    const opts = { prompt: 'a cat <|image|> in the snow', subjects: [s], steps: 3, guidance: 1, seed: 21, width: size, height: size };
    const euler = await g.generate({ ...opts, scheduler: 'euler' });
    const ddim = await g.generate({ ...opts, scheduler: 'ddim' });
    let bad;
    try { await g.generate({ ...opts, width: size + 1 }); bad = 'no error'; } catch (e) { bad = `${e.name}: ${e.message}`; }
    await g.dispose();
    return { euler: Array.from(euler.image.data), ddim: Array.from(ddim.image.data), bad };
  }, small);
  const d = diffStats(web, api.euler);
  assert.equal(d.max, 0, `the demo's image is not the API's with the same options: ${JSON.stringify(d)}`);
  assert.ok(diffStats(api.ddim, api.euler).max > 0, 'the scheduler made no difference');
  assert.match(api.bad, new RegExp(`^InvalidInput: .*multiple of ${step}`));
  assertClean(problems);
  await page.close();
});

test('example subjects add a photo and a marker after the noun', async () => {
  const { page, problems } = await openPage(browser, server.url);
  await page.getByRole('button', { name: 'green robot' }).click();
  await page.waitForFunction(() => document.querySelectorAll('#thumbs img').length === 1);
  assert.equal(await page.getByLabel('Prompt', { exact: true }).inputValue(), 'a robot <|image|> on the beach');
  await page.waitForFunction(() => document.querySelector('#thumbs img').complete && document.querySelector('#thumbs img').naturalWidth > 0);
  // A second example joins after the first subject.
  await page.getByRole('button', { name: 'purple cup' }).click();
  await page.waitForFunction(() => document.querySelectorAll('#thumbs img').length === 2);
  assert.equal(await page.getByLabel('Prompt', { exact: true }).inputValue(), 'a robot <|image|> and a cup <|image|> on the beach');
  assert.equal(await page.locator('#marker-count').textContent(), '2 photos · 2 markers');
  assert.equal(await page.getByRole('alert').textContent(), '');
  assertClean(problems);
  await page.close();
});

// ------------------------------------------------------------------ first contact
const waitForResult = (page, n = 0, timeout = 300_000) => page.waitForFunction((k) => document.querySelectorAll('#gallery img').length > k
  || document.querySelector('[role=alert]').textContent.length > 0, n, { timeout });

test('first contact: on a fresh profile the page loads the model itself; one chosen photo and Generate give an image in under 60 s, on the fastest device', async () => {
  const fresh = await launch('fc-first-');
  try {
    const t0 = Date.now();
    const { page, problems } = await openPage(fresh.ctx, server.url);
    await page.waitForFunction(() => /Ready on/.test(document.getElementById('load-status').textContent), null, { timeout: 60_000 });
    const software = await page.evaluate(async () => (await (await import('./pkg/index.js')).detect()).adapterInfo?.software);
    const status = await page.locator('#load-status').textContent();
    // Here the only WebGPU adapter is Chromium's software one: Auto loads on the CPU and says why.
    if (software) assert.match(status, /^Ready on cpu.*: the WebGPU adapter is a software one \(.*\); the CPU path is faster$/);
    await page.getByLabel('Subject photos', { exact: true }).setInputFiles(PHOTO);
    await page.waitForFunction(() => document.querySelectorAll('#thumbs img').length === 1);
    // The photo takes the example prompt's marker: no second marker.
    assert.equal(await page.getByLabel('Prompt', { exact: true }).inputValue(), 'a cat <|image|> on the beach');
    assert.equal(await page.locator('#marker-count').textContent(), '1 photo · 1 marker');
    await page.getByRole('button', { name: 'Generate' }).click();
    await waitForResult(page, 0, 60_000);
    assert.equal(await page.getByRole('alert').textContent(), '');
    const seconds = (Date.now() - t0) / 1000;
    console.log(`first contact: page open to image in ${seconds.toFixed(1)} s (${status})`);
    assert.ok(seconds < 60, `page open to image took ${seconds} s`);
    assert.ok(notBlank(await galleryPixels(page)), 'the image is blank');
    // The model the page loads by itself is the few-step one, with its own settings; the
    // 25-step model is one choice away, and brings the page's DDIM settings back.
    assert.equal(await page.locator('#model-preset').inputValue(), 'models/default-lcm.gguf');
    assert.equal(await page.getByLabel('Scheduler').inputValue(), 'lcm');
    assert.equal(await page.locator('#steps').inputValue(), '4');
    assert.equal(await page.locator('#alpha').inputValue(), '0.8');
    await page.locator('#model-preset').selectOption('models/default.gguf');
    await page.waitForFunction(() => /^Model: fastcomposer-default \(/.test(document.getElementById('model-card').textContent)
      && /Ready on/.test(document.getElementById('load-status').textContent), null, { timeout: 120_000 });
    assert.equal(await page.getByLabel('Scheduler').inputValue(), 'ddim');
    assert.equal(await page.locator('#steps').inputValue(), '25');
    assert.equal(await page.locator('#guidance').inputValue(), '5');
    assert.equal(await page.locator('#alpha').inputValue(), '0.7');
    assertClean(problems);
  } finally {
    await fresh.close();
  }
});

test('photos and markers: a photo takes an unused marker, else one goes after the word at the cursor; removing a photo removes its marker; counts and hints are shown; a non-image is refused when chosen; dropped photos are added', async () => {
  const { page, problems } = await openPage(browser, server.url);
  const prompt = page.getByLabel('Prompt', { exact: true });
  const counts = () => page.locator('#marker-count').textContent();
  const thumbs = () => page.locator('#thumbs img').count();
  assert.equal(await counts(), '0 photos · 1 marker — add a photo for each marker, or remove 1 marker');
  await page.getByLabel('Subject photos', { exact: true }).setInputFiles(PHOTO);
  await page.waitForFunction(() => document.querySelectorAll('#thumbs img').length === 1);
  assert.equal(await prompt.inputValue(), 'a cat <|image|> on the beach');
  // The user writes a second subject and leaves the cursor inside its noun.
  await prompt.fill('a cat <|image|> and a dog on the beach');
  await prompt.evaluate((ta) => { const at = ta.value.indexOf('dog') + 1; ta.setSelectionRange(at, at); });
  assert.equal(await counts(), '1 photo · 1 marker');
  await page.getByLabel('Subject photos', { exact: true }).setInputFiles(path.join(path.dirname(PHOTO), 'coffee.png'));
  await page.waitForFunction(() => document.querySelectorAll('#thumbs img').length === 2);
  assert.equal(await prompt.inputValue(), 'a cat <|image|> and a dog <|image|> on the beach');
  assert.equal(await counts(), '2 photos · 2 markers');
  // A file the browser cannot decode is refused at once; the list and the prompt stay as they were.
  await page.getByLabel('Subject photos', { exact: true }).setInputFiles({ name: 'notes.png', mimeType: 'image/png', buffer: Buffer.from('not a picture') });
  await page.waitForFunction(() => /notes\.png is not an image/.test(document.querySelector('[role=alert]').textContent));
  assert.equal(await thumbs(), 2);
  assert.equal(await prompt.inputValue(), 'a cat <|image|> and a dog <|image|> on the beach');
  // Removing the first photo removes the first marker.
  await page.getByRole('button', { name: 'Remove subject 1' }).click();
  assert.equal(await prompt.inputValue(), 'a cat and a dog <|image|> on the beach');
  assert.equal(await counts(), '1 photo · 1 marker');
  // Markers the photos do not cover are pointed out.
  await prompt.fill('a cat <|image|> and a dog <|image|> on the beach');
  assert.equal(await counts(), '1 photo · 2 markers — add a photo for each marker, or remove 1 marker');
  // Drag and drop onto the drop area adds the photo (it takes the unused marker).
  await page.evaluate(async () => {
    const blob = await (await fetch('fixtures/pipeline/photos/astronaut.png')).blob();
    const dt = new DataTransfer();
    dt.items.add(new File([blob], 'astronaut.png', { type: 'image/png' }));
    document.getElementById('drop').dispatchEvent(new DragEvent('drop', { dataTransfer: dt, bubbles: true, cancelable: true }));
  });
  await page.waitForFunction(() => document.querySelectorAll('#thumbs img').length === 2);
  assert.equal(await page.locator('#thumbs img').nth(1).getAttribute('alt'), 'Subject 2: astronaut.png');
  assert.equal(await prompt.inputValue(), 'a cat <|image|> and a dog <|image|> on the beach');
  assert.equal(await counts(), '2 photos · 2 markers');
  assertClean(problems.filter((p) => !/notes\.png/.test(p)));
  await page.close();
});

test('device auto never takes a software adapter (and says why); webgpu still uses it; an adapter that does not say what it is gets a timed probe', async () => {
  const { page, problems } = await apiPage();
  const r = await page.evaluate(async () => {
    const { createGenerator, detect } = await import('./pkg/index.js');
    const { chooseDevice } = await import('./pkg/device.js');
    const caps = await detect();
    const auto = await createGenerator({ model: 'models/default.gguf', device: 'auto', threads: 1 });
    const a = { device: auto.device, reason: auto.deviceReason };
    await auto.dispose();
    const gpu = await createGenerator({ model: 'models/default.gguf', device: 'webgpu' });
    const g = { device: gpu.device, reason: gpu.deviceReason };
    await gpu.dispose();
    // The same adapter with its name withheld: the probe measures it against the CPU.
    const unnamed = { info: {}, requestDevice: async (d) => (await navigator.gpu.requestAdapter()).requestDevice(d) };
    const probed = await chooseDevice('auto', { adapter: unnamed });
    return { caps, a, g, probed };
  });
  assert.ok(r.caps.webgpu && r.caps.adapterInfo.software, `this test needs Chromium's software adapter: ${JSON.stringify(r.caps)}`);
  assert.equal(r.a.device, 'cpu');
  assert.match(r.a.reason, /^the WebGPU adapter is a software one \(.*swiftshader.*\); the CPU path is faster$/i);
  assert.equal(r.g.device, 'webgpu');
  assert.match(r.g.reason, /^WebGPU asked for/);
  console.log(`probe of the unnamed software adapter: ${r.probed.reason}`);
  assert.equal(r.probed.device, 'cpu');
  assert.match(r.probed.reason, /probe: adapter [\d.]+ ms, one CPU thread ~\d+ ms/);
  assertClean(problems);
  await page.close();
});

test('results keep their settings: the PNG download carries them in text chunks, and "use these settings again" makes the same image byte for byte', async () => {
  const { page, problems } = await openPage(browser, server.url);
  await page.waitForFunction(() => /Ready on/.test(document.getElementById('load-status').textContent), null, { timeout: 300_000 });
  await page.getByLabel('Subject photos', { exact: true }).setInputFiles(PHOTO);
  await page.waitForFunction(() => document.querySelectorAll('#thumbs img').length === 1);
  await setRange(page, 'steps', STEPS);
  await page.getByLabel('Seed').fill('31');
  await page.getByLabel('Negative prompt').fill('blurry');
  // The controls too: a slider row, suppression, self-subject attention.
  await page.getByLabel('Subject 1 from').fill('red');
  await page.getByLabel('Subject 1 to').fill('blue');
  await setRange(page, 'attr-strength-1', 0.5);
  await page.getByLabel('Suppress', { exact: true }).fill('hat');
  await setRange(page, 'suppress-strength', 0.5);
  await setRange(page, 'self-attention', 0.5);
  await page.getByRole('button', { name: 'Generate' }).click();
  await waitForResult(page, 0);
  assert.equal(await page.getByRole('alert').textContent(), '');
  const pngBytes = (i) => page.evaluate(async (k) => Array.from(new Uint8Array(await (await fetch(document.querySelectorAll('#gallery img')[k].src)).arrayBuffer())), i);
  const first = await pngBytes(0);
  // The download (a real one) holds the settings.
  const [download] = await Promise.all([page.waitForEvent('download'), page.getByRole('link', { name: 'Download PNG' }).click()]);
  const file = fs.readFileSync(await download.path());
  assert.deepEqual(Array.from(file), first);
  const { readText } = await import(path.join(ROOT, 'web', 'png.js'));
  const text = readText(new Uint8Array(file));
  const size = Number(await page.getByLabel('Size').inputValue());
  const settings = JSON.parse(text.fastcomposer);
  assert.deepEqual(settings, {
    prompt: 'a cat <|image|> on the beach', negativePrompt: 'blurry', steps: STEPS, guidance: 1, alpha: 0.8, seed: 31,
    scheduler: 'lcm', width: size, height: size, decoder: 'full', model: settings.model, subjects: ['chelsea.png'],
    attributes: [{ subject: 1, from: 'red', to: 'blue', strength: 0.5 }], suppress: [{ text: 'hat', strength: 0.5 }], selfAttention: 0.5,
  });
  assert.ok(settings.model.length > 0);
  assert.equal(text.parameters, `a cat <|image|> on the beach\nNegative prompt: blurry\nSteps: ${STEPS}, Sampler: LCM, CFG scale: 1, Seed: 31, `
    + `Size: ${size}x${size}, Subject strength (alpha): 0.8, Model: ${settings.model}, Attributes: 1 red→blue 0.5, Suppress: hat 0.5, `
    + 'Self-subject attention: 0.5');
  // The browser still reads it as the image.
  const px = await pngPixels(page, file);
  assert.ok(notBlank(px));
  // Other settings, another image; then the first one's settings again.
  await page.getByLabel('Seed').fill('32');
  await page.getByLabel('Prompt', { exact: true }).fill('a cat <|image|> in the snow');
  await setRange(page, 'attr-strength-1', 0);
  await page.getByLabel('Suppress', { exact: true }).fill('');
  await setRange(page, 'self-attention', 0);
  await page.getByRole('button', { name: 'Generate' }).click();
  await waitForResult(page, 1);
  assert.notDeepEqual(await pngBytes(0), first);
  await page.getByRole('button', { name: 'Use these settings again' }).nth(1).click();
  assert.equal(await page.getByLabel('Seed').inputValue(), '31');
  assert.equal(await page.getByLabel('Prompt', { exact: true }).inputValue(), 'a cat <|image|> on the beach');
  assert.equal(await page.getByLabel('Negative prompt').inputValue(), 'blurry');
  assert.equal(await page.getByLabel('Subject 1 attribute strength').inputValue(), '0.5');
  assert.equal(await page.getByLabel('Suppress', { exact: true }).inputValue(), 'hat');
  assert.equal(await page.getByLabel('Self-subject attention').inputValue(), '0.5');
  await page.getByRole('button', { name: 'Generate' }).click();
  await waitForResult(page, 2);
  assert.equal(await page.getByRole('alert').textContent(), '');
  assert.deepEqual(await pngBytes(0), first, 'the same settings did not give the same PNG');
  assertClean(problems);
  await page.close();
});

// The package API straight from a page (as a user of the npm package would).
async function apiPage() {
  const o = await openPage(browser, `${server.url}index.html?noop`);
  // Let the demo's own automatic load finish first (it writes the cache).
  await o.page.waitForFunction(() => /Ready on/.test(document.getElementById('load-status').textContent), null, { timeout: 300_000 });
  return o;
}

test('privacy: after the model is loaded a whole generation makes no network request', async () => {
  const { page, problems } = await apiPage();
  await page.evaluate(async () => {
    const { createGenerator } = await import('./pkg/index.js');
    window.gen = await createGenerator({ model: 'models/default.gguf', device: 'cpu' });
    const photo = await (await fetch('fixtures/pipeline/photos/chelsea.png')).blob();
    window.subject = await window.gen.encodeSubject(photo);
  });
  const requests = [];
  const onReq = (r) => requests.push(r.url());
  browser.on('request', onReq);
  const ok = await page.evaluate(async (steps) => {
    const r = await window.gen.generate({ prompt: 'a cat <|image|> in the snow', subjects: [window.subject], steps, seed: 5 });
    return r.image.width > 0;
  }, STEPS);
  browser.off('request', onReq);
  assert.ok(ok);
  assert.deepEqual(requests, [], `requests during generation: ${requests.join(', ')}`);
  assertClean(problems);
  await page.close();
});

test('abort mid-generation gives Cancelled, and the next generate works', async () => {
  const { page, problems } = await apiPage();
  const r = await page.evaluate(async () => {
    const { createGenerator } = await import('./pkg/index.js');
    const gen = await createGenerator({ model: 'models/default.gguf', device: 'cpu' });
    const photo = await (await fetch('fixtures/pipeline/photos/chelsea.png')).blob();
    const s = await gen.encodeSubject(photo);
    const ac = new AbortController();
    let name = null;
    try {
      await gen.generate({ prompt: 'a cat <|image|>', subjects: [s], steps: 30, seed: 1 }, {
        signal: ac.signal,
        onStep: ({ step }) => { if (step === 2) ac.abort(); },
      });
    } catch (e) {
      name = e.name;
    }
    const again = await gen.generate({ prompt: 'a cat <|image|>', subjects: [s], steps: 2, seed: 1 });
    await gen.dispose();
    return { name, width: again.image.width };
  });
  assert.equal(r.name, 'Cancelled');
  assert.ok(r.width > 0);
  assertClean(problems);
  await page.close();
});

test('memory modes: sequential loading gives the resident model\'s image; a bad mode is a typed error', async () => {
  const { page, problems } = await apiPage();
  const r = await page.evaluate(async (steps) => {
    const { createGenerator } = await import('./pkg/index.js');
    const photo = await (await fetch('fixtures/pipeline/photos/chelsea.png')).blob();
    const sum = (img) => Array.from(img.data).reduce((a, b) => (a * 31 + b) % 1000000007, 7);
    const out = {};
    for (const memory of ['resident', 'sequential']) {
      const gen = await createGenerator({ model: 'models/default.gguf', device: 'cpu', memory });
      const s = await gen.encodeSubject(photo);
      const opts = { prompt: 'a cat <|image|> in the forest', subjects: [s], steps, seed: 3 };
      // Twice: the sequential model loads its stages again for the second image.
      const a = await gen.generate(opts);
      const b = await gen.generate(opts);
      out[memory] = { mode: gen.memory, first: sum(a.image), second: sum(b.image), pixels: Array.from(a.image.data) };
      await gen.dispose();
    }
    const auto = await createGenerator({ model: 'models/default.gguf', device: 'cpu' });
    out.auto = auto.memory; // 19 MB: below the 512 MiB threshold
    await auto.dispose();
    try {
      await createGenerator({ model: 'models/default.gguf', device: 'cpu', memory: 'low' });
      out.bad = 'no error';
    } catch (e) {
      out.bad = `${e.name}: ${e.message}`;
    }
    return out;
  }, STEPS);
  assert.equal(r.resident.mode, 'resident');
  assert.equal(r.sequential.mode, 'sequential');
  assert.equal(r.auto, 'resident');
  // Same weights, same kernels: the same image.
  const d = diffStats(r.sequential.pixels, r.resident.pixels);
  console.log(`sequential vs resident: max |diff| ${d.max}, mean ${d.mean.toFixed(4)} (8-bit levels)`);
  assert.equal(d.max, 0, `sequential loading changed the image: ${JSON.stringify(d)}`);
  assert.equal(r.sequential.second, r.sequential.first, 'the second sequential generation differs');
  assert.match(r.bad, /^InvalidInput: .*unknown memory mode `low`/);
  assertClean(problems);
  await page.close();
});

test('precision: auto is f32 on the CPU device; f16 there, on WebGPU without shader-f16 and unknown values are typed errors', async () => {
  const { page, problems } = await apiPage();
  const r = await page.evaluate(async () => {
    const { createGenerator } = await import('./pkg/index.js');
    const out = {};
    const gen = await createGenerator({ model: 'models/default.gguf', device: 'cpu' });
    out.auto = gen.precision;
    await gen.dispose();
    const attempt = async (opts) => {
      try {
        const g = await createGenerator({ model: 'models/default.gguf', ...opts });
        await g.dispose();
        return 'no error';
      } catch (e) {
        return `${e.name}: ${e.message}`;
      }
    };
    out.f16 = await attempt({ device: 'cpu', precision: 'f16' });
    out.double = await attempt({ device: 'cpu', precision: 'double' });
    // This software adapter has no shader-f16: asking WebGPU for f16 is a DeviceError.
    const adapter = await navigator.gpu.requestAdapter();
    out.adapterF16 = adapter.features.has('shader-f16');
    out.webgpuF16 = await attempt({ device: 'webgpu', precision: 'f16' });
    return out;
  });
  assert.equal(r.auto, 'f32');
  assert.match(r.f16, /^InvalidInput: .*precision f16 needs a GPU device/);
  assert.match(r.double, /^InvalidInput: .*unknown precision `double`/);
  if (r.adapterF16) assert.equal(r.webgpuF16, 'no error');
  else assert.match(r.webgpuF16, /^DeviceError: .*does not compute in f16/);
  assertClean(problems);
  await page.close();
});

test('two generate calls at once are queued, results uncorrupted; bad input is a typed error', async () => {
  const { page, problems } = await apiPage();
  const r = await page.evaluate(async (steps) => {
    const { createGenerator } = await import('./pkg/index.js');
    const gen = await createGenerator({ model: 'models/default.gguf', device: 'cpu' });
    const photo = await (await fetch('fixtures/pipeline/photos/chelsea.png')).blob();
    const s = await gen.encodeSubject(photo);
    const opts = (seed) => ({ prompt: 'a cat <|image|> in space', subjects: [s], steps, seed });
    const sum = (img) => Array.from(img.data).reduce((a, b) => (a * 31 + b) % 1000000007, 7);
    const [a, b] = await Promise.all([gen.generate(opts(1)), gen.generate(opts(2))]);
    const a2 = await gen.generate(opts(1));
    const errors = {};
    for (const [k, f] of Object.entries({
      markers: () => gen.generate({ prompt: 'a cat <|image|> and a dog <|image|>', subjects: [s], steps: 1 }),
      steps: () => gen.generate({ prompt: 'a cat <|image|>', subjects: [s], steps: 0 }),
      alpha: () => gen.generate({ prompt: 'a cat <|image|>', subjects: [s], alpha: 2 }),
      guidance: () => gen.generate({ prompt: 'a cat <|image|>', subjects: [s], guidance: NaN }),
      width: () => gen.generate({ prompt: 'a cat <|image|>', subjects: [s], width: 100 }),
      image: () => gen.encodeSubject(new Blob([new Uint8Array([1, 2, 3])], { type: 'image/png' })),
      tiny: () => gen.encodeSubject(new ImageData(1, 200)),
    })) {
      try { await f(); errors[k] = 'no error'; } catch (e) { errors[k] = e.name; }
    }
    const after = await gen.generate(opts(3));
    await gen.dispose();
    return { same: sum(a.image) === sum(a2.image), differ: sum(a.image) !== sum(b.image), errors, afterOk: after.image.width > 0 };
  }, STEPS);
  assert.ok(r.same, 'the queued call gave a different image than the same call alone');
  assert.ok(r.differ, 'different seeds gave the same image');
  assert.deepEqual(r.errors, { markers: 'InvalidInput', steps: 'InvalidInput', alpha: 'InvalidInput', guidance: 'InvalidInput', width: 'InvalidInput', image: 'InvalidInput', tiny: 'InvalidInput' });
  assert.ok(r.afterOk);
  assertClean(problems);
  await page.close();
});

// A bundle with recorded generation settings (as an LCM-LoRA bundle has: `convert --scheduler lcm
// --steps 4 --guidance 1`) and a tiny autoencoder (`--tiny-vae`: the TAESD fixture), made here
// from the pipeline fixture's tiny model by the CLI.
test('a bundle\'s own scheduler, steps and guidance, and its tiny decoder: the API uses them unless told otherwise (tiny: the native CLI\'s image, full-size previews); the demo\'s form takes them', async () => {
  const bundle = path.join(os.tmpdir(), `fc-defaults-${process.pid}.gguf`);
  const fixtures = path.join(ROOT, 'crate/tests/fixtures');
  execFileSync(CLI, ['convert', '--from', path.join(fixtures, 'pipeline/model'), '--scheduler', 'lcm',
    '--steps', '4', '--guidance', '1', '--tiny-vae', path.join(fixtures, 'vae_tiny/weights.safetensors'), '--out', bundle], { stdio: 'pipe' });
  const nativeTiny = path.join(os.tmpdir(), `fc-tiny-${process.pid}.png`);
  execFileSync(CLI, ['generate', '--model', bundle, '--prompt', 'a cat <|image|> in the snow', '--subject', PHOTO, '--seed', '5',
    '--decoder', 'tiny', '--out', nativeTiny], { stdio: 'pipe' });
  const { page, problems } = await apiPage();
  const r = await page.evaluate(async (b64) => {
    const { createGenerator } = await import('./pkg/index.js');
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const g = await createGenerator({ model: bytes, device: 'cpu', threads: 1 });
    const s = await g.encodeSubject(await (await fetch('fixtures/pipeline/photos/chelsea.png')).blob());
    const opts = { prompt: 'a cat <|image|> in the snow', subjects: [s], seed: 5 };
    const implicit = await g.generate(opts);
    const explicit = await g.generate({ ...opts, scheduler: 'lcm', steps: 4, guidance: 1 });
    const told = await g.generate({ ...opts, steps: 2 });
    const previews = [];
    const tiny = await g.generate({ ...opts, decoder: 'tiny' }, { previewEvery: 1, onStep: (e) => previews.push(e.preview ? [e.preview.width, e.preview.height] : null) });
    const out = {
      defaults: g.defaults, steps: implicit.timings.stepMs.length, toldSteps: told.timings.stepMs.length,
      same: implicit.image.data.every((v, i) => v === explicit.image.data[i]),
      hasTiny: g.hasTinyDecoder, tiny: Array.from(tiny.image.data), previews,
    };
    await g.dispose();
    return out;
  }, fs.readFileSync(bundle).toString('base64'));
  assert.deepEqual(r.defaults, { scheduler: 'lcm', steps: 4, guidance: 1 });
  assert.equal(r.steps, 4);
  assert.equal(r.toldSteps, 2);
  assert.ok(r.same, 'the recorded defaults did not give the explicit settings\' image');
  assert.ok(r.hasTiny);
  assert.deepEqual(r.previews, [[64, 64], [64, 64], [64, 64], null]);
  const d = diffStats(r.tiny, await pngPixels(page, fs.readFileSync(nativeTiny)));
  console.log(`tiny decoder, wasm vs native: max |diff| ${d.max}, mean ${d.mean.toFixed(3)}`);
  assert.ok(d.mean <= 1 && d.max <= 24, JSON.stringify(d));
  // The demo: loading the file sets its form.
  await page.getByLabel('Device').selectOption('cpu');
  await page.getByLabel('or a model file').setInputFiles(bundle);
  await page.waitForFunction(() => /Ready on cpu/.test(document.getElementById('load-status').textContent), null, { timeout: 300_000 });
  assert.equal(await page.getByLabel('Scheduler').inputValue(), 'lcm');
  assert.equal(await page.locator('#steps').inputValue(), '4');
  assert.equal(await page.locator('#guidance').inputValue(), '1');
  assert.equal(await page.locator('#steps-out').textContent(), '4');
  assert.equal(await page.locator('#decoder option[value=tiny]').isDisabled(), false);
  fs.rmSync(bundle, { force: true });
  fs.rmSync(nativeTiny, { force: true });
  assertClean(problems);
  await page.close();
});

// A kohya LoRA for the default model (rank 4, seeded values): a UNet attention projection, a
// resnet 3×3 convolution (conv LoRA: 3×3 down, 1×1 up) and a text-encoder projection.
function defaultModelLora() {
  let state = 12345;
  const rand = () => { state = (Math.imul(state, 1664525) + 1013904223) >>> 0; return state / 2 ** 32 * 2 - 1; };
  const modules = [
    ['lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q', [64, 64]],
    ['lora_unet_down_blocks_0_resnets_0_conv1', [64, 64, 3, 3]],
    ['lora_te_text_model_encoder_layers_0_self_attn_q_proj', [128, 128]],
  ];
  const tensors = [];
  for (const [name, [out, inp, ...k]] of modules) {
    const fan = inp * k.reduce((a, b) => a * b, 1);
    tensors.push([`${name}.lora_down.weight`, [4, inp, ...k], Array.from({ length: 4 * fan }, () => rand() * Math.sqrt(3 / fan))]);
    tensors.push([`${name}.lora_up.weight`, [out, 4, ...k.map(() => 1)], Array.from({ length: out * 4 }, () => 4 * rand())]);
    tensors.push([`${name}.alpha`, [], [4]]);
  }
  // safetensors: u64 header length, JSON header, f32 data.
  const header = {};
  let offset = 0;
  for (const [name, shape, v] of tensors) {
    header[name] = { dtype: 'F32', shape, data_offsets: [offset, offset + 4 * v.length] };
    offset += 4 * v.length;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - (json.length % 8)) % 8);
  const data = Buffer.alloc(offset);
  let o = 0;
  for (const [, , v] of tensors) for (const x of v) { data.writeFloatLE(x, o); o += 4; }
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  return Buffer.concat([len, Buffer.from(json), data]);
}

test('LoRAs at load: the page\'s image with a LoRA is the native CLI\'s (`generate --lora`); bad LoRAs are typed errors', async () => {
  const lora = path.join(os.tmpdir(), `fc-lora-${process.pid}.safetensors`);
  fs.writeFileSync(lora, defaultModelLora());
  const prompt = 'a cat <|image|> in the snow';
  const native = path.join(os.tmpdir(), `fc-lora-${process.pid}.png`);
  execFileSync(CLI, ['generate', '--model', MODEL, '--prompt', prompt, '--subject', PHOTO, '--seed', '3', '--steps', String(STEPS),
    '--lora', `${lora}:0.8`, '--out', native], { stdio: 'pipe' });
  const { page, problems } = await apiPage();
  const r = await page.evaluate(async ({ b64, prompt, steps }) => {
    const { createGenerator } = await import('./pkg/index.js');
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const photo = await (await fetch('fixtures/pipeline/photos/chelsea.png')).blob();
    const run = async (loras) => {
      const g = await createGenerator({ model: 'models/default.gguf', device: 'cpu', threads: 1, loras });
      const s = await g.encodeSubject(photo);
      const img = await g.generate({ prompt, subjects: [s], seed: 3, steps });
      await g.dispose();
      return Array.from(img.image.data);
    };
    const errorOf = async (loras) => {
      try {
        const g = await createGenerator({ model: 'models/default.gguf', device: 'cpu', threads: 1, loras });
        await g.dispose();
        return 'none';
      } catch (e) {
        return `${e.name}: ${e.message}`;
      }
    };
    return {
      withLora: await run([{ model: new File([bytes], 'mine.safetensors'), scale: 0.8 }]),
      without: await run([]),
      nan: await errorOf([{ model: bytes, scale: NaN }]),
      other: await errorOf([{ model: 'fixtures/lora/kohya.safetensors' }]),
      missing: await errorOf([{ model: 'fixtures/lora/no-such.safetensors' }]),
      junk: await errorOf([{ model: new Uint8Array([1, 2, 3]) }]),
    };
  }, { b64: fs.readFileSync(lora).toString('base64'), prompt, steps: STEPS });
  const d = diffStats(r.withLora, await pngPixels(page, fs.readFileSync(native)));
  const moved = diffStats(r.withLora, r.without);
  console.log(`LoRA at load, wasm vs native: max |diff| ${d.max}, mean ${d.mean.toFixed(3)}; the LoRA moves the image by mean ${moved.mean.toFixed(2)}`);
  assert.ok(d.mean <= 1 && d.max <= 24, JSON.stringify(d));
  assert.ok(moved.mean > 5 * Math.max(d.mean, 0.2), `the LoRA must change the image (${JSON.stringify(moved)})`);
  assert.match(r.nan, /^InvalidInput: .*scale.*finite/);
  assert.match(r.other, /^WeightsError: .*kohya\.safetensors.*matched/);
  assert.match(r.missing, /^IoError: .*no-such\.safetensors/);
  assert.match(r.junk, /^WeightsError: .*LoRA 1/);
  fs.rmSync(lora, { force: true });
  fs.rmSync(native, { force: true });
  assertClean(problems);
  await page.close();
});

test('a model file from disk: the demo loads it from its file input; through the API it gives the URL\'s image; bad files are typed errors and leave no worker', async () => {
  // The demo: pick the bundle in the file input (it loads at once), then generate.
  const { page, problems } = await apiPage();
  await page.getByLabel('Device').selectOption('cpu');
  const statuses = [];
  await page.exposeFunction('__status', (t) => statuses.push(t));
  await page.evaluate(() => new MutationObserver(() => window.__status(document.getElementById('load-status').textContent))
    .observe(document.getElementById('load-status'), { childList: true, characterData: true, subtree: true }));
  await page.getByLabel('or a model file').setInputFiles(MODEL);
  await page.waitForFunction(() => /Ready on cpu/.test(document.getElementById('load-status').textContent), null, { timeout: 300_000 });
  assert.ok(statuses.some((t) => /^Reading default\.gguf: /.test(t)), `no read progress shown: ${statuses.join(' | ')}`);
  assert.match(await page.locator('#model-card').textContent(), /^Model: /);
  // A file that is not a bundle: a typed error in the page, the file input cleared.
  await page.getByLabel('or a model file').setInputFiles(PHOTO);
  await page.waitForFunction(() => document.querySelector('[role=alert]').textContent.length > 0, null, { timeout: 300_000 });
  assert.match(await page.getByRole('alert').textContent(), /^WeightsError: /);
  assert.equal(await page.locator('#model-file').evaluate((el) => el.files.length), 0);

  // The API: a File gives the URL's image; bad models are typed errors.
  const r = await page.evaluate(async (steps) => {
    const { createGenerator } = await import('./pkg/index.js');
    const bytes = new Uint8Array(await (await fetch('models/default.gguf')).arrayBuffer());
    const photo = await (await fetch('fixtures/pipeline/photos/chelsea.png')).blob();
    const out = {};
    for (const [name, model] of [['url', 'models/default.gguf'], ['file', new File([bytes], 'mine.gguf')]]) {
      const events = [];
      const gen = await createGenerator({ model, device: 'cpu', threads: 1, onProgress: (p) => events.push(p) });
      const s = await gen.encodeSubject(photo);
      const { image } = await gen.generate({ prompt: 'a cat <|image|> on the beach', subjects: [s], steps, seed: 8 });
      const reads = events.filter((e) => e.status === 'read');
      out[name] = { source: gen.source, pixels: Array.from(image.data), reads: reads.length, last: reads[reads.length - 1] };
      await gen.dispose();
    }
    const corrupted = bytes.slice();
    corrupted[corrupted.length - 5000] ^= 0xff;
    out.errors = {};
    // Count the package's workers through a stand-in for Worker: each failed load must end its own.
    const Real = window.Worker;
    const workers = [];
    window.Worker = class extends Real {
      constructor(...a) { super(...a); this.ended = false; workers.push(this); }
      terminate() { this.ended = true; super.terminate(); }
    };
    for (const [name, model] of [
      ['truncated', new File([bytes.slice(0, bytes.length - 100)], 'cut.gguf')],
      ['corrupted', new File([corrupted], 'bad.gguf')],
      ['empty', new File([], 'empty.gguf')],
      ['photo', new File([photo], 'chelsea.png')],
      ['number', 42],
      ['none', undefined],
    ]) {
      try {
        const g = await createGenerator({ model, device: 'cpu', threads: 1 });
        await g.dispose();
        out.errors[name] = 'no error';
      } catch (e) {
        out.errors[name] = `${e.name}: ${e.message}`;
      }
    }
    window.Worker = Real;
    out.workers = { started: workers.length, left: workers.filter((w) => !w.ended).length };
    return out;
  }, STEPS);
  assert.equal(r.url.source, 'cache'); // the demo's own load cached it: the cache path streams too
  assert.equal(r.file.source, 'file');
  assert.equal(r.url.reads, 0);
  assert.ok(r.file.reads >= 2, `read progress: ${r.file.reads} events`);
  assert.equal(r.file.last.file, 'mine.gguf');
  assert.equal(r.file.last.loaded, r.file.last.total);
  const d = diffStats(r.file.pixels, r.url.pixels);
  assert.equal(d.max, 0, `the file gave another image than the URL: ${JSON.stringify(d)}`);
  assert.match(r.errors.truncated, /^WeightsError: .*truncated/);
  assert.match(r.errors.corrupted, /^WeightsError: .*chunk/);
  assert.match(r.errors.empty, /^WeightsError: the model file empty\.gguf is empty/);
  assert.match(r.errors.photo, /^WeightsError: /);
  assert.match(r.errors.number, /^InvalidInput: createGenerator needs a model/);
  assert.match(r.errors.none, /^InvalidInput: createGenerator needs a model/);
  // The four bad files each started a worker (the two bad values none) and each failed load ended it.
  assert.deepEqual(r.workers, { started: 4, left: 0 }, 'a failed load left its worker running');
  assertClean(problems);
  await page.close();
});

test('a truncated or corrupted cached bundle is detected and fetched again', async () => {
  const { page, problems } = await apiPage();
  const r = await page.evaluate(async () => {
    const { createGenerator } = await import('./pkg/index.js');
    const url = new URL('models/default.gguf', location.href).href;
    const good = new Uint8Array(await (await fetch(url)).arrayBuffer());
    const out = {};
    for (const [name, bad] of [['truncated', good.slice(0, good.length - 100)], ['corrupted', (() => { const c = good.slice(); c[c.length - 5000] ^= 0xff; return c; })()]]) {
      const cache = await caches.open('fastcomposer-models-v1');
      await cache.put(url, new Response(bad));
      const events = [];
      const gen = await createGenerator({ model: url, device: 'cpu', onProgress: (p) => events.push(p.status) });
      // The cache is written again from the loaded model's copy: byte for byte the served file.
      const cached = new Uint8Array(await (await cache.match(url)).arrayBuffer());
      const same = cached.length === good.length && cached.every((v, i) => v === good[i]);
      out[name] = { events: [...new Set(events)], restored: same, source: gen.source };
      await gen.dispose();
    }
    return out;
  });
  for (const k of ['truncated', 'corrupted']) {
    assert.ok(r[k].events.includes('cache-invalid'), `${k}: ${JSON.stringify(r[k])}`);
    assert.ok(r[k].restored, `${k}: the cache was not repaired`);
    assert.equal(r[k].source, 'network+cached');
  }
  assertClean(problems);
  await page.close();
});

test('a second page load works with the server stopped (offline, from the cache)', async () => {
  const { page } = await openPage(browser, server.url);
  await page.waitForFunction(() => /Ready on/.test(document.getElementById('load-status').textContent), null, { timeout: 300_000 });
  await page.waitForFunction(async () => !!(await navigator.serviceWorker.ready), null, { timeout: 60_000 });
  await page.reload(); // now controlled by the service worker, which caches the page's files
  await page.waitForFunction(() => /Ready on/.test(document.getElementById('load-status').textContent), null, { timeout: 300_000 });
  await page.close();
  server.kill();
  await new Promise((r) => setTimeout(r, 300));
  try {
    const { page: p2, problems } = await openPage(browser, server.url);
    await p2.getByLabel('Device').selectOption('cpu');
    await p2.getByRole('button', { name: 'Load model' }).click();
    await p2.waitForFunction(() => /Ready on/.test(document.getElementById('load-status').textContent), null, { timeout: 300_000 });
    await p2.getByLabel('Subject photos', { exact: true }).setInputFiles(PHOTO);
    await p2.getByLabel('Prompt', { exact: true }).fill('a cat <|image|> in the snow');
    await setRange(p2, 'steps', 2);
    await p2.getByRole('button', { name: 'Generate' }).click();
    await p2.waitForFunction(() => document.querySelectorAll('#gallery img').length > 0
      || document.querySelector('[role=alert]').textContent.length > 0, null, { timeout: 300_000 });
    assert.equal(await p2.getByRole('alert').textContent(), '');
    assertClean(problems.filter((p) => !/Failed to load resource|ERR_CONNECTION_REFUSED/.test(p)));
    await p2.close();
  } finally {
    server = await startServer(server.port);
  }
});
