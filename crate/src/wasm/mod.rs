//! The JavaScript API (wasm-bindgen): a face on top of [`crate::pipeline`].
//!
//! The npm package's worker (`web/pkg-src/worker.js`) is the only caller: it owns the model and
//! talks to the page in messages. Every error is a JS `Error` whose `name` is the category
//! (`InvalidInput`, `WeightsError`, `DeviceError`, `Cancelled`, `IoError`); inputs are checked
//! before they reach anything that could panic.

use burn::tensor::Device;
use js_sys::{Float32Array, Object, Reflect, Uint8Array};
use serde::Deserialize;
use wasm_bindgen::prelude::*;

use crate::error::Error;
use crate::io::bundle::{BundleInfo, BundleStream};
use crate::io::lora::LoraInput;
use crate::kernels::attention::AttentionKernel;
use crate::kernels::device::Precision;
use crate::pipeline::components::Residency;
use crate::pipeline::{
    Attribute, Denoiser, FastComposer, GenerateOptions, RgbImage, StepHooks, StepReport,
    SubjectEmbedding, SubjectReference, Suppression,
};

fn js_error(e: Error) -> JsValue {
    let err = js_sys::Error::new(&e.to_string());
    err.set_name(e.name());
    err.into()
}

type JsResult<T> = Result<T, JsValue>;

#[wasm_bindgen(start)]
pub fn start() {
    console_error_panic_hook::set_once();
}

/// The threaded build's `initThreadPool(n)` (wasm-bindgen-rayon): starts `n` Web Workers that
/// share this module's memory as rayon's threads. The package's worker calls it once, after
/// loading the module and before anything else.
#[cfg(target_feature = "atomics")]
pub use wasm_bindgen_rayon::init_thread_pool;

/// The crate's version.
#[wasm_bindgen]
pub fn version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}

/// `{ fileBytes, name, license, description, quantization }` of a parsed header (what the
/// worker reports about a model before loading it).
fn header_object(info: &BundleInfo) -> JsResult<JsValue> {
    let o = Object::new();
    let set = |k: &str, v: JsValue| Reflect::set(&o, &k.into(), &v).map(|_| ());
    set("fileBytes", (info.file_len() as f64).into())?;
    set("name", info.name.clone().into())?;
    set("license", info.license.clone().into())?;
    set("description", info.description.clone().into())?;
    set("quantization", info.quantization.clone().into())?;
    Ok(o.into())
}

/// A bundle arriving in pieces (a download, a cached copy or a file, read as streams), kept in
/// this module's memory: the page never holds a whole copy of the file. The header is parsed
/// as soon as it is in (then the whole file's memory is reserved once) and every chunk is
/// verified against its checksum as soon as its last byte arrives, so a damaged bundle fails
/// at its first bad chunk (`WeightsError`). `Generator.load` takes it.
#[wasm_bindgen]
pub struct BundleBuffer(BundleStream);

/// LoRA files for `Generator.load` (the API's `loras`): each a name for messages, the file's
/// bytes (safetensors: kohya or diffusers/peft) and its scale.
#[wasm_bindgen]
#[derive(Default)]
pub struct LoraList(Vec<LoraInput>);

#[wasm_bindgen]
impl LoraList {
    #[wasm_bindgen(constructor)]
    pub fn new() -> LoraList {
        LoraList::default()
    }

    /// Add a file (the bytes are copied in). The scale must be a finite number (InvalidInput).
    pub fn push(&mut self, name: String, bytes: &[u8], scale: f64) -> JsResult<()> {
        if !scale.is_finite() {
            return Err(js_error(Error::invalid(format!(
                "LoRA {name}: the scale must be a finite number, got {scale}"
            ))));
        }
        self.0.push(LoraInput {
            name,
            bytes: bytes.to_vec(),
            scale: scale as f32,
        });
        Ok(())
    }
}

#[wasm_bindgen]
impl BundleBuffer {
    #[wasm_bindgen(constructor)]
    #[allow(clippy::new_without_default)]
    pub fn new() -> BundleBuffer {
        BundleBuffer(BundleStream::new())
    }

