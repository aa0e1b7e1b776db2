//! The conditioning controls (attribute sliders, DECOR suppression) against their Python
//! reference (tools/reference/controls_ref.py: the formulas on transformers' text encoder) on
//! the pipeline fixtures' tiny model, and their behaviour: strength 0 is no control, a slider is
//! linear in its strength, bad values are typed errors.

use crate::common::{fixture, fixtures, max_abs_diff};
use crate::pipeline::{model, subject};
use burn::tensor::Tensor;
use fastcomposer::Error;
use fastcomposer::kernels::device::read;
use fastcomposer::pipeline::{Attribute, GenerateOptions, SubjectEmbedding, Suppression};

fn values(t: Tensor<3>) -> Vec<f32> {
    read(t).unwrap().try_into_vec::<f32>().unwrap()
}

fn conditionings(o: &GenerateOptions, subjects: &[SubjectEmbedding]) -> (Vec<f32>, Vec<f32>) {
    let d = model().start(o, subjects, None).unwrap();
    let (t, a) = d.conditionings();
    (values(t), values(a))
}

fn options(prompt: &str) -> GenerateOptions {
    GenerateOptions {
        prompt: prompt.into(),
        steps: 3,
        guidance: 1.0,
        width: Some(64),
        height: Some(64),
        ..Default::default()
    }
}

#[test]
fn controls_match_the_reference() {
    for k in 0..3 {
        let c: serde_json::Value = serde_json::from_slice(
            &std::fs::read(fixtures().join(format!("controls/case{k}.json"))).unwrap(),
        )
        .unwrap();
        let subjects: Vec<_> = c["subjects"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| subject(s.as_str().unwrap()))
            .collect();
        let o = GenerateOptions {
            attributes: serde_json::from_value(c["attributes"].clone()).unwrap(),
            suppress: serde_json::from_value(c["suppress"].clone()).unwrap(),
            ..options(c["prompt"].as_str().unwrap())
        };
        let (text_only, augmented) = conditionings(&o, &subjects);
        let plain = conditionings(&options(c["prompt"].as_str().unwrap()), &subjects);
        let f = fixture(&format!("controls/case{k}.safetensors"));
        for (name, got, without) in [
            ("text_only", &text_only, &plain.0),
            ("augmented", &augmented, &plain.1),
        ] {
            let (_, want) = f.read_f32(name).unwrap();
            let (err, mag) = max_abs_diff(got, &want);
            let (moved, _) = max_abs_diff(without, &want);
            println!(
                "case{k} {name}: max abs error {err:.2e} (max |ref| {mag:.2}; the controls move it by {moved:.2})"
            );
            assert!(err <= 1e-4, "case{k} {name}: {err}");
            assert!(moved > 0.1, "case{k} {name}: the controls changed nothing");
        }
    }
}

#[test]
fn strength_zero_is_no_control() {
    let cat = [subject("chelsea")];
    let plain = options("a cat <|image|> wearing a hat");
    let zero = GenerateOptions {
        attributes: vec!["1:red:blue:0".parse().unwrap()],
        suppress: vec!["hat:0".parse().unwrap()],
        ..plain.clone()
    };
    assert_eq!(conditionings(&plain, &cat), conditionings(&zero, &cat));
    let run = |o: &GenerateOptions| {
        let mut d = model().start(o, &cat, None).unwrap();
        crate::common::denoise(&mut d);
        d.decode_rgb().unwrap()
    };
    assert_eq!(run(&plain), run(&zero));
    let some = GenerateOptions {
        attributes: vec!["1:red:blue:1".parse().unwrap()],
        ..plain.clone()
    };
    assert_ne!(run(&plain), run(&some));
}

