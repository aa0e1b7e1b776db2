//! Quantized weights as burn holds them: Q8_0 and Q4_0 blocks packed for the device, then
//! dequantized, and multiplied the way linear layers use them, on the test
//! device — the same code paths on the CPU and on wgpu — and the CPU device's own host-side
//! dequantization (`HostQuantized`) against the same expected values.

use crate::common;

use burn::tensor::Tensor;
use fastcomposer::quant::GgmlType;
use fastcomposer::quant::HostQuantized;
use fastcomposer::quant::burn_quantized;

#[test]
fn packed_blocks_dequantize_and_multiply() {
    let device = common::test_device();
    for ty in [GgmlType::Q8_0, GgmlType::Q4_0] {
        // 1100×64: 2,200 blocks, more than the host path's parallel runs of 1,024 blocks.
        for (out, inp) in [(32usize, 32usize), (64, 96), (1100, 64)] {
            // Every representable value: -8..=7 for 4 bits, -127..=127 for 8 bits.
            let (lo, n) = if ty == GgmlType::Q4_0 {
                (-8i32, 16usize)
            } else {
                (-127, 255)
            };
            let q: Vec<i8> = (0..out * inp)
                .map(|i| (lo + ((i * 7919) % n) as i32) as i8)
                .collect();
            // Scales are stored as f16.
            let scales: Vec<f32> = (0..out * inp / 32)
                .map(|i| half::f16::from_f32(0.01 * (1 + i % 5) as f32).to_f32())
                .collect();
            let want: Vec<f32> = q
                .iter()
                .enumerate()
                .map(|(i, &v)| v as f32 * scales[i / 32])
                .collect();
            let w = Tensor::<2>::from_data(burn_quantized(&q, &scales, [out, inp], ty), &device);
            let deq: Vec<f32> = w
                .clone()
                .dequantize()
                .into_data()
                .convert::<f32>()
                .try_into_vec()
                .unwrap();
            assert_eq!(deq, want, "{ty:?} {out}x{inp}: dequantized values");
            // The CPU device's host path (block-wise dequantization) gives the same values.
            let data = burn_quantized(&q, &scales, [out, inp], ty);
            let host = HostQuantized::from_data(&data, &device).expect("the bundle's scheme");
            assert_eq!(host.dims(), [out, inp]);
            assert_eq!(
                host.dequantize_values(),
                want,
                "{ty:?} {out}x{inp}: host path"
            );
            // Single rows, in any order and repeated (the token-embedding lookup).
            let rows = [3usize, 0, out - 1, 3];
            let want_rows: Vec<f32> = rows
                .iter()
                .flat_map(|&r| want[r * inp..(r + 1) * inp].iter().copied())
                .collect();
            assert_eq!(
                host.dequantize_rows(&rows),
                want_rows,
                "{ty:?} {out}x{inp}: rows"
            );
            let x = Tensor::<2>::from_data(
                burn::tensor::TensorData::new(
                    (0..3 * inp)
                        .map(|i| (i % 13) as f32 / 13.0)
                        .collect::<Vec<f32>>(),
                    [3, inp],
                ),
                &device,
            );
            let dense = Tensor::<2>::from_data(
                burn::tensor::TensorData::new(want.clone(), [out, inp]),
                &device,
            );
            // As `nn::Linear` uses a quantized weight: y = (W · xᵀ)ᵀ.
            let got: Vec<f32> = w
                .matmul(x.clone().transpose())
                .transpose()
                .into_data()
                .convert::<f32>()
                .try_into_vec()
                .unwrap();
            let exp: Vec<f32> = x
                .matmul(dense.transpose())
                .into_data()
                .try_into_vec()
                .unwrap();
            let err = got
                .iter()
                .zip(&exp)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(err < 1e-4, "{ty:?} {out}x{inp}: matmul error {err}");
        }
    }
}

/// One quantized tensor, as a bundle would hand it to the loader.
struct OneTensor(burn::tensor::TensorData, Vec<usize>);

impl fastcomposer::config::TensorSource for OneTensor {
    fn names(&self) -> Vec<String> {
        vec!["w".into()]
    }
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        (name == "w").then(|| self.1.clone())
    }
    fn read(&self, _name: &str) -> fastcomposer::Result<burn::tensor::TensorData> {
        Ok(self.0.clone())
    }
}

