//! DDIM, PNDM, Euler and LCM against diffusers: timesteps identical, `alphas_cumprod` and every step's
//! output within 1e-6, for 1, 20 and 50 steps (fixtures from tools/reference/make_fixtures.py).

use crate::common::{fixture, fixtures, max_abs_diff, test_device};
use burn::tensor::{Tensor, TensorData};
use fastcomposer::scheduler::{SchedulerConfig, SchedulerKind};

fn check(kind: SchedulerKind, name: &str, steps: usize) {
    let f = fixture(&format!("scheduler/{name}_{steps}.safetensors"));
    let json =
        std::fs::read_to_string(fixtures().join(format!("scheduler/{name}_config.json"))).unwrap();
    let config: SchedulerConfig = serde_json::from_str(&json).unwrap();
    assert_eq!(
        config,
        SchedulerConfig::default(),
        "SD1.5 defaults equal diffusers' saved config"
    );

    let (_, want_ac) = f.read_f32("alphas_cumprod").unwrap();
    assert_eq!(
        config.alphas_cumprod(),
        want_ac,
        "{name}: alphas_cumprod bit-identical"
    );

    let mut sched = config.build(kind, steps, 0).unwrap();
    let (_, want_t) = f.read_i64("timesteps").unwrap();
    let got_t: Vec<i64> = sched.timesteps().iter().map(|&t| t as i64).collect();
    assert_eq!(got_t, want_t, "{name} {steps}: timesteps");

    // Euler fixtures also hold the initial sigma and the scaled model inputs.
    if let Ok((_, sigma0)) = f.read_f32("init_noise_sigma") {
        let got = sched.init_noise_sigma() as f32;
        assert!(
            (got - sigma0[0]).abs() <= 1e-6 * sigma0[0],
            "{name} {steps}: init_noise_sigma {got} vs {}",
            sigma0[0]
        );
    }
    let scaled = f.read_f32("scaled").ok().map(|(_, v)| v);

    let device = test_device();
    let (shape, sample) = f.read_f32("sample").unwrap();
    let (eshape, eps) = f.read_f32("eps").unwrap();
    let (_, out) = f.read_f32("out").unwrap();
    let n: usize = shape.iter().product();
    assert_eq!(eshape[0], want_t.len());
    let tensor =
        |v: &[f32]| Tensor::<4>::from_data(TensorData::new(v.to_vec(), shape.clone()), &device);
    // One step at a time: each step starts from the reference's previous sample.
    let timesteps = sched.timesteps().to_vec();
    for (i, &t) in timesteps.iter().enumerate() {
        let x_in = if i == 0 {
            &sample[..]
        } else {
            &out[(i - 1) * n..i * n]
        };
        if let Some(scaled) = &scaled {
            let s = sched.scale_model_input(tensor(x_in), t);
            let got = s.to_data().try_into_vec::<f32>().unwrap();
            let (err, _) = max_abs_diff(&got, &scaled[i * n..(i + 1) * n]);
            assert!(
                err <= 1e-6,
                "{name} {steps}: scaled input {i} error {err:e}"
            );
        }
        let x = sched.step(tensor(&eps[i * n..(i + 1) * n]), t, tensor(x_in));
        let got = x.to_data().try_into_vec::<f32>().unwrap();
        let want = &out[i * n..(i + 1) * n];
        // Euler's samples start at sigma_max ~ 14.6: its bar is relative to their size.
        let size = if scaled.is_some() {
            want.iter().fold(1f32, |m, v| m.max(v.abs()))
        } else {
            1.0
        };
        let (err, _) = max_abs_diff(&got, want);
        assert!(
            err <= 1e-6 * size,
            "{name} {steps} steps: step {i} (t={t}) error {err:e} (size {size})"
        );
    }
    // The whole loop on our own samples: f32 rounding differences may accumulate a little.
    let mut sched = config.build(kind, steps, 0).unwrap();
    let mut x = tensor(&sample);
    for (i, &t) in timesteps.iter().enumerate() {
        x = sched.step(tensor(&eps[i * n..(i + 1) * n]), t, x);
    }
    let got = x.to_data().try_into_vec::<f32>().unwrap();
    let want = &out[(timesteps.len() - 1) * n..];
    let size = if scaled.is_some() {
        want.iter().fold(1f32, |m, v| m.max(v.abs()))
    } else {
        1.0
    };
    let (err, _) = max_abs_diff(&got, want);
    assert!(
        err <= 1e-5 * size,
        "{name} {steps} steps: final sample after the loop, error {err:e}"
    );
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

/// Euler: the same checks, plus the initial noise's sigma and the scaled model inputs.
#[test]
fn euler_matches_diffusers() {
    for steps in [1, 20, 50] {
        check(SchedulerKind::Euler, "euler", steps);
    }
}

#[test]
fn unsupported_scheduler_settings_are_refused_by_name() {
    for (json, name) in [
        (r#"{"use_karras_sigmas": true}"#, "use_karras_sigmas"),
        (r#"{"thresholding": true}"#, "thresholding"),
        (r#"{"timestep_spacing": "trailing"}"#, "timestep_spacing"),
        (r#"{"final_sigmas_type": "sigma_min"}"#, "final_sigmas_type"),
    ] {
        let c: SchedulerConfig = serde_json::from_str(json).unwrap();
        let e = c
            .build(SchedulerKind::Euler, 10, 0)
            .err()
            .expect(json)
            .to_string();
        assert!(e.contains(name), "{e}");
    }
}

#[test]
fn bad_step_counts_are_errors() {
    let c = SchedulerConfig::default();
    assert!(c.build(SchedulerKind::Ddim, 0, 0).is_err());
    assert!(c.build(SchedulerKind::Pndm, 1001, 0).is_err());
    assert!(c.build(SchedulerKind::Ddim, 1000, 0).is_ok());
}

/// LCM against diffusers' `LCMScheduler` built from SD1.5's config: timesteps, the denoised
/// sample and the re-noised sample of every step within 1e-6 (the noise diffusers drew is fed
/// in), for 1, 2, 4 and 8 steps; then the whole loop on our own samples.
#[test]
fn lcm_matches_diffusers() {
    use fastcomposer::scheduler::LcmScheduler;
    let json = std::fs::read_to_string(fixtures().join("scheduler/lcm_config.json")).unwrap();
    let config: SchedulerConfig = serde_json::from_str(&json).unwrap();
    assert_eq!(config.original_inference_steps, 50);
    assert_eq!(config.timestep_scaling, 10.0);
    let device = test_device();
    for steps in [1, 2, 4, 8] {
        let f = fixture(&format!("scheduler/lcm_{steps}.safetensors"));
        let (_, want_ac) = f.read_f32("alphas_cumprod").unwrap();
        assert_eq!(config.alphas_cumprod(), want_ac);
        let (_, want_t) = f.read_i64("timesteps").unwrap();
        let built = config.build(SchedulerKind::Lcm, steps, 0).unwrap();
        let got_t: Vec<i64> = built.timesteps().iter().map(|&t| t as i64).collect();
        assert_eq!(got_t, want_t, "lcm {steps}: timesteps");

        let (shape, sample) = f.read_f32("sample").unwrap();
        let (_, eps) = f.read_f32("eps").unwrap();
        let (_, noise) = f.read_f32("noise").unwrap();
        let (_, out) = f.read_f32("out").unwrap();
        let n: usize = shape.iter().product();
        let tensor =
            |v: &[f32]| Tensor::<4>::from_data(TensorData::new(v.to_vec(), shape.clone()), &device);
        let run = |from_reference: bool| {
            let mut s = LcmScheduler::new(&config, steps, 0).unwrap();
            let mut x = tensor(&sample);
            for (i, &t) in want_t.iter().enumerate() {
                if from_reference && i > 0 {
                    x = tensor(&out[(i - 1) * n..i * n]);
                }
                let z = (i + 1 < steps).then(|| tensor(&noise[i * n..(i + 1) * n]));
                x = s.step_with_noise(tensor(&eps[i * n..(i + 1) * n]), t as usize, x, z);
                let got = x.to_data().try_into_vec::<f32>().unwrap();
                let (err, _) = max_abs_diff(&got, &out[i * n..(i + 1) * n]);
                let bar = if from_reference { 1e-6 } else { 1e-5 };
                assert!(err <= bar, "lcm {steps}: step {i} (t={t}) error {err:e}");
            }
        };
        run(true);
        run(false);
    }
}

/// LCM draws its re-noising from the seed: same seed, same samples; another seed, others.
#[test]
fn lcm_noise_follows_the_seed() {
    let config = SchedulerConfig::default();
    let device = test_device();
    let run = |seed| {
        let mut s = config.build(SchedulerKind::Lcm, 4, seed).unwrap();
        let mut x = Tensor::<4>::zeros([1, 4, 4, 4], &device);
        for t in s.timesteps().to_vec() {
            x = s.step(Tensor::zeros([1, 4, 4, 4], &device), t, x);
        }
        // Zero samples and zero noise predictions: whatever is left came from the fresh noise.
        x.to_data().try_into_vec::<f32>().unwrap()
    };
    let (a, b, c) = (run(7), run(7), run(8));
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert!(a.iter().any(|v| *v != 0.0));
}

#[test]
fn lcm_step_counts_beyond_its_schedule_are_errors() {
    let c = SchedulerConfig::default();
    let e = c
        .build(SchedulerKind::Lcm, 51, 0)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("original_inference_steps"), "{e}");
    assert!(c.build(SchedulerKind::Lcm, 0, 0).is_err());
    assert!(c.build(SchedulerKind::Lcm, 50, 0).is_ok());
}
