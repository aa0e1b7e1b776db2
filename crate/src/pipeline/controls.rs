//! Controls on the prompt's conditioning that need no fine-tuning, from the literature beside
//! FastComposer (formulas and choices in docs/method.md, "Controls"):
//!
//! - **attribute sliders** (Baumann et al., CVPR 2025): a direction between two words, found with
//!   text-encoder passes only, added with a strength to one subject's noun token before fusion;
//! - **suppression** (DECOR): the prompt embeddings projected away from the span of a text's
//!   embeddings, `X' = X − s·X·V·Vᵀ`;
//! - **self-subject attention** (DreamTuner): each subject photo's latents, noised to the step's
//!   time, go through the UNet first; the generated image's self-attention then also attends to
//!   their features, weighted by the subject's mask ([`SelfAttention`];
//!   [`crate::models::attention::SelfReference`] does the attention).
//!
//! The first two stay on the device (no read-back): they run inside
//! [`super::FastComposer::start`], which a browser's WebGPU device cannot block in.

use burn::tensor::{Device, Tensor, TensorData};
use image::{GrayImage, RgbImage};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::models::attention::{SelfReference, area_resize};
use crate::models::clip_text::ClipTextModel;
use crate::models::unet::UNet2DConditionModel;
use crate::pipeline::preprocess::pad_and_resize;
use crate::rng::Pcg32;
use crate::tokenizer::{BOS, ClipTokenizer, EOS, MAX_LENGTH};

/// Move one subject along the direction from one word to another (`young` → `old`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attribute {
    /// 1-based: the subject whose marker is the `subject`-th in the prompt.
    pub subject: usize,
    pub from: String,
    pub to: String,
    /// 0 = no change, 1 = the whole difference between the words; negative moves toward `from`.
    pub strength: f64,
}

/// Project a text's meaning out of the prompt (DECOR).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Suppression {
    /// The words to suppress, e.g. `hat`.
    pub text: String,
    /// 0 = no change, 1 = the whole component removed.
    pub strength: f64,
}

/// The prompt templates a direction is averaged over; the attribute word and then the
/// subject's noun token follow each.
pub const TEMPLATES: [&str; 4] = [
    "a photo of a",
    "a close-up photo of the",
    "a picture of a",
    "a",
];

/// Relative size under which a row adds nothing new to the suppression basis.
const RANK_TOLERANCE: f32 = 1e-5;

impl std::str::FromStr for Attribute {
    type Err = Error;
    /// `INDEX:FROM:TO:STRENGTH`, e.g. `1:young:old:1.5`.
    fn from_str(s: &str) -> Result<Self> {
        let parts: Vec<&str> = s.split(':').collect();
        let [index, from, to, strength] = parts[..] else {
            return Err(Error::invalid(format!(
                "attribute `{s}`: expected INDEX:FROM:TO:STRENGTH, e.g. 1:young:old:1"
            )));
        };
        let subject = index.trim().parse().map_err(|_| {
            Error::invalid(format!(
                "attribute `{s}`: the subject index `{index}` is not a positive integer"
            ))
        })?;
        Ok(Attribute {
            subject,
            from: from.to_string(),
            to: to.to_string(),
            strength: parse_strength(strength, s, "attribute")?,
        })
    }
}

impl std::str::FromStr for Suppression {
    type Err = Error;
    /// `TEXT:STRENGTH`, e.g. `hat:1` (the text may itself hold colons; the last one splits).
    fn from_str(s: &str) -> Result<Self> {
        let Some((text, strength)) = s.rsplit_once(':') else {
            return Err(Error::invalid(format!(
                "suppression `{s}`: expected TEXT:STRENGTH, e.g. hat:1"
            )));
        };
        Ok(Suppression {
            text: text.to_string(),
            strength: parse_strength(strength, s, "suppression")?,
        })
    }
}

fn parse_strength(v: &str, whole: &str, what: &str) -> Result<f64> {
    v.trim().parse().map_err(|_| {
        Error::invalid(format!(
            "{what} `{whole}`: the strength `{v}` is not a number"
        ))
    })
}

