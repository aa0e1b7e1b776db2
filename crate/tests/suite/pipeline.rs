//! The whole FastComposer inference against the Python reference (tools/reference/pipeline_ref.py:
//! diffusers + transformers components, METHOD.md's fuser, markers and delayed conditioning)
//! on a tiny random-weight model, with real photos as subjects.

use crate::common;

use std::sync::OnceLock;

use crate::common::{fixture, fixtures, max_abs_diff, photo, run_case, test_device};
use fastcomposer::Error;
use fastcomposer::io::model_dir::ModelDir;
use fastcomposer::kernels::attention::AttentionKernel;
use fastcomposer::pipeline::preprocess::{decode_image, subject_pixel_values};
use fastcomposer::pipeline::{FastComposer, GenerateOptions, StepReport, SubjectEmbedding};
use fastcomposer::scheduler::SchedulerKind;
use futures_lite::future::block_on;

pub(crate) fn model() -> &'static FastComposer {
    static M: OnceLock<FastComposer> = OnceLock::new();
    M.get_or_init(|| {
        let dir = ModelDir::open(&fixtures().join("pipeline/model")).unwrap();
        FastComposer::load(
            &dir.config,
            &dir,
            &test_device(),
            AttentionKernel::default(),
        )
        .unwrap()
    })
}

pub(crate) fn subject(name: &str) -> SubjectEmbedding {
    model().encode_subject(&photo(name), None).unwrap()
}

#[test]
fn subject_preprocessing_matches_the_reference() {
    let want = fixture("pipeline/preprocess.safetensors");
    for name in ["astronaut", "chelsea", "coffee"] {
        let got = subject_pixel_values(&photo(name), 224).unwrap();
        let (_, reference) = want.read_f32(name).unwrap();
        let (err, _) = max_abs_diff(&got, &reference);
        // Identical 8-bit values after the resize: the difference is only f32 normalisation.
        assert!(err <= 1e-6, "{name}: {err}");
        // The published inference's torchvision chain gives the same values on these photos.
        let (_, tv) = want.read_f32(&format!("{name}.torchvision")).unwrap();
        assert!(max_abs_diff(&got, &tv).0 <= 1e-6, "{name} vs torchvision");
    }
}

#[test]
fn end_to_end_matches_the_reference() {
    end_to_end(model(), "");
}

/// The same cases with every 3×3 convolution computed by Winograd's form at each tile size
/// (the CPU device: the policy is its own, so on other devices there is nothing more to run).
#[test]
fn end_to_end_matches_the_reference_with_each_winograd_tile() {
    use fastcomposer::kernels::{ConvKernels, KernelOptions, WinogradPolicy};
    let device = test_device();
    for cpu in common::winograd_policies(&device) {
        if cpu == WinogradPolicy::Auto {
            continue;
        }
        let dir = ModelDir::open(&fixtures().join("pipeline/model")).unwrap();
        let kernels = KernelOptions {
            attention: AttentionKernel::default(),
            conv: ConvKernels {
                cpu,
                ..ConvKernels::default()
            },
        };
        let m = FastComposer::load(&dir.config, &dir, &device, kernels).unwrap();
        end_to_end(&m, &format!(" ({cpu:?})"));
    }
}

/// alpha 0 / 0.5 / 1, one and two subjects, DDIM and PNDM, guidance 1 and 5.
fn end_to_end(model: &FastComposer, label: &str) {
    for k in 0..6 {
        let (d, f) = run_case(model, k);
        let got = d.latents().to_data().try_into_vec::<f32>().unwrap();
        let (_, want) = f.read_f32("final_latents").unwrap();
        let (err, mag) = max_abs_diff(&got, &want);
        println!("case{k}{label}: final latents max abs error {err:.2e} (max |ref| {mag:.1})");
        assert!(err <= 1e-3, "case{k}{label}: latents error {err}");
        let img = d.decode().unwrap().to_data().try_into_vec::<f32>().unwrap();
        let (_, want) = f.read_f32("image").unwrap();
        let (err, _) = max_abs_diff(&img, &want);
        println!("case{k}{label}: decoded image max abs error {err:.2e}");
        assert!(err <= 1e-3, "case{k}{label}: image error {err}");
    }
}