/// On the CPU device the loader keeps quantized weights on the host (dequantized per use); on
/// wgpu they go to the device quantized. Either way the layer computes the same product.
#[test]
fn the_cpu_device_keeps_quantized_weights_on_the_host() {
    use fastcomposer::models::loader::{LinearWeight, Loader};
    use fastcomposer::models::nn::Linear;
    let device = common::test_device();
    let (out, inp) = (64usize, 96usize);
    let q: Vec<i8> = (0..out * inp).map(|i| ((i * 31) % 255) as i8).collect();
    let scales: Vec<f32> = (0..out * inp / 32)
        .map(|i| 0.01 * (1 + i % 3) as f32)
        .collect();
    let src = OneTensor(
        burn_quantized(&q, &scales, [out, inp], GgmlType::Q8_0),
        vec![out, inp],
    );
    let vb = Loader::new(&src, &device);
    let w = vb.linear_weight("w", inp, out).unwrap();
    let on_cpu = device == burn::tensor::Device::flex();
    assert_eq!(matches!(w, LinearWeight::Host(_)), on_cpu, "{w:?}");
    assert_eq!(matches!(w, LinearWeight::Quantized(_)), !on_cpu, "{w:?}");
    let layer = Linear {
        weight: w,
        bias: None,
    };
    let x: Vec<f32> = (0..2 * inp).map(|i| (i % 7) as f32 - 3.0).collect();
    let y: Vec<f32> = layer
        .forward(Tensor::<2>::from_data(
            burn::tensor::TensorData::new(x.clone(), [2, inp]),
            &device,
        ))
        .into_data()
        .try_into_vec()
        .unwrap();
    for r in 0..2 {
        for o in 0..out {
            let want: f32 = (0..inp)
                .map(|i| x[r * inp + i] * q[o * inp + i] as f32 * scales[(o * inp + i) / 32])
                .sum();
            let got = y[r * out + o];
            assert!(
                (got - want).abs() <= 1e-3 * want.abs().max(1.0),
                "{r},{o}: {got} vs {want}"
            );
        }
    }
}

/// A quantized `nn::Linear` on one row (the UNet's time embedding at batch 1) followed by
/// element-wise work: on wgpu, burn's fusion once computed this wrong
/// (the one-column matmul output's transposed view; the UNet at batch 1 was off by ~10 % of its
/// output, images by up to 87 levels), while two rows were right. Same product either way.
#[test]
fn one_row_quantized_linear_then_activation_matches_dequantized() {
    use burn::tensor::activation::silu;
    use fastcomposer::models::loader::LinearWeight;
    use fastcomposer::models::nn::Linear;
    use fastcomposer::quant::quantize_data;
    let device = common::test_device();
    let mut rng = fastcomposer::rng::Pcg32::new(5);
    let mut layer = |out: usize, inp: usize| {
        let w = Tensor::<2>::from_data(
            quantize_data(&rng.normals(out * inp), [out, inp], GgmlType::Q8_0),
            &device,
        );
        let b = Tensor::<1>::from_data(
            burn::tensor::TensorData::new(rng.normals(out), [out]),
            &device,
        );
        let dense = LinearWeight::Float(w.clone().dequantize().transpose());
        (
            Linear {
                weight: LinearWeight::Quantized(w),
                bias: Some(b.clone()),
            },
            Linear {
                weight: dense,
                bias: Some(b),
            },
        )
    };
    let (q1, f1) = layer(128, 32);
    let (q2, f2) = layer(64, 128);
    let xs = rng.normals(2 * 32);
    for rows in [1usize, 2] {
        let x = Tensor::<2>::from_data(
            burn::tensor::TensorData::new(xs[..rows * 32].to_vec(), [rows, 32]),
            &device,
        );
        let run = |a: &Linear, b: &Linear| -> Vec<f32> {
            silu(b.forward(silu(a.forward(x.clone()))))
                .into_data()
                .convert::<f32>()
                .try_into_vec()
                .unwrap()
        };
        let (err, mag) = common::max_abs_diff(&run(&q1, &q2), &run(&f1, &f2));
        assert!(
            err <= 1e-5 * mag.max(1.0),
            "{rows} row(s): max abs error {err} (max |value| {mag})"
        );
    }
}

/// A 3×3 convolution with a quantized kernel as `Conv2d` runs it on the test device (on a GPU:
/// burn's quantized matmul over the stacked input windows, the kernel kept in its blocks; on the
/// CPU: host dequantization, then Winograd) against burn's `conv2d` with the dequantized kernel.
#[test]
fn quantized_convolution_matches_the_dequantized_kernel() {
    use burn::tensor::TensorData;
    use fastcomposer::models::loader::Loader;
    use fastcomposer::models::nn::Conv2d;
    use fastcomposer::quant::QuantMode;
    let device = common::test_device();
    for mode in [QuantMode::Int8, QuantMode::Int4] {
        let source = fastcomposer::io::RandomSource::stored_as(Some(mode));
        let vb = Loader::new(&source, &device);
        // c_in·9 = 576, a multiple of the 32-value blocks (as every SD1.5 convolution's is).
        let conv = Conv2d::load(&vb.pp("conv"), 64, 40, 3, 1, (1, 1), true).unwrap();
        let (n, hw) = (2usize, 20usize);
        let mut rng = fastcomposer::rng::Pcg32::new(8);
        let x = Tensor::<4>::from_data(
            TensorData::new(rng.normals(n * 64 * hw * hw), [n, 64, hw, hw]),
            &device,
        );
        let values =
            |t: Tensor<4>| -> Vec<f32> { t.into_data().convert::<f32>().try_into_vec().unwrap() };
        let want = values(burn::tensor::module::conv2d(
            x.clone(),
            conv.weight.get(),
            conv.bias.clone(),
            conv.options.clone(),
        ));
        let got = values(conv.forward(x));
        let (diff, largest) = common::max_abs_diff(&got, &want);
        assert!(
            diff <= 1e-4 * largest.max(1.0),
            "{mode:?}: max abs diff {diff} (largest {largest})"
        );
    }
}
