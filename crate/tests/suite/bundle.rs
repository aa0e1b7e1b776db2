//! Bundles: round trip through `convert` in every quantization mode (error per component and
//! end to end vs the f32 model), the PyTorch `.bin` path, and every kind of bad file.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::common::{
    convert_bundle, denoise, fixtures, max_abs_diff, photo, rel_err, test_device, values,
};
use fastcomposer::Error;
use fastcomposer::io::bundle::{Bundle, BundleInfo};
use fastcomposer::io::convert::{ConvertOptions, convert};
use fastcomposer::io::model_dir::ModelDir;
use fastcomposer::kernels::attention::AttentionKernel;
use fastcomposer::pipeline::{FastComposer, GenerateOptions, RgbImage, SubjectEmbedding};
use fastcomposer::quant::QuantMode;

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fastcomposer-bundle-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn model_dir() -> PathBuf {
    fixtures().join("pipeline/model")
}

fn convert_to(from: &Path, configs: Option<&Path>, quant: &str, name: &str) -> PathBuf {
    convert_bundle(from, configs, quant, tmp(name))
}

fn reference() -> &'static FastComposer {
    static M: OnceLock<FastComposer> = OnceLock::new();
    M.get_or_init(|| {
        let dir = ModelDir::open(&model_dir()).unwrap();
        FastComposer::load(
            &dir.config,
            &dir,
            &test_device(),
            AttentionKernel::default(),
        )
        .unwrap()
    })
}

fn load(path: &Path) -> FastComposer {
    FastComposer::load_bundle(
        &Bundle::open(path).unwrap(),
        &test_device(),
        AttentionKernel::default(),
    )
    .unwrap()
}

fn psnr(a: &RgbImage, b: &RgbImage) -> f64 {
    let mse: f64 = a
        .pixels
        .iter()
        .zip(&b.pixels)
        .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
        .sum::<f64>()
        / a.pixels.len() as f64;
    if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (255.0f64.powi(2) / mse).log10()
    }
}

