//! The FastComposer pipeline:
//!
//! 1. check inputs;
//! 2. encode subjects (photos -> projected image embeddings; reusable values);
//! 3. encode the prompt three ways: negative, text-only (markers removed as tokens), augmented
//!    (text-only with each subject's fused embedding at its flagged token);
//! 4. timesteps;
//! 5. initial latents from a seed (our own RNG, identical natively and in wasm) or given;
//! 6. the denoising loop with classifier-free guidance as one batch of 2, text-only
//!    conditioning while `i <= (1 - alpha) * N`, augmented after (delayed subject conditioning);
//! 7. decode with the VAE to RGB.
//!
//! [`FastComposer::encode_subject`] is step 2; [`FastComposer::start`] does steps 1 and 3–5 and
//! returns a [`Denoiser`], which runs step 6 one denoising step per call, and step 7.
//! [`Denoiser::run`] is the one denoising loop every face uses (the CLI, the wasm API, the
//! tests): each step finished on the device and timed, then a [`StepHooks`] call that may
//! report progress (with a preview every so many steps) or cancel. [`FastComposer::generate_async`]
//! is steps 1–7 around it (natively, `futures_lite::future::block_on` runs it to the end).

use std::sync::Arc;

use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use web_time::Instant;

pub mod components;
pub mod controls;
pub mod default_model;
pub mod preprocess;

use crate::config::{ModelConfig, ModelWeights};
use crate::error::{Error, Result};
use crate::io::lora::{LoraBundle, LoraInput};
use crate::kernels::KernelOptions;
use crate::models::autoencoder_tiny::TinyDecoder;
use crate::models::clip_text::ClipTextModel;
use crate::models::clip_vision::ClipVisionModel;
use crate::models::fuser::Fuser;
use crate::models::unet::UNet2DConditionModel;
use crate::models::vae::{VaeDecoder, VaeEncoder};
use crate::rng::Pcg32;
use crate::scheduler::{Scheduler, SchedulerKind};
use crate::tokenizer::ClipTokenizer;
use components::{Components, Residency, Stage, StageKind, load_all};
pub use controls::{Attribute, SubjectReference, Suppression};

/// Most subjects one prompt may hold (FastComposer trained with up to 4).
pub const MAX_SUBJECTS: usize = 4;
/// Largest width or height accepted.
pub const MAX_SIDE: usize = 2048;

/// A subject's projected image embedding: compute once, reuse across generations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubjectEmbedding {
    pub values: Vec<f32>,
    /// The photo's latents and mask for self-subject attention (models with a VAE encoder).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<SubjectReference>,
}

/// What to generate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GenerateOptions {
    /// The prompt, with one marker after each subject's class noun.
    pub prompt: String,
    pub negative_prompt: String,
    pub steps: usize,
    pub guidance: f64,
    /// Fraction of the steps that use the subjects (the last ones). 0 = text only.
    pub alpha: f64,
    pub seed: u64,
    /// Defaults to the model's native size.
    pub width: Option<usize>,
    pub height: Option<usize>,
    pub scheduler: SchedulerKind,
    /// Which decoder turns the final latents into the image.
    pub decoder: DecoderKind,
    /// Attribute sliders: each moves one subject between two words (see [`controls`]).
    pub attributes: Vec<Attribute>,
    /// Texts projected out of the prompt's embeddings (DECOR; see [`controls`]).
    pub suppress: Vec<Suppression>,
    /// Self-subject attention's strength `w` (DreamTuner; see [`controls`]): 0 = off. It needs
    /// subjects encoded by a model with a VAE encoder, and about doubles a step's cost.
    pub self_attention: f64,
}

/// The decoder that makes the image from the final latents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DecoderKind {
    /// The VAE's own decoder.
    #[default]
    Full,
    /// The tiny autoencoder's (TAESD), where the model has one: a small fraction of the cost.
    Tiny,
}

impl std::str::FromStr for DecoderKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "full" => Ok(DecoderKind::Full),
            "tiny" => Ok(DecoderKind::Tiny),
            other => Err(Error::invalid(format!(
                "unknown decoder `{other}` (expected full or tiny)"
            ))),
        }
    }
}

/// A decoder and what it needs: the VAE's or the tiny autoencoder's.
#[derive(Clone)]
pub enum ImageDecoder {
    Full(Arc<VaeDecoder>),
    Tiny(Arc<TinyDecoder>),
}

impl ImageDecoder {
    /// Final latents `[B, C, h, w]` (as the UNet makes them) to the image `[B, 3, H, W]` in
    /// about [-1, 1]: divided by the decoder's scaling factor first.
    pub fn decode(&self, latents: Tensor<4>) -> Result<Tensor<4>> {
        match self {
            ImageDecoder::Full(vae) => vae.forward(latents / vae.config.scaling_factor),
            ImageDecoder::Tiny(t) => t.forward(latents / t.config.scaling_factor),
        }
    }
}

