//! `fastcomposer convert`: published checkpoints -> a bundle (native only).
//!
//! Inputs: a diffusers-layout directory (`text_encoder/`, `image_encoder/`, `fuser/`, `unet/`,
//! `vae/`, each with a `*.safetensors`), or one FastComposer checkpoint — `.safetensors` or
//! PyTorch `.bin` — whose keys carry the prefixes `text_encoder.`, `image_encoder.`, `vae.`,
//! `unet.` and `postfuse_module.`. Tensors are read one at a time (peak memory ≈ the largest
//! tensor a few times over, not the checkpoint).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use safetensors::tensor::Metadata;

use crate::config::{AutoencoderTinyConfig, ModelConfig, Part, parse_config};
use crate::error::{Error, Result};
use crate::io::bundle::write::{BundleMeta, PlannedTensor, write_bundle};
use crate::io::model_dir::{read_configs, weights_file};
use crate::io::pickle::TorchCheckpoint;
use crate::io::safetensors::bytes_to_f32;
use crate::quant::{QuantMode, policy};

/// A safetensors file read one tensor at a time.
pub struct SafetensorsFile {
    file: std::cell::RefCell<File>,
    data_start: u64,
    metadata: Metadata,
    path: String,
}

impl SafetensorsFile {
    pub fn open(path: &Path) -> Result<Self> {
        let what = path.display().to_string();
        let mut file =
            File::open(path).map_err(|e| Error::Io(format!("cannot read {what}: {e}")))?;
        let mut n = [0u8; 8];
        file.read_exact(&mut n).map_err(|_| {
            Error::weights(format!("{what}: not a valid safetensors file (too short)"))
        })?;
        let n = u64::from_le_bytes(n);
        if n > 100 << 20 {
            return Err(Error::weights(format!(
                "{what}: not a valid safetensors file (header of {n} bytes)"
            )));
        }
        let mut header = vec![0u8; n as usize];
        file.read_exact(&mut header)
            .map_err(|_| Error::weights(format!("{what}: truncated safetensors header")))?;
        let metadata: Metadata = serde_json::from_slice(&header)
            .map_err(|e| Error::weights(format!("{what}: not a valid safetensors file ({e})")))?;
        let len = file.metadata().map_err(|e| Error::Io(e.to_string()))?.len();
        if 8 + n + metadata.data_len() as u64 > len {
            return Err(Error::weights(format!("{what}: the file is truncated")));
        }
        Ok(Self {
            file: std::cell::RefCell::new(file),
            data_start: 8 + n,
            metadata,
            path: what,
        })
    }

    pub fn names(&self) -> Vec<(String, Vec<usize>)> {
        let mut v: Vec<_> = self
            .metadata
            .tensors()
            .into_iter()
            .map(|(k, i)| (k, i.shape.clone()))
            .collect();
        v.sort();
        v
    }

    pub fn read_f32(&self, name: &str) -> Result<Vec<f32>> {
        let info = self
            .metadata
            .info(name)
            .ok_or_else(|| Error::weights(format!("missing tensor `{name}`")))?;
        let (a, b) = info.data_offsets;
        let mut raw = vec![0u8; b - a];
        let mut f = self.file.borrow_mut();
        f.seek(SeekFrom::Start(self.data_start + a as u64))
            .map_err(|e| Error::Io(e.to_string()))?;
        f.read_exact(&mut raw)
            .map_err(|e| Error::Io(format!("{}: {e}", self.path)))?;
        bytes_to_f32(info.dtype, &raw, name)
    }
}

/// Options of `fastcomposer convert`.
pub struct ConvertOptions {
    pub from: PathBuf,
    pub configs: Option<PathBuf>,
    pub quant: QuantMode,
    pub out: PathBuf,
    pub name: Option<String>,
    pub license: Option<String>,
    pub card: Option<String>,
    /// Keep the VAE encoder (`vae.encoder.*`, `vae.quant_conv.*`). Generation only decodes, so
    /// by default a bundle leaves it out (34 M parameters at SD1.5 size).
    pub keep_vae_encoder: bool,
    /// LoRAs merged into the UNet and the text encoder before quantization.
    pub loras: Vec<super::lora::LoraFile>,
    /// Generation settings recorded in the bundle (e.g. an LCM-LoRA's scheduler, steps and
    /// guidance); the scheduler name is checked by the caller, which knows the schedulers.
    pub defaults: crate::config::GenerationDefaults,
    /// A tiny autoencoder (TAESD) to add as a second decoder: a diffusers `AutoencoderTiny`
    /// directory (`config.json` and its weights), or a `.safetensors` file (its config from a
    /// `config.json` beside it, else TAESD's for SD1.5). Only the decoder is kept.
    pub tiny_vae: Option<PathBuf>,
}

