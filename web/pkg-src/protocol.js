// The messages between the page API (index.js) and the worker that owns the model (worker.js),
// in one place; index.d.ts declares the public part (error names, load progress) and the npm
// package test checks that it lists the same names as this file.
//
// Requests:  { id, op, ...args }              (op: a value of OP)
// Replies:   { id, ok: true, value } | { id, ok: false, error: { name, message } }
// Progress:  { id, progress: { status, ... } } (status: a LOAD_PROGRESS value, or 'step')
// `OP.cancel` carries { runId } and has no reply: it marks that generation cancelled.

export const OP = Object.freeze({
  init: 'init',
  load: 'load',
  encodeSubject: 'encodeSubject',
  generate: 'generate',
  cancel: 'cancel',
  startDenoise: 'startDenoise',
  step: 'step',
  latents: 'latents',
  decode: 'decode',
  endSession: 'endSession',
  dispose: 'dispose',
});

/** The `name` of every error the API rejects with. */
export const ERROR_NAMES = Object.freeze(['InvalidInput', 'WeightsError', 'DeviceError', 'Cancelled', 'IoError', 'Busy']);

/** The `status` of every progress event while a model loads. */
export const LOAD_PROGRESS = Object.freeze(['download', 'read', 'cache-invalid', 'loading', 'ready']);

/** The Cache Storage bucket downloaded bundles are kept in. */
export const CACHE_NAME = 'fastcomposer-models-v1';

/** An Error named `name` (one of ERROR_NAMES; anything else reads as a DeviceError). */
export function apiError(name, message) {
  const e = new Error(message);
  e.name = ERROR_NAMES.includes(name) ? name : 'DeviceError';
  return e;
}

/** An error as it crosses from the worker to the page. */
export function toWire(e) {
  if (e && typeof e === 'object' && 'name' in e && 'message' in e) {
    return { name: String(e.name), message: String(e.message) };
  }
  return { name: 'DeviceError', message: String(e) };
}

/** The error a reply carries, as an Error again. */
export function fromWire(info) {
  return apiError(info && info.name, info && info.message ? info.message : String(info));
}