impl GenerateOptions {
    /// The options a generation on `config`'s model starts from: its recorded defaults
    /// (scheduler, steps, guidance, alpha) over [`GenerateOptions::default`].
    pub fn for_model(config: &ModelConfig) -> Result<Self> {
        let d = &config.defaults;
        let base = Self::default();
        Ok(Self {
            steps: d.steps.unwrap_or(base.steps),
            guidance: d.guidance.unwrap_or(base.guidance),
            alpha: d.alpha.unwrap_or(base.alpha),
            scheduler: match &d.scheduler {
                Some(s) => s
                    .parse()
                    .map_err(|e| Error::invalid(format!("the model's default scheduler: {e}")))?,
                None => base.scheduler,
            },
            ..base
        })
    }
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            prompt: String::new(),
            negative_prompt: String::new(),
            steps: 50,
            guidance: 5.0,
            alpha: 0.7,
            seed: 0,
            width: None,
            height: None,
            scheduler: SchedulerKind::Ddim,
            decoder: DecoderKind::Full,
            attributes: Vec::new(),
            suppress: Vec::new(),
            self_attention: 0.0,
        }
    }
}

/// A generated image, 8-bit RGB, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<u8>,
}

struct Inner {
    config: ModelConfig,
    tokenizer: ClipTokenizer,
    components: Components,
    device: Device,
}

/// A loaded FastComposer model. Cheap to clone (shared).
#[derive(Clone)]
pub struct FastComposer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for FastComposer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FastComposer")
            .field("config", &self.inner.config)
            .finish()
    }
}

impl FastComposer {
    /// Load a verified bundle (its own config and tokenizer vocabulary), every component
    /// resident.
    pub fn load_bundle(
        bundle: &crate::io::bundle::Bundle,
        device: &Device,
        kernels: impl Into<KernelOptions>,
    ) -> Result<Self> {
        let config = bundle.config();
        let tokenizer = ClipTokenizer::from_gz(&bundle.info.tokenizer_bpe_gz, &config.marker)?;
        Self::load_resident(config, bundle, tokenizer, device, kernels.into())
    }

    /// Load a verified bundle with the given residency. Sequential keeps the bundle (its
    /// quantized bytes, in host memory) and loads each stage's components when the stage
    /// starts ([`crate::components`]); nothing is on the device until then, and a tensor that
    /// does not fit the config is reported (a weights error naming the key) by the call whose
    /// stage needs it rather than here.
    pub fn load_bundle_with(
        bundle: Arc<crate::io::bundle::Bundle>,
        device: &Device,
        kernels: impl Into<KernelOptions>,
        residency: Residency,
    ) -> Result<Self> {
        Self::load_bundle_with_loras(bundle, Vec::new(), device, kernels, residency)
    }

    /// [`Self::load_bundle_with`], with LoRA files merged into the UNet's and the text
    /// encoder's weights as they are loaded ([`LoraBundle`]: quantized weights are dequantized,
    /// updated and quantized again in their own format). A LoRA that does not fit the model
    /// is an error before anything is loaded.
    pub fn load_bundle_with_loras(
        bundle: Arc<crate::io::bundle::Bundle>,
        loras: Vec<LoraInput>,
        device: &Device,
        kernels: impl Into<KernelOptions>,
        residency: Residency,
    ) -> Result<Self> {
        let kernels = kernels.into();
        let config = bundle.config().clone();
        let tokenizer = ClipTokenizer::from_gz(&bundle.info.tokenizer_bpe_gz, &config.marker)?;
        let weights: Arc<dyn ModelWeights + Send + Sync> = if loras.is_empty() {
            bundle
        } else {
            Arc::new(LoraBundle::new(bundle, loras)?)
        };
        if residency == Residency::Resident {
            return Self::load_resident(&config, weights.as_ref(), tokenizer, device, kernels);
        }
        config.check()?;
        Self::from_parts(
            &config,
            tokenizer,
            Components::Sequential {
                weights,
                kernels,
                current: std::sync::Mutex::new(None),
            },
            device,
        )
    }

    /// Load every component; unexpected or missing tensors are errors naming the key.
    pub fn load(
        config: &ModelConfig,
        weights: &dyn ModelWeights,
        device: &Device,
        kernels: impl Into<KernelOptions>,
    ) -> Result<Self> {
        let tokenizer = ClipTokenizer::with_marker(&config.marker)?;
        Self::load_resident(config, weights, tokenizer, device, kernels.into())
    }

