//! Subject photos: decoding with limits, validation, and the preprocessing METHOD.md states —
//! pad to square with centred black bars, resize to the encoder's size (bilinear with
//! antialiasing, as torch's `interpolate(..., antialias=True)` computes it, rounded back to
//! 8 bits half-to-even), scale to [0, 1], normalise with CLIP's mean and std.

use image::{ImageReader, RgbImage};

use crate::error::{Error, Result};
use crate::rng::Pcg32;

pub const CLIP_MEAN: [f32; 3] = [0.48145466, 0.4578275, 0.40821073];
pub const CLIP_STD: [f32; 3] = [0.26862954, 0.26130258, 0.27577711];

/// Smallest side a subject photo may have.
pub const MIN_SIDE: u32 = 16;
/// Largest side a subject photo may have.
pub const MAX_SIDE: u32 = 8192;
/// Most extreme width:height (or height:width) ratio accepted.
pub const MAX_ASPECT: u32 = 8;

/// Check a subject photo's size; `what` names it in the message.
pub fn check_dimensions(width: u32, height: u32, what: &str) -> Result<()> {
    if width == 0 || height == 0 {
        return Err(Error::invalid(format!(
            "{what}: the image is empty ({width}x{height})"
        )));
    }
    if width < MIN_SIDE || height < MIN_SIDE {
        return Err(Error::invalid(format!(
            "{what}: {width}x{height} is too small; each side needs at least {MIN_SIDE} pixels"
        )));
    }
    if width > MAX_SIDE || height > MAX_SIDE {
        return Err(Error::invalid(format!(
            "{what}: {width}x{height} is too large; each side may have at most {MAX_SIDE} pixels"
        )));
    }
    let (long, short) = (width.max(height), width.min(height));
    if long > short * MAX_ASPECT {
        return Err(Error::invalid(format!(
            "{what}: {width}x{height} is too elongated (more than {MAX_ASPECT}:1); crop it around the subject"
        )));
    }
    Ok(())
}

/// Decode a PNG, JPEG or WebP file into RGB (alpha dropped, grey expanded), with size limits
/// checked before the pixels are decoded.
pub fn decode_image(bytes: &[u8], what: &str) -> Result<RgbImage> {
    if bytes.is_empty() {
        return Err(Error::invalid(format!("{what}: the file is empty")));
    }
    let reader = ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Error::invalid(format!("{what}: cannot read the image ({e})")))?;
    if reader.format().is_none() {
        return Err(Error::invalid(format!(
            "{what}: not an image (expected PNG, JPEG or WebP)"
        )));
    }
    let (w, h) = reader
        .into_dimensions()
        .map_err(|e| Error::invalid(format!("{what}: cannot read the image ({e})")))?;
    check_dimensions(w, h, what)?;
    let mut reader = ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Error::invalid(format!("{what}: cannot read the image ({e})")))?;
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(512 << 20);
    reader.limits(limits);
    let img = reader
        .decode()
        .map_err(|e| Error::invalid(format!("{what}: cannot decode the image ({e})")))?;
    Ok(img.to_rgb8())
}

/// Interpolation taps of every output index: torch's `_compute_indices_weights_aa` for the
/// bilinear (triangle) filter, align_corners = false, with its mix of f32 values and f64
/// intermediates reproduced so the 8-bit results are identical.
fn aa_taps(in_size: usize, out_size: usize) -> Vec<(usize, Vec<f32>)> {
    let scale = in_size as f32 / out_size as f32;
    let support = if scale >= 1.0 { scale } else { 1.0 };
    let invscale = if scale >= 1.0 { 1.0 / scale } else { 1.0 };
    (0..out_size)
        .map(|i| {
            let center = (scale as f64 * (i as f64 + 0.5)) as f32;
            let xmin = (((center - support) as f64 + 0.5) as i64).max(0) as usize;
            let xmax = (((center + support) as f64 + 0.5) as i64).min(in_size as i64) as usize;
            let mut w: Vec<f32> = (xmin..xmax)
                .map(|j| {
                    let x = ((((j as f32 - center) as f64) + 0.5) * invscale as f64) as f32;
                    let x = x.abs();
                    if x < 1.0 {
                        (1.0 - x as f64) as f32
                    } else {
                        0.0
                    }
                })
                .collect();
            let total: f32 = w.iter().fold(0.0, |a, &b| a + b);
            if total != 0.0 {
                w.iter_mut().for_each(|v| *v /= total);
            }
            (xmin, w)
        })
        .collect()
}

