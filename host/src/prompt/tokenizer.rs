//! The CLIP BPE tokenizer (OpenAI's 49408-token vocabulary), loaded offline from the
//! committed `assets/clip-tokenizer.json` (built by `scripts/make_clip_tokenizer.py`).

use super::clean::{clean_text_with, TextCleaning};
use regex::Regex;
use std::sync::LazyLock;
use tokenizers::Model;

/// `<|startoftext|>`.
pub const BOS: u32 = 49406;
/// `<|endoftext|>`, also the padding token of SD 1.x.
pub const EOS: u32 = 49407;
/// `,</w>`, where long prompts prefer to be split.
pub const COMMA: u32 = 267;

/// The word pattern of OpenAI's `SimpleTokenizer` (`clip/simple_tokenizer.py`), special
/// tokens first, case-insensitive.
static SIMPLE_TOKENIZER_WORDS: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?i)<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+",
    )
    .expect("valid regex")
});

/// GPT-2's `bytes_to_unicode`: each byte as the printable character the BPE vocabulary
/// spells it with.
static BYTE_CHARS: LazyLock<[char; 256]> = LazyLock::new(|| {
    let printable = |b: u32| (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || b >= 0xae;
    let mut chars = ['\0'; 256];
    let mut next = 256;
    for b in 0..256u32 {
        chars[b as usize] = if printable(b) {
            char::from_u32(b).expect("a byte")
        } else {
            next += 1;
            char::from_u32(next - 1).expect("below 0x200")
        };
    }
    chars
});

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

    /// Token ids of `text` as OpenAI's `SimpleTokenizer.encode` makes them (the tokenizer of
    /// `clip.tokenize`, A1111's interrogator): `TextCleaning::OpenClip` cleaning (ftfy, HTML
    /// unescaped twice, whitespace folded, lower case), its word pattern, byte-level BPE. A
    /// `<|startoftext|>` or `<|endoftext|>` written in the text becomes its special id where
    /// the pattern finds it as a word (not inside a run of punctuation, as in `!<|endoftext|>`).
    pub fn encode_simple_tokenizer(&self, text: &str) -> Vec<u32> {
        let cleaned = clean_text_with(text, TextCleaning::OpenClip);
        let mut ids = Vec::new();
        for word in SIMPLE_TOKENIZER_WORDS.find_iter(&cleaned) {
            match word.as_str() {
                "<|startoftext|>" => ids.push(BOS),
                "<|endoftext|>" => ids.push(EOS),
                word => {
                    let mapped: String = word.bytes().map(|b| BYTE_CHARS[b as usize]).collect();
                    // Every byte and every byte + `</w>` is in the vocabulary, so BPE never
                    // fails on a mapped word.
                    if let Ok(tokens) = self.inner.get_model().tokenize(&mapped) {
                        ids.extend(tokens.iter().map(|t| t.id));
                    }
                }
            }
        }
        ids
    }

    /// The vocabulary entry of `id` (`a</w>`), for showing how a prompt was understood.
    pub fn token_text(&self, id: u32) -> String {
        self.inner
            .id_to_token(id)
            .unwrap_or_else(|| format!("<{id}>"))
    }
}
