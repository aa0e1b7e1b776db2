//! Per-operation timings at the SD1.5 UNet's shapes (`fastcomposer bench-ops`): where a UNet
//! step's time goes on a device, one kind of layer at a time, with the achieved rate.
//!
//! Each operation runs once untimed (kernel compilation, autotuning), then `iters` times, each
//! followed by a device sync while its output is still alive, so queued or fused work cannot be
//! skipped. Weights are made up ([`crate::io::RandomSource`]).

use burn::tensor::{Device, Tensor, TensorData};

use crate::error::{Error, Result};
use crate::kernels::KernelOptions;
use crate::kernels::attention::AttentionKernel;
use crate::models::attention::Attention;
use crate::models::loader::Loader;
use crate::models::nn::{Conv2d, GroupNorm, Linear};
use crate::quant::QuantMode;
use crate::rng::Pcg32;

/// One operation's result.
#[derive(Debug, Clone, serde::Serialize)]
pub struct OpTiming {
    pub op: String,
    pub weights: String,
    /// Mean milliseconds per call after the first.
    pub ms: f64,
    /// Floating-point operations per call (2 per multiply-add), in GFLOP.
    pub gflop: f64,
    /// Bytes that must cross memory at least once (inputs + outputs + weights), in MB.
    pub mbytes: f64,
    pub tflops: f64,
    pub gbps: f64,
    /// Milliseconds of the first (untimed-in-the-mean) call: compilation and autotuning.
    pub first_ms: f64,
}

fn input<const D: usize>(shape: [usize; D], device: &Device) -> Tensor<D> {
    let n = shape.iter().product();
    Tensor::from_data(TensorData::new(Pcg32::new(7).normals(n), shape), device)
}

/// Milliseconds from a fixed point: `std::time::Instant` natively; in wasm (no clock in the
/// standard library there) JavaScript's `Date.now()`, whole milliseconds — enough for these
/// operations, which take tens of milliseconds or more on a CPU.
struct Clock(
    #[cfg(not(target_arch = "wasm32"))] std::time::Instant,
    #[cfg(target_arch = "wasm32")] f64,
);

impl Clock {
    fn start() -> Self {
        #[cfg(not(target_arch = "wasm32"))]
        return Clock(std::time::Instant::now());
        #[cfg(target_arch = "wasm32")]
        return Clock(js_sys::Date::now());
    }

    fn elapsed_ms(&self) -> f64 {
        #[cfg(not(target_arch = "wasm32"))]
        return self.0.elapsed().as_secs_f64() * 1e3;
        #[cfg(target_arch = "wasm32")]
        return js_sys::Date::now() - self.0;
    }
}

fn time<const D: usize>(
    device: &Device,
    iters: usize,
    mut f: impl FnMut() -> Tensor<D>,
) -> Result<(f64, f64)> {
    let sync = |d: &Device| d.sync().map_err(|e| Error::Device(format!("{e:?}")));
    let t0 = Clock::start();
    let out = f();
    sync(device)?;
    drop(out);
    let first = t0.elapsed_ms();
    let t0 = Clock::start();
    for _ in 0..iters.max(1) {
        let out = f();
        sync(device)?;
        drop(out);
    }
    Ok((first, t0.elapsed_ms() / iters.max(1) as f64))
}

