//! A1111's "NV" RNG source (`modules/rng_philox.py`): the stream CUDA's `torch.randn` makes
//! (Philox4x32-10 counters and Box–Muller), computed on the CPU so that images made on NVIDIA
//! GPUs can be reproduced anywhere (`modules/rng.py: create_generator` picks it for the
//! `randn_source` option "NV").
//!
//! A1111 does the Box–Muller arithmetic in float64 with float32-rounded constants (numpy's
//! promotion of uint32 × float32) and rounds the result to float32; so does this. The result
//! equals A1111's NV values; against real CUDA draws it differs by about one float32 ulp,
//! because cuRAND computes the same formula in float32.

use tch::{Device, Kind, Tensor};

use super::generator::RngError;

const PHILOX_M: [u64; 2] = [0xD251_1F53, 0xCD9E_8D57];
const PHILOX_W: [u32; 2] = [0x9E37_79B9, 0xBB67_AE85];
/// 2⁻³² as the float32 numpy constant A1111 uses.
const TWO_POW32_INV: f32 = 2.328_306_4e-10;

/// One Philox generator: a seed and the number of draws made so far.
#[derive(Debug, Clone)]
pub struct Philox {
    seed: u64,
    offset: u32,
}

/// Ten Philox4x32 rounds on one counter.
fn philox4_32(mut counter: [u32; 4], seed: u64) -> [u32; 4] {
    let mut key = [seed as u32, (seed >> 32) as u32];
    for round in 0..10 {
        let v1 = u64::from(counter[0]) * PHILOX_M[0];
        let v2 = u64::from(counter[2]) * PHILOX_M[1];
        counter = [
            (v2 >> 32) as u32 ^ counter[1] ^ key[0],
            v2 as u32,
            (v1 >> 32) as u32 ^ counter[3] ^ key[1],
            v1 as u32,
        ];
        if round < 9 {
            key = [
                key[0].wrapping_add(PHILOX_W[0]),
                key[1].wrapping_add(PHILOX_W[1]),
            ];
        }
    }
    counter
}

/// The first Box–Muller output of two 32-bit draws, in A1111's float64 arithmetic.
fn box_muller(x: u32, y: u32) -> f32 {
    let inv = f64::from(TWO_POW32_INV);
    // numpy builds this constant from the float64 product, then stores it as float32.
    let inv_2pi = f64::from((2.328_306_4e-10_f64 * 6.283_185_5_f64) as f32);
    let u = f64::from(x) * inv + f64::from(TWO_POW32_INV / 2.0);
    let v = f64::from(y) * inv_2pi + f64::from((inv_2pi as f32) / 2.0);
    ((-2.0 * u.ln()).sqrt() * v.sin()) as f32
}

impl Philox {
    /// A generator for `seed`, at the start of its stream.
    pub fn new(seed: u64) -> Self {
        Philox { seed, offset: 0 }
    }

    /// The next draw of standard normal noise of `shape`, float32 on the CPU.
    pub fn randn(&mut self, shape: &[i64]) -> Result<Tensor, RngError> {
        if shape.iter().any(|&s| s < 0) {
            return Err(RngError::InvalidShape(shape.to_vec()));
        }
        let n: i64 = shape.iter().product();
        if n > i64::from(u32::MAX) {
            return Err(RngError::InvalidShape(shape.to_vec()));
        }
        let values: Vec<f32> = (0..n as u32)
            .map(|i| {
                let out = philox4_32([self.offset, 0, i, 0], self.seed);
                box_muller(out[0], out[1])
            })
            .collect();
        self.offset = self.offset.wrapping_add(1);
        Ok(Tensor::from_slice(&values)
            .f_reshape(shape)?
            .f_to_kind(Kind::Float)?
            .f_to_device(Device::Cpu)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a1111_nv_values_of_the_spec() {
        // A1111's `modules/rng_philox.py` run with numpy 1.26: seed 0, shape (3, 4), first row.
        let mut g = Philox::new(0);
        let draw = g.randn(&[3, 4]).unwrap();
        let row: Vec<f32> = Vec::try_from(draw.get(0)).unwrap();
        assert_eq!(
            row,
            [-0.924_662_4, -0.425_343_96, -2.643_845_8, 0.145_183_88]
        );
        // The next call continues the stream (offset 1), not a repeat.
        let second = g.randn(&[3, 4]).unwrap();
        assert!((second - draw).abs().max().double_value(&[]) > 0.1);
    }
}
