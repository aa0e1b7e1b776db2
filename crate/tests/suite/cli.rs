//! The `fastcomposer` binary: `forward` and `tokenize`, and exit code 2 with a clear message
//! on bad input.

use std::path::PathBuf;
use std::process::{Command, Output};

use crate::common::{fixture, fixtures, max_abs_diff};
use fastcomposer::io::safetensors::SafetensorsSource;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fastcomposer"))
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fastcomposer-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn forward(
    component: &str,
    dir: &str,
    case: &str,
    weights: Option<PathBuf>,
    out: &PathBuf,
) -> Output {
    forward_command(component, dir, case, weights, out)
        .output()
        .unwrap()
}

/// `fastcomposer forward` on a fixture's case, for more arguments.
fn forward_command(
    component: &str,
    dir: &str,
    case: &str,
    weights: Option<PathBuf>,
    out: &PathBuf,
) -> Command {
    let d = fixtures().join(dir);
    let mut c = bin();
    c.args(["forward", "--component", component, "--config"])
        .arg(d.join("config.json"))
        .arg("--weights")
        .arg(weights.unwrap_or_else(|| d.join("weights.safetensors")))
        .arg("--inputs")
        .arg(d.join(format!("{case}.in.safetensors")))
        .arg("--out")
        .arg(out);
    c
}

