//! The `fastcomposer` command-line tool.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use burn::tensor::{Tensor, TensorData};

use clap::{Parser, Subcommand};
use fastcomposer::config::Part;
use fastcomposer::config::parse_config;
use fastcomposer::config::{GenerationDefaults, TensorSource};
use fastcomposer::io::bundle::{Bundle, BundleInfo};
use fastcomposer::io::convert::{ConvertOptions, convert};
use fastcomposer::io::lora::{LoraDeltas, LoraFile, LoraInput, LoraSource};
use fastcomposer::io::model_dir::ModelDir;
use fastcomposer::io::safetensors::SafetensorsSource;
use fastcomposer::kernels::attention::AttentionKernel;
use fastcomposer::kernels::device::{self, DeviceChoice, Precision};
use fastcomposer::kernels::{ConvKernels, GpuConv, KernelOptions, WinogradPolicy};
use fastcomposer::models::attention::SelfReference;
use fastcomposer::models::forward::{Component, forward_component};
use fastcomposer::models::loader::Loader;
use fastcomposer::models::unet::{UNet2DConditionConfig, UNet2DConditionModel};
use fastcomposer::pipeline::components::Residency;
use fastcomposer::pipeline::default_model;
use fastcomposer::pipeline::preprocess::decode_image;
use fastcomposer::pipeline::{
    Attribute, DecoderKind, FastComposer, GenerateOptions, StepReport, Suppression,
};
use fastcomposer::scheduler::SchedulerKind;
use fastcomposer::tokenizer::ClipTokenizer;
use fastcomposer::{Error, Result};
use indicatif::{ProgressBar, ProgressStyle};

// Large tensors are allocated and freed at every layer; glibc returns them to the kernel each
// time (page faults on every reuse), mimalloc keeps them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod bench_ops;
mod bench_unet;
mod convert;
mod forward;
mod generate;
mod inspect;
mod tokenize;

#[derive(Parser)]
#[command(
    name = "fastcomposer",
    version,
    about = "FastComposer subject-driven image generation (SD1.5 family) on burn"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// How attention is computed (`generate`, `forward`, `bench-unet`, `bench-ops`).
#[derive(clap::Args)]
struct AttentionArgs {
    /// Largest attention-scores buffer in MiB (attention is sliced to fit); also the row-band
    /// budget of the VAE decoder.
    #[arg(long, default_value_t = 128)]
    attention_mib: usize,
    /// Attention kernel: sliced (scores in slices within --attention-mib) or fused (burn's fused
    /// operation: flash kernels on wgpu, no scores buffer).
    #[arg(long, default_value = "sliced")]
    attention: String,
}

impl AttentionArgs {
    fn kernel(&self) -> Result<AttentionKernel> {
        AttentionKernel::from_name(&self.attention, self.attention_mib.max(1) << 20)
    }

    /// Every kernel choice: attention from the flags, convolutions from the environment
    /// (`FASTCOMPOSER_WINOGRAD` = 0 | 2 | 4 on the CPU device, `FASTCOMPOSER_GPU_CONV=direct` on
    /// GPUs: A/B benchmarks).
    fn options(&self) -> Result<KernelOptions> {
        let cpu = match std::env::var("FASTCOMPOSER_WINOGRAD") {
            Ok(v) => v.parse()?,
            Err(_) => WinogradPolicy::default(),
        };
        let gpu = match std::env::var("FASTCOMPOSER_GPU_CONV").as_deref() {
            Ok("direct") => GpuConv::Direct,
            Ok("matmul") | Err(_) => GpuConv::Matmul,
            Ok(other) => {
                return Err(Error::invalid(format!(
                    "FASTCOMPOSER_GPU_CONV={other}: expected matmul or direct"
                )));
            }
        };
        Ok(KernelOptions {
            attention: self.kernel()?,
            conv: ConvKernels { cpu, gpu },
        })
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run one model component on named input tensors (parity checks against the reference
    /// libraries). Inputs and output are safetensors files; the output tensor is `out`.
    Forward(forward::Args),
    /// Generate an image of the given subjects. Without --model it uses the built-in default
    /// model (small, trained here: cats, robots, birds and cups at 128x128).
    Generate(generate::Args),
    /// Convert a checkpoint to a model bundle: a diffusers-layout directory, or one FastComposer
    /// checkpoint (.safetensors or PyTorch .bin with text_encoder., image_encoder., vae., unet.,
    /// postfuse_module. keys).
    Convert(convert::Args),
    /// Print a bundle's components, dtypes, sizes and checksum status.
    Inspect(inspect::Args),
    /// Time the UNet forward with random weights (benchmarks and the full-size memory check).
    /// Prints one JSON line: load time, first and mean forward time, peak resident memory.
    BenchUnet(bench_unet::Args),
    /// Time the SD1.5 UNet's layer kinds one at a time at batch 2 and a 64×64 latent (3×3
    /// convolutions per level, matmuls, self/cross-attention, GroupNorm); one JSON line each.
    BenchOps(bench_ops::Args),
    /// Tokenize a prompt with subject markers; prints {"input_ids": [...77], "subject_positions": [...]}.
    Tokenize(tokenize::Args),
}

fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::Io(format!("cannot read {}: {e}", path.display())))
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path)
        .map_err(|e| Error::Io(format!("cannot read {}: {e}", path.display())))
}