/// Per-component relative errors and the end-to-end PSNR of `m` against the f32 reference.
fn compare(m: &FastComposer) -> (Vec<(&'static str, f32)>, f64) {
    let r = reference();
    let prompt = "a woman and a cat in the snow";
    let text = rel_err(
        &values(m.text_embeddings(prompt).unwrap()),
        &values(r.text_embeddings(prompt).unwrap()),
    );
    let img = rel_err(
        &m.encode_subject(&photo("astronaut"), None).unwrap().values,
        &r.encode_subject(&photo("astronaut"), None).unwrap().values,
    );
    let opts = GenerateOptions {
        prompt: "a woman <|image|> and a cat <|image|> in the snow".into(),
        steps: 6,
        guidance: 5.0,
        alpha: 0.5,
        seed: 3,
        width: Some(64),
        height: Some(64),
        ..Default::default()
    };
    let subjects = |m: &FastComposer| -> Vec<SubjectEmbedding> {
        ["astronaut", "chelsea"]
            .iter()
            .map(|p| m.encode_subject(&photo(p), None).unwrap())
            .collect()
    };
    let run = |m: &FastComposer| {
        let mut d = m.start(&opts, &subjects(m), None).unwrap();
        denoise(&mut d);
        (d.latents(), d.decode_rgb().unwrap())
    };
    let (lr, ir) = run(r);
    let (lm, im) = run(m);
    let lat = rel_err(&values(lm), &values(lr.clone()));
    let vae = rel_err(
        &values(m.decode_latents(lr.clone()).unwrap()),
        &values(r.decode_latents(lr).unwrap()),
    );
    (
        vec![
            ("text encoder", text),
            ("image encoder", img),
            ("final latents (unet+fuser)", lat),
            ("vae decoder", vae),
        ],
        psnr(&im, &ir),
    )
}

#[test]
fn round_trip_every_mode() {
    for (mode, bar) in [
        ("f16", 40.0),
        ("int8", 30.0),
        ("int4", 20.0),
        ("mixed", 20.0),
    ] {
        let path = convert_to(&model_dir(), None, mode, &format!("rt_{mode}.gguf"));
        let (errs, p) = compare(&load(&path));
        let size = std::fs::metadata(&path).unwrap().len();
        println!(
            "{mode:>5}: {size} bytes, end-to-end PSNR {p:.1} dB; relative errors: {}",
            errs.iter()
                .map(|(k, e)| format!("{k} {e:.2e}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        assert!(p >= bar, "{mode}: PSNR {p:.1} dB < {bar} dB");
    }
}

/// The pipeline fixture's model converted to int8 at `tmp(name)`, with `edit`'s options.
fn convert_int8(name: &str, edit: impl FnOnce(&mut ConvertOptions)) -> Result<PathBuf, Error> {
    let mut o = ConvertOptions {
        from: model_dir(),
        configs: None,
        quant: QuantMode::Int8,
        out: tmp(name),
        name: None,
        license: None,
        card: None,
        keep_vae_encoder: false,
        loras: Vec::new(),
        defaults: Default::default(),
        tiny_vae: None,
    };
    edit(&mut o);
    convert(&o).map(|_| o.out)
}

/// A bundle records generation defaults (`convert --scheduler lcm --steps 4 --guidance 1
/// --alpha 0.8`, as for a few-step model): a generation that gives none uses them, and gives exactly the image of one
/// that spells them out. Bad defaults are refused at convert time.
#[test]
fn bundle_generation_defaults_are_used_unless_told_otherwise() {
    use fastcomposer::config::GenerationDefaults;
    use fastcomposer::scheduler::SchedulerKind;
    let convert_with =
        |defaults: GenerationDefaults, name: &str| convert_int8(name, |o| o.defaults = defaults);
    let lcm = GenerationDefaults {
        scheduler: Some("lcm".into()),
        steps: Some(4),
        guidance: Some(1.0),
        alpha: Some(0.8),
    };
    let path = convert_with(lcm.clone(), "lcm_defaults.gguf").unwrap();
    let bundle = Bundle::open(&path).unwrap();
    assert_eq!(bundle.config().defaults, lcm);
    let m = FastComposer::load_bundle(&bundle, &test_device(), AttentionKernel::default()).unwrap();
    let base = m.default_options();
    assert_eq!(
        (base.scheduler, base.steps, base.guidance, base.alpha),
        (SchedulerKind::Lcm, 4, 1.0, 0.8)
    );
    let e = m.encode_subject(&photo("chelsea"), None).unwrap();
    let run = |o: &GenerateOptions| {
        let mut d = m.start(o, std::slice::from_ref(&e), None).unwrap();
        let total = d.total();
        denoise(&mut d);
        (total, d.decode_rgb().unwrap())
    };
    let implicit = GenerateOptions {
        prompt: "a cat <|image|> in the snow".into(),
        width: Some(64),
        height: Some(64),
        ..base
    };
    let explicit = GenerateOptions {
        scheduler: SchedulerKind::Lcm,
        steps: 4,
        guidance: 1.0,
        alpha: 0.8,
        ..implicit.clone()
    };
    let (n, img) = run(&implicit);
    assert_eq!(n, 4);
    assert_eq!(run(&explicit), (4, img.clone()));
    // The recorded alpha matters (0.7 leaves two of the 4 steps text-only, 0.8 one).
    assert_ne!(
        run(&GenerateOptions {
            alpha: 0.7,
            ..explicit.clone()
        })
        .1,
        img
    );
    // A bundle without defaults keeps the library's.
    let plain =
        Bundle::open(&convert_with(GenerationDefaults::default(), "no_defaults.gguf").unwrap())
            .unwrap();
    let p = FastComposer::load_bundle(&plain, &test_device(), AttentionKernel::default()).unwrap();
    assert_eq!(p.default_options(), GenerateOptions::default());
    // Out-of-range defaults never reach a bundle.
    for bad in [
        GenerationDefaults {
            steps: Some(0),
            ..Default::default()
        },
        GenerationDefaults {
            guidance: Some(f64::NAN),
            ..Default::default()
        },
        GenerationDefaults {
            alpha: Some(1.5),
            ..Default::default()
        },
    ] {
        match convert_with(bad.clone(), "bad_defaults.gguf") {
            Err(Error::InvalidInput(m)) => assert!(m.contains("default"), "{m}"),
            other => panic!(
                "{bad:?}: expected InvalidInput, got {:?}",
                other.map(|_| ())
            ),
        }
    }
}

/// A tiny autoencoder (TAESD) added by `convert --tiny-vae` is a second decoder: its image is
/// TAESD's decoder on the final latents; the full decoder's image is unchanged by its presence;
/// asking for it where a model has none, or adding one for other latents, is refused.
#[test]
fn tiny_vae_is_a_second_decoder() {
    use fastcomposer::io::safetensors::SafetensorsSource;
    use fastcomposer::models::autoencoder_tiny::{AutoencoderTinyConfig, TinyDecoder};
    use fastcomposer::models::loader::Loader;
    use fastcomposer::pipeline::{DecoderKind, ImageDecoder, decode_rgb_with};
    let taesd = fixtures().join("vae_tiny/weights.safetensors");
    let with =
        Bundle::open(&convert_int8("tiny.gguf", |o| o.tiny_vae = Some(taesd.clone())).unwrap())
            .unwrap();
    let names: Vec<&str> = with
        .info
        .header
        .tensors
        .iter()
        .map(|t| t.name.as_str())
        .filter(|n| n.starts_with("tiny_vae."))
        .collect();
    assert!(
        !names.is_empty() && names.iter().all(|n| n.starts_with("tiny_vae.decoder.")),
        "{names:?}"
    );
    let without = Bundle::open(&convert_int8("no_tiny.gguf", |_| ()).unwrap()).unwrap();
    let device = test_device();
    let m = FastComposer::load_bundle(&with, &device, AttentionKernel::default()).unwrap();
    let plain = FastComposer::load_bundle(&without, &device, AttentionKernel::default()).unwrap();
    assert!(m.has_tiny_vae() && !plain.has_tiny_vae());
    let e = m.encode_subject(&photo("chelsea"), None).unwrap();
    let opts = |decoder| GenerateOptions {
        prompt: "a cat <|image|> in the snow".into(),
        steps: 2,
        width: Some(64),
        height: Some(64),
        decoder,
        ..Default::default()
    };
    let run = |model: &FastComposer, decoder| {
        let mut d = model
            .start(&opts(decoder), std::slice::from_ref(&e), None)
            .unwrap();
        denoise(&mut d);
        (d.latents(), d.decode_rgb().unwrap())
    };
    let (latents, tiny) = run(&m, DecoderKind::Tiny);
    let (_, full) = run(&m, DecoderKind::Full);
    assert_eq!(
        full,
        run(&plain, DecoderKind::Full).1,
        "the full decoder's image changed"
    );
    assert_ne!(tiny, full);
    // TAESD's decoder straight from the fixture's weights, on the same latents.
    let src = SafetensorsSource::from_file(&taesd).unwrap();
    let config: AutoencoderTinyConfig = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("vae_tiny/config.json")).unwrap(),
    )
    .unwrap();
    let reference = TinyDecoder::load(&Loader::new(&src, &device), &config).unwrap();
    let want =
        decode_rgb_with(&ImageDecoder::Tiny(std::sync::Arc::new(reference)), latents).unwrap();
    assert_eq!(tiny, want);
    assert_eq!((tiny.width, tiny.height), (64, 64));
    // Previews are the tiny decoder's, at full size (the latent colour map is 8x8).
    let mut sizes = Vec::new();
    futures_lite::future::block_on(m.generate_async(
        &opts(DecoderKind::Full),
        std::slice::from_ref(&e),
        1,
        &mut |r: &fastcomposer::pipeline::StepReport| {
            sizes.push(r.preview.as_ref().map(|p| (p.width, p.height)));
            true
        },
    ))
    .unwrap();
    assert_eq!(sizes, [Some((64, 64)), None]);
    match "small".parse::<DecoderKind>() {
        Err(Error::InvalidInput(msg)) => assert!(msg.contains("unknown decoder `small`"), "{msg}"),
        other => panic!("expected InvalidInput, got {other:?}"),
    }
    // No tiny autoencoder: a clear error before any work.
    match plain.start(&opts(DecoderKind::Tiny), std::slice::from_ref(&e), None) {
        Err(Error::InvalidInput(msg)) => assert!(msg.contains("no tiny autoencoder"), "{msg}"),
        other => panic!("expected InvalidInput, got {:?}", other.map(|_| ())),
    }
    // One for other latents (8 channels) never reaches a bundle.
    let dir = tmp("taesd8");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(&taesd, dir.join("diffusion_pytorch_model.safetensors")).unwrap();
    let mut c: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("vae_tiny/config.json")).unwrap(),
    )
    .unwrap();
    c["latent_channels"] = 8.into();
    std::fs::write(dir.join("config.json"), c.to_string()).unwrap();
    match convert_int8("tiny8.gguf", |o| o.tiny_vae = Some(dir)) {
        Err(Error::InvalidInput(msg)) => assert!(
            msg.contains("tiny autoencoder takes 8 latent channels"),
            "{msg}"
        ),
        other => panic!("expected InvalidInput, got {:?}", other.map(|_| ())),
    }
}