#[test]
fn forward_writes_out_matching_the_reference() {
    for (component, dir, case) in [
        ("unet", "unet_tiny", "case1"),
        ("vae-decoder", "vae", "decode0"),
        ("tiny-vae-decoder", "vae_tiny", "decode0"),
        ("text-encoder", "text_encoder", "case0"),
        ("vision-encoder", "vision_encoder", "case0"),
        ("fuser", "fuser", "case0"),
    ] {
        let out = tmp(&format!("{dir}.out.safetensors"));
        let o = forward(component, dir, case, None, &out);
        assert!(
            o.status.success(),
            "{component}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let (_, got) = SafetensorsSource::from_file(&out)
            .unwrap()
            .read_f32("out")
            .unwrap();
        let (_, want) = fixture(&format!("{dir}/{case}.out.safetensors"))
            .read_f32("out")
            .unwrap();
        let (err, _) = max_abs_diff(&got, &want);
        assert!(err <= 1e-4, "{component}: {err}");
    }
}

fn assert_fails(o: Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "stderr: {stderr}");
    assert!(stderr.contains(needle), "expected {needle:?} in: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn unknown_attention_kernel_exits_with_code_2() {
    let o = bin()
        .args([
            "bench-unet",
            "--config",
            "tiny",
            "--latent",
            "8",
            "--attention",
            "paged",
        ])
        .output()
        .unwrap();
    assert_fails(o, "unknown attention kernel `paged`");
}

#[test]
fn bad_files_exit_with_code_2() {
    let out = tmp("bad.out.safetensors");
    // Weights file that does not exist.
    assert_fails(
        forward(
            "unet",
            "unet_tiny",
            "case0",
            Some(tmp("nope.safetensors")),
            &out,
        ),
        "cannot read",
    );
    // Not a safetensors file.
    let junk = tmp("junk.safetensors");
    std::fs::write(&junk, b"hello").unwrap();
    assert_fails(
        forward("unet", "unet_tiny", "case0", Some(junk), &out),
        "not a valid safetensors file",
    );
    // Weights of another component: the first missing key is named.
    let other = fixtures().join("fuser/weights.safetensors");
    assert_fails(
        forward("unet", "unet_tiny", "case0", Some(other), &out),
        "missing tensor `conv_in.weight`",
    );
    // Unknown component.
    assert_fails(
        forward("decoder", "vae", "decode0", None, &out),
        "unknown component",
    );
    // Config that is not JSON.
    let d = fixtures().join("fuser");
    let o = bin()
        .args(["forward", "--component", "fuser", "--config"])
        .arg(d.join("weights.safetensors"))
        .arg("--weights")
        .arg(d.join("weights.safetensors"))
        .arg("--inputs")
        .arg(d.join("case0.in.safetensors"))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    // Inputs missing a tensor.
    let o = bin()
        .args(["forward", "--component", "fuser", "--config"])
        .arg(d.join("config.json"))
        .arg("--weights")
        .arg(d.join("weights.safetensors"))
        .arg("--inputs")
        .arg(fixtures().join("vae/decode0.in.safetensors"))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert_fails(o, "`text`");
}

#[test]
fn tokenize_prints_ids_and_positions() {
    let o = bin()
        .args([
            "tokenize",
            "a man <|image|> and a cat <|image|> on the beach",
        ])
        .output()
        .unwrap();
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let ids: Vec<u64> = v["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    assert_eq!(ids.len(), 77);
    assert_eq!(&ids[..3], &[49406, 320, 786]);
    assert_eq!(v["subject_positions"], serde_json::json!([2, 5]));
    assert_fails(
        bin()
            .args(["tokenize", "<|image|> first"])
            .output()
            .unwrap(),
        "start of the prompt",
    );
}

fn generate(extra: &[&str]) -> Output {
    let photos = fixtures().join("pipeline/photos");
    let mut cmd = bin();
    cmd.arg("generate")
        .arg("--model")
        .arg(fixtures().join("pipeline/model"));
    cmd.args(["--width", "64", "--height", "64", "--steps", "3"]);
    for a in extra {
        cmd.arg(a.replace("PHOTOS", photos.to_str().unwrap()));
    }
    cmd.output().unwrap()
}

#[test]
fn generate_writes_a_png() {
    let out = tmp("gen.png");
    let o = generate(&[
        "--prompt",
        "a cat <|image|> on the beach",
        "--subject",
        "PHOTOS/chelsea.png",
        "--out",
        out.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    // --precision auto on the CPU device: f32.
    assert!(stderr.contains("precision: f32"), "{stderr}");
    let img = image::open(&out).unwrap();
    assert_eq!((img.width(), img.height()), (64, 64));
}

#[test]
fn generate_latents_out_writes_latents_and_subjects_without_decoding() {
    let st = tmp("gen-latents.safetensors");
    let run = || {
        let o = generate(&[
            "--prompt",
            "a cat <|image|> on the beach",
            "--subject",
            "PHOTOS/chelsea.png",
            "--latents-out",
            st.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        std::fs::read(&st).unwrap()
    };
    let bytes = run();
    let f = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let latents = f.tensor("latents").unwrap();
    assert_eq!(latents.shape()[0], 1);
    assert_eq!(&latents.shape()[2..], &[8, 8]); // 64 px / factor 8
    let subject = f.tensor("subject_0").unwrap();
    assert_eq!(subject.shape().len(), 1);
    assert!(subject.shape()[0] > 0);
    let values: Vec<f32> = latents
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert!(values.iter().all(|v| v.is_finite()) && values.iter().any(|v| *v != 0.0));
    // Same seed, same latents.
    assert_eq!(run(), bytes);
    // Neither --out nor --latents-out: refused before any work.
    assert_fails(
        generate(&[
            "--prompt",
            "a cat <|image|>",
            "--subject",
            "PHOTOS/chelsea.png",
        ]),
        "nothing to write",
    );
}

#[test]
fn generate_bad_input_exits_with_code_2() {
    let out = tmp("bad.png");
    let o = out.to_str().unwrap();
    let cat = "a cat <|image|>";
    for (args, needle) in [
        (
            vec![
                "--prompt",
                "a cat <|image|> and a dog <|image|>",
                "--subject",
                "PHOTOS/chelsea.png",
            ],
            "2 subject marker(s)",
        ),
        (
            vec!["--prompt", cat, "--subject", "PHOTOS/missing.png"],
            "cannot read",
        ),
        (
            vec![
                "--prompt",
                cat,
                "--subject",
                "PHOTOS/chelsea.png",
                "--memory-report",
            ],
            "use it with --device wgpu",
        ),
        (
            vec!["--prompt", cat, "--subject", "PHOTOS/LICENSE.txt"],
            "not an image",
        ),
        (
            vec![
                "--prompt",
                cat,
                "--subject",
                "PHOTOS/chelsea.png",
                "--decoder",
                "tiny",
            ],
            "no tiny autoencoder",
        ),
        (
            vec![
                "--prompt",
                cat,
                "--subject",
                "PHOTOS/chelsea.png",
                "--attention",
                "paged",
            ],
            "unknown attention kernel `paged`",
        ),
        (
            vec![
                "--prompt",
                cat,
                "--subject",
                "PHOTOS/chelsea.png",
                "--steps",
                "0",
            ],
            "steps",
        ),
        (
            vec![
                "--prompt",
                cat,
                "--subject",
                "PHOTOS/chelsea.png",
                "--steps",
                "1001",
            ],
            "steps",
        ),
        (
            vec![
                "--prompt",
                cat,
                "--subject",
                "PHOTOS/chelsea.png",
                "--alpha",
                "1.5",
            ],
            "alpha",
        ),
        (
            vec![
                "--prompt",
                cat,
                "--subject",
                "PHOTOS/chelsea.png",
                "--guidance",
                "NaN",
            ],
            "guidance",
        ),
        (
            vec![
                "--prompt",
                cat,
                "--subject",
                "PHOTOS/chelsea.png",
                "--guidance=-2",
            ],
            "guidance",
        ),
        (
            vec![
                "--prompt",
                cat,
                "--subject",
                "PHOTOS/chelsea.png",
                "--precision",
                "f16",
            ],
            "precision f16 needs a GPU device",
        ),
        (
            vec![
                "--prompt",
                cat,
                "--subject",
                "PHOTOS/chelsea.png",
                "--precision",
                "f8",
            ],
            "unknown precision `f8`",
        ),
        (
            vec![
                "--prompt",
                cat,
                "--subject",
                "PHOTOS/chelsea.png",
                "--width",
                "70",
            ],
            "width",
        ),
        (
            vec![
                "--prompt",
                cat,
                "--subject",
                "PHOTOS/chelsea.png",
                "--scheduler",
                "euler-x",
            ],
            "unknown scheduler",
        ),
    ] {
        let mut a = args.clone();
        a.extend(["--out", o]);
        assert_fails(generate(&a), needle);
    }
}

/// `forward --lora FILE:SCALE` gives peft's output; `convert --lora` with a LoRA for another
/// model exits with code 2 naming what does not fit, and writes no bundle.
#[test]
fn forward_and_convert_take_loras() {
    let out = tmp("lora.out.safetensors");
    let lora = fixtures().join("lora/kohya.safetensors");
    let o = forward_command("unet", "unet_tiny", "case0", None, &out)
        .arg("--lora")
        .arg(format!("{}:0.7", lora.display()))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (_, got) = SafetensorsSource::from_file(&out)
        .unwrap()
        .read_f32("out")
        .unwrap();
    let (_, want) = fixture("lora/unet.out.safetensors")
        .read_f32("out")
        .unwrap();
    let (err, mag) = max_abs_diff(&got, &want);
    assert!(err <= 1e-4 * mag, "forward --lora: {err} (max {mag})");

    let bundle = tmp("lora.gguf");
    let o = bin()
        .args(["convert", "--from"])
        .arg(fixtures().join("pipeline/model"))
        .arg("--lora")
        .arg(fixtures().join("lora/peft.safetensors"))
        .arg("--out")
        .arg(&bundle)
        .output()
        .unwrap();
    assert_fails(o, "LoRA ");
    assert!(!bundle.exists(), "a bundle was written");
    // A default scheduler the library does not have.
    let o = bin()
        .args(["convert", "--from"])
        .arg(fixtures().join("pipeline/model"))
        .args(["--scheduler", "dpm++"])
        .arg("--out")
        .arg(&bundle)
        .output()
        .unwrap();
    assert_fails(o, "unknown scheduler `dpm++`");
    assert!(!bundle.exists(), "a bundle was written");
}

/// `--attribute` and `--suppress`: strength 0 writes the same image as no control, a slider
/// changes it, bad values exit with code 2 naming the control.
#[test]
fn generate_takes_attributes_and_suppression() {
    let run = |name: &str, extra: &[&str]| {
        let out = tmp(name);
        let mut args = vec![
            "--prompt",
            "a cat <|image|> wearing a hat",
            "--subject",
            "PHOTOS/chelsea.png",
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let o = generate(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        std::fs::read(&out).unwrap()
    };
    let plain = run("ctl-plain.png", &[]);
    let zero = run(
        "ctl-zero.png",
        &["--attribute", "1:red:blue:0", "--suppress", "hat:0"],
    );
    assert_eq!(plain, zero);
    assert_ne!(
        plain,
        run("ctl-slider.png", &["--attribute", "1:red:blue:1.5"])
    );
    assert_ne!(plain, run("ctl-suppress.png", &["--suppress", "hat:1"]));
    let out = tmp("ctl-bad.png");
    for (flag, value, needle) in [
        ("--attribute", "2:red:blue:1", "subject 2 does not exist"),
        ("--attribute", "1:red:blue", "INDEX:FROM:TO:STRENGTH"),
        ("--attribute", "1:red:blue:NaN", "finite"),
        ("--attribute", "1: :blue:1", "the text is empty"),
        ("--suppress", "hat:-1", "between 0 and 1"),
        ("--suppress", "hat", "TEXT:STRENGTH"),
    ] {
        assert_fails(
            generate(&[
                "--prompt",
                "a cat <|image|>",
                "--subject",
                "PHOTOS/chelsea.png",
                "--out",
                out.to_str().unwrap(),
                flag,
                value,
            ]),
            needle,
        );
    }
}
