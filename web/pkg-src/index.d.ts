/** What the browser offers. */
export interface Capabilities {
  webgpu: boolean;
  shaderF16: boolean;
  /** `software`: a software adapter (SwiftShader, llvmpipe, lavapipe, WARP; or flagged as a fallback),
   *  which `device: 'auto'` never picks; null where the adapter does not say what it is. */
  adapterInfo: { vendor: string; architecture: string; device: string; description: string; isFallbackAdapter: boolean; software: boolean | null } | null;
  wasmSimd: boolean;
  threads: boolean;
}
export function detect(): Promise<Capabilities>;

/** Delete every cached model. */
export function purgeCache(): Promise<void>;

/**
 * The `name` of every error the API rejects with: bad input, a bad model file, a device
 * failure (or loss), an aborted generation, a failed read, and a `generate` started while
 * another runs in the same worker (use the queue: await the first).
 */
export type ErrorName = 'InvalidInput' | 'WeightsError' | 'DeviceError' | 'Cancelled' | 'IoError' | 'Busy';
/** The same names, at run time. */
export const ERROR_NAMES: readonly ErrorName[];
/** The `status` values of `LoadProgress`, at run time. */
export const LOAD_PROGRESS: readonly LoadProgress['status'][];

/** Progress while loading a model. */
export type LoadProgress =
  | { status: 'download'; file: string; loaded: number; total: number; cached?: boolean }
  | { status: 'read'; file: string; loaded: number; total: number }
  | { status: 'cache-invalid'; file: string; reason: string }
  | { status: 'loading'; device: 'webgpu' | 'cpu'; reason: string }
  | { status: 'ready'; device: 'webgpu' | 'cpu' };

export interface CreateGeneratorOptions {
  /**
   * A bundle URL (streamed, verified, cached), a File or Blob with the bundle (e.g. one the
   * user converted and picked from disk: streamed and verified, not cached), or its bytes.
   */
  model: string | URL | Blob | ArrayBuffer | Uint8Array;
  /**
   * 'auto' (default): WebGPU on a GPU adapter; the CPU where there is no adapter or only a software
   * one (SwiftShader, llvmpipe, lavapipe, WARP: slower than the CPU path), and where the adapter
   * does not say what it is, a short timed probe decides. `generator.deviceReason` says why.
   * 'webgpu' uses whatever adapter there is.
   */
  device?: 'auto' | 'webgpu' | 'cpu';
  /**
   * 'resident': every component stays loaded (fastest for many images). 'sequential': each
   * component is loaded when its stage starts and the previous one is freed (text encoder,
   * image encoder, UNet, VAE), so the device holds one stage's weights at a time — for models
   * larger than the device's memory. 'auto' (default): sequential for bundles over 512 MiB.
   */
  memory?: 'auto' | 'resident' | 'sequential';
  /**
   * The float type the model computes in. 'auto' (default): 'f16' where the WebGPU adapter has
   * the `shader-f16` feature (half the memory traffic), 'f32' otherwise and on the CPU device.
   * 'f16' on a device without it fails with a DeviceError (InvalidInput on the CPU device).
   */
  precision?: 'auto' | 'f32' | 'f16';
  /**
   * How attention is computed. 'sliced' (default): scores in slices of at most 128 MiB.
   * 'fused': on WebGPU with subgroups, CubeCL's flash-attention kernel (no scores buffer);
   * elsewhere, and for heads wider than 160, the sliced kernel stands in. The two agree to
   * float rounding.
   */
  attention?: 'sliced' | 'fused';
  /**
   * CPU threads for the CPU device: 'auto' (default: the number of cores, at most 8) or 1–64.
   * More than one needs a cross-origin isolated page (COOP/COEP headers) and runs the package's
   * threaded module (CPU only); otherwise, or with 1, the single-threaded module runs.
   */
  threads?: 'auto' | number;
  /**
   * LoRA files (safetensors: kohya `lora_unet_…` / `lora_te_…` with diffusers or original SD
   * module names, diffusers/peft `lora_A` / `lora_B`) merged into the UNet's and text encoder's
   * weights as the model loads, each at `scale` (default 1; it multiplies alpha / rank).
   * Quantized weights are dequantized, updated and quantized again in their own format. A file
   * that does not fit the model rejects the load with a WeightsError naming its first module
   * that does not and how many did; a scale that is not a finite number, with InvalidInput.
   * An LCM-LoRA goes with `scheduler: 'lcm'`, few steps and guidance 1.
   */
  loras?: { model: string | URL | Blob | ArrayBuffer | Uint8Array; scale?: number }[];
  onProgress?: (p: LoadProgress) => void;
  /** Where the single-threaded .wasm file is, if not next to the package (then one thread). */
  wasmUrl?: string | URL;
}

/** A subject photo, encoded once; reuse it across generations. */
export class Subject {
  /** The subject's embedding (image encoder + projection). */
  readonly values: Float32Array;
  /** Where the model has a VAE encoder: the photo's latents `[channels, height, width]` at the
   *  model's native size and where the subject is in them (`mask`, `[height, width]` in 0..1;
   *  from `encodeSubject`'s mask, else the whole photo), for `selfAttention`. */
  readonly reference?: { latents: Float32Array; mask: Float32Array; channels: number; height: number; width: number };
}

