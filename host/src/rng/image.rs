//! A1111's per-image noise source, `modules/rng.py: ImageRNG` (`first`, `next`, `slerp`).

use super::generator::{Generator, RngError};
use super::philox::Philox;
use tch::{Device, Kind, Tensor};

/// Where per-image noise comes from (A1111's "Random number generator source" option).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RngSource {
    /// libtorch's generator on a device: the CPU ("CPU") or a CUDA device ("GPU").
    Torch(Device),
    /// A1111's "NV": CUDA's Philox stream computed on the CPU.
    Nv,
}

/// One image's generator, of either source.
#[derive(Debug)]
enum SeedGenerator {
    Torch(Generator),
    Philox(Philox),
}

impl SeedGenerator {
    fn new(seed: u64, source: RngSource) -> Result<Self, RngError> {
        Ok(match source {
            RngSource::Torch(device) => SeedGenerator::Torch(Generator::new(seed, device)?),
            RngSource::Nv => SeedGenerator::Philox(Philox::new(seed)),
        })
    }

    fn randn(&mut self, shape: &[i64]) -> Result<Tensor, RngError> {
        match self {
            SeedGenerator::Torch(generator) => generator.randn(shape, Kind::Float),
            SeedGenerator::Philox(generator) => generator.randn(shape),
        }
    }
}

/// The first draw `[shape]` of a fresh generator of `source` seeded with `seed` (A1111's
/// `randn_local`, which also makes every draw of the SDE samplers' Brownian tree).
pub fn randn_local(seed: u64, shape: &[i64], source: RngSource) -> Result<Tensor, RngError> {
    SeedGenerator::new(seed, source)?.randn(shape)
}

/// A1111's "Extra" seed options: variation seeds and "resize seed from"
/// (`modules/processing_scripts/seed.py: ScriptSeed`, used by `modules/rng.py: ImageRNG.first`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Variation {
    /// The variation seed of each image; images past its end use 0, as A1111 does.
    pub subseeds: Vec<u64>,
    /// Variation strength: 0 keeps the seed's noise (no variation), 1 gives the variation seed's.
    pub strength: f64,
    /// "Resize seed from" (height, width) in pixels; off when `None` or a side is not positive.
    pub resize_from: Option<(i64, i64)>,
}

/// The initial and later sampler noise of a batch, each image drawing from its own generator.
///
/// Image `i` owns a generator seeded with `seeds[i]`, so its noise does not depend on the batch
/// size or its position in the batch. The generators are libtorch's on the device given to
/// [`ImageRng::new`] (the CPU for A1111's "CPU" RNG source, CUDA for its default "GPU" one) or,
/// with [`ImageRng::with_source`] and [`RngSource::Nv`], A1111's CPU Philox; the noise is made
/// there (float32) and the caller moves it to the model's device.
///
/// Unlike A1111, drawing never touches libtorch's global generator (A1111 leaves it seeded with
/// the batch's last seed through `torch.manual_seed` in `modules/rng.py: randn`, which only its
/// later VAE posterior sampling notices: ldm's `DiagonalGaussianDistribution.sample` draws
/// with `torch.randn` from that global generator).
#[derive(Debug)]
pub struct ImageRng {
    shape: [i64; 3],
    seeds: Vec<u64>,
    source: RngSource,
    variation: Variation,
    ensd: i64,
    generators: Vec<SeedGenerator>,
    started: bool,
}

impl ImageRng {
    /// Generators for `seeds` on `device`, drawing noise of one image's `shape` `[C, H, W]`.
    pub fn new(seeds: &[u64], shape: [i64; 3], device: Device) -> Result<Self, RngError> {
        Self::with_source(seeds, shape, RngSource::Torch(device))
    }

