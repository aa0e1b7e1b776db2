// Where the page's CPU path loses time against native (issue 7): `fastcomposer bench-ops` — the
// SD1.5 UNet's layer kinds one at a time, batch 2, 64×64 latent — on one thread natively
// (RAYON_NUM_THREADS=1) and in headless Chromium through the single-threaded wasm module's
// `benchOps` export (the same code compiled to wasm SIMD, on the page's main thread), in the same
// run; prints one JSON line per operation with both times and their ratio.
//   node tools/bench/ops_browser.mjs [--weights f32|int8|int4] [--only <substring>] [--iters 2]
// Needs pkg/ built with the benchmark hook (FASTCOMPOSER_WASM_FEATURES=bench FASTCOMPOSER_WASM_THREADS=0
// pkg-scripts/build-wasm.sh; the npm package's module has none) and target/release/fastcomposer.
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { ROOT, serve, launch, machine } from './common.mjs';

const args = process.argv.slice(2);
const opt = (name, dflt) => { const i = args.indexOf(name); return i >= 0 ? args.splice(i, 2)[1] : dflt; };
const WEIGHTS = opt('--weights', 'f32');
const ONLY = opt('--only', null);
const ITERS = Number(opt('--iters', '2'));

const cli = ['bench-ops', '--device', 'cpu', '--iters', String(ITERS), '--weights', WEIGHTS, ...(ONLY ? ['--only', ONLY] : [])];
const nativeOut = execFileSync(path.join(ROOT, 'target/release/fastcomposer'), cli, { env: { ...process.env, RAYON_NUM_THREADS: '1' }, encoding: 'utf8' });
const native = new Map(nativeOut.trim().split('\n').filter((l) => l.startsWith('{')).map((l) => { const v = JSON.parse(l); return [v.op, v]; }));

const srv = await serve({ '/pkg/': 'pkg' });
const browser = await launch('fc-ops-');
let ok = true;
try {
  const page = await browser.ctx.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  await page.goto(`${srv.url}sw.js`);
  const web = await page.evaluate(async ({ weights, only, iters }) => {
    const m = await import('/pkg/fastcomposer.js');
    await m.default();
    if (typeof m.benchOps !== 'function') {
      throw new Error('pkg/ has no benchOps: build it with FASTCOMPOSER_WASM_FEATURES=bench pkg-scripts/build-wasm.sh');
    }
    return JSON.parse(m.benchOps(weights, only, iters));
  }, { weights: WEIGHTS, only: ONLY, iters: ITERS });
  console.log(`# ${machine()}; weights ${WEIGHTS}, ${ITERS} iters, one thread each`);
  for (const w of web) {
    const n = native.get(w.op);
    console.log(JSON.stringify({ op: w.op, nativeMs: n ? +n.ms.toFixed(1) : null, pageMs: +w.ms.toFixed(1), ratio: n ? +(w.ms / n.ms).toFixed(2) : null, gflop: +w.gflop.toFixed(2) }));
  }
  if (errors.length) { ok = false; console.log(JSON.stringify({ errors })); }
} finally {
  await browser.close();
  srv.kill();
}
process.exit(ok ? 0 : 1);
