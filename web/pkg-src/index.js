// fastcomposer-web: subject-driven image generation in the browser.
// The model lives in a Web Worker (worker.js); this module is the page-side API.

import { OP, CACHE_NAME, ERROR_NAMES, LOAD_PROGRESS, apiError, fromWire } from './protocol.js';
import { classifyAdapter } from './device.js';

export { ERROR_NAMES, LOAD_PROGRESS };

const WORKER_URL = new URL('./worker.js', import.meta.url);

/** What this browser offers. */
export async function detect() {
  const out = { webgpu: false, shaderF16: false, adapterInfo: null, wasmSimd: false, threads: false };
  try {
    if (typeof navigator !== 'undefined' && navigator.gpu) {
      const adapter = await navigator.gpu.requestAdapter();
      if (adapter) {
        out.webgpu = true;
        out.shaderF16 = adapter.features.has('shader-f16');
        const info = adapter.info || {};
        out.adapterInfo = {
          vendor: info.vendor || '', architecture: info.architecture || '', device: info.device || '',
          description: info.description || '', isFallbackAdapter: !!(info.isFallbackAdapter || adapter.isFallbackAdapter),
          software: classifyAdapter(adapter).software,
        };
      }
    }
  } catch { /* no WebGPU */ }
  try {
    // (module (func (result v128) (v128.const i32x4 0 0 0 0)))
    out.wasmSimd = WebAssembly.validate(new Uint8Array([0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 123, 3, 2, 1, 0, 10, 22, 1, 20, 0, 253, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 11]));
  } catch { /* old engine */ }
  out.threads = typeof SharedArrayBuffer !== 'undefined' && (typeof crossOriginIsolated === 'undefined' || crossOriginIsolated);
  return out;
}

/** Delete every cached model. */
export async function purgeCache() {
  try {
    if (typeof caches !== 'undefined') await caches.delete(CACHE_NAME);
  } catch { /* private mode */ }
}

class WorkerClient {
  constructor() {
    this.worker = new Worker(WORKER_URL, { type: 'module' });
    this.next = 1;
    this.pending = new Map();
    this.dead = null;
    this.worker.onmessage = (ev) => {
      const { id, ok, value, error, progress } = ev.data || {};
      const p = this.pending.get(id);
      if (!p) return;
      if (progress) { if (p.onProgress) p.onProgress(progress); return; }
      this.pending.delete(id);
      if (ok) p.resolve(value); else p.reject(fromWire(error));
    };
    // A wasm trap or any uncaught error kills this worker's state: fail everything pending.
    this.worker.onerror = (ev) => {
      ev.preventDefault();
      this.dead = apiError('DeviceError', `the worker failed: ${ev.message || 'unknown error'}`);
      for (const p of this.pending.values()) p.reject(this.dead);
      this.pending.clear();
    };
  }

  call(op, args = {}, onProgress, transfer = []) {
    if (this.dead) return Promise.reject(this.dead);
    const id = this.next++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject, onProgress });
      this.worker.postMessage({ id, op, ...args }, transfer);
    });
  }

  post(msg) { this.worker.postMessage(msg); }

  terminate() { this.worker.terminate(); }
}

async function toRgba(image) {
  if (typeof ImageData !== 'undefined' && image instanceof ImageData) {
    return { rgba: new Uint8Array(image.data.buffer.slice(0)), width: image.width, height: image.height };
  }
  let bitmap = image;
  if (typeof Blob !== 'undefined' && image instanceof Blob) {
    try {
      bitmap = await createImageBitmap(image);
    } catch {
      throw apiError('InvalidInput', 'the file is not an image the browser can decode');
    }
  }
  if (typeof ImageBitmap === 'undefined' || !(bitmap instanceof ImageBitmap)) {
    throw apiError('InvalidInput', 'expected an ImageBitmap, ImageData or Blob');
  }
  if (!bitmap.width || !bitmap.height) throw apiError('InvalidInput', 'the image is empty');
  const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
  const ctx = canvas.getContext('2d');
  ctx.drawImage(bitmap, 0, 0);
  const d = ctx.getImageData(0, 0, bitmap.width, bitmap.height);
  return { rgba: new Uint8Array(d.data.buffer), width: d.width, height: d.height };
}

async function toImage({ width, height, rgba }) {
  const imageData = new ImageData(new Uint8ClampedArray(rgba.buffer, rgba.byteOffset, rgba.byteLength), width, height);
  let blob = null;
  if (typeof OffscreenCanvas !== 'undefined') {
    const canvas = new OffscreenCanvas(width, height);
    canvas.getContext('2d').putImageData(imageData, 0, 0);
    blob = await canvas.convertToBlob({ type: 'image/png' });
  }
  return { imageData, blob };
}

/** A subject photo, encoded once and reusable across generations. */
export class Subject {
  constructor(values, reference) {
    this.values = values;
    // The photo's latents and mask for self-subject attention (models with a VAE encoder).
    if (reference) this.reference = reference;
  }
}

