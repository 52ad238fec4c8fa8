//! The prompt conditioning of recent jobs, kept per model so that a job repeating a prompt
//! spends no time in the text encoders. A1111 keeps the last prompt's and negative prompt's
//! conditioning (`StableDiffusionProcessing.cached_c` / `cached_uc`, keyed by what
//! `get_conds_with_caching` compares); this keeps the last few, keyed by everything the
//! encoders' output depends on.

use std::collections::VecDeque;

use super::conditioning::{CondPart, ScheduledCond};

/// How many conditionings a model keeps (each is a few hundred KB per prompt chunk).
pub const CACHED_CONDITIONINGS: usize = 8;

/// Everything a job's conditioning depends on besides the model itself (whose weights, dtype
/// and device are fixed for its lifetime; each loaded model has its own cache).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CondKey {
    /// The prompt as encoded (its extra-network tags taken out).
    pub prompt: String,
    /// The negative prompt.
    pub negative_prompt: String,
    /// Clip skip.
    pub clip_skip: usize,
    /// Model calls the prompt-editing schedule spans (steps, twice for second-order samplers).
    pub schedule_calls: usize,
    /// The job's size, for the models whose conditioning embeds it (SDXL); `None` otherwise.
    /// (SDXL's crop and aesthetic scores are A1111's defaults, the same for every job.)
    pub size: Option<(u32, u32)>,
    /// The embeddings the prompts may use ([`EmbeddingDatabase::fingerprint`]).
    ///
    /// [`EmbeddingDatabase::fingerprint`]: super::embeddings::EmbeddingDatabase::fingerprint
    pub embeddings: u64,
    /// The LoRA set patched into the weights (load ids and multipliers): a LoRA can change
    /// the text encoder.
    pub networks: Vec<(u64, [u64; 3])>,
}

/// A cached conditioning: the prompt's parts, the negative prompt and the infotext's
/// `TI hashes` they give.
pub struct CachedConditioning {
    /// The prompt's `AND` parts, scheduled.
    pub cond: Vec<CondPart>,
    /// The negative prompt, scheduled.
    pub uncond: Vec<ScheduledCond>,
    /// Infotext `TI hashes`.
    pub ti_hashes: Option<String>,
}

impl CachedConditioning {
    /// The same conditioning sharing its tensors (nothing writes into conditioning tensors).
    pub fn share(&self) -> Self {
        Self {
            cond: self
                .cond
                .iter()
                .map(|part| CondPart {
                    schedule: share_schedule(&part.schedule),
                    weight: part.weight,
                })
                .collect(),
            uncond: share_schedule(&self.uncond),
            ti_hashes: self.ti_hashes.clone(),
        }
    }
}

fn share_schedule(schedule: &[ScheduledCond]) -> Vec<ScheduledCond> {
    schedule
        .iter()
        .map(|s| ScheduledCond {
            end_at_step: s.end_at_step,
            cond: s.cond.shallow_clone(),
        })
        .collect()
}

/// The last [`CACHED_CONDITIONINGS`] conditionings, most recently used first.
pub struct ConditioningCache {
    entries: VecDeque<(CondKey, CachedConditioning)>,
    capacity: usize,
    hits: u64,
    misses: u64,
}

impl Default for ConditioningCache {
    fn default() -> Self {
        Self::with_capacity(CACHED_CONDITIONINGS)
    }
}

impl ConditioningCache {
    /// A cache of at most `capacity` entries (0 keeps nothing).
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            entries: VecDeque::with_capacity(capacity),
            capacity,
            hits: 0,
            misses: 0,
        }
    }

    /// The conditioning stored for `key`, sharing its tensors; it becomes the most recent.
    pub fn get(&mut self, key: &CondKey) -> Option<CachedConditioning> {
        let Some(at) = self.entries.iter().position(|(k, _)| k == key) else {
            self.misses += 1;
            return None;
        };
        self.hits += 1;
        let entry = self.entries.remove(at).expect("found above");
        let shared = entry.1.share();
        self.entries.push_front(entry);
        Some(shared)
    }

    /// Stores `value` for `key` as the most recent, dropping the least recent beyond the
    /// capacity.
    pub fn insert(&mut self, key: CondKey, value: CachedConditioning) {
        if self.capacity == 0 {
            return;
        }
        self.entries.retain(|(k, _)| *k != key);
        self.entries.push_front((key, value));
        self.entries.truncate(self.capacity);
    }

    /// Lookups that found their key, and those that did not.
    pub fn stats(&self) -> (u64, u64) {
        (self.hits, self.misses)
    }

    /// How many conditionings are kept.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prompt::conditioning::Cond;
    use tch::Tensor;

    fn key(prompt: &str) -> CondKey {
        CondKey {
            prompt: prompt.into(),
            negative_prompt: String::new(),
            clip_skip: 1,
            schedule_calls: 20,
            size: None,
            embeddings: 0,
            networks: Vec::new(),
        }
    }

    fn value(fill: f64) -> CachedConditioning {
        let cond = |v: f64| ScheduledCond {
            end_at_step: 19,
            cond: Cond::from(Tensor::full(
                [77, 8],
                v,
                (tch::Kind::Float, tch::Device::Cpu),
            )),
        };
        CachedConditioning {
            cond: vec![CondPart {
                schedule: vec![cond(fill)],
                weight: 1.0,
            }],
            uncond: vec![cond(-fill)],
            ti_hashes: None,
        }
    }

    #[test]
    fn a_stored_key_hits_with_shared_tensors_and_others_miss() {
        let mut cache = ConditioningCache::default();
        assert!(cache.get(&key("a")).is_none());
        cache.insert(key("a"), value(1.0));
        let hit = cache.get(&key("a")).unwrap();
        assert_eq!(
            hit.cond[0].schedule[0].cond.crossattn.double_value(&[0, 0]),
            1.0
        );
        assert_eq!(hit.uncond[0].cond.crossattn.double_value(&[0, 0]), -1.0);
        let stored = &cache.entries[0].1.cond[0].schedule[0].cond.crossattn;
        assert_eq!(
            hit.cond[0].schedule[0].cond.crossattn.data_ptr(),
            stored.data_ptr()
        );
        let other = CondKey {
            clip_skip: 2,
            ..key("a")
        };
        assert!(cache.get(&other).is_none());
        assert_eq!(cache.stats(), (1, 2));
    }

    #[test]
    fn the_least_recently_used_goes_beyond_the_capacity() {
        let mut cache = ConditioningCache::with_capacity(2);
        cache.insert(key("a"), value(1.0));
        cache.insert(key("b"), value(2.0));
        // Using "a" makes "b" the oldest.
        assert!(cache.get(&key("a")).is_some());
        cache.insert(key("c"), value(3.0));
        assert_eq!(cache.len(), 2);
        assert!(cache.get(&key("b")).is_none());
        assert!(cache.get(&key("a")).is_some());
        assert!(cache.get(&key("c")).is_some());
        // Storing a key again replaces its entry.
        cache.insert(key("c"), value(4.0));
        assert_eq!(cache.len(), 2);
        let c = cache.get(&key("c")).unwrap();
        assert_eq!(
            c.cond[0].schedule[0].cond.crossattn.double_value(&[0, 0]),
            4.0
        );
        let mut none = ConditioningCache::with_capacity(0);
        none.insert(key("a"), value(1.0));
        assert!(none.is_empty());
    }
}