    /// Append the next piece (throws `WeightsError`: not a bundle, or a corrupt chunk).
    pub fn push(&mut self, piece: &[u8]) -> JsResult<()> {
        self.0.push(piece).map_err(js_error)
    }

    /// The stream has ended: throws `WeightsError` unless the whole bundle arrived.
    pub fn end(&mut self) -> JsResult<()> {
        self.0.end().map_err(js_error)
    }

    /// Bytes pushed so far.
    #[wasm_bindgen(getter)]
    pub fn received(&self) -> f64 {
        self.0.received() as f64
    }

    /// The file size the header gives, 0 until the header is in.
    #[wasm_bindgen(getter, js_name = fileBytes)]
    pub fn file_bytes(&self) -> f64 {
        self.0.info().map_or(0.0, |i| i.file_len() as f64)
    }

    /// The header (see `header_object`), `null` until it is in.
    pub fn header(&self) -> JsResult<JsValue> {
        match self.0.info() {
            Some(info) => header_object(info),
            None => Ok(JsValue::NULL),
        }
    }
}

/// `fastcomposer bench-ops` on the CPU device, for benchmarks of the page against native
/// (`tools/bench/ops_browser.mjs`; not part of the npm package's API): the SD1.5 UNet's layer
/// kinds at batch 2 and a 64×64 latent, `weights` `"f32"`, `"int8"` or `"int4"`, only the
/// operations whose name contains `only`. Returns the timings as JSON (an array of the CLI's
/// objects). Blocks the thread it runs on for minutes. Only in a build with the `bench` feature
/// (`tools/bench/ops_browser.mjs` builds one); the npm package's module has none.
#[cfg(feature = "bench")]
#[wasm_bindgen(js_name = benchOps)]
pub fn bench_ops(weights: String, only: Option<String>, iters: usize) -> JsResult<String> {
    let quant = match weights.as_str() {
        "f32" => None,
        other => Some(other.parse::<crate::quant::QuantMode>().map_err(js_error)?),
    };
    let kernel = AttentionKernel::from_name(
        "sliced",
        crate::kernels::attention::DEFAULT_MAX_SCORES_BYTES,
    )
    .map_err(js_error)?;
    let t = crate::bench::sd15_ops(
        &Device::flex(),
        iters,
        quant,
        kernel.into(),
        only.as_deref(),
    )
    .map_err(js_error)?;
    serde_json::to_string(&t).map_err(|e| js_error(Error::invalid(e.to_string())))
}

/// Options of `startDenoise` / `generate`, as the JS API names them.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct JsOptions {
    prompt: String,
    negative_prompt: Option<String>,
    steps: Option<usize>,
    guidance: Option<f64>,
    alpha: Option<f64>,
    seed: Option<f64>,
    width: Option<usize>,
    height: Option<usize>,
    scheduler: Option<String>,
    decoder: Option<String>,
    attributes: Vec<Attribute>,
    suppress: Vec<Suppression>,
    self_attention: Option<f64>,
}

impl JsOptions {
    /// The options, with `d`'s (the model's defaults) where these give none.
    fn into_options(self, d: GenerateOptions) -> Result<GenerateOptions, Error> {
        let seed = match self.seed {
            None => 0,
            Some(s) if s.is_finite() && s >= 0.0 && s.fract() == 0.0 && s <= 9007199254740991.0 => {
                s as u64
            }
            Some(s) => {
                return Err(Error::invalid(format!(
                    "seed must be a non-negative integer, got {s}"
                )));
            }
        };
        Ok(GenerateOptions {
            prompt: self.prompt,
            negative_prompt: self.negative_prompt.unwrap_or_default(),
            steps: self.steps.unwrap_or(d.steps),
            guidance: self.guidance.unwrap_or(d.guidance),
            alpha: self.alpha.unwrap_or(d.alpha),
            seed,
            width: self.width,
            height: self.height,
            scheduler: match self.scheduler {
                Some(s) => s.parse()?,
                None => d.scheduler,
            },
            decoder: match self.decoder {
                Some(s) => s.parse()?,
                None => d.decoder,
            },
            attributes: self.attributes,
            suppress: self.suppress,
            self_attention: self.self_attention.unwrap_or(0.0),
        })
    }
}