// The subjects for the worker; anything but `Subject`s is refused here.
function subjectValues(subjects) {
  if (!Array.isArray(subjects)) throw apiError('InvalidInput', 'subjects must be an array of Subjects from encodeSubject');
  return subjects.map((s, i) => {
    if (!(s instanceof Subject)) throw apiError('InvalidInput', `subject ${i + 1} is not a Subject from encodeSubject`);
    return { values: s.values, reference: s.reference };
  });
}

/** A denoising session for custom loops. */
class DenoiseSession {
  constructor(gen, id, total, warnings) {
    this.gen = gen; this.id = id; this.total = total; this.done = 0; this.warnings = warnings;
  }
  async step() {
    const r = await this.gen._call(OP.step, { session: this.id });
    this.done = r.done;
    return r;
  }
  async latents() { return (await this.gen._call(OP.latents, { session: this.id })).latents; }
  async decode() {
    const img = await this.gen._call(OP.decode, { session: this.id });
    const { imageData, blob } = await toImage(img);
    return { image: imageData, blob };
  }
  async end() { await this.gen._call(OP.endSession, { session: this.id }); }
}

/**
 * The generator. Calls are queued: a second `generate` waits for the first (documented
 * behaviour); an aborted call rejects with an Error named "Cancelled".
 */
class Generator {
  constructor(opts) {
    this._opts = opts;
    this._queue = Promise.resolve();
    this._runs = 0;
  }

  async _start() {
    const { model, device, memory, precision, attention, loras, onProgress, wasmUrl, threads } = this._opts;
    this._client = new WorkerClient();
    const started = await this._client.call(OP.init, { wasmUrl: wasmUrl ? String(wasmUrl) : null, threads, device });
    this.threads = started.threads;
    const info = await this._client.call(OP.load, { model, device, memory, precision, attention, loras }, onProgress);
    this.device = info.device;
    this.deviceReason = info.deviceReason;
    this.precision = info.precision;
    this.attention = info.attention;
    this.memory = info.memory;
    this.imageSize = info.imageSize;
    this.sizeStep = info.sizeStep;
    this.marker = info.marker;
    this.defaults = info.defaults;
    this.hasTinyDecoder = info.hasTinyDecoder;
    this.source = info.source;
    this.model = info.model;
  }

  // Run `op` after earlier calls; after a device loss or a worker failure, restart the worker
  // and reload the model (from the cache: no download) first.
  _call(op, args, onProgress) {
    const run = async () => {
      if (this._disposed) throw apiError('InvalidInput', 'the generator was disposed');
      if (this._client.dead || this._lost) {
        this._client.terminate();
        this._lost = false;
        await this._start();
      }
      try {
        return await this._client.call(op, args, onProgress);
      } catch (e) {
        if (e.name === 'DeviceError') this._lost = true;
        throw e;
      }
    };
    const p = this._queue.then(run, run);
    this._queue = p.catch(() => {});
    return p;
  }

  /** Encode a subject photo (ImageBitmap, ImageData or Blob), optionally with a mask image. */
  async encodeSubject(image, { mask } = {}) {
    const px = await toRgba(image);
    let maskBytes;
    if (mask) {
      const m = await toRgba(mask);
      if (m.width !== px.width || m.height !== px.height) {
        throw apiError('InvalidInput', `the mask is ${m.width}x${m.height} but the photo is ${px.width}x${px.height}`);
      }
      maskBytes = new Uint8Array(m.width * m.height);
      for (let i = 0; i < maskBytes.length; i++) maskBytes[i] = m.rgba[i * 4];
    }
    const r = await this._call(OP.encodeSubject, { rgba: px.rgba, width: px.width, height: px.height, mask: maskBytes });
    return new Subject(r.values, r.reference);
  }

  /**
   * Generate an image. `subjects` are `Subject`s from `encodeSubject`, in marker order.
   * Returns `{ image: ImageData, blob: Blob (PNG), timings, warnings }`.
   */
  async generate({ subjects = [], ...options } = {}, { onStep, signal, previewEvery } = {}) {
    if (signal && signal.aborted) throw apiError('Cancelled', 'the generation was cancelled');
    const runId = ++this._runs;
    const onAbort = () => this._client && this._client.post({ op: OP.cancel, runId });
    if (signal) signal.addEventListener('abort', onAbort, { once: true });
    try {
      const values = subjectValues(subjects);
      const r = await this._call(OP.generate, { options, subjects: values, previewEvery: previewEvery || 0, runId }, (p) => {
        if (p.status !== 'step' || !onStep) return;
        const ev = { step: p.step, steps: p.steps, stepMs: p.stepMs };
        if (p.preview) ev.preview = new ImageData(new Uint8ClampedArray(p.preview.rgba), p.preview.width, p.preview.height);
        onStep(ev);
      });
      const { imageData, blob } = await toImage(r.image);
      return { image: imageData, blob, timings: r.timings, warnings: r.warnings };
    } finally {
      if (signal) signal.removeEventListener('abort', onAbort);
    }
  }

