//! Quantized weights as burn holds them: Q8_0 and Q4_0 blocks packed for the device, then
//! dequantized, and multiplied the way linear layers use them, on the test
//! device — the same code paths on the CPU and on wgpu — and the CPU device's own host-side
//! dequantization (`HostQuantized`) against the same expected values.

mod common;

use burn::tensor::Tensor;
use fastcomposer::bundle::burn_quantized;
use fastcomposer::bundle::gguf::GgmlType;
use fastcomposer::weights::HostQuantized;

#[test]
fn packed_blocks_dequantize_and_multiply() {
    let device = common::test_device();
    for ty in [GgmlType::Q8_0, GgmlType::Q4_0] {
        for (out, inp) in [(32usize, 32usize), (64, 96)] {
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
