//! LoRA files (`io::lora`) against peft: the tiny UNet and text encoder fixtures with a rank-4,
//! alpha-8 LoRA (linear layers, and the resnets' 3×3-down / 1×1-up convolutions) applied by peft
//! at scale 0.7 (tools/reference/make_fixtures.py `lora`), the same updates read from kohya,
//! diffusers/peft and diffusers' older files. Tolerance: max abs error ≤ 1e-4 of the largest
//! reference value.

use std::collections::BTreeMap;

use fastcomposer::Error;
use fastcomposer::config::TensorSource;
use fastcomposer::io::lora::{LoraDeltas, LoraFile, LoraSource};
use fastcomposer::io::safetensors::SafetensorsSource;
use fastcomposer::kernels::attention::AttentionKernel;
use fastcomposer::models::forward::{Component, forward_component};

use crate::common::{fixture, fixtures, max_abs_diff, test_device};

const FORMATS: [&str; 3] = ["kohya", "peft", "diffusers_old"];

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
