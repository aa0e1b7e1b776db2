// The npm package as a user gets it: `npm pack` output installed into a fresh folder, imported
// from a test page in Chromium, and its TypeScript declarations type-checking an example.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { ROOT, serve, launch } from './harness.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));

function packAndInstall() {
  const dist = fs.mkdtempSync(path.join(os.tmpdir(), 'fc-pack-'));
  const out = execFileSync('npm', ['pack', '--pack-destination', dist, '--json'], { cwd: path.join(ROOT, 'pkg') });
  const file = path.join(dist, JSON.parse(String(out))[0].filename);
  const app = fs.mkdtempSync(path.join(os.tmpdir(), 'fc-app-'));
  fs.writeFileSync(path.join(app, 'package.json'), JSON.stringify({ name: 'app', private: true, type: 'module' }));
  execFileSync('npm', ['install', '--no-audit', '--no-fund', '--offline', file], { cwd: app, stdio: 'pipe' });
  return app;
}

test('npm pack installs into a fresh folder and works from a page', async () => {
  const app = packAndInstall();
  const pkgDir = path.join(app, 'node_modules', 'fastcomposer-web');
  for (const f of ['index.js', 'index.d.ts', 'protocol.js', 'device.js', 'worker.js', 'fastcomposer.js', 'fastcomposer_bg.wasm', 'package.json',
    'threads/fastcomposer.js', 'threads/fastcomposer_bg.wasm']) {
    assert.ok(fs.existsSync(path.join(pkgDir, f)), `the package lacks ${f}`);
  }
  fs.copyFileSync(path.join(ROOT, 'models', 'default.gguf'), path.join(app, 'model.gguf'));
  fs.copyFileSync(path.join(ROOT, 'crate', 'tests', 'fixtures', 'pipeline', 'photos', 'astronaut.png'), path.join(app, 'photo.png'));
  fs.writeFileSync(path.join(app, 'index.html'), `<!doctype html><script type="module">
    import { createGenerator, detect } from './node_modules/fastcomposer-web/index.js';
    window.result = (async () => {
      const caps = await detect();
      const photo = await (await fetch('photo.png')).blob();
      // The same image from the threaded module (2 threads; the page is cross-origin isolated)
      // and from the single-threaded one.
      const run = async (threads) => {
        const gen = await createGenerator({ model: 'model.gguf', device: 'cpu', threads });
        const s = await gen.encodeSubject(photo);
        const r = await gen.generate({ prompt: 'a woman <|image|> on the beach', subjects: [s], steps: 2, seed: 3 });
        const out = { threads: gen.threads, model: gen.model, r };
        await gen.dispose();
        return out;
      };
      const two = await run(2);
      const one = await run(1);
      let maxDiff = 0;
      const [a, b] = [two.r.image.data, one.r.image.data];
      for (let i = 0; i < a.length; i++) maxDiff = Math.max(maxDiff, Math.abs(a[i] - b[i]));
      return {
        caps, width: one.r.image.width, png: one.r.blob && one.r.blob.type, model: one.model,
        threads: [two.threads, one.threads], maxDiff, isolated: crossOriginIsolated,
      };
    })();
  </script>`);
  const server = await serve({}, { root: app });
  const browser = await launch('fc-npm-');
  try {
    const page = await browser.ctx.newPage();
    const problems = [];
    page.on('pageerror', (e) => problems.push(e.message));
    await page.goto(server.url);
    const r = await page.evaluate(() => window.result);
    assert.equal(typeof r.caps.webgpu, 'boolean');
    assert.ok(r.width > 0);
    assert.equal(r.png, 'image/png');
    assert.ok(r.model.name.length > 0 && r.model.license.length > 0, JSON.stringify(r.model));
    assert.equal(r.isolated, true, 'the test server sends COOP/COEP');
    assert.deepEqual(r.threads, [2, 1], 'threads: 2 runs the threaded module, 1 the single-threaded one');
    // Same kernels, the work split over threads: the images agree to a level.
    assert.ok(r.maxDiff <= 1, `threaded vs single-threaded image: max difference ${r.maxDiff} levels`);
    assert.deepEqual(problems, []);
  } finally {
    await browser.close();
    server.kill();
  }
});

// index.d.ts lists the error names and load-progress statuses the protocol module uses.
test('the declarations name the protocol module\'s errors and progress statuses', async () => {
  const protocol = await import(path.join(ROOT, 'web', 'pkg-src', 'protocol.js'));
  const dts = fs.readFileSync(path.join(ROOT, 'web', 'pkg-src', 'index.d.ts'), 'utf8');
  const union = /export type ErrorName = ([^;]+);/.exec(dts)[1];
  assert.deepEqual([...union.matchAll(/'([^']+)'/g)].map((m) => m[1]), [...protocol.ERROR_NAMES]);
  const progress = /export type LoadProgress =((?:\n  \|[^\n]*)+)/.exec(dts)[1];
  assert.deepEqual([...progress.matchAll(/status: '([^']+)'/g)].map((m) => m[1]), [...protocol.LOAD_PROGRESS]);
  // Every name the worker can reply with is one of them.
  const worker = fs.readFileSync(path.join(ROOT, 'web', 'pkg-src', 'worker.js'), 'utf8');
  for (const [, name] of worker.matchAll(/apiError\('(\w+)'/g)) assert.ok(protocol.ERROR_NAMES.includes(name), name);
});

test('the TypeScript declarations type-check an example', () => {
  const app = packAndInstall();
  fs.writeFileSync(path.join(app, 'example.ts'), `
import { createGenerator, detect, purgeCache, ERROR_NAMES, type ErrorName, type GenerateResult, type Capabilities } from 'fastcomposer-web';

async function main(photo: Blob): Promise<GenerateResult> {
  const caps: Capabilities = await detect();
  const gen = await createGenerator({ model: '/model.gguf', device: caps.webgpu ? 'webgpu' : 'cpu', onProgress: (p) => {
    if (p.status === 'download') console.log(p.loaded / p.total);
  } });
  const cat = await gen.encodeSubject(photo);
  const ac = new AbortController();
  const r = await gen.generate({ prompt: 'a cat <|image|>', subjects: [cat], steps: 20, guidance: 5, alpha: 0.7, seed: 1, scheduler: 'ddim' },
    { signal: ac.signal, onStep: ({ step, steps, preview }) => console.log(step, steps, preview?.width) });
  const s = await gen.startDenoise({ prompt: 'a cat <|image|>', subjects: [cat] });
  while (s.done < s.total) await s.step();
  const out = await s.decode();
  console.log(out.image.width, r.timings.perStepMs, gen.model.name, gen.model.license, gen.source);
  await gen.dispose();
  await purgeCache();
  const busy: ErrorName = 'Busy';
  console.log(ERROR_NAMES.includes(busy));
  const mine = await createGenerator({ model: new File([], 'mine.gguf'), onProgress: (p) => {
    if (p.status === 'read') console.log(p.file, p.loaded / p.total);
  } });
  await mine.dispose();
  return r;
}
main(new Blob());
`);
  fs.writeFileSync(path.join(app, 'tsconfig.json'), JSON.stringify({
    compilerOptions: { strict: true, noEmit: true, target: 'ES2022', module: 'ES2022', moduleResolution: 'bundler', lib: ['ES2022', 'DOM'] },
    files: ['example.ts'],
  }));
  const tsc = path.join(HERE, 'node_modules', 'typescript', 'bin', 'tsc');
  execFileSync(process.execPath, [tsc, '-p', app], { stdio: 'inherit' });
});
