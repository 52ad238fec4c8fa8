//! A job's seed list (A1111 `modules/processing.py: get_fixed_seed, process_images_inner`).

/// A1111's upper bound (exclusive) for a random seed: `random.randrange(4294967294)`.
pub const RANDOM_SEED_BOUND: u64 = 4_294_967_294;

/// The seeds of every image of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedList {
    /// The seed of each image, batch after batch.
    pub seeds: Vec<u64>,
    /// The variation seed of each image.
    pub subseeds: Vec<u64>,
}

/// A requested seed: −1 (or any negative) asks for a random one, as in A1111.
pub fn fixed_seed(requested: i64, random: impl FnOnce() -> u64) -> u64 {
    if requested < 0 {
        random() % RANDOM_SEED_BOUND
    } else {
        requested as u64
    }
}

/// A random seed in A1111's range, from the system's entropy.
pub fn random_seed() -> u64 {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    hasher.finish() % RANDOM_SEED_BOUND
}

impl SeedList {
    /// Seeds for `count` images: `seed + i` each, or `seed` for all when a variation strength is
    /// set (the variation seeds then vary: `subseed + i`).
    pub fn new(seed: u64, subseed: u64, subseed_strength: f64, count: usize) -> Self {
        let varied = subseed_strength != 0.0;
        SeedList {
            seeds: (0..count as u64)
                .map(|i| if varied { seed } else { seed.wrapping_add(i) })
                .collect(),
            subseeds: (0..count as u64).map(|i| subseed.wrapping_add(i)).collect(),
        }
    }

    /// The seeds of batch `n` of `batch_size` images.
    pub fn batch(&self, n: usize, batch_size: usize) -> (&[u64], &[u64]) {
        let start = (n * batch_size).min(self.seeds.len());
        let end = (start + batch_size).min(self.seeds.len());
        (&self.seeds[start..end], &self.subseeds[start..end])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_as_a1111_lists_them() {
        let list = SeedList::new(100, 7, 0.0, 6);
        assert_eq!(list.seeds, [100, 101, 102, 103, 104, 105]);
        assert_eq!(list.subseeds, [7, 8, 9, 10, 11, 12]);
        assert_eq!(list.batch(1, 4), (&[104u64, 105][..], &[11u64, 12][..]));
        let varied = SeedList::new(100, 7, 0.3, 3);
        assert_eq!(varied.seeds, [100, 100, 100]);
        assert_eq!(varied.subseeds, [7, 8, 9]);
        assert_eq!(fixed_seed(-1, || 4_294_967_295), 1);
        assert_eq!(fixed_seed(42, || unreachable!()), 42);
        assert!(random_seed() < RANDOM_SEED_BOUND);
    }
}
