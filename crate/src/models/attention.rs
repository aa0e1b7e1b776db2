//! diffusers `attention_processor.py` / `attention.py` / `transformer_2d.py`: the `Attention`
//! layer (what it computes; the kernel is [`crate::attention`]'s), `BasicTransformerBlock`
//! with a GEGLU feed-forward, and `Transformer2DModel` (continuous input, conv or linear
//! projections).

use std::cell::RefCell;

use burn::tensor::{Tensor, TensorData};

use crate::error::Result;
use crate::kernels::attention::{AttentionKernel, sdpa};
use crate::models::loader::Loader;
use crate::models::nn::{Conv2d, GroupNorm, LayerNorm, Linear};

/// diffusers `Attention`: `to_q`, `to_k`, `to_v`, `to_out.0`; optionally a GroupNorm in front
/// and a residual connection (the VAE's single-head spatial attention).
#[derive(Debug, Clone)]
pub struct Attention {
    group_norm: Option<GroupNorm>,
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
    dim_head: usize,
    residual: bool,
    kernel: AttentionKernel,
}

/// Shape of one `Attention` layer.
#[derive(Debug, Clone, Copy)]
pub struct AttentionShape {
    pub query_dim: usize,
    /// `None` = self-attention.
    pub cross_dim: Option<usize>,
    pub heads: usize,
    pub dim_head: usize,
    /// Bias on q/k/v (`attention_bias`; the VAE has it).
    pub qkv_bias: bool,
}

impl Attention {
    pub fn load(vb: &Loader, s: AttentionShape, kernel: AttentionKernel) -> Result<Self> {
        let inner = s.heads * s.dim_head;
        let kv_dim = s.cross_dim.unwrap_or(s.query_dim);
        Ok(Self {
            group_norm: None,
            to_q: Linear::load(&vb.pp("to_q"), s.query_dim, inner, s.qkv_bias)?,
            to_k: Linear::load(&vb.pp("to_k"), kv_dim, inner, s.qkv_bias)?,
            to_v: Linear::load(&vb.pp("to_v"), kv_dim, inner, s.qkv_bias)?,
            to_out: Linear::load(&vb.pp("to_out.0"), inner, s.query_dim, true)?,
            heads: s.heads,
            dim_head: s.dim_head,
            residual: false,
            kernel,
        })
    }

    /// The VAE mid-block attention (`_from_deprecated_attn_block`): GroupNorm, biased
    /// projections, residual. Checkpoints saved by older diffusers name the projections
    /// `query`/`key`/`value`/`proj_attn`; both spellings load.
    pub fn load_spatial(
        vb: &Loader,
        channels: usize,
        heads: usize,
        groups: usize,
        eps: f64,
        kernel: AttentionKernel,
    ) -> Result<Self> {
        let legacy = !vb.contains("to_q.weight") && vb.contains("query.weight");
        let name = |new: &'static str, old: &'static str| if legacy { old } else { new };
        let dim_head = channels / heads.max(1);
        Ok(Self {
            group_norm: Some(GroupNorm::load(
                &vb.pp("group_norm"),
                groups,
                channels,
                eps,
            )?),
            to_q: Linear::load(&vb.pp(name("to_q", "query")), channels, channels, true)?,
            to_k: Linear::load(&vb.pp(name("to_k", "key")), channels, channels, true)?,
            to_v: Linear::load(&vb.pp(name("to_v", "value")), channels, channels, true)?,
            to_out: Linear::load(
                &vb.pp(name("to_out.0", "proj_attn")),
                channels,
                channels,
                true,
            )?,
            heads,
            dim_head,
            residual: true,
            kernel,
        })
    }

    /// `x` `[B, L, query_dim]`, `context` `[B, T, cross_dim]` (or `None` for self-attention).
    pub fn forward(&self, x: Tensor<3>, context: Option<&Tensor<3>>) -> Tensor<3> {
        let ctx = context.cloned().unwrap_or_else(|| x.clone());
        let (q, k, v) = self.qkv(x, ctx);
        let dh = self.dim_head;
        self.merge_heads(sdpa(q, k, v, (dh as f64).powf(-0.5), false, self.kernel))
    }

    /// `q`, `k`, `v` as `[B, heads, L or T, dim_head]`.
    fn qkv(&self, x: Tensor<3>, ctx: Tensor<3>) -> (Tensor<4>, Tensor<4>, Tensor<4>) {
        let split = |lin: &Linear, t: Tensor<3>| {
            let [b, n, _] = t.dims();
            lin.forward(t)
                .reshape([b, n, self.heads, self.dim_head])
                .swap_dims(1, 2)
        };
        (
            split(&self.to_q, x),
            split(&self.to_k, ctx.clone()),
            split(&self.to_v, ctx),
        )
    }

