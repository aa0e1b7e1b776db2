//! Time the SD1.5 UNet's layer kinds one at a time at batch 2 and a 64×64 latent (3×3
//! convolutions per level, matmuls, self/cross-attention, GroupNorm); one JSON line each.

use super::*;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value = "wgpu")]
    pub device: String,
    #[arg(long, default_value_t = 10)]
    pub iters: usize,
    /// f32, or a bundle mode (int8, int4, mixed) for quantized weights.
    #[arg(long, default_value = "f32")]
    pub weights: String,
    /// Compute dtype: f32 or f16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    #[command(flatten)]
    pub attention: AttentionArgs,
    /// Only the operations whose name contains this (e.g. "conv").
    #[arg(long)]
    pub only: Option<String>,
}

pub fn run(args: Args) -> Result<()> {
    let Args {
        device,
        iters,
        weights,
        dtype,
        attention,
        only,
    } = args;
    let choice: DeviceChoice = device.parse()?;
    let mut device = device::create(choice)?;
    configure_dtype(&mut device, &dtype)?;
    let quant = weights_mode(&weights)?;
    let kernel = attention.options()?;
    let adapter = (choice == DeviceChoice::Wgpu)
        .then(device::wgpu_adapter)
        .flatten();
    for t in fastcomposer::bench::sd15_ops(&device, iters, quant, kernel, only.as_deref())? {
        let mut v = serde_json::to_value(&t).map_err(|e| Error::invalid(e.to_string()))?;
        v["dtype"] = dtype.clone().into();
        v["adapter"] = adapter.clone().into();
        println!("{v}");
    }
    Ok(())
}
