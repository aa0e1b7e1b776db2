//! The `fastcomposer` command-line tool.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use burn::tensor::{Tensor, TensorData};

use clap::{Parser, Subcommand};
use fastcomposer::attention::AttentionKernel;
use fastcomposer::bundle::{Bundle, BundleInfo};
use fastcomposer::components::Residency;
use fastcomposer::convert::{ConvertOptions, convert};
use fastcomposer::default_model;
use fastcomposer::device::{self, DeviceChoice, Precision};
use fastcomposer::forward::{Component, forward_component, parse_config};
use fastcomposer::model_dir::ModelDir;
use fastcomposer::models::unet::{UNet2DConditionConfig, UNet2DConditionModel};
use fastcomposer::pipeline::Part;
use fastcomposer::pipeline::{FastComposer, GenerateOptions};
use fastcomposer::preprocess::decode_image;
use fastcomposer::tokenizer::ClipTokenizer;
use fastcomposer::weights::Loader;
use fastcomposer::weights::SafetensorsSource;
use fastcomposer::{Error, Result};
use indicatif::{ProgressBar, ProgressStyle};

// Large tensors are allocated and freed at every layer; glibc returns them to the kernel each
// time (page faults on every reuse), mimalloc keeps them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "fastcomposer",
    version,
    about = "FastComposer subject-driven image generation (SD1.5 family) on burn"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// How attention is computed (`generate`, `forward`, `bench-unet`, `bench-ops`).
#[derive(clap::Args)]
struct AttentionArgs {
    /// Largest attention-scores buffer in MiB (attention is sliced to fit); also the row-band
    /// budget of the VAE decoder.
    #[arg(long, default_value_t = 128)]
    attention_mib: usize,
    /// Attention kernel: sliced (scores in slices within --attention-mib) or fused (burn's fused
    /// operation: flash kernels on wgpu, no scores buffer).
    #[arg(long, default_value = "sliced")]
    attention: String,
}