/// Generation only decodes: the VAE encoder stays out of a bundle unless asked for.
#[test]
fn vae_encoder_left_out_unless_kept() {
    let names = |keep: bool| -> Vec<String> {
        let out = convert_int8(&format!("enc_{keep}.gguf"), |o| o.keep_vae_encoder = keep).unwrap();
        let bytes = std::fs::read(&out).unwrap();
        let info = BundleInfo::parse(&bytes).unwrap();
        info.header.tensors.iter().map(|t| t.name.clone()).collect()
    };
    let encoder = |n: &&String| n.starts_with("vae.encoder.") || n.starts_with("vae.quant_conv.");
    let without = names(false);
    let with = names(true);
    assert_eq!(without.iter().filter(encoder).count(), 0);
    assert!(with.iter().filter(encoder).count() > 0);
    assert!(without.iter().any(|n| n.starts_with("vae.decoder.")));
    assert_eq!(
        with.len() - without.len(),
        with.iter().filter(encoder).count()
    );
}

#[test]
fn pytorch_bin_checkpoint_converts() {
    // Mixed fp32/bf16, prefixes as published, `text_model.` keys and a position_ids buffer.
    let bin = fixtures().join("pipeline/fastcomposer_tiny.bin");
    let path = convert_to(&bin, Some(&model_dir()), "f16", "bin_f16.gguf");
    let (errs, p) = compare(&load(&path));
    println!("bin f16: PSNR {p:.1} dB, {errs:?}");
    // bf16 storage of the UNet and text encoder rounds their weights (8-bit mantissa).
    assert!(p >= 25.0, "PSNR {p}");
    assert!(
        errs[1].1 < 1e-3,
        "image encoder was fp32 in the checkpoint: {errs:?}"
    );
}

