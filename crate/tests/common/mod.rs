//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

use burn::tensor::Device;
use fastcomposer::device::{self, DeviceChoice};
use fastcomposer::weights::SafetensorsSource;

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
    device::create(choice).expect("test device")
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