    /// Generators of `source` for `seeds`, drawing noise of one image's `shape` `[C, H, W]`.
    pub fn with_source(
        seeds: &[u64],
        shape: [i64; 3],
        source: RngSource,
    ) -> Result<Self, RngError> {
        if seeds.is_empty() {
            return Err(RngError::NoSeeds);
        }
        if shape.iter().any(|&size| size < 0) {
            return Err(RngError::InvalidShape(shape.to_vec()));
        }
        let generators = seeds
            .iter()
            .map(|&seed| SeedGenerator::new(seed, source))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            shape,
            seeds: seeds.to_vec(),
            source,
            variation: Variation::default(),
            ensd: 0,
            generators,
            started: false,
        })
    }

    /// Uses A1111's variation seed and "resize seed from" options for the initial noise.
    pub fn with_variation(mut self, variation: Variation) -> Self {
        self.variation = variation;
        self
    }

    /// Sets the eta noise seed delta: after [`Self::first`], image `i` draws from a new
    /// generator seeded with `seeds[i] + delta` (option `eta_noise_seed_delta`, applied at the
    /// end of `modules/rng.py: ImageRNG.first`); 0 (A1111's default) keeps its own.
    pub fn with_ensd(mut self, delta: i64) -> Self {
        self.ensd = delta;
        self
    }

    /// The initial noise `[B, C, H, W]`: each image's first draw, varied and resized as
    /// configured (A1111's `ImageRNG.first`).
    pub fn first(&mut self) -> Result<Tensor, RngError> {
        self.started = true;
        let shape = self.shape;
        let noise_shape = match self.variation.resize_from {
            Some((height, width)) if height > 0 && width > 0 => [shape[0], height / 8, width / 8],
            _ => shape,
        };
        let resized = noise_shape != shape;
        let strength = self.variation.strength;
        let mut images = Vec::with_capacity(self.seeds.len());
        for (i, (&seed, generator)) in self.seeds.iter().zip(&mut self.generators).enumerate() {
            // A1111 draws these two from its re-seeded global generator: the same numbers as
            // a fresh generator's first draw.
            let subnoise = if strength != 0.0 {
                let subseed = self.variation.subseeds.get(i).copied().unwrap_or(0);
                Some(SeedGenerator::new(subseed, self.source)?.randn(&noise_shape)?)
            } else {
                None
            };
            let mut noise = if resized {
                SeedGenerator::new(seed, self.source)?.randn(&noise_shape)?
            } else {
                generator.randn(&shape)?
            };
            if let Some(subnoise) = subnoise {
                noise = slerp(strength, &noise, &subnoise)?;
            }
            if resized {
                // The seed's noise at the old size lands centred in the image's own first draw.
                let full = generator.randn(&shape)?;
                paste_centred(&full, &noise)?;
                noise = full;
            }
            images.push(noise);
        }
        if self.ensd != 0 {
            self.generators = self
                .seeds
                .iter()
                .map(|&seed| SeedGenerator::new(seed.wrapping_add_signed(self.ensd), self.source))
                .collect::<Result<_, _>>()?;
        }
        Ok(Tensor::f_stack(&images, 0)?)
    }

    /// The next noise `[B, C, H, W]`: the next draw of each image's generator, or the initial
    /// noise when nothing was drawn yet (A1111's `ImageRNG.next`, which samplers call).
    // Named after A1111's method; an endless, fallible stream makes a poor Iterator.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Tensor, RngError> {
        if !self.started {
            return self.first();
        }
        let shape = self.shape;
        let draws = self
            .generators
            .iter_mut()
            .map(|generator| generator.randn(&shape))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Tensor::f_stack(&draws, 0)?)
    }
}

/// A1111's `slerp` [quirk]: norms and dot products over dim 1 (H) of `[C, H, W]` tensors, and
/// a linear blend with reversed weights when the inputs are nearly parallel.
fn slerp(val: f64, low: &Tensor, high: &Tensor) -> Result<Tensor, RngError> {
    // torch.norm(x, dim=1, keepdim=True) is linalg.vector_norm(x, 2, [1], True), as is this.
    let low_norm = low.f_div(&low.f_norm_scalaropt_dim(2.0, [1], true)?)?;
    let high_norm = high.f_div(&high.f_norm_scalaropt_dim(2.0, [1], true)?)?;
    let dot = low_norm
        .f_mul(&high_norm)?
        .f_sum_dim_intlist(1, false, None::<Kind>)?;
    // Compared in float32 with the threshold rounded to float32, as torch compares it.
    if dot.f_mean(None::<Kind>)?.f_gt(0.9995)?.f_int64_value(&[])? != 0 {
        return Ok(low
            .f_mul_scalar(val)?
            .f_add(&high.f_mul_scalar(1.0 - val)?)?);
    }
    let omega = dot.f_acos()?;
    let so = omega.f_sin()?;
    let low_weight = omega
        .f_mul_scalar(1.0 - val)?
        .f_sin()?
        .f_div(&so)?
        .f_unsqueeze(1)?;
    let high_weight = omega
        .f_mul_scalar(val)?
        .f_sin()?
        .f_div(&so)?
        .f_unsqueeze(1)?;
    Ok(low_weight.f_mul(low)?.f_add(&high_weight.f_mul(high)?)?)
}

/// Where a window of `small` elements goes in `full` ones, centred as A1111 centres it:
/// (offset in full, offset in small, length); a negative margin crops the small side.
fn centred_window(full: i64, small: i64) -> (i64, i64, i64) {
    // Python's floor division: the margin may be negative and odd.
    let margin = (full - small).div_euclid(2);
    let length = if margin >= 0 {
        small
    } else {
        small + 2 * margin
    };
    (margin.max(0), (-margin).max(0), length.max(0))
}

/// Copies the centred overlap of `noise` `[C, h, w]` into `full` `[C, H, W]`, in place.
fn paste_centred(full: &Tensor, noise: &Tensor) -> Result<(), RngError> {
    let (full_size, small_size) = (full.size(), noise.size());
    let (ty, sy, h) = centred_window(full_size[1], small_size[1]);
    let (tx, sx, w) = centred_window(full_size[2], small_size[2]);
    let source = noise.f_narrow(1, sy, h)?.f_narrow(2, sx, w)?;
    full.f_narrow(1, ty, h)?
        .f_narrow(2, tx, w)?
        .f_copy_(&source)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::centred_window;

    #[test]
    fn centred_window_matches_python_floor_division() {
        // (full, small) -> (target offset, source offset, length), worked out with Python.
        assert_eq!(centred_window(8, 4), (2, 0, 4));
        assert_eq!(centred_window(8, 5), (1, 0, 5));
        assert_eq!(centred_window(5, 8), (0, 2, 4));
        assert_eq!(centred_window(4, 8), (0, 2, 4));
        assert_eq!(centred_window(6, 6), (0, 0, 6));
        assert_eq!(centred_window(0, 3), (0, 2, 0));
    }
}
