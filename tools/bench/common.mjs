// What the browser benchmarks share: the repository root, the test server over web/, a headless
// Debian Chromium on a fresh profile, and the machine line each log starts with.
import { chromium } from '../../tests/browser/node_modules/playwright-core/index.mjs';
import { spawn, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const CHROMIUM = '/usr/bin/chromium';
const FLAGS = ['--headless', '--no-sandbox', '--disable-quic', '--no-first-run', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--enable-unsafe-webgpu'];

// pkg-scripts/serve.mjs over web/ (cross-origin isolated) on a free port, with `maps`
// ({ '/pkg/': 'pkg', ... }: URL prefix -> folder under ROOT). Returns { url, kill }.
export async function serve(maps) {
  const args = [path.join(ROOT, 'pkg-scripts/serve.mjs'), '--root', path.join(ROOT, 'web'), '--port', '0'];
  for (const [prefix, dir] of Object.entries(maps)) args.push('--map', `${prefix}=${path.join(ROOT, dir)}`);
  const p = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'inherit'] });
  const url = await new Promise((resolve, reject) => {
    p.stdout.on('data', (d) => { const m = /http:\/\/127\.0\.0\.1:\d+\//.exec(String(d)); if (m) resolve(m[0]); });
    p.on('exit', (c) => reject(new Error(`the server exited (${c})`)));
  });
  return { url, kill: () => p.kill() };
}

// Headless Chromium on a fresh profile: { ctx, dir, close } (close also deletes the profile).
export async function launch(prefix = 'fc-bench-') {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  const ctx = await chromium.launchPersistentContext(dir, { executablePath: CHROMIUM, headless: true, args: FLAGS });
  return { ctx, dir, close: async () => { await ctx.close(); fs.rmSync(dir, { recursive: true, force: true }); } };
}

// `<date>Z <n> cores, <cpu>, <GiB> GiB; <Chromium version>`.
export function machine() {
  const version = execFileSync(CHROMIUM, ['--version']).toString().trim().split('\n').pop();
  return `${new Date().toISOString().slice(0, 16)}Z ${os.cpus().length} cores, ${os.cpus()[0].model}, ${Math.round(os.totalmem() / 2 ** 30)} GiB; ${version}`;
}
