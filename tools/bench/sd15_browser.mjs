// SD1.5 size in the browser (issue 7, slow check): the random-weight SD1.5-size bundle loads in
// headless Chromium through the npm package's API, on the CPU (wasm) path and on WebGPU (a
// software adapter here), and runs the image encoder (one subject photo), the text encoder and
// fuser, and UNet steps (CFG, batch 2) at a 32×32 latent (256×256 px). The subject embedding
// and the latents after the steps are compared with the native CLI's on the same bundle and
// inputs (`generate --latents-out`), in the same run. Both sides load the model the way `auto`
// does for bundles this size (sequential: each stage's weights are loaded when the stage
// starts), so the first step includes loading the UNet; the second step is the UNet alone.
//   node tools/bench/sd15_browser.mjs [int4|int8 ...] [--devices cpu,cpu-threads,webgpu] [--steps 2]
//     [--attention sliced|fused] [--size 256] [--decode] [--scheduler ddim|lcm] [--guidance 5]
//     [--decoder full|tiny]
// (--size: image side in pixels, 256 by default (a 32×32 latent); 512 is SD1.5's own.
// --decode: the page also decodes the latents to an image with the VAE, as `generate` does.
// --scheduler / --guidance / --decoder: the generation's (guidance ≤ 1: one UNet batch a step;
// tiny: the bundle's TAESD, `convert --tiny-vae tools/.data/taesd_random` from
// tools/reference/taesd_random.py).)
// (--attention: the page's attention kernel, the JS API option; fused runs the flash kernel on
// WebGPU. The native CLI runs on the CPU device either way.)
// (cpu: the single-threaded module, `threads: 1`; cpu-threads: the threaded module, `threads:
// 'auto'`, one thread per core — the page is cross-origin isolated by serve.mjs.)
// Needs pkg/ (pkg-scripts/build-wasm.sh), target/release/fastcomposer and the bundles from
// tools/bench/sd15_sizes.sh. Prints one JSON line per run; exits 1 if a browser result does not
// match native within the tolerances below or the page reported an error.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ROOT, serve, launch, machine } from './common.mjs';

const args = process.argv.slice(2);
const devIdx = args.indexOf('--devices');
const devices = devIdx >= 0 ? args.splice(devIdx, 2)[1].split(',') : ['cpu', 'cpu-threads', 'webgpu'];
const stepsIdx = args.indexOf('--steps');
const STEPS = stepsIdx >= 0 ? Number(args.splice(stepsIdx, 2)[1]) : 2;
const attIdx = args.indexOf('--attention');
const ATTENTION = attIdx >= 0 ? args.splice(attIdx, 2)[1] : 'sliced';
const sizeIdx = args.indexOf('--size');
const SIZE = sizeIdx >= 0 ? Number(args.splice(sizeIdx, 2)[1]) : 256;
const decIdx = args.indexOf('--decode');
const DECODE = decIdx >= 0 && args.splice(decIdx, 1).length > 0;
const flag = (name, fallback) => {
  const i = args.indexOf(name);
  return i >= 0 ? args.splice(i, 2)[1] : fallback;
};
const SCHEDULER = flag('--scheduler', 'ddim');
const GUIDANCE = Number(flag('--guidance', '5'));
const DECODER = flag('--decoder', 'full');
const quants = args.length ? args : ['int4'];
const PHOTO = path.join(ROOT, 'crate/tests/fixtures/pipeline/photos/chelsea.png');
const OPTS = { prompt: 'a cat <|image|> on the beach', steps: STEPS, alpha: 1, seed: 0, width: SIZE, height: SIZE, scheduler: SCHEDULER, guidance: GUIDANCE, decoder: DECODER };
// Tolerances, relative to the largest native magnitude: the CPU path runs the same f32 kernels
// compiled to wasm SIMD (different summation order than AVX-512); WebGPU dequantizes and sums
// in its own order on another implementation of f32 arithmetic.
const TOL = { cpu: 1e-3, 'cpu-threads': 1e-3, webgpu: 1e-2 };

