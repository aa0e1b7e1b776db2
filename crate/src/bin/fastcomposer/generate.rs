//! Generate an image of the given subjects. Without --model it uses the built-in default
//! model (small, trained here: cats, robots, birds and cups at 128x128).

use super::*;

#[derive(clap::Args)]
pub struct Args {
    /// The prompt, with a marker right after each subject's class noun,
    /// e.g. "a man <|image|> on the beach".
    #[arg(long)]
    pub prompt: String,
    /// A subject photo (PNG, JPEG or WebP), once per marker, in marker order.
    #[arg(long = "subject")]
    pub subjects: Vec<PathBuf>,
    /// A mask per subject, in the same order (white = subject; the background is replaced
    /// by noise). Optional; fewer masks than subjects leaves the rest unmasked.
    #[arg(long = "mask")]
    pub masks: Vec<PathBuf>,
    #[arg(long, default_value = "")]
    pub negative: String,
    /// Denoising steps (default: the model's own, else 50).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Classifier-free guidance scale (default: the model's own, else 5).
    #[arg(long)]
    pub guidance: Option<f64>,
    /// Fraction of the steps (the last ones) conditioned on the subjects. Default: the
    /// model's own, else 0.7.
    #[arg(long)]
    pub alpha: Option<f64>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Image width in pixels (default: the model's native size).
    #[arg(long)]
    pub width: Option<usize>,
    #[arg(long)]
    pub height: Option<usize>,
    /// ddim | pndm | euler | lcm (few steps, for LCM-distilled UNets). Default: the model's
    /// own, else ddim.
    #[arg(long)]
    pub scheduler: Option<String>,
    /// full | tiny: the decoder that makes the image; tiny needs a bundle with a tiny
    /// autoencoder (`convert --tiny-vae`).
    #[arg(long, default_value = "full")]
    pub decoder: String,
    /// Report wgpu's device-memory peaks (with --device wgpu): reserved, allocated and the
    /// largest buffer, after each stage.
    #[arg(long)]
    pub memory_report: bool,
    /// auto | resident | sequential. Sequential loads each component when its stage
    /// starts and frees the one before (text encoder, image encoder, UNet, VAE): device
    /// memory holds one stage's weights at a time. auto: sequential for bundles over
    /// 512 MiB. Diffusers-layout directories are always resident.
    #[arg(long, default_value = "auto")]
    pub memory: String,
    /// A LoRA (safetensors: kohya, diffusers/peft) merged into the bundle's UNet and text
    /// encoder as they load, at SCALE (default 1); repeatable. Quantized weights are
    /// dequantized, updated and quantized again (as the JS API's `loras`).
    #[arg(long = "lora", value_name = "FILE[:SCALE]")]
    pub loras: Vec<String>,
    /// An attribute slider: move subject INDEX (1-based, in marker order) from one word
    /// toward another, e.g. `1:young:old:1` (strength 0 = unchanged, negative = toward FROM);
    /// repeatable.
    #[arg(long = "attribute", value_name = "INDEX:FROM:TO:STRENGTH")]
    pub attributes: Vec<String>,
    /// Project a text's meaning out of the prompt (DECOR), e.g. `hat:1` (strength 0–1);
    /// repeatable.
    #[arg(long = "suppress", value_name = "TEXT:STRENGTH")]
    pub suppress: Vec<String>,
    /// Self-subject attention (DreamTuner): the image also attends to each subject photo's
    /// features, at this strength (0 = off; 1 = as much as its own). Needs a model with a VAE
    /// encoder (`convert --keep-vae-encoder`); a step costs about twice as much. The subject's
    /// --mask, if given, says where it is in its photo.
    #[arg(long, default_value_t = 0.0, value_name = "STRENGTH")]
    pub self_attention: f64,
    #[command(flatten)]
    pub attention: AttentionArgs,
    /// A model bundle (.gguf, from `fastcomposer convert`) or a diffusers-layout directory
    /// (text_encoder/, image_encoder/, fuser/, unet/, vae/, scheduler/). Default: the
    /// built-in model.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// cpu | wgpu
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// auto | f32 | f16: the float type the model computes in. auto: f16 on a GPU that
    /// computes in it (shader-f16), f32 otherwise; f16 needs --device wgpu.
    #[arg(long, default_value = "auto")]
    pub precision: String,
    /// The image (PNG). Optional when --latents-out is given (then nothing is decoded).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Also write the final latents (`latents`, [1, C, h, w]) and each subject's embedding
    /// (`subject_0`, ...) as f32 safetensors: for comparing runs (e.g. browser vs native).
    #[arg(long)]
    pub latents_out: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<()> {
    let Args {
        prompt,
        subjects,
        masks,
        negative,
        steps,
        guidance,
        alpha,
        seed,
        width,
        height,
        scheduler,
        decoder,
        model,
        device,
        precision,
        out,
        latents_out,
        memory_report,
        memory,
        loras,
        attributes,
        suppress,
        self_attention,
        attention,
    } = args;
    let attributes = attributes
        .iter()
        .map(|a| a.parse())
        .collect::<Result<Vec<Attribute>>>()?;
    let suppress = suppress
        .iter()
        .map(|s| s.parse())
        .collect::<Result<Vec<Suppression>>>()?;
    let precision: Precision = precision.parse()?;
    if out.is_none() && latents_out.is_none() {
        return Err(Error::invalid(
            "nothing to write: give --out (the image) and/or --latents-out",
        ));
    }
    if masks.len() > subjects.len() {
        return Err(Error::invalid(format!(
            "{} masks for {} subject photos; give at most one mask per subject",
            masks.len(),
            subjects.len()
        )));
    }
    // A bad mode or kernel name fails before any work.
    Residency::parse(&memory, 0)?;
    let kernel = attention.options()?;
    let scheduler: Option<SchedulerKind> = scheduler.map(|s| s.parse()).transpose()?;
    let decoder: DecoderKind = decoder.parse()?;
    let loras = loras
        .iter()
        .map(|l| {
            let f: LoraFile = l.parse()?;
            Ok(LoraInput {
                name: f.path.display().to_string(),
                bytes: read_bytes(&f.path)?,
                scale: f.scale,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    // Read every photo before loading the model: bad files fail fast.
    let photos = subjects
        .iter()
        .map(|p| decode_image(&read_bytes(p)?, &p.display().to_string()))
        .collect::<Result<Vec<_>>>()?;
    let masks = masks
        .iter()
        .map(|p| {
            Ok(image::DynamicImage::ImageRgb8(decode_image(
                &read_bytes(p)?,
                &p.display().to_string(),
            )?)
            .into_luma8())
        })
        .collect::<Result<Vec<_>>>()?;
    let choice: device::DeviceChoice = device.parse()?;
    let mut device = device::create(choice)?;
    device::set_precision(&mut device, precision)?;
    if let Some(adapter) = (choice == device::DeviceChoice::Wgpu)
        .then(device::wgpu_adapter)
        .flatten()
    {
        eprintln!("adapter: {adapter}");
    }
    eprintln!("precision: {}", device::precision_name(&device));
    let monitor = memory_monitor(memory_report, choice)?;
    let report = |stage: &str| report_memory(&monitor, stage);
    let t0 = std::time::Instant::now();
    let model = match &model {
        Some(path) if path.is_dir() => {
            if memory == "sequential" {
                return Err(Error::invalid(
                    "--memory sequential needs a bundle (.gguf); a directory loads resident",
                ));
            }
            if !loras.is_empty() {
                return Err(Error::invalid(
                    "--lora needs a bundle (.gguf); for a directory, merge with `convert --lora`",
                ));
            }
            let dir = ModelDir::open(path)?;
            FastComposer::load(&dir.config, &dir, &device, kernel)?
        }
        _ => {
            let bundle = match &model {
                Some(path) => Bundle::open(path)?,
                None => {
                    eprintln!("note: using the {}", default_model::LABEL);
                    default_model::bundle()?
                }
            };
            let residency = Residency::parse(&memory, bundle.info.file_len())?;
            eprintln!("memory: {}", residency.name());
            FastComposer::load_bundle_with_loras(
                Arc::new(bundle),
                loras,
                &device,
                kernel,
                residency,
            )?
        }
    };
    report("loading");
    // The model's own defaults (a bundle may record them) where the command line gives none.
    let base = model.default_options();
    let opts = GenerateOptions {
        prompt,
        negative_prompt: negative,
        steps: steps.unwrap_or(base.steps),
        guidance: guidance.unwrap_or(base.guidance),
        alpha: alpha.unwrap_or(base.alpha),
        seed,
        width,
        height,
        scheduler: scheduler.unwrap_or(base.scheduler),
        decoder,
        attributes,
        suppress,
        self_attention,
    };
    let t_load = t0.elapsed().as_secs_f64();
    let t0 = std::time::Instant::now();
    let embeddings = photos
        .iter()
        .enumerate()
        .map(|(i, p)| model.encode_subject(p, masks.get(i)))
        .collect::<Result<Vec<_>>>()?;
    let t_subjects = t0.elapsed().as_secs_f64();
    let t0 = std::time::Instant::now();
    let mut d = model.start(&opts, &embeddings, None)?;
    d.settle_blocking()?;
    report("encoding the subjects and the prompt");
    let t_prompt = t0.elapsed().as_secs_f64();
    for w in &d.warnings {
        eprintln!("warning: {w}");
    }
    let bar = ProgressBar::new(d.total() as u64).with_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {pos}/{len} steps, {elapsed} elapsed, ~{eta} left",
        )
        .map_err(|e| Error::invalid(e.to_string()))?
        .progress_chars("=> "),
    );
    bar.set_message("denoising");
    let t0 = std::time::Instant::now();
    // The pipeline's loop: each step finished on the device and timed.
    let step_s: Vec<f64> = futures_lite::future::block_on(d.run(0, &mut |_: &StepReport| {
        bar.inc(1);
        true
    }))?
    .iter()
    .map(|ms| ms / 1e3)
    .collect();
    bar.finish_and_clear();
    report("denoising");
    d.settle_blocking()?;
    // Seconds per stage, each stage finished on the device.
    let t_steps = t0.elapsed().as_secs_f64();
    eprintln!(
        "timings: {{\"load_s\": {t_load:.3}, \"subjects_s\": {t_subjects:.3}, \"prompt_s\": {t_prompt:.3}, \"steps\": {}, \"steps_s\": {t_steps:.3}, \"step_s\": [{}]}}",
        d.total(),
        step_s
            .iter()
            .map(|t| format!("{t:.3}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if let Some(path) = &latents_out {
        let mut named = vec![(
            "latents".to_string(),
            fastcomposer::kernels::device::read(d.latents())?,
        )];
        for (i, e) in embeddings.iter().enumerate() {
            let n = e.values.len();
            named.push((
                format!("subject_{i}"),
                burn::tensor::TensorData::new(e.values.clone(), [n]),
            ));
        }
        write_tensors(path, named)?;
        eprintln!("wrote {}", path.display());
    }
    let Some(out) = out else {
        return Ok(());
    };
    // One image: free everything but the VAE decoder before decoding.
    drop(embeddings);
    drop(model);
    let (vae, latents) = d.into_decoder()?;
    let t0 = std::time::Instant::now();
    let img = fastcomposer::pipeline::decode_rgb_with(&vae, latents)?;
    eprintln!(
        "decode: {{\"decode_s\": {:.3}}}",
        t0.elapsed().as_secs_f64()
    );
    if let Some(m) = monitor {
        let p = m.finish();
        eprintln!(
            "memory after decoding: peak reserved {:.1} MiB, peak allocated {:.1} MiB, largest buffer {:.1} MiB ({} reports)",
            mib(p.reserved),
            mib(p.allocated),
            mib(p.largest_allocation),
            p.samples
        );
    }
    let buf = image::RgbImage::from_raw(img.width as u32, img.height as u32, img.pixels)
        .ok_or_else(|| Error::Device("decoded image has the wrong size".into()))?;
    buf.save_with_format(&out, image::ImageFormat::Png)
        .map_err(|e| Error::Io(format!("cannot write {}: {e}", out.display())))?;
    eprintln!("wrote {} ({}x{})", out.display(), img.width, img.height);
    Ok(())
}