/// Token ids of one word (or words) for a control, checked: not empty, no marker, short.
fn word_ids(tok: &ClipTokenizer, word: &str, what: &str, max: usize) -> Result<Vec<u32>> {
    if word.trim().is_empty() {
        return Err(Error::invalid(format!("{what}: the text is empty")));
    }
    let ids = tok
        .encode(word)
        .map_err(|e| Error::invalid(format!("{what}: {e}")))?;
    if ids.is_empty() {
        return Err(Error::invalid(format!(
            "{what}: `{word}` has no tokens the text encoder reads (only characters the tokenizer drops)"
        )));
    }
    if ids.iter().any(|&i| i == BOS || i == EOS) {
        return Err(Error::invalid(format!(
            "{what}: `{word}` holds the text encoder's start or end token, which is not a word"
        )));
    }
    if ids.len() > max {
        return Err(Error::invalid(format!(
            "{what}: `{word}` is {} tokens long; at most {max} fit",
            ids.len()
        )));
    }
    Ok(ids)
}

/// Check `attributes` against a prompt with `subjects` markers.
pub fn check_attributes(
    tok: &ClipTokenizer,
    attributes: &[Attribute],
    subjects: usize,
) -> Result<()> {
    let longest_template = TEMPLATES
        .iter()
        .map(|t| tok.encode(t).map(|ids| ids.len()))
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .max()
        .unwrap_or(0);
    // BOS + template + word + noun + EOS must fit.
    let room = MAX_LENGTH - 3 - longest_template;
    for (n, a) in attributes.iter().enumerate() {
        let what = format!("attribute {} ({}:{}:{})", n + 1, a.subject, a.from, a.to);
        if a.subject == 0 || a.subject > subjects {
            return Err(Error::invalid(format!(
                "{what}: subject {} does not exist; the prompt has {subjects} subject marker(s), numbered from 1",
                a.subject
            )));
        }
        if !a.strength.is_finite() {
            return Err(Error::invalid(format!(
                "{what}: the strength must be a finite number, got {}",
                a.strength
            )));
        }
        let from = word_ids(tok, &a.from, &format!("{what}, `from`"), room)?;
        let to = word_ids(tok, &a.to, &format!("{what}, `to`"), room)?;
        if from == to {
            return Err(Error::invalid(format!(
                "{what}: `from` and `to` are the same word, so there is no direction between them"
            )));
        }
    }
    Ok(())
}

/// Check `suppress`.
pub fn check_suppression(tok: &ClipTokenizer, suppress: &[Suppression]) -> Result<()> {
    for (n, s) in suppress.iter().enumerate() {
        let what = format!("suppression {} (`{}`)", n + 1, s.text);
        if !s.strength.is_finite() || !(0.0..=1.0).contains(&s.strength) {
            return Err(Error::invalid(format!(
                "{what}: the strength must be between 0 and 1, got {}",
                s.strength
            )));
        }
        word_ids(tok, &s.text, &what, MAX_LENGTH - 2)?;
    }
    Ok(())
}

/// `[BOS] ids… [EOS]`, padded with EOS to the text encoder's length.
fn padded(mut ids: Vec<u32>) -> Vec<u32> {
    ids.insert(0, BOS);
    ids.push(EOS);
    ids.resize(MAX_LENGTH, EOS);
    ids
}

/// The direction of `a` for the noun token `noun`, `[1, D]`:
/// `mean over templates of E(template + to + noun)[noun] − E(template + from + noun)[noun]`.
pub fn attribute_direction(
    text_encoder: &ClipTextModel,
    tok: &ClipTokenizer,
    a: &Attribute,
    noun: u32,
) -> Result<Tensor<2>> {
    let mut rows = Vec::with_capacity(2 * TEMPLATES.len());
    let mut positions = Vec::with_capacity(rows.capacity());
    for word in [&a.to, &a.from] {
        for t in TEMPLATES {
            let mut ids = tok.encode(t)?;
            ids.extend(tok.encode(word)?);
            ids.push(noun);
            positions.push(ids.len()); // the noun, after BOS
            rows.push(padded(ids));
        }
    }
    let hidden = text_encoder.forward_ids(&rows)?; // [2T, L, D]
    let d = text_encoder.config.hidden_size;
    let at_noun: Vec<Tensor<2>> = positions
        .iter()
        .enumerate()
        .map(|(r, &p)| {
            hidden
                .clone()
                .narrow(0, r, 1)
                .narrow(1, p, 1)
                .reshape([1, d])
        })
        .collect();
    let t = TEMPLATES.len();
    let to = Tensor::cat(at_noun[..t].to_vec(), 0).mean_dim(0);
    let from = Tensor::cat(at_noun[t..].to_vec(), 0).mean_dim(0);
    Ok(to - from)
}

