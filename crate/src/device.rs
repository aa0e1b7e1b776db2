//! Choosing the compute device at run time.

#[cfg(not(target_arch = "wasm32"))]
use burn::tensor::Device;

use crate::error::{Error, Result};

/// Which device to run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// The pure-Rust CPU device (burn's flex backend); also the wasm CPU path.
    #[default]
    Cpu,
    /// WebGPU semantics through wgpu (Vulkan/Metal/DX12 natively, WebGPU in a browser).
    Wgpu,
}

impl std::str::FromStr for DeviceChoice {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "cpu" | "flex" => Ok(DeviceChoice::Cpu),
            "wgpu" | "gpu" | "webgpu" | "vulkan" => Ok(DeviceChoice::Wgpu),
            other => Err(Error::invalid(format!(
                "unknown device `{other}` (expected cpu or wgpu)"
            ))),
        }
    }
}

/// Create the device natively. wgpu initialisation failures become [`Error::Device`].
/// burn's wgpu runtime is initialised once per process; later calls reuse that device.
#[cfg(not(target_arch = "wasm32"))]
pub fn create(choice: DeviceChoice) -> Result<Device> {
    use std::sync::OnceLock;
    static WGPU: OnceLock<std::result::Result<Device, String>> = OnceLock::new();
    match choice {
        DeviceChoice::Cpu => Ok(Device::flex()),
        DeviceChoice::Wgpu => WGPU
            .get_or_init(|| {
                Device::wgpu_options()
                    .init()
                    .map_err(|e| format!("cannot initialise wgpu: {e}"))
            })
            .clone()
            .map_err(Error::Device),
    }
}
