//! Loading by reference key names: accepted spellings, and a clear error naming the key for
//! every missing, unexpected or misshaped tensor.

use crate::common::{fixture, fixtures, test_device};
use fastcomposer::Error;
use fastcomposer::config::TensorSource;
use fastcomposer::io::safetensors::SafetensorsSource;
use fastcomposer::kernels::attention::AttentionKernel;
use fastcomposer::models::forward::{Component, forward_component};

/// Rewrite a safetensors file: `edit(name, shape, values)` returns the entries to write.
fn rewrite(
    src: &SafetensorsSource,
    edit: impl Fn(&str, Vec<usize>, Vec<f32>) -> Vec<(String, Vec<usize>, Vec<f32>)>,
) -> SafetensorsSource {
    let mut entries = Vec::new();
    let mut names = src.names();
    names.sort();
    for name in names {
        let (shape, values) = src.read_f32(&name).unwrap();
        entries.extend(edit(&name, shape, values));
    }
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = entries
        .into_iter()
        .map(|(n, s, v)| (n, s, v.iter().flat_map(|x| x.to_le_bytes()).collect()))
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = bytes
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                    .unwrap(),
            )
        })
        .collect();
    let data = safetensors::serialize(views, None).unwrap();
    SafetensorsSource::from_bytes(data, "rewritten").unwrap()
}

fn run(
    dir: &str,
    component: Component,
    case: &str,
    weights: &SafetensorsSource,
) -> Result<Vec<f32>, Error> {
    let config = std::fs::read_to_string(fixtures().join(dir).join("config.json")).unwrap();
    let inputs = fixture(&format!("{dir}/{case}.in.safetensors"));
    forward_component(
        component,
        &config,
        weights,
        &inputs,
        &test_device(),
        AttentionKernel::default(),
    )
    .map(|d| d.try_into_vec::<f32>().unwrap())
}

fn weights_error(r: Result<Vec<f32>, Error>) -> String {
    match r {
        Err(Error::Weights(m)) => m,
        other => panic!("expected a weights error, got {other:?}"),
    }
}

#[test]
fn text_encoder_accepts_the_text_model_prefix() {
    let plain = fixture("text_encoder/weights.safetensors");
    let prefixed = rewrite(&plain, |n, s, v| {
        let mut out = vec![(format!("text_model.{n}"), s, v)];
        if n == "embeddings.position_embedding.weight" {
            // SD1.5 files also carry the `position_ids` buffer.
            out.push((
                "text_model.embeddings.position_ids".into(),
                vec![1, 77],
                (0..77).map(|i| i as f32).collect(),
            ));
        }
        out
    });
    let a = run("text_encoder", Component::TextEncoder, "case0", &plain).unwrap();
    let b = run("text_encoder", Component::TextEncoder, "case0", &prefixed).unwrap();
    assert_eq!(a, b);
}

#[test]
fn vae_accepts_legacy_attention_names() {
    let new = fixture("vae/weights.safetensors");
    let legacy = rewrite(&new, |n, s, v| {
        let n = n
            .replace("attentions.0.to_q", "attentions.0.query")
            .replace("attentions.0.to_k", "attentions.0.key")
            .replace("attentions.0.to_v", "attentions.0.value")
            .replace("attentions.0.to_out.0", "attentions.0.proj_attn");
        // Old checkpoints stored these projections conv-shaped ([out, in, 1, 1]).
        let s = if n.contains("attentions.0.") && n.ends_with("weight") && s.len() == 2 {
            vec![s[0], s[1], 1, 1]
        } else {
            s
        };
        vec![(n, s, v)]
    });
    let a = run("vae", Component::VaeDecoder, "decode0", &new).unwrap();
    let b = run("vae", Component::VaeDecoder, "decode0", &legacy).unwrap();
    assert_eq!(a, b);
}

#[test]
fn missing_tensor_is_named() {
    let w = rewrite(&fixture("unet_tiny/weights.safetensors"), |n, s, v| {
        if n == "down_blocks.0.attentions.1.transformer_blocks.0.attn2.to_k.weight" {
            vec![]
        } else {
            vec![(n.into(), s, v)]
        }
    });
    let m = weights_error(run("unet_tiny", Component::Unet, "case0", &w));
    assert!(
        m.contains(
            "missing tensor `down_blocks.0.attentions.1.transformer_blocks.0.attn2.to_k.weight`"
        ),
        "{m}"
    );
}

#[test]
fn unexpected_tensor_is_named() {
    let w = rewrite(&fixture("fuser/weights.safetensors"), |n, s, v| {
        let mut out = vec![(n.to_string(), s, v)];
        if n == "layer_norm.bias" {
            out.push(("mlp3.fc1.weight".into(), vec![2, 2], vec![0.0; 4]));
        }
        out
    });
    let m = weights_error(run("fuser", Component::Fuser, "case0", &w));
    assert!(
        m.contains("unexpected") && m.contains("`mlp3.fc1.weight`"),
        "{m}"
    );
}

#[test]
fn misshaped_tensor_is_named() {
    let w = rewrite(&fixture("vision_encoder/weights.safetensors"), |n, s, v| {
        if n == "vision_model.encoder.layers.1.mlp.fc1.bias" {
            vec![(n.into(), vec![s[0] - 1], v[1..].to_vec())]
        } else {
            vec![(n.into(), s, v)]
        }
    });
    let m = weights_error(run("vision_encoder", Component::VisionEncoder, "case0", &w));
    assert!(
        m.contains("`vision_model.encoder.layers.1.mlp.fc1.bias` has shape [36], expected [37]"),
        "{m}"
    );
}

#[test]
fn not_a_safetensors_file() {
    let e = SafetensorsSource::from_bytes(b"definitely not safetensors".to_vec(), "x.safetensors")
        .err()
        .unwrap();
    assert!(
        matches!(e, Error::Weights(ref m) if m.contains("x.safetensors")),
        "{e}"
    );
    let mut truncated = std::fs::read(fixtures().join("fuser/weights.safetensors")).unwrap();
    truncated.truncate(truncated.len() - 10);
    assert!(SafetensorsSource::from_bytes(truncated, "t").is_err());
}
