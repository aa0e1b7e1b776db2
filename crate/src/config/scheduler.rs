//! diffusers' scheduler config.

use serde::Deserialize;

use crate::error::{Error, Result};

/// diffusers' scheduler config (`scheduler/scheduler_config.json`). Defaults: SD1.5's.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(default)]
pub struct SchedulerConfig {
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: String,
    pub set_alpha_to_one: bool,
    pub steps_offset: usize,
    pub skip_prk_steps: bool,
    pub prediction_type: String,
    pub timestep_spacing: String,
    pub clip_sample: bool,
    /// LCM: the distillation schedule's number of steps.
    pub original_inference_steps: usize,
    /// LCM: timesteps are multiplied by this in the boundary condition.
    pub timestep_scaling: f64,
    // Settings of other schedulers and variants, read so that they can be refused by name.
    pub rescale_betas_zero_snr: bool,
    pub thresholding: bool,
    pub use_karras_sigmas: bool,
    pub use_exponential_sigmas: bool,
    pub use_beta_sigmas: bool,
    pub interpolation_type: String,
    pub final_sigmas_type: String,
    pub timestep_type: String,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            beta_start: 0.00085,
            beta_end: 0.012,
            beta_schedule: "scaled_linear".into(),
            set_alpha_to_one: false,
            steps_offset: 1,
            skip_prk_steps: true,
            prediction_type: "epsilon".into(),
            timestep_spacing: "leading".into(),
            clip_sample: false,
            original_inference_steps: 50,
            timestep_scaling: 10.0,
            rescale_betas_zero_snr: false,
            thresholding: false,
            use_karras_sigmas: false,
            use_exponential_sigmas: false,
            use_beta_sigmas: false,
            interpolation_type: "linear".into(),
            final_sigmas_type: "zero".into(),
            timestep_type: "discrete".into(),
        }
    }
}

impl SchedulerConfig {
    /// Refuse settings this crate does not implement, by name.
    pub fn check(&self) -> Result<()> {
        let bad = |what: String| {
            Err(Error::invalid(format!(
                "scheduler config: unsupported {what}"
            )))
        };
        if !matches!(self.beta_schedule.as_str(), "scaled_linear" | "linear") {
            return bad(format!("beta_schedule = {:?}", self.beta_schedule));
        }
        if self.prediction_type != "epsilon" {
            return bad(format!("prediction_type = {:?}", self.prediction_type));
        }
        if self.timestep_spacing != "leading" {
            return bad(format!("timestep_spacing = {:?}", self.timestep_spacing));
        }
        if self.clip_sample {
            return bad("clip_sample = true".into());
        }
        for (name, on) in [
            ("rescale_betas_zero_snr", self.rescale_betas_zero_snr),
            ("thresholding", self.thresholding),
            ("use_karras_sigmas", self.use_karras_sigmas),
            ("use_exponential_sigmas", self.use_exponential_sigmas),
            ("use_beta_sigmas", self.use_beta_sigmas),
        ] {
            if on {
                return bad(format!("{name} = true"));
            }
        }
        for (name, value, want) in [
            ("interpolation_type", &self.interpolation_type, "linear"),
            ("final_sigmas_type", &self.final_sigmas_type, "zero"),
            ("timestep_type", &self.timestep_type, "discrete"),
        ] {
            if value != want {
                return bad(format!("{name} = {value:?}"));
            }
        }
        if self.num_train_timesteps < 2 {
            return bad(format!(
                "num_train_timesteps = {}",
                self.num_train_timesteps
            ));
        }
        Ok(())
    }
}
