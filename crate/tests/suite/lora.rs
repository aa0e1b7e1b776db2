//! LoRA files (`io::lora`) against peft: the tiny UNet and text encoder fixtures with a rank-4,
//! alpha-8 LoRA (linear layers, and the resnets' 3×3-down / 1×1-up convolutions) applied by peft
//! at scale 0.7 (tools/reference/make_fixtures.py `lora`), the same updates read from kohya
//! (diffusers and original SD module names), diffusers/peft and diffusers' older files. Tolerance: max abs error ≤ 1e-4 of the largest
//! reference value.

use std::collections::BTreeMap;
use std::sync::Arc;

use fastcomposer::Error;
use fastcomposer::config::TensorSource;
use fastcomposer::io::bundle::Bundle;
use fastcomposer::io::lora::{LoraDeltas, LoraFile, LoraInput, LoraSource};
use fastcomposer::io::safetensors::SafetensorsSource;
use fastcomposer::kernels::attention::AttentionKernel;
use fastcomposer::models::forward::{Component, forward_component};
use fastcomposer::pipeline::components::Residency;
use fastcomposer::pipeline::{FastComposer, GenerateOptions};

use crate::common::{convert_bundle, denoise, fixture, fixtures, max_abs_diff, test_device};

/// `kohya_sd`: kohya with the original SD checkpoint's UNet names (`input_blocks_4_1_…`).
const FORMATS: [&str; 4] = ["kohya", "kohya_sd", "peft", "diffusers_old"];

fn lora(format: &str, scale: f32) -> LoraFile {
    format!(
        "{}:{scale}",
        fixtures()
            .join(format!("lora/{format}.safetensors"))
            .display()
    )
    .parse()
    .unwrap()
}

/// The component's bundle names and shapes, as `convert` indexes them.
fn index(weights: &SafetensorsSource, prefix: &str) -> BTreeMap<String, Vec<usize>> {
    weights
        .names()
        .into_iter()
        .map(|n| (format!("{prefix}{n}"), weights.shape(&n).unwrap()))
        .collect()
}

/// `component`'s output on its fixture's case0 with `loras` applied.
fn forward_with(dir: &str, component: Component, loras: &[LoraFile]) -> Result<Vec<f32>, Error> {
    let config = std::fs::read_to_string(fixtures().join(dir).join("config.json")).unwrap();
    let weights = fixture(&format!("{dir}/weights.safetensors"));
    let inputs = fixture(&format!("{dir}/case0.in.safetensors"));
    let prefix = component.lora_prefix().unwrap();
    let deltas = LoraDeltas::load(loras, &index(&weights, prefix))?;
    let source = LoraSource {
        base: &weights,
        prefix: prefix.to_string(),
        deltas: &deltas,
    };
    let out = forward_component(
        component,
        &config,
        &source,
        &inputs,
        &test_device(),
        AttentionKernel::default(),
    )?;
    Ok(out.try_into_vec::<f32>().unwrap())
}

#[test]
fn each_format_matches_peft_on_the_unet_and_the_text_encoder() {
    for (dir, component, reference) in [
        ("unet_tiny", Component::Unet, "lora/unet.out.safetensors"),
        (
            "text_encoder",
            Component::TextEncoder,
            "lora/text_encoder.out.safetensors",
        ),
    ] {
        let (_, want) = fixture(reference).read_f32("out").unwrap();
        let base = forward_with(dir, component, &[]).unwrap();
        let (moved, _) = max_abs_diff(&base, &want);
        for format in FORMATS {
            let got = forward_with(dir, component, &[lora(format, 0.7)]).unwrap();
            let (err, mag) = max_abs_diff(&got, &want);
            println!(
                "{dir} + {format} LoRA at 0.7: max abs error {err:.2e} (max |ref| {mag:.2}; the LoRA moves it {moved:.2})"
            );
            assert!(err <= 1e-4 * mag, "{dir} + {format}: {err} (max {mag})");
        }
        // The LoRA must matter, or the comparison proves nothing.
        assert!(
            moved > 100.0 * 1e-4,
            "{dir}: the LoRA changes the output by {moved}"
        );
    }
}

/// Scale 0 is the model without the LoRA, bit for bit; two files add up.
#[test]
fn scales_add_up_and_zero_is_no_lora() {
    let base = forward_with("unet_tiny", Component::Unet, &[]).unwrap();
    let zero = forward_with("unet_tiny", Component::Unet, &[lora("kohya", 0.0)]).unwrap();
    assert_eq!(zero, base);
    let (_, want) = fixture("lora/unet.out.safetensors")
        .read_f32("out")
        .unwrap();
    let halves = forward_with(
        "unet_tiny",
        Component::Unet,
        &[lora("kohya", 0.35), lora("peft", 0.35)],
    )
    .unwrap();
    let (err, mag) = max_abs_diff(&halves, &want);
    assert!(err <= 1e-4 * mag, "0.35 + 0.35: {err} (max {mag})");
}