fn weights_err<T>(r: Result<T, Error>) -> String {
    match r {
        Err(Error::Weights(m)) => m,
        Err(e) => panic!("expected a weights error, got {e}"),
        Ok(_) => panic!("expected a weights error, got Ok"),
    }
}

fn good_bytes() -> &'static Vec<u8> {
    static B: OnceLock<Vec<u8>> = OnceLock::new();
    B.get_or_init(|| std::fs::read(convert_to(&model_dir(), None, "int8", "good.gguf")).unwrap())
}

#[test]
fn truncated_file() {
    let b = good_bytes();
    for cut in [3, 100, b.len() / 2, b.len() - 1] {
        let m = weights_err(Bundle::from_bytes(b[..cut].to_vec()));
        assert!(m.contains("truncated"), "cut {cut}: {m}");
    }
}

#[test]
fn wrong_magic_or_version() {
    let mut b = good_bytes().clone();
    b[0] = b'X';
    assert!(weights_err(Bundle::from_bytes(b)).contains("not a model bundle"));
    let mut b = good_bytes().clone();
    b[4] = 2;
    assert!(weights_err(Bundle::from_bytes(b)).contains("version"));
}

#[test]
fn checksum_mismatch_names_the_chunk() {
    let mut b = good_bytes().clone();
    let info = BundleInfo::parse(&b).unwrap();
    let (a, _) = info.chunk_range(0);
    b[a as usize + 1000] ^= 0xFF;
    let m = weights_err(Bundle::from_bytes(b));
    assert!(m.contains("chunk 0") && m.contains("checksum"), "{m}");
}

