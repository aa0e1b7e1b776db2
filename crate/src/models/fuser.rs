//! FastComposer's fuser (`postfuse_module`): fuses a text-encoder output at a subject's
//! noun token with the subject's projected image embedding.
//!
//! ```text
//! MLP(x)    = fc2(GELU(fc1(LayerNorm(x))))        GELU exact, LayerNorm eps 1e-5
//! fuse(t,v) = LayerNorm(mlp2(mlp1([t, v]) + t))   mlp1: 2D -> D -> D; mlp2: D -> D -> D, + input
//! ```

use burn::tensor::Tensor;

use crate::error::{Error, Result};
use crate::models::loader::Loader;
use crate::models::nn::{Activation, LayerNorm, Linear};

pub use crate::config::FuserConfig;

const EPS: f64 = 1e-5;

#[derive(Debug, Clone)]
struct Mlp {
    layernorm: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    residual: bool,
}

impl Mlp {
    fn load(vb: &Loader, d_in: usize, d_out: usize, hidden: usize, residual: bool) -> Result<Self> {
        Ok(Self {
            layernorm: LayerNorm::load(&vb.pp("layernorm"), d_in, EPS)?,
            fc1: Linear::load(&vb.pp("fc1"), d_in, hidden, true)?,
            fc2: Linear::load(&vb.pp("fc2"), hidden, d_out, true)?,
            residual,
        })
    }

    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let h = self
            .fc2
            .forward(Activation::Gelu.forward(self.fc1.forward(self.layernorm.forward(x.clone()))));
        if self.residual { h + x } else { h }
    }
}

/// The fuser MLP.
#[derive(Debug, Clone)]
pub struct Fuser {
    mlp1: Mlp,
    mlp2: Mlp,
    layer_norm: LayerNorm,
    pub config: FuserConfig,
}

impl Fuser {
    pub fn load(vb: &Loader, config: &FuserConfig) -> Result<Self> {
        let d = config.embed_dim;
        if d == 0 {
            return Err(Error::invalid("fuser config: embed_dim must be positive"));
        }
        Ok(Self {
            mlp1: Mlp::load(&vb.pp("mlp1"), 2 * d, d, d, false)?,
            mlp2: Mlp::load(&vb.pp("mlp2"), d, d, d, true)?,
            layer_norm: LayerNorm::load(&vb.pp("layer_norm"), d, EPS)?,
            config: config.clone(),
        })
    }

    /// `text` `[N, D]`, `image` `[N, D]` -> fused `[N, D]`.
    pub fn forward(&self, text: Tensor<2>, image: Tensor<2>) -> Result<Tensor<2>> {
        let d = self.config.embed_dim;
        let (t, i) = (text.dims(), image.dims());
        if t[1] != d || i[1] != d || t[0] != i[0] {
            return Err(Error::invalid(format!(
                "fuser: text {t:?} and image {i:?} must both be [N, {d}]"
            )));
        }
        let h = self.mlp1.forward(Tensor::cat(vec![text.clone(), image], 1)) + text;
        Ok(self.layer_norm.forward(self.mlp2.forward(h)))
    }
}