#[test]
fn a_slider_is_linear_in_its_strength_and_touches_only_its_noun() {
    let cat = [subject("chelsea")];
    let at = |s: f64| {
        conditionings(
            &GenerateOptions {
                attributes: vec![Attribute {
                    subject: 1,
                    from: "young".into(),
                    to: "old".into(),
                    strength: s,
                }],
                ..options("a cat <|image|> on the beach")
            },
            &cat,
        )
        .0
    };
    let (base, one, two, minus) = (at(0.0), at(1.0), at(2.0), at(-1.0));
    let d = base.len() / 77;
    let noun = 2; // BOS, "a", "cat"
    for (i, ((b, o), (t, m))) in base
        .iter()
        .zip(&one)
        .zip(two.iter().zip(&minus))
        .enumerate()
    {
        if i / d == noun {
            assert!(((t - b) - 2.0 * (o - b)).abs() <= 1e-5, "row {noun}: {i}");
            assert!(((m - b) + (o - b)).abs() <= 1e-5, "row {noun}: {i}");
        } else {
            assert_eq!((b, o, t), (b, b, b), "row {} moved", i / d);
        }
    }
    assert!(max_abs_diff(&base, &one).0 > 0.1);
}

#[test]
fn bad_controls_are_typed_errors() {
    let cat = [subject("chelsea")];
    let attr = |a: &str| GenerateOptions {
        attributes: vec![a.parse().unwrap()],
        ..options("a cat <|image|> on the beach")
    };
    let supp = |s: Suppression| GenerateOptions {
        suppress: vec![s],
        ..options("a cat <|image|> on the beach")
    };
    let cases = [
        (attr("2:red:blue:1"), "subject 2 does not exist"),
        (attr("0:red:blue:1"), "subject 0 does not exist"),
        (attr("1::blue:1"), "`from`: the text is empty"),
        (attr("1:red: :1"), "`to`: the text is empty"),
        (attr("1:red:red:1"), "the same word"),
        (attr("1:red:blue:NaN"), "finite"),
        (attr("1:red:blue:inf"), "finite"),
        (attr("1:red:a cat <|image|>:1"), "marker"),
        (
            attr(&format!("1:red:{}:1", "word ".repeat(80))),
            "tokens long",
        ),
        (
            supp(Suppression {
                text: "hat".into(),
                strength: -0.5,
            }),
            "between 0 and 1",
        ),
        (
            supp(Suppression {
                text: "hat".into(),
                strength: f64::NAN,
            }),
            "between 0 and 1",
        ),
        (
            supp(Suppression {
                text: "hat".into(),
                strength: 1.5,
            }),
            "between 0 and 1",
        ),
        (
            supp(Suppression {
                text: "hat <|endoftext|>".into(),
                strength: 1.0,
            }),
            "start or end token",
        ),
        (
            supp(Suppression {
                text: " \t ".into(),
                strength: 1.0,
            }),
            "empty",
        ),
    ];
    for (o, needle) in cases {
        match model().start(&o, &cat, None) {
            Err(Error::InvalidInput(m)) => assert!(m.contains(needle), "{needle}: {m}"),
            Err(e) => panic!("{needle}: not InvalidInput: {e}"),
            Ok(_) => panic!("{needle}: accepted"),
        }
    }
    for bad in ["1:red:blue", "x:red:blue:1", "1:red:blue:much", "-1:a:b:1"] {
        assert!(
            matches!(bad.parse::<Attribute>(), Err(Error::InvalidInput(_))),
            "{bad}"
        );
    }
    for bad in ["hat", "hat:lots"] {
        assert!(
            matches!(bad.parse::<Suppression>(), Err(Error::InvalidInput(_))),
            "{bad}"
        );
    }
    let s: Suppression = "a: b:0.5".parse().unwrap();
    assert_eq!((s.text.as_str(), s.strength), ("a: b", 0.5));
}

fn mask(name: &str) -> image::GrayImage {
    let bytes = std::fs::read(fixtures().join(format!("self_attention/{name}"))).unwrap();
    image::load_from_memory(&bytes).unwrap().into_luma8()
}