fn image_object(img: &RgbImage) -> JsResult<JsValue> {
    let mut rgba = Vec::with_capacity(img.width * img.height * 4);
    for p in img.pixels.chunks_exact(3) {
        rgba.extend_from_slice(&[p[0], p[1], p[2], 255]);
    }
    let o = Object::new();
    Reflect::set(&o, &"width".into(), &(img.width as f64).into())?;
    Reflect::set(&o, &"height".into(), &(img.height as f64).into())?;
    Reflect::set(&o, &"rgba".into(), &Uint8Array::from(&rgba[..]).into())?;
    Ok(o.into())
}

/// A loaded model on one device.
#[wasm_bindgen]
pub struct Generator {
    model: FastComposer,
    device_name: String,
    kernel: AttentionKernel,
    /// The bundle, until `releaseBundle`: the worker copies it into the cache from here.
    bundle: std::cell::RefCell<Option<std::sync::Arc<crate::io::bundle::Bundle>>>,
}

/// The options `Generator.load` takes besides the device, parsed (the defaults where absent).
fn load_options(
    memory: Option<&str>,
    precision: Option<&str>,
    attention: Option<&str>,
    bundle_bytes: u64,
) -> crate::Result<(Residency, Precision, AttentionKernel)> {
    Ok((
        Residency::parse(memory.unwrap_or("auto"), bundle_bytes)?,
        precision.unwrap_or("auto").parse()?,
        AttentionKernel::from_name(
            attention.unwrap_or("sliced"),
            crate::kernels::attention::DEFAULT_MAX_SCORES_BYTES,
        )?,
    ))
}

/// Check `memory`, `precision` and `attention` as `Generator.load` will, before a bundle is
/// fetched: the worker calls it first, so a bad value fails at once with this module's message.
#[wasm_bindgen(js_name = checkLoadOptions)]
pub fn check_load_options(
    memory: Option<String>,
    precision: Option<String>,
    attention: Option<String>,
) -> JsResult<()> {
    load_options(
        memory.as_deref(),
        precision.as_deref(),
        attention.as_deref(),
        0,
    )
    .map(|_| ())
    .map_err(js_error)
}

#[wasm_bindgen]
impl Generator {
    /// Load a bundle (a `BundleBuffer` the whole file has been pushed into; it is consumed) on
    /// `device`: `"cpu"` or `"webgpu"`. The caller checks that WebGPU exists before asking for
    /// it. `memory`: `"auto"` (default), `"resident"` (every component stays loaded) or
    /// `"sequential"` (each component is loaded when its stage starts and the previous one
    /// freed: text encoder, image encoder, UNet, VAE); auto is sequential for bundles over
    /// 512 MiB. `precision`: `"auto"` (default: f16
    /// when the WebGPU adapter has `shader-f16`, f32 otherwise), `"f32"` or `"f16"` (WebGPU
    /// with `shader-f16` only). A WebGPU device keeps the precision of the first model loaded
    /// on it. `attention`: `"sliced"` (default) or `"fused"` (a flash kernel where the WebGPU
    /// adapter has subgroups, the sliced kernel elsewhere; see the `attention` getter).
    /// `loras`: LoRA files merged into the UNet's and text encoder's weights as they load
    /// (quantized weights are dequantized, updated and quantized again); a file that does not
    /// fit the model is a `WeightsError` naming its first module that does not, before anything
    /// is loaded.
    pub async fn load(
        bundle: BundleBuffer,
        device: String,
        memory: Option<String>,
        precision: Option<String>,
        attention: Option<String>,
        loras: Option<LoraList>,
    ) -> JsResult<Generator> {
        let bundle = bundle.0.finish().map_err(js_error)?;
        let (residency, precision, kernel) = load_options(
            memory.as_deref(),
            precision.as_deref(),
            attention.as_deref(),
            bundle.info.file_len(),
        )
        .map_err(js_error)?;
        let mut dev = match device.as_str() {
            "cpu" => Device::flex(),
            #[cfg(feature = "webgpu")]
            "webgpu" => Device::wgpu_options()
                .init_async()
                .await
                .map_err(|e| js_error(Error::Device(format!("cannot initialise WebGPU: {e}"))))?,
            #[cfg(not(feature = "webgpu"))]
            "webgpu" => {
                return Err(js_error(Error::Device(
                    "this build of the module has no WebGPU device (the threaded CPU build); \
                     load the model with device \"cpu\""
                        .into(),
                )));
            }
            other => {
                return Err(js_error(Error::invalid(format!(
                    "unknown device `{other}` (expected cpu or webgpu)"
                ))));
            }
        };
        crate::kernels::device::set_precision(&mut dev, precision).map_err(js_error)?;
        let bundle = std::sync::Arc::new(bundle);
        let loras = loras.map(|l| l.0).unwrap_or_default();
        let model =
            FastComposer::load_bundle_with_loras(bundle.clone(), loras, &dev, kernel, residency)
                .map_err(js_error)?;
        Ok(Generator {
            model,
            device_name: device,
            kernel,
            bundle: Some(bundle).into(),
        })
    }

