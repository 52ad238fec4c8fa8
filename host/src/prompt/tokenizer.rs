//! The CLIP BPE tokenizer (OpenAI's 49408-token vocabulary), loaded offline from the
//! committed `assets/clip-tokenizer.json` (built by `scripts/make_clip_tokenizer.py`).

use super::clean::{clean_text_with, TextCleaning};
use std::sync::LazyLock;

/// `<|startoftext|>`.
pub const BOS: u32 = 49406;
/// `<|endoftext|>`, also the padding token of SD 1.x.
pub const EOS: u32 = 49407;
/// `,</w>`, where long prompts prefer to be split.
pub const COMMA: u32 = 267;

static TOKENIZER_JSON: &[u8] = include_bytes!("../../assets/clip-tokenizer.json");

/// CLIP's BPE tokenizer, with A1111's text cleaning in front.
pub struct ClipTokenizer {
    inner: tokenizers::Tokenizer,
}

static SHARED: LazyLock<ClipTokenizer> = LazyLock::new(|| ClipTokenizer {
    inner: tokenizers::Tokenizer::from_bytes(TOKENIZER_JSON)
        .expect("the committed tokenizer file is valid"),
});

impl ClipTokenizer {
    /// The process-wide tokenizer (parsed once).
    pub fn shared() -> &'static Self {
        &SHARED
    }

    /// Token ids of `text`, cleaned, without BOS/EOS and without truncation.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        self.encode_with(text, TextCleaning::Clip)
    }

    /// Token ids of `text` cleaned as `cleaning` says (the two tokenizers share the BPE).
    pub fn encode_with(&self, text: &str, cleaning: TextCleaning) -> Vec<u32> {
        let cleaned = clean_text_with(text, cleaning);
        if cleaned.is_empty() {
            return Vec::new();
        }
        self.inner
            .encode(cleaned.as_str(), false)
            .map(|e| e.get_ids().to_vec())
            .unwrap_or_default()
    }

    /// The vocabulary entry of `id` (`a</w>`), for showing how a prompt was understood.
    pub fn token_text(&self, id: u32) -> String {
        self.inner
            .id_to_token(id)
            .unwrap_or_else(|| format!("<{id}>"))
    }
}