/// Tensors a generation never reads: the VAE encoder.
fn is_vae_encoder(bundle_name: &str) -> bool {
    bundle_name.starts_with("vae.encoder.") || bundle_name.starts_with("vae.quant_conv.")
}

/// A tiny autoencoder's config and weights file (see [`ConvertOptions::tiny_vae`]).
fn open_tiny_vae(path: &Path) -> Result<(AutoencoderTinyConfig, SafetensorsFile)> {
    let (config_path, weights) = if path.is_dir() {
        (path.join("config.json"), weights_file(path)?)
    } else {
        (
            path.parent().unwrap_or(Path::new(".")).join("config.json"),
            path.to_path_buf(),
        )
    };
    let config = if config_path.exists() {
        let text = std::fs::read_to_string(&config_path)
            .map_err(|e| Error::Io(format!("cannot read {}: {e}", config_path.display())))?;
        parse_config(&text, "tiny vae")?
    } else if path.is_dir() {
        return Err(Error::invalid(format!(
            "{}: missing config.json",
            path.display()
        )));
    } else {
        AutoencoderTinyConfig::default()
    };
    Ok((config, SafetensorsFile::open(&weights)?))
}

/// What was written.
#[derive(Debug)]
pub struct ConvertReport {
    pub tensors: usize,
    pub bytes: u64,
    pub by_type: Vec<(String, usize, u64)>,
}

/// The bundle name of a checkpoint key (FastComposer's single-file prefixes).
fn checkpoint_name(key: &str) -> Result<String> {
    for (prefix, part) in [
        ("text_encoder.", Part::TextEncoder),
        ("image_encoder.", Part::ImageEncoder),
        ("vae.", Part::Vae),
        ("unet.", Part::Unet),
        ("postfuse_module.", Part::Fuser),
        ("fuser.", Part::Fuser),
    ] {
        if let Some(rest) = key.strip_prefix(prefix) {
            return Ok(format!("{}.{rest}", part.name()));
        }
    }
    Err(Error::weights(format!(
        "unexpected tensor `{key}`: a FastComposer checkpoint holds text_encoder., image_encoder., vae., unet. and postfuse_module. keys"
    )))
}

