//! The few layer types the models are made of, loaded by reference key names.
//! Plain structs holding tensors: inference needs no autodiff or optimiser state.

use burn::tensor::module::{layer_norm, linear};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{FloatDType, Tensor, activation};

use crate::error::Result;
use crate::kernels::ConvKernels;
use crate::models::loader::{ConvWeight, LinearWeight, Loader};

/// `torch.nn.Linear`.
#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: LinearWeight,
    pub bias: Option<Tensor<1>>,
}

impl Linear {
    pub fn load(vb: &Loader, d_in: usize, d_out: usize, bias: bool) -> Result<Self> {
        Ok(Self {
            weight: vb.linear_weight("weight", d_in, d_out)?,
            bias: if bias {
                Some(vb.tensor("bias", [d_out])?)
            } else {
                None
            },
        })
    }

    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        match &self.weight {
            LinearWeight::Float(w) => linear(x, w.clone(), self.bias.clone()),
            // `[d_out, d_in]` dequantized; its transpose is a strided view the matmul reads.
            LinearWeight::Host(w) => linear(x, w.dequantize().transpose(), self.bias.clone()),
            LinearWeight::Quantized(w) => {
                // y = (W · xᵀ)ᵀ with W quantized `[out, in]` as stored: the quantized operand is
                // used untransposed, so its blocks keep their stored layout.
                let dims = x.dims();
                let d_in = dims[D - 1];
                let rows = x.shape().num_elements() / d_in.max(1);
                let d_out = w.dims()[0];
                let y = w.clone().matmul(x.reshape([rows, d_in]).transpose());
                // `[d_out, 1]` -> `[1, d_out]` by a reshape, not a transpose: on wgpu, burn 0.22's
                // fusion gives wrong values when element-wise work (the bias, an activation) is
                // fused onto the transposed view of a one-column quantized matmul output (the time
                // embedding at batch 1: images 87 levels off; tests/suite/quantized_ops.rs).
                let y = if rows == 1 {
                    y.reshape([1, d_out])
                } else {
                    y.transpose()
                };
                let y = match &self.bias {
                    Some(b) => y + b.clone().unsqueeze_dim(0),
                    None => y,
                };
                let mut out = dims;
                out[D - 1] = d_out;
                y.reshape(out)
            }
        }
    }
}

/// `torch.nn.Conv2d` (square kernel, symmetric or `(begin, end)` padding).
#[derive(Debug, Clone)]
pub struct Conv2d {
    pub weight: ConvWeight,
    pub bias: Option<Tensor<1>>,
    pub options: ConvOptions<2>,
    /// How it is computed (from the loader: [`Loader::conv_kernels`]).
    pub kernels: ConvKernels,
}

impl Conv2d {
    #[allow(clippy::too_many_arguments)]
    pub fn load(
        vb: &Loader,
        c_in: usize,
        c_out: usize,
        kernel: usize,
        stride: usize,
        padding: (usize, usize),
        bias: bool,
    ) -> Result<Self> {
        Ok(Self {
            weight: vb.conv_weight("weight", [c_out, c_in, kernel, kernel])?,
            bias: if bias {
                Some(vb.tensor("bias", [c_out])?)
            } else {
                None
            },
            options: ConvOptions::new_with_padding([stride, stride], [padding, padding], [1, 1], 1),
            kernels: vb.conv_kernels(),
        })
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        use crate::kernels::conv::{COLUMNS_BYTES, matmul_applies, windows_matmul};
        match &self.weight {
            // On a GPU the quantized kernel goes to the matmul as stored (no f32 copy per call).
            ConvWeight::Quantized { matrix, shape }
                if matmul_applies(&x, *shape, &self.options, self.kernels.gpu) =>
            {
                windows_matmul(
                    x,
                    matrix.clone(),
                    [shape[2], shape[3]],
                    self.bias.clone(),
                    &self.options,
                    COLUMNS_BYTES,
                )
            }
            _ => crate::kernels::conv::conv2d(
                x,
                self.weight.get(),
                self.bias.clone(),
                self.options.clone(),
                self.kernels,
            ),
        }
    }
}

