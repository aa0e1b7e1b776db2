//! Choosing the compute device at run time.

#[cfg(not(target_arch = "wasm32"))]
use burn::tensor::Device;

use burn::tensor::FloatDType;

use crate::error::{Error, Result};
use burn::tensor::{Tensor, TensorData};

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

/// The float type a device computes in. Chosen once per device, before any tensor exists on it
/// (see [`set_precision`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// f16 on a GPU device that computes in it (WebGPU's `shader-f16`, Vulkan's
    /// `shaderFloat16`), f32 otherwise (the CPU device always: it has no f16 arithmetic).
    #[default]
    Auto,
    F32,
    /// f16 weights and activations, as diffusers' `torch_dtype=torch.float16`; the GPU device
    /// only. GroupNorm / LayerNorm statistics and the timestep embedding's sinusoids stay in f32
    /// (as in the references).
    F16,
}

impl std::str::FromStr for Precision {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Precision::Auto),
            "f32" | "fp32" | "float32" => Ok(Precision::F32),
            "f16" | "fp16" | "float16" | "half" => Ok(Precision::F16),
            other => Err(Error::invalid(format!(
                "unknown precision `{other}` (expected auto, f32 or f16)"
            ))),
        }
    }
}

/// `"f32"` or `"f16"`: the float type `device` computes in (its default float dtype).
pub fn precision_name(device: &burn::tensor::Device) -> &'static str {
    dtype_name(device.settings().float_dtype)
}

fn dtype_name(dtype: FloatDType) -> &'static str {
    match dtype {
        FloatDType::F16 => "f16",
        FloatDType::BF16 => "bf16",
        FloatDType::F64 => "f64",
        _ => "f32",
    }
}

/// Make `device` compute in `precision` and return the float type chosen. Call it before any
/// tensor is created on `device`: burn fixes a device's float type at its first tensor. A device
/// already fixed keeps its type; asking it for another is an [`Error::Device`] (natively, the
/// wgpu device is one per process: one precision per process).
pub fn set_precision(
    device: &mut burn::tensor::Device,
    precision: Precision,
) -> Result<FloatDType> {
    let f16_ok = !is_cpu(device) && device.supports_dtype(FloatDType::F16);
    let want = match precision {
        Precision::Auto if f16_ok => FloatDType::F16,
        Precision::Auto | Precision::F32 => FloatDType::F32,
        Precision::F16 if is_cpu(device) => {
            return Err(Error::invalid(
                "precision f16 needs a GPU device (the CPU device computes in f32)",
            ));
        }
        Precision::F16 if !f16_ok => {
            return Err(Error::Device(
                "this GPU does not compute in f16 (no shader-f16 feature); use precision f32 or auto"
                    .into(),
            ));
        }
        Precision::F16 => FloatDType::F16,
    };
    if device.settings().float_dtype == want {
        return Ok(want); // already so (f32 is every device's default)
    }
    device.configure(want).map_err(|e| {
        Error::Device(format!(
            "cannot switch the device to {}: it already computes in {} ({e:?}); the precision is \
             chosen once, before the first model is loaded",
            dtype_name(want),
            precision_name(device)
        ))
    })?;
    Ok(want)
}

#[cfg(not(target_arch = "wasm32"))]
type WgpuInit = std::result::Result<(Device, burn::tensor::wgpu::wgpu::Device, String), String>;