impl AttentionArgs {
    fn kernel(&self) -> Result<AttentionKernel> {
        AttentionKernel::from_name(&self.attention, self.attention_mib.max(1) << 20)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run one model component on named input tensors (parity checks against the reference
    /// libraries). Inputs and output are safetensors files; the output tensor is `out`.
    Forward {
        /// unet | vae-decoder | vae-encoder | text-encoder | vision-encoder | fuser
        #[arg(long)]
        component: String,
        /// The reference library's saved config.json (fuser: {"embed_dim": D}).
        #[arg(long)]
        config: PathBuf,
        /// Weights by the reference key names.
        #[arg(long)]
        weights: PathBuf,
        /// Input tensors: unet: sample, timestep, encoder_hidden_states; vae-decoder: latents;
        /// vae-encoder: image; text-encoder: input_ids; vision-encoder: pixel_values;
        /// fuser: text, image.
        #[arg(long)]
        inputs: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// cpu | wgpu
        #[arg(long, default_value = "cpu")]
        device: String,
        /// f32 | f16 | auto: the float type the component computes in (the output is f32).
        #[arg(long, default_value = "f32")]
        precision: String,
        #[command(flatten)]
        attention: AttentionArgs,
        /// Print the device-memory peaks of the run (wgpu on Vulkan/DX12; as `generate`'s).
        #[arg(long)]
        memory_report: bool,
    },
    /// Generate an image of the given subjects. Without --model it uses the built-in default
    /// model (small, trained here: cats, robots, birds and cups at 128x128).
    Generate {
        /// The prompt, with a marker right after each subject's class noun,
        /// e.g. "a man <|image|> on the beach".
        #[arg(long)]
        prompt: String,
        /// A subject photo (PNG, JPEG or WebP), once per marker, in marker order.
        #[arg(long = "subject")]
        subjects: Vec<PathBuf>,
        /// A mask per subject, in the same order (white = subject; the background is replaced
        /// by noise). Optional; fewer masks than subjects leaves the rest unmasked.
        #[arg(long = "mask")]
        masks: Vec<PathBuf>,
        #[arg(long, default_value = "")]
        negative: String,
        #[arg(long, default_value_t = 50)]
        steps: usize,
        #[arg(long, default_value_t = 5.0)]
        guidance: f64,
        /// Fraction of the steps (the last ones) conditioned on the subjects.
        #[arg(long, default_value_t = 0.7)]
        alpha: f64,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Image width in pixels (default: the model's native size).
        #[arg(long)]
        width: Option<usize>,
        #[arg(long)]
        height: Option<usize>,
        /// ddim | pndm | euler | lcm (few steps, for LCM-distilled UNets)
        #[arg(long, default_value = "ddim")]
        scheduler: String,
        /// Report wgpu's device-memory peaks (with --device wgpu): reserved, allocated and the
        /// largest buffer, after each stage.
        #[arg(long)]
        memory_report: bool,
        /// auto | resident | sequential. Sequential loads each component when its stage
        /// starts and frees the one before (text encoder, image encoder, UNet, VAE): device
        /// memory holds one stage's weights at a time. auto: sequential for bundles over
        /// 512 MiB. Diffusers-layout directories are always resident.
        #[arg(long, default_value = "auto")]
        memory: String,
        #[command(flatten)]
        attention: AttentionArgs,
        /// A model bundle (.gguf, from `fastcomposer convert`) or a diffusers-layout directory
        /// (text_encoder/, image_encoder/, fuser/, unet/, vae/, scheduler/). Default: the
        /// built-in model.
        #[arg(long)]
        model: Option<PathBuf>,
        /// cpu | wgpu
        #[arg(long, default_value = "cpu")]
        device: String,
        /// auto | f32 | f16: the float type the model computes in. auto: f16 on a GPU that
        /// computes in it (shader-f16), f32 otherwise; f16 needs --device wgpu.
        #[arg(long, default_value = "auto")]
        precision: String,
        /// The image (PNG). Optional when --latents-out is given (then nothing is decoded).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Also write the final latents (`latents`, [1, C, h, w]) and each subject's embedding
        /// (`subject_0`, ...) as f32 safetensors: for comparing runs (e.g. browser vs native).
        #[arg(long)]
        latents_out: Option<PathBuf>,
    },
    /// Convert a checkpoint to a model bundle: a diffusers-layout directory, or one FastComposer
    /// checkpoint (.safetensors or PyTorch .bin with text_encoder., image_encoder., vae., unet.,
    /// postfuse_module. keys).
    Convert {
        #[arg(long)]
        from: PathBuf,
        /// Reference configs (unet/config.json, vae/config.json, text_encoder/config.json,
        /// image_encoder/config.json, fuser/config.json, optional scheduler/scheduler_config.json).
        /// Default for a directory: its own; for a file: SD1.5 + CLIP ViT-L/14.
        #[arg(long)]
        configs: Option<PathBuf>,
        /// f16 | int8 | int4 | mixed
        #[arg(long, default_value = "int8")]
        quant: String,
        #[arg(long)]
        out: PathBuf,
        /// Model name stored in the bundle.
        #[arg(long)]
        name: Option<String>,
        /// A file with the licence text to store in the bundle.
        #[arg(long)]
        license: Option<PathBuf>,
        /// A file with the model card (markdown) to store in the bundle.
        #[arg(long)]
        card: Option<PathBuf>,
        /// Also store the VAE encoder (generation only decodes; left out by default).
        #[arg(long)]
        keep_vae_encoder: bool,
    },
    /// Print a bundle's components, dtypes, sizes and checksum status.
    Inspect { bundle: PathBuf },
    /// Time the UNet forward with random weights (benchmarks and the full-size memory check).
    /// Prints one JSON line: load time, first and mean forward time, peak resident memory.
    BenchUnet {
        /// `sd15` (the built-in SD1.5 config), `tiny` (diffusers' test UNet) or a config.json path.
        #[arg(long, default_value = "sd15")]
        config: String,
        /// Latent height and width.
        #[arg(long, default_value_t = 32)]
        latent: usize,
        #[arg(long, default_value_t = 2)]
        batch: usize,
        /// Timed forwards after the first (warm-up) one.
        #[arg(long, default_value_t = 3)]
        iters: usize,
        #[arg(long, default_value = "cpu")]
        device: String,
        #[command(flatten)]
        attention: AttentionArgs,
        /// How the random weights are stored: f32, or as a bundle of that mode stores them
        /// (int8, int4, mixed: quantized blocks dequantized before each use; f16 loads as f32,
        /// as an f16 bundle does).
        #[arg(long, default_value = "f32")]
        weights: String,
        /// Compute dtype: f32, or f16 (the device must support it; wgpu needs `shader-f16`).
        #[arg(long, default_value = "f32")]
        dtype: String,
        /// Write the last output (f32) as safetensors `out`, to compare dtypes and weight modes
        /// (the inputs are the same in every run: seeded normals).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Time the SD1.5 UNet's layer kinds one at a time at batch 2 and a 64×64 latent (3×3
    /// convolutions per level, matmuls, self/cross-attention, GroupNorm); one JSON line each.
    BenchOps {
        #[arg(long, default_value = "wgpu")]
        device: String,
        #[arg(long, default_value_t = 10)]
        iters: usize,
        /// f32, or a bundle mode (int8, int4, mixed) for quantized weights.
        #[arg(long, default_value = "f32")]
        weights: String,
        /// Compute dtype: f32 or f16.
        #[arg(long, default_value = "f32")]
        dtype: String,
        #[command(flatten)]
        attention: AttentionArgs,
        /// Only the operations whose name contains this (e.g. "conv").
        #[arg(long)]
        only: Option<String>,
    },
    /// Tokenize a prompt with subject markers; prints {"input_ids": [...77], "subject_positions": [...]}.
    Tokenize {
        prompt: String,
        /// The subject marker.
        #[arg(long, default_value = fastcomposer::tokenizer::DEFAULT_MARKER)]
        marker: String,
    },
}

fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::Io(format!("cannot read {}: {e}", path.display())))
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path)
        .map_err(|e| Error::Io(format!("cannot read {}: {e}", path.display())))
}

/// `--memory-report`: wgpu's allocator report sampled every 2 ms (an error on other devices or
/// on backends that do not report).
fn memory_monitor(
    memory_report: bool,
    choice: DeviceChoice,
) -> Result<Option<device::MemoryMonitor>> {
    if !memory_report {
        return Ok(None);
    }
    if choice != DeviceChoice::Wgpu {
        return Err(Error::invalid(
            "--memory-report reports device memory: use it with --device wgpu",
        ));
    }
    match device::MemoryMonitor::start(std::time::Duration::from_millis(2)) {
        Some(m) => Ok(Some(m)),
        None => Err(Error::invalid(
            "--memory-report needs --device wgpu on a backend whose allocator reports (Vulkan, DX12)",
        )),
    }
}

/// Prints the peaks so far (after `stage`), when reporting.
fn report_memory(monitor: &Option<device::MemoryMonitor>, stage: &str) {
    if let Some(m) = monitor {
        let p = m.peak();
        eprintln!(
            "memory after {stage}: peak reserved {:.1} MiB, peak allocated {:.1} MiB, largest buffer {:.1} MiB",
            mib(p.reserved),
            mib(p.allocated),
            mib(p.largest_allocation)
        );
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Forward {
            component,
            config,
            weights,
            inputs,
            out,
            device,
            precision,
            attention,
            memory_report,
        } => {
            let component: Component = component.parse()?;
            let choice: DeviceChoice = device.parse()?;
            let precision: Precision = precision.parse()?;
            let config = read_text(&config)?;
            let weights = SafetensorsSource::from_file(&weights)?;
            let inputs = SafetensorsSource::from_file(&inputs)?;
            let mut device = device::create(choice)?;
            device::set_precision(&mut device, precision)?;
            let monitor = memory_monitor(memory_report, choice)?;
            let kernel = attention.kernel()?;
            let t = std::time::Instant::now();
            // The output is read back, so the device has finished when this returns.
            let data = forward_component(component, &config, &weights, &inputs, &device, kernel)?;
            eprintln!("forward: {:.3} s", t.elapsed().as_secs_f64());
            report_memory(&monitor, "the forward pass");
            write_out(&out, data)
        }
        Command::Generate {
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
            model,
            device,
            precision,
            out,
            latents_out,
            memory_report,
            memory,
            attention,
        } => {
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
            let kernel = attention.kernel()?;
            let opts = GenerateOptions {
                prompt,
                negative_prompt: negative,
                steps,
                guidance,
                alpha,
                seed,
                width,
                height,
                scheduler: scheduler.parse()?,
            };
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
                    let dir = ModelDir::open(path)?;
                    FastComposer::load(&dir.config, &dir, &device, kernel)?
                }
                Some(path) => {
                    let bundle = Bundle::open(path)?;
                    let residency = Residency::parse(&memory, bundle.info.file_len())?;
                    eprintln!("memory: {}", residency.name());
                    FastComposer::load_bundle_with(Arc::new(bundle), &device, kernel, residency)?
                }
                None => {
                    eprintln!("note: using the {}", default_model::LABEL);
                    let bundle = default_model::bundle()?;
                    let residency = Residency::parse(&memory, bundle.info.file_len())?;
                    FastComposer::load_bundle_with(Arc::new(bundle), &device, kernel, residency)?
                }
            };
            report("loading");
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
            // Each step's time, finished on the device (wgpu queues work: wait for it).
            let mut step_s = Vec::with_capacity(d.total());
            while !d.is_done() {
                let t = std::time::Instant::now();
                d.step()?;
                if choice == device::DeviceChoice::Wgpu {
                    d.settle_blocking()?;
                }
                step_s.push(t.elapsed().as_secs_f64());
                bar.inc(1);
            }
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
                    fastcomposer::forward::read(d.latents())?,
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
            let img = fastcomposer::pipeline::decode_rgb_with(&vae, latents)?;
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
        Command::Convert {
            from,
            configs,
            quant,
            out,
            name,
            license,
            card,
            keep_vae_encoder,
        } => {
            let opts = ConvertOptions {
                from,
                configs,
                quant: quant.parse()?,
                out,
                name,
                license: license.as_deref().map(read_text).transpose()?,
                card: card.as_deref().map(read_text).transpose()?,
                keep_vae_encoder,
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
        Command::Inspect { bundle } => {
            let bytes = read_bytes(&bundle)?;
            let info = BundleInfo::parse(&bytes)?;
            println!("bundle: {}", bundle.display());
            println!("name: {}", info.name);
            println!("quantization: {}", info.quantization);
            println!("license: {}", info.license.lines().next().unwrap_or(""));
            println!(
                "file: {} bytes (header {}, data {})",
                info.file_len(),
                info.header.data_start,
                info.header.data_len
            );
            println!(
                "image size: {} px, marker {:?}",
                info.config.native_size(),
                info.config.marker
            );
            for part in Part::ALL {
                let mut by: std::collections::BTreeMap<&str, (usize, u64, u64)> =
                    Default::default();
                for t in info.part_tensors(part) {
                    let e = by.entry(t.ty.name()).or_default();
                    e.0 += 1;
                    e.1 += t.shape.iter().product::<usize>() as u64;
                    e.2 += t.size;
                }
                let desc: Vec<String> = by
                    .iter()
                    .map(|(ty, (n, p, b))| {
                        format!(
                            "{ty}: {n} tensors, {:.2} M params, {:.2} MB",
                            *p as f64 / 1e6,
                            *b as f64 / 1e6
                        )
                    })
                    .collect();
                println!("  {:<13} {}", part.name(), desc.join("; "));
            }
            let mut bad = Vec::new();
            for i in 0..info.n_chunks() {
                let (a, b) = info.chunk_range(i);
                let ok = (b as usize) <= bytes.len()
                    && info.verify_chunk(i, &bytes[a as usize..b as usize]).is_ok();
                if !ok {
                    bad.push(i);
                }
            }
            if bad.is_empty() {
                println!("checksums: all {} chunks OK", info.n_chunks());
                Ok(())
            } else {
                println!(
                    "checksums: {} of {} chunks BAD: {bad:?}",
                    bad.len(),
                    info.n_chunks()
                );
                Err(Error::weights(format!(
                    "{} corrupt chunk(s): {bad:?}",
                    bad.len()
                )))
            }
        }
        Command::BenchUnet {
            config,
            latent,
            batch,
            iters,
            device,
            attention,
            weights,
            dtype,
            out,
        } => {
            let unet_config = match config.as_str() {
                "sd15" => UNet2DConditionConfig::default(),
                "tiny" => serde_json::from_value(serde_json::json!({
                    "block_out_channels": [32, 64], "layers_per_block": 2, "sample_size": 32,
                    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
                    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
                    "cross_attention_dim": 32, "attention_head_dim": 8, "norm_num_groups": 32
                }))
                .map_err(|e| Error::invalid(e.to_string()))?,
                path => parse_config(&read_text(Path::new(path))?, "unet")?,
            };
            let choice: DeviceChoice = device.parse()?;
            let mut device = device::create(choice)?;
            configure_dtype(&mut device, &dtype)?;
            let loader = Loader::random_stored_as(&device, weights_mode(&weights)?);
            let kernel = attention.kernel()?;
            let t0 = Instant::now();
            let model = UNet2DConditionModel::load(&loader, &unet_config, kernel)?;
            device.sync().map_err(|e| Error::Device(format!("{e:?}")))?;
            let load_s = t0.elapsed().as_secs_f64();
            let c = unet_config.in_channels;
            let d = unet_config.context_dim();
            let mut rng = fastcomposer::rng::Pcg32::new(0);
            let sample = Tensor::<4>::from_data(
                TensorData::new(
                    rng.normals(batch * c * latent * latent),
                    [batch, c, latent, latent],
                ),
                &device,
            );
            let ctx = Tensor::<3>::from_data(
                TensorData::new(rng.normals(batch * 77 * d), [batch, 77, d]),
                &device,
            );
            let t = Tensor::<1>::full([batch], 500.0, &device);
            let mut times = Vec::new();
            let mut last = None;
            for _ in 0..=iters {
                let t0 = Instant::now();
                let out = model.forward(sample.clone(), t.clone(), &ctx)?;
                let data = fastcomposer::forward::read(out)?;
                let data_shape = data.shape().to_vec();
                let v = data
                    .convert::<f32>()
                    .try_into_vec::<f32>()
                    .map_err(|e| Error::Device(format!("{e:?}")))?;
                times.push(t0.elapsed().as_secs_f64() * 1e3);
                last = Some((v, data_shape));
            }
            // Reported, not an error: a reduced-precision run that overflows still gets timed.
            let nonfinite = last
                .as_ref()
                .map_or(0, |(v, _)| v.iter().filter(|x| !x.is_finite()).count());
            if let (Some(path), Some((v, shape))) = (out, last) {
                write_out(&path, TensorData::new(v, shape))?;
            }
            let first = times[0];
            let rest = &times[1..];
            let mean = if rest.is_empty() {
                first
            } else {
                rest.iter().sum::<f64>() / rest.len() as f64
            };
            let json = serde_json::json!({
                "config": config, "latent": latent, "batch": batch, "device": format!("{choice:?}"),
                "weights": weights, "dtype": dtype, "attention_mib": attention.attention_mib,
                "attention": kernel.name(),
                "nonfinite": nonfinite,
                "adapter": (choice == DeviceChoice::Wgpu).then(device::wgpu_adapter).flatten(),
                "load_s": load_s, "first_ms": first, "mean_ms": mean, "iters": rest.len(),
                "peak_rss_mib": peak_rss_mib(),
            });
            println!("{json}");
            Ok(())
        }
        Command::BenchOps {
            device,
            iters,
            weights,
            dtype,
            attention,
            only,
        } => {
            let choice: DeviceChoice = device.parse()?;
            let mut device = device::create(choice)?;
            configure_dtype(&mut device, &dtype)?;
            let quant = weights_mode(&weights)?;
            let kernel = attention.kernel()?;
            let adapter = (choice == DeviceChoice::Wgpu)
                .then(device::wgpu_adapter)
                .flatten();
            for t in fastcomposer::bench::sd15_ops(&device, iters, quant, kernel, only.as_deref())?
            {
                let mut v = serde_json::to_value(&t).map_err(|e| Error::invalid(e.to_string()))?;
                v["dtype"] = dtype.clone().into();
                v["adapter"] = adapter.clone().into();
                println!("{v}");
            }
            Ok(())
        }
        Command::Tokenize { prompt, marker } => {
            let tok = ClipTokenizer::with_marker(&marker)?;
            let e = tok.encode_prompt(&prompt)?;
            if e.truncated {
                eprintln!("warning: the prompt is longer than 77 tokens and was truncated");
            }
            let json = serde_json::json!({
                "input_ids": e.input_ids,
                "subject_positions": e.subject_positions,
            });
            println!("{json}");
            Ok(())
        }
    }
}

/// `--weights`: `f32` (plain random weights) or a bundle mode (int8, int4, mixed, f16).
fn weights_mode(weights: &str) -> Result<Option<fastcomposer::bundle::write::QuantMode>> {
    match weights {
        "f32" => Ok(None),
        mode => mode.parse().map(Some),
    }
}

/// `--dtype` (f32 or f16) of the benchmarks: the device's compute type; before any tensor is
/// created.
fn configure_dtype(device: &mut burn::tensor::Device, dtype: &str) -> Result<()> {
    let precision = match dtype {
        "f32" => Precision::F32,
        "f16" => Precision::F16,
        other => {
            return Err(Error::invalid(format!(
                "unknown --dtype `{other}` (expected f32 or f16)"
            )));
        }
    };
    device::set_precision(device, precision).map(|_| ())
}

/// Peak resident set size of this process (Linux), in MiB.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn write_out(path: &Path, data: burn::tensor::TensorData) -> Result<()> {
    write_tensors(path, vec![("out".to_string(), data)])
}

/// Write named f32 tensors as one safetensors file.
fn write_tensors(path: &Path, tensors: Vec<(String, burn::tensor::TensorData)>) -> Result<()> {
    let mut encoded = Vec::with_capacity(tensors.len());
    for (name, data) in tensors {
        let shape = data.shape().to_vec();
        let values: Vec<f32> = data
            .try_into_vec::<f32>()
            .map_err(|e| Error::Device(format!("unexpected output type: {e:?}")))?;
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        encoded.push((name, shape, bytes));
    }
    let views = encoded
        .iter()
        .map(|(name, shape, bytes)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                .map(|v| (name.as_str(), v))
                .map_err(|e| Error::Io(format!("cannot encode {name}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::tensor::serialize_to_file(views, None, path)
        .map_err(|e| Error::Io(format!("cannot write {}: {e}", path.display())))
}

/// mimalloc's `mi_option_purge_delay` (mimalloc.h; not exported by libmimalloc-sys 0.1).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() -> ExitCode {
    // Freed memory is kept for reuse instead of being returned to the kernel 10 ms later (the
    // default): a UNet step frees and re-allocates the same large activations every layer, and
    // each return made the next use fault in zeroed pages again. Peak memory is unchanged (the
    // same blocks are reused). `MIMALLOC_PURGE_DELAY` in the environment still decides.
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets an allocator option (an integer) before any thread is started.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}