/// A bundle assembled from pieces (a download or a file read as a stream, in the browser) is
/// the bundle `from_bytes` reads, whatever the piece size; a bad chunk fails as soon as it is
/// in, a short file when the stream ends; bytes past the end are ignored.
#[test]
fn bundle_stream_assembles_pieces_and_fails_early() {
    use fastcomposer::config::TensorSource;
    use fastcomposer::io::bundle::BundleStream;
    let b = good_bytes();
    let whole = Bundle::from_bytes(b.clone()).unwrap();
    let names = whole.names();
    let stream = |bytes: &[u8], piece: usize| {
        let mut s = BundleStream::new();
        for p in bytes.chunks(piece) {
            s.push(p)?;
        }
        s.finish()
    };
    for piece in [1 << 10, 65_536, 1_000_003, b.len()] {
        let got = stream(b, piece).unwrap();
        assert_eq!(got.names(), names, "piece {piece}");
        for n in [&names[0], &names[names.len() / 2], names.last().unwrap()] {
            let (x, y) = (got.read(n).unwrap(), whole.read(n).unwrap());
            assert_eq!(x.as_bytes(), y.as_bytes(), "piece {piece}: {n}");
        }
    }
    // Trailing bytes are not part of the bundle.
    let mut longer = b.clone();
    longer.extend_from_slice(&[7; 100]);
    assert_eq!(stream(&longer, 65_536).unwrap().names(), names);
    // A damaged chunk 0 fails when chunk 0 is in, long before the end of the file.
    let mut bad = b.clone();
    let info = BundleInfo::parse(&bad).unwrap();
    let (a, end0) = info.chunk_range(0);
    bad[a as usize + 1000] ^= 0xFF;
    let mut s = BundleStream::new();
    let mut failed_at = None;
    for (i, p) in bad.chunks(65_536).enumerate() {
        if let Err(e) = s.push(p) {
            failed_at = Some((i + 1) * 65_536);
            let m = weights_err::<()>(Err(e));
            assert!(m.contains("chunk 0") && m.contains("checksum"), "{m}");
            break;
        }
    }
    let at = failed_at.expect("the damaged chunk was not detected");
    assert!(
        at >= end0 as usize && at < end0 as usize + 65_536,
        "chunk 0 ends at byte {end0}, detected at byte {at} of {}",
        b.len()
    );
    // Short files: the header, or the data, cut off.
    for cut in [3, 100, b.len() / 2, b.len() - 1] {
        let m = weights_err(stream(&b[..cut], 65_536));
        assert!(m.contains("truncated"), "cut {cut}: {m}");
    }
    assert!(weights_err(stream(&[], 65_536)).contains("empty"));
    let m = weights_err(stream(b"\x89PNG\r\n\x1a\n and the rest of a picture", 4));
    assert!(m.contains("not a model bundle"), "{m}");
}

/// Position of a tensor's info (its name) in the header.
fn find(b: &[u8], needle: &[u8]) -> usize {
    b.windows(needle.len()).position(|w| w == needle).unwrap()
}

#[test]
fn unknown_dtype() {
    let mut b = good_bytes().clone();
    let name = b"unet.conv_in.bias";
    let at = find(&b, name) + name.len();
    // n_dims (u32) = 1, one u64 dim, then the type code.
    let ty = at + 4 + 8;
    b[ty..ty + 4].copy_from_slice(&99u32.to_le_bytes());
    let m = weights_err(Bundle::from_bytes(b));
    assert!(
        m.contains("unknown dtype 99") && m.contains("unet.conv_in.bias"),
        "{m}"
    );
}

/// ggml's rule, which other GGUF readers (gguf-py, llama.cpp's) enforce: a block-quantized
/// tensor's innermost dimension is a whole number of blocks. Convolution kernels are stored
/// `[out, in·k·k]`, their 4-D shapes in `fastcomposer.tensor_shapes`, restored on reading.
#[test]
fn quantized_tensors_follow_the_ggml_layout() {
    let b = good_bytes();
    let stored = fastcomposer::io::bundle::gguf::parse_header(b).unwrap();
    let blocks: Vec<_> = stored.tensors.iter().filter(|t| t.ty.is_block()).collect();
    assert!(!blocks.is_empty());
    for t in &blocks {
        assert!(
            t.shape.len() <= 2 && t.shape.last().unwrap() % 32 == 0,
            "{} stored as {:?}",
            t.name,
            t.shape
        );
    }
    let info = BundleInfo::parse(b).unwrap();
    let convs: Vec<_> = info
        .header
        .tensors
        .iter()
        .filter(|t| t.ty.is_block() && t.shape.len() == 4)
        .collect();
    assert!(
        !convs.is_empty(),
        "quantized convolution kernels come back 4-D"
    );
    for t in convs {
        let s = stored.tensors.iter().find(|x| x.name == t.name).unwrap();
        assert_eq!(
            s.shape,
            vec![t.shape[0], t.shape[1] * t.shape[2] * t.shape[3]]
        );
    }
}

