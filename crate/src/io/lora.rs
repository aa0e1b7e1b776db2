//! LoRA files: low-rank updates `W += scale · (alpha / rank) · up · down` to the UNet's and the
//! text encoder's weights, read from the formats in use and matched to this model's tensors by
//! name. Merged into the float weights before quantization (`convert --lora`) or as the weights
//! are read (`forward --lora`, [`LoraSource`]).
//!
//! Formats (safetensors):
//! - kohya: `lora_unet_<module>.lora_down.weight`, `.lora_up.weight`, `.alpha` (a scalar), and
//!   `lora_te_<module>…` for the text encoder, where `<module>` is the diffusers / transformers
//!   module path with `_` for `.` (`lora_unet_down_blocks_0_attentions_0_proj_in`) or the
//!   original SD checkpoint's UNet path (`lora_unet_input_blocks_1_1_proj_in`,
//!   `…_output_blocks_3_0_in_layers_2`, `…_middle_block_1_…`);
//! - diffusers / peft: `unet.<module>.lora_A.weight` / `.lora_B.weight` (and `text_encoder.`),
//!   with an optional `<module>.alpha`;
//! - diffusers' older form: `unet.<module>.lora.down.weight` / `.lora.up.weight`.
//!
//! Linear and convolution updates alike: `down` is `[rank, in]` or `[rank, in, kh, kw]` (a 3×3
//! down with a 1×1 up included), `up` is `[out, rank]` or `[out, rank, 1, 1]`. A file without an
//! `alpha` has alpha = rank. Every module of a file must match a tensor of the model with the
//! right shape; otherwise the file is refused, naming the first module that does not and how
//! many did — never a partial merge.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use burn::tensor::TensorData;

use super::bundle::Bundle;
use super::safetensors::SafetensorsSource;
use crate::config::{ModelWeights, Part, TensorSource};
use crate::error::{Error, Result};

/// A LoRA file and the scale it is applied with (`FILE[:SCALE]` on the command line).
#[derive(Debug, Clone, PartialEq)]
pub struct LoraFile {
    pub path: PathBuf,
    pub scale: f32,
}

impl std::str::FromStr for LoraFile {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let (path, scale) = match s.rsplit_once(':').map(|(p, v)| (p, v.parse::<f32>())) {
            Some((p, Ok(v))) if !p.is_empty() => (p, v),
            _ => (s, 1.0),
        };
        if path.is_empty() {
            return Err(Error::invalid("--lora needs a file (FILE or FILE:SCALE)"));
        }
        if !scale.is_finite() {
            return Err(Error::invalid(format!(
                "LoRA {path}: the scale must be a finite number, got {scale}"
            )));
        }
        Ok(LoraFile {
            path: PathBuf::from(path),
            scale,
        })
    }
}

/// One low-rank update: `values += scale · up · down` over `[out, k]` (k = in · kh · kw).
#[derive(Debug, Clone)]
struct Update {
    up: Vec<f32>,
    down: Vec<f32>,
    rank: usize,
    scale: f32,
}

/// The updates of some LoRA files, by the name of the tensor each changes, as a bundle names
/// it (`unet.<module>.weight`, `text_encoder.<module>.weight`).
#[derive(Debug, Clone, Default)]
pub struct LoraDeltas {
    updates: BTreeMap<String, Vec<Update>>,
}

/// The parts LoRAs change: (bundle prefix, kohya prefix).
const PARTS: [(&str, &str); 2] = [("unet", "lora_unet_"), ("text_encoder", "lora_te_")];

/// What the original SD (LDM) names of the UNet's modules depend on: the layers per block and
/// which up blocks have attention (their upsampler moves one slot on).
struct UnetLayout {
    layers_per_block: usize,
    up_with_attention: Vec<usize>,
}