fn opts(prompt: &str) -> GenerateOptions {
    GenerateOptions {
        prompt: prompt.into(),
        steps: 3,
        width: Some(64),
        height: Some(64),
        ..Default::default()
    }
}

#[test]
fn same_seed_same_image_other_seed_other_image() {
    let s = [subject("chelsea")];
    let o = GenerateOptions {
        seed: 7,
        ..opts("a cat <|image|> on the beach")
    };
    let run = |o: &GenerateOptions| {
        block_on(model().generate_async(o, &s, 0, &mut |_: &StepReport| true))
    };
    let a = run(&o).unwrap().image;
    let b = run(&o).unwrap().image;
    assert_eq!(a, b, "same seed must give a bit-identical image");
    let c = run(&GenerateOptions { seed: 8, ..o }).unwrap().image;
    assert_ne!(a, c);
    assert_eq!((a.width, a.height, a.pixels.len()), (64, 64, 64 * 64 * 3));
}

#[test]
fn alpha_switch_by_step_index() {
    let o = GenerateOptions {
        steps: 50,
        alpha: 0.7,
        ..opts("a cat <|image|>")
    };
    let d = model().start(&o, &[subject("chelsea")], None).unwrap();
    assert_eq!(d.total(), 50);
    for i in 0..=15 {
        assert!(!d.uses_subjects(i), "step {i} must be text-only");
    }
    for i in 16..50 {
        assert!(d.uses_subjects(i), "step {i} must use the subjects");
    }
    let all_text = model()
        .start(
            &GenerateOptions {
                alpha: 0.0,
                ..o.clone()
            },
            &[subject("chelsea")],
            None,
        )
        .unwrap();
    assert!((0..50).all(|i| !all_text.uses_subjects(i)));
    let all_subj = model()
        .start(
            &GenerateOptions {
                alpha: 1.0,
                ..o.clone()
            },
            &[subject("chelsea")],
            None,
        )
        .unwrap();
    assert!(!all_subj.uses_subjects(0) && (1..50).all(|i| all_subj.uses_subjects(i)));
    // PNDM runs one more model evaluation than steps.
    let p = model()
        .start(
            &GenerateOptions {
                scheduler: SchedulerKind::Pndm,
                ..o
            },
            &[subject("chelsea")],
            None,
        )
        .unwrap();
    assert_eq!(p.total(), 51);
}

#[test]
fn cancel_between_steps() {
    let mut n = 0;
    let r = block_on(model().generate_async(
        &opts("a cat <|image|>"),
        &[subject("chelsea")],
        0,
        &mut |_: &StepReport| {
            n += 1;
            n < 2
        },
    ));
    assert!(matches!(r, Err(Error::Cancelled)));
    assert_eq!(n, 2);
}

/// The loop's hooks see every step once, in order, with its time; a preview every
/// `preview_every` steps but the last (the decoded image follows it); the timings hold one entry
/// per step; and the image is the one a loop without previews makes.
#[test]
fn hooks_see_each_step_with_previews_and_timings() {
    let o = GenerateOptions {
        steps: 5,
        seed: 3,
        ..opts("a cat <|image|> on the beach")
    };
    let s = [subject("chelsea")];
    let mut seen = Vec::new();
    let g = block_on(model().generate_async(&o, &s, 2, &mut |r: &StepReport| {
        assert!(r.ms >= 0.0 && r.ms.is_finite());
        seen.push((
            r.step,
            r.total,
            r.preview.as_ref().map(|p| (p.width, p.height)),
        ));
        true
    }))
    .unwrap();
    assert_eq!(
        seen,
        [
            (1, 5, None),
            (2, 5, Some((8, 8))),
            (3, 5, None),
            (4, 5, Some((8, 8))),
            (5, 5, None)
        ]
    );
    assert_eq!(g.timings.step_ms.len(), 5);
    assert!(g.timings.setup_ms > 0.0 && g.timings.decode_ms > 0.0);
    let plain = block_on(model().generate_async(&o, &s, 0, &mut |_: &StepReport| true)).unwrap();
    assert_eq!(g.image, plain.image);
}

