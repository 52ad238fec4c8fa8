//! numpy's `SeedSequence` (`numpy/random/bit_generator.pyx`), which torchsde 0.2.6 uses to
//! give every node of a Brownian tree its own generator seed, and `np.random.default_rng`
//! to seed its PCG64 ([`super::pcg64`]).
//!
//! Ported rather than replaced by any other seed mixer because A1111's SDE noise is drawn from
//! these exact seeds: only the same 32-bit words give the same pictures.

/// Smallest pool numpy accepts (its default).
pub const MIN_POOL_SIZE: usize = 4;

const INIT_A: u32 = 0x43b0_d7e5;
const MULT_A: u32 = 0x931e_8875;
const INIT_B: u32 = 0x8b51_f9dd;
const MULT_B: u32 = 0x58f3_8ded;
const MIX_MULT_L: u32 = 0xca01_f9dd;
const MIX_MULT_R: u32 = 0x4973_f715;
/// Half the bits of a word.
const XSHIFT: u32 = 16;

/// A pool size below numpy's minimum (numpy raises `ValueError` for it too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("SeedSequence pool size {0} is below numpy's minimum of {MIN_POOL_SIZE}")]
pub struct PoolSizeError(pub usize);

/// A seeded entropy pool, like `numpy.random.SeedSequence(entropy, spawn_key=..., pool_size=...)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedSequence {
    pool: Vec<u32>,
}

/// The hash applied to each word entering the pool; advances the hash constant.
fn hashmix(value: u32, hash_const: &mut u32) -> u32 {
    let mut value = value ^ *hash_const;
    *hash_const = hash_const.wrapping_mul(MULT_A);
    value = value.wrapping_mul(*hash_const);
    value ^ (value >> XSHIFT)
}

/// Combines a pool word with a hashed word.
fn mix(x: u32, y: u32) -> u32 {
    let result = MIX_MULT_L
        .wrapping_mul(x)
        .wrapping_sub(MIX_MULT_R.wrapping_mul(y));
    result ^ (result >> XSHIFT)
}

/// A non-negative integer as numpy coerces it: 32-bit words, least significant first, and
/// one zero word for 0.
fn int_words(mut n: u128) -> Vec<u32> {
    if n == 0 {
        return vec![0];
    }
    let mut words = Vec::new();
    while n > 0 {
        words.push(n as u32);
        n >>= 32;
    }
    words
}

impl SeedSequence {
    /// The pool for `entropy` and `spawn_key` (each key an integer, as torchsde passes them).
    pub fn new(entropy: u128, spawn_key: &[u128], pool_size: usize) -> Result<Self, PoolSizeError> {
        if pool_size < MIN_POOL_SIZE {
            return Err(PoolSizeError(pool_size));
        }
        Ok(Self::build(entropy, spawn_key, pool_size))
    }

    /// `SeedSequence(entropy)`: numpy's default pool, no spawn key (`np.random.default_rng`).
    pub fn from_entropy(entropy: u128) -> Self {
        Self::build(entropy, &[], MIN_POOL_SIZE)
    }

    fn build(entropy: u128, spawn_key: &[u128], pool_size: usize) -> Self {
        let mut assembled = int_words(entropy);
        if !spawn_key.is_empty() && assembled.len() < pool_size {
            // numpy (since 1.19) pads the run entropy to the pool size when a spawn key
            // follows, so that keys cannot collide with longer entropy.
            assembled.resize(pool_size, 0);
        }
        for &key in spawn_key {
            assembled.extend(int_words(key));
        }

        let mut pool = vec![0u32; pool_size];
        let mut hash_const = INIT_A;
        for (i, slot) in pool.iter_mut().enumerate() {
            *slot = hashmix(assembled.get(i).copied().unwrap_or(0), &mut hash_const);
        }
        // Every word affects every other, late ones included.
        for src in 0..pool_size {
            for dst in 0..pool_size {
                if src != dst {
                    let hashed = hashmix(pool[src], &mut hash_const);
                    pool[dst] = mix(pool[dst], hashed);
                }
            }
        }
        // Entropy beyond the pool is folded into every word.
        for &word in assembled.iter().skip(pool_size) {
            for slot in pool.iter_mut() {
                let hashed = hashmix(word, &mut hash_const);
                *slot = mix(*slot, hashed);
            }
        }
        SeedSequence { pool }
    }

    /// `generate_state(n)` with numpy's default dtype, uint32.
    pub fn generate_state_u32(&self, n: usize) -> Vec<u32> {
        let mut hash_const = INIT_B;
        self.pool
            .iter()
            .cycle()
            .take(n)
            .map(|&word| {
                let mut value = word ^ hash_const;
                hash_const = hash_const.wrapping_mul(MULT_B);
                value = value.wrapping_mul(hash_const);
                value ^ (value >> XSHIFT)
            })
            .collect()
    }

    /// `generate_state(n, dtype=np.uint64)`: pairs of 32-bit words, little end first.
    pub fn generate_state_u64(&self, n: usize) -> Vec<u64> {
        self.generate_state_u32(2 * n)
            .chunks_exact(2)
            .map(|pair| u64::from(pair[0]) | (u64::from(pair[1]) << 32))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_become_little_endian_words() {
        assert_eq!(int_words(0), [0]);
        assert_eq!(int_words(5), [5]);
        assert_eq!(int_words((7 << 32) | 9), [9, 7]);
    }

    #[test]
    fn pools_below_numpys_minimum_are_refused() {
        assert_eq!(SeedSequence::new(1, &[], 3), Err(PoolSizeError(3)));
    }
}