impl UnetLayout {
    fn of<'a>(names: impl Iterator<Item = &'a String>) -> Self {
        let mut layers = 0;
        let mut up_with_attention = Vec::new();
        for n in names {
            let index = |rest: &str| rest.split('.').next().and_then(|i| i.parse::<usize>().ok());
            if let Some(j) = n
                .strip_prefix("unet.down_blocks.0.resnets.")
                .and_then(index)
            {
                layers = layers.max(j + 1);
            }
            if let Some(rest) = n.strip_prefix("unet.up_blocks.")
                && rest.contains(".attentions.")
                && let Some(i) = index(rest)
                && !up_with_attention.contains(&i)
            {
                up_with_attention.push(i);
            }
        }
        UnetLayout {
            layers_per_block: layers,
            up_with_attention,
        }
    }

    /// The original SD name of a diffusers UNet module (`down_blocks.2.attentions.0.proj_in` →
    /// `input_blocks.7.1.proj_in`), as `convert_original_stable_diffusion_to_diffusers` maps them
    /// the other way; `None` for a module that has none.
    fn original_name(&self, module: &str) -> Option<String> {
        let l = self.layers_per_block;
        if l == 0 {
            return None;
        }
        let fixed = [
            ("conv_in", "input_blocks.0.0"),
            ("time_embedding.linear_1", "time_embed.0"),
            ("time_embedding.linear_2", "time_embed.2"),
            ("conv_norm_out", "out.0"),
            ("conv_out", "out.2"),
        ];
        if let Some((_, sd)) = fixed.iter().find(|(d, _)| *d == module) {
            return Some(sd.to_string());
        }
        let parts: Vec<&str> = module.split('.').collect();
        let num = |i: usize| parts.get(i).and_then(|p| p.parse::<usize>().ok());
        let rest = |from: usize| parts.get(from..).map(|r| r.join("."));
        let resnet = |inner: &str| -> Option<String> {
            let (head, tail) = inner.split_once('.').unwrap_or((inner, ""));
            let sd = match head {
                "norm1" => "in_layers.0",
                "conv1" => "in_layers.2",
                "time_emb_proj" => "emb_layers.1",
                "norm2" => "out_layers.0",
                "conv2" => "out_layers.3",
                "conv_shortcut" => "skip_connection",
                _ => return None,
            };
            Some(if tail.is_empty() {
                sd.to_string()
            } else {
                format!("{sd}.{tail}")
            })
        };
        let inner = |kind: &str, from: usize| -> Option<String> {
            let r = rest(from)?;
            match kind {
                "resnets" => resnet(&r).map(|x| format!("0.{x}")),
                "attentions" => Some(format!("1.{r}")),
                _ => None,
            }
        };
        match (parts.first().copied()?, parts.get(2).copied()) {
            ("down_blocks", Some("downsamplers")) => {
                let i = num(1)?;
                (rest(4)? == "conv").then(|| format!("input_blocks.{}.0.op", (i + 1) * (l + 1)))
            }
            ("down_blocks", Some(kind)) => {
                let (i, j) = (num(1)?, num(3)?);
                (j < l).then_some(())?;
                Some(format!(
                    "input_blocks.{}.{}",
                    i * (l + 1) + j + 1,
                    inner(kind, 4)?
                ))
            }
            ("up_blocks", Some("upsamplers")) => {
                let i = num(1)?;
                let slot = if self.up_with_attention.contains(&i) {
                    2
                } else {
                    1
                };
                (rest(4)? == "conv")
                    .then(|| format!("output_blocks.{}.{slot}.conv", i * (l + 1) + l))
            }
            ("up_blocks", Some(kind)) => {
                let (i, j) = (num(1)?, num(3)?);
                (j <= l).then_some(())?;
                Some(format!(
                    "output_blocks.{}.{}",
                    i * (l + 1) + j,
                    inner(kind, 4)?
                ))
            }
            ("mid_block", _) => {
                let kind = parts.get(1).copied()?;
                let slot = match (kind, num(2)?) {
                    ("resnets", 0) => "0",
                    ("attentions", 0) => "1",
                    ("resnets", 1) => "2",
                    _ => return None,
                };
                let r = rest(3)?;
                let r = if kind == "resnets" { resnet(&r)? } else { r };
                Some(format!("middle_block.{slot}.{r}"))
            }
            _ => None,
        }
    }
}

