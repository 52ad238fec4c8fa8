//! Tiled encoding and decoding, for images too large to run through the autoencoder in one
//! piece: overlapping tiles run on their own and their overlaps are blended linearly, exactly
//! as diffusers' `AutoencoderKL.enable_tiling()` does, so its results can be checked against
//! it (diffusers tiles at the VAE config's `sample_size`, 512 for SD 1.x, the default here).
//! Memory then stays at one tile's activations whatever the image size; the price is that
//! each tile's group norms see only the tile (pixels differ slightly from an untiled run).

use tch::{Kind, Tensor};

/// Tile size and overlap of tiled VAE runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VaeTiling {
    /// Side of an image tile in pixels (diffusers' `tile_sample_min_size`: the VAE's 512).
    pub tile_size: i64,
    /// Fraction of a tile shared with each neighbour (diffusers' `tile_overlap_factor`).
    pub overlap: f64,
}

impl Default for VaeTiling {
    fn default() -> Self {
        VaeTiling {
            tile_size: 512,
            overlap: 0.25,
        }
    }
}

/// How a tiled run cuts its input and assembles its output, in input and output pixels.
#[derive(Debug, Clone, Copy)]
pub struct TileGrid {
    /// Side of an input tile.
    pub tile_in: i64,
    /// Step between input tiles.
    pub stride: i64,
    /// Output rows and columns blended with the previous tile.
    pub blend: i64,
    /// Output rows and columns each tile contributes.
    pub keep: i64,
}

impl VaeTiling {
    /// The grid of a tiled encode (image in, moments out) for a VAE scaling by `downscale`.
    pub fn encode_grid(&self, downscale: i64) -> TileGrid {
        let latent_tile = self.tile_size / downscale;
        let blend = (latent_tile as f64 * self.overlap) as i64;
        TileGrid {
            tile_in: self.tile_size,
            stride: (self.tile_size as f64 * (1.0 - self.overlap)) as i64,
            blend,
            keep: latent_tile - blend,
        }
    }

    /// The grid of a tiled decode (latent in, image out).
    pub fn decode_grid(&self, downscale: i64) -> TileGrid {
        let latent_tile = self.tile_size / downscale;
        let blend = (self.tile_size as f64 * self.overlap) as i64;
        TileGrid {
            tile_in: latent_tile,
            stride: (latent_tile as f64 * (1.0 - self.overlap)) as i64,
            blend,
            keep: self.tile_size - blend,
        }
    }
}

/// Weights `(1 − i/extent, i/extent)` for `i` in `0..extent`, shaped to broadcast along `dim`
/// of an NCHW tensor. Computed in f64 and rounded once to the tensor's dtype: in f32 that is
/// the scalar diffusers multiplies by; in bf16/fp16 the weights of the default extents (16 and
/// 128) are exact anyway.
fn ramps(extent: i64, dim: usize, kind: Kind, device: tch::Device) -> (Tensor, Tensor) {
    let up: Vec<f64> = (0..extent).map(|i| i as f64 / extent as f64).collect();
    let down: Vec<f64> = up.iter().map(|w| 1.0 - w).collect();
    let mut shape = vec![1i64; 4];
    shape[dim] = extent;
    let make = |values: &[f64]| {
        Tensor::from_slice(values)
            .to_kind(kind)
            .reshape(&shape)
            .to_device(device)
    };
    (make(&down), make(&up))
}

/// Blends the first rows (`dim` 2) or columns (`dim` 3) of `b` with the last of `a`, in place.
fn blend(a: &Tensor, b: &Tensor, extent: i64, dim: usize) {
    let extent = extent.min(a.size()[dim]).min(b.size()[dim]);
    if extent == 0 {
        return;
    }
    let (down, up) = ramps(extent, dim, b.kind(), b.device());
    let tail = a.narrow(dim as i64, a.size()[dim] - extent, extent);
    let mut head = b.narrow(dim as i64, 0, extent);
    let blended = tail * down + &head * up;
    head.copy_(&blended);
}

/// Runs `f` over overlapping tiles of `input` [B, C, H, W] on `grid` and assembles the
/// blended result (diffusers' `tiled_encode` / `tiled_decode` loop); an input that fits in one
/// tile runs whole, as diffusers only tiles a side longer than a tile.
pub fn run_tiled(input: &Tensor, grid: TileGrid, f: impl Fn(&Tensor) -> Tensor) -> Tensor {
    let (height, width) = (input.size()[2], input.size()[3]);
    if height <= grid.tile_in && width <= grid.tile_in {
        return f(input);
    }
    // A stride of 0 (a tile of a pixel or two, or overlap 1) would never advance.
    let stride = grid.stride.max(1) as usize;
    let starts = |side: i64| (0..side).step_by(stride).collect::<Vec<_>>();
    let tile = |start: i64, side: i64| grid.tile_in.min(side - start);
    let mut rows: Vec<Vec<Tensor>> = Vec::new();
    for &i in &starts(height) {
        let band = input.narrow(2, i, tile(i, height));
        rows.push(
            starts(width)
                .iter()
                .map(|&j| f(&band.narrow(3, j, tile(j, width))))
                .collect(),
        );
    }
    // Blended in place in reading order: a tile meets its upper neighbour as that one was
    // blended already, then its left neighbour likewise.
    for i in 0..rows.len() {
        for j in 0..rows[i].len() {
            if i > 0 {
                blend(&rows[i - 1][j], &rows[i][j], grid.blend, 2);
            }
            if j > 0 {
                blend(&rows[i][j - 1], &rows[i][j], grid.blend, 3);
            }
        }
    }
    let kept = |t: &Tensor| {
        let (h, w) = (t.size()[2], t.size()[3]);
        t.narrow(2, 0, grid.keep.min(h))
            .narrow(3, 0, grid.keep.min(w))
    };
    let assembled: Vec<Tensor> = rows
        .iter()
        .map(|row| Tensor::cat(&row.iter().map(kept).collect::<Vec<_>>(), 3))
        .collect();
    Tensor::cat(&assembled, 2)
}
