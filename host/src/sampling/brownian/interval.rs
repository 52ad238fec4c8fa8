//! One image's Brownian motion: torchsde 0.2.6's `BrownianInterval` in the configuration
//! `BrownianTree` gives it (`torchsde/_brownian/brownian_interval.py: BrownianInterval`,
//! `torchsde/_brownian/derived.py: BrownianTree`): a halfway tree, `tol` 1e-6, a pool of 24
//! words, no Lévy area.
//!
//! The tree: the root holds W over [t0, t1]; each node splits at its halfway point rounded to
//! the tolerance's six decimals, and a child's increment is drawn from the Brownian bridge of
//! its parent, with the parent's own generator seed (numpy `SeedSequence` of the entropy and
//! the parent's position). Query times are rounded to six decimals too, so every query end is
//! a node boundary and the increment over [ta, tb] is the sum of the tree's nodes that tile it,
//! left to right.
//!
//! torchsde finds those nodes by walking from the last interval it visited, and keeps an LRU
//! cache of node increments; neither changes a value: with halfway splits the tree's shape is
//! fixed by the entropy alone, the tiling of [ta, tb] is the same from any starting node, and a
//! node recomputed after leaving the cache is drawn from the same seed. So this port descends
//! from the root and keeps its own cache for speed only.
//!
//! The arithmetic follows torchsde's: times and coefficients in float64 (Python floats), the
//! tensors in float32 with each float64 coefficient rounded to float32 at its multiplication,
//! in torchsde's order.

use std::collections::HashMap;

use tch::{Device, Tensor};

use super::BrownianError;
use crate::rng::seed_sequence::SeedSequence;
use crate::rng::{randn_local, RngSource};

/// `BrownianTree`'s default tolerance: times are resolved to this (six decimals).
pub const TOLERANCE: f64 = 1e-6;
/// Decimals kept by torchsde's rounding, `-int(log10(tol))`.
const DECIMALS: usize = 6;
/// `BrownianTree`'s default `pool_size` for the node seeds.
pub const POOL_SIZE: usize = 24;
/// Node increments kept; any size gives the same values (torchsde keeps 45).
const CACHE_SIZE: usize = 64;
/// Deepest node a spawn key can name (keys double per level); real ranges need about 40.
const MAX_DEPTH: u32 = 120;

/// Python's `round(x, 6)`: the decimal value correctly rounded, ties to even, read back as the
/// nearest float64 (CPython formats with `_Py_dg_dtoa` and parses with `_Py_dg_strtod`).
pub fn round_time(x: f64) -> f64 {
    if !x.is_finite() {
        return x;
    }
    // Rust prints the exact binary value rounded half to even, and parses correctly rounded.
    format!("{x:.DECIMALS$}").parse().unwrap_or(x)
}

/// A node of the tree: its interval and its position (torchsde's spawn key and depth).
#[derive(Debug, Clone, Copy)]
struct Node {
    start: f64,
    end: f64,
    /// 2·parent's key, plus one for a right child; the root's is 0.
    key: u128,
    depth: u32,
}

impl Node {
    /// Where the node splits: its halfway point, rounded as every time is.
    fn midway(&self) -> f64 {
        round_time(0.5 * (self.end + self.start))
    }

    fn children(&self) -> Result<(Node, Node), BrownianError> {
        if self.depth >= MAX_DEPTH {
            return Err(BrownianError::TooDeep(self.start, self.end));
        }
        let midway = self.midway();
        let child = |start, end, bit| Node {
            start,
            end,
            key: 2 * self.key + bit,
            depth: self.depth + 1,
        };
        Ok((child(self.start, midway, 0), child(midway, self.end, 1)))
    }

    fn is_left(&self) -> bool {
        self.key % 2 == 0
    }
}

/// One image's Brownian motion on [t0, t1], fixed by its entropy (A1111: the image's seed).
pub struct BrownianInterval {
    entropy: u128,
    source: RngSource,
    device: Device,
    shape: Vec<i64>,
    root: Node,
    /// W(t1) − W(t0).
    w: Tensor,
    cache: HashMap<(u32, u128), (Tensor, u64)>,
    clock: u64,
}

impl BrownianInterval {
    /// The motion for `entropy` on [t0, t1] (t0 ≤ t1) with increments of `shape` on `device`,
    /// drawn from fresh generators of `source` as A1111's `randn_local` draws them.
    pub fn new(
        entropy: u64,
        t0: f64,
        t1: f64,
        shape: &[i64],
        source: RngSource,
        device: Device,
    ) -> Result<Self, BrownianError> {
        if !(t0.is_finite() && t1.is_finite() && t0 <= t1) {
            return Err(BrownianError::InvalidRange(t0, t1));
        }
        let entropy = u128::from(entropy);
        let root_seed = SeedSequence::new(entropy, &[], POOL_SIZE)?.generate_state_u32(1)[0];
        // torchsde also draws the root's space-time Lévy area from the next word; it never
        // enters an increment, and each draw has its own generator, so it is skipped here.
        let w = randn_local(u64::from(root_seed), shape, source)?
            .f_to_device(device)?
            .f_mul_scalar((t1 - t0).sqrt())?;
        Ok(BrownianInterval {
            entropy,
            source,
            device,
            shape: shape.to_vec(),
            root: Node {
                start: round_time(t0),
                end: round_time(t1),
                key: 0,
                depth: 0,
            },
            w,
            cache: HashMap::new(),
            clock: 0,
        })
    }