/// Convert a checkpoint to a bundle.
pub fn convert(o: &ConvertOptions) -> Result<ConvertReport> {
    enum Src {
        St(SafetensorsFile),
        Torch(TorchCheckpoint),
    }
    let mut plan: Vec<(String, Vec<usize>, usize, String)> = Vec::new(); // (bundle name, shape, source, source key)
    let mut sources: Vec<Src> = Vec::new();
    let mut config: ModelConfig;
    if o.from.is_dir() {
        config = read_configs(o.configs.as_deref().unwrap_or(&o.from))?;
        for part in Part::ALL {
            let f = SafetensorsFile::open(&weights_file(&o.from.join(part.name()))?)?;
            for (k, shape) in f.names() {
                plan.push((format!("{}.{k}", part.name()), shape, sources.len(), k));
            }
            sources.push(Src::St(f));
        }
    } else {
        config = match &o.configs {
            Some(dir) => read_configs(dir)?,
            None => ModelConfig::default(),
        };
        let ext = o.from.extension().and_then(|e| e.to_str()).unwrap_or("");
        let src = match ext {
            "safetensors" => Src::St(SafetensorsFile::open(&o.from)?),
            "bin" | "pt" | "pth" | "ckpt" => Src::Torch(TorchCheckpoint::open(&o.from)?),
            _ => {
                if !o.from.exists() {
                    return Err(Error::Io(format!(
                        "cannot read {}: no such file or directory",
                        o.from.display()
                    )));
                }
                return Err(Error::invalid(format!(
                    "{}: expected a directory, a .safetensors or a .bin checkpoint",
                    o.from.display()
                )));
            }
        };
        let names: Vec<(String, Vec<usize>)> = match &src {
            Src::St(f) => f.names(),
            Src::Torch(t) => t
                .tensors()
                .iter()
                .map(|(k, r)| (k.clone(), r.shape.clone()))
                .collect(),
        };
        for (k, shape) in names {
            if k.ends_with("position_ids") {
                continue; // a buffer, not a parameter
            }
            plan.push((checkpoint_name(&k)?, shape, 0, k));
        }
        sources.push(src);
    }
    config.defaults = o.defaults.clone();
    if let Some(path) = &o.tiny_vae {
        let (cfg, f) = open_tiny_vae(path)?;
        for (k, shape) in f.names() {
            if k.starts_with("decoder.") {
                plan.push((
                    format!("{}.{k}", Part::TinyVae.name()),
                    shape,
                    sources.len(),
                    k,
                ));
            }
        }
        if !plan.iter().any(|(n, ..)| n.starts_with("tiny_vae.")) {
            return Err(Error::weights(format!(
                "{}: no `decoder.` tensors for the tiny autoencoder",
                path.display()
            )));
        }
        sources.push(Src::St(f));
        config.tiny_vae = Some(cfg);
    }
    config.check()?;
    if !o.keep_vae_encoder {
        plan.retain(|(name, ..)| !is_vae_encoder(name));
    }
    for part in Part::ALL {
        let p = format!("{}.", part.name());
        if !plan.iter().any(|(n, ..)| n.starts_with(&p)) {
            return Err(Error::weights(format!(
                "{}: no `{}` tensors",
                o.from.display(),
                part.name()
            )));
        }
    }
    plan.sort_by(|a, b| a.0.cmp(&b.0));
    let index: std::collections::BTreeMap<String, Vec<usize>> = plan
        .iter()
        .map(|(n, s, ..)| (n.clone(), s.clone()))
        .collect();
    let deltas = &super::lora::LoraDeltas::load(&o.loras, &index)?;
    let sources = &sources;
    let torch_index: std::collections::HashMap<String, usize> = match sources.first() {
        Some(Src::Torch(t)) => t
            .tensors()
            .iter()
            .enumerate()
            .map(|(i, (k, _))| (k.clone(), i))
            .collect(),
        _ => Default::default(),
    };
    let torch_index = &torch_index;
    let tensors: Vec<PlannedTensor> = plan
        .iter()
        .map(|(name, shape, si, key)| {
            let ty = policy(o.quant, name, shape);
            PlannedTensor {
                name: name.clone(),
                shape: shape.clone(),
                ty,
                read: Box::new(move || {
                    let mut v = match &sources[*si] {
                        Src::St(f) => f.read_f32(key)?,
                        Src::Torch(t) => t.read_f32(&t.tensors()[torch_index[key]].1)?,
                    };
                    deltas.apply(name, &mut v);
                    Ok(v)
                }),
            }
        })
        .collect();
    let mut by_type: Vec<(String, usize, u64)> = Vec::new();
    for t in &tensors {
        let n: u64 = t.shape.iter().map(|&d| d as u64).product();
        let size = t.ty.byte_size(n).unwrap_or(0);
        match by_type.iter_mut().find(|(k, ..)| k == t.ty.name()) {
            Some(e) => {
                e.1 += 1;
                e.2 += size
            }
            None => by_type.push((t.ty.name().to_string(), 1, size)),
        }
    }
    let name = o.name.clone().unwrap_or_else(|| {
        o.from
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into())
    });
    let meta = BundleMeta {
        description: format!(
            "{name}: FastComposer (SD1.5 family) converted by fastcomposer {} from `{}`, weights {}.\n\n{}",
            env!("CARGO_PKG_VERSION"),
            o.from
                .file_name()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
            o.quant.name(),
            o.card.clone().unwrap_or_default()
        ),
        name,
        license: o
            .license
            .clone()
            .unwrap_or_else(|| "unspecified: see the licence of the source checkpoint".into()),
        config,
        tokenizer_bpe_gz: crate::tokenizer::VOCAB_GZ.to_vec(),
    };
    let n = tensors.len();
    let bytes = write_bundle(&o.out, &meta, o.quant, tensors)?;
    Ok(ConvertReport {
        tensors: n,
        bytes,
        by_type,
    })
}
