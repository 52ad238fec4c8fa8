//! NumPy's `np.random.default_rng(seed)`: the PCG64 bit generator seeded through a
//! `SeedSequence` (`numpy/random/bit_generator.pyx: SeedSequence`, `numpy/random/_pcg64.pyx`,
//! `numpy/random/src/pcg64/pcg64.h`), and `Generator.random()`'s doubles.
//!
//! A1111's Outpainting mk2 draws its starting noise from `default_rng(0)`
//! (`scripts/outpainting_mk_2.py: get_matched_noise`), so the same stream is needed here to make
//! the same fill.

use super::seed_sequence::SeedSequence;

/// PCG's 128-bit LCG multiplier.
const PCG_MULT: u128 = (2_549_297_995_355_413_924u128 << 64) | 4_865_540_595_714_422_341u128;

/// A PCG64 stream as NumPy's `default_rng` makes it.
#[derive(Debug, Clone)]
pub struct NumpyPcg64 {
    state: u128,
    inc: u128,
}

impl NumpyPcg64 {
    /// `np.random.default_rng(seed)`.
    pub fn new(seed: u64) -> Self {
        let state = SeedSequence::from_entropy(u128::from(seed)).generate_state_u64(4);
        let initstate = (u128::from(state[0]) << 64) | u128::from(state[1]);
        let initseq = (u128::from(state[2]) << 64) | u128::from(state[3]);
        // `pcg_setseq_128_srandom_r`.
        let mut rng = NumpyPcg64 {
            state: 0,
            inc: (initseq << 1) | 1,
        };
        rng.step();
        rng.state = rng.state.wrapping_add(initstate);
        rng.step();
        rng
    }

    fn step(&mut self) {
        self.state = self.state.wrapping_mul(PCG_MULT).wrapping_add(self.inc);
    }

    /// The next 64 random bits (PCG's XSL-RR output after a step).
    pub fn next_u64(&mut self) -> u64 {
        self.step();
        let folded = ((self.state >> 64) as u64) ^ (self.state as u64);
        folded.rotate_right((self.state >> 122) as u32)
    }

    /// `Generator.random()`: a double in [0, 1) from the top 53 bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / 9_007_199_254_740_992.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_rng_zero_starts_with_numpys_values() {
        // `np.random.default_rng(0).random(3)` (NumPy 2.x; the stream is stable across versions).
        let mut rng = NumpyPcg64::new(0);
        let values: Vec<f64> = (0..3).map(|_| rng.next_f64()).collect();
        assert_eq!(
            values,
            [0.6369616873214543, 0.2697867137638703, 0.04097352393619469]
        );
        // A seed wider than 32 bits takes two entropy words.
        let mut rng = NumpyPcg64::new((1 << 40) + 5);
        assert_eq!(
            [rng.next_f64(), rng.next_f64()],
            [0.004739459374490829, 0.3725845824112115]
        );
    }
}