    /// W(tb) − W(ta) for ta ≤ tb, clamped to the interval as torchsde clamps them.
    pub fn increment(&mut self, ta: f64, tb: f64) -> Result<Tensor, BrownianError> {
        if !(ta.is_finite() && tb.is_finite()) || ta > tb {
            return Err(BrownianError::InvalidQuery(ta, tb));
        }
        let (start, end) = (self.root.start, self.root.end);
        // torchsde compares the unrounded query with the rounded ends.
        let ta = if ta < start { start } else { ta.min(end) };
        let tb = if tb < start { start } else { tb.min(end) };
        let (ta, tb) = (round_time(ta), round_time(tb));
        if ta == tb {
            // torchsde returns zeros when the unrounded times are equal; when only the
            // rounded ones are, it either finds an empty node (zero too) or recurses forever.
            return Ok(self.w.f_zeros_like()?);
        }
        let mut tiles = Vec::new();
        tile(self.root, ta, tb, &mut vec![self.root], &mut tiles)?;
        let mut sum: Option<Tensor> = None;
        for path in &tiles {
            let w = self.node_increment(path)?;
            sum = Some(match sum {
                None => w,
                Some(sum) => sum.f_add(&w)?,
            });
        }
        sum.ok_or(BrownianError::InvalidQuery(ta, tb))
    }

    /// The increment over the last node of `path` (root first), from its nearest cached
    /// ancestor down.
    fn node_increment(&mut self, path: &[Node]) -> Result<Tensor, BrownianError> {
        let mut known = 0;
        let mut w = self.w.shallow_clone();
        for (i, node) in path.iter().enumerate().skip(1).rev() {
            if let Some((cached, used)) = self.cache.get_mut(&(node.depth, node.key)) {
                self.clock += 1;
                *used = self.clock;
                w = cached.shallow_clone();
                known = i;
                break;
            }
        }
        for pair in path[known..].windows(2) {
            w = self.child_increment(&pair[0], &w, pair[1].is_left())?;
            self.remember(&pair[1], &w);
        }
        Ok(w)
    }

    /// A child's increment from its parent's `w`: the left part is the Brownian bridge
    /// mean + sd·noise with the parent's noise, the right part the rest
    /// (`_Interval._increment_and_space_time_levy_area` without Lévy area).
    fn child_increment(
        &self,
        parent: &Node,
        w: &Tensor,
        left: bool,
    ) -> Result<Tensor, BrownianError> {
        let midway = parent.midway();
        let h_reciprocal = 1.0 / (parent.end - parent.start);
        let left_diff = midway - parent.start;
        let right_diff = parent.end - midway;
        let seed = SeedSequence::new(
            self.entropy,
            &[parent.key, u128::from(parent.depth)],
            POOL_SIZE,
        )?
        // torchsde asks for four words (W, H and two Lévy-area seeds); the first does not
        // depend on how many follow.
        .generate_state_u32(1)[0];
        let noise =
            randn_local(u64::from(seed), &self.shape, self.source)?.f_to_device(self.device)?;
        let mean = w.f_mul_scalar(left_diff)?.f_mul_scalar(h_reciprocal)?;
        let variance = left_diff * right_diff * h_reciprocal;
        let left_w = mean.f_add(&noise.f_mul_scalar(variance.sqrt())?)?;
        Ok(if left { left_w } else { w.f_sub(&left_w)? })
    }

    /// Caches a node's increment, dropping the least recently used one when full.
    fn remember(&mut self, node: &Node, w: &Tensor) {
        if self.cache.len() >= CACHE_SIZE {
            let oldest = self
                .cache
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(key, _)| *key);
            if let Some(oldest) = oldest {
                self.cache.remove(&oldest);
            }
        }
        self.clock += 1;
        self.cache
            .insert((node.depth, node.key), (w.shallow_clone(), self.clock));
    }
}

/// The nodes tiling [ta, tb] inside `node`, left to right, each as its path from the root
/// (`_Interval._loc_inner`; `path` ends with `node`).
fn tile(
    node: Node,
    ta: f64,
    tb: f64,
    path: &mut Vec<Node>,
    tiles: &mut Vec<Vec<Node>>,
) -> Result<(), BrownianError> {
    if ta == node.start && tb == node.end {
        tiles.push(path.clone());
        return Ok(());
    }
    let (left, right) = node.children()?;
    let midway = left.end;
    let mut descend = |child: Node, ta: f64, tb: f64, path: &mut Vec<Node>| {
        path.push(child);
        let result = tile(child, ta, tb, path, tiles);
        path.pop();
        result
    };
    if tb <= midway {
        descend(left, ta, tb, path)
    } else if ta >= midway {
        descend(right, ta, tb, path)
    } else {
        descend(left, ta, midway, path)?;
        descend(right, midway, tb, path)
    }
}

#[cfg(test)]
mod tests {
    use super::round_time;

    #[test]
    fn times_round_like_python() {
        // Values from CPython 3.11's round(x, 6).
        assert_eq!(round_time(0.0078125), 0.007812);
        assert_eq!(round_time(0.0234375), 0.023438);
        assert_eq!(round_time(14.614642143249512), 14.614642);
        assert_eq!(round_time(0.029167499393224716), 0.029167);
        assert_eq!(round_time(7.3073215), 7.307321);
        assert_eq!(round_time(7.3219045), 7.321904);
    }
}
