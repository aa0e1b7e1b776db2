//! diffusers `PNDMScheduler` with `skip_prk_steps` (pseudo linear multi-step, PLMS),
//! epsilon prediction. Formulas from Liu et al. 2022, "Pseudo Numerical Methods for Diffusion
//! Models on Manifolds" (eq. 9 for the transfer, eq. 12 for the linear multi-step).

use burn::tensor::Tensor;

use super::Scheduler;
use crate::config::SchedulerConfig;
use crate::error::Result;

pub struct PndmScheduler {
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    timesteps: Vec<usize>,
    step_ratio: usize,
    ets: Vec<Tensor<4>>,
    counter: usize,
    cur_sample: Option<Tensor<4>>,
}

impl PndmScheduler {
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Self> {
        let alphas_cumprod = config.alphas_cumprod();
        let final_alpha_cumprod = if config.set_alpha_to_one {
            1.0
        } else {
            alphas_cumprod[0]
        };
        // PLMS timesteps: the leading ones with the second-to-last repeated, descending.
        let ts = config.leading_timesteps(steps)?;
        let n = ts.len();
        let mut plms: Vec<usize> = ts[..n - 1].to_vec();
        if n >= 2 {
            plms.push(ts[n - 2]);
        }
        plms.push(ts[n - 1]);
        plms.reverse();
        Ok(Self {
            alphas_cumprod,
            final_alpha_cumprod,
            timesteps: plms,
            step_ratio: config.num_train_timesteps / steps,
            ets: Vec::new(),
            counter: 0,
            cur_sample: None,
        })
    }

    fn alpha(&self, t: isize) -> f32 {
        if t >= 0 {
            self.alphas_cumprod[(t as usize).min(self.alphas_cumprod.len() - 1)]
        } else {
            self.final_alpha_cumprod
        }
    }

    /// Eq. 9: the transfer from x_t to x_{t-δ} given a noise estimate.
    fn prev_sample(&self, sample: Tensor<4>, t: isize, prev: isize, eps: Tensor<4>) -> Tensor<4> {
        let a_t = self.alpha(t);
        let a_prev = self.alpha(prev);
        let b_t = 1.0f32 - a_t;
        let b_prev = 1.0f32 - a_prev;
        let sample_coeff = (a_prev / a_t).sqrt();
        let denom = a_t * b_prev.sqrt() + (a_t * b_t * a_prev).sqrt();
        sample * sample_coeff - eps * (a_prev - a_t) / denom
    }
}

impl Scheduler for PndmScheduler {
    fn timesteps(&self) -> &[usize] {
        &self.timesteps
    }

    fn step(&mut self, model_output: Tensor<4>, timestep: usize, sample: Tensor<4>) -> Tensor<4> {
        let r = self.step_ratio as isize;
        let mut t = timestep as isize;
        let mut prev = t - r;
        if self.counter != 1 {
            if self.ets.len() > 3 {
                self.ets.remove(0);
            }
            self.ets.push(model_output.clone());
        } else {
            prev = t;
            t += r;
        }
        let e = &self.ets;
        let k = e.len();
        let mut sample = sample;
        // Eq. 12 with the warm-up of the first steps.
        let eps = if k == 1 && self.counter == 0 {
            self.cur_sample = Some(sample.clone());
            model_output
        } else if k == 1 && self.counter == 1 {
            if let Some(s) = self.cur_sample.take() {
                sample = s;
            }
            (model_output + e[k - 1].clone()) / 2.0
        } else if k == 2 {
            (e[k - 1].clone() * 3.0 - e[k - 2].clone()) / 2.0
        } else if k == 3 {
            (e[k - 1].clone() * 23.0 - e[k - 2].clone() * 16.0 + e[k - 3].clone() * 5.0) / 12.0
        } else {
            (e[k - 1].clone() * 55.0 - e[k - 2].clone() * 59.0 + e[k - 3].clone() * 37.0
                - e[k - 4].clone() * 9.0)
                * (1.0f64 / 24.0) as f32
        };
        let out = self.prev_sample(sample, t, prev, eps);
        self.counter += 1;
        out
    }
}
