//! A1111 v1.10.1's two ways of running an upscaler network over a picture
//! (`modules/upscaler_utils.py`):
//! * [`upscale_with_model`] (ESRGAN, Real-ESRGAN; options `ESRGAN_tile`, `ESRGAN_tile_overlap`):
//!   the picture cut by `images.split_grid`, each tile upscaled to 8 bits on its own
//!   (`upscale_pil_patch`), the tiles joined by `images.combine_grid`'s ramps;
//! * [`upscale_2`] (SwinIR, DAT; `SWIN_tile`, `DAT_tile` and their overlaps): `tiled_upscale_2`
//!   in float, overlapping outputs averaged, converted to 8 bits once.
//!
//! Both feed the network BGR in 0..1 (`pil_image_to_torch_bgr`) and round its clamped output
//! to 8 bits (`torch_bgr_to_pil_image`).

use image::{Rgb, RgbImage};
use tch::{Device, Kind, Tensor};

use super::model::UpscalerModel;
use crate::prepare::tiles::{combine_grid, split_grid, Grid, Tile, TileRow};

/// A tile size and overlap (A1111's defaults for every upscaler: 192 and 8; tile 0 upscales
/// the picture whole).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TileSettings {
    /// Tile side in input pixels; 0: no tiling.
    pub tile: u32,
    /// Overlap between tiles in input pixels.
    pub overlap: u32,
}

impl Default for TileSettings {
    fn default() -> Self {
        Self {
            tile: 192,
            overlap: 8,
        }
    }
}

/// `pil_image_to_torch_bgr(image).unsqueeze(0)` as float32 on `device`: [1, 3, H, W], BGR,
/// each value `v / 255` computed in double as numpy does, then rounded to float.
pub fn image_to_bgr(image: &RgbImage, device: Device) -> Tensor {
    let (w, h) = image.dimensions();
    let plane = (w * h) as usize;
    let mut values = vec![0f32; 3 * plane];
    for (i, p) in image.pixels().enumerate() {
        for c in 0..3 {
            values[(2 - c) * plane + i] = (f64::from(p[c]) / 255.0) as f32;
        }
    }
    Tensor::from_slice(&values)
        .view([1, 3, i64::from(h), i64::from(w)])
        .to_device(device)
}

/// `torch_bgr_to_pil_image`: [1, 3, H, W] BGR clamped to 0..1, × 255 in float32, rounded half
/// to even (numpy's `round`), back to RGB.
pub fn bgr_to_image(tensor: &Tensor) -> RgbImage {
    let t = tensor
        .squeeze_dim(0)
        .to_kind(Kind::Float)
        .to_device(Device::Cpu)
        .clamp(0.0, 1.0)
        .contiguous();
    let (_, h, w) = t.size3().expect("a CHW image");
    let values: Vec<f32> = Vec::try_from(t.view([-1])).expect("float values");
    let plane = (h * w) as usize;
    RgbImage::from_fn(w as u32, h as u32, |x, y| {
        let i = y as usize * w as usize + x as usize;
        Rgb(std::array::from_fn(|c| {
            (values[(2 - c) * plane + i] * 255.0).round_ties_even() as u8
        }))
    })
}

/// `upscale_pil_patch`: one picture through the network's call, whole.
pub fn upscale_pil_patch(model: &UpscalerModel, image: &RgbImage) -> RgbImage {
    bgr_to_image(&model.call(&image_to_bgr(image, model.device())))
}

/// `upscale_with_model`: tiles of `settings.tile` with `settings.overlap` upscaled one by one
/// and joined with `combine_grid` at the network's scale (tile 0: the picture whole).
/// `stop` is asked between tiles; when it says so, the picture comes back unchanged, as
/// A1111 returns `img` on an interrupt.
pub fn upscale_with_model(
    model: &UpscalerModel,
    image: &RgbImage,
    settings: TileSettings,
    stop: &dyn Fn() -> bool,
) -> RgbImage {
    if settings.tile == 0 {
        return upscale_pil_patch(model, image);
    }
    let Ok(grid) = split_grid(image, settings.tile, settings.tile, settings.overlap) else {
        // An overlap as large as the tile leaves nothing to tile by (A1111 divides by zero).
        return upscale_pil_patch(model, image);
    };
    let mut scale = 1i64;
    let mut rows = Vec::with_capacity(grid.rows.len());
    for row in &grid.rows {
        let mut tiles = Vec::with_capacity(row.tiles.len());
        for tile in &row.tiles {
            if stop() {
                return image.clone();
            }
            let output = upscale_pil_patch(model, &tile.image);
            scale = i64::from(output.width() / tile.image.width());
            tiles.push(Tile {
                x: tile.x * scale,
                image: output,
            });
        }
        rows.push(TileRow {
            y: row.y * scale,
            tiles,
        });
    }
    let s = scale as u32;
    combine_grid(&Grid {
        rows,
        tile_w: grid.tile_w * s,
        tile_h: grid.tile_h * s,
        image_w: grid.image_w * s,
        image_h: grid.image_h * s,
        overlap: grid.overlap * s,
    })
}

/// `tiled_upscale_2` on [1, C, H, W]: square tiles of `min(tile, H, W)` every `tile − overlap`
/// pixels (the last flush with the edge), each through the network's call, summed into the
/// output and divided by how many tiles covered each pixel. `None` when `stop` said so
/// between tiles (A1111 then divides what it has, leaving zeros; sdhost stops instead).
pub fn tiled_upscale_2(
    model: &UpscalerModel,
    image: &Tensor,
    settings: TileSettings,
    scale: i64,
    stop: &dyn Fn() -> bool,
) -> Option<Tensor> {
    let _guard = tch::no_grad_guard();
    let (b, c, h, w) = image.size4().expect("NCHW image");
    let tile = i64::from(settings.tile).min(h).min(w);
    if tile <= 0 {
        return Some(model.call(image));
    }
    let stride = tile - i64::from(settings.overlap);
    let starts = |len: i64| -> Vec<i64> {
        let mut v: Vec<i64> = if stride > 0 {
            (0..(len - tile).max(0)).step_by(stride as usize).collect()
        } else {
            Vec::new()
        };
        v.push(len - tile);
        v
    };
    let result = Tensor::zeros([b, c, h * scale, w * scale], (image.kind(), image.device()));
    let weights = result.zeros_like();
    for &y in &starts(h) {
        for &x in &starts(w) {
            if stop() {
                return None;
            }
            let patch = image.narrow(2, y, tile).narrow(3, x, tile);
            let out = model.call(&patch);
            let mut target =
                result
                    .narrow(2, y * scale, tile * scale)
                    .narrow(3, x * scale, tile * scale);
            let _ = target.f_add_(&out).expect("tile sum");
            let mut counted =
                weights
                    .narrow(2, y * scale, tile * scale)
                    .narrow(3, x * scale, tile * scale);
            let _ = counted.f_add_(&out.ones_like()).expect("tile weights");
        }
    }
    Some(result / weights)
}

/// `upscale_2`: the picture as BGR float through [`tiled_upscale_2`] at the network's scale,
/// back to 8 bits. The picture unchanged when stopped.
pub fn upscale_2(
    model: &UpscalerModel,
    image: &RgbImage,
    settings: TileSettings,
    stop: &dyn Fn() -> bool,
) -> RgbImage {
    let tensor = image_to_bgr(image, model.device());
    match tiled_upscale_2(model, &tensor, settings, model.scale(), stop) {
        Some(out) => bgr_to_image(&out),
        None => image.clone(),
    }
}