  /** Step-level API: a session with `step()`, `latents()`, `decode()`, `end()`. */
  async startDenoise({ subjects = [], ...options } = {}) {
    const values = subjectValues(subjects);
    const r = await this._call(OP.startDenoise, { options, subjects: values });
    return new DenoiseSession(this, r.session, r.total, r.warnings);
  }

  /** Free the model and stop the worker. */
  async dispose() {
    if (this._disposed) return;
    try { await this._call(OP.dispose, {}); } catch { /* already gone */ }
    this._disposed = true;
    this._client.terminate();
  }
}

/**
 * Load a model: `model` is a URL (streamed with byte progress, verified chunk by chunk, cached
 * for offline use), a File or Blob (a bundle on the user's disk, e.g. from a file input: read
 * as a stream with progress and verified the same way, not cached) or an ArrayBuffer. `device`: 'auto' (WebGPU on
 * a GPU adapter; the CPU where there is none or only a software one, whose kernels are slower than
 * the CPU path's; `generator.deviceReason` says why),
 * 'webgpu' or 'cpu'. `memory`: 'auto' (default), 'resident' (every component stays loaded) or
 * 'sequential' (each component is loaded when its stage starts and the previous one freed: for
 * models larger than the device's memory; auto picks it for bundles over 512 MiB).
 * `precision`: 'auto' (default: f16 where the WebGPU adapter has `shader-f16`, else f32), 'f32'
 * or 'f16' (WebGPU with `shader-f16` only; `generator.precision` says which is in use).
 * `attention`: 'sliced' (default: scores in slices of at most 128 MiB) or 'fused' (on WebGPU with
 * subgroups, CubeCL's flash-attention kernel: no scores buffer; elsewhere the sliced kernel
 * stands in; `generator.attention` says which runs).
 * `threads`: 'auto' (default: up to 8, the number of cores) or a number — CPU threads for the
 * CPU device; more than one needs a cross-origin isolated page (COOP/COEP headers) and uses the
 * package's threaded module, one runs the single-threaded module (`generator.threads` says which).
 * `onProgress` receives `{status:'download', file, loaded, total}` (a URL) or
 * `{status:'read', file, loaded, total}` (a File or Blob), `{status:'loading', device}`,
 * `{status:'ready', device}`.
 */
export async function createGenerator({ model, device = 'auto', memory = 'auto', precision = 'auto', attention = 'sliced', threads = 'auto', loras = [], onProgress, wasmUrl } = {}) {
  const isBlob = typeof Blob !== 'undefined' && model instanceof Blob;
  const isBytes = model instanceof ArrayBuffer || ArrayBuffer.isView(model);
  if (!(typeof model === 'string' || model instanceof URL || isBlob || isBytes) || model === '') {
    const got = model === null || model === undefined || model === '' ? 'none' : Object.prototype.toString.call(model);
    throw apiError('InvalidInput', `createGenerator needs a model: a URL, a File or Blob, or an ArrayBuffer (got ${got})`);
  }
  if (threads !== 'auto' && !(Number.isInteger(threads) && threads >= 1 && threads <= 64)) {
    throw apiError('InvalidInput', `threads must be 'auto' or an integer from 1 to 64 (got ${String(threads)})`);
  }
  if (!Array.isArray(loras)) throw apiError('InvalidInput', `loras must be an array of { model, scale } (got ${Object.prototype.toString.call(loras)})`);
  const here = globalThis.location && globalThis.location.href;
  loras = loras.map((l, i) => {
    const m = l && l.model;
    const ok = typeof m === 'string' ? m !== '' : m instanceof URL || (typeof Blob !== 'undefined' && m instanceof Blob) || m instanceof ArrayBuffer || ArrayBuffer.isView(m);
    if (!ok) throw apiError('InvalidInput', `loras[${i}].model must be a URL, a File or Blob, or an ArrayBuffer`);
    const scale = l.scale === undefined ? 1 : l.scale;
    if (typeof scale !== 'number' || !Number.isFinite(scale)) throw apiError('InvalidInput', `loras[${i}].scale must be a finite number (got ${String(l.scale)})`);
    return { model: typeof m === 'string' || m instanceof URL ? new URL(String(m), here).href : m, scale };
  });
  // memory, precision and attention are checked by the wasm module (its messages), before the
  // model is fetched.
  // A relative URL means relative to the page, not to the worker.
  if (typeof model === 'string' || model instanceof URL) model = new URL(String(model), globalThis.location && globalThis.location.href).href;
  const g = new Generator({ model, device, memory, precision, attention, threads, loras, onProgress, wasmUrl });
  try {
    await g._start();
  } catch (e) {
    // A model that fails to load (a bad file, a lost download) must not leave its worker behind.
    if (g._client) g._client.terminate();
    throw e;
  }
  return g;
}
