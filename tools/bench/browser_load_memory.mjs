// Peak memory of loading a model in the browser (issue 7): headless Chromium loads a bundle
// through the npm package's API — from its URL (downloaded from a local server, then cached)
// and from a File (a file input) — on the CPU device, and this prints the page's renderer
// process peak resident memory (VmHWM: the page, its worker and the wasm module's memory) once
// the model is ready. A fresh browser profile per run, so the URL run downloads.
//   node tools/bench/browser_load_memory.mjs [int4|int8|default ...] [--sources url,file]
// Needs pkg/ (pkg-scripts/build-wasm.sh); int4 / int8 are the SD1.5-size bundles of
// tools/bench/sd15_sizes.sh, `default` the embedded default model. Linux only (/proc).
import fs from 'node:fs';
import path from 'node:path';
import { ROOT, serve, launch, machine } from './common.mjs';

const args = process.argv.slice(2);
const srcIdx = args.indexOf('--sources');
const sources = srcIdx >= 0 ? args.splice(srcIdx, 2)[1].split(',') : ['url', 'file'];
const bundles = args.length ? args : ['int8'];
const fileOf = (b) => (b === 'default' ? path.join(ROOT, 'models/default.gguf') : path.join(ROOT, `tools/.data/sd15_${b}.gguf`));

const srv = await serve({ '/pkg/': 'pkg', '/data/': 'tools/.data', '/models/': 'models' });

// Peak resident memory (MiB) of each renderer process of the browser using profile `dir` (the
// browser process has `dir` on its command line; its renderers are its descendants).
function rendererPeaks(dir) {
  const procs = new Map();
  for (const pid of fs.readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
    try {
      const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      procs.set(Number(pid), { ppid, cmd: fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8') });
    } catch { /* the process ended */ }
  }
  const ours = new Set([...procs].filter(([, p]) => p.cmd.includes(dir) && !p.cmd.includes('--type=')).map(([pid]) => pid));
  const inTree = (pid) => { for (let p = pid; p > 1; p = procs.get(p)?.ppid ?? 0) if (ours.has(p)) return true; return false; };
  const out = [];
  for (const [pid, p] of procs) {
    if (!p.cmd.includes('--type=renderer') || !inTree(pid)) continue;
    try {
      const hwm = /VmHWM:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
      if (hwm) out.push(Math.round(Number(hwm[1]) / 1024));
    } catch { /* the process ended */ }
  }
  return out;
}

async function run(bundle, source) {
  const browser = await launch('fc-loadmem-');
  const dir = browser.dir;
  const page = await browser.ctx.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  page.on('crash', () => errors.push('the page crashed'));
  try {
    await page.goto(`${srv.url}sw.js`); // a same-origin page without the demo's own model load
    await page.evaluate(() => { const i = document.createElement('input'); i.type = 'file'; i.id = 'f'; document.body.append(i); });
    if (source === 'file') await page.setInputFiles('#f', fileOf(bundle));
    const before = Math.max(0, ...rendererPeaks(dir));
    const model = bundle === 'default' ? '/models/default.gguf' : `/data/sd15_${bundle}.gguf`;
    const r = await page.evaluate(async ({ model, source }) => {
      const { createGenerator } = await import('/pkg/index.js');
      const t0 = performance.now();
      const gen = await createGenerator({ model: source === 'file' ? document.getElementById('f').files[0] : model, device: 'cpu', threads: 1 });
      const loadMs = performance.now() - t0;
      const out = { loadMs: Math.round(loadMs), memory: gen.memory, source: gen.source };
      window.gen = gen;
      return out;
    }, { model, source });
    const peaks = rendererPeaks(dir);
    await page.evaluate(() => window.gen.dispose());
    return { bundle, from: source, bytes: fs.statSync(fileOf(bundle)).size, ...r, rendererPeakMiB: Math.max(...peaks), rendererPeakBeforeLoadMiB: before, errors };
  } catch (e) {
    return { bundle, from: source, failed: String(e.message || e).split('\n')[0], errors };
  } finally {
    await browser.close();
  }
}

console.log(`# ${machine()}`);
let ok = true;
for (const b of bundles) {
  for (const s of sources) {
    const r = await run(b, s);
    ok = ok && !r.failed && r.errors.length === 0;
    console.log(JSON.stringify(r));
  }
}
srv.kill();
process.exit(ok ? 0 : 1);