    /// `len` bytes of the bundle file from `offset`, until `releaseBundle` (the worker stores a
    /// downloaded bundle in the cache from here, a slice at a time, instead of keeping a copy).
    #[wasm_bindgen(js_name = bundleSlice)]
    pub fn bundle_slice(&self, offset: f64, len: f64) -> JsResult<Vec<u8>> {
        let kept = self.bundle.borrow();
        let bytes = kept
            .as_ref()
            .ok_or_else(|| js_error(Error::invalid("the bundle was released")))?
            .file_bytes();
        let range = (offset >= 0.0 && len >= 0.0 && offset.fract() == 0.0 && len.fract() == 0.0)
            .then_some(offset as usize..(offset + len) as usize)
            .filter(|r| r.end <= bytes.len())
            .ok_or_else(|| {
                js_error(Error::invalid(format!(
                    "bundle slice {offset} + {len} is outside the {} bytes of the bundle",
                    bytes.len()
                )))
            })?;
        Ok(bytes[range].to_vec())
    }

    /// Let go of the bundle: in resident memory mode its bytes are freed (the components were
    /// loaded from it); in sequential mode the model keeps them for its stages anyway.
    #[wasm_bindgen(js_name = releaseBundle)]
    pub fn release_bundle(&self) {
        self.bundle.borrow_mut().take();
    }

    /// `"cpu"` or `"webgpu"`.
    #[wasm_bindgen(getter)]
    pub fn device(&self) -> String {
        self.device_name.clone()
    }

    /// `"f32"` or `"f16"`: the float type the model computes in (see `load`).
    #[wasm_bindgen(getter)]
    pub fn precision(&self) -> String {
        crate::kernels::device::precision_name(self.model.device()).to_string()
    }

    /// The attention kernel that runs: `"fused"` where it was asked for and a flash kernel runs
    /// on this device, `"sliced"` otherwise (see `load`).
    #[wasm_bindgen(getter)]
    pub fn attention(&self) -> String {
        let fused = matches!(self.kernel, AttentionKernel::Fused { .. })
            && crate::kernels::device::flash_attention_runs(self.model.device());
        if fused { "fused" } else { "sliced" }.to_string()
    }

    /// `"resident"` or `"sequential"` (see `load`).
    #[wasm_bindgen(getter)]
    pub fn memory(&self) -> String {
        self.model.residency().name().to_string()
    }

    /// The model's native image size in pixels.
    #[wasm_bindgen(getter, js_name = imageSize)]
    pub fn image_size(&self) -> usize {
        self.model.config().native_size()
    }

    /// Generated images' width and height must be multiples of this (64 for SD1.5).
    #[wasm_bindgen(getter, js_name = sizeStep)]
    pub fn size_step(&self) -> usize {
        self.model.config().size_multiple()
    }

    /// The subject marker.
    #[wasm_bindgen(getter)]
    pub fn marker(&self) -> String {
        self.model.config().marker.clone()
    }

