//! Noise schedulers behind one small trait, matching diffusers' `DDIMScheduler`,
//! `PNDMScheduler` (PLMS, `skip_prk_steps`), `EulerDiscreteScheduler` and `LCMScheduler`
//! (few-step).
//!
//! The schedule is computed on the host exactly as diffusers computes it with torch: betas
//! from an f32 `linspace`, `alphas_cumprod` from a cumulative product accumulated in f64 and
//! stored as f32 (torch's CPU `cumprod`), step coefficients as f32 scalars.

pub mod ddim;
pub mod euler;
pub mod lcm;
pub mod pndm;

use burn::tensor::Tensor;
use serde::Deserialize;

use crate::error::{Error, Result};

pub use crate::config::SchedulerConfig;

pub use ddim::DdimScheduler;
pub use euler::EulerScheduler;
pub use lcm::LcmScheduler;
pub use pndm::PndmScheduler;

/// Which scheduler runs the denoising loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SchedulerKind {
    #[default]
    Ddim,
    Pndm,
    Euler,
    /// Latent consistency sampling: few steps, for LCM-distilled UNets.
    Lcm,
}

impl std::str::FromStr for SchedulerKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "ddim" => Ok(SchedulerKind::Ddim),
            "pndm" | "plms" => Ok(SchedulerKind::Pndm),
            "euler" => Ok(SchedulerKind::Euler),
            "lcm" => Ok(SchedulerKind::Lcm),
            other => Err(Error::invalid(format!(
                "unknown scheduler `{other}` (expected ddim, pndm, euler or lcm)"
            ))),
        }
    }
}

/// One denoising schedule, stepped in order.
pub trait Scheduler {
    /// The model is evaluated at these timesteps, in this order.
    fn timesteps(&self) -> &[usize];
    /// Standard deviation of the initial noise.
    fn init_noise_sigma(&self) -> f64 {
        1.0
    }
    /// Scale the model input for timestep `t` (identity for DDIM and PNDM; Euler divides by
    /// sqrt(sigma² + 1)).
    fn scale_model_input(&self, sample: Tensor<4>, _t: usize) -> Tensor<4> {
        sample
    }
    /// One step back in time: the sample at the previous timestep.
    fn step(&mut self, model_output: Tensor<4>, timestep: usize, sample: Tensor<4>) -> Tensor<4>;
}

impl SchedulerConfig {
    /// `betas`, as diffusers computes them in f32.
    pub fn betas(&self) -> Vec<f32> {
        let n = self.num_train_timesteps;
        match self.beta_schedule.as_str() {
            "scaled_linear" => linspace_f32(self.beta_start.sqrt(), self.beta_end.sqrt(), n)
                .into_iter()
                .map(|b| b * b)
                .collect(),
            _ => linspace_f32(self.beta_start, self.beta_end, n),
        }
    }

    /// `alphas_cumprod` (f32, accumulated in f64 like torch's CPU `cumprod`).
    pub fn alphas_cumprod(&self) -> Vec<f32> {
        let mut acc = 1f64;
        self.betas()
            .into_iter()
            .map(|b| {
                acc *= (1.0f32 - b) as f64;
                acc as f32
            })
            .collect()
    }

    /// "leading" spacing: `arange(0, n) * (T // n) + steps_offset`, ascending.
    pub fn leading_timesteps(&self, steps: usize) -> Result<Vec<usize>> {
        let t = self.num_train_timesteps;
        if steps == 0 || steps > t {
            return Err(Error::invalid(format!(
                "steps must be between 1 and {t} (num_train_timesteps), got {steps}"
            )));
        }
        let ratio = t / steps;
        Ok((0..steps).map(|i| i * ratio + self.steps_offset).collect())
    }

    /// Build the scheduler of `kind` for `steps` inference steps. `seed` feeds the schedulers
    /// that draw noise while stepping (LCM); the others ignore it.
    pub fn build(
        &self,
        kind: SchedulerKind,
        steps: usize,
        seed: u64,
    ) -> Result<Box<dyn Scheduler>> {
        self.check()?;
        Ok(match kind {
            SchedulerKind::Ddim => Box::new(DdimScheduler::new(self, steps)?),
            SchedulerKind::Pndm => Box::new(PndmScheduler::new(self, steps)?),
            SchedulerKind::Euler => Box::new(EulerScheduler::new(self, steps)?),
            SchedulerKind::Lcm => Box::new(LcmScheduler::new(self, steps, seed)?),
        })
    }
}

/// Where timestep `t` is in `timesteps`, looking from `from` on (the current step); the
/// current step if `t` is not found. For schedulers whose step needs its position in the
/// schedule (diffusers' `index_for_timestep`).
pub(crate) fn step_index(timesteps: &[usize], from: usize, t: usize) -> usize {
    timesteps[from..]
        .iter()
        .position(|&x| x == t)
        .map(|i| i + from)
        .unwrap_or(from)
        .min(timesteps.len() - 1)
}

/// torch's CPU `linspace` for f32: `start + step·i` for the first half, `end - step·(n-1-i)`
/// for the second, with `step = (end - start) / (n - 1)` in f32 and a fused multiply-add
/// (torch's vectorised kernel uses `fmadd`).
pub fn linspace_f32(start: f64, end: f64, n: usize) -> Vec<f32> {
    let (s, e) = (start as f32, end as f32);
    if n == 1 {
        return vec![s];
    }
    let step = (e - s) / (n - 1) as f32;
    let half = n / 2;
    (0..n)
        .map(|i| {
            if i < half {
                step.mul_add(i as f32, s)
            } else {
                (-step).mul_add((n - 1 - i) as f32, e)
            }
        })
        .collect()
}