#[test]
fn tensor_shapes_that_do_not_fit_the_stored_tensor_are_refused() {
    let mut b = good_bytes().clone();
    let at = find(&b, b"fastcomposer.tensor_shapes");
    let k = at + find(&b[at..], b",3,3]");
    b[k + 3] = b'5'; // [.., 3, 3] -> [.., 3, 5]: more elements than stored
    let m = weights_err(Bundle::from_bytes(b));
    assert!(m.contains("does not hold shape"), "{m}");
}

#[test]
fn missing_component() {
    let mut b = good_bytes().clone();
    // Rename every `fuser.` tensor: the bundle then has no fuser.
    let mut i = 0;
    while let Some(p) = b[i..].windows(6).position(|w| w == b"fuser.") {
        b[i + p] = b'g';
        i += p + 6;
    }
    let m = weights_err(Bundle::from_bytes(b));
    assert!(m.contains("no `fuser` component"), "{m}");
}

#[test]
fn tensor_shape_not_matching_the_config() {
    // The bundle's config says 2 UNet layers per block; the tensors have 1.
    let dir = ModelDir::open(&model_dir()).unwrap();
    let mut config = dir.config.clone();
    config.unet.cross_attention_dim =
        fastcomposer::models::unet::PerLevel::One(config.unet.context_dim());
    config.unet.block_out_channels = vec![32, 48];
    let bundle = Bundle::from_bytes(good_bytes().clone()).unwrap();
    let m = weights_err(FastComposer::load(
        &config,
        &bundle,
        &test_device(),
        AttentionKernel::default(),
    ));
    assert!(m.contains("unet.") && m.contains("has shape"), "{m}");
}

#[test]
fn pickle_with_unsupported_opcodes_is_refused() {
    // A zip checkpoint whose pickle calls os.system: refused by name, nothing executed.
    let path = tmp("evil.bin");
    {
        let f = std::fs::File::create(&path).unwrap();
        let mut z = zip::ZipWriter::new(f);
        z.start_file("archive/data.pkl", zip::write::SimpleFileOptions::default())
            .unwrap();
        std::io::Write::write_all(
            &mut z,
            b"\x80\x02cos\nsystem\nq\x00X\x05\x00\x00\x00touchq\x01\x85q\x02Rq\x03.",
        )
        .unwrap();
        z.finish().unwrap();
    }
    let r = convert_int8("evil.gguf", |o| o.from = path);
    let m = weights_err(r);
    assert!(m.contains("unsupported global os.system"), "{m}");
}

