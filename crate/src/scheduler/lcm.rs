//! diffusers `LCMScheduler` (Luo et al. 2023, "Latent Consistency Models"): multistep
//! consistency sampling for few-step generation (2–8 steps), epsilon prediction.
//!
//! Timesteps come from the distillation schedule: `original_inference_steps` (50) evenly
//! spaced training timesteps `k·i - 1` (k = T / 50), of which `steps` are taken at evenly
//! spaced indices from the top. Each step predicts the clean sample x0, applies the consistency
//! boundary condition `denoised = c_out·x0 + c_skip·x` (sigma_data 0.5, timesteps scaled by
//! `timestep_scaling`), and, except after the last step, noises `denoised` afresh to the next
//! timestep. That fresh noise is what makes LCM stochastic: it is drawn from the generation's
//! seed (its own stream), so a seed still gives one image.
//!
//! Few steps only pay off with a UNet distilled for LCM (an LCM-LoRA merged into SD1.5, or an
//! LCM-distilled checkpoint), usually without classifier-free guidance (`guidance` ≤ 1: one
//! UNet batch of 1 instead of 2). With a plain SD1.5 UNet, LCM at few steps gives blurred images.

use burn::tensor::{Tensor, TensorData};

use super::Scheduler;
use crate::config::SchedulerConfig;
use crate::error::{Error, Result};
use crate::rng::Pcg32;

/// Mixed into the seed for the per-step noise, so that it is not the initial latents' stream.
const NOISE_STREAM: u64 = 0x4C43_4D5F_4E4F_4953; // "LCM_NOIS"

pub struct LcmScheduler {
    timesteps: Vec<usize>,
    alphas_cumprod: Vec<f32>,
    timestep_scaling: f32,
    index: usize,
    rng: Pcg32,
}

impl LcmScheduler {
    pub fn new(config: &SchedulerConfig, steps: usize, seed: u64) -> Result<Self> {
        let t = config.num_train_timesteps;
        let original = config.original_inference_steps;
        if original == 0 || original > t {
            return Err(Error::invalid(format!(
                "scheduler config: original_inference_steps must be between 1 and {t}, got {original}"
            )));
        }
        if steps == 0 || steps > original {
            return Err(Error::invalid(format!(
                "steps must be between 1 and {original} (LCM's original_inference_steps), got {steps}"
            )));
        }
        if !config.timestep_scaling.is_finite() || config.timestep_scaling <= 0.0 {
            return Err(Error::invalid(format!(
                "scheduler config: timestep_scaling must be a positive number, got {}",
                config.timestep_scaling
            )));
        }
        let k = t / original;
        // The distillation schedule, descending: k·original - 1, ..., 2k - 1, k - 1.
        let origin: Vec<usize> = (1..=original).rev().map(|i| i * k - 1).collect();
        // np.floor(np.linspace(0, len, steps, endpoint=False)) — exact in f64 for these sizes.
        let timesteps = (0..steps)
            .map(|i| origin[((i as f64) * (original as f64) / (steps as f64)).floor() as usize])
            .collect();
        Ok(Self {
            timesteps,
            alphas_cumprod: config.alphas_cumprod(),
            timestep_scaling: config.timestep_scaling as f32,
            index: 0,
            rng: Pcg32::new(seed ^ NOISE_STREAM),
        })
    }

    /// `(c_skip, c_out)` of the consistency boundary condition at `timestep` (in f32, as
    /// diffusers computes them from the long timestep tensor).
    pub fn boundary_scalings(&self, timestep: usize) -> (f32, f32) {
        let sigma_data2 = 0.25f32;
        let s = timestep as f32 * self.timestep_scaling;
        let c_skip = sigma_data2 / (s * s + sigma_data2);
        let c_out = s / (s * s + sigma_data2).sqrt();
        (c_skip, c_out)
    }

    /// One step with the given noise for the re-noising (`None`: drawn from the seed's stream).
    /// Returns the sample at the next timestep (the denoised sample after the last step).
    pub fn step_with_noise(
        &mut self,
        eps: Tensor<4>,
        timestep: usize,
        sample: Tensor<4>,
        noise: Option<Tensor<4>>,
    ) -> Tensor<4> {
        let i = self.index_of(timestep);
        let a = self.alphas_cumprod[timestep.min(self.alphas_cumprod.len() - 1)];
        let (c_skip, c_out) = self.boundary_scalings(timestep);
        let x0 = (sample.clone() - eps * (1.0f32 - a).sqrt()) / a.sqrt();
        let denoised = x0 * c_out + sample * c_skip;
        self.index = i + 1;
        if i + 1 >= self.timesteps.len() {
            return denoised;
        }
        let prev = self.alphas_cumprod[self.timesteps[i + 1]];
        let noise = noise.unwrap_or_else(|| {
            let shape = denoised.dims();
            let values = self.rng.normals(shape.iter().product());
            Tensor::from_data(TensorData::new(values, shape), &denoised.device())
        });
        denoised * prev.sqrt() + noise * (1.0f32 - prev).sqrt()
    }

    fn index_of(&self, t: usize) -> usize {
        super::step_index(&self.timesteps, self.index, t)
    }
}

impl Scheduler for LcmScheduler {
    fn timesteps(&self) -> &[usize] {
        &self.timesteps
    }

    fn step(&mut self, eps: Tensor<4>, timestep: usize, sample: Tensor<4>) -> Tensor<4> {
        self.step_with_noise(eps, timestep, sample, None)
    }
}