    /// `[B, heads, L, dim_head]` back to `[B, L, query_dim]` through `to_out`.
    fn merge_heads(&self, o: Tensor<4>) -> Tensor<3> {
        let [b, h, l, dh] = o.dims();
        self.to_out
            .forward(o.swap_dims(1, 2).reshape([b, l, h * dh]))
    }

    /// Self-attention over `x` `[B, L, C]` whose keys and values also hold `extra` `[B, T, C]`,
    /// with `bias` (`T` values, added to the scores of those keys; the own keys get 0).
    ///
    /// The bias rides in one more head dimension, so that this layer's own kernel (sliced or
    /// flash) computes it: `q' = [q, 1]`, `k'_j = [k_j, b_j·√d]`, `v' = [v, 0]`, and
    /// `q'·k'_j/√d = q·k_j/√d + b_j`.
    pub fn forward_with_extra(&self, x: Tensor<3>, extra: Tensor<3>, bias: &[f32]) -> Tensor<3> {
        let [b, l, _] = x.dims();
        let n = l + extra.dims()[1];
        let (h, dh) = (self.heads, self.dim_head);
        let kv_in = Tensor::cat(vec![x.clone(), extra], 1);
        let (q, k, v) = self.qkv(x, kv_in);
        let device = q.device();
        let root = (dh as f32).sqrt();
        let mut column = vec![0f32; n];
        for (c, &v) in column[l..].iter_mut().zip(bias) {
            *c = v * root;
        }
        let column = Tensor::<4>::from_data(TensorData::new(column, [1, 1, n, 1]), &device)
            .expand([b, h, n, 1]);
        let q = Tensor::cat(vec![q, Tensor::ones([b, h, l, 1], &device)], 3);
        let k = Tensor::cat(vec![k, column], 3);
        let v = Tensor::cat(vec![v, Tensor::zeros([b, h, n, 1], &device)], 3);
        let o = sdpa(q, k, v, (dh as f64).powf(-0.5), false, self.kernel).narrow(3, 0, dh);
        self.merge_heads(o)
    }

    /// Spatial form `[B, C, H, W]` (GroupNorm, attention over pixels, residual).
    pub fn forward_spatial(&self, x: Tensor<4>) -> Tensor<4> {
        let [b, c, hh, ww] = x.dims();
        let h = match &self.group_norm {
            Some(norm) => norm.forward(x.clone()),
            None => x.clone(),
        };
        let seq = h.reshape([b, c, hh * ww]).swap_dims(1, 2);
        let out = self
            .forward(seq, None)
            .swap_dims(1, 2)
            .reshape([b, c, hh, ww]);
        if self.residual { out + x } else { out }
    }
}

/// `FeedForward` with GEGLU: `net.0.proj` (dim -> 2·inner), `hidden * gelu(gate)`, `net.2`.
#[derive(Debug, Clone)]
pub struct FeedForward {
    proj: Linear,
    out: Linear,
}

impl FeedForward {
    pub fn load(vb: &Loader, dim: usize, mult: usize) -> Result<Self> {
        let inner = dim * mult;
        Ok(Self {
            proj: Linear::load(&vb.pp("net.0.proj"), dim, 2 * inner, true)?,
            out: Linear::load(&vb.pp("net.2"), inner, dim, true)?,
        })
    }

    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        // `hidden * gelu(gate)` of the projection's two halves (one pass on the CPU device).
        self.out
            .forward(crate::kernels::cpu_ops::geglu(self.proj.forward(x)))
    }
}

/// `BasicTransformerBlock`: self-attention, cross-attention, GEGLU feed-forward, each after a
/// LayerNorm (eps 1e-5) and with a residual.
#[derive(Debug, Clone)]
pub struct BasicTransformerBlock {
    norm1: LayerNorm,
    attn1: Attention,
    norm2: LayerNorm,
    attn2: Attention,
    norm3: LayerNorm,
    ff: FeedForward,
}

