//! diffusers `DDIMScheduler` with eta = 0 (deterministic), epsilon prediction.
//! Numbered as in the DDIM paper (Song et al. 2020, eq. 12).

use burn::tensor::Tensor;

use super::Scheduler;
use crate::config::SchedulerConfig;
use crate::error::Result;

pub struct DdimScheduler {
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    timesteps: Vec<usize>,
    step_ratio: usize,
}

impl DdimScheduler {
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Self> {
        let alphas_cumprod = config.alphas_cumprod();
        let final_alpha_cumprod = if config.set_alpha_to_one {
            1.0
        } else {
            alphas_cumprod[0]
        };
        let mut timesteps = config.leading_timesteps(steps)?;
        timesteps.reverse();
        Ok(Self {
            alphas_cumprod,
            final_alpha_cumprod,
            timesteps,
            step_ratio: config.num_train_timesteps / steps,
        })
    }

    fn alpha(&self, t: isize) -> f32 {
        if t >= 0 {
            self.alphas_cumprod[(t as usize).min(self.alphas_cumprod.len() - 1)]
        } else {
            self.final_alpha_cumprod
        }
    }
}

impl Scheduler for DdimScheduler {
    fn timesteps(&self) -> &[usize] {
        &self.timesteps
    }

    fn step(&mut self, eps: Tensor<4>, timestep: usize, sample: Tensor<4>) -> Tensor<4> {
        // 1. previous step
        let prev = timestep as isize - self.step_ratio as isize;
        // 2. alphas and betas
        let a_t = self.alpha(timestep as isize);
        let a_prev = self.alpha(prev);
        let b_t = 1.0f32 - a_t;
        // 3. predicted x_0 ("predicted x_0" of eq. 12)
        let x0 = (sample - eps.clone() * b_t.sqrt()) / a_t.sqrt();
        // 4-5. variance is zero for eta = 0
        // 6. direction pointing to x_t
        let direction = eps * (1.0f32 - a_prev).sqrt();
        // 7. x_{t-1}
        x0 * a_prev.sqrt() + direction
    }
}
