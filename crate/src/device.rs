//! Choosing the compute device at run time.

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
#[cfg(not(target_arch = "wasm32"))]
pub fn create(choice: DeviceChoice) -> Result<Device> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::flex()),
        DeviceChoice::Wgpu => Device::wgpu_options()
            .init()
            .map_err(|e| Error::Device(format!("cannot initialise wgpu: {e}"))),
    }
}