fn weights_error(r: Result<Vec<f32>, Error>, needles: &[&str]) {
    match r {
        Err(Error::Weights(m)) => {
            for n in needles {
                assert!(m.contains(n), "expected {n:?} in {m:?}");
            }
        }
        other => panic!("expected a weights error, got {:?}", other.map(|v| v.len())),
    }
}

#[test]
fn files_that_do_not_fit_are_refused_whole() {
    let dir = std::env::temp_dir().join(format!("fastcomposer-lora-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // A LoRA for another UNet (same block names, other widths): the first module that does not
    // fit is named.
    weights_error(
        forward_with("unet_sd_order", Component::Unet, &[lora("kohya", 1.0)]),
        &["do not fit"],
    );
    // A module the model does not have, after modules it does.
    let src = fixture("lora/kohya.safetensors");
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = src
        .names()
        .into_iter()
        .filter(|n| n.starts_with("lora_unet_down_blocks_0_attentions_0"))
        .map(|n| {
            let (s, v) = src.read_f32(&n).unwrap();
            (n, s, v)
        })
        .collect();
    let matched = tensors.len() / 3;
    tensors.push((
        "lora_unet_mid_block_no_such_layer.lora_down.weight".into(),
        vec![4, 32],
        vec![0.0; 128],
    ));
    let path = dir.join("extra.safetensors");
    write(&path, &tensors);
    let extra = LoraFile {
        path: path.clone(),
        scale: 1.0,
    };
    weights_error(
        forward_with("unet_tiny", Component::Unet, &[extra]),
        &[
            "lora_unet_mid_block_no_such_layer",
            &format!("{matched} of {} modules matched", matched + 1),
        ],
    );
    // A truncated file.
    let bytes = std::fs::read(fixtures().join("lora/peft.safetensors")).unwrap();
    let cut = dir.join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let r = forward_with(
        "unet_tiny",
        Component::Unet,
        &[LoraFile {
            path: cut,
            scale: 1.0,
        }],
    );
    assert!(
        matches!(r, Err(Error::Weights(_) | Error::Io(_))),
        "truncated: {:?}",
        r.map(|v| v.len())
    );
    // A scale that is not a number.
    let bad = "x.safetensors:nan".parse::<LoraFile>();
    assert!(matches!(bad, Err(Error::InvalidInput(m)) if m.contains("finite")));
}

fn write(path: &std::path::Path, tensors: &[(String, Vec<usize>, Vec<f32>)]) {
    use safetensors::tensor::{Dtype, TensorView};
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .zip(&bytes)
        .map(|((n, s, _), b)| {
            (
                n.clone(),
                TensorView::new(Dtype::F32, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

/// A kohya LoRA for the pipeline fixture model, written under `dir`: rank-2 updates (seeded
/// random) on the UNet's attention projections and resnet 3×3 convolutions and on the text
/// encoder's attention projections.
fn pipeline_lora(bundle: &Bundle, dir: &std::path::Path) -> std::path::PathBuf {
    let mut rng = fastcomposer::rng::Pcg32::new(41);
    let mut tensors = Vec::new();
    for name in bundle.names() {
        let picked = [
            "to_q.weight",
            "to_v.weight",
            "conv1.weight",
            "q_proj.weight",
        ]
        .iter()
        .any(|s| name.ends_with(s));
        let (Some(module), true) = (name.strip_suffix(".weight"), picked) else {
            continue;
        };
        let shape = bundle.shape(&name).unwrap();
        let (prefix, module) = match module.split_once('.') {
            Some(("unet", m)) => ("lora_unet_", m),
            Some(("text_encoder", m)) => ("lora_te_", m),
            _ => continue,
        };
        let flat = format!("{prefix}{}", module.replace('.', "_"));
        let rank = 2;
        let mut down_shape = vec![rank];
        down_shape.extend_from_slice(&shape[1..]);
        let mut up_shape = vec![shape[0], rank];
        up_shape.extend(std::iter::repeat_n(1, shape.len() - 2));
        let k: usize = shape[1..].iter().product();
        let scaled = |n: usize, s: f32, rng: &mut fastcomposer::rng::Pcg32| {
            rng.normals(n)
                .into_iter()
                .map(|v| v * s)
                .collect::<Vec<f32>>()
        };
        let down = scaled(rank * k, 1.0 / (k as f32).sqrt(), &mut rng);
        let up = scaled(shape[0] * rank, 0.5, &mut rng);
        tensors.push((format!("{flat}.lora_down.weight"), down_shape, down));
        tensors.push((format!("{flat}.lora_up.weight"), up_shape, up));
        tensors.push((format!("{flat}.alpha"), vec![], vec![rank as f32]));
    }
    assert!(tensors.len() > 30, "{} LoRA tensors", tensors.len());
    let path = dir.join("pipeline_lora.safetensors");
    write(&path, &tensors);
    path
}

/// An image from `model` (no subjects: the LoRA changes the text encoder and the UNet).
fn image(model: &FastComposer) -> Vec<u8> {
    let opts = GenerateOptions {
        prompt: "a cat in the snow".into(),
        steps: 4,
        guidance: 5.0,
        seed: 5,
        width: Some(64),
        height: Some(64),
        ..Default::default()
    };
    let mut d = model.start(&opts, &[], None).unwrap();
    denoise(&mut d);
    d.decode_rgb().unwrap().pixels
}

/// LoRAs given at load (`generate --lora`, the JS API's `loras`) merge into a bundle's weights
/// as `convert --lora` merges them before writing it, up to the stored type's rounding (f16;
/// int8: dequantized, updated, quantized again). Scale 0 is no
/// LoRA; a LoRA that does not fit is refused before anything loads, and the bundle still
/// loads without it.
#[test]
fn loras_at_load_merge_as_convert_does() {
    let dir = std::env::temp_dir().join(format!("fastcomposer-lora-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let from = fixtures().join("pipeline/model");
    let load = |path: &std::path::Path, loras: Vec<LoraInput>| {
        FastComposer::load_bundle_with_loras(
            Arc::new(Bundle::open(path).unwrap()),
            loras,
            &test_device(),
            AttentionKernel::default(),
            Residency::Resident,
        )
    };
    let plain16 = convert_bundle(&from, None, "f16", dir.join("f16.gguf"));
    let lora_path = pipeline_lora(&Bundle::open(&plain16).unwrap(), &dir);
    let input = |scale: f32| LoraInput {
        name: "pipeline_lora".into(),
        bytes: std::fs::read(&lora_path).unwrap(),
        scale,
    };
    // At load the update goes onto the stored (rounded) weight and is rounded again; convert
    // adds it to the checkpoint's f32 weight and rounds once: close, not equal.
    for (quant, within) in [("f16", 2), ("int8", 6)] {
        let plain = convert_bundle(&from, None, quant, dir.join(format!("{quant}.gguf")));
        let merged = {
            let mut o = fastcomposer::io::convert::ConvertOptions {
                from: from.clone(),
                configs: None,
                quant: quant.parse().unwrap(),
                out: dir.join(format!("{quant}_lora.gguf")),
                name: None,
                license: Some("MIT".into()),
                card: None,
                keep_vae_encoder: false,
                loras: vec![LoraFile {
                    path: lora_path.clone(),
                    scale: 0.8,
                }],
                defaults: Default::default(),
                tiny_vae: None,
            };
            fastcomposer::io::convert::convert(&o).unwrap();
            std::mem::take(&mut o.out)
        };
        let base = image(&load(&plain, vec![]).unwrap());
        let converted = image(&load(&merged, vec![]).unwrap());
        let at_load = image(&load(&plain, vec![input(0.8)]).unwrap());
        let zero = image(&load(&plain, vec![input(0.0)]).unwrap());
        let diff = |a: &[u8], b: &[u8]| {
            a.iter()
                .zip(b)
                .map(|(&x, &y)| (x as i32 - y as i32).abs())
                .max()
                .unwrap()
        };
        println!(
            "{quant}: LoRA at load vs converted with it: max pixel diff {}; the LoRA moves the image by {}",
            diff(&at_load, &converted),
            diff(&base, &converted)
        );
        assert!(
            diff(&base, &converted) > 20,
            "{quant}: the LoRA must change the image"
        );
        assert_eq!(zero, base, "{quant}: scale 0 is no LoRA");
        assert!(
            diff(&at_load, &converted) <= within,
            "{quant}: close to the converted bundle"
        );
    }
    // Refused whole: a LoRA for another model, a NaN scale, a file that is not safetensors.
    let plain = dir.join("int8.gguf");
    let other = LoraInput {
        name: "kohya".into(),
        bytes: std::fs::read(fixtures().join("lora/kohya.safetensors")).unwrap(),
        scale: 1.0,
    };
    match load(&plain, vec![other]) {
        Err(Error::Weights(m)) => assert!(m.contains("kohya") && m.contains("matched"), "{m}"),
        r => panic!("a LoRA for another model: {:?}", r.map(|_| ())),
    }
    match load(&plain, vec![input(f32::NAN)]) {
        Err(Error::InvalidInput(m)) => assert!(m.contains("finite"), "{m}"),
        r => panic!("NaN scale: {:?}", r.map(|_| ())),
    }
    let junk = LoraInput {
        name: "junk.safetensors".into(),
        bytes: b"not a safetensors file".to_vec(),
        scale: 1.0,
    };
    match load(&plain, vec![junk]) {
        Err(Error::Weights(m)) => assert!(m.contains("junk.safetensors"), "{m}"),
        r => panic!("junk: {:?}", r.map(|_| ())),
    }
    assert!(load(&plain, vec![]).is_ok());
}