    /// Whether the model has a tiny autoencoder (TAESD): `decoder: 'tiny'` works, and previews
    /// are decoded by it.
    #[wasm_bindgen(getter, js_name = hasTinyDecoder)]
    pub fn has_tiny_decoder(&self) -> bool {
        self.model.has_tiny_vae()
    }

    /// The generation settings the bundle records, `{ scheduler?, steps?, guidance?, alpha? }`
    /// (absent ones are the library's: ddim, 50, 5, 0.7); `generate` uses them where its options
    /// give none.
    #[wasm_bindgen(getter)]
    pub fn defaults(&self) -> JsResult<JsValue> {
        let d = &self.model.config().defaults;
        let o = Object::new();
        if let Some(s) = &d.scheduler {
            Reflect::set(&o, &"scheduler".into(), &s.into())?;
        }
        if let Some(n) = d.steps {
            Reflect::set(&o, &"steps".into(), &(n as f64).into())?;
        }
        if let Some(g) = d.guidance {
            Reflect::set(&o, &"guidance".into(), &g.into())?;
        }
        if let Some(a) = d.alpha {
            Reflect::set(&o, &"alpha".into(), &a.into())?;
        }
        Ok(o.into())
    }

    /// Encode one subject photo given as RGBA pixels (`width × height × 4` bytes), with an
    /// optional mask of the same size (one byte per pixel, >= 128 = subject). Returns the
    /// subject (reusable across generations): `{ values }` (its embedding), and where the model
    /// has a VAE encoder `reference: { latents, mask, channels, height, width }` (the photo's
    /// latents for self-subject attention).
    #[wasm_bindgen(js_name = encodeSubject)]
    pub async fn encode_subject(
        &self,
        rgba: Vec<u8>,
        width: u32,
        height: u32,
        mask: Option<Vec<u8>>,
    ) -> JsResult<JsValue> {
        let img = rgba_to_rgb(&rgba, width, height).map_err(js_error)?;
        let mask = match mask {
            Some(m) => {
                if m.len() != (width as usize) * (height as usize) {
                    return Err(js_error(Error::invalid(format!(
                        "the mask has {} values for a {width}x{height} photo",
                        m.len()
                    ))));
                }
                Some(
                    image::GrayImage::from_raw(width, height, m)
                        .ok_or_else(|| js_error(Error::invalid("bad mask")))?,
                )
            }
            None => None,
        };
        let e = self
            .model
            .encode_subject_async(&img, mask.as_ref())
            .await
            .map_err(js_error)?;
        subject_object(&e)
    }

    /// A whole generation through the pipeline's loop (`Denoiser::run`). After every step,
    /// `onStep({ status: 'step', step, steps, stepMs, preview? })` (a `preview`
    /// `{ width, height, rgba }` every `previewEvery` steps but the last; 0: none); it may return
    /// a boolean or a promise of one, and `false` cancels (`Cancelled`; a throw cancels with
    /// its error). Resolves to `{ image, warnings, timings }` (timings in milliseconds, each
    /// stage finished on the device: `setupMs`, `stepMs` (each step), `stepsMs`, `perStepMs`,
    /// `decodeMs`, `totalMs`).
    pub async fn generate(
        &self,
        options: JsValue,
        subjects: Vec<JsValue>,
        preview_every: usize,
        on_step: js_sys::Function,
    ) -> JsResult<JsValue> {
        let opts = parse_options(options, self.model.default_options())?;
        let subjects = embeddings(&subjects).map_err(js_error)?;
        let mut hooks = JsHooks {
            on_step,
            error: None,
        };
        let g = self
            .model
            .generate_async(&opts, &subjects, preview_every, &mut hooks)
            .await
            .map_err(|e| hooks.error.take().unwrap_or_else(|| js_error(e)))?;
        let t = &g.timings;
        let timings = Object::new();
        let steps = t.step_ms.len().max(1) as f64;
        for (k, v) in [
            ("setupMs", t.setup_ms),
            ("stepsMs", t.steps_ms()),
            ("perStepMs", t.steps_ms() / steps),
            ("decodeMs", t.decode_ms),
            ("totalMs", t.total_ms()),
        ] {
            Reflect::set(&timings, &k.into(), &v.into())?;
        }
        let step_ms: js_sys::Array = t.step_ms.iter().map(|&v| JsValue::from(v)).collect();
        Reflect::set(&timings, &"stepMs".into(), &step_ms)?;
        let warnings: js_sys::Array = g.warnings.iter().map(JsValue::from).collect();
        let o = Object::new();
        Reflect::set(&o, &"image".into(), &image_object(&g.image)?)?;
        Reflect::set(&o, &"warnings".into(), &warnings)?;
        Reflect::set(&o, &"timings".into(), &timings)?;
        Ok(o.into())
    }