#[test]
fn sequential_residency_loads_one_stage_at_a_time_and_matches_resident() {
    use fastcomposer::pipeline::components::Residency;
    let path = convert_to(&model_dir(), None, "int8", "sequential.gguf");
    let resident = load(&path);
    let bundle = std::sync::Arc::new(Bundle::open(&path).unwrap());
    let seq = FastComposer::load_bundle_with(
        bundle,
        &test_device(),
        AttentionKernel::default(),
        Residency::Sequential,
    )
    .unwrap();
    assert_eq!(seq.residency(), Residency::Sequential);
    assert_eq!(resident.residency(), Residency::Resident);
    assert_eq!(
        seq.loaded_stage(),
        None,
        "nothing is loaded before it is used"
    );

    let run = |m: &FastComposer, stages: &mut Vec<Option<&'static str>>| {
        let e = m.encode_subject(&photo("chelsea"), None).unwrap();
        stages.push(m.loaded_stage());
        let opts = GenerateOptions {
            prompt: "a cat <|image|> in the snow".into(),
            steps: 2,
            width: Some(64),
            height: Some(64),
            ..Default::default()
        };
        let mut d = m.start(&opts, std::slice::from_ref(&e), None).unwrap();
        stages.push(m.loaded_stage());
        denoise(&mut d);
        stages.push(m.loaded_stage());
        let img = d.decode_rgb().unwrap();
        stages.push(m.loaded_stage());
        (e.values, img)
    };
    let mut stages = Vec::new();
    let (e_seq, img_seq) = run(&seq, &mut stages);
    // Image encoder, then text encoder + fuser, then UNet, then VAE: one stage at a time.
    assert_eq!(
        stages,
        [Some("image"), Some("text"), Some("unet"), Some("vae")]
    );
    // A second generation loads the stages again, in the same order, with the same result.
    let mut again = Vec::new();
    let (e_again, img_again) = run(&seq, &mut again);
    assert_eq!(again, stages);
    assert_eq!((&e_again, &img_again), (&e_seq, &img_seq));
    // Same weights, same kernels: exactly the resident model's output.
    let mut none = Vec::new();
    let (e_res, img_res) = run(&resident, &mut none);
    assert_eq!(none, [None, None, None, None]);
    assert_eq!(e_seq, e_res);
    assert_eq!(img_seq, img_res);
}

/// Whole generations with burn's flash kernels (`AttentionKernel::Fused`; natively on wgpu) give
/// the sliced kernel's latents and image, from an int8 bundle. Every component and attention
/// shape had matched on its own while whole generations were off: the quantized linear layers
/// hand attention strided views, which CubeCL's flash kernels read wrong unless made row-major
/// (`attention::row_major`). On the CPU device both kernels are the host kernel.
#[test]
fn fused_attention_generates_what_sliced_does() {
    let path = convert_to(&model_dir(), None, "int8", "fused.gguf");
    let bundle = Bundle::open(&path).unwrap();
    let device = test_device();
    // On wgpu the flash kernels must run, or this compares the sliced kernel with itself.
    assert!(
        fastcomposer::kernels::device::is_cpu(&device)
            || fastcomposer::kernels::device::flash_attention_runs(&device)
    );
    let run = |kernel: AttentionKernel| {
        let m = FastComposer::load_bundle(&bundle, &device, kernel).unwrap();
        let e = m.encode_subject(&photo("chelsea"), None).unwrap();
        // CFG (guidance 5: a batch of 2) and both conditionings: text-only at step 0, with the
        // subject at step 1 (alpha 0.5).
        let opts = GenerateOptions {
            prompt: "a cat <|image|> in the snow".into(),
            steps: 2,
            alpha: 0.5,
            width: Some(64),
            height: Some(64),
            ..Default::default()
        };
        let mut d = m.start(&opts, &[e], None).unwrap();
        denoise(&mut d);
        (values(d.latents()), d.decode_rgb().unwrap())
    };
    let (want, want_img) = run(AttentionKernel::default());
    let (got, got_img) = run(AttentionKernel::fused());
    let (d, m) = max_abs_diff(&got, &want);
    println!("fused vs sliced latents: max abs diff {d:.2e} (max {m:.2})");
    assert!(d <= 1e-4 * m, "latents: max abs diff {d} (max {m})");
    let levels = got_img
        .pixels
        .iter()
        .zip(&want_img.pixels)
        .map(|(&a, &b)| a.abs_diff(b))
        .max()
        .unwrap();
    assert!(levels <= 1, "images differ by up to {levels} levels");
}

#[test]
fn residency_modes_parse_and_auto_follows_the_bundle_size() {
    use fastcomposer::pipeline::components::Residency;
    assert_eq!(
        Residency::parse("auto", 19 << 20).unwrap(),
        Residency::Resident
    );
    assert_eq!(
        Residency::parse("auto", 776 << 20).unwrap(),
        Residency::Sequential
    );
    assert_eq!(
        Residency::parse("sequential", 0).unwrap(),
        Residency::Sequential
    );
    assert_eq!(
        Residency::parse("resident", 2 << 30).unwrap(),
        Residency::Resident
    );
    let e = Residency::parse("low", 0).unwrap_err();
    assert!(matches!(e, Error::InvalidInput(_)), "{e:?}");
    assert!(e.to_string().contains("unknown memory mode `low`"), "{e}");
}