    fn load_resident(
        config: &ModelConfig,
        weights: &dyn ModelWeights,
        tokenizer: ClipTokenizer,
        device: &Device,
        kernels: KernelOptions,
    ) -> Result<Self> {
        config.check()?;
        let loaded = load_all(config, weights, device, kernels)?;
        Self::from_parts(config, tokenizer, Components::Resident(loaded), device)
    }

    fn from_parts(
        config: &ModelConfig,
        tokenizer: ClipTokenizer,
        components: Components,
        device: &Device,
    ) -> Result<Self> {
        GenerateOptions::for_model(config)?;
        Ok(Self {
            inner: Arc::new(Inner {
                config: config.clone(),
                tokenizer,
                components,
                device: device.clone(),
            }),
        })
    }

    fn stage(&self, kind: StageKind) -> Result<Stage> {
        self.inner
            .components
            .stage(kind, &self.inner.config, &self.inner.device)
    }

    /// The text encoder and fuser (loading them, sequentially).
    fn text(&self) -> Result<(Arc<ClipTextModel>, Arc<Fuser>)> {
        match self.stage(StageKind::Text)? {
            Stage::Text(t, f) => Ok((t, f)),
            _ => unreachable!("text stage"),
        }
    }

    /// The image encoder and the VAE encoder (where the model has one).
    fn image_encoder(&self) -> Result<(Arc<ClipVisionModel>, Option<Arc<VaeEncoder>>)> {
        match self.stage(StageKind::Image)? {
            Stage::Image(m, e) => Ok((m, e)),
            _ => unreachable!("image stage"),
        }
    }

    fn unet(&self) -> Result<Arc<UNet2DConditionModel>> {
        match self.stage(StageKind::Unet)? {
            Stage::Unet(m) => Ok(m),
            _ => unreachable!("unet stage"),
        }
    }

    /// The VAE decoder (loading it, sequentially).
    pub fn vae(&self) -> Result<Arc<VaeDecoder>> {
        match self.stage(StageKind::Vae)? {
            Stage::Vae(m) => Ok(m),
            _ => unreachable!("vae stage"),
        }
    }

    /// The decoder `kind` names (loading it, sequentially); an error where the model has no
    /// tiny autoencoder and it is asked for.
    pub fn decoder(&self, kind: DecoderKind) -> Result<ImageDecoder> {
        Ok(match kind {
            DecoderKind::Full => ImageDecoder::Full(self.vae()?),
            DecoderKind::Tiny => match self.stage(StageKind::TinyVae)? {
                Stage::TinyVae(t) => ImageDecoder::Tiny(t),
                _ => unreachable!("tiny vae stage"),
            },
        })
    }

    /// Whether the model has a tiny autoencoder (`DecoderKind::Tiny`).
    pub fn has_tiny_vae(&self) -> bool {
        self.inner.config.tiny_vae.is_some()
    }

    /// How the components are kept.
    pub fn residency(&self) -> Residency {
        self.inner.components.residency()
    }

    /// Sequential: the name of the stage whose components are loaded now (`text`, `image`,
    /// `unet`, `vae`), if any.
    pub fn loaded_stage(&self) -> Option<&'static str> {
        self.inner.components.current().map(|k| match k {
            StageKind::Text => "text",
            StageKind::Image => "image",
            StageKind::Unet => "unet",
            StageKind::Vae => "vae",
            StageKind::TinyVae => "tiny_vae",
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.inner.config
    }

    /// The options a generation starts from: the model's recorded defaults over the library's
    /// ([`GenerateOptions::for_model`]; checked when the model was loaded).
    pub fn default_options(&self) -> GenerateOptions {
        GenerateOptions::for_model(&self.inner.config).unwrap_or_default()
    }

    pub fn device(&self) -> &Device {
        &self.inner.device
    }

    pub fn tokenizer(&self) -> &ClipTokenizer {
        &self.inner.tokenizer
    }

    /// The image encoder's input size (224 for CLIP ViT-L/14).
    pub fn subject_size(&self) -> usize {
        self.inner.config.image_encoder.image_size
    }

    /// The text encoder's output for a prompt without markers, `[1, 77, D]`.
    pub fn text_embeddings(&self, prompt: &str) -> Result<Tensor<3>> {
        let e = self.inner.tokenizer.encode_prompt(prompt)?;
        self.text()?.0.forward_ids(&[e.input_ids])
    }

    /// The VAE decoder on latents (before dividing by the scaling factor): `[B, 3, H, W]`.
    pub fn decode_latents(&self, latents: Tensor<4>) -> Result<Tensor<4>> {
        self.decoder(DecoderKind::Full)?.decode(latents)
    }

    /// Step 2 for one photo already preprocessed to `[3, S, S]`: the embedding on the device.
    pub fn subject_tensor(&self, pixel_values: &[f32]) -> Result<Tensor<2>> {
        let s = self.subject_size();
        if pixel_values.len() != 3 * s * s || pixel_values.iter().any(|v| !v.is_finite()) {
            return Err(Error::invalid(format!(
                "subject pixel values must be 3x{s}x{s} finite numbers"
            )));
        }
        let px = Tensor::<4>::from_data(
            TensorData::new(pixel_values.to_vec(), [1, 3, s, s]),
            &self.inner.device,
        );
        self.image_encoder()?.0.forward(px)
    }

    /// Step 2 for one photo already preprocessed to `[3, S, S]` (no reference for self-subject
    /// attention: that needs the photo).
    pub fn encode_subject_pixels(&self, pixel_values: &[f32]) -> Result<SubjectEmbedding> {
        let data = crate::kernels::device::read(self.subject_tensor(pixel_values)?)?;
        embedding_from(data)
    }

    /// [`Self::encode_subject_pixels`] without blocking (WebGPU in a browser).
    pub async fn encode_subject_pixels_async(
        &self,
        pixel_values: &[f32],
    ) -> Result<SubjectEmbedding> {
        let data = crate::kernels::device::read_async(self.subject_tensor(pixel_values)?).await?;
        embedding_from(data)
    }

    /// Step 2 for a decoded photo (and an optional mask: background replaced by noise for the
    /// image encoder; the reference's mask for self-subject attention).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn encode_subject(
        &self,
        photo: &image::RgbImage,
        mask: Option<&image::GrayImage>,
    ) -> Result<SubjectEmbedding> {
        futures_lite::future::block_on(self.encode_subject_async(photo, mask))
    }

