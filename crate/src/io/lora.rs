//! LoRA files: low-rank updates `W += scale · (alpha / rank) · up · down` to the UNet's and the
//! text encoder's weights, read from the formats in use and matched to this model's tensors by
//! name. Merged into the float weights before quantization (`convert --lora`) or as the weights
//! are read (`forward --lora`, [`LoraSource`]).
//!
//! Formats (safetensors):
//! - kohya: `lora_unet_<module>.lora_down.weight`, `.lora_up.weight`, `.alpha` (a scalar), and
//!   `lora_te_<module>…` for the text encoder, where `<module>` is the diffusers / transformers
//!   module path with `_` for `.` (`lora_unet_down_blocks_0_attentions_0_proj_in`);
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
use std::path::{Path, PathBuf};

use burn::tensor::TensorData;

use super::safetensors::SafetensorsSource;
use crate::config::TensorSource;
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
    pub fn load(files: &[LoraFile], weights: &BTreeMap<String, Vec<usize>>) -> Result<Self> {
        // Every module by its names in the files: kohya's flattened one and the bundle path.
        // The text encoder's answer with and without `text_model.` (transformers 4 and 5 save
        // them differently; LoRA files for SD1.5 use the first).
        let mut modules: HashMap<String, String> = HashMap::new();
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
                for m in forms {
                    modules.insert(format!("{prefix}{}", m.replace('.', "_")), name.clone());
                    modules.insert(format!("{part}.{m}"), name.clone());
                }
            }
        }
        let mut out = LoraDeltas::default();
        for f in files {
            out.add_file(f, weights, &modules)?;
        }
        Ok(out)
    }

    fn add_file(
        &mut self,
        f: &LoraFile,
        weights: &BTreeMap<String, Vec<usize>>,
        names: &HashMap<String, String>,
    ) -> Result<()> {
        let what = f.path.display().to_string();
        let src = read_file(&f.path)?;
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
                scale: f.scale * alpha / rank as f32,
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

fn read_file(path: &Path) -> Result<SafetensorsSource> {
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
        let shape = data.shape().to_vec();
        let mut v = data.try_into_vec::<f32>().map_err(|_| {
            Error::weights(format!(
                "LoRA: `{full}` is not stored as floats; LoRAs merge into float weights (convert --lora)"
            ))
        })?;
        self.deltas.apply(&full, &mut v);
        Ok(TensorData::new(v, shape))
    }

    fn make(&self, key: &str, shape: &[usize], matrix: bool) -> Option<TensorData> {
        self.base.make(key, shape, matrix)
    }
}
