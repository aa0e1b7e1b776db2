//! Time the UNet forward with random weights (benchmarks and the full-size memory check).
//! Prints one JSON line: load time, first and mean forward time, peak resident memory.

use super::*;

#[derive(clap::Args)]
pub struct Args {
    /// `sd15` (the built-in SD1.5 config), `tiny` (diffusers' test UNet) or a config.json path.
    #[arg(long, default_value = "sd15")]
    pub config: String,
    /// Latent height and width.
    #[arg(long, default_value_t = 32)]
    pub latent: usize,
    #[arg(long, default_value_t = 2)]
    pub batch: usize,
    /// Timed forwards after the first (warm-up) one.
    #[arg(long, default_value_t = 3)]
    pub iters: usize,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[command(flatten)]
    pub attention: AttentionArgs,
    /// How the random weights are stored: f32, or as a bundle of that mode stores them
    /// (int8, int4, mixed: quantized blocks dequantized before each use; f16 loads as f32,
    /// as an f16 bundle does).
    #[arg(long, default_value = "f32")]
    pub weights: String,
    /// Compute dtype: f32, or f16 (the device must support it; wgpu needs `shader-f16`).
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Write the last output (f32) as safetensors `out`, to compare dtypes and weight modes
    /// (the inputs are the same in every run: seeded normals).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Time self-subject attention with this many subjects: each forward is then the reference
    /// pass (the subjects' latents, `subjects × batch` rows, recording) and the generated pass
    /// attending to it (strength 1, masks all ones), as a generation's step runs them.
    #[arg(long, default_value_t = 0)]
    pub self_attention_subjects: usize,
}

pub fn run(args: Args) -> Result<()> {
    let Args {
        config,
        latent,
        batch,
        iters,
        device,
        attention,
        weights,
        dtype,
        out,
        self_attention_subjects: k,
    } = args;
    let unet_config = match config.as_str() {
        "sd15" => UNet2DConditionConfig::default(),
        // diffusers' test UNet: the parity fixture's own config.
        "tiny" => parse_config(
            include_str!("../../../tests/fixtures/unet_tiny/config.json"),
            "unet",
        )?,
        path => parse_config(&read_text(Path::new(path))?, "unet")?,
    };
    let choice: DeviceChoice = device.parse()?;
    let mut device = device::create(choice)?;
    configure_dtype(&mut device, &dtype)?;
    let source = fastcomposer::io::RandomSource::stored_as(weights_mode(&weights)?);
    let options = attention.options()?;
    let kernel = options.attention;
    let loader = Loader::new(&source, &device).with_conv_kernels(options.conv);
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
    let reference = (k > 0).then(|| {
        let masks = vec![vec![1.0f32; latent * latent]; k];
        let z = Tensor::<4>::from_data(
            TensorData::new(
                rng.normals(k * batch * c * latent * latent),
                [k * batch, c, latent, latent],
            ),
            &device,
        );
        let ctx_k = ctx
            .clone()
            .unsqueeze_dim::<4>(0)
            .repeat_dim(0, k)
            .reshape([k * batch, 77, d]);
        let tk = Tensor::<1>::full([k * batch], 500.0, &device);
        (
            SelfReference::new(1.0, masks, [latent, latent]),
            z,
            ctx_k,
            tk,
        )
    });
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..=iters {
        let t0 = Instant::now();
        let out = match &reference {
            None => model.forward(sample.clone(), t.clone(), &ctx)?,
            Some((r, z, ctx_k, tk)) => {
                r.record();
                model.forward_with(z.clone(), tk.clone(), ctx_k, Some(r))?;
                r.apply();
                let out = model.forward_with(sample.clone(), t.clone(), &ctx, Some(r))?;
                r.clear();
                out
            }
        };
        let data = fastcomposer::kernels::device::read(out)?;
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
        "attention": kernel.name(), "self_attention_subjects": k,
        "nonfinite": nonfinite,
        "adapter": (choice == DeviceChoice::Wgpu).then(device::wgpu_adapter).flatten(),
        "load_s": load_s, "first_ms": first, "mean_ms": mean, "iters": rest.len(),
        "peak_rss_mib": peak_rss_mib(),
    });
    println!("{json}");
    Ok(())
}