/// Self-subject attention against tools/reference/self_attention_ref.py (diffusers' UNet with
/// attention processors written from the formula): final latents of whole generations.
#[test]
fn self_attention_matches_the_reference() {
    for k in 0..2 {
        let c: serde_json::Value = serde_json::from_slice(
            &std::fs::read(fixtures().join(format!("self_attention/case{k}.json"))).unwrap(),
        )
        .unwrap();
        let subjects: Vec<_> = c["subjects"]
            .as_array()
            .unwrap()
            .iter()
            .zip(c["masks"].as_array().unwrap())
            .map(|(s, m)| {
                let m = m.as_str().map(mask);
                model()
                    .encode_subject(&crate::common::photo(s.as_str().unwrap()), m.as_ref())
                    .unwrap()
            })
            .collect();
        let o = GenerateOptions {
            self_attention: c["strength"].as_f64().unwrap(),
            seed: c["seed"].as_u64().unwrap(),
            guidance: c["guidance"].as_f64().unwrap(),
            alpha: c["alpha"].as_f64().unwrap(),
            steps: c["steps"].as_u64().unwrap() as usize,
            ..options(c["prompt"].as_str().unwrap())
        };
        let f = fixture(&format!("self_attention/case{k}.safetensors"));
        let (_, latents) = f.read_f32("latents").unwrap();
        let (_, want) = f.read_f32("final_latents").unwrap();
        let run = |o: &GenerateOptions| {
            let mut d = model().start(o, &subjects, Some(latents.clone())).unwrap();
            crate::common::denoise(&mut d);
            read(d.latents()).unwrap().try_into_vec::<f32>().unwrap()
        };
        let got = run(&o);
        let without = run(&GenerateOptions {
            self_attention: 0.0,
            ..o.clone()
        });
        let (err, mag) = max_abs_diff(&got, &want);
        let (moved, _) = max_abs_diff(&without, &want);
        println!(
            "self-attention case{k}: final latents max abs error {err:.2e} (max |ref| {mag:.2}; self-attention moves them by {moved:.2})"
        );
        assert!(err <= 1e-4, "case{k}: {err}");
        assert!(moved > 0.1, "case{k}: self-attention changed nothing");
    }
}

#[test]
fn self_attention_strength_zero_and_bad_values() {
    let cat = [subject("chelsea")];
    assert!(
        cat[0].reference.is_some(),
        "the fixture model has a VAE encoder"
    );
    let plain = options("a cat <|image|> on the beach");
    let run = |o: &GenerateOptions, s: &[SubjectEmbedding]| {
        let mut d = model().start(o, s, None)?;
        crate::common::denoise(&mut d);
        d.decode_rgb()
    };
    let zero = GenerateOptions {
        self_attention: 0.0,
        ..plain.clone()
    };
    assert_eq!(run(&plain, &cat).unwrap(), run(&zero, &cat).unwrap());
    for bad in [-0.5, f64::NAN, f64::INFINITY] {
        let o = GenerateOptions {
            self_attention: bad,
            ..plain.clone()
        };
        match run(&o, &cat) {
            Err(Error::InvalidInput(m)) => assert!(m.contains("self-attention strength"), "{m}"),
            other => panic!("{bad}: {other:?}"),
        }
    }
    // A subject encoded without its photo (as from bare pixel values) has no reference.
    let bare = [SubjectEmbedding {
        values: cat[0].values.clone(),
        reference: None,
    }];
    let on = GenerateOptions {
        self_attention: 1.0,
        ..plain.clone()
    };
    match run(&on, &bare) {
        Err(Error::InvalidInput(m)) => assert!(m.contains("subject 1 has none"), "{m}"),
        other => panic!("{other:?}"),
    }
    // Reference latents for another model are refused, not used.
    let mut wrong = cat.clone();
    if let Some(r) = wrong[0].reference.as_mut() {
        r.channels += 1;
    }
    assert!(matches!(run(&on, &wrong), Err(Error::InvalidInput(_))));
    // A size other than the native one resizes the references.
    let small = GenerateOptions {
        width: Some(32),
        height: Some(48),
        ..on.clone()
    };
    let img = run(&small, &cat).unwrap();
    assert_eq!((img.width, img.height), (32, 48));
}
