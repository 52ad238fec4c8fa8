//! Latents → 8-bit images (A1111 `decode_latent_batch` and the conversion in
//! `process_images_inner`): each latent decoded on its own, then `clamp((x + 1) / 2, 0, 1)·255`
//! truncated to 8 bits, not rounded.

use image::RgbImage;
use tch::{Kind, Tensor};

use crate::models::vae::{AutoencoderKl, VaeTiling};

/// A decoded image tensor [3, H, W] in about [−1, 1] → RGB, A1111's way (truncation).
pub fn tensor_to_image(decoded: &Tensor) -> RgbImage {
    let size = decoded.size();
    let (h, w) = (size[1], size[2]);
    let bytes = (((decoded.to_kind(Kind::Float) + 1.0) / 2.0).clamp(0.0, 1.0) * 255.0)
        .to_kind(Kind::Uint8)
        .permute([1, 2, 0])
        .contiguous()
        .to_device(tch::Device::Cpu);
    let data = Vec::<u8>::try_from(bytes.reshape([-1])).expect("uint8 pixels");
    RgbImage::from_raw(w as u32, h as u32, data).expect("pixel count matches the size")
}

/// Decodes scaled latents [B, 4, h, w] one by one into RGB images (in tiles with `tiling`).
pub fn decode_latents(
    vae: &AutoencoderKl,
    latents: &Tensor,
    tiling: Option<VaeTiling>,
) -> Vec<RgbImage> {
    decode_latents_unless_nan(vae, latents, tiling, false).expect("NaN is not checked")
}

/// [`decode_latents`], stopping with `None` when `check_nan` and a decoded image's first value
/// is NaN (A1111 `devices.test_for_nans`, which reads `x[0, 0, 0]` only).
pub fn decode_latents_unless_nan(
    vae: &AutoencoderKl,
    latents: &Tensor,
    tiling: Option<VaeTiling>,
    check_nan: bool,
) -> Option<Vec<RgbImage>> {
    let scale = vae.config().scaling_factor;
    (0..latents.size()[0])
        .map(|i| {
            let latent = latents.get(i).unsqueeze(0) / scale;
            let decoded = vae.decode_tiled(&latent, tiling).get(0);
            if check_nan && decoded.double_value(&[0, 0, 0]).is_nan() {
                return None;
            }
            Some(tensor_to_image(&decoded))
        })
        .collect()
}