/// One output value: `src[0]·w[0]`, then fused multiply-adds (torch's vectorised loop).
fn aa_dot(ws: &[f32], src: impl Fn(usize) -> f32) -> f32 {
    let mut acc = src(0) * ws[0];
    for (k, w) in ws.iter().enumerate().skip(1) {
        acc = src(k).mul_add(*w, acc);
    }
    acc
}

/// Pad to square (black bars of `(long - short) / 2` on both sides) and resize to
/// `size`×`size`, returning planar u8 RGB `[3, size, size]`. The padding is virtual: rows and
/// columns outside the photo read as zero, so a large photo is never copied.
pub fn pad_and_resize(img: &RgbImage, size: usize) -> Vec<u8> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let (pad_x, pad_y) = if h > w {
        ((h - w) / 2, 0)
    } else {
        (0, (w - h) / 2)
    };
    let (pw, ph) = (w + 2 * pad_x, h + 2 * pad_y);
    let px = |x: usize, y: usize, c: usize| -> f32 {
        if x < pad_x || x >= pad_x + w || y < pad_y || y >= pad_y + h {
            0.0
        } else {
            img.get_pixel((x - pad_x) as u32, (y - pad_y) as u32)[c] as f32
        }
    };
    // Horizontal pass first, then vertical (torch's order), in f32.
    let tx = aa_taps(pw, size);
    let ty = aa_taps(ph, size);
    let mut out = vec![0u8; 3 * size * size];
    let mut tmp = vec![0f32; ph * size];
    for c in 0..3 {
        for y in 0..ph {
            for (ox, (x0, ws)) in tx.iter().enumerate() {
                tmp[y * size + ox] = aa_dot(ws, |k| px(x0 + k, y, c));
            }
        }
        for (oy, (y0, ws)) in ty.iter().enumerate() {
            for ox in 0..size {
                let v = aa_dot(ws, |k| tmp[(y0 + k) * size + ox]);
                out[c * size * size + oy * size + ox] = v.round_ties_even().clamp(0.0, 255.0) as u8;
            }
        }
    }
    out
}

/// Replace the background of a photo (mask value < 128) with uniform noise, as FastComposer's
/// training cut subjects out onto noise. The noise is seeded, so the result is deterministic.
pub fn apply_mask(img: &RgbImage, mask: &image::GrayImage) -> Result<RgbImage> {
    if img.dimensions() != mask.dimensions() {
        return Err(Error::invalid(format!(
            "the mask is {}x{} but the photo is {}x{}; they must have the same size",
            mask.width(),
            mask.height(),
            img.width(),
            img.height()
        )));
    }
    let mut rng = Pcg32::new(0x5EED);
    let mut out = img.clone();
    for (p, m) in out.pixels_mut().zip(mask.pixels()) {
        let noise = [
            rng.next_u32() as u8,
            rng.next_u32() as u8,
            rng.next_u32() as u8,
        ];
        if m[0] < 128 {
            p.0 = noise;
        }
    }
    Ok(out)
}

/// The image encoder's input for one photo: `[3, size, size]` normalised f32.
pub fn subject_pixel_values(img: &RgbImage, size: usize) -> Result<Vec<f32>> {
    check_dimensions(img.width(), img.height(), "subject photo")?;
    let bytes = pad_and_resize(img, size);
    let plane = size * size;
    Ok(bytes
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            let c = i / plane;
            (b as f32 / 255.0 - CLIP_MEAN[c]) / CLIP_STD[c]
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dimension_checks() {
        assert!(check_dimensions(0, 10, "x").is_err());
        assert!(check_dimensions(1, 20000, "x").is_err());
        assert!(check_dimensions(64, 1000, "x").is_err());
        assert!(check_dimensions(64, 512, "x").is_ok());
        assert!(check_dimensions(9000, 9000, "x").is_err());
    }

    #[test]
    fn resize_identity_and_padding() {
        // Same size: identity.
        let img = RgbImage::from_fn(20, 20, |x, y| image::Rgb([x as u8 * 10, y as u8 * 10, 7]));
        let out = pad_and_resize(&img, 20);
        assert_eq!(out[3 * 20 + 5], 50);
        assert_eq!(out[2 * 400 + 17], 7);
        // Wide image: black bars top and bottom.
        let wide = RgbImage::from_pixel(40, 20, image::Rgb([200, 200, 200]));
        let out = pad_and_resize(&wide, 40);
        assert_eq!(out[0], 0);
        assert_eq!(out[20 * 40 + 20], 200);
    }
}