#[cfg(not(target_arch = "wasm32"))]
fn wgpu_init() -> &'static WgpuInit {
    use std::sync::OnceLock;
    static WGPU: OnceLock<WgpuInit> = OnceLock::new();
    WGPU.get_or_init(|| {
        let (device, setup) = Device::wgpu_options()
            .init_with_setup()
            .map_err(|e| format!("cannot initialise wgpu: {e}"))?;
        let info = setup.adapter.get_info();
        let compiler = wgpu_compiler(&device);
        #[cfg(feature = "spirv")]
        if compiler == Some("wgpu<spirv>")
            && !explicit_workgroup_layout(&setup.adapter)
            && !ALLOW_IMPLICIT_SMEM.load(std::sync::atomic::Ordering::Relaxed)
        {
            return Err(format!(
                "{}: this build compiles kernels to SPIR-V (feature `spirv`), which needs the \
                 Vulkan extension VK_KHR_workgroup_memory_explicit_layout; this adapter lacks it \
                 (CubeCL 0.11's SPIR-V for shared memory without it is invalid and crashes the \
                 driver). Use the default build (WGSL kernels) on this adapter",
                info.name
            ));
        }
        let adapter = format!(
            "{} ({:?}, {:?}, driver {} {}; kernels {})",
            info.name,
            info.backend,
            info.device_type,
            info.driver,
            info.driver_info,
            compiler.unwrap_or("unknown")
        );
        Ok((device, setup.device, adapter))
    })
}

/// Whether `device` is the default wgpu device this crate creates. Only its CubeCL client may be
/// asked for: asking for another device's would initialise a second runtime.
#[cfg(any(not(target_arch = "wasm32"), feature = "webgpu"))]
fn is_default_wgpu(device: &burn::tensor::Device) -> bool {
    burn::tensor::Device::from(burn::cubecl::wgpu::WgpuDevice::default()) == *device
}

#[cfg(any(not(target_arch = "wasm32"), feature = "webgpu"))]
fn default_wgpu_cubecl() -> burn::cubecl::Device {
    burn::cubecl::Device::Wgpu(burn::cubecl::wgpu::WgpuDevice::default())
}

/// The shader language burn's wgpu runtime compiles kernels to on `device`, as CubeCL names its
/// runtime: `wgpu<wgsl>` (what a browser runs), or `wgpu<spirv>` on a Vulkan adapter in a build
/// with the `spirv` feature (and an adapter with the Vulkan features CubeCL's SPIR-V needs).
/// `None` when `device` is not the default wgpu device this crate creates.
#[cfg(not(target_arch = "wasm32"))]
fn wgpu_compiler(device: &Device) -> Option<&'static str> {
    is_default_wgpu(device).then(|| default_wgpu_cubecl().client().name())
}

/// Whether a flash kernel computes fused attention on `device` (no scores matrix) rather than
/// burn's fallback, which materialises every head's whole scores matrix at once (1 GiB for
/// SD1.5's self-attention at 512×512). Natively burn's operation autotunes among CubeCL's flash
/// kernels; in the browser, which has no autotuning, `flash.rs` calls the unit kernel by name.
/// Both need plane (subgroup) operations: CubeCL's unit flash kernel refuses a plane size below
/// 2. Asked on every fused attention call, so the adapter's plane size is read once.
#[cfg(any(not(target_arch = "wasm32"), feature = "webgpu"))]
pub fn flash_attention_runs(device: &burn::tensor::Device) -> bool {
    static PLANE: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    is_default_wgpu(device)
        && *PLANE.get_or_init(|| {
            default_wgpu_cubecl()
                .client()
                .properties()
                .hardware
                .plane_size_max
        }) >= 2
}

/// The threaded CPU wasm build has no wgpu device.
#[cfg(all(target_arch = "wasm32", not(feature = "webgpu")))]
pub fn flash_attention_runs(_device: &burn::tensor::Device) -> bool {
    false
}

/// Whether a Vulkan adapter has VK_KHR_workgroup_memory_explicit_layout (true for adapters of
/// other APIs). CubeCL 0.11.3's SPIR-V compiler declares shared memory correctly only with it:
/// without it, its `lower_shared_implicit` gives each shared array's variable the pointer type
/// as its value type (and the array type to the address taken of it), which `spirv-val` rejects
/// and Mesa's lavapipe crashes on while compiling burn's matmul. NVIDIA's, AMD's and Intel's
/// Vulkan drivers have the extension; lavapipe (Mesa 22.3 and 25.0) does not.
/// [`allow_implicit_shared_memory`] lets such an adapter through, for a build whose cubecl-spirv
/// has the fix (`tools/bench/spirv_lavapipe.sh` patches one in).
#[cfg(all(feature = "spirv", not(target_arch = "wasm32")))]
fn explicit_workgroup_layout(adapter: &burn::tensor::wgpu::wgpu::Adapter) -> bool {
    use burn::tensor::wgpu::wgpu::hal::api::Vulkan;
    // SAFETY: only reads the capabilities the adapter reported when it was enumerated.
    let vulkan = unsafe { adapter.as_hal::<Vulkan>() };
    vulkan.is_none_or(|a| {
        a.physical_device_capabilities()
            .supports_extension(c"VK_KHR_workgroup_memory_explicit_layout")
    })
}