/// A module's tensors in a LoRA file, by role.
#[derive(Default)]
struct Found {
    up: Option<String>,
    down: Option<String>,
    alpha: Option<String>,
}

impl LoraDeltas {
    /// Read `files` and match their modules to `weights` (bundle names and shapes of the
    /// model's float weights).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn load(files: &[LoraFile], weights: &BTreeMap<String, Vec<usize>>) -> Result<Self> {
        let sources = files
            .iter()
            .map(|f| Ok((f.path.display().to_string(), read_file(&f.path)?, f.scale)))
            .collect::<Result<Vec<_>>>()?;
        Self::from_sources(&sources, weights)
    }

    /// [`Self::load`] from files in memory (the JS API's `loras`): each a name for messages,
    /// the file's bytes and a scale.
    pub fn from_inputs(
        inputs: Vec<LoraInput>,
        weights: &BTreeMap<String, Vec<usize>>,
    ) -> Result<Self> {
        let sources = inputs
            .into_iter()
            .map(|l| {
                if !l.scale.is_finite() {
                    return Err(Error::invalid(format!(
                        "LoRA {}: the scale must be a finite number, got {}",
                        l.name, l.scale
                    )));
                }
                let src = SafetensorsSource::from_bytes(l.bytes, &format!("LoRA {}", l.name))?;
                Ok((l.name, src, l.scale))
            })
            .collect::<Result<Vec<_>>>()?;
        Self::from_sources(&sources, weights)
    }

    fn from_sources(
        sources: &[(String, SafetensorsSource, f32)],
        weights: &BTreeMap<String, Vec<usize>>,
    ) -> Result<Self> {
        // Every module by its names in the files: kohya's flattened one and the bundle path.
        // The text encoder's answer with and without `text_model.` (transformers 4 and 5 save
        // them differently; LoRA files for SD1.5 use the first).
        let mut modules: HashMap<String, String> = HashMap::new();
        let unet = UnetLayout::of(weights.keys());
        for name in weights.keys() {
            for (part, prefix) in PARTS {
                let Some(module) = name
                    .strip_prefix(part)
                    .and_then(|m| m.strip_prefix('.'))
                    .and_then(|m| m.strip_suffix(".weight"))
                else {
                    continue;
                };
                let mut forms = vec![module.to_string()];
                if part == "text_encoder" {
                    match module.strip_prefix("text_model.") {
                        Some(short) => forms.push(short.to_string()),
                        None => forms.push(format!("text_model.{module}")),
                    }
                }
                if part == "unet" {
                    // Kohya files written from the original SD checkpoint name its modules.
                    if let Some(sd) = unet.original_name(module) {
                        modules.insert(format!("{prefix}{}", sd.replace('.', "_")), name.clone());
                    }
                }
                for m in forms {
                    modules.insert(format!("{prefix}{}", m.replace('.', "_")), name.clone());
                    modules.insert(format!("{part}.{m}"), name.clone());
                }
            }
        }
        let mut out = LoraDeltas::default();
        for (what, src, scale) in sources {
            out.add_file(what, src, *scale, weights, &modules)?;
        }
        Ok(out)
    }

    fn add_file(
        &mut self,
        what: &str,
        src: &SafetensorsSource,
        scale: f32,
        weights: &BTreeMap<String, Vec<usize>>,
        names: &HashMap<String, String>,
    ) -> Result<()> {
        let mut modules: BTreeMap<String, Found> = BTreeMap::new();
        for key in src.names() {
            let (module, role) = split_key(&key).ok_or_else(|| {
                Error::weights(format!(
                    "LoRA {what}: `{key}` is not a LoRA tensor (expected lora_down / lora_up / alpha, \
                     lora_A / lora_B or lora.down / lora.up)"
                ))
            })?;
            let e = modules.entry(module.to_string()).or_default();
            let slot = match role {
                Role::Up => &mut e.up,
                Role::Down => &mut e.down,
                Role::Alpha => &mut e.alpha,
            };
            *slot = Some(key);
        }
        if modules.is_empty() {
            return Err(Error::weights(format!("LoRA {what}: no tensors")));
        }
        // Modules of a part the model in hand lacks are left alone (`forward` on one
        // component); the others must all match.
        let present = |part: &str| weights.keys().any(|k| k.starts_with(&format!("{part}.")));
        let mut considered = Vec::new();
        for (module, found) in &modules {
            let part = PARTS
                .iter()
                .find(|(part, kohya)| {
                    module.starts_with(kohya) || module.starts_with(&format!("{part}."))
                })
                .map(|(part, _)| *part)
                .ok_or_else(|| {
                    Error::weights(format!(
                        "LoRA {what}: module `{module}` is for neither the UNet nor the text encoder \
                         (expected lora_unet_ / lora_te_ or unet. / text_encoder. names)"
                    ))
                })?;
            if present(part) {
                considered.push((module, found));
            }
        }
        if considered.is_empty() {
            return Err(Error::weights(format!(
                "LoRA {what}: none of its {} modules is for a part of this model",
                modules.len()
            )));
        }
        let total = considered.len();
        // Match every module before reading any update: a file that does not fit is refused whole.
        let mut matched = Vec::with_capacity(total);
        for (i, (module, found)) in considered.into_iter().enumerate() {
            let Some(target) = names.get(module.as_str()).cloned() else {
                return Err(Error::weights(format!(
                    "LoRA {what}: module `{module}` matches no weight of this model's UNet or text \
                     encoder ({i} of {total} modules matched before it); is the LoRA for another model?"
                )));
            };
            matched.push((module, found, target));
        }
        for (module, found, target) in matched {
            let (Some(up), Some(down)) = (&found.up, &found.down) else {
                return Err(Error::weights(format!(
                    "LoRA {what}: module `{module}` needs both an up and a down matrix"
                )));
            };
            let (up_shape, up) = src.read_f32(up)?;
            let (down_shape, down) = src.read_f32(down)?;
            let w = &weights[&target];
            let rank = down_shape.first().copied().unwrap_or(0);
            let out_dim = w.first().copied().unwrap_or(0);
            let k: usize = w.iter().skip(1).product();
            let up_ok = up_shape.len() >= 2
                && up_shape[0] == out_dim
                && up_shape[1] == rank
                && up_shape[2..].iter().all(|&d| d == 1);
            let down_ok = rank > 0 && down_shape.iter().skip(1).product::<usize>() == k;
            if !up_ok || !down_ok {
                return Err(Error::weights(format!(
                    "LoRA {what}: module `{module}` has up {up_shape:?} and down {down_shape:?}, \
                     which do not fit `{target}` {w:?}"
                )));
            }
            let alpha = match &found.alpha {
                Some(a) => {
                    let (_, v) = src.read_f32(a)?;
                    match v[..] {
                        [x] if x.is_finite() => x,
                        _ => {
                            return Err(Error::weights(format!(
                                "LoRA {what}: `{a}` must be one finite number"
                            )));
                        }
                    }
                }
                None => rank as f32,
            };
            if up.iter().chain(&down).any(|v| !v.is_finite()) {
                return Err(Error::weights(format!(
                    "LoRA {what}: module `{module}` holds NaN or infinite values"
                )));
            }
            self.updates.entry(target).or_default().push(Update {
                up,
                down,
                rank,
                scale: scale * alpha / rank as f32,
            });
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.updates.is_empty()
    }

    /// Number of tensors the files change.
    pub fn len(&self) -> usize {
        self.updates.len()
    }

    /// Whether `name` (a bundle name) has updates.
    pub fn touches(&self, name: &str) -> bool {
        self.updates.contains_key(name)
    }

    /// Add `name`'s updates to its values (`[out, ...]`, row-major).
    pub fn apply(&self, name: &str, values: &mut [f32]) {
        let Some(updates) = self.updates.get(name) else {
            return;
        };
        for u in updates {
            let k = u.down.len() / u.rank;
            crate::kernels::for_chunks(values, k, |o, row| {
                let up = &u.up[o * u.rank..(o + 1) * u.rank];
                for (r, &a) in up.iter().enumerate() {
                    let a = a * u.scale;
                    if a != 0.0 {
                        for (x, &d) in row.iter_mut().zip(&u.down[r * k..(r + 1) * k]) {
                            *x += a * d;
                        }
                    }
                }
            });
        }
    }
}

