//! Brownian-tree noise for the SDE samplers (DPM++ SDE, 2M SDE, 3M SDE).
//!
//! Each image has a Brownian motion W on [σ_min, σ_max] of the job's schedule, fixed by the
//! image's seed, so the noise an SDE sampler sees depends on the noise levels it visits and
//! not on the order or number of queries (k-diffusion's `BrownianTreeNoiseSampler`). W is
//! built as a dyadic Brownian bridge: W(σ_max) is drawn first, then each midpoint given its
//! two ends, down to a width of [`TOLERANCE`]; the value at a query point is interpolated
//! linearly inside the last interval (its bridge variance there is below the tolerance). Every
//! node's draw comes from its own generator, seeded from the image seed and the node's
//! position, so any query order gives the same W.
//!
//! Not bit-exact with A1111: A1111 uses torchsde 0.2.6's `BrownianInterval`, whose nodes are
//! seeded through numpy's `SeedSequence` and whose tree shape depends on the query history
//! and an LRU cache; reproducing it draw for draw is left for later (spec §3.6). The
//! distribution is the same, so images are equivalent, not identical.

use tch::{Device, Kind, Tensor};

use super::noise::BrownianNoise;
use super::session::StepFailure;
use crate::rng::Generator;

/// Width below which the bridge is not refined further (torchsde's default `tol`).
pub const TOLERANCE: f64 = 1e-6;

/// One image's Brownian motion.
struct Tree {
    seed: u64,
    t0: f64,
    t1: f64,
    w1: Tensor,
    shape: Vec<i64>,
}

/// splitmix64: spreads (seed, node) into well-separated generator seeds.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Tree {
    fn new(seed: u64, t0: f64, t1: f64, shape: &[i64]) -> Result<Self, StepFailure> {
        let mut tree = Tree {
            seed,
            t0,
            t1,
            w1: Tensor::zeros(shape, (Kind::Float, Device::Cpu)),
            shape: shape.to_vec(),
        };
        tree.w1 = tree.normal(0, 0)? * (t1 - t0).sqrt();
        Ok(tree)
    }

    /// The standard normal draw of node `index` at `depth` (depth 0: the end point).
    fn normal(&self, depth: u32, index: u64) -> Result<Tensor, StepFailure> {
        let node = mix(self.seed ^ mix((u64::from(depth) << 56) ^ index));
        let mut generator = Generator::new(node, Device::Cpu)
            .map_err(|e| StepFailure::failed(format!("Brownian tree: {e}")))?;
        generator
            .randn(&self.shape, Kind::Float)
            .map_err(|e| StepFailure::failed(format!("Brownian tree: {e}")))
    }

    /// W(t), with W(t0) = 0; t is clamped to [t0, t1].
    fn value(&self, t: f64) -> Result<Tensor, StepFailure> {
        let t = t.clamp(self.t0, self.t1);
        let (mut left, mut right) = (self.t0, self.t1);
        let mut w_left = Tensor::zeros(self.shape.as_slice(), (Kind::Float, Device::Cpu));
        let mut w_right = self.w1.shallow_clone();
        let (mut depth, mut index) = (1u32, 0u64);
        while right - left > TOLERANCE && depth < 60 {
            let mid = (left + right) / 2.0;
            let w_mid = (&w_left + &w_right) * 0.5
                + self.normal(depth, index)? * ((right - left) / 4.0).sqrt();
            if t < mid {
                right = mid;
                w_right = w_mid;
                index *= 2;
            } else {
                left = mid;
                w_left = w_mid;
                index = index * 2 + 1;
            }
            depth += 1;
        }
        let fraction = if right > left {
            (t - left) / (right - left)
        } else {
            0.0
        };
        Ok(&w_left * (1.0 - fraction) + &w_right * fraction)
    }
}

/// Per-image Brownian trees over a schedule's σ range (A1111 seeds them with the images'
/// seeds).
pub struct BrownianTreeNoise {
    trees: Vec<Tree>,
}

impl BrownianTreeNoise {
    /// Trees for `seeds` with latents of `shape` ([C, H, W]) over [σ_min, σ_max].
    pub fn new(
        seeds: &[u64],
        shape: [i64; 3],
        sigma_min: f64,
        sigma_max: f64,
    ) -> Result<Self, StepFailure> {
        if !(sigma_min > 0.0 && sigma_max > sigma_min) {
            return Err(StepFailure::failed(format!(
                "Brownian tree needs 0 < σ_min < σ_max, got {sigma_min} and {sigma_max}"
            )));
        }
        let trees = seeds
            .iter()
            .map(|&seed| Tree::new(seed, sigma_min, sigma_max, &shape))
            .collect::<Result<_, _>>()?;
        Ok(BrownianTreeNoise { trees })
    }
}

impl BrownianNoise for BrownianTreeNoise {
    fn increment(&mut self, sigma: f64, sigma_next: f64) -> Result<Tensor, StepFailure> {
        let scale = (sigma_next - sigma).abs().sqrt();
        if scale == 0.0 {
            return Err(StepFailure::failed(
                "Brownian increment over an empty interval",
            ));
        }
        let per_image = self
            .trees
            .iter()
            .map(|tree| Ok((tree.value(sigma_next)? - tree.value(sigma)?) / scale))
            .collect::<Result<Vec<_>, StepFailure>>()?;
        Ok(Tensor::stack(&per_image, 0))
    }
}
