//! diffusers `EulerDiscreteScheduler` (Karras et al. 2022, "Elucidating the Design Space of
//! Diffusion-Based Generative Models", Algorithm 2 with `s_churn = 0`: deterministic Euler steps
//! on the probability-flow ODE in sigma space), epsilon prediction, "leading" timesteps.
//!
//! `sigma(t) = sqrt((1 - alphas_cumprod[t]) / alphas_cumprod[t])`; the model sees
//! x / sqrt(sigma² + 1), and the initial noise has standard deviation sqrt(sigma_max² + 1).

use burn::tensor::Tensor;

use super::Scheduler;
use crate::config::SchedulerConfig;
use crate::error::Result;

pub struct EulerScheduler {
    timesteps: Vec<usize>,
    /// sigma at each timestep, then a final 0.
    sigmas: Vec<f32>,
    index: usize,
}

impl EulerScheduler {
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Self> {
        let ac = config.alphas_cumprod();
        // diffusers computes the sigma table in f32 torch ops: ((1 - ac) / ac) ** 0.5.
        let table: Vec<f32> = ac.iter().map(|&a| ((1.0f32 - a) / a).sqrt()).collect();
        let mut timesteps = config.leading_timesteps(steps)?;
        timesteps.reverse();
        let mut sigmas: Vec<f32> = timesteps
            .iter()
            .map(|&t| table[t.min(table.len() - 1)])
            .collect();
        sigmas.push(0.0);
        Ok(Self {
            timesteps,
            sigmas,
            index: 0,
        })
    }

    fn index_of(&self, t: usize) -> usize {
        super::step_index(&self.timesteps, self.index, t)
    }
}

impl Scheduler for EulerScheduler {
    fn timesteps(&self) -> &[usize] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        let max = self.sigmas.iter().cloned().fold(0.0f32, f32::max);
        (max * max + 1.0f32).sqrt() as f64
    }

    fn scale_model_input(&self, sample: Tensor<4>, t: usize) -> Tensor<4> {
        let sigma = self.sigmas[self.index_of(t)];
        sample / (sigma * sigma + 1.0f32).sqrt()
    }

    fn step(&mut self, eps: Tensor<4>, timestep: usize, sample: Tensor<4>) -> Tensor<4> {
        let i = self.index_of(timestep);
        let sigma = self.sigmas[i];
        // The predicted clean sample, and the ODE's derivative dx/dsigma = (x - x0) / sigma.
        let x0 = sample.clone() - eps * sigma;
        let derivative = (sample.clone() - x0) / sigma;
        let dt = self.sigmas[i + 1] - sigma;
        self.index = i + 1;
        sample + derivative * dt
    }
}