/// A LoRA file in memory, with a name for messages and the scale it is applied with.
#[derive(Debug, Clone)]
pub struct LoraInput {
    pub name: String,
    pub bytes: Vec<u8>,
    pub scale: f32,
}

/// `values` (a tensor as a source read it: f32, f16 or block-quantized) with `name`'s updates
/// added, in the same format: quantized weights are dequantized, updated and quantized again
/// with their own block type (so the merged weight carries that type's rounding, as a bundle
/// converted with `--lora` does).
fn merged(deltas: &LoraDeltas, name: &str, data: TensorData) -> Result<TensorData> {
    use burn::tensor::DType;
    let shape = data.shape().to_vec();
    match data.dtype() {
        DType::QFloat(_) => {
            let (mut v, ty) = crate::quant::HostQuantized::values_of(&data).ok_or_else(|| {
                Error::weights(format!(
                    "LoRA: `{name}` is quantized in a layout this build cannot update"
                ))
            })?;
            deltas.apply(name, &mut v);
            Ok(crate::quant::quantize_data(&v, [shape[0], shape[1]], ty))
        }
        dtype @ (DType::F32 | DType::F16 | DType::BF16) => {
            let mut v = data
                .convert::<f32>()
                .try_into_vec::<f32>()
                .map_err(|e| Error::weights(format!("LoRA: `{name}`: {e:?}")))?;
            deltas.apply(name, &mut v);
            Ok(TensorData::new(v, shape).convert_dtype(dtype))
        }
        other => Err(Error::weights(format!(
            "LoRA: `{name}` is stored as {other:?}, which LoRAs cannot update"
        ))),
    }
}

