// The worker that owns the model. The page never blocks: every call is a message (protocol.js).
// The wasm module is imported when `init` asks for it: the threaded build (threads/: the CPU
// kernels on rayon over Web Workers sharing the module's memory) where the page is cross-origin
// isolated and more than one thread is wanted, else the single-threaded build (which also has
// the WebGPU device; the threaded one does not).
import { OP, CACHE_NAME, apiError, toWire } from './protocol.js';
import { chooseDevice } from './device.js';

let Generator, BundleBuffer, LoraList, version, checkLoadOptions;
let threadCount = 1;

// The device a requested one ('auto', 'webgpu', 'cpu') means here, decided once (device.js):
// { requested, device, reason }; device is null for 'webgpu' without an adapter.
let choice = null;
async function decide(requested) {
  if (!['auto', 'webgpu', 'cpu'].includes(requested)) throw apiError('InvalidInput', `unknown device "${requested}" (expected auto, webgpu or cpu)`);
  if (!choice || choice.requested !== requested) choice = { requested, ...(await chooseDevice(requested)) };
  return choice;
}

async function loadWasm(wasmUrl, threads, device) {
  const isolated = typeof SharedArrayBuffer !== 'undefined' && self.crossOriginIsolated === true;
  const cores = (self.navigator && navigator.hardwareConcurrency) || 1;
  const n = threads === 'auto' || threads == null ? Math.min(cores, 8) : threads;
  const cpu = (await decide(device)).device === 'cpu';
  let m = null;
  if (cpu && n > 1 && isolated && !wasmUrl) {
    try {
      m = await import('./threads/fastcomposer.js');
      await m.default();
      await m.initThreadPool(n);
      threadCount = n;
    } catch (e) {
      // The package was built without the threaded module, or it failed to start: run on one.
      console.warn(`fastcomposer: running single-threaded (${(e && e.message) || e})`);
      m = null;
    }
  }
  if (!m) {
    m = await import('./fastcomposer.js');
    await m.default(wasmUrl ? { module_or_path: wasmUrl } : undefined);
    threadCount = 1;
  }
  ({ Generator, BundleBuffer, LoraList, version, checkLoadOptions } = m);
}

// burn's GPU kernels use WGSL subgroup operations when the adapter offers the `subgroups`
// feature. In a browser that fails twice: wgpu does not request the feature for the device
// (so `enable subgroups;` is rejected), and some of the generated kernels call subgroupAdd
// outside uniform control flow, which WGSL's uniformity analysis rejects. Either way the shader
// is invalid and the runtime panics (a wasm trap). So the adapter is shown to wgpu without
// `subgroups`; the kernels then use workgroup memory instead.
if (typeof GPUAdapter !== 'undefined') {
  const desc = Object.getOwnPropertyDescriptor(GPUAdapter.prototype, 'features');
  if (desc && desc.get) {
    Object.defineProperty(GPUAdapter.prototype, 'features', {
      configurable: true,
      get() {
        return new Set([...desc.get.call(this)].filter((f) => f !== 'subgroups'));
      },
    });
  }
}

// WebGPU device loss (driver reset, GPU process crash, `device.destroy()`): remembered when
// the device reports it; the call it interrupted and every later call then fail with a
// DeviceError, and the JS API starts a fresh worker (a fresh device) before the next call.
let deviceLost = null;
let gpuDevice = null;  // the device the wasm module asked for
let lostSignal = null; // resolves when the device reports its loss
if (typeof GPUAdapter !== 'undefined') {
  const requestDevice = GPUAdapter.prototype.requestDevice;
  GPUAdapter.prototype.requestDevice = async function (...args) {
    const device = await requestDevice.apply(this, args);
    gpuDevice = device;
    lostSignal = device.lost.then((info) => { deviceLost = `${info.reason || 'unknown'}: ${info.message || 'no message'}`; });
    return device;
  };
}