/// An orthonormal basis `[r, D]` of the span of `text`'s embeddings (the text encoder's output
/// at its word tokens): the right singular vectors of those rows with a non-zero singular value,
/// found by Gram–Schmidt (twice, for round-off) on the device.
pub fn suppression_basis(
    text_encoder: &ClipTextModel,
    tok: &ClipTokenizer,
    text: &str,
) -> Result<Tensor<2>> {
    let ids = tok.encode(text)?;
    let n = ids.len();
    let d = text_encoder.config.hidden_size;
    let e = text_encoder
        .forward_ids(&[padded(ids)])?
        .narrow(1, 1, n)
        .reshape([n, d]);
    let mut basis: Option<Tensor<2>> = None;
    for i in 0..n {
        let row = e.clone().narrow(0, i, 1);
        let mut v = row.clone();
        if let Some(q) = &basis {
            for _ in 0..2 {
                let c = v.clone().matmul(q.clone().transpose()); // [1, r]
                v = v - c.matmul(q.clone());
            }
        }
        // A row (nearly) inside the span so far adds (nearly) nothing: its residual is scaled
        // by the row's own size, not blown up to unit length.
        let size = row.powf_scalar(2.0).sum().sqrt().reshape([1, 1]);
        let norm = v.clone().powf_scalar(2.0).sum().sqrt().reshape([1, 1]);
        let q = v / norm.max_pair(size * RANK_TOLERANCE);
        basis = Some(match basis {
            None => q,
            Some(b) => Tensor::cat(vec![b, q], 0),
        });
    }
    Ok(basis.expect("a checked text has at least one token"))
}

/// `X − s·X·V·Vᵀ` on every row of `x` `[1, L, D]` but the start token's (the same for every
/// prompt, it carries no words and is the attention's sink).
pub fn suppress(x: Tensor<3>, basis: &Tensor<2>, strength: f64) -> Tensor<3> {
    let [b, l, d] = x.dims();
    let flat = x.clone().reshape([b * l, d]);
    let projected = flat
        .matmul(basis.clone().transpose())
        .matmul(basis.clone())
        .reshape([b, l, d]);
    let keep_start = {
        let mut m = vec![1.0f32; l];
        m[0] = 0.0;
        Tensor::<3>::from_data(TensorData::new(m, [1, l, 1]), &x.device())
    };
    x - projected * keep_start * strength
}

/// What self-subject attention needs of a subject photo, computed with its embedding where the
/// model has a VAE encoder: the photo's latents at the model's native size and where the subject
/// is in them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubjectReference {
    /// `[C, h, w]`: the VAE encoder's mean times the scaling factor.
    pub latents: Vec<f32>,
    /// `[h, w]` in [0, 1]: the subject's mask (the whole photo without one; the bars that pad it
    /// to a square are 0).
    pub mask: Vec<f32>,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