/// A bundle whose UNet and text encoder weights get LoRA updates as they are read (the JS
/// API's `loras`, `generate --lora`): the bundle stays as it is, so nothing is lost if a
/// LoRA is refused, and sequential loading merges each stage's tensors when it loads them.
pub struct LoraBundle {
    bundle: std::sync::Arc<Bundle>,
    deltas: LoraDeltas,
}

impl LoraBundle {
    /// Match `loras` to the bundle's UNet and text encoder; every file must fit whole.
    pub fn new(bundle: std::sync::Arc<Bundle>, loras: Vec<LoraInput>) -> Result<Self> {
        let weights: BTreeMap<String, Vec<usize>> = bundle
            .names()
            .into_iter()
            .filter(|n| {
                PARTS
                    .iter()
                    .any(|(part, _)| n.starts_with(&format!("{part}.")))
            })
            .filter_map(|n| bundle.shape(&n).map(|s| (n, s)))
            .collect();
        let deltas = LoraDeltas::from_inputs(loras, &weights)?;
        Ok(Self { bundle, deltas })
    }
}

impl TensorSource for LoraBundle {
    fn names(&self) -> Vec<String> {
        self.bundle.names()
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.bundle.shape(name)
    }

    fn read(&self, name: &str) -> Result<TensorData> {
        let data = self.bundle.read(name)?;
        if !self.deltas.touches(name) {
            return Ok(data);
        }
        merged(&self.deltas, name, data)
    }
}

impl ModelWeights for LoraBundle {
    fn part(&self, part: Part) -> Result<(&dyn TensorSource, String)> {
        Ok((self as &dyn TensorSource, format!("{}.", part.name())))
    }
}

#[cfg(not(target_arch = "wasm32"))]
fn read_file(path: &std::path::Path) -> Result<SafetensorsSource> {
    // A file that cannot be read stays an I/O error; one that is not a LoRA says so.
    SafetensorsSource::from_file(path).map_err(|e| match e {
        Error::Io(_) => e,
        other => Error::weights(format!("LoRA {}: {other}", path.display())),
    })
}

enum Role {
    Up,
    Down,
    Alpha,
}