/// `torch.nn.GroupNorm` (affine) over `[B, C, H, W]`.
#[derive(Debug, Clone)]
pub struct GroupNorm {
    pub weight: Tensor<1>,
    pub bias: Tensor<1>,
    pub groups: usize,
    pub eps: f64,
}

impl GroupNorm {
    pub fn load(vb: &Loader, groups: usize, channels: usize, eps: f64) -> Result<Self> {
        if groups == 0 || !channels.is_multiple_of(groups) {
            return Err(crate::Error::weights(format!(
                "{}: {channels} channels cannot be split into {groups} groups",
                vb.key("")
            )));
        }
        Ok(Self {
            weight: vb.tensor("weight", [channels])?,
            bias: vb.tensor("bias", [channels])?,
            groups,
            eps,
        })
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        crate::kernels::cpu_ops::group_norm(
            x,
            &self.weight,
            &self.bias,
            self.groups,
            self.eps,
            false,
            |x| self.forward_plain(x),
        )
    }

    /// `act(self.forward(x))`; GroupNorm + SiLU run as one pass on the CPU device.
    pub fn forward_act(&self, x: Tensor<4>, act: Activation) -> Tensor<4> {
        if act != Activation::Silu {
            return act.forward(self.forward(x));
        }
        crate::kernels::cpu_ops::group_norm(
            x,
            &self.weight,
            &self.bias,
            self.groups,
            self.eps,
            true,
            |x| act.forward(self.forward_plain(x)),
        )
    }

    /// The tensor-op GroupNorm (every device; the reference the CPU kernel is tested against).
    pub fn forward_plain(&self, x: Tensor<4>) -> Tensor<4> {
        let [b, c, h, w] = x.dims();
        let g = self.groups;
        // Statistics in f32 whatever the compute dtype (as PyTorch does): in f16 the sum of
        // squares over a group (10 channels × 64×64 pixels in SD1.5) overflows.
        let n = (c / g) * h * w;
        let (xg, dtype) = to_f32(x.reshape([b, g, n]));
        // Mean, then the mean of squared deviations, each summed in pieces (`sum_last`).
        let mean = sum_last(xg.clone()) / n as f64;
        let d = xg - mean;
        let var = sum_last(d.clone() * d.clone()) / n as f64;
        let xg = d / (var + self.eps).sqrt();
        let x = xg.reshape([b, c, h, w]).cast(dtype);
        let weight = self.weight.clone().reshape([1, c, 1, 1]);
        let bias = self.bias.clone().reshape([1, c, 1, 1]);
        x * weight + bias
    }
}

/// `torch.nn.LayerNorm` over the last dimension.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    pub weight: Tensor<1>,
    pub bias: Tensor<1>,
    pub eps: f64,
}

impl LayerNorm {
    pub fn load(vb: &Loader, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: vb.tensor("weight", [dim])?,
            bias: vb.tensor("bias", [dim])?,
            eps,
        })
    }

    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let (x, dtype) = to_f32(x);
        if dtype == FloatDType::F32 {
            return layer_norm(x, self.weight.clone(), Some(self.bias.clone()), self.eps);
        }
        // Statistics in f32 (see GroupNorm), the affine part in the compute dtype.
        let (var, mean) = x.clone().var_mean_bias(D - 1);
        let x = ((x - mean) / (var + self.eps).sqrt()).cast(dtype);
        let shape = |t: &Tensor<1>| {
            let mut s = [1usize; D];
            s[D - 1] = t.dims()[0];
            t.clone().reshape(s)
        };
        x * shape(&self.weight) + shape(&self.bias)
    }
}

/// Longest reduction [`sum_last`] hands to the device in one piece.
const SUM_PIECE: usize = 4096;

