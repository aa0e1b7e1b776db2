// Time to an image with the default model, model load excluded (issue 25): the 25-step DDIM
// model (guidance 5, two UNet batches a step) against its 4-step distilled one (LCM scheduler,
// guidance 1: one batch a step), each with its full VAE decoder, natively (the CLI's timings) and
// in headless Chromium (CPU: 1 thread and a thread per core; WebGPU on the software adapter).
// One subject photo; the time runs from the photo (encoded) to the decoded image; the median of
// `runs` images after one warm-up image (software WebGPU: one image after the warm-up).
//   node tools/bench/time_to_image.mjs [runs=5]     (needs pkg/ built and target/release/fastcomposer)
import { spawnSync } from 'node:child_process';
import os from 'node:os';
import path from 'node:path';
import { ROOT, serve, launch, machine } from './common.mjs';

const runs = Number(process.argv[2] || 5);
const PHOTO = path.join(ROOT, 'crate/tests/fixtures/pipeline/photos/chelsea.png');
const PROMPT = 'a cat <|image|> on the beach';
const MODELS = [
  { label: '25-step DDIM, full decoder', file: 'default.gguf', scheduler: 'ddim', steps: 25, guidance: 5 },
  { label: '4-step LCM (distilled), full decoder', file: 'default-lcm.gguf', scheduler: 'lcm', steps: 4, guidance: 1 },
];
const median = (v) => [...v].sort((a, b) => a - b)[Math.floor(v.length / 2)];

function native(m) {
  const times = [];
  const out = path.join(os.tmpdir(), 'fc-tti.png');
  for (let i = 0; i <= runs; i++) {
    const r = spawnSync(path.join(ROOT, 'target/release/fastcomposer'), ['generate', '--model', path.join(ROOT, 'models', m.file),
      '--prompt', PROMPT, '--subject', PHOTO, '--scheduler', m.scheduler, '--steps', String(m.steps), '--guidance', String(m.guidance),
      '--seed', String(i), '--out', out], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`fastcomposer generate failed: ${r.stderr}`);
    const err = r.stderr;
    const t = JSON.parse(err.match(/timings: (\{.*\})/)[1]);
    const d = JSON.parse(err.match(/decode: (\{.*\})/)[1]);
    const stepMs = (t.steps_s * 1e3) / t.steps;
    if (i > 0) times.push({ ms: (t.subjects_s + t.prompt_s + t.steps_s + d.decode_s) * 1e3, stepMs, decodeMs: d.decode_s * 1e3 });
  }
  return summary(times);
}

function summary(times) {
  return { ms: Math.round(median(times.map((t) => t.ms))), perStepMs: +median(times.map((t) => t.stepMs)).toFixed(1), decodeMs: +median(times.map((t) => t.decodeMs)).toFixed(1) };
}

async function page(device, threads, m, runs) {
  const b = await launch('fc-bench-');
  const p = await b.ctx.newPage();
  const errors = [];
  p.on('pageerror', (e) => errors.push(e.message));
  await p.goto(`${srv.url}sw.js`); // a same-origin page without the demo's own model load
  const r = await p.evaluate(async ({ device, threads, m, runs, prompt }) => {
    const { createGenerator } = await import('/pkg/index.js');
    const gen = await createGenerator({ model: `/models/${m.file}`, device, threads });
    const photo = await (await fetch('/fixtures/pipeline/photos/chelsea.png')).blob();
    const times = [];
    for (let i = 0; i <= runs; i++) {
      const t0 = performance.now();
      const s = await gen.encodeSubject(photo);
      const img = await gen.generate({ prompt, subjects: [s], scheduler: m.scheduler, steps: m.steps, guidance: m.guidance, seed: i });
      const ms = performance.now() - t0;
      if (i > 0) times.push({ ms, stepMs: img.timings.perStepMs, decodeMs: img.timings.decodeMs });
    }
    const used = { threads: gen.threads, device: gen.device };
    await gen.dispose();
    return { used, times };
  }, { device, threads, m, runs, prompt: PROMPT });
  await b.close();
  return { ...r.used, ...summary(r.times), errors };
}

const srv = await serve({ '/pkg/': 'pkg', '/models/': 'models', '/fixtures/': 'crate/tests/fixtures' });
console.log(`# ${machine()}; median of ${runs} images after one warm-up`);
for (const m of MODELS) {
  console.log(JSON.stringify({ model: m.label, where: 'native CPU', ...native(m) }));
  console.log(JSON.stringify({ model: m.label, where: 'page CPU, 1 thread', ...(await page('cpu', 1, m, runs)) }));
  console.log(JSON.stringify({ model: m.label, where: 'page CPU, a thread per core', ...(await page('cpu', 'auto', m, runs)) }));
  // Software WebGPU is slow (seconds a step): one image after the warm-up.
  console.log(JSON.stringify({ model: m.label, where: 'page WebGPU (software adapter), 1 image', ...(await page('webgpu', 1, m, 1)) }));
}
srv.kill();