    /// [`Self::encode_subject`] without blocking (WebGPU in a browser).
    pub async fn encode_subject_async(
        &self,
        photo: &image::RgbImage,
        mask: Option<&image::GrayImage>,
    ) -> Result<SubjectEmbedding> {
        let masked;
        let clip_photo = match mask {
            Some(m) => {
                masked = crate::pipeline::preprocess::apply_mask(photo, m)?;
                &masked
            }
            None => photo,
        };
        let px =
            crate::pipeline::preprocess::subject_pixel_values(clip_photo, self.subject_size())?;
        let mut e = self.encode_subject_pixels_async(&px).await?;
        if let (_, Some(encoder)) = self.image_encoder()? {
            let c = &self.inner.config;
            let size = c.native_size();
            let f = c.vae.scale_factor();
            let (pixels, mask) = controls::reference_inputs(photo, mask, size, f)?;
            let x = Tensor::<4>::from_data(
                TensorData::new(pixels, [1, 3, size, size]),
                &self.inner.device,
            );
            let ch = c.vae.latent_channels;
            let latents = encoder.forward(x)?.narrow(1, 0, ch) * c.vae.scaling_factor;
            let latents = crate::kernels::device::read_async(latents)
                .await?
                .try_into_vec::<f32>()
                .map_err(|e| Error::Device(format!("{e:?}")))?;
            e.reference = Some(SubjectReference {
                latents,
                mask,
                channels: ch,
                height: size / f,
                width: size / f,
            });
        }
        Ok(e)
    }