    /// Check the options and set up a denoising session. `subjects` holds the embeddings from
    /// `encodeSubject`, in marker order.
    #[wasm_bindgen(js_name = startDenoise)]
    pub fn start_denoise(
        &self,
        options: JsValue,
        subjects: Vec<JsValue>,
    ) -> JsResult<DenoiseSession> {
        let opts = parse_options(options, self.model.default_options())?;
        let d = self
            .model
            .start(&opts, &embeddings(&subjects).map_err(js_error)?, None)
            .map_err(js_error)?;
        Ok(DenoiseSession { inner: d })
    }
}

fn parse_options(options: JsValue, defaults: GenerateOptions) -> JsResult<GenerateOptions> {
    let o: JsOptions = serde_wasm_bindgen::from_value(options)
        .map_err(|e| js_error(Error::invalid(format!("bad options: {e}"))))?;
    o.into_options(defaults).map_err(js_error)
}

/// A subject as the JS API holds it: `{ values, reference? }`, typed arrays.
fn subject_object(e: &SubjectEmbedding) -> JsResult<JsValue> {
    let o = Object::new();
    Reflect::set(&o, &"values".into(), &Float32Array::from(&e.values[..]))?;
    if let Some(r) = &e.reference {
        let ro = Object::new();
        Reflect::set(&ro, &"latents".into(), &Float32Array::from(&r.latents[..]))?;
        Reflect::set(&ro, &"mask".into(), &Float32Array::from(&r.mask[..]))?;
        for (k, v) in [
            ("channels", r.channels),
            ("height", r.height),
            ("width", r.width),
        ] {
            Reflect::set(&ro, &k.into(), &(v as f64).into())?;
        }
        Reflect::set(&o, &"reference".into(), &ro)?;
    }
    Ok(o.into())
}

/// The subjects `{ values, reference? }` the JS API passes, checked: anything else is an
/// InvalidInput naming the subject.
fn embeddings(subjects: &[JsValue]) -> Result<Vec<SubjectEmbedding>, Error> {
    let bad = |i: usize, what: &str| Error::invalid(format!("subject {}: {what}", i + 1));
    let floats = |o: &JsValue, key: &str| -> Option<Vec<f32>> {
        Reflect::get(o, &key.into())
            .ok()
            .and_then(|v| v.dyn_into::<Float32Array>().ok())
            .map(|a| a.to_vec())
    };
    let size = |o: &JsValue, key: &str| -> Option<usize> {
        Reflect::get(o, &key.into())
            .ok()
            .and_then(|v| v.as_f64())
            .filter(|v| v.is_finite() && *v >= 0.0 && v.fract() == 0.0 && *v <= 1e9)
            .map(|v| v as usize)
    };
    subjects
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let values = floats(s, "values").ok_or_else(|| {
                bad(
                    i,
                    "`values` must be a Float32Array (a Subject from encodeSubject)",
                )
            })?;
            let r = Reflect::get(s, &"reference".into()).unwrap_or(JsValue::UNDEFINED);
            let reference = if r.is_undefined() || r.is_null() {
                None
            } else {
                Some(SubjectReference {
                    latents: floats(&r, "latents")
                        .ok_or_else(|| bad(i, "`reference.latents` must be a Float32Array"))?,
                    mask: floats(&r, "mask")
                        .ok_or_else(|| bad(i, "`reference.mask` must be a Float32Array"))?,
                    channels: size(&r, "channels")
                        .ok_or_else(|| bad(i, "`reference.channels` must be a whole number"))?,
                    height: size(&r, "height")
                        .ok_or_else(|| bad(i, "`reference.height` must be a whole number"))?,
                    width: size(&r, "width")
                        .ok_or_else(|| bad(i, "`reference.width` must be a whole number"))?,
                })
            };
            Ok(SubjectEmbedding { values, reference })
        })
        .collect()
}

