//! Made-up weights of any shape, as a weight source: uniform in ±1/sqrt(fan_in) for weights,
//! ones for norm scales, zeros for biases. For benchmarks and memory checks at full size
//! without a checkpoint; never for generation.

use burn::tensor::TensorData;

use crate::config::TensorSource;
use crate::error::Result;
use crate::quant::{GgmlType, QuantMode, policy, quantize_data};

/// Random weights, optionally stored as a bundle of a [`QuantMode`] stores them (blocks of 32
/// quantized by the bundle writer's own code; what the bundle keeps in f16 is made as f32, as
/// a bundle loads it), so the quantized path can be timed and sized without writing a bundle.
#[derive(Debug, Clone, Copy, Default)]
pub struct RandomSource {
    stored_as: Option<QuantMode>,
}

impl RandomSource {
    /// Weights stored as `mode` stores them (`None`: plain f32).
    pub fn stored_as(mode: Option<QuantMode>) -> Self {
        Self { stored_as: mode }
    }
}

impl TensorSource for RandomSource {
    fn names(&self) -> Vec<String> {
        Vec::new()
    }

    fn shape(&self, _name: &str) -> Option<Vec<usize>> {
        None
    }

    fn read(&self, name: &str) -> Result<TensorData> {
        Err(crate::error::Error::weights(format!(
            "random weights are made by shape, not read (`{name}`)"
        )))
    }

    fn make(&self, key: &str, shape: &[usize], matrix: bool) -> Option<TensorData> {
        let name = key.rsplit('.').next().unwrap_or(key);
        let fan_in: usize = shape.iter().skip(1).product();
        if matrix && let Some(mode) = self.stored_as {
            let (rows, cols) = (shape[0], fan_in);
            let ty = policy(mode, key, &[rows, cols]);
            if matches!(ty, GgmlType::Q8_0 | GgmlType::Q4_0) {
                let values = random_data(name, &[rows, cols], cols)
                    .try_into_vec::<f32>()
                    .ok()?;
                return Some(quantize_data(&values, [rows, cols], ty));
            }
        }
        Some(random_data(name, shape, fan_in))
    }
}

/// Deterministic made-up values (a small LCG; speed over quality).
fn random_data(name: &str, shape: &[usize], fan_in: usize) -> TensorData {
    let n: usize = shape.iter().product();
    if shape.len() == 1 {
        let v = if name == "weight" { 1.0 } else { 0.0 };
        return TensorData::new(vec![v; n], shape.to_vec());
    }
    let scale = 1.0 / (fan_in.max(1) as f32).sqrt();
    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ (n as u64);
    let values = (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect();
    TensorData::new(values, shape.to_vec())
}