    /// Steps 1, 3, 4 and 5: check everything and set up the denoising loop.
    /// `latents` (`[1, C, h, w]` values) replaces the seeded noise when given.
    pub fn start(
        &self,
        opts: &GenerateOptions,
        subjects: &[SubjectEmbedding],
        latents: Option<Vec<f32>>,
    ) -> Result<Denoiser> {
        let inner = &self.inner;
        let c = &inner.config;
        // 1. check inputs
        let (width, height) = self.check_options(opts)?;
        if opts.decoder == DecoderKind::Tiny && !self.has_tiny_vae() {
            return Err(components::no_tiny_vae());
        }
        let prompt = inner.tokenizer.encode_prompt(&opts.prompt)?;
        let k = prompt.subject_positions.len();
        if subjects.len() > MAX_SUBJECTS {
            return Err(Error::invalid(format!(
                "{} subjects given; at most {MAX_SUBJECTS} are supported",
                subjects.len()
            )));
        }
        if k != subjects.len() {
            return Err(Error::invalid(format!(
                "the prompt has {k} subject marker(s) `{}` but {} subject image(s) were given; \
                 put one marker right after each subject's class noun",
                c.marker,
                subjects.len()
            )));
        }
        let d = c.text_encoder.hidden_size;
        if let Some((i, _)) = subjects
            .iter()
            .enumerate()
            .find(|(_, s)| s.values.len() != d)
        {
            return Err(Error::invalid(format!(
                "subject {} has an embedding of size {}, this model needs {d}",
                i + 1,
                subjects[i].values.len()
            )));
        }
        if !opts.self_attention.is_finite() || opts.self_attention < 0.0 {
            return Err(Error::invalid(format!(
                "self-attention strength must be a finite number >= 0, got {}",
                opts.self_attention
            )));
        }
        let references = if opts.self_attention > 0.0 && k > 0 {
            let refs = subjects
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    s.reference.as_ref().ok_or_else(|| {
                        Error::invalid(format!(
                            "self-attention needs each subject's photo latents, and subject {} has none: \
                             the model has no VAE encoder (convert it with --keep-vae-encoder), or the \
                             subject was encoded without its photo",
                            i + 1
                        ))
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            Some(refs)
        } else {
            None
        };
        controls::check_attributes(&inner.tokenizer, &opts.attributes, k)?;
        controls::check_suppression(&inner.tokenizer, &opts.suppress)?;
        let mut warnings = Vec::new();
        if prompt.truncated {
            warnings.push("the prompt is longer than 77 tokens; the end was cut off".to_string());
        }
        let negative = inner.tokenizer.encode_prompt(&opts.negative_prompt)?;
        if !negative.subject_positions.is_empty() {
            return Err(Error::invalid(
                "the negative prompt must not contain subject markers",
            ));
        }
        if negative.truncated {
            warnings.push(
                "the negative prompt is longer than 77 tokens; the end was cut off".to_string(),
            );
        }

        // 3. three conditionings: [negative, text-only] in one batch, then augmented.
        let dev = &inner.device;
        let (text_encoder, fuser) = self.text()?;
        let hidden =
            text_encoder.forward_ids(&[negative.input_ids.clone(), prompt.input_ids.clone()])?;
        let negative_embeds = hidden.clone().narrow(0, 0, 1);
        let mut text_only = hidden.narrow(0, 1, 1);
        // Attribute sliders: on the subject's noun token before fusion, so that both the
        // text-only steps and the fuser see the moved word.
        for a in opts.attributes.iter().filter(|a| a.strength != 0.0) {
            let p = prompt.subject_positions[a.subject - 1];
            let dir = controls::attribute_direction(
                &text_encoder,
                &inner.tokenizer,
                a,
                prompt.input_ids[p],
            )?;
            let row = text_only.clone().narrow(1, p, 1) + dir.reshape([1, 1, d]) * a.strength;
            text_only = text_only.slice_assign([0..1, p..p + 1, 0..d], row);
        }
        let mut augmented = text_only.clone();
        if k > 0 {
            let pos = &prompt.subject_positions;
            let t_rows = Tensor::cat(
                pos.iter()
                    .map(|&p| text_only.clone().narrow(1, p, 1).reshape([1, d]))
                    .collect(),
                0,
            );
            let flat: Vec<f32> = subjects
                .iter()
                .flat_map(|s| s.values.iter().copied())
                .collect();
            let v_rows = Tensor::<2>::from_data(TensorData::new(flat, [k, d]), dev);
            let fused = fuser.forward(t_rows, v_rows)?;
            for (j, &p) in pos.iter().enumerate() {
                let row = fused.clone().narrow(0, j, 1).reshape([1, 1, d]);
                augmented = augmented.slice_assign([0..1, p..p + 1, 0..d], row);
            }
        }
        // Suppression: after fusion, so that what a subject's photo brings is projected too.
        for s in opts.suppress.iter().filter(|s| s.strength != 0.0) {
            let basis = controls::suppression_basis(&text_encoder, &inner.tokenizer, &s.text)?;
            text_only = controls::suppress(text_only, &basis, s.strength);
            augmented = controls::suppress(augmented, &basis, s.strength);
        }

        // 4. timesteps
        let scheduler = c.scheduler.build(opts.scheduler, opts.steps, opts.seed)?;

        // 5. initial latents
        let f = c.vae.scale_factor();
        let shape = [1, c.unet.in_channels, height / f, width / f];
        let n: usize = shape.iter().product();
        let values = match latents {
            Some(v) if v.len() == n && v.iter().all(|x| x.is_finite()) => v,
            Some(v) => {
                return Err(Error::invalid(format!(
                    "initial latents: {} finite values expected for shape {shape:?}, got {}",
                    n,
                    v.len()
                )));
            }
            None => Pcg32::new(opts.seed).normals(n),
        };
        let latents = Tensor::<4>::from_data(TensorData::new(values, shape), dev)
            * scheduler.init_noise_sigma();
        let self_attention = match references {
            Some(refs) => Some(controls::SelfAttention::new(
                opts.self_attention,
                &refs,
                [shape[1], shape[2], shape[3]],
                opts.seed,
                c.scheduler.alphas_cumprod(),
                dev,
            )?),
            None => None,
        };

        let guided = opts.guidance > 1.0;
        let switch = ((1.0 - opts.alpha) * opts.steps as f64).floor();
        let cond = |c: Tensor<3>| {
            if guided {
                Tensor::cat(vec![negative_embeds.clone(), c], 0)
            } else {
                c
            }
        };
        Ok(Denoiser {
            model: self.clone(),
            text_only: cond(text_only),
            augmented: cond(augmented),
            scheduler,
            latents,
            index: 0,
            switch,
            guidance: opts.guidance,
            guided,
            decoder: opts.decoder,
            self_attention,
            warnings,
        })
    }

    fn check_options(&self, opts: &GenerateOptions) -> Result<(usize, usize)> {
        let c = &self.inner.config;
        if opts.steps == 0 || opts.steps > c.scheduler.num_train_timesteps {
            return Err(Error::invalid(format!(
                "steps must be between 1 and {}, got {}",
                c.scheduler.num_train_timesteps, opts.steps
            )));
        }
        if !opts.alpha.is_finite() || !(0.0..=1.0).contains(&opts.alpha) {
            return Err(Error::invalid(format!(
                "alpha must be between 0 and 1, got {}",
                opts.alpha
            )));
        }
        if !opts.guidance.is_finite() || opts.guidance < 0.0 {
            return Err(Error::invalid(format!(
                "guidance must be a finite number >= 0, got {}",
                opts.guidance
            )));
        }
        let m = c.size_multiple();
        let native = c.native_size();
        let w = opts.width.unwrap_or(native);
        let h = opts.height.unwrap_or(native);
        for (what, v) in [("width", w), ("height", h)] {
            if v == 0 || v % m != 0 || v > MAX_SIDE {
                return Err(Error::invalid(format!(
                    "{what} must be a positive multiple of {m} (the latent factor) up to {MAX_SIDE}, got {v}"
                )));
            }
        }
        Ok((w, h))
    }

    /// Steps 1–7 in one call, without blocking (WebGPU in a browser): [`Self::start`], the
    /// loop ([`Denoiser::run`]) and the decode, each finished on the device and timed.
    pub async fn generate_async(
        &self,
        opts: &GenerateOptions,
        subjects: &[SubjectEmbedding],
        preview_every: usize,
        hooks: &mut impl StepHooks,
    ) -> Result<Generated> {
        let t0 = Instant::now();
        let mut d = self.start(opts, subjects, None)?;
        d.settle().await?;
        let setup_ms = ms_since(t0);
        let step_ms = d.run(preview_every, hooks).await?;
        let t1 = Instant::now();
        let image = d.decode_rgb_async().await?;
        let decode_ms = ms_since(t1);
        Ok(Generated {
            image,
            warnings: d.warnings,
            timings: Timings {
                setup_ms,
                step_ms,
                decode_ms,
            },
        })
    }
}

/// What [`Denoiser::run`] tells its hooks after each step.
#[derive(Debug, Clone, PartialEq)]
pub struct StepReport {
    /// Steps done (1 after the first).
    pub step: usize,
    /// Model evaluations in all.
    pub total: usize,
    /// This step's time, finished on the device.
    pub ms: f64,
    /// A latent preview ([`latent_preview`]), every `preview_every` steps but the last.
    pub preview: Option<RgbImage>,
}

/// Called by [`Denoiser::run`] after every step: report progress, and return `false` to cancel
/// (the loop ends with [`Error::Cancelled`]). A closure `FnMut(&StepReport) -> bool` is one.
#[allow(async_fn_in_trait)] // used with concrete types, never as `dyn` or across threads
pub trait StepHooks {
    async fn after_step(&mut self, report: &StepReport) -> bool;
}

impl<F: FnMut(&StepReport) -> bool> StepHooks for F {
    async fn after_step(&mut self, report: &StepReport) -> bool {
        self(report)
    }
}

/// A generation's stage times in milliseconds, each finished on the device.
#[derive(Debug, Clone, PartialEq)]
pub struct Timings {
    /// Checks, the prompt's encodings, the timesteps and the initial latents.
    pub setup_ms: f64,
    /// Each denoising step.
    pub step_ms: Vec<f64>,
    pub decode_ms: f64,
}

impl Timings {
    pub fn steps_ms(&self) -> f64 {
        self.step_ms.iter().sum()
    }

    pub fn total_ms(&self) -> f64 {
        self.setup_ms + self.steps_ms() + self.decode_ms
    }
}

/// What [`FastComposer::generate_async`] returns.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    pub image: RgbImage,
    /// Notes for the user (a truncated prompt).
    pub warnings: Vec<String>,
    pub timings: Timings,
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// Steps 6 and 7, one step at a time.
pub struct Denoiser {
    model: FastComposer,
    text_only: Tensor<3>,
    augmented: Tensor<3>,
    scheduler: Box<dyn Scheduler>,
    latents: Tensor<4>,
    index: usize,
    switch: f64,
    guidance: f64,
    guided: bool,
    decoder: DecoderKind,
    self_attention: Option<controls::SelfAttention>,
    /// Notes for the user (a truncated prompt).
    pub warnings: Vec<String>,
}

impl Denoiser {
    /// Number of model evaluations (PNDM evaluates one more than `steps`).
    pub fn total(&self) -> usize {
        self.scheduler.timesteps().len()
    }

    /// Steps done so far.
    pub fn done(&self) -> usize {
        self.index
    }

    pub fn is_done(&self) -> bool {
        self.index >= self.total()
    }

    /// Whether step `i` uses the subjects: delayed subject conditioning switches from the
    /// text-only to the augmented conditioning after step `(1 - alpha) * N`.
    pub fn uses_subjects(&self, i: usize) -> bool {
        (i as f64) > self.switch
    }

    /// One denoising step.
    pub fn step(&mut self) -> Result<()> {
        if self.is_done() {
            return Err(Error::invalid("the denoising loop has already finished"));
        }
        let i = self.index;
        let t = self.scheduler.timesteps()[i];
        let unet = self.model.unet()?;
        let cond = if self.uses_subjects(i) {
            &self.augmented
        } else {
            &self.text_only
        };
        let x = self.scheduler.scale_model_input(self.latents.clone(), t);
        // Self-subject attention: the subjects' reference pass first, then this pass reads it.
        let reference = match &self.self_attention {
            Some(sa) => Some(sa.reference_pass(&unet, t, cond)?),
            None => None,
        };
        let eps = if self.guided {
            let x2 = Tensor::cat(vec![x.clone(), x], 0);
            let tt = Tensor::<1>::full([2], t as f32, &x2.device());
            let e = unet.forward_with(x2, tt, cond, reference)?;
            let eu = e.clone().narrow(0, 0, 1);
            let ec = e.narrow(0, 1, 1);
            eu.clone() + (ec - eu) * self.guidance
        } else {
            let tt = Tensor::<1>::full([1], t as f32, &x.device());
            unet.forward_with(x, tt, cond, reference)?
        };
        if let Some(sa) = &self.self_attention {
            sa.clear();
        }
        self.latents = self.scheduler.step(eps, t, self.latents.clone());
        self.index += 1;
        Ok(())
    }

    /// The denoising loop: every remaining step, each finished on the device and timed, then
    /// `hooks` (with a latent preview every `preview_every` steps but the last; 0: none).
    /// Returns each step's time in milliseconds; [`Error::Cancelled`] when a hook says stop.
    pub async fn run(
        &mut self,
        preview_every: usize,
        hooks: &mut impl StepHooks,
    ) -> Result<Vec<f64>> {
        let mut step_ms = Vec::with_capacity(self.total() - self.done());
        while !self.is_done() {
            let t = Instant::now();
            self.step()?;
            self.settle().await?;
            let ms = ms_since(t);
            step_ms.push(ms);
            let (step, total) = (self.done(), self.total());
            let preview = if preview_every > 0 && step % preview_every == 0 && step < total {
                Some(self.preview_async().await?)
            } else {
                None
            };
            let report = StepReport {
                step,
                total,
                ms,
                preview,
            };
            if !hooks.after_step(&report).await {
                return Err(Error::Cancelled);
            }
        }
        Ok(step_ms)
    }

    /// The two conditionings `[1, L, D]` without the negative prompt's: text-only (the steps
    /// before the switch) and augmented with the subjects (after it).
    pub fn conditionings(&self) -> (Tensor<3>, Tensor<3>) {
        let last = |c: &Tensor<3>| {
            let b = c.dims()[0];
            c.clone().narrow(0, b - 1, 1)
        };
        (last(&self.text_only), last(&self.augmented))
    }

    /// The current latents.
    pub fn latents(&self) -> Tensor<4> {
        self.latents.clone()
    }

    /// Step 7: the chosen decoder's output `[1, 3, H, W]` in about [-1, 1].
    pub fn decode(&self) -> Result<Tensor<4>> {
        self.model
            .decoder(self.decoder)?
            .decode(self.latents.clone())
    }

    /// Step 7 to 8-bit RGB (`(x / 2 + 0.5).clamp(0, 1) · 255`, rounded half to even).
    pub fn decode_rgb(&self) -> Result<RgbImage> {
        let img = self.decode()?;
        let [_, _, h, w] = img.dims();
        let v = crate::kernels::device::read(img)?
            .try_into_vec::<f32>()
            .map_err(|e| Error::Device(format!("{e:?}")))?;
        Ok(to_rgb(&v, w, h))
    }

    /// Finish without the rest of the model: the VAE decoder alone and the final latents.
    /// When nothing else shares the model, the text and image encoders, the fuser and the
    /// UNet are freed here (sequentially: the UNet, the only stage loaded), so decoding reuses
    /// their device memory (a one-shot generation on a device short of memory).
    pub fn into_decoder(self) -> Result<(ImageDecoder, Tensor<4>)> {
        let decoder = self.model.decoder(self.decoder)?;
        Ok((decoder, self.latents))
    }

    /// [`Self::decode_rgb`] without blocking (WebGPU in a browser).
    pub async fn decode_rgb_async(&self) -> Result<RgbImage> {
        rgb_async(self.decode()?).await
    }

    /// Wait until the device has finished all the work queued so far (every stream, fused
    /// operations included), and surface any error it met. Blocking: natively only.
    pub fn settle_blocking(&self) -> Result<()> {
        self.model
            .device()
            .sync()
            .map_err(|e| Error::Device(format!("the device failed: {e}")))
    }

    /// Wait until the device has finished the steps queued so far (a one-value read back).
    pub async fn settle(&self) -> Result<()> {
        let one = self.latents.clone().slice([0..1, 0..1, 0..1, 0..1]);
        crate::kernels::device::read_async(one).await.map(|_| ())
    }

    /// A cheap preview of the current latents: decoded by the tiny autoencoder at full size
    /// where the model keeps one loaded (resident; sequentially it would unload the UNet),
    /// else the latents' first three channels mapped to RGB through a fixed linear
    /// approximation of the SD1.5 VAE, at latent resolution.
    pub async fn preview_async(&self) -> Result<RgbImage> {
        if self.model.has_tiny_vae() && self.model.residency() == Residency::Resident {
            let tiny = self.model.decoder(DecoderKind::Tiny)?;
            return rgb_async(tiny.decode(self.latents.clone())?).await;
        }
        let [_, c, h, w] = self.latents.dims();
        let v = crate::kernels::device::read_async(self.latents.clone())
            .await?
            .try_into_vec::<f32>()
            .map_err(|e| Error::Device(format!("{e:?}")))?;
        Ok(latent_preview(&v, c, w, h))
    }
}

/// An image `[1, 3, H, W]` in about [-1, 1] to 8-bit RGB, read without blocking.
async fn rgb_async(img: Tensor<4>) -> Result<RgbImage> {
    let [_, _, h, w] = img.dims();
    let v = crate::kernels::device::read_async(img)
        .await?
        .try_into_vec::<f32>()
        .map_err(|e| Error::Device(format!("{e:?}")))?;
    Ok(to_rgb(&v, w, h))
}

/// Decode final latents `[1, C, h, w]` with a decoder to 8-bit RGB (see
/// [`Denoiser::into_decoder`]).
pub fn decode_rgb_with(decoder: &ImageDecoder, latents: Tensor<4>) -> Result<RgbImage> {
    let img = decoder.decode(latents)?;
    let [_, _, h, w] = img.dims();
    let v = crate::kernels::device::read(img)?
        .try_into_vec::<f32>()
        .map_err(|e| Error::Device(format!("{e:?}")))?;
    Ok(to_rgb(&v, w, h))
}

fn embedding_from(data: TensorData) -> Result<SubjectEmbedding> {
    let values = data
        .try_into_vec::<f32>()
        .map_err(|e| Error::Device(format!("{e:?}")))?;
    Ok(SubjectEmbedding {
        values,
        reference: None,
    })
}

/// Latents `[C, h, w]` to RGB with the widely used linear approximation of the SD1.5 VAE
/// decoder (a preview, not a decode).
pub fn latent_preview(latents: &[f32], channels: usize, width: usize, height: usize) -> RgbImage {
    const M: [[f32; 3]; 4] = [
        [0.298, 0.207, 0.208],
        [0.187, 0.286, 0.173],
        [-0.158, 0.189, 0.264],
        [-0.184, -0.271, -0.473],
    ];
    let plane = width * height;
    let mut pixels = vec![0u8; 3 * plane];
    for i in 0..plane {
        for (o, px) in pixels[i * 3..i * 3 + 3].iter_mut().enumerate() {
            let v: f32 = (0..channels.min(4))
                .map(|c| latents[c * plane + i] * M[c][o])
                .sum();
            *px = ((v + 1.0) * 127.5).clamp(0.0, 255.0) as u8;
        }
    }
    RgbImage {
        width,
        height,
        pixels,
    }
}

/// Planar `[3, H, W]` values in [-1, 1] to interleaved 8-bit RGB.
pub fn to_rgb(planar: &[f32], width: usize, height: usize) -> RgbImage {
    let plane = width * height;
    let mut pixels = vec![0u8; 3 * plane];
    for c in 0..3 {
        for i in 0..plane {
            let v = (planar[c * plane + i] / 2.0 + 0.5).clamp(0.0, 1.0);
            pixels[i * 3 + c] = (v * 255.0).round_ties_even() as u8;
        }
    }
    RgbImage {
        width,
        height,
        pixels,
    }
}