export interface GenerateOptions {
  /** The prompt, with the marker right after each subject's class noun: "a cat <|image|> on the beach". */
  prompt: string;
  /** Subjects from `encodeSubject`, in marker order (1 to 4); anything else is an InvalidInput. */
  subjects?: Subject[];
  negativePrompt?: string;
  /** 1..1000; default 50. */
  steps?: number;
  /** Classifier-free guidance scale, finite and >= 0; default 5. */
  guidance?: number;
  /** Fraction of the (last) steps conditioned on the subjects, 0..1; default 0.7. */
  alpha?: number;
  /** Non-negative integer; same seed, same image. */
  seed?: number;
  /** Multiples of `generator.sizeStep`; default the model's native size (`generator.imageSize`). */
  width?: number;
  height?: number;
  /** 'lcm': few-step sampling (2–8 steps) for LCM-distilled UNets, best with guidance ≤ 1. */
  scheduler?: 'ddim' | 'pndm' | 'euler' | 'lcm';
  /** 'full' (default): the VAE's decoder; 'tiny': the model's tiny autoencoder (TAESD), a
   *  small fraction of the cost, where `generator.hasTinyDecoder`. */
  decoder?: 'full' | 'tiny';
  /** Attribute sliders: move subject `subject` (1-based, in marker order) from one word toward
   *  another (`{ subject: 1, from: 'young', to: 'old', strength: 1 }`). Strength 0 = no change,
   *  1 = the whole difference between the words, negative = toward `from`. Empty or identical
   *  words, a subject that does not exist and a non-finite strength are InvalidInput. */
  attributes?: { subject: number; from: string; to: string; strength: number }[];
  /** Words whose meaning is projected out of the prompt (DECOR), e.g. `{ text: 'hat', strength: 1 }`;
   *  strength 0..1 (0 = no change). */
  suppress?: { text: string; strength: number }[];
  /** Self-subject attention (DreamTuner): the image also attends to each subject photo's
   *  features, at this strength (default 0 = off; 1 = as much as to its own). Needs Subjects with
   *  a `reference` (a model with a VAE encoder); about doubles a step's cost. */
  selfAttention?: number;
}

export interface StepEvent {
  step: number;
  steps: number;
  /** This step's time in milliseconds, finished on the device. */
  stepMs: number;
  preview?: ImageData;
}

export interface GenerateCallbacks {
  onStep?: (e: StepEvent) => void;
  /** Aborting rejects the call with an Error named "Cancelled". */
  signal?: AbortSignal;
  /** Send a cheap preview every this many steps (0 = never). */
  previewEvery?: number;
}

/** A generation's stage times in milliseconds, each finished on the device. */
export interface Timings {
  /** Checks, the prompt's encodings, the timesteps and the initial latents. */
  setupMs: number;
  /** Each denoising step. */
  stepMs: number[];
  stepsMs: number;
  perStepMs: number;
  decodeMs: number;
  totalMs: number;
}

export interface GenerateResult {
  image: ImageData;
  /** PNG. */
  blob: Blob | null;
  timings: Timings;
  warnings: string[];
}

export interface DenoiseSession {
  readonly total: number;
  readonly done: number;
  readonly warnings: string[];
  step(): Promise<{ done: number; total: number }>;
  latents(): Promise<Float32Array>;
  decode(): Promise<{ image: ImageData; blob: Blob | null }>;
  end(): Promise<void>;
}

/**
 * A loaded model. Errors are `Error`s whose `name` is an `ErrorName`. Calls are queued: a second
 * `generate` waits for the first.
 */
export interface Generator {
  readonly device: 'webgpu' | 'cpu';
  /** Why this device: e.g. "the WebGPU adapter is a software one (…); the CPU path is faster". */
  readonly deviceReason: string;
  /** Whether the model has a tiny autoencoder (TAESD): `decoder: 'tiny'` works, and step
   *  previews are decoded by it at full size. */
  readonly hasTinyDecoder: boolean;
  /**
   * The generation settings the model's bundle records (e.g. the few-step default model's
   * `{ scheduler: 'lcm', steps: 4, guidance: 1, alpha: 0.8 }`); `generate` uses them where its
   * options give none, and the library's (ddim, 50 steps, guidance 5, alpha 0.7) where the bundle
   * has none.
   */
  readonly defaults: { scheduler?: 'ddim' | 'pndm' | 'euler' | 'lcm'; steps?: number; guidance?: number; alpha?: number };
  /** The float type in use (see CreateGeneratorOptions.precision). */
  readonly precision: 'f32' | 'f16';
  /** The attention kernel that runs: 'fused' only where the flash kernel does (see options). */
  readonly attention: 'sliced' | 'fused';
  /** How the components are kept (see CreateGeneratorOptions.memory). */
  readonly memory: 'resident' | 'sequential';
  /** CPU threads the module runs on (1: the single-threaded module). */
  readonly threads: number;
  /** The model's native image size in pixels (the default width and height). */
  readonly imageSize: number;
  /** `width` and `height` must be multiples of this (64 for SD1.5). */
  readonly sizeStep: number;
  readonly marker: string;
  /** Where the bundle came from: "network", "network+cached", "cache", "file" (a File or Blob) or "buffer". */
  readonly source: string;
  /** What the bundle says about itself (its header). */
  readonly model: { name: string; license: string; description: string; quantization: string };
  encodeSubject(image: ImageBitmap | ImageData | Blob, options?: { mask?: ImageBitmap | ImageData | Blob }): Promise<Subject>;
  generate(options: GenerateOptions, callbacks?: GenerateCallbacks): Promise<GenerateResult>;
  startDenoise(options: GenerateOptions): Promise<DenoiseSession>;
  dispose(): Promise<void>;
}

export function createGenerator(options: CreateGeneratorOptions): Promise<Generator>;
