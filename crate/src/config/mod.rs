//! What a model is, without its weights: each component's config (the reference libraries'
//! `config.json` files, with their defaults), the whole model's [`ModelConfig`], the names of
//! its [`Part`]s, and the index traits through which weights are found ([`TensorSource`],
//! [`ModelWeights`]). The bottom layer: everything else may use it; it uses only [`crate::error`]
//! and [`crate::tokenizer`]'s marker.

pub mod clip_text;
pub mod clip_vision;
pub mod fuser;
pub mod scheduler;
pub mod unet;
pub mod vae;

use burn::tensor::TensorData;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub use clip_text::ClipTextConfig;
pub use clip_vision::ClipVisionConfig;
pub use fuser::FuserConfig;
pub use scheduler::SchedulerConfig;
pub use unet::{PerLevel, UNet2DConditionConfig};
pub use vae::{AutoencoderKLConfig, AutoencoderTinyConfig};

/// Every component's config: what a model is, without its weights.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct ModelConfig {
    pub text_encoder: ClipTextConfig,
    pub image_encoder: ClipVisionConfig,
    pub fuser: FuserConfig,
    pub unet: UNet2DConditionConfig,
    pub vae: AutoencoderKLConfig,
    /// An optional second decoder for the same latents: TAESD (`convert --tiny-vae`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tiny_vae: Option<AutoencoderTinyConfig>,
    pub scheduler: SchedulerConfig,
    /// The subject marker in prompts.
    #[serde(default = "default_marker")]
    pub marker: String,
    /// What a generation uses unless told otherwise (`convert --scheduler/--steps/--guidance/--alpha`).
    #[serde(default)]
    pub defaults: GenerationDefaults,
}

/// A model's own generation settings, used where a caller gives none: an LCM-LoRA model's few
/// steps, its scheduler and its low guidance travel with the bundle.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default)]
pub struct GenerationDefaults {
    /// A scheduler name (`ddim`, `pndm`, `euler`, `lcm`); checked where schedulers are known.
    pub scheduler: Option<String>,
    pub steps: Option<usize>,
    pub guidance: Option<f64>,
    /// The subject strength: a few-step model's delayed subject conditioning needs its own
    /// (with 4 steps, alpha 0.7 leaves 2 of them text-only; 0.8, one).
    pub alpha: Option<f64>,
}

fn default_marker() -> String {
    crate::tokenizer::DEFAULT_MARKER.to_string()
}

impl ModelConfig {
    /// Pixels per side of a generated image must be a multiple of this: the VAE's factor times
    /// the UNet's down factor (64 for SD1.5).
    pub fn size_multiple(&self) -> usize {
        self.vae.scale_factor() * self.unet.down_factor()
    }

    /// The native image size (the UNet's `sample_size` × the VAE factor; 512 for SD1.5).
    pub fn native_size(&self) -> usize {
        self.unet.sample_size * self.vae.scale_factor()
    }

