//! DDIM and PNDM against diffusers: timesteps identical, `alphas_cumprod` and every step's
//! output within 1e-6, for 1, 20 and 50 steps (fixtures from tools/reference/make_fixtures.py).

mod common;

use burn::tensor::{Tensor, TensorData};
use common::{fixture, fixtures, max_abs_diff, test_device};
use fastcomposer::scheduler::{SchedulerConfig, SchedulerKind};

fn check(kind: SchedulerKind, name: &str, steps: usize) {
    let f = fixture(&format!("scheduler/{name}_{steps}.safetensors"));
    let json = std::fs::read_to_string(fixtures().join(format!("scheduler/{name}_config.json"))).unwrap();
    let config: SchedulerConfig = serde_json::from_str(&json).unwrap();
    assert_eq!(config, SchedulerConfig::default(), "SD1.5 defaults equal diffusers' saved config");

    let (_, want_ac) = f.read_f32("alphas_cumprod").unwrap();
    let (ac_err, _) = max_abs_diff(&config.alphas_cumprod(), &want_ac);
    assert!(ac_err <= 1e-7, "{name}: alphas_cumprod error {ac_err:e}");

    let mut sched = config.build(kind, steps).unwrap();
    let (_, want_t) = f.read_i64("timesteps").unwrap();
    let got_t: Vec<i64> = sched.timesteps().iter().map(|&t| t as i64).collect();
    assert_eq!(got_t, want_t, "{name} {steps}: timesteps");

    let device = test_device();
    let (shape, sample) = f.read_f32("sample").unwrap();
    let (eshape, eps) = f.read_f32("eps").unwrap();
    let (_, out) = f.read_f32("out").unwrap();
    let n: usize = shape.iter().product();
    assert_eq!(eshape[0], want_t.len());
    let mut x = Tensor::<4>::from_data(TensorData::new(sample, shape.clone()), &device);
    let timesteps = sched.timesteps().to_vec();
    for (i, t) in timesteps.into_iter().enumerate() {
        let e = Tensor::<4>::from_data(TensorData::new(eps[i * n..(i + 1) * n].to_vec(), shape.clone()), &device);
        x = sched.step(e, t, x);
        let got = x.to_data().into_vec::<f32>().unwrap();
        let (err, _) = max_abs_diff(&got, &out[i * n..(i + 1) * n]);
        assert!(err <= 1e-6, "{name} {steps} steps: step {i} (t={t}) error {err:e}");
    }
}

#[test]
fn ddim_matches_diffusers() {
    for steps in [1, 20, 50] {
        check(SchedulerKind::Ddim, "ddim", steps);
    }
}

#[test]
fn pndm_matches_diffusers() {
    for steps in [1, 20, 50] {
        check(SchedulerKind::Pndm, "pndm", steps);
    }
}

#[test]
fn bad_step_counts_are_errors() {
    let c = SchedulerConfig::default();
    assert!(c.build(SchedulerKind::Ddim, 0).is_err());
    assert!(c.build(SchedulerKind::Pndm, 1001).is_err());
    assert!(c.build(SchedulerKind::Ddim, 1000).is_ok());
}