#[cfg(all(feature = "spirv", not(target_arch = "wasm32")))]
static ALLOW_IMPLICIT_SMEM: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Let the SPIR-V build run on an adapter without VK_KHR_workgroup_memory_explicit_layout (for a
/// cubecl-spirv with the fix; see `explicit_workgroup_layout`). Call before [`create`]; the CLI
/// does for `FASTCOMPOSER_ALLOW_IMPLICIT_SMEM=1`.
#[cfg(all(feature = "spirv", not(target_arch = "wasm32")))]
pub fn allow_implicit_shared_memory(allow: bool) {
    ALLOW_IMPLICIT_SMEM.store(allow, std::sync::atomic::Ordering::Relaxed);
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

/// The wgpu adapter in use (name, backend, type, driver, kernel language), once the wgpu device
/// is created (the CLI's reports).
#[cfg(all(not(target_arch = "wasm32"), feature = "cli"))]
pub fn wgpu_adapter() -> Option<String> {
    wgpu_init().as_ref().ok().map(|(_, _, a)| a.clone())
}

/// Device memory as wgpu's allocator reports it (natively; Vulkan and DX12 report, other
/// backends do not): the CLI's `--memory-report`.
#[cfg(all(not(target_arch = "wasm32"), feature = "cli"))]
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
#[cfg(all(not(target_arch = "wasm32"), feature = "cli"))]
pub struct MemoryMonitor {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    peak: std::sync::Arc<std::sync::Mutex<MemoryPeak>>,
    thread: std::thread::JoinHandle<()>,
}

#[cfg(all(not(target_arch = "wasm32"), feature = "cli"))]
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

/// Read a tensor back to the host as f32 data.
pub fn read<const D: usize>(t: Tensor<D>) -> Result<TensorData> {
    t.try_into_data()
        .map(into_f32)
        .map_err(|e| Error::Device(format!("reading the result back failed: {e:?}")))
}

/// Read a tensor back to the host as f32 data without blocking (required for WebGPU in a
/// browser).
pub async fn read_async<const D: usize>(t: Tensor<D>) -> Result<TensorData> {
    t.into_data_async()
        .await
        .map(into_f32)
        .map_err(|e| Error::Device(format!("reading the result back failed: {e:?}")))
}

/// Float data of any precision (f16 on a device computing in it) as f32.
fn into_f32(data: TensorData) -> TensorData {
    use burn::tensor::DType;
    match data.dtype() {
        DType::F16 | DType::BF16 | DType::F64 => data.convert::<f32>(),
        _ => data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_device_computes_in_f32() {
        let mut cpu = burn::tensor::Device::flex();
        assert_eq!(
            set_precision(&mut cpu, Precision::Auto).unwrap(),
            FloatDType::F32
        );
        assert_eq!(
            set_precision(&mut cpu, Precision::F32).unwrap(),
            FloatDType::F32
        );
        let e = set_precision(&mut cpu, Precision::F16).unwrap_err();
        assert_eq!(e.name(), "InvalidInput");
        assert!(e.to_string().contains("GPU"), "{e}");
        assert_eq!(precision_name(&cpu), "f32");
    }

    #[test]
    fn precision_names() {
        assert_eq!("AUTO".parse::<Precision>().unwrap(), Precision::Auto);
        assert_eq!("fp16".parse::<Precision>().unwrap(), Precision::F16);
        assert_eq!("f32".parse::<Precision>().unwrap(), Precision::F32);
        let e = "f8".parse::<Precision>().unwrap_err();
        assert!(e.to_string().contains("`f8`"), "{e}");
    }
}
