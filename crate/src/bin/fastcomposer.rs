//! The `fastcomposer` command-line tool.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fastcomposer::attention::AttentionKernel;
use fastcomposer::device::{self, DeviceChoice};
use fastcomposer::forward::{Component, forward_component};
use fastcomposer::tokenizer::ClipTokenizer;
use fastcomposer::weights::SafetensorsSource;
use fastcomposer::{Error, Result};

#[derive(Parser)]
#[command(name = "fastcomposer", version, about = "FastComposer subject-driven image generation (SD1.5 family) on burn")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one model component on named input tensors (parity checks against the reference
    /// libraries). Inputs and output are safetensors files; the output tensor is `out`.
    Forward {
        /// unet | vae-decoder | vae-encoder | text-encoder | vision-encoder | fuser
        #[arg(long)]
        component: String,
        /// The reference library's saved config.json (fuser: {"embed_dim": D}).
        #[arg(long)]
        config: PathBuf,
        /// Weights by the reference key names.
        #[arg(long)]
        weights: PathBuf,
        /// Input tensors: unet: sample, timestep, encoder_hidden_states; vae-decoder: latents;
        /// vae-encoder: image; text-encoder: input_ids; vision-encoder: pixel_values;
        /// fuser: text, image.
        #[arg(long)]
        inputs: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// cpu | wgpu
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Largest attention-scores buffer in MiB (attention is sliced to fit).
        #[arg(long, default_value_t = 128)]
        attention_mib: usize,
    },
    /// Tokenize a prompt with subject markers; prints {"input_ids": [...77], "subject_positions": [...]}.
    Tokenize {
        prompt: String,
        /// The subject marker.
        #[arg(long, default_value = fastcomposer::tokenizer::DEFAULT_MARKER)]
        marker: String,
    },
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::Io(format!("cannot read {}: {e}", path.display())))
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Forward {
            component,
            config,
            weights,
            inputs,
            out,
            device,
            attention_mib,
        } => {
            let component: Component = component.parse()?;
            let choice: DeviceChoice = device.parse()?;
            let config = read_text(&config)?;
            let weights = SafetensorsSource::from_file(&weights)?;
            let inputs = SafetensorsSource::from_file(&inputs)?;
            let device = device::create(choice)?;
            let kernel = AttentionKernel::Sliced {
                max_bytes: attention_mib.max(1) << 20,
            };
            let data = forward_component(component, &config, &weights, &inputs, &device, kernel)?;
            write_out(&out, data)
        }
        Command::Tokenize { prompt, marker } => {
            let tok = ClipTokenizer::with_marker(&marker)?;
            let e = tok.encode_prompt(&prompt)?;
            if e.truncated {
                eprintln!("warning: the prompt is longer than 77 tokens and was truncated");
            }
            let json = serde_json::json!({
                "input_ids": e.input_ids,
                "subject_positions": e.subject_positions,
            });
            println!("{json}");
            Ok(())
        }
    }
}

fn write_out(path: &Path, data: burn::tensor::TensorData) -> Result<()> {
    let shape = data.shape.to_vec();
    let values: Vec<f32> = data
        .into_vec::<f32>()
        .map_err(|e| Error::Device(format!("unexpected output type: {e:?}")))?;
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape, &bytes)
        .map_err(|e| Error::Io(format!("cannot encode output: {e}")))?;
    safetensors::tensor::serialize_to_file([("out", view)], None, path)
        .map_err(|e| Error::Io(format!("cannot write {}: {e}", path.display())))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