fn invalid(r: Result<impl std::fmt::Debug, Error>, needle: &str) {
    match r {
        Err(Error::InvalidInput(m)) => assert!(m.contains(needle), "expected {needle:?} in {m:?}"),
        other => panic!("expected InvalidInput containing {needle:?}, got {other:?}"),
    }
}

fn start(o: &GenerateOptions, n: usize) -> Result<(), Error> {
    let s = subject("chelsea");
    model().start(o, &vec![s; n], None).map(|_| ())
}

#[test]
fn marker_count_must_match_subjects() {
    invalid(
        start(&opts("a cat <|image|> and a dog <|image|>"), 1),
        "2 subject marker(s)",
    );
    invalid(start(&opts("a cat on the beach"), 1), "0 subject marker(s)");
}

#[test]
fn more_than_four_subjects() {
    let p = (0..5)
        .map(|_| "a cat <|image|>")
        .collect::<Vec<_>>()
        .join(" and ");
    invalid(start(&opts(&p), 5), "at most 4");
}

#[test]
fn bad_images() {
    invalid(decode_image(b"", "a.png"), "empty");
    invalid(
        decode_image(b"this is not an image at all", "a.txt"),
        "not an image",
    );
    let mut png = Vec::new();
    image::RgbImage::new(1, 20000)
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    invalid(decode_image(&png, "thin.png"), "1x20000");
    let mut truncated = std::fs::read(fixtures().join("pipeline/photos/chelsea.png")).unwrap();
    truncated.truncate(truncated.len() / 2);
    invalid(decode_image(&truncated, "cut.png"), "cut.png");
    invalid(
        subject_pixel_values(&image::RgbImage::new(0, 0), 224),
        "empty",
    );
}

#[test]
fn long_prompt_is_truncated_with_a_warning() {
    let long = format!("a cat <|image|> {}", "very ".repeat(90));
    let d = model()
        .start(&opts(&long), &[subject("chelsea")], None)
        .unwrap();
    assert!(d.warnings.iter().any(|w| w.contains("77 tokens")));
    let cut = format!("{} a cat <|image|>", "very ".repeat(90));
    invalid(start(&opts(&cut), 1), "token limit");
}

#[test]
fn steps_out_of_range() {
    invalid(
        start(
            &GenerateOptions {
                steps: 0,
                ..opts("a cat <|image|>")
            },
            1,
        ),
        "steps",
    );
    invalid(
        start(
            &GenerateOptions {
                steps: 1001,
                ..opts("a cat <|image|>")
            },
            1,
        ),
        "steps",
    );
}

#[test]
fn alpha_out_of_range() {
    for a in [-0.1, 1.5, f64::NAN] {
        invalid(
            start(
                &GenerateOptions {
                    alpha: a,
                    ..opts("a cat <|image|>")
                },
                1,
            ),
            "alpha",
        );
    }
}

#[test]
fn guidance_not_finite_or_negative() {
    for g in [f64::NAN, f64::INFINITY, -1.0] {
        invalid(
            start(
                &GenerateOptions {
                    guidance: g,
                    ..opts("a cat <|image|>")
                },
                1,
            ),
            "guidance",
        );
    }
}

#[test]
fn size_not_a_multiple_of_the_latent_factor() {
    invalid(
        start(
            &GenerateOptions {
                width: Some(72),
                ..opts("a cat <|image|>")
            },
            1,
        ),
        "width",
    );
    invalid(
        start(
            &GenerateOptions {
                height: Some(0),
                ..opts("a cat <|image|>")
            },
            1,
        ),
        "height",
    );
}
