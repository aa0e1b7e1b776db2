//! Which model components are on the device, and when.
//!
//! A generation uses its components in stages — the image encoder (per subject photo), the text
//! encoder and fuser (the prompt), the UNet (every step), the VAE decoder (once) — and never two
//! stages at once. With [`Residency::Resident`] every component stays loaded (fastest when
//! generating many images); with [`Residency::Sequential`] only the current stage's components
//! are: each is loaded from the (verified, still quantized) bundle when its stage starts, and the
//! previous stage's are freed first, so device memory holds one stage's weights at a time (the
//! UNet's, at most). This is how a model larger than the device's free memory still runs.

use std::sync::{Arc, Mutex};

use burn::tensor::Device;

use crate::config::{ModelConfig, ModelWeights, Part};
use crate::error::{Error, Result};
use crate::kernels::KernelOptions;
use crate::models::autoencoder_tiny::TinyDecoder;
use crate::models::clip_text::ClipTextModel;
use crate::models::clip_vision::ClipVisionModel;
use crate::models::fuser::Fuser;
use crate::models::loader::Loader;
use crate::models::unet::UNet2DConditionModel;
use crate::models::vae::{VaeDecoder, VaeEncoder};

/// How a model keeps its components on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Residency {
    /// Every component stays loaded.
    #[default]
    Resident,
    /// One stage's components at a time, loaded when the stage starts (text encoder → image
    /// encoder → UNet → VAE, in the order a generation uses them), the previous stage freed.
    Sequential,
}

impl Residency {
    /// Bundles larger than this run [`Residency::Sequential`] under `auto`: an SD1.5-size
    /// model (0.78 GB int4, 1.43 GB int8) does; the built-in default (19 MB) does not.
    pub const AUTO_SEQUENTIAL_BYTES: u64 = 512 << 20;

    /// `auto` for a bundle of `bundle_bytes`.
    pub fn auto(bundle_bytes: u64) -> Self {
        if bundle_bytes > Self::AUTO_SEQUENTIAL_BYTES {
            Residency::Sequential
        } else {
            Residency::Resident
        }
    }

    /// Parse `auto` (decided by the bundle's size), `resident` or `sequential`.
    pub fn parse(s: &str, bundle_bytes: u64) -> Result<Self> {
        match s {
            "auto" => Ok(Self::auto(bundle_bytes)),
            "resident" => Ok(Residency::Resident),
            "sequential" => Ok(Residency::Sequential),
            other => Err(Error::invalid(format!(
                "unknown memory mode `{other}` (expected auto, resident or sequential)"
            ))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Residency::Resident => "resident",
            Residency::Sequential => "sequential",
        }
    }
}

/// A stage's components.
#[derive(Clone)]
pub(crate) enum Stage {
    Text(Arc<ClipTextModel>, Arc<Fuser>),
    /// The image encoder, and the VAE encoder where the weights hold one (self-subject
    /// attention's reference latents).
    Image(Arc<ClipVisionModel>, Option<Arc<VaeEncoder>>),
    Unet(Arc<UNet2DConditionModel>),
    Vae(Arc<VaeDecoder>),
    TinyVae(Arc<TinyDecoder>),
}

/// Which stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StageKind {
    Text,
    Image,
    Unet,
    Vae,
    /// The tiny autoencoder's decoder (models that have one).
    TinyVae,
}

impl Stage {
    fn kind(&self) -> StageKind {
        match self {
            Stage::Text(..) => StageKind::Text,
            Stage::Image(..) => StageKind::Image,
            Stage::Unet(_) => StageKind::Unet,
            Stage::Vae(_) => StageKind::Vae,
            Stage::TinyVae(_) => StageKind::TinyVae,
        }
    }
}

/// Every component loaded.
pub(crate) struct Loaded {
    pub text_encoder: Arc<ClipTextModel>,
    pub fuser: Arc<Fuser>,
    pub image_encoder: Arc<ClipVisionModel>,
    pub vae_encoder: Option<Arc<VaeEncoder>>,
    pub unet: Arc<UNet2DConditionModel>,
    pub vae: Arc<VaeDecoder>,
    pub tiny_vae: Option<Arc<TinyDecoder>>,
}

/// The components as a model holds them.
pub(crate) enum Components {
    Resident(Loaded),
    Sequential {
        /// The bundle (with any LoRAs, merged as its tensors are read).
        weights: Arc<dyn ModelWeights + Send + Sync>,
        kernels: KernelOptions,
        current: Mutex<Option<Stage>>,
    },
}