/// The sum over the last dimension, `[.., n]` -> `[.., 1]`, in pieces of at most
/// [`SUM_PIECE`] values (the largest divisor of `n` up to it), then over the pieces, and so on.
/// On wgpu (lavapipe, burn 0.22.1) one reduction over 262,144 values came out wrong — a sum of
/// ones gave 262,124 — which put GroupNorm over the SD1.5 VAE decoder's groups at 512×512
/// (4 channels × 256×256 pixels) off by up to 10 % (`tests/suite/parity.rs` checks this on the test
/// device). Pieces also keep f32 rounding small on every device.
pub(crate) fn sum_last(x: Tensor<3>) -> Tensor<3> {
    let [a, b, n] = x.dims();
    if n <= SUM_PIECE {
        return x.sum_dim(2);
    }
    let piece = (2..=SUM_PIECE).rev().find(|k| n % k == 0).unwrap_or(1);
    if piece == 1 {
        return x.sum_dim(2); // n has no divisor up to SUM_PIECE: one reduction
    }
    let partial = x.reshape([a * b, n / piece, piece]).sum_dim(2); // [a·b, n/piece, 1]
    sum_last(partial.reshape([a, b, n / piece]))
}

/// `x` in f32 and the float dtype it had (reductions that overflow in f16 run in f32).
pub(crate) fn to_f32<const D: usize>(x: Tensor<D>) -> (Tensor<D>, FloatDType) {
    let dtype: FloatDType = x.dtype().into();
    if dtype == FloatDType::F32 {
        (x, dtype)
    } else {
        (x.cast(FloatDType::F32), dtype)
    }
}

/// The activations the reference configs name (`act_fn` / `hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Silu,
    /// Exact (erf) GELU.
    Gelu,
    /// `x * sigmoid(1.702 x)` (CLIP).
    QuickGelu,
    /// tanh-approximated GELU.
    GeluTanh,
    Relu,
}

impl Activation {
    /// Parse a reference config's activation name.
    pub fn parse(name: &str) -> Result<Self> {
        Ok(match name {
            "silu" | "swish" => Activation::Silu,
            "gelu" => Activation::Gelu,
            "quick_gelu" => Activation::QuickGelu,
            "gelu_new" | "gelu_pytorch_tanh" => Activation::GeluTanh,
            "relu" => Activation::Relu,
            other => {
                return Err(crate::Error::invalid(format!(
                    "unsupported activation `{other}` (supported: silu, gelu, quick_gelu, gelu_new, relu)"
                )));
            }
        })
    }

