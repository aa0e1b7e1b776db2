//! The transformer shared by CLIP's text and vision towers (transformers' `modeling_clip.py`:
//! `CLIPAttention`, `CLIPMLP`, `CLIPEncoderLayer`, `CLIPEncoder`). Pre-LayerNorm blocks.

use burn::tensor::Tensor;

use crate::error::{Error, Result};
use crate::kernels::attention::{AttentionKernel, sdpa};
use crate::models::loader::Loader;
use crate::models::nn::{Activation, LayerNorm, Linear};

/// The encoder's shape, common to both towers' configs.
#[derive(Debug, Clone, Copy)]
pub struct EncoderShape {
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub eps: f64,
    pub act: Activation,
}

impl EncoderShape {
    pub fn check(&self, what: &str) -> Result<()> {
        if self.heads == 0 || !self.hidden.is_multiple_of(self.heads) {
            return Err(Error::invalid(format!(
                "{what}: hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden, self.heads
            )));
        }
        Ok(())
    }
}

/// `CLIPAttention`: q/k/v/out projections with bias, scale `head_dim^-0.5`.
#[derive(Debug, Clone)]
pub struct ClipAttention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    heads: usize,
    kernel: AttentionKernel,
}

impl ClipAttention {
    fn load(vb: &Loader, s: &EncoderShape, kernel: AttentionKernel) -> Result<Self> {
        let d = s.hidden;
        Ok(Self {
            q_proj: Linear::load(&vb.pp("q_proj"), d, d, true)?,
            k_proj: Linear::load(&vb.pp("k_proj"), d, d, true)?,
            v_proj: Linear::load(&vb.pp("v_proj"), d, d, true)?,
            out_proj: Linear::load(&vb.pp("out_proj"), d, d, true)?,
            heads: s.heads,
            kernel,
        })
    }

    fn forward(&self, x: Tensor<3>, causal: bool) -> Tensor<3> {
        let [b, l, d] = x.dims();
        let dh = d / self.heads;
        let split = |t: Tensor<3>| t.reshape([b, l, self.heads, dh]).swap_dims(1, 2);
        let q = split(self.q_proj.forward(x.clone()));
        let k = split(self.k_proj.forward(x.clone()));
        let v = split(self.v_proj.forward(x));
        let o = sdpa(q, k, v, (dh as f64).powf(-0.5), causal, self.kernel);
        self.out_proj.forward(o.swap_dims(1, 2).reshape([b, l, d]))
    }
}

/// `CLIPEncoderLayer`.
#[derive(Debug, Clone)]
pub struct ClipEncoderLayer {
    layer_norm1: LayerNorm,
    self_attn: ClipAttention,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    act: Activation,
}

impl ClipEncoderLayer {
    fn load(vb: &Loader, s: &EncoderShape, kernel: AttentionKernel) -> Result<Self> {
        Ok(Self {
            layer_norm1: LayerNorm::load(&vb.pp("layer_norm1"), s.hidden, s.eps)?,
            self_attn: ClipAttention::load(&vb.pp("self_attn"), s, kernel)?,
            layer_norm2: LayerNorm::load(&vb.pp("layer_norm2"), s.hidden, s.eps)?,
            fc1: Linear::load(&vb.pp("mlp.fc1"), s.hidden, s.intermediate, true)?,
            fc2: Linear::load(&vb.pp("mlp.fc2"), s.intermediate, s.hidden, true)?,
            act: s.act,
        })
    }

    fn forward(&self, x: Tensor<3>, causal: bool) -> Tensor<3> {
        let h = self
            .self_attn
            .forward(self.layer_norm1.forward(x.clone()), causal);
        let x = x + h;
        let h = self.fc2.forward(
            self.act
                .forward(self.fc1.forward(self.layer_norm2.forward(x.clone()))),
        );
        x + h
    }
}

/// `CLIPEncoder`: the stack of layers.
#[derive(Debug, Clone)]
pub struct ClipEncoder {
    layers: Vec<ClipEncoderLayer>,
}

impl ClipEncoder {
    pub fn load(vb: &Loader, s: &EncoderShape, kernel: AttentionKernel) -> Result<Self> {
        let vb = vb.pp("layers");
        let layers = (0..s.layers)
            .map(|i| ClipEncoderLayer::load(&vb.pp(i), s, kernel))
            .collect::<Result<_>>()?;
        Ok(Self { layers })
    }

    pub fn forward(&self, mut x: Tensor<3>, causal: bool) -> Tensor<3> {
        for layer in &self.layers {
            x = layer.forward(x, causal);
        }
        x
    }
}