function readSafetensors(file) {
  const b = fs.readFileSync(file);
  const n = Number(b.readBigUInt64LE(0));
  const header = JSON.parse(b.subarray(8, 8 + n).toString());
  const out = {};
  for (const [k, v] of Object.entries(header)) {
    if (k === '__metadata__') continue;
    const [s, e] = v.data_offsets;
    const bytes = b.subarray(8 + n + s, 8 + n + e);
    out[k] = Array.from(new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length)));
  }
  return out;
}

function compare(a, b) {
  if (a.length !== b.length) return { lengths: [a.length, b.length], maxAbs: Infinity, rel: Infinity };
  let maxAbs = 0;
  let scale = 0;
  for (let i = 0; i < a.length; i++) {
    maxAbs = Math.max(maxAbs, Math.abs(a[i] - b[i]));
    scale = Math.max(scale, Math.abs(b[i]));
  }
  return { maxAbs: +maxAbs.toExponential(3), rel: +(maxAbs / scale).toExponential(3) };
}

function native(q) {
  const out = path.join(os.tmpdir(), `fc-sd15-native-${q}.safetensors`);
  const cli = [
    'generate', '--model', path.join(ROOT, `tools/.data/sd15_${q}.gguf`), '--prompt', OPTS.prompt, '--subject', PHOTO,
    '--steps', String(OPTS.steps), '--alpha', String(OPTS.alpha), '--seed', String(OPTS.seed),
    '--scheduler', OPTS.scheduler, '--guidance', String(OPTS.guidance), '--decoder', OPTS.decoder,
    '--width', String(OPTS.width), '--height', String(OPTS.height), '--latents-out', out,
    ...(DECODE ? ['--out', path.join(os.tmpdir(), `fc-sd15-native-${q}.png`)] : []),
  ];
  const t0 = Date.now();
  const p = spawnSync(path.join(ROOT, 'target/release/fastcomposer'), cli, { encoding: 'utf8' });
  if (p.status !== 0) throw new Error(`native CLI failed: ${p.stderr}`);
  const log = p.stderr;
  const wallMs = Date.now() - t0;
  const t = JSON.parse(/timings: (\{.*\})/.exec(log)[1]);
  const d = /decode: (\{.*\})/.exec(log);
  return { wallMs, timings: t, decodeS: d ? JSON.parse(d[1]).decode_s : null, tensors: readSafetensors(out) };
}

const srv = await serve({ '/pkg/': 'pkg', '/data/': 'tools/.data', '/fixtures/': 'crate/tests/fixtures' });