/// `generate`'s `onStep` as the pipeline's hooks; a throw (or rejected promise) is kept and
/// becomes the generation's error.
struct JsHooks {
    on_step: js_sys::Function,
    error: Option<JsValue>,
}

impl JsHooks {
    async fn call(&self, r: &StepReport) -> JsResult<bool> {
        let p = Object::new();
        Reflect::set(&p, &"status".into(), &"step".into())?;
        Reflect::set(&p, &"step".into(), &(r.step as f64).into())?;
        Reflect::set(&p, &"steps".into(), &(r.total as f64).into())?;
        Reflect::set(&p, &"stepMs".into(), &r.ms.into())?;
        if let Some(img) = &r.preview {
            Reflect::set(&p, &"preview".into(), &image_object(img)?)?;
        }
        let mut v = self.on_step.call1(&JsValue::NULL, &p)?;
        if let Some(promise) = v.dyn_ref::<js_sys::Promise>() {
            v = wasm_bindgen_futures::JsFuture::from(promise.clone()).await?;
        }
        Ok(v.as_bool() != Some(false))
    }
}

impl StepHooks for JsHooks {
    async fn after_step(&mut self, report: &StepReport) -> bool {
        match self.call(report).await {
            Ok(go_on) => go_on,
            Err(e) => {
                self.error = Some(e);
                false
            }
        }
    }
}

fn rgba_to_rgb(rgba: &[u8], width: u32, height: u32) -> Result<image::RgbImage, Error> {
    crate::pipeline::preprocess::check_dimensions(width, height, "subject photo")?;
    let n = width as usize * height as usize;
    if rgba.len() != n * 4 {
        return Err(Error::invalid(format!(
            "subject photo: {} bytes of RGBA for {width}x{height} (expected {})",
            rgba.len(),
            n * 4
        )));
    }
    let rgb: Vec<u8> = rgba
        .chunks_exact(4)
        .flat_map(|p| [p[0], p[1], p[2]])
        .collect();
    image::RgbImage::from_raw(width, height, rgb)
        .ok_or_else(|| Error::invalid("subject photo: bad size"))
}

/// One generation, advanced a step at a time from JS.
#[wasm_bindgen]
pub struct DenoiseSession {
    inner: Denoiser,
}

#[wasm_bindgen]
impl DenoiseSession {
    /// Model evaluations in total.
    #[wasm_bindgen(getter)]
    pub fn total(&self) -> usize {
        self.inner.total()
    }

    /// Steps done.
    #[wasm_bindgen(getter)]
    pub fn done(&self) -> usize {
        self.inner.done()
    }

    /// Warnings for the user (e.g. a truncated prompt).
    #[wasm_bindgen(getter)]
    pub fn warnings(&self) -> Vec<String> {
        self.inner.warnings.clone()
    }

    /// One denoising step; resolves when the device has finished it.
    pub async fn step(&mut self) -> JsResult<()> {
        self.inner.step().map_err(js_error)?;
        self.inner.settle().await.map_err(js_error)
    }

    /// The current latents `[1, C, h, w]` as a flat array.
    pub async fn latents(&self) -> JsResult<Float32Array> {
        let d = crate::kernels::device::read_async(self.inner.latents())
            .await
            .map_err(js_error)?;
        let v = d
            .try_into_vec::<f32>()
            .map_err(|e| js_error(Error::Device(format!("{e:?}"))))?;
        Ok(Float32Array::from(&v[..]))
    }

    /// A cheap preview `{ width, height, rgba }` at latent resolution.
    pub async fn preview(&self) -> JsResult<JsValue> {
        image_object(&self.inner.preview_async().await.map_err(js_error)?)
    }

    /// Decode the current latents: `{ width, height, rgba }`.
    pub async fn decode(&self) -> JsResult<JsValue> {
        image_object(&self.inner.decode_rgb_async().await.map_err(js_error)?)
    }
}
