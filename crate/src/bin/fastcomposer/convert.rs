//! Convert a checkpoint to a model bundle: a diffusers-layout directory, or one FastComposer
//! checkpoint (.safetensors or PyTorch .bin with text_encoder., image_encoder., vae., unet.,
//! postfuse_module. keys).

use super::*;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    pub from: PathBuf,
    /// Reference configs (unet/config.json, vae/config.json, text_encoder/config.json,
    /// image_encoder/config.json, fuser/config.json, optional scheduler/scheduler_config.json).
    /// Default for a directory: its own; for a file: SD1.5 + CLIP ViT-L/14.
    #[arg(long)]
    pub configs: Option<PathBuf>,
    /// f16 | int8 | int4 | mixed
    #[arg(long, default_value = "int8")]
    pub quant: String,
    #[arg(long)]
    pub out: PathBuf,
    /// Model name stored in the bundle.
    #[arg(long)]
    pub name: Option<String>,
    /// A file with the licence text to store in the bundle.
    #[arg(long)]
    pub license: Option<PathBuf>,
    /// A file with the model card (markdown) to store in the bundle.
    #[arg(long)]
    pub card: Option<PathBuf>,
    /// Also store the VAE encoder (generation only decodes; left out by default).
    #[arg(long)]
    pub keep_vae_encoder: bool,
    /// A LoRA (kohya, diffusers/peft) merged into the UNet and text encoder before
    /// quantization, as FILE or FILE:SCALE (default scale 1). Repeatable.
    #[arg(long = "lora")]
    pub loras: Vec<String>,
    /// The scheduler generations with this bundle use unless told otherwise (ddim | pndm |
    /// euler | lcm; `lcm` for an LCM-LoRA).
    #[arg(long)]
    pub scheduler: Option<String>,
    /// The bundle's default number of steps (e.g. 4 with an LCM-LoRA).
    #[arg(long)]
    pub steps: Option<usize>,
    /// The bundle's default guidance scale (e.g. 1 with an LCM-LoRA).
    #[arg(long)]
    pub guidance: Option<f64>,
    /// The bundle's default subject strength alpha (a few-step model's own: with 4 steps, 0.8
    /// leaves the first step text-only, as 0.7 does for about the first third of 25 steps).
    #[arg(long)]
    pub alpha: Option<f64>,
    /// Add a tiny autoencoder (TAESD) as a second, much cheaper decoder: a diffusers
    /// AutoencoderTiny directory or its .safetensors file (`generate --decoder tiny`).
    #[arg(long)]
    pub tiny_vae: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<()> {
    let Args {
        from,
        configs,
        quant,
        out,
        name,
        license,
        card,
        keep_vae_encoder,
        loras,
        scheduler,
        steps,
        guidance,
        alpha,
        tiny_vae,
    } = args;
    if let Some(s) = &scheduler {
        s.parse::<SchedulerKind>()?;
    }
    let opts = ConvertOptions {
        from,
        configs,
        quant: quant.parse()?,
        out,
        name,
        license: license.as_deref().map(read_text).transpose()?,
        card: card.as_deref().map(read_text).transpose()?,
        keep_vae_encoder,
        loras: loras.iter().map(|l| l.parse()).collect::<Result<_>>()?,
        defaults: GenerationDefaults {
            scheduler: scheduler.map(|s| s.to_ascii_lowercase()),
            steps,
            guidance,
            alpha,
        },
        tiny_vae,
    };
    let r = convert(&opts)?;
    for (ty, n, bytes) in &r.by_type {
        eprintln!("  {ty:>5}: {n:5} tensors, {:10.2} MB", *bytes as f64 / 1e6);
    }
    eprintln!(
        "wrote {} ({} tensors, {:.2} MB)",
        opts.out.display(),
        r.tensors,
        r.bytes as f64 / 1e6
    );
    Ok(())
}