    /// The components must agree on the conditioning width.
    pub fn check(&self) -> Result<()> {
        let d = self.text_encoder.hidden_size;
        let bad = |what: &str, v: usize| {
            Err(Error::invalid(format!(
                "model config: {what} is {v} but the text encoder's hidden size is {d}"
            )))
        };
        if self.fuser.embed_dim != d {
            return bad("the fuser's embed_dim", self.fuser.embed_dim);
        }
        if self.image_encoder.projection_dim != d {
            return bad(
                "the image encoder's projection_dim",
                self.image_encoder.projection_dim,
            );
        }
        if self.unet.context_dim() != d {
            return bad("the UNet's cross_attention_dim", self.unet.context_dim());
        }
        if self.unet.in_channels != self.vae.latent_channels
            || self.unet.out_channels != self.vae.latent_channels
        {
            return Err(Error::invalid(format!(
                "model config: the UNet has {}/{} in/out channels but the VAE has {} latent channels",
                self.unet.in_channels, self.unet.out_channels, self.vae.latent_channels
            )));
        }
        if let Some(t) = &self.tiny_vae {
            t.check_decoder()?;
            if t.latent_channels != self.vae.latent_channels
                || t.scale_factor() != self.vae.scale_factor()
            {
                return Err(Error::invalid(format!(
                    "model config: the tiny autoencoder takes {} latent channels at 1/{} scale, \
                     the VAE makes {} at 1/{}",
                    t.latent_channels,
                    t.scale_factor(),
                    self.vae.latent_channels,
                    self.vae.scale_factor()
                )));
            }
        }
        let d = &self.defaults;
        if let Some(s) = d.steps
            && (s == 0 || s > self.scheduler.num_train_timesteps)
        {
            return Err(Error::invalid(format!(
                "model config: default steps must be between 1 and {}, got {s}",
                self.scheduler.num_train_timesteps
            )));
        }
        if let Some(g) = d.guidance
            && !(g.is_finite() && g >= 0.0)
        {
            return Err(Error::invalid(format!(
                "model config: default guidance must be a finite number >= 0, got {g}"
            )));
        }
        if let Some(a) = d.alpha
            && !(a.is_finite() && (0.0..=1.0).contains(&a))
        {
            return Err(Error::invalid(format!(
                "model config: default alpha must be between 0 and 1, got {a}"
            )));
        }
        self.scheduler.check()
    }
}

/// The components of a model, for naming weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    TextEncoder,
    ImageEncoder,
    Fuser,
    Unet,
    Vae,
    /// Optional: TAESD's decoder.
    TinyVae,
}

impl Part {
    /// The parts every model has (the tiny autoencoder is optional).
    pub const ALL: [Part; 5] = [
        Part::TextEncoder,
        Part::ImageEncoder,
        Part::Fuser,
        Part::Unet,
        Part::Vae,
    ];

    /// The directory name in a diffusers-layout model and the key prefix in a FastComposer
    /// checkpoint.
    pub fn name(self) -> &'static str {
        match self {
            Part::TextEncoder => "text_encoder",
            Part::ImageEncoder => "image_encoder",
            Part::Fuser => "fuser",
            Part::Unet => "unet",
            Part::Vae => "vae",
            Part::TinyVae => "tiny_vae",
        }
    }
}

/// Where each component's tensors are: a source and a key prefix ("" or e.g. "unet.").
pub trait ModelWeights {
    fn part(&self, part: Part) -> Result<(&dyn TensorSource, String)>;
}

/// Named tensors, read one at a time.
pub trait TensorSource {
    /// Every tensor name the source holds.
    fn names(&self) -> Vec<String>;
    /// The stored shape of a tensor, or `None` if absent.
    fn shape(&self, name: &str) -> Option<Vec<usize>>;
    /// Read one tensor in its stored layout: f32 values, or — for sources that keep weights
    /// quantized — burn quantized data of shape `[shape[0], product of the rest]`.
    fn read(&self, name: &str) -> Result<TensorData>;
    /// Sources that make weights up ([`crate::io::RandomSource`]) answer every name: data of
    /// exactly `shape` for `key`, stored as a bundle would store it when `matrix` (a linear or
    /// convolution weight, as `[shape[0], product of the rest]`). Stored sources: `None`.
    fn make(&self, _key: &str, _shape: &[usize], _matrix: bool) -> Option<TensorData> {
        None
    }
}

/// Parse a reference config, naming the component in errors.
pub fn parse_config<T: serde::de::DeserializeOwned>(json: &str, what: &str) -> Result<T> {
    serde_json::from_str(json).map_err(|e| Error::invalid(format!("{what} config: {e}")))
}

/// For config fields that diffusers may save as `null` (e.g. `UNet2DConditionModel`'s
/// `sample_size` when the model was built without one): `null` reads as `V`.
pub(crate) fn null_or<'de, D: serde::Deserializer<'de>, const V: usize>(
    d: D,
) -> Result<usize, D::Error> {
    Ok(<Option<usize> as serde::Deserialize>::deserialize(d)?.unwrap_or(V))
}