/// A LoRA key's module (`lora_unet_…` or `unet.<module>`) and role.
fn split_key(key: &str) -> Option<(&str, Role)> {
    const SUFFIXES: [(&str, Role); 7] = [
        (".lora_up.weight", Role::Up),
        (".lora_down.weight", Role::Down),
        (".lora_B.weight", Role::Up),
        (".lora_A.weight", Role::Down),
        (".lora.up.weight", Role::Up),
        (".lora.down.weight", Role::Down),
        (".alpha", Role::Alpha),
    ];
    SUFFIXES
        .into_iter()
        .find_map(|(s, role)| key.strip_suffix(s).map(|m| (m, role)))
}

/// A component's weights with LoRA updates added as they are read. `prefix` turns the
/// component's keys into bundle names (`"unet."`).
pub struct LoraSource<'a> {
    pub base: &'a dyn TensorSource,
    pub prefix: String,
    pub deltas: &'a LoraDeltas,
}

impl TensorSource for LoraSource<'_> {
    fn names(&self) -> Vec<String> {
        self.base.names()
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.base.shape(name)
    }

    fn read(&self, name: &str) -> Result<TensorData> {
        let full = format!("{}{name}", self.prefix);
        let data = self.base.read(name)?;
        if !self.deltas.touches(&full) {
            return Ok(data);
        }
        merged(self.deltas, &full, data)
    }

    fn make(&self, key: &str, shape: &[usize], matrix: bool) -> Option<TensorData> {
        self.base.make(key, shape, matrix)
    }
}

#[cfg(test)]
mod tests {
    use super::UnetLayout;

    /// SD1.5's layout (2 layers per block; up block 0 without attention) against names from
    /// the original checkpoint as diffusers' conversion script maps them.
    #[test]
    fn original_sd_names_of_sd15_modules() {
        let names: Vec<String> = [
            "unet.down_blocks.0.resnets.0.conv1.weight",
            "unet.down_blocks.0.resnets.1.conv1.weight",
            "unet.up_blocks.1.attentions.0.proj_in.weight",
            "unet.up_blocks.2.attentions.0.proj_in.weight",
            "unet.up_blocks.3.attentions.0.proj_in.weight",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let layout = UnetLayout::of(names.iter());
        for (diffusers, sd) in [
            ("conv_in", "input_blocks.0.0"),
            ("time_embedding.linear_2", "time_embed.2"),
            (
                "down_blocks.0.resnets.0.conv1",
                "input_blocks.1.0.in_layers.2",
            ),
            (
                "down_blocks.0.attentions.1.proj_in",
                "input_blocks.2.1.proj_in",
            ),
            ("down_blocks.0.downsamplers.0.conv", "input_blocks.3.0.op"),
            (
                "down_blocks.2.attentions.0.transformer_blocks.0.attn1.to_q",
                "input_blocks.7.1.transformer_blocks.0.attn1.to_q",
            ),
            (
                "down_blocks.3.resnets.1.time_emb_proj",
                "input_blocks.11.0.emb_layers.1",
            ),
            ("mid_block.resnets.0.conv2", "middle_block.0.out_layers.3"),
            ("mid_block.attentions.0.proj_out", "middle_block.1.proj_out"),
            ("mid_block.resnets.1.norm1", "middle_block.2.in_layers.0"),
            (
                "up_blocks.0.resnets.2.conv_shortcut",
                "output_blocks.2.0.skip_connection",
            ),
            ("up_blocks.0.upsamplers.0.conv", "output_blocks.2.1.conv"),
            ("up_blocks.1.upsamplers.0.conv", "output_blocks.5.2.conv"),
            (
                "up_blocks.3.attentions.2.proj_out",
                "output_blocks.11.1.proj_out",
            ),
            ("conv_out", "out.2"),
        ] {
            assert_eq!(
                layout.original_name(diffusers).as_deref(),
                Some(sd),
                "{diffusers}"
            );
        }
        for none in [
            "down_blocks.0.resnets.2.conv1",
            "mid_block.resnets.2.conv1",
            "up_blocks.0.resnets.0.nonlinearity",
        ] {
            assert_eq!(layout.original_name(none), None, "{none}");
        }
    }
}
