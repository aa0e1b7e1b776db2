//! Choosing the compute device at run time.

#[cfg(not(target_arch = "wasm32"))]
use burn::tensor::Device;

use crate::error::{Error, Result};

/// Whether `device` is the CPU device (burn's flex backend), where some work is better done
/// on the host directly (quantized weights, attention).
pub fn is_cpu(device: &burn::tensor::Device) -> bool {
    *device == burn::tensor::Device::flex()
}

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

#[cfg(not(target_arch = "wasm32"))]
type WgpuInit = std::result::Result<(Device, burn::tensor::wgpu::wgpu::Device, String), String>;

#[cfg(not(target_arch = "wasm32"))]
fn wgpu_init() -> &'static WgpuInit {
    use std::sync::OnceLock;
    static WGPU: OnceLock<WgpuInit> = OnceLock::new();
    WGPU.get_or_init(|| {
        Device::wgpu_options()
            .init_with_setup()
            .map(|(device, setup)| {
                let info = setup.adapter.get_info();
                let adapter = format!(
                    "{} ({:?}, {:?}, driver {} {})",
                    info.name, info.backend, info.device_type, info.driver, info.driver_info
                );
                (device, setup.device, adapter)
            })
            .map_err(|e| format!("cannot initialise wgpu: {e}"))
    })
}

/// Create the device natively. wgpu initialisation failures become [`Error::Device`].
/// burn's wgpu runtime is initialised once per process; later calls reuse that device.
#[cfg(not(target_arch = "wasm32"))]
pub fn create(choice: DeviceChoice) -> Result<Device> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::flex()),
        DeviceChoice::Wgpu => wgpu_init()
            .as_ref()
            .map(|(d, _, _)| d.clone())
            .map_err(|e| Error::Device(e.clone())),
    }
}

/// The wgpu adapter in use (name, backend, type, driver), once the wgpu device is created.
#[cfg(not(target_arch = "wasm32"))]
pub fn wgpu_adapter() -> Option<String> {
    wgpu_init().as_ref().ok().map(|(_, _, a)| a.clone())
}

/// Device memory as wgpu's allocator reports it (natively; Vulkan and DX12 report, other
/// backends do not).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryPeak {
    /// Most device memory reserved from the driver at once (memory blocks, bytes).
    pub reserved: u64,
    /// Most bytes in live allocations at once.
    pub allocated: u64,
    /// The largest single allocation seen (one buffer), bytes.
    pub largest_allocation: u64,
    /// How many reports were read.
    pub samples: u64,
}

/// Samples wgpu's allocator report on a background thread until [`MemoryMonitor::finish`],
/// keeping the peaks. Polling misses nothing that lives longer than the interval; allocations
/// live at least as long as the kernels that use them, and burn's memory pool keeps pages
/// between operations, so the peak of reserved memory is caught.
#[cfg(not(target_arch = "wasm32"))]
pub struct MemoryMonitor {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    peak: std::sync::Arc<std::sync::Mutex<MemoryPeak>>,
    thread: std::thread::JoinHandle<()>,
}

#[cfg(not(target_arch = "wasm32"))]
impl MemoryMonitor {
    /// `None` when wgpu cannot be initialised or its backend gives no report. Initialises wgpu
    /// if nothing has yet: call it after choosing the wgpu device.
    pub fn start(interval: std::time::Duration) -> Option<Self> {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        let device = wgpu_init().as_ref().ok()?.1.clone();
        device.generate_allocator_report()?;
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(Mutex::new(MemoryPeak::default()));
        let (flag, shared) = (stop.clone(), peak.clone());
        let thread = std::thread::spawn(move || {
            loop {
                let done = flag.load(Ordering::Relaxed);
                if let Some(r) = device.generate_allocator_report() {
                    let largest = r.allocations.iter().map(|a| a.size).max().unwrap_or(0);
                    if let Ok(mut p) = shared.lock() {
                        p.reserved = p.reserved.max(r.total_reserved_bytes);
                        p.allocated = p.allocated.max(r.total_allocated_bytes);
                        p.largest_allocation = p.largest_allocation.max(largest);
                        p.samples += 1;
                    }
                }
                if done {
                    return;
                }
                std::thread::sleep(interval);
            }
        });
        Some(Self { stop, peak, thread })
    }

    /// The peaks so far.
    pub fn peak(&self) -> MemoryPeak {
        self.peak.lock().map(|p| *p).unwrap_or_default()
    }

    /// Stop sampling (after one last report) and return the peaks.
    pub fn finish(self) -> MemoryPeak {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let peak = self.peak.clone();
        let _ = self.thread.join();
        peak.lock().map(|p| *p).unwrap_or_default()
    }
}