/// Load one stage's components; missing or unexpected tensors are errors naming the key.
pub(crate) fn load_stage(
    kind: StageKind,
    config: &ModelConfig,
    weights: &dyn ModelWeights,
    device: &Device,
    kernels: KernelOptions,
) -> Result<Stage> {
    let part = |part: Part| -> Result<(Loader, String)> {
        let (src, prefix) = weights.part(part)?;
        let root = Loader::new(src, device).with_conv_kernels(kernels.conv);
        let vb = if prefix.is_empty() {
            root
        } else {
            root.pp(prefix.trim_end_matches('.'))
        };
        Ok((vb, prefix))
    };
    Ok(match kind {
        StageKind::Text => {
            let (vb, p) = part(Part::TextEncoder)?;
            let text = ClipTextModel::load(&vb, &config.text_encoder, kernels.attention)?;
            vb.finish(&p, ClipTextModel::IGNORED_KEYS)?;
            let (vb, p) = part(Part::Fuser)?;
            let fuser = Fuser::load(&vb, &config.fuser)?;
            vb.finish(&p, &[])?;
            Stage::Text(Arc::new(text), Arc::new(fuser))
        }
        StageKind::Image => {
            let (vb, p) = part(Part::ImageEncoder)?;
            let image = ClipVisionModel::load(&vb, &config.image_encoder, kernels.attention)?;
            vb.finish(&p, ClipVisionModel::IGNORED_KEYS)?;
            let (vb, p) = part(Part::Vae)?;
            let vae_encoder = if vb.contains("encoder.conv_in.weight") {
                let e = VaeEncoder::load(&vb, &config.vae, kernels.attention)?;
                vb.finish(&format!("{p}encoder."), &[])?;
                Some(Arc::new(e))
            } else {
                None
            };
            Stage::Image(Arc::new(image), vae_encoder)
        }
        StageKind::Unet => {
            let (vb, p) = part(Part::Unet)?;
            let unet = UNet2DConditionModel::load(&vb, &config.unet, kernels.attention)?;
            vb.finish(&p, &[])?;
            Stage::Unet(Arc::new(unet))
        }
        StageKind::Vae => {
            let (vb, p) = part(Part::Vae)?;
            let vae = VaeDecoder::load(&vb, &config.vae, kernels.attention)?;
            // Generation needs only the decoder: the encoder's keys may be present.
            vb.finish(&format!("{p}decoder."), &[])?;
            Stage::Vae(Arc::new(vae))
        }
        StageKind::TinyVae => {
            let config = config.tiny_vae.as_ref().ok_or_else(no_tiny_vae)?;
            let (vb, p) = part(Part::TinyVae)?;
            let tiny = TinyDecoder::load(&vb, config)?;
            vb.finish(&p, &[])?;
            Stage::TinyVae(Arc::new(tiny))
        }
    })
}

/// Load every stage (all stay loaded, so the order does not matter).
pub(crate) fn load_all(
    config: &ModelConfig,
    weights: &dyn ModelWeights,
    device: &Device,
    kernels: KernelOptions,
) -> Result<Loaded> {
    let Stage::Text(text_encoder, fuser) =
        load_stage(StageKind::Text, config, weights, device, kernels)?
    else {
        unreachable!("text stage")
    };
    let Stage::Image(image_encoder, vae_encoder) =
        load_stage(StageKind::Image, config, weights, device, kernels)?
    else {
        unreachable!("image stage")
    };
    let Stage::Unet(unet) = load_stage(StageKind::Unet, config, weights, device, kernels)? else {
        unreachable!("unet stage")
    };
    let Stage::Vae(vae) = load_stage(StageKind::Vae, config, weights, device, kernels)? else {
        unreachable!("vae stage")
    };
    let tiny_vae = match &config.tiny_vae {
        Some(_) => match load_stage(StageKind::TinyVae, config, weights, device, kernels)? {
            Stage::TinyVae(t) => Some(t),
            _ => unreachable!("tiny vae stage"),
        },
        None => None,
    };
    Ok(Loaded {
        text_encoder,
        fuser,
        image_encoder,
        vae_encoder,
        unet,
        vae,
        tiny_vae,
    })
}

/// The error for a tiny-autoencoder request on a model without one.
pub(crate) fn no_tiny_vae() -> Error {
    Error::invalid(
        "this model has no tiny autoencoder (add one with `fastcomposer convert --tiny-vae`); \
         use the full decoder",
    )
}

impl Components {
    /// A stage's components: the loaded ones, or — sequentially — the previous stage freed
    /// (its device memory returned) and this one loaded.
    pub(crate) fn stage(
        &self,
        kind: StageKind,
        config: &ModelConfig,
        device: &Device,
    ) -> Result<Stage> {
        match self {
            Components::Resident(l) => Ok(match kind {
                StageKind::Text => Stage::Text(l.text_encoder.clone(), l.fuser.clone()),
                StageKind::Image => Stage::Image(l.image_encoder.clone(), l.vae_encoder.clone()),
                StageKind::Unet => Stage::Unet(l.unet.clone()),
                StageKind::Vae => Stage::Vae(l.vae.clone()),
                StageKind::TinyVae => Stage::TinyVae(l.tiny_vae.clone().ok_or_else(no_tiny_vae)?),
            }),
            Components::Sequential {
                weights,
                kernels,
                current,
            } => {
                let mut current = current
                    .lock()
                    .map_err(|_| Error::Device("a component failed to load earlier".into()))?;
                if let Some(s) = current.as_ref().filter(|s| s.kind() == kind) {
                    return Ok(s.clone());
                }
                // Free the previous stage before loading: its weights are dropped here unless
                // a caller still holds them (a stage in use is never freed under it).
                if current.take().is_some() {
                    device.memory_cleanup();
                }
                let s = load_stage(kind, config, weights.as_ref(), device, *kernels)?;
                *current = Some(s.clone());
                Ok(s)
            }
        }
    }

    /// Which stage is loaded now (sequential), or `None` (resident: all, or nothing yet).
    pub(crate) fn current(&self) -> Option<StageKind> {
        match self {
            Components::Resident(_) => None,
            Components::Sequential { current, .. } => current
                .lock()
                .ok()
                .and_then(|c| c.as_ref().map(Stage::kind)),
        }
    }

    pub(crate) fn residency(&self) -> Residency {
        match self {
            Components::Resident(_) => Residency::Resident,
            Components::Sequential { .. } => Residency::Sequential,
        }
    }
}
