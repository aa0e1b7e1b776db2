//! Run one model component on named input tensors (parity checks against the reference
//! libraries). Inputs and output are safetensors files; the output tensor is `out`.

use super::*;

#[derive(clap::Args)]
pub struct Args {
    /// unet | vae-decoder | vae-encoder | tiny-vae-decoder | text-encoder | vision-encoder | fuser
    #[arg(long)]
    pub component: String,
    /// The reference library's saved config.json (fuser: {"embed_dim": D}).
    #[arg(long)]
    pub config: PathBuf,
    /// Weights by the reference key names.
    #[arg(long)]
    pub weights: PathBuf,
    /// Input tensors: unet: sample, timestep, encoder_hidden_states; vae-decoder and
    /// tiny-vae-decoder: latents (divided by the autoencoder's scaling factor);
    /// vae-encoder: image; text-encoder: input_ids; vision-encoder: pixel_values;
    /// fuser: text, image.
    #[arg(long)]
    pub inputs: PathBuf,
    #[arg(long)]
    pub out: PathBuf,
    /// cpu | wgpu
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// f32 | f16 | auto: the float type the component computes in (the output is f32).
    #[arg(long, default_value = "f32")]
    pub precision: String,
    #[command(flatten)]
    pub attention: AttentionArgs,
    /// Print the device-memory peaks of the run (wgpu on Vulkan/DX12; as `generate`'s).
    #[arg(long)]
    pub memory_report: bool,
    /// A LoRA applied to the weights (unet and text-encoder), as FILE or FILE:SCALE.
    /// Repeatable.
    #[arg(long = "lora")]
    pub loras: Vec<String>,
}

pub fn run(args: Args) -> Result<()> {
    let Args {
        component,
        config,
        weights,
        inputs,
        out,
        device,
        precision,
        attention,
        memory_report,
        loras,
    } = args;
    let component: Component = component.parse()?;
    let choice: DeviceChoice = device.parse()?;
    let precision: Precision = precision.parse()?;
    let config = read_text(&config)?;
    let weights = SafetensorsSource::from_file(&weights)?;
    let loras = loras
        .iter()
        .map(|l| l.parse())
        .collect::<Result<Vec<LoraFile>>>()?;
    let deltas;
    let with_loras;
    let weights: &dyn TensorSource = if loras.is_empty() {
        &weights
    } else {
        let prefix = component.lora_prefix().ok_or_else(|| {
            Error::invalid("--lora applies to the unet and the text-encoder components")
        })?;
        let index = weights
            .names()
            .into_iter()
            .filter_map(|n| Some((format!("{prefix}{n}"), weights.shape(&n)?)))
            .collect();
        deltas = LoraDeltas::load(&loras, &index)?;
        with_loras = LoraSource {
            base: &weights,
            prefix: prefix.to_string(),
            deltas: &deltas,
        };
        &with_loras
    };
    let inputs = SafetensorsSource::from_file(&inputs)?;
    let mut device = device::create(choice)?;
    device::set_precision(&mut device, precision)?;
    let monitor = memory_monitor(memory_report, choice)?;
    let kernel = attention.options()?;
    let t = std::time::Instant::now();
    // The output is read back, so the device has finished when this returns.
    let data = forward_component(component, &config, weights, &inputs, &device, kernel)?;
    eprintln!("forward: {:.3} s", t.elapsed().as_secs_f64());
    report_memory(&monitor, "the forward pass");
    write_out(&out, data)
}