// After a device error, is the device still usable? Its `lost` report can come many seconds
// late (Chromium answers only once the GPU process has finished the work already queued: 12 s
// with a software adapter), so wait for it, but ask the device too: mapping a 4-byte buffer
// answers as soon as the device is idle (2 ms in Chromium here; rejected on a lost device), so
// a device error without a loss is not held back for long.
async function checkDevice() {
  if (!gpuDevice || deviceLost) return;
  const probe = (async () => {
    try {
      const b = gpuDevice.createBuffer({ size: 4, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
      try { await b.mapAsync(GPUMapMode.READ); b.unmap(); } finally { b.destroy(); }
    } catch (e) {
      if (!deviceLost) deviceLost = `unusable: ${(e && e.message) || e}`;
    }
  })();
  await Promise.race([lostSignal, probe, new Promise((r) => setTimeout(r, 60000))]);
}

function lostError() {
  return apiError('DeviceError', `the WebGPU device was lost (${deviceLost}); the next call starts a fresh one`);
}

let ready = null;          // the wasm module's init promise
let generator = null;      // the loaded Generator
let busy = false;          // one generation at a time
const sessions = new Map(); // session id -> { session, cancelled }
let nextSession = 1;

// ---------------------------------------------------------------- cache (wrapped: private modes throw)
async function openCache() {
  try {
    if (typeof caches === 'undefined') return null;
    return await caches.open(CACHE_NAME);
  } catch {
    return null;
  }
}

// Store a downloaded bundle in the cache from the loaded generator's copy, a slice at a time,
// as the cache asks for them: the worker never holds a second whole copy. True when stored.
async function cacheFromGenerator(key, gen, total) {
  const c = await openCache();
  if (!c) return false;
  const SLICE = 8 << 20;
  let offset = 0;
  const body = new ReadableStream({
    pull(controller) {
      const n = Math.min(SLICE, total - offset);
      controller.enqueue(gen.bundleSlice(offset, n));
      offset += n;
      if (offset >= total) controller.close();
    },
  }, { highWaterMark: 0 });
  try {
    await c.put(key, new Response(body, { headers: { 'content-type': 'application/octet-stream', 'content-length': String(total) } }));
    return true;
  } catch {
    await cacheDelete(key);
    return false;
  }
}

async function cacheDelete(key) {
  const c = await openCache();
  if (!c) return;
  try { await c.delete(key); } catch { /* ignore */ }
}

// ---------------------------------------------------------------- bundle
// Every source — a download, a cached copy, a file, bytes — goes into a BundleBuffer in the wasm
// module's memory piece by piece: the worker never holds a whole copy of the file (for an
// SD1.5-size bundle, 0.8–1.4 GB, that copy would double the tab's memory while loading). The
// buffer verifies each chunk as soon as it is complete, so a damaged bundle fails at its first
// bad chunk and its download stops there.

// Reads `reader` to the end into a new BundleBuffer, reporting progress as `status`. On any
// error the buffer is freed and the reader cancelled.
async function fill(reader, total, file, status, report, extra = {}) {
  const buf = new BundleBuffer();
  try {
    report({ status, file, loaded: 0, total, ...extra });
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      buf.push(value);
      report({ status, file, loaded: buf.received, total: total || buf.fileBytes, ...extra });
    }
    buf.end();
    return buf;
  } catch (e) {
    buf.free();
    try { await reader.cancel(); } catch { /* already ended */ }
    throw e;
  }
}

// A reader whose read errors (a dropped connection, a file that went away) are IoErrors.
function ioReader(reader, what) {
  return {
    async read() {
      try {
        return await reader.read();
      } catch (e) {
        throw apiError('IoError', `${what}: ${e.message || e}`);
      }
    },
    cancel: () => reader.cancel(),
  };
}

// Download `url` into a BundleBuffer (a damaged bundle stops the download at its first bad
// chunk). It is cached once loaded (`cacheFromGenerator`), from the module's copy.
async function download(url, report) {
  let response;
  try {
    response = await fetch(url, { cache: 'no-store' });
  } catch (e) {
    throw apiError('IoError', `cannot download the model from ${url}: ${e.message || e}`);
  }
  if (!response.ok) throw apiError('IoError', `cannot download the model from ${url}: HTTP ${response.status}`);
  const total = Number(response.headers.get('content-length')) || 0;
  return fill(ioReader(response.body.getReader(), `cannot download the model from ${url}`), total, url, 'download', report);
}

// The cached copy of `url` in a BundleBuffer, or null (none, or damaged: then it is deleted).
async function fromCache(url, report) {
  const c = await openCache();
  if (!c) return null;
  let r;
  try {
    r = await c.match(url);
  } catch {
    return null;
  }
  if (!r || !r.body) return null;
  const total = Number(r.headers.get('content-length')) || 0;
  try {
    return await fill(ioReader(r.body.getReader(), `cannot read the cached model ${url}`), total, url, 'download', report, { cached: true });
  } catch (e) {
    // A truncated or corrupt cached copy is never used: drop it and fetch again.
    await cacheDelete(url);
    report({ status: 'cache-invalid', file: url, reason: e.message });
    return null;
  }
}

// A bundle on the user's disk (a File from a file input or a drop, or any Blob), read as a
// stream; never cached (it is already local).
async function readFile(blob, report) {
  const name = typeof blob.name === 'string' && blob.name ? blob.name : 'model file';
  if (blob.size === 0) throw apiError('WeightsError', `the model file ${name} is empty`);
  return fill(ioReader(blob.stream().getReader(), `cannot read the model file ${name}`), blob.size, name, 'read', report);
}

// Bytes the page already has, pushed in slices (one push of the whole would need a second
// whole-size copy inside the module).
function fromBytes(bytes) {
  const SLICE = 16 << 20;
  const buf = new BundleBuffer();
  try {
    for (let o = 0; o < bytes.length; o += SLICE) buf.push(bytes.subarray(o, o + SLICE));
    buf.end();
    return buf;
  } catch (e) {
    buf.free();
    throw e;
  }
}

async function obtainBundle(model, report) {
  if (typeof Blob !== 'undefined' && model instanceof Blob) {
    return { buf: await readFile(model, report), source: 'file' };
  }
  if (model instanceof ArrayBuffer || ArrayBuffer.isView(model)) {
    const bytes = model instanceof ArrayBuffer ? new Uint8Array(model) : new Uint8Array(model.buffer, model.byteOffset, model.byteLength);
    return { buf: fromBytes(bytes), source: 'buffer' };
  }
  const url = new URL(String(model), self.location.href).href;
  const cached = await fromCache(url, report);
  if (cached) return { buf: cached, source: 'cache' };
  return { buf: await download(url, report), source: 'network', cacheAs: url };
}

// LoRA files ({ model, scale } with a URL, a File or Blob, or bytes) into a LoraList, or null.
async function obtainLoras(loras) {
  if (!loras.length) return null;
  const list = new LoraList();
  try {
    for (const [i, { model, scale }] of loras.entries()) {
      let bytes;
      let name;
      if (typeof Blob !== 'undefined' && model instanceof Blob) {
        name = typeof model.name === 'string' && model.name ? model.name : `LoRA ${i + 1}`;
        try {
          bytes = new Uint8Array(await model.arrayBuffer());
        } catch (e) {
          throw apiError('IoError', `cannot read the LoRA file ${name}: ${e.message || e}`);
        }
      } else if (model instanceof ArrayBuffer || ArrayBuffer.isView(model)) {
        name = `LoRA ${i + 1}`;
        bytes = model instanceof ArrayBuffer ? new Uint8Array(model) : new Uint8Array(model.buffer, model.byteOffset, model.byteLength);
      } else {
        name = new URL(String(model), self.location.href).href;
        let r;
        try {
          r = await fetch(name, { cache: 'no-store' });
        } catch (e) {
          throw apiError('IoError', `cannot download the LoRA ${name}: ${e.message || e}`);
        }
        if (!r.ok) throw apiError('IoError', `cannot download the LoRA ${name}: HTTP ${r.status}`);
        bytes = new Uint8Array(await r.arrayBuffer());
      }
      list.push(name, bytes, scale);
    }
    return list;
  } catch (e) {
    list.free();
    throw e;
  }
}

// ---------------------------------------------------------------- ops

// Subjects as the page sends them, `{ values, reference? }` (typed arrays survive the message;
// plain arrays are taken too); the wasm module checks each field and names what is wrong.
function wasmSubjects(subjects) {
  const f32 = (a) => (a instanceof Float32Array || a == null ? a : new Float32Array(a));
  return (subjects || []).map((s) => ({
    values: f32(s && s.values),
    reference: s && s.reference ? { ...s.reference, latents: f32(s.reference.latents), mask: f32(s.reference.mask) } : undefined,
  }));
}

const ops = {
  async [OP.init]({ wasmUrl, threads, device }) {
    if (!ready) ready = loadWasm(wasmUrl, threads, device || 'auto');
    await ready;
    return { version: version(), threads: threadCount };
  },

  async [OP.load]({ model, device, memory, precision, attention, loras }, report) {
    await ready;
    if (generator) { generator.free(); generator = null; }
    const { device: dev, reason } = await decide(device || 'auto');
    if (!dev) throw apiError('DeviceError', `${reason}; use device "cpu"`);
    // The other options are the wasm module's to check (its messages), before any download.
    checkLoadOptions(memory || 'auto', precision || 'auto', attention || 'sliced');
    // LoRA files first (small; not cached): one that cannot be read fails before the bundle
    // is fetched.
    const loraList = await obtainLoras(loras || []);
    let obtained;
    try {
      obtained = await obtainBundle(model, report);
    } catch (e) {
      if (loraList) loraList.free();
      throw e;
    }
    const { buf, source: from, cacheAs } = obtained;
    let about;
    let fileBytes;
    try {
      const h = buf.header();
      about = { name: h.name, license: h.license, description: h.description, quantization: h.quantization };
      fileBytes = h.fileBytes;
      report({ status: 'loading', device: dev, reason });
    } catch (e) {
      buf.free();
      if (loraList) loraList.free();
      throw e;
    }
    // Generator.load takes the buffer (the bundle stays in the module's memory) and the LoRAs.
    generator = await Generator.load(buf, dev, memory || 'auto', precision || 'auto', attention || 'sliced', loraList);
    let source = from;
    if (cacheAs) source = (await cacheFromGenerator(cacheAs, generator, fileBytes)) ? 'network+cached' : 'network';
    generator.releaseBundle();
    report({ status: 'ready', device: dev });
    return { device: dev, deviceReason: reason, precision: generator.precision, attention: generator.attention, memory: generator.memory, imageSize: generator.imageSize, sizeStep: generator.sizeStep, marker: generator.marker, defaults: generator.defaults, hasTinyDecoder: generator.hasTinyDecoder, source, model: about };
  },

  async [OP.encodeSubject]({ rgba, width, height, mask }) {
    if (!generator) throw apiError('InvalidInput', 'no model is loaded');
    const data = rgba instanceof Uint8Array ? rgba : new Uint8Array(rgba);
    // { values, reference? }: the embedding, and the photo's latents where the model has a VAE encoder.
    return await generator.encodeSubject(data, width, height, mask ? new Uint8Array(mask) : undefined);
  },

  async [OP.startDenoise]({ options, subjects }) {
    if (!generator) throw apiError('InvalidInput', 'no model is loaded');
    const session = generator.startDenoise(options || {}, wasmSubjects(subjects));
    const id = nextSession++;
    sessions.set(id, { session });
    return { session: id, total: session.total, warnings: session.warnings };
  },

  async [OP.step]({ session }) {
    const s = sessions.get(session);
    if (!s) throw apiError('InvalidInput', `no denoising session ${session}`);
    await s.session.step();
    return { done: s.session.done, total: s.session.total };
  },

  async [OP.latents]({ session }) {
    const s = sessions.get(session);
    if (!s) throw apiError('InvalidInput', `no denoising session ${session}`);
    return { latents: await s.session.latents() };
  },

  async [OP.decode]({ session }) {
    const s = sessions.get(session);
    if (!s) throw apiError('InvalidInput', `no denoising session ${session}`);
    return await s.session.decode();
  },

  async [OP.endSession]({ session }) {
    const s = sessions.get(session);
    if (s) { s.session.free(); sessions.delete(session); }
    return {};
  },

  // A whole generation: the wasm module runs the loop (the pipeline's, as natively) and calls
  // back after each step; the callback relays the progress, lets a 'cancel' message in, and
  // answers whether to go on.
  async [OP.generate]({ options, subjects, previewEvery, runId }, report) {
    if (!generator) throw apiError('InvalidInput', 'no model is loaded');
    if (busy) throw apiError('Busy', 'a generation is already running; wait for it or abort it');
    busy = true;
    try {
      const onStep = async (p) => {
        report(p);
        await new Promise((r) => setTimeout(r, 0));
        return !cancelled.has(runId) && !deviceLost;
      };
      return await generator.generate(options || {}, wasmSubjects(subjects), previewEvery || 0, onStep);
    } catch (e) {
      if (deviceLost) throw lostError();
      throw e;
    } finally {
      cancelled.delete(runId);
      busy = false;
    }
  },

  async [OP.dispose]() {
    for (const s of sessions.values()) s.session.free();
    sessions.clear();
    if (generator) { generator.free(); generator = null; }
    return {};
  },
};

const cancelled = new Set();

self.onmessage = async (ev) => {
  const { id, op, ...args } = ev.data || {};
  if (op === OP.cancel) { cancelled.add(args.runId); return; }
  const report = (progress) => self.postMessage({ id, progress });
  const fn = Object.hasOwn(ops, op) ? ops[op] : null;
  if (!fn) { self.postMessage({ id, ok: false, error: toWire(apiError('InvalidInput', `unknown operation ${op}`)) }); return; }
  try {
    if (deviceLost && op !== 'dispose') throw lostError();
    const value = await fn(args, report);
    const transfer = [];
    if (value && value.image && value.image.rgba) transfer.push(value.image.rgba.buffer);
    if (value && value.rgba) transfer.push(value.rgba.buffer);
    self.postMessage({ id, ok: true, value }, transfer);
  } catch (e) {
    // A device error may be the first sign of a loss the device has not reported: check, so
    // that the message says what happened. After a loss, whatever failed failed because of it.
    if (e && e.name === 'DeviceError') await checkDevice();
    const err = deviceLost && !(e && e.name === 'Cancelled') ? toWire(lostError()) : toWire(e);
    self.postMessage({ id, ok: false, error: err });
  }
};
