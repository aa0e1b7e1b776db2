//! diffusers `embeddings.py`: sinusoidal timestep projection (`Timesteps`) and the MLP on top
//! of it (`TimestepEmbedding`).

use burn::tensor::{Tensor, TensorData};

use crate::error::Result;
use crate::models::loader::Loader;
use crate::models::nn::{Activation, Linear};

/// `get_timestep_embedding(t, dim, flip_sin_to_cos, downscale_freq_shift, scale=1,
/// max_period=10000)`: `[B]` -> `[B, dim]`. Frequencies are computed on the host in f32
/// exactly as torch does (`exp(-ln(10000) * arange(half) / (half - shift))`).
pub fn timestep_embedding(
    timesteps: Tensor<1>,
    dim: usize,
    flip_sin_to_cos: bool,
    shift: f64,
) -> Tensor<2> {
    let half = dim / 2;
    let device = timesteps.device();
    let b = timesteps.dims()[0];
    let exponent_scale = -(10000f64.ln()) as f32;
    let freqs: Vec<f32> = (0..half)
        .map(|i| ((exponent_scale * i as f32) / (half as f32 - shift as f32)).exp())
        .collect();
    // In f32 whatever the compute type (timesteps up to 999 times frequencies near 1 need
    // more than f16's 11 bits), cast at the end as diffusers does (`t_emb.to(sample.dtype)`).
    let (timesteps, dtype) = crate::models::nn::to_f32(timesteps);
    let freqs = Tensor::<1>::from_data(
        TensorData::new(freqs, [half]),
        (&device, burn::tensor::DType::F32),
    );
    let args = timesteps.reshape([b, 1]) * freqs.reshape([1, half]);
    let (sin, cos) = (args.clone().sin(), args.cos());
    let mut emb = if flip_sin_to_cos {
        Tensor::cat(vec![cos, sin], 1)
    } else {
        Tensor::cat(vec![sin, cos], 1)
    };
    if dim % 2 == 1 {
        let zero = Tensor::zeros([b, 1], (&device, burn::tensor::DType::F32));
        emb = Tensor::cat(vec![emb, zero], 1);
    }
    if dtype == burn::tensor::FloatDType::F32 {
        emb
    } else {
        emb.cast(dtype)
    }
}

/// `TimestepEmbedding`: `linear_1 -> act -> linear_2`.
#[derive(Debug, Clone)]
pub struct TimestepEmbedding {
    linear_1: Linear,
    linear_2: Linear,
    act: Activation,
}

impl TimestepEmbedding {
    pub fn load(vb: &Loader, d_in: usize, d_time: usize, act: Activation) -> Result<Self> {
        Ok(Self {
            linear_1: Linear::load(&vb.pp("linear_1"), d_in, d_time, true)?,
            linear_2: Linear::load(&vb.pp("linear_2"), d_time, d_time, true)?,
            act,
        })
    }

    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.linear_2
            .forward(self.act.forward(self.linear_1.forward(x)))
    }
}