/// Time the SD1.5 UNet's main layer kinds at batch 2 (CFG) and a 64×64 latent: 3×3
/// convolutions at each level's width, the feed-forward and projection matmuls, self- and
/// cross-attention at the 64×64 level (the attention kernel given), GroupNorm (+ SiLU).
/// `weights`: `None` for f32 weights, or a bundle mode (int8, int4) for quantized ones.
/// Convolutions run twice: with the kernel this crate picks for the device
/// ([`crate::kernels::conv::conv2d`]) and with burn's own `conv2d`. `only`: just the operations whose
/// name contains it.
pub fn sd15_ops(
    device: &Device,
    iters: usize,
    weights: Option<QuantMode>,
    kernels: KernelOptions,
    only: Option<&str>,
) -> Result<Vec<OpTiming>> {
    let wanted = |name: &str| only.is_none_or(|o| name.contains(o));
    let source = crate::io::RandomSource::stored_as(weights);
    let kernel = kernels.attention;
    let vb = Loader::new(&source, device).with_conv_kernels(kernels.conv);
    let wname = weights.map_or("f32", |m| m.name()).to_string();
    // Bytes per weight as held on the device.
    let wbytes = match weights {
        None | Some(QuantMode::F16) => 4.0,
        Some(QuantMode::Int4) => 0.5 + 4.0 / 32.0,
        Some(_) => 1.0 + 4.0 / 32.0,
    };
    let b = 2;
    let mut out = Vec::new();
    let mut push = |op: String, (first, ms): (f64, f64), flop: f64, bytes: f64| {
        out.push(OpTiming {
            op,
            weights: wname.clone(),
            ms,
            gflop: flop / 1e9,
            mbytes: bytes / 1e6,
            tflops: flop / (ms * 1e-3) / 1e12,
            gbps: bytes / (ms * 1e-3) / 1e9,
            first_ms: first,
        });
    };

    for (c, hw) in [(320usize, 64usize), (640, 32), (1280, 16), (1280, 8)] {
        let name = format!("conv3x3 {c}->{c} @{hw}x{hw}");
        if !wanted(&name) {
            continue;
        }
        let conv = Conv2d::load(&vb.pp(format!("conv{c}_{hw}")), c, c, 3, 1, (1, 1), true)?;
        let x = input([b, c, hw, hw], device);
        let px = (b * hw * hw) as f64;
        let flop = 2.0 * px * (c * c * 9) as f64;
        let bytes = 2.0 * px * c as f64 * 4.0 + (c * c * 9) as f64 * wbytes;
        let t = time(device, iters, || conv.forward(x.clone()))?;
        push(name.clone(), t, flop, bytes);
        let burn_kernel = if crate::kernels::device::is_cpu(device) {
            "burn im2col + gemm"
        } else {
            "burn direct"
        };
        let t = time(device, iters, || {
            burn::tensor::module::conv2d(
                x.clone(),
                conv.weight.get(),
                conv.bias.clone(),
                conv.options.clone(),
            )
        })?;
        push(format!("{name} ({burn_kernel})"), t, flop, bytes);
    }

    let tokens = b * 64 * 64;
    for (d_in, d_out, name) in [
        (
            320usize,
            320usize,
            "linear 320->320 (attention projections)",
        ),
        (320, 2560, "linear 320->2560 (GEGLU in)"),
        (1280, 320, "linear 1280->320 (feed-forward out)"),
    ] {
        let name = format!("{name} x{tokens} tokens");
        if !wanted(&name) {
            continue;
        }
        let lin = Linear::load(&vb.pp(format!("lin{d_in}_{d_out}")), d_in, d_out, true)?;
        let x = input([b, tokens / b, d_in], device);
        let t = time(device, iters, || lin.forward(x.clone()))?;
        let flop = 2.0 * (tokens * d_in * d_out) as f64;
        let bytes = (tokens * (d_in + d_out)) as f64 * 4.0 + (d_in * d_out) as f64 * wbytes;
        push(name, t, flop, bytes);
    }

    let settings = crate::models::attention::AttentionShape {
        query_dim: 320,
        cross_dim: None,
        heads: 8,
        dim_head: 40,
        qkv_bias: false,
    };
    let x = input([b, tokens / b, 320], device);
    let l = (tokens / b) as f64;
    let flop = 2.0 * (b as f64) * (2.0 * l * l * 320.0) + 4.0 * 2.0 * (tokens * 320 * 320) as f64;
    let bytes = 2.0 * (tokens * 320) as f64 * 4.0;
    // The kernel asked for, and burn's fused (flash) attention for comparison (not on the CPU
    // device, where both are the host kernel).
    let mut kernels = vec![kernel];
    if !matches!(kernel, AttentionKernel::Fused { .. }) && !crate::kernels::device::is_cpu(device) {
        kernels.push(AttentionKernel::Fused {
            max_bytes: kernel.max_buffer_bytes(),
        });
    }
    for k in kernels {
        let name = match k {
            AttentionKernel::Sliced { max_bytes } => format!("sliced, {} MiB", max_bytes >> 20),
            AttentionKernel::Fused { .. } => "fused, flash".to_string(),
        };
        let name = format!("self-attention 4096 tokens, 8x40 heads ({name})");
        if !wanted(&name) {
            continue;
        }
        let attn = Attention::load(&vb.pp("attn1"), settings, k)?;
        let t = time(device, iters, || attn.forward(x.clone(), None))?;
        push(name, t, flop, bytes);
    }

    let settings = crate::models::attention::AttentionShape {
        cross_dim: Some(768),
        ..settings
    };
    let name = "cross-attention 4096 x 77 tokens";
    if wanted(name) {
        let attn = Attention::load(&vb.pp("attn2"), settings, kernel)?;
        let ctx = input([b, 77, 768], device);
        let t = time(device, iters, || attn.forward(x.clone(), Some(&ctx)))?;
        let flop = 2.0 * (b as f64) * (2.0 * l * 77.0 * 320.0)
            + 2.0 * 2.0 * (tokens * 320 * 320) as f64
            + 2.0 * 2.0 * (b * 77 * 768 * 320) as f64;
        push(name.to_string(), t, flop, bytes);
    }

    if wanted("group_norm 320 @64x64") || wanted("group_norm + silu 320 @64x64") {
        let gn = GroupNorm::load(&vb.pp("norm"), 32, 320, 1e-5)?;
        let x = input([b, 320, 64, 64], device);
        let bytes = 2.0 * (tokens * 320) as f64 * 4.0;
        let t = time(device, iters, || gn.forward(x.clone()))?;
        push("group_norm 320 @64x64".to_string(), t, 0.0, bytes);
        let t = time(device, iters, || {
            gn.forward_act(x.clone(), crate::models::nn::Activation::Silu)
        })?;
        push("group_norm + silu 320 @64x64".to_string(), t, 0.0, bytes);
    }
    Ok(out)
}
