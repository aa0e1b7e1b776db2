//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

use burn::tensor::Device;
use fastcomposer::io::safetensors::SafetensorsSource;
use fastcomposer::kernels::device::{self, DeviceChoice};

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
}

pub fn fixture(rel: &str) -> SafetensorsSource {
    SafetensorsSource::from_file(&fixtures().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The device the tests run on: `FASTCOMPOSER_TEST_DEVICE=wgpu` selects wgpu (Vulkan/lavapipe
/// natively), anything else the CPU device.
pub fn test_device() -> Device {
    let choice = match std::env::var("FASTCOMPOSER_TEST_DEVICE").as_deref() {
        Ok("wgpu") => DeviceChoice::Wgpu,
        _ => DeviceChoice::Cpu,
    };
    // The SPIR-V build on an adapter without explicit workgroup layouts
    // (`tools/bench/spirv_lavapipe.sh`, with a fixed cubecl-spirv).
    #[cfg(feature = "spirv")]
    device::allow_implicit_shared_memory(
        std::env::var_os("FASTCOMPOSER_ALLOW_IMPLICIT_SMEM").is_some(),
    );
    device::create(choice).expect("test device")
}

/// The CPU device's ways of computing 3×3 convolutions, for tests that hold every one of them
/// to the references: the automatic choice and Winograd's form at each tile size wherever it
/// applies On other devices only the automatic one
/// (the policy is the CPU device's).
pub fn winograd_policies(device: &Device) -> Vec<fastcomposer::kernels::WinogradPolicy> {
    use fastcomposer::kernels::{WinogradPolicy, WinogradTile};
    if device::is_cpu(device) {
        vec![
            WinogradPolicy::Auto,
            WinogradPolicy::Force(WinogradTile::F2),
            WinogradPolicy::Force(WinogradTile::F4),
        ]
    } else {
        vec![WinogradPolicy::Auto]
    }
}

/// Max absolute difference, and the largest reference magnitude.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> (f32, f32) {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let mut d = 0f32;
    let mut m = 0f32;
    for (x, y) in a.iter().zip(b) {
        assert!(x.is_finite(), "non-finite output");
        d = d.max((x - y).abs());
        m = m.max(y.abs());
    }
    (d, m)
}

/// Relative L2 error of `a` against `b`.
pub fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    let num: f32 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum();
    let den: f32 = b.iter().map(|y| y * y).sum();
    (num / den.max(1e-20)).sqrt()
}

/// A subject photo from the pipeline fixtures (`astronaut`, `chelsea`, `coffee`).
pub fn photo(name: &str) -> image::RgbImage {
    let bytes = std::fs::read(fixtures().join(format!("pipeline/photos/{name}.png"))).unwrap();
    fastcomposer::pipeline::preprocess::decode_image(&bytes, name).unwrap()
}

/// Pipeline reference case `k`: its settings (JSON) and tensors.
pub fn case(k: usize) -> (serde_json::Value, SafetensorsSource) {
    let json = std::fs::read_to_string(fixtures().join(format!("pipeline/case{k}.json"))).unwrap();
    (
        serde_json::from_str(&json).unwrap(),
        fixture(&format!("pipeline/case{k}.safetensors")),
    )
}

/// Reference case `k` generated on `model` to its last step (its subjects encoded from their
/// photos, its starting latents given), and the case's reference tensors.
pub fn run_case(
    model: &fastcomposer::pipeline::FastComposer,
    k: usize,
) -> (fastcomposer::pipeline::Denoiser, SafetensorsSource) {
    let (c, f) = case(k);
    let subjects: Vec<_> = c["subjects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            model
                .encode_subject(&photo(s.as_str().unwrap()), None)
                .unwrap()
        })
        .collect();
    let (_, latents) = f.read_f32("latents").unwrap();
    let mut d = model
        .start(&case_options(&c), &subjects, Some(latents))
        .unwrap();
    denoise(&mut d);
    (d, f)
}

/// Every remaining step through the pipeline's loop ([`Denoiser::run`]), as the faces run it.
///
/// [`Denoiser::run`]: fastcomposer::pipeline::Denoiser::run
pub fn denoise(d: &mut fastcomposer::pipeline::Denoiser) {
    futures_lite::future::block_on(d.run(0, &mut |_: &fastcomposer::pipeline::StepReport| true))
        .unwrap();
}

/// A reference case's generation options (seed 0: its starting latents are given).
pub fn case_options(c: &serde_json::Value) -> fastcomposer::pipeline::GenerateOptions {
    fastcomposer::pipeline::GenerateOptions {
        prompt: c["prompt"].as_str().unwrap().into(),
        negative_prompt: c["negative_prompt"].as_str().unwrap().into(),
        steps: c["steps"].as_u64().unwrap() as usize,
        guidance: c["guidance"].as_f64().unwrap(),
        alpha: c["alpha"].as_f64().unwrap(),
        seed: 0,
        width: Some(c["width"].as_u64().unwrap() as usize),
        height: Some(c["height"].as_u64().unwrap() as usize),
        scheduler: c["scheduler"].as_str().unwrap().parse().unwrap(),
        ..Default::default()
    }
}

/// Convert `from` (a model directory or checkpoint) to a bundle at `out` in `quant` mode.
pub fn convert_bundle(
    from: &std::path::Path,
    configs: Option<&std::path::Path>,
    quant: &str,
    out: PathBuf,
) -> PathBuf {
    fastcomposer::io::convert::convert(&fastcomposer::io::convert::ConvertOptions {
        from: from.to_path_buf(),
        configs: configs.map(std::path::Path::to_path_buf),
        quant: quant.parse().unwrap(),
        out: out.clone(),
        name: None,
        license: Some("MIT".into()),
        card: None,
        keep_vae_encoder: false,
        loras: Vec::new(),
        defaults: Default::default(),
        tiny_vae: None,
    })
    .unwrap_or_else(|e| panic!("convert {quant}: {e}"));
    out
}

/// One component (`forward_component`) on `device` against its reference fixture under
/// `dir`: the max abs error and the largest reference magnitude (the shapes must agree).
pub fn component_error(
    dir: &str,
    component: fastcomposer::models::forward::Component,
    case: &str,
    device: &Device,
    kernel: impl Into<fastcomposer::kernels::KernelOptions>,
) -> (f32, f32) {
    let config = std::fs::read_to_string(fixtures().join(dir).join("config.json")).unwrap();
    let weights = fixture(&format!("{dir}/weights.safetensors"));
    let inputs = fixture(&format!("{dir}/{case}.in.safetensors"));
    let (want_shape, want) = fixture(&format!("{dir}/{case}.out.safetensors"))
        .read_f32("out")
        .unwrap();
    let got = fastcomposer::models::forward::forward_component(
        component, &config, &weights, &inputs, device, kernel,
    )
    .unwrap_or_else(|e| panic!("{dir}/{case}: {e}"));
    assert_eq!(got.shape().to_vec(), want_shape, "{dir}/{case}: shape");
    max_abs_diff(&got.try_into_vec::<f32>().unwrap(), &want)
}

/// A tensor's values on the host, as f32 whatever the device computes in.
pub fn values<const D: usize>(t: burn::tensor::Tensor<D>) -> Vec<f32> {
    fastcomposer::kernels::device::read(t)
        .unwrap()
        .try_into_vec::<f32>()
        .unwrap()
}