impl BasicTransformerBlock {
    pub fn load(
        vb: &Loader,
        dim: usize,
        heads: usize,
        dim_head: usize,
        cross_dim: usize,
        kernel: AttentionKernel,
    ) -> Result<Self> {
        let shape = AttentionShape {
            query_dim: dim,
            cross_dim: None,
            heads,
            dim_head,
            qkv_bias: false,
        };
        Ok(Self {
            norm1: LayerNorm::load(&vb.pp("norm1"), dim, 1e-5)?,
            attn1: Attention::load(&vb.pp("attn1"), shape, kernel)?,
            norm2: LayerNorm::load(&vb.pp("norm2"), dim, 1e-5)?,
            attn2: Attention::load(
                &vb.pp("attn2"),
                AttentionShape {
                    cross_dim: Some(cross_dim),
                    ..shape
                },
                kernel,
            )?,
            norm3: LayerNorm::load(&vb.pp("norm3"), dim, 1e-5)?,
            ff: FeedForward::load(&vb.pp("ff"), dim, 4)?,
        })
    }

    /// `x` `[B, H·W, C]` of a `[H, W]` grid.
    pub fn forward(&self, x: Tensor<3>, context: &UNetContext, grid: [usize; 2]) -> Tensor<3> {
        let n = self.norm1.forward(x.clone());
        let a = match context.reference {
            Some(r) => r.self_attention(&self.attn1, n, grid),
            None => self.attn1.forward(n, None),
        };
        let x = a + x;
        let x = self
            .attn2
            .forward(self.norm2.forward(x.clone()), Some(context.states))
            + x;
        self.ff.forward(self.norm3.forward(x.clone())) + x
    }
}

/// Projection in/out of a `Transformer2DModel`: 1×1 convolution (SD1.x) or linear (SD2.x).
#[derive(Debug, Clone)]
enum Proj {
    Conv(Conv2d),
    Linear(Linear),
}

impl Proj {
    fn load(vb: &Loader, c_in: usize, c_out: usize, linear: bool) -> Result<Self> {
        Ok(if linear {
            Proj::Linear(Linear::load(vb, c_in, c_out, true)?)
        } else {
            Proj::Conv(Conv2d::load(vb, c_in, c_out, 1, 1, (0, 0), true)?)
        })
    }
}

/// `Transformer2DModel` over continuous input.
#[derive(Debug, Clone)]
pub struct Transformer2DModel {
    norm: GroupNorm,
    proj_in: Proj,
    transformer_blocks: Vec<BasicTransformerBlock>,
    proj_out: Proj,
}

/// Settings of the transformers in one UNet level.
#[derive(Debug, Clone, Copy)]
pub struct TransformerSettings {
    pub heads: usize,
    pub layers: usize,
    pub cross_dim: usize,
    pub groups: usize,
    pub linear_projection: bool,
    pub kernel: AttentionKernel,
}

impl Transformer2DModel {
    pub fn load(vb: &Loader, channels: usize, s: &TransformerSettings) -> Result<Self> {
        if s.heads == 0 || !channels.is_multiple_of(s.heads) {
            return Err(crate::Error::invalid(format!(
                "{}: {channels} channels cannot be split into {} attention heads",
                vb.key(""),
                s.heads
            )));
        }
        let dim_head = channels / s.heads;
        let blocks = vb.pp("transformer_blocks");
        Ok(Self {
            norm: GroupNorm::load(&vb.pp("norm"), s.groups, channels, 1e-6)?,
            proj_in: Proj::load(&vb.pp("proj_in"), channels, channels, s.linear_projection)?,
            transformer_blocks: (0..s.layers)
                .map(|i| {
                    BasicTransformerBlock::load(
                        &blocks.pp(i),
                        channels,
                        s.heads,
                        dim_head,
                        s.cross_dim,
                        s.kernel,
                    )
                })
                .collect::<Result<_>>()?,
            proj_out: Proj::load(&vb.pp("proj_out"), channels, channels, s.linear_projection)?,
        })
    }

    pub fn forward(&self, x: Tensor<4>, context: &UNetContext) -> Tensor<4> {
        let [b, c, h, w] = x.dims();
        let residual = x.clone();
        let x = self.norm.forward(x);
        let to_seq = |t: Tensor<4>| t.reshape([b, c, h * w]).swap_dims(1, 2);
        let mut seq = match &self.proj_in {
            Proj::Conv(conv) => to_seq(conv.forward(x)),
            Proj::Linear(lin) => lin.forward(to_seq(x)),
        };
        for block in &self.transformer_blocks {
            seq = block.forward(seq, context, [h, w]);
        }
        let to_img = |t: Tensor<3>| t.swap_dims(1, 2).reshape([b, c, h, w]);
        let out = match &self.proj_out {
            Proj::Conv(conv) => conv.forward(to_img(seq)),
            Proj::Linear(lin) => to_img(lin.forward(seq)),
        };
        out + residual
    }
}

