// Which device `device: 'auto'` means here. A WebGPU adapter is not always faster than the CPU
// path: a software adapter (Chromium's SwiftShader, Mesa's llvmpipe / lavapipe, Windows' WARP)
// runs the GPU kernels on the CPU, slower than the CPU path's own kernels (BENCHMARKS.md: a
// 128×128 image took 250 s on SwiftShader against 2.7 s on the CPU path of the same page). So
// 'auto' takes WebGPU only on an adapter that is not a software one; when the adapter does not
// say what it is, a short timed probe decides. Used by the worker (the choice) and the page API
// (`detect`).

const SOFTWARE = /swiftshader|llvmpipe|lavapipe|softpipe|\bwarp\b|basic render driver/i;

/** `{ software, name }` of a WebGPU adapter: `software` is true, false, or null (it does not say). */
export function classifyAdapter(adapter) {
  const info = (adapter && adapter.info) || {};
  const fields = [info.vendor, info.architecture, info.device, info.description].filter((s) => typeof s === 'string' && s);
  const name = fields.join(' ') || 'unnamed adapter';
  if (info.isFallbackAdapter || (adapter && adapter.isFallbackAdapter)) return { software: true, name };
  if (fields.some((s) => SOFTWARE.test(s))) return { software: true, name };
  return { software: fields.length ? false : null, name };
}

async function requestAdapter() {
  try {
    if (typeof navigator === 'undefined' || !navigator.gpu) return null;
    return (await navigator.gpu.requestAdapter()) || null;
  } catch {
    return null;
  }
}

// The probe: the same dependent multiply-add chains on the adapter (one per invocation) and in
// plain JS on this thread, timed. Returns { gpuMs, cpuMs } for the same amount of work.
const CHAIN = 1024;
const GPU_CHAINS = 16384;
const CPU_CHAINS = 256;

export async function probe(adapter) {
  const device = await adapter.requestDevice();
  try {
    const code = `@group(0) @binding(0) var<storage, read_write> out: array<f32>;
@compute @workgroup_size(64) fn main(@builtin(global_invocation_id) id: vec3<u32>) {
  var a = f32(id.x) * 1e-7; var b = 1.0;
  for (var i = 0u; i < ${CHAIN}u; i++) { b = b * 0.9999 + a; }
  out[id.x] = b;
}`;
    const pipeline = device.createComputePipeline({ layout: 'auto', compute: { module: device.createShaderModule({ code }), entryPoint: 'main' } });
    const buffer = device.createBuffer({ size: GPU_CHAINS * 4, usage: GPUBufferUsage.STORAGE });
    const bind = device.createBindGroup({ layout: pipeline.getBindGroupLayout(0), entries: [{ binding: 0, resource: { buffer } }] });
    const run = async () => {
      const enc = device.createCommandEncoder();
      const pass = enc.beginComputePass();
      pass.setPipeline(pipeline);
      pass.setBindGroup(0, bind);
      pass.dispatchWorkgroups(GPU_CHAINS / 64);
      pass.end();
      const t = performance.now();
      device.queue.submit([enc.finish()]);
      await device.queue.onSubmittedWorkDone();
      return performance.now() - t;
    };
    await run(); // compiles and warms up
    const gpuMs = Math.min(await run(), await run());
    const chains = (n) => {
      let sink = 0;
      for (let c = 0; c < n; c++) {
        const a = c * 1e-7;
        let b = 1;
        for (let i = 0; i < CHAIN; i++) b = b * 0.9999 + a;
        sink += b;
      }
      return sink;
    };
    let sink = chains(CPU_CHAINS); // the JIT compiles the loop
    let cpuMs = Infinity;
    for (let r = 0; r < 2; r++) {
      const t = performance.now();
      sink += chains(CPU_CHAINS);
      cpuMs = Math.min(cpuMs, ((performance.now() - t) * GPU_CHAINS) / CPU_CHAINS);
    }
    if (!Number.isFinite(sink)) throw new Error('probe');
    return { gpuMs, cpuMs };
  } finally {
    device.destroy();
  }
}

// The adapter must beat one plain JS thread by this much to beat the CPU path (SIMD kernels,
// several threads, better memory use than the probe's scalar loop).
const GPU_MARGIN = 8;

/**
 * The device to load on for `requested` ('auto', 'webgpu' or 'cpu'): `{ device, reason }`.
 * 'webgpu' takes whatever adapter there is (DeviceError without one); 'auto' never takes a
 * software adapter. `adapter` and `runProbe` are for tests.
 */
export async function chooseDevice(requested, { adapter, runProbe = probe } = {}) {
  if (requested === 'cpu') return { device: 'cpu', reason: 'CPU asked for' };
  const a = adapter === undefined ? await requestAdapter() : adapter;
  if (requested === 'webgpu') {
    if (!a) return { device: null, reason: 'WebGPU is not available in this browser (no adapter)' };
    return { device: 'webgpu', reason: `WebGPU asked for (${classifyAdapter(a).name})` };
  }
  if (!a) return { device: 'cpu', reason: 'no WebGPU adapter' };
  const { software, name } = classifyAdapter(a);
  if (software === true) return { device: 'cpu', reason: `the WebGPU adapter is a software one (${name}); the CPU path is faster` };
  if (software === false) return { device: 'webgpu', reason: `GPU adapter ${name}` };
  try {
    const { gpuMs, cpuMs } = await runProbe(a);
    const ratio = cpuMs / Math.max(gpuMs, 1e-3);
    const measured = `probe: adapter ${gpuMs.toFixed(1)} ms, one CPU thread ~${cpuMs.toFixed(0)} ms`;
    return ratio >= GPU_MARGIN
      ? { device: 'webgpu', reason: `the adapter does not say what it is; ${measured}` }
      : { device: 'cpu', reason: `the adapter does not say what it is and is slow (${measured}); the CPU path is faster` };
  } catch (e) {
    return { device: 'cpu', reason: `the WebGPU adapter failed a probe (${(e && e.message) || e})` };
  }
}
