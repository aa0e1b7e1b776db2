// What the browser tests and the browser benchmarks (tools/bench/*.mjs) share: the repository
// root, the test server (pkg-scripts/serve.mjs: static files, cross-origin isolated), a headless
// Debian Chromium on a fresh profile, and the machine line each benchmark log starts with.
import { chromium } from 'playwright-core';
import { spawn, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
// As a visitor's browser runs here: headless, no background traffic (this machine's network is
// closed), and WebGPU on (Chromium's software adapter where there is no GPU).
const FLAGS = ['--headless', '--no-sandbox', '--disable-quic', '--no-first-run', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--enable-unsafe-webgpu'];

// pkg-scripts/serve.mjs over `root` (a folder under ROOT, or absolute; default web/) with `maps`
// ({ '/pkg/': 'pkg', ... }: URL prefix -> folder, relative to ROOT or absolute), on `port`
// (0: a free one). Returns { url, port, kill }.
export async function serve(maps = {}, { root = 'web', port = 0 } = {}) {
  const args = [path.join(ROOT, 'pkg-scripts/serve.mjs'), '--root', path.resolve(ROOT, root), '--port', String(port)];
  for (const [prefix, dir] of Object.entries(maps)) args.push('--map', `${prefix}=${path.resolve(ROOT, dir)}`);
  const p = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'inherit'] });
  const url = await new Promise((resolve, reject) => {
    p.stdout.on('data', (d) => { const m = /http:\/\/127\.0\.0\.1:\d+\//.exec(String(d)); if (m) resolve(m[0]); });
    p.on('exit', (c) => reject(new Error(`the server exited (${c})`)));
  });
  return { url, port: Number(new URL(url).port), kill: () => p.kill() };
}

// Headless Chromium on a fresh profile: { ctx, dir, close } (close also deletes the profile).
// `options` go to playwright's launchPersistentContext (e.g. { serviceWorkers: 'block' }).
export async function launch(prefix = 'fc-chromium-', options = {}) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  const ctx = await chromium.launchPersistentContext(dir, { executablePath: CHROMIUM, headless: true, args: FLAGS, ...options });
  return { ctx, dir, close: async () => { await ctx.close(); fs.rmSync(dir, { recursive: true, force: true }); } };
}

// `<date>Z <n> cores, <cpu>, <GiB> GiB; <Chromium version>`.
export function machine() {
  const version = execFileSync(CHROMIUM, ['--version']).toString().trim().split('\n').pop();
  return `${new Date().toISOString().slice(0, 16)}Z ${os.cpus().length} cores, ${os.cpus()[0].model}, ${Math.round(os.totalmem() / 2 ** 30)} GiB; ${version}`;
}
