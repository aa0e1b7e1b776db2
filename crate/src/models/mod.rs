//! The model components, one file per reference class.

pub mod clip;
pub mod clip_text;
pub mod clip_vision;
pub mod fuser;
pub mod unet;
pub mod vae;

/// For config fields that diffusers may save as `null` (e.g. `UNet2DConditionModel`'s
/// `sample_size` when the model was built without one): `null` reads as `V`.
pub(crate) fn null_or<'de, D: serde::Deserializer<'de>, const V: usize>(
    d: D,
) -> Result<usize, D::Error> {
    Ok(<Option<usize> as serde::Deserialize>::deserialize(d)?.unwrap_or(V))
}
