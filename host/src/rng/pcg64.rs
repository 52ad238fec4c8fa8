//! NumPy's `np.random.default_rng(seed)`: the PCG64 bit generator seeded through a
//! `SeedSequence` (`numpy/random/bit_generator.pyx: SeedSequence`, `numpy/random/_pcg64.pyx`,
//! `numpy/random/src/pcg64/pcg64.h`), and `Generator.random()`'s doubles.
//!
//! A1111's Outpainting mk2 draws its starting noise from `default_rng(0)`
//! (`scripts/outpainting_mk_2.py: get_matched_noise`), so the same stream is needed here to make
//! the same fill.

/// `SeedSequence`'s hash constants.
const INIT_A: u32 = 0x43b0_d7e5;
const MULT_A: u32 = 0x931e_8875;
const INIT_B: u32 = 0x8b51_f9dd;
const MULT_B: u32 = 0x58f3_8ded;
const MIX_MULT_L: u32 = 0xca01_f9dd;
const MIX_MULT_R: u32 = 0x4973_f715;
const XSHIFT: u32 = 16;
const POOL_SIZE: usize = 4;

/// PCG's 128-bit LCG multiplier.
const PCG_MULT: u128 = (2_549_297_995_355_413_924u128 << 64) | 4_865_540_595_714_422_341u128;

/// A PCG64 stream as NumPy's `default_rng` makes it.
#[derive(Debug, Clone)]
pub struct NumpyPcg64 {
    state: u128,
    inc: u128,
}

fn hashmix(value: u32, hash_const: &mut u32) -> u32 {
    let mut value = value ^ *hash_const;
    *hash_const = hash_const.wrapping_mul(MULT_A);
    value = value.wrapping_mul(*hash_const);
    value ^ (value >> XSHIFT)
}

fn mix(x: u32, y: u32) -> u32 {
    let result = MIX_MULT_L
        .wrapping_mul(x)
        .wrapping_sub(MIX_MULT_R.wrapping_mul(y));
    result ^ (result >> XSHIFT)
}

/// `SeedSequence(seed).pool` for a non-negative integer seed without spawn key.
fn seed_pool(seed: u64) -> [u32; POOL_SIZE] {
    // `_int_to_uint32_array`: 32-bit words, least significant first; 0 is one word.
    let mut entropy = vec![seed as u32];
    if seed >> 32 != 0 {
        entropy.push((seed >> 32) as u32);
    }
    entropy.resize(entropy.len().max(POOL_SIZE), 0);
    let mut hash_const = INIT_A;
    let mut pool = [0u32; POOL_SIZE];
    for (i, slot) in pool.iter_mut().enumerate() {
        *slot = hashmix(entropy[i], &mut hash_const);
    }
    for src in 0..POOL_SIZE {
        for dst in 0..POOL_SIZE {
            if src != dst {
                pool[dst] = mix(pool[dst], hashmix(pool[src], &mut hash_const));
            }
        }
    }
    for &word in &entropy[POOL_SIZE..] {
        for slot in pool.iter_mut() {
            *slot = mix(*slot, hashmix(word, &mut hash_const));
        }
    }
    pool
}

/// `SeedSequence.generate_state(4, np.uint64)`.
fn generate_state(pool: &[u32; POOL_SIZE]) -> [u64; 4] {
    let mut hash_const = INIT_B;
    let mut words = [0u32; 8];
    for (i, word) in words.iter_mut().enumerate() {
        let mut value = pool[i % POOL_SIZE] ^ hash_const;
        hash_const = hash_const.wrapping_mul(MULT_B);
        value = value.wrapping_mul(hash_const);
        *word = value ^ (value >> XSHIFT);
    }
    // Little-endian pairs of 32-bit words.
    std::array::from_fn(|i| u64::from(words[2 * i]) | (u64::from(words[2 * i + 1]) << 32))
}

impl NumpyPcg64 {
    /// `np.random.default_rng(seed)`.
    pub fn new(seed: u64) -> Self {
        let state = generate_state(&seed_pool(seed));
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