/// What the UNet's transformers attend to: the text conditioning (cross-attention) and, for
/// self-subject attention, the reference pass's features.
#[derive(Clone, Copy)]
pub struct UNetContext<'a> {
    /// `encoder_hidden_states` `[B, T, D]`.
    pub states: &'a Tensor<3>,
    pub reference: Option<&'a SelfReference>,
}

/// Self-subject attention (DreamTuner): a reference pass over the subjects' noised photo
/// latents records every self-attention layer's input; the generated pass then attends to
/// those too, each reference token's score raised by `ln(w · mask)` (its subject's mask at
/// the layer's grid, area-averaged; `w` the strength).
///
/// The reference batch is `[k · B]`, subject-major (subject `j`'s copy for generated row `b`
/// at `j · B + b`); the generated batch is `[B]`.
pub struct SelfReference {
    state: RefCell<ReferenceState>,
    strength: f32,
    subjects: usize,
    /// Each subject's mask at the latent grid, row-major.
    masks: Vec<Vec<f32>>,
    latent: [usize; 2],
}

#[derive(Default)]
struct ReferenceState {
    recording: bool,
    layers: Vec<Tensor<3>>,
    cursor: usize,
}

/// Smallest weight a reference token gets: `ln` of it stands for `ln(0)`.
const MIN_WEIGHT: f32 = f32::MIN_POSITIVE;

impl SelfReference {
    /// `masks`: one per subject, `latent[0] · latent[1]` values in [0, 1].
    pub fn new(strength: f32, masks: Vec<Vec<f32>>, latent: [usize; 2]) -> Self {
        Self {
            state: RefCell::default(),
            strength,
            subjects: masks.len(),
            masks,
            latent,
        }
    }

    /// The next UNet pass is the reference pass: it records.
    pub fn record(&self) {
        *self.state.borrow_mut() = ReferenceState {
            recording: true,
            ..Default::default()
        };
    }

    /// The next UNet pass is the generated one: it reads what was recorded, in the same order.
    pub fn apply(&self) {
        let mut s = self.state.borrow_mut();
        s.recording = false;
        s.cursor = 0;
    }

    /// Drop the recorded features.
    pub fn clear(&self) {
        *self.state.borrow_mut() = ReferenceState::default();
    }

    fn self_attention(&self, attn: &Attention, x: Tensor<3>, grid: [usize; 2]) -> Tensor<3> {
        let mut s = self.state.borrow_mut();
        if s.recording {
            s.layers.push(x.clone());
            drop(s);
            return attn.forward(x, None);
        }
        let Some(r) = s.layers.get(s.cursor).cloned() else {
            drop(s);
            return attn.forward(x, None);
        };
        s.cursor += 1;
        drop(s);
        let [kb, l, c] = r.dims();
        let b = kb / self.subjects.max(1);
        // [k·B, L, C] -> [B, k·L, C]: generated row b sees every subject's copy for row b.
        let extra = r
            .reshape([self.subjects, b, l, c])
            .swap_dims(0, 1)
            .reshape([b, self.subjects * l, c]);
        let mut bias = Vec::with_capacity(self.subjects * l);
        for m in &self.masks {
            for v in area_resize(m, self.latent, grid) {
                bias.push((self.strength * v).max(MIN_WEIGHT).ln());
            }
        }
        attn.forward_with_extra(x, extra, &bias)
    }
}

/// Area (adaptive average) resize of a row-major `from` grid to `to`: output cell `i` averages
/// input rows `⌊i·H/h⌋ .. ⌈(i+1)·H/h⌉` (torch's `adaptive_avg_pool2d`).
pub fn area_resize(values: &[f32], from: [usize; 2], to: [usize; 2]) -> Vec<f32> {
    let span = |i: usize, src: usize, dst: usize| (i * src / dst, ((i + 1) * src).div_ceil(dst));
    let mut out = Vec::with_capacity(to[0] * to[1]);
    for i in 0..to[0] {
        let (r0, r1) = span(i, from[0], to[0]);
        for j in 0..to[1] {
            let (c0, c1) = span(j, from[1], to[1]);
            let mut sum = 0f32;
            for r in r0..r1 {
                sum += values[r * from[1] + c0..r * from[1] + c1]
                    .iter()
                    .sum::<f32>();
            }
            out.push(sum / ((r1 - r0) * (c1 - c0)) as f32);
        }
    }
    out
}
