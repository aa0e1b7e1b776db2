//! One component's forward pass on named input tensors: what `fastcomposer forward` runs and
//! what the parity tests check against the reference libraries' fixtures.

use burn::tensor::{Device, Tensor, TensorData};

use super::autoencoder_tiny::TinyDecoder;
use super::clip_text::ClipTextModel;
use super::clip_vision::ClipVisionModel;
use super::fuser::Fuser;
use super::loader::Loader;
use super::unet::UNet2DConditionModel;
use super::vae::{VaeDecoder, VaeEncoder};
use crate::config::TensorSource;
use crate::config::{
    AutoencoderKLConfig, AutoencoderTinyConfig, ClipTextConfig, ClipVisionConfig, FuserConfig,
    UNet2DConditionConfig, parse_config,
};
use crate::error::{Error, Result};
use crate::io::safetensors::SafetensorsSource;
use crate::kernels::KernelOptions;
use crate::kernels::device::read;

/// The components `forward` can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    Unet,
    VaeDecoder,
    VaeEncoder,
    /// The tiny autoencoder's (TAESD's) decoder.
    TinyVaeDecoder,
    TextEncoder,
    VisionEncoder,
    Fuser,
}

impl std::str::FromStr for Component {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "unet" => Component::Unet,
            "vae-decoder" => Component::VaeDecoder,
            "vae-encoder" => Component::VaeEncoder,
            "tiny-vae-decoder" => Component::TinyVaeDecoder,
            "text-encoder" => Component::TextEncoder,
            "vision-encoder" => Component::VisionEncoder,
            "fuser" => Component::Fuser,
            other => {
                return Err(Error::invalid(format!(
                    "unknown component `{other}` (expected unet, vae-decoder, vae-encoder, \
                     tiny-vae-decoder, text-encoder, vision-encoder or fuser)"
                )));
            }
        })
    }
}

impl Component {
    /// The bundle prefix of the part whose weights LoRAs change (`"unet."`, `"text_encoder."`);
    /// `None` for components LoRAs leave alone.
    pub fn lora_prefix(self) -> Option<&'static str> {
        match self {
            Component::Unet => Some("unet."),
            Component::TextEncoder => Some("text_encoder."),
            _ => None,
        }
    }
}

fn input<const D: usize>(
    inputs: &SafetensorsSource,
    name: &str,
    device: &Device,
) -> Result<Tensor<D>> {
    let (shape, values) = inputs
        .read_f32(name)
        .map_err(|e| Error::invalid(format!("inputs: {e}")))?;
    if shape.len() != D {
        return Err(Error::invalid(format!(
            "input `{name}` has shape {shape:?}, expected {D} dimensions"
        )));
    }
    Ok(Tensor::from_data(TensorData::new(values, shape), device))
}

/// Run `component` from its reference `config.json`, weights and named inputs.
pub fn forward_component(
    component: Component,
    config_json: &str,
    weights: &dyn TensorSource,
    inputs: &SafetensorsSource,
    device: &Device,
    kernels: impl Into<KernelOptions>,
) -> Result<TensorData> {
    let kernels: KernelOptions = kernels.into();
    let kernel = kernels.attention;
    let vb = Loader::new(weights, device).with_conv_kernels(kernels.conv);
    let out: Tensor<3> = match component {
        Component::Unet => {
            let config: UNet2DConditionConfig = parse_config(config_json, "unet")?;
            let model = UNet2DConditionModel::load(&vb, &config, kernel)?;
            vb.finish("", &[])?;
            let out = model.forward(
                input(inputs, "sample", device)?,
                input(inputs, "timestep", device)?,
                &input(inputs, "encoder_hidden_states", device)?,
            )?;
            return read(out);
        }
        Component::VaeDecoder | Component::VaeEncoder => {
            let config: AutoencoderKLConfig = parse_config(config_json, "vae")?;
            // A full AutoencoderKL file holds both halves; each half takes its own keys.
            let out = if component == Component::VaeDecoder {
                let model = VaeDecoder::load(&vb, &config, kernel)?;
                vb.finish("decoder.", &[])?;
                model.forward(input(inputs, "latents", device)?)?
            } else {
                let model = VaeEncoder::load(&vb, &config, kernel)?;
                vb.finish("encoder.", &[])?;
                model.forward(input(inputs, "image", device)?)?
            };
            return read(out);
        }
        Component::TinyVaeDecoder => {
            let config: AutoencoderTinyConfig = parse_config(config_json, "tiny vae")?;
            // A full AutoencoderTiny file holds the encoder too; the decoder takes its own keys.
            let model = TinyDecoder::load(&vb, &config)?;
            vb.finish("decoder.", &[])?;
            return read(model.forward(input(inputs, "latents", device)?)?);
        }
        Component::TextEncoder => {
            let config: ClipTextConfig = parse_config(config_json, "text encoder")?;
            let model = ClipTextModel::load(&vb, &config, kernel)?;
            vb.finish("", ClipTextModel::IGNORED_KEYS)?;
            let (shape, ids) = inputs
                .read_i64("input_ids")
                .map_err(|e| Error::invalid(format!("inputs: {e}")))?;
            let [b, l] = shape[..] else {
                return Err(Error::invalid(format!(
                    "input `input_ids` has shape {shape:?}, expected [B, L]"
                )));
            };
            let rows = (0..b)
                .map(|i| {
                    ids[i * l..(i + 1) * l]
                        .iter()
                        .map(|&x| {
                            u32::try_from(x).map_err(|_| {
                                Error::invalid(format!("input_ids: negative or huge token id {x}"))
                            })
                        })
                        .collect::<Result<Vec<u32>>>()
                })
                .collect::<Result<Vec<_>>>()?;
            model.forward_ids(&rows)?
        }
        Component::VisionEncoder => {
            let config: ClipVisionConfig = parse_config(config_json, "vision encoder")?;
            let model = ClipVisionModel::load(&vb, &config, kernel)?;
            vb.finish("", ClipVisionModel::IGNORED_KEYS)?;
            return read(model.forward(input(inputs, "pixel_values", device)?)?);
        }
        Component::Fuser => {
            let config: FuserConfig = parse_config(config_json, "fuser")?;
            let model = Fuser::load(&vb, &config)?;
            vb.finish("", &[])?;
            return read(model.forward(
                input(inputs, "text", device)?,
                input(inputs, "image", device)?,
            )?);
        }
    };
    read(out)
}
