//! A1111's "Interrogate" settings (`modules/shared_options.py`), one struct for every front end.

use serde::{Deserialize, Serialize};

/// The interrogation options under A1111's option keys, with A1111's defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct InterrogateOptions {
    /// `interrogate_keep_models_in_memory`: keep BLIP, CLIP and DeepDanbooru on the device.
    pub interrogate_keep_models_in_memory: bool,
    /// `interrogate_return_ranks`: write `(tag:0.123)` with each match (CLIP and DeepBooru).
    pub interrogate_return_ranks: bool,
    /// `interrogate_clip_num_beams`: BLIP beam count (1 = greedy).
    pub interrogate_clip_num_beams: u32,
    /// `interrogate_clip_min_length`: BLIP's minimum length in tokens, the 4 prompt tokens included.
    pub interrogate_clip_min_length: u32,
    /// `interrogate_clip_max_length`: BLIP's maximum length in tokens, the prompt included.
    pub interrogate_clip_max_length: u32,
    /// `interrogate_clip_dict_limit`: only the first N lines of each category file (0 = all).
    pub interrogate_clip_dict_limit: u32,
    /// `interrogate_clip_skip_categories`: category file stems left out (`artists`, `flavors`...).
    pub interrogate_clip_skip_categories: Vec<String>,
    /// `interrogate_deepbooru_score_threshold`: tags scoring below this are dropped.
    pub interrogate_deepbooru_score_threshold: f64,
    /// `deepbooru_sort_alpha`: sort tags alphabetically, else by descending score.
    pub deepbooru_sort_alpha: bool,
    /// `deepbooru_use_spaces`: write `_` as a space.
    pub deepbooru_use_spaces: bool,
    /// `deepbooru_escape`: backslash-escape `\`, `(` and `)` so tags are not read as emphasis.
    pub deepbooru_escape: bool,
    /// `deepbooru_filter_tags`: comma-separated tags never written.
    pub deepbooru_filter_tags: String,
}

impl Default for InterrogateOptions {
    fn default() -> Self {
        Self {
            interrogate_keep_models_in_memory: false,
            interrogate_return_ranks: false,
            interrogate_clip_num_beams: 1,
            interrogate_clip_min_length: 24,
            interrogate_clip_max_length: 48,
            interrogate_clip_dict_limit: 1500,
            interrogate_clip_skip_categories: Vec::new(),
            interrogate_deepbooru_score_threshold: 0.5,
            deepbooru_sort_alpha: true,
            deepbooru_use_spaces: true,
            deepbooru_escape: true,
            deepbooru_filter_tags: String::new(),
        }
    }
}
