//! A model stored as a diffusers-layout directory: `text_encoder/`, `image_encoder/`,
//! `fuser/`, `unet/`, `vae/` each with the reference library's `config.json` and one
//! `*.safetensors` file, plus an optional `scheduler/scheduler_config.json` (native only).

use std::path::{Path, PathBuf};

use crate::config::TensorSource;
use crate::config::parse_config;
use crate::config::{ModelConfig, ModelWeights, Part};
use crate::error::{Error, Result};
use crate::io::safetensors::SafetensorsSource;

/// The configs of a diffusers-layout directory (no weights read).
pub fn read_configs(dir: &Path) -> Result<ModelConfig> {
    let read = |rel: &str| -> Result<Option<String>> {
        let p = dir.join(rel);
        if !p.exists() {
            return Ok(None);
        }
        std::fs::read_to_string(&p)
            .map(Some)
            .map_err(|e| Error::Io(format!("cannot read {}: {e}", p.display())))
    };
    let need = |rel: &str| -> Result<String> {
        read(rel)?.ok_or_else(|| Error::invalid(format!("{}: missing {rel}", dir.display())))
    };
    Ok(ModelConfig {
        text_encoder: parse_config(&need("text_encoder/config.json")?, "text encoder")?,
        image_encoder: parse_config(&need("image_encoder/config.json")?, "image encoder")?,
        fuser: parse_config(&need("fuser/config.json")?, "fuser")?,
        unet: parse_config(&need("unet/config.json")?, "unet")?,
        vae: parse_config(&need("vae/config.json")?, "vae")?,
        scheduler: match read("scheduler/scheduler_config.json")? {
            Some(s) => parse_config(&s, "scheduler")?,
            None => Default::default(),
        },
        marker: crate::tokenizer::DEFAULT_MARKER.to_string(),
        tiny_vae: None,
        defaults: Default::default(),
    })
}

/// The one weights file of a component directory.
pub fn weights_file(dir: &Path) -> Result<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::Io(format!("cannot read {}: {e}", dir.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    found.sort();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(Error::weights(format!(
            "{}: no .safetensors file",
            dir.display()
        ))),
        _ => Err(Error::weights(format!(
            "{}: several .safetensors files ({}); keep one",
            dir.display(),
            found
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// A diffusers-layout model directory, weights read into memory.
pub struct ModelDir {
    pub config: ModelConfig,
    sources: Vec<(Part, SafetensorsSource)>,
}

impl ModelDir {
    pub fn open(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::Io(format!("{} is not a directory", dir.display())));
        }
        let config = read_configs(dir)?;
        let sources = Part::ALL
            .iter()
            .map(|&p| {
                Ok((
                    p,
                    SafetensorsSource::from_file(&weights_file(&dir.join(p.name()))?)?,
                ))
            })
            .collect::<Result<_>>()?;
        Ok(Self { config, sources })
    }
}

impl ModelWeights for ModelDir {
    fn part(&self, part: Part) -> Result<(&dyn TensorSource, String)> {
        self.sources
            .iter()
            .find(|(p, _)| *p == part)
            .map(|(_, s)| (s as &dyn TensorSource, String::new()))
            .ok_or_else(|| Error::weights(format!("missing component {}", part.name())))
    }
}