/// `--memory-report`: wgpu's allocator report sampled every 2 ms (an error on other devices or
/// on backends that do not report).
fn memory_monitor(
    memory_report: bool,
    choice: DeviceChoice,
) -> Result<Option<device::MemoryMonitor>> {
    if !memory_report {
        return Ok(None);
    }
    if choice != DeviceChoice::Wgpu {
        return Err(Error::invalid(
            "--memory-report reports device memory: use it with --device wgpu",
        ));
    }
    match device::MemoryMonitor::start(std::time::Duration::from_millis(2)) {
        Some(m) => Ok(Some(m)),
        None => Err(Error::invalid(
            "--memory-report needs --device wgpu on a backend whose allocator reports (Vulkan, DX12)",
        )),
    }
}

/// Prints the peaks so far (after `stage`), when reporting.
fn report_memory(monitor: &Option<device::MemoryMonitor>, stage: &str) {
    if let Some(m) = monitor {
        let p = m.peak();
        eprintln!(
            "memory after {stage}: peak reserved {:.1} MiB, peak allocated {:.1} MiB, largest buffer {:.1} MiB",
            mib(p.reserved),
            mib(p.allocated),
            mib(p.largest_allocation)
        );
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Forward(args) => forward::run(args),
        Command::Generate(args) => generate::run(args),
        Command::Convert(args) => convert::run(args),
        Command::Inspect(args) => inspect::run(args),
        Command::BenchUnet(args) => bench_unet::run(args),
        Command::BenchOps(args) => bench_ops::run(args),
        Command::Tokenize(args) => tokenize::run(args),
    }
}

/// `--weights`: `f32` (plain random weights) or a bundle mode (int8, int4, mixed, f16).
fn weights_mode(weights: &str) -> Result<Option<fastcomposer::quant::QuantMode>> {
    match weights {
        "f32" => Ok(None),
        mode => mode.parse().map(Some),
    }
}

/// `--dtype` (f32 or f16) of the benchmarks: the device's compute type; before any tensor is
/// created.
fn configure_dtype(device: &mut burn::tensor::Device, dtype: &str) -> Result<()> {
    let precision = match dtype {
        "f32" => Precision::F32,
        "f16" => Precision::F16,
        other => {
            return Err(Error::invalid(format!(
                "unknown --dtype `{other}` (expected f32 or f16)"
            )));
        }
    };
    device::set_precision(device, precision).map(|_| ())
}

/// Peak resident set size of this process (Linux), in MiB.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn write_out(path: &Path, data: burn::tensor::TensorData) -> Result<()> {
    write_tensors(path, vec![("out".to_string(), data)])
}

/// Write named f32 tensors as one safetensors file.
fn write_tensors(path: &Path, tensors: Vec<(String, burn::tensor::TensorData)>) -> Result<()> {
    let mut encoded = Vec::with_capacity(tensors.len());
    for (name, data) in tensors {
        let shape = data.shape().to_vec();
        let values: Vec<f32> = data
            .try_into_vec::<f32>()
            .map_err(|e| Error::Device(format!("unexpected output type: {e:?}")))?;
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        encoded.push((name, shape, bytes));
    }
    let views = encoded
        .iter()
        .map(|(name, shape, bytes)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                .map(|v| (name.as_str(), v))
                .map_err(|e| Error::Io(format!("cannot encode {name}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::tensor::serialize_to_file(views, None, path)
        .map_err(|e| Error::Io(format!("cannot write {}: {e}", path.display())))
}

/// mimalloc's `mi_option_purge_delay` (mimalloc.h; not exported by libmimalloc-sys 0.1).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() -> ExitCode {
    // Freed memory is kept for reuse instead of being returned to the kernel 10 ms later (the
    // default): a UNet step frees and re-allocates the same large activations every layer, and
    // each return made the next use fault in zeroed pages again. Peak memory is unchanged (the
    // same blocks are reused). `MIMALLOC_PURGE_DELAY` in the environment still decides.
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets an allocator option (an integer) before any thread is started.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
    // The SPIR-V build on an adapter without explicit workgroup layouts, for a cubecl-spirv with
    // the fix (tools/bench/spirv_lavapipe.sh).
    #[cfg(feature = "spirv")]
    device::allow_implicit_shared_memory(
        std::env::var_os("FASTCOMPOSER_ALLOW_IMPLICIT_SMEM").is_some(),
    );
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}
