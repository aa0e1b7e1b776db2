// Browser benchmark: wasm size, cold start (model load + first image) and per-step time in headless
// Chromium on the CPU (wasm: the single-threaded module, and the threaded one with a thread per
// core) and WebGPU (software adapter here) paths, and the native CLI on the same machine in the
// same run.
//   node tools/bench/browser.mjs [steps=10] [gpuSteps=3]     (needs pkg/ built and target/release/fastcomposer)
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import zlib from 'node:zlib';
import os from 'node:os';
import path from 'node:path';
import { ROOT, serve, launch, machine } from './common.mjs';

const steps = Number(process.argv[2] || 10);
const gpuSteps = Number(process.argv[3] || 3);
const PHOTO = path.join(ROOT, 'crate/tests/fixtures/pipeline/photos/chelsea.png');
const MODEL = path.join(ROOT, 'models/default.gguf');

const srv = await serve({ '/pkg/': 'pkg', '/models/': 'models', '/fixtures/': 'crate/tests/fixtures' });
const size = (f) => {
  const file = path.join(ROOT, f);
  if (!fs.existsSync(file)) return null;
  return { MB: +(fs.statSync(file).size / 1e6).toFixed(2), gzipMB: +(zlib.gzipSync(fs.readFileSync(file), { level: 9 }).length / 1e6).toFixed(2) };
};

async function run(device, n, threads = 1) {
  const b = await launch('fc-bench-');
  const page = await b.ctx.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  await page.goto(`${srv.url}sw.js`); // a same-origin page without the demo's own model load
  const r = await page.evaluate(async ({ device, n, threads }) => {
    const { createGenerator } = await import('/pkg/index.js');
    const t0 = performance.now();
    const gen = await createGenerator({ model: '/models/default.gguf', device, threads });
    const used = gen.threads;
    const tLoad = performance.now();
    const s = await gen.encodeSubject(await (await fetch('/fixtures/pipeline/photos/chelsea.png')).blob());
    const first = await gen.generate({ prompt: 'a cat <|image|> on the beach', subjects: [s], steps: n, seed: 1 });
    const tFirst = performance.now();
    const second = await gen.generate({ prompt: 'a cat <|image|> on the beach', subjects: [s], steps: n, seed: 2 });
    await gen.dispose();
    return { threads: used, loadMs: tLoad - t0, coldStartMs: tFirst - t0, firstPerStepMs: first.timings.perStepMs, warmPerStepMs: second.timings.perStepMs, warmDecodeMs: second.timings.decodeMs };
  }, { device, n, threads });
  await b.close();
  return { device, steps: n, ...r, errors };
}

function native(n) {
  const out = path.join(os.tmpdir(), 'fc-bench-native.png');
  const t0 = Date.now();
  execFileSync(path.join(ROOT, 'target/release/fastcomposer'), ['generate', '--model', MODEL, '--prompt', 'a cat <|image|> on the beach', '--subject', PHOTO, '--steps', String(n), '--seed', '1', '--out', out], { stdio: 'pipe' });
  return Date.now() - t0;
}

console.log(`# ${machine()}`);
console.log(JSON.stringify({ wasm: size('pkg/fastcomposer_bg.wasm'), threadedWasm: size('pkg/threads/fastcomposer_bg.wasm') }));
const n1 = native(1);
const nN = native(steps + 1);
console.log(JSON.stringify({ device: 'native-cpu', steps, totalMs1Step: n1, perStepMs: (nN - n1) / steps }));
console.log(JSON.stringify(await run('cpu', steps)));
console.log(JSON.stringify(await run('cpu', steps, 'auto')));
console.log(JSON.stringify(await run('webgpu', gpuSteps)));
srv.kill();