    pub fn forward<const D: usize>(self, x: Tensor<D>) -> Tensor<D> {
        match self {
            Activation::Silu => crate::kernels::cpu_ops::silu(x),
            Activation::Gelu => crate::kernels::cpu_ops::gelu(x),
            Activation::QuickGelu => x.clone() * activation::sigmoid(x * 1.702),
            Activation::GeluTanh => activation::gelu_approximate(x),
            Activation::Relu => activation::relu(x),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{DType, Device, TensorData};

    /// GroupNorm and LayerNorm in f16 compute match f32 on groups large enough that their sum of
    /// squares overflows f16 (SD1.5's 10 channels × 64×64 pixels; here 4,096 values of variance
    /// ~16 per group: Σx² ≈ 65,536 > f16's 65,504).
    #[test]
    fn norms_in_f16_do_not_overflow() {
        let dev = Device::flex();
        let (c, d) = (32, 64 * 64);
        let values: Vec<f32> = crate::rng::Pcg32::new(3)
            .normals(c * d)
            .into_iter()
            .map(|v| 4.0 * v + 1.0)
            .collect();
        let vector = |v: f32, n: usize, dtype| {
            Tensor::<1>::from_data(TensorData::new(vec![v; n], [n]), (&dev, dtype))
        };
        let host = |t: TensorData| t.convert::<f32>().try_to_vec::<f32>().unwrap();
        // f16 against f32: finite, and within 1e-2 (f16 keeps ~3 significant digits).
        let check = |what: &str, run: &dyn Fn(DType) -> Vec<f32>| {
            let (a, b) = (run(DType::F16), run(DType::F32));
            assert!(
                a.iter().all(|v| v.is_finite()),
                "f16 {what} gave non-finite values"
            );
            let err = a
                .iter()
                .zip(&b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f32::max);
            assert!(err < 1e-2, "f16 {what} differs from f32 by {err}");
        };
        let group_norm = |dtype| GroupNorm {
            weight: vector(1.0, c, dtype),
            bias: vector(0.0, c, dtype),
            groups: 1,
            eps: 1e-5,
        };
        let image = |dtype| {
            let x = TensorData::new(values.clone(), [1, c, 64, 64]);
            Tensor::<4>::from_data(x, (&dev, dtype))
        };
        check("GroupNorm", &|dtype| {
            host(group_norm(dtype).forward(image(dtype)).into_data())
        });
        // The VAE decoder's GroupNorm over bands (4 bands of 16 rows here).
        check("banded GroupNorm", &|dtype| {
            let bands = crate::models::banded::Bands::split(image(dtype), c * 16 * 64 * 4);
            assert_eq!(bands.len(), 4);
            host(bands.group_norm(&group_norm(dtype)).concat().into_data())
        });
        check("LayerNorm", &|dtype| {
            let ln = LayerNorm {
                weight: vector(1.0, d, dtype),
                bias: vector(0.0, d, dtype),
                eps: 1e-5,
            };
            let x = TensorData::new(values.clone(), [c, d]);
            host(
                ln.forward(Tensor::<2>::from_data(x, (&dev, dtype)))
                    .into_data(),
            )
        });
    }

    /// The host GroupNorm (+ SiLU) kernel behind [`GroupNorm::forward_act`] against the plain ops
    /// (burn's var/mean, affine, SiLU) on inputs with a large mean, channels per group 1 and 10,
    /// and odd spatial sizes.
    #[test]
    fn host_group_norm_matches_plain() {
        let dev = Device::flex();
        let normals = |seed: u64, shape: &[usize], scale: f32| {
            let n = shape.iter().product();
            let v: Vec<f32> = crate::rng::Pcg32::new(seed)
                .normals(n)
                .into_iter()
                .map(|x| x * scale)
                .collect();
            TensorData::new(v, shape.to_vec())
        };
        let values = |t: Tensor<4>| t.into_data().try_to_vec::<f32>().unwrap();
        for (b, c, h, w, groups) in [(2, 320, 16, 16, 32), (1, 6, 7, 5, 6), (2, 64, 9, 11, 32)] {
            let x = Tensor::<4>::from_data(normals(3, &[b, c, h, w], 2.0), &dev) + 5.0;
            let weight = Tensor::<1>::from_data(normals(4, &[c], 1.0), &dev);
            let bias = Tensor::<1>::from_data(normals(5, &[c], 1.0), &dev);
            let gn = GroupNorm {
                weight: weight.clone(),
                bias: bias.clone(),
                groups,
                eps: 1e-5,
            };
            for act in [false, true] {
                let plain = gn.forward_plain(x.clone());
                let want = values(if act { activation::silu(plain) } else { plain });
                let got = values(crate::kernels::cpu_ops::group_norm(
                    x.clone(),
                    &weight,
                    &bias,
                    groups,
                    1e-5,
                    act,
                    |_| unreachable!("the host kernel applies"),
                ));
                let max = want.iter().fold(1f32, |m, x| m.max(x.abs()));
                let err = got
                    .iter()
                    .zip(&want)
                    .fold(0f32, |m, (x, y)| m.max((x - y).abs()))
                    / max;
                assert!(err < 1e-5, "{b}x{c}x{h}x{w}/{groups} silu={act}: {err}");
            }
        }
    }
}