/// The VAE encoder's input for a reference photo, `[3, size, size]` in [-1, 1] (padded to a
/// square and resized as a subject photo is), and its mask at `size / factor`, `[h, w]` in [0, 1].
pub fn reference_inputs(
    photo: &RgbImage,
    mask: Option<&GrayImage>,
    size: usize,
    factor: usize,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let pixels = pad_and_resize(photo, size)
        .into_iter()
        .map(|b| b as f32 / 127.5 - 1.0)
        .collect();
    if let Some(m) = mask
        && m.dimensions() != photo.dimensions()
    {
        return Err(Error::invalid(format!(
            "the mask is {}x{} but the photo is {}x{}; they must have the same size",
            m.width(),
            m.height(),
            photo.width(),
            photo.height()
        )));
    }
    let as_rgb = RgbImage::from_fn(photo.width(), photo.height(), |x, y| {
        let v = mask.map_or(255, |m| m.get_pixel(x, y)[0]);
        image::Rgb([v, v, v])
    });
    let side = size / factor;
    let mask = pad_and_resize(&as_rgb, side)[..side * side]
        .iter()
        .map(|&b| b as f32 / 255.0)
        .collect();
    Ok((pixels, mask))
}

/// Self-subject attention for one generation: the subjects' latents and masks at the
/// generation's latent size, the noise they are noised with, and the attention's state.
pub struct SelfAttention {
    reference: SelfReference,
    /// `[k, C, h, w]`.
    latents: Tensor<4>,
    /// `[k, C, h, w]`, drawn once per generation from the seed (`!seed`).
    noise: Tensor<4>,
    alphas_cumprod: Vec<f32>,
}

impl SelfAttention {
    /// `references` in marker order; `latent` `[C, h, w]` of the generation.
    pub fn new(
        strength: f64,
        references: &[&SubjectReference],
        latent: [usize; 3],
        seed: u64,
        alphas_cumprod: Vec<f32>,
        device: &Device,
    ) -> Result<Self> {
        let [c, h, w] = latent;
        let k = references.len();
        let mut latents = Vec::with_capacity(k * c * h * w);
        let mut masks = Vec::with_capacity(k);
        for (j, r) in references.iter().enumerate() {
            if r.channels != c
                || r.latents.len() != c * r.height * r.width
                || r.mask.len() != r.height * r.width
                || r.latents.iter().chain(&r.mask).any(|v| !v.is_finite())
            {
                return Err(Error::invalid(format!(
                    "subject {}: its reference latents do not fit this model ({c} channels)",
                    j + 1
                )));
            }
            let from = [r.height, r.width];
            for ch in r.latents.chunks_exact(r.height * r.width) {
                latents.extend(area_resize(ch, from, [h, w]));
            }
            masks.push(area_resize(&r.mask, from, [h, w]));
        }
        let noise = Pcg32::new(!seed).normals(k * c * h * w);
        let tensor = |v: Vec<f32>| Tensor::<4>::from_data(TensorData::new(v, [k, c, h, w]), device);
        Ok(Self {
            reference: SelfReference::new(strength as f32, masks, [h, w]),
            latents: tensor(latents),
            noise: tensor(noise),
            alphas_cumprod,
        })
    }

    /// The reference pass at timestep `t`: the subjects' latents noised to `t`
    /// (`√ᾱ·z + √(1−ᾱ)·ε`), each repeated for the `B` rows of `cond` `[B, T, D]`, through the
    /// UNet with the same conditioning, recording. Returns what the generated pass attends with.
    pub fn reference_pass(
        &self,
        unet: &UNet2DConditionModel,
        t: usize,
        cond: &Tensor<3>,
    ) -> Result<&SelfReference> {
        let a = self.alphas_cumprod[t] as f64;
        let [k, c, h, w] = self.latents.dims();
        let [b, l, d] = cond.dims();
        let z = self.latents.clone() * a.sqrt() + self.noise.clone() * (1.0 - a).sqrt();
        let z = z
            .unsqueeze_dim::<5>(1)
            .repeat_dim(1, b)
            .reshape([k * b, c, h, w]);
        let cond = cond
            .clone()
            .unsqueeze_dim::<4>(0)
            .repeat_dim(0, k)
            .reshape([k * b, l, d]);
        let tt = Tensor::<1>::full([k * b], t as f32, &z.device());
        self.reference.record();
        unet.forward_with(z, tt, &cond, Some(&self.reference))?;
        self.reference.apply();
        Ok(&self.reference)
    }

    /// Drop the recorded features (after the generated pass).
    pub fn clear(&self) {
        self.reference.clear();
    }
}