async function browser(q, device) {
  const b = await launch('fc-sd15-');
  const page = await b.ctx.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  page.on('crash', () => errors.push('the page crashed'));
  // Progress on stderr (a software-WebGPU run takes a long time): the page's stage marks.
  const t0 = Date.now();
  page.on('console', (m) => {
    if (m.text().startsWith('sd15-bench:')) process.stderr.write(`[${q} ${device} +${Math.round((Date.now() - t0) / 1000)} s] ${m.text()}\n`);
  });
  try {
    await page.goto(`${srv.url}sw.js`); // a same-origin page without the demo's own model load
    const r = await page.evaluate(async ({ q, device, opts, attention, decode }) => {
      const { createGenerator } = await import('/pkg/index.js');
      let adapter = null;
      if (device === 'webgpu') {
        const a = await navigator.gpu.requestAdapter();
        const info = a.info || {};
        adapter = { description: info.description || info.device || '', maxBufferSize: a.limits.maxBufferSize, maxStorageBufferBindingSize: a.limits.maxStorageBufferBindingSize };
      }
      const t0 = performance.now();
      const threads = device === 'cpu-threads' ? 'auto' : 1;
      const gen = await createGenerator({ model: `/data/sd15_${q}.gguf`, device: device === 'webgpu' ? 'webgpu' : 'cpu', threads, attention });
      const t1 = performance.now();
      console.log('sd15-bench: loaded');
      const subject = await gen.encodeSubject(await (await fetch('/fixtures/pipeline/photos/chelsea.png')).blob());
      const t2 = performance.now();
      console.log('sd15-bench: subject encoded');
      const session = await gen.startDenoise({ ...opts, subjects: [subject] });
      const t3 = performance.now();
      console.log('sd15-bench: prompt encoded');
      const stepMs = [];
      for (let i = 0; i < opts.steps; i++) {
        const t = performance.now();
        await session.step();
        stepMs.push(performance.now() - t);
        console.log(`sd15-bench: step ${i + 1} done`);
      }
      const latents = await session.latents();
      let decodeMs = null;
      let image = null;
      if (decode) {
        const t = performance.now();
        const out = await session.decode();
        decodeMs = performance.now() - t;
        image = [out.image.width, out.image.height];
        console.log('sd15-bench: decoded');
      }
      await session.end();
      await gen.dispose();
      return {
        adapter, memory: gen.memory, threads: gen.threads, attention: gen.attention, loadMs: t1 - t0, subjectMs: t2 - t1, promptMs: t3 - t2, stepMs, decodeMs, image,
        subject: Array.from(subject.values), latents: Array.from(latents),
      };
    }, { q, device, opts: OPTS, attention: ATTENTION, decode: DECODE });
    return { ...r, errors };
  } catch (e) {
    return { failed: String(e.message || e).split('\n')[0], errors };
  } finally {
    await b.close();
  }
}

console.log(`# ${machine()}`);
let ok = true;
for (const q of quants) {
  const n = native(q);
  const nativeStepMs = n.timings.step_s.map((s) => Math.round(s * 1000));
  const last = (a) => a[a.length - 1];
  const timed = n.timings.load_s + n.timings.subjects_s + n.timings.prompt_s + n.timings.steps_s;
  // With --decode the CLI also decodes (`--out`) and prints the decode's time; the rest of the
  // wall time (loading the decoder, writing the outputs, starting the process) is one number.
  console.log(JSON.stringify({ bundle: q, device: 'native-cpu', size: SIZE, scheduler: SCHEDULER, guidance: GUIDANCE, decoder: DECODER, wallMs: n.wallMs, loadMs: Math.round(n.timings.load_s * 1000), subjectMs: Math.round(n.timings.subjects_s * 1000), promptMs: Math.round(n.timings.prompt_s * 1000), stepMs: nativeStepMs, ...(DECODE ? { decodeMs: Math.round(n.decodeS * 1000), restMs: Math.round(n.wallMs - timed * 1000 - n.decodeS * 1000) } : {}) }));
  for (const device of devices) {
    const r = await browser(q, device);
    const line = { bundle: q, device, errors: r.errors };
    if (r.failed) {
      Object.assign(line, { failed: r.failed });
      ok = false;
    } else {
      const s = compare(r.subject, n.tensors.subject_0);
      const l = compare(r.latents, n.tensors.latents);
      const pass = s.rel <= TOL[device] && l.rel <= TOL[device] && r.errors.length === 0;
      ok = ok && pass;
      Object.assign(line, {
        adapter: r.adapter, memory: r.memory, threads: r.threads, attention: r.attention, size: SIZE, loadMs: Math.round(r.loadMs), subjectMs: Math.round(r.subjectMs), promptMs: Math.round(r.promptMs), stepMs: r.stepMs.map(Math.round),
        ...(DECODE ? { decodeMs: Math.round(r.decodeMs), image: r.image } : {}),
        lastStepVsNative: +(last(r.stepMs) / last(nativeStepMs)).toFixed(2), subjectVsNative: s, latentsVsNative: l, tolerance: TOL[device], pass,
      });
    }
    console.log(JSON.stringify(line));
  }
}
srv.kill();
process.exit(ok ? 0 : 1);
