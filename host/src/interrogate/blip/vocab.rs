//! BERT's `bert-base-uncased` vocabulary as BLIP's tokenizer uses it: the ids of the prompt
//! `"a picture of "` (whitespace split + WordPiece), and the text of generated ids as
//! transformers 4.30's slow `BertTokenizer.decode` writes it, followed by BLIP's cut of the
//! prompt's 13 characters (salesforce/BLIP `models/blip.py: BLIP_Decoder.generate`).

use std::collections::HashMap;
use std::path::Path;

/// `[PAD]`.
pub const PAD: i64 = 0;
/// `[UNK]`.
pub const UNK: i64 = 100;
/// `[CLS]`.
pub const CLS: i64 = 101;
/// `[SEP]`: the end of a caption (generation's `eos_token_id`).
pub const SEP: i64 = 102;
/// `[MASK]`.
pub const MASK: i64 = 103;

/// The prompt BLIP's `generate` starts every caption with.
pub const PROMPT: &str = "a picture of ";

/// The fixed lines of BERT's vocabulary every `vocab.txt` must have.
const FIXED: [(i64, &str); 5] = [
    (PAD, "[PAD]"),
    (UNK, "[UNK]"),
    (CLS, "[CLS]"),
    (SEP, "[SEP]"),
    (MASK, "[MASK]"),
];

/// BERT's `max_input_chars_per_word`: longer words are `[UNK]` whole.
const MAX_WORD_CHARS: usize = 100;

/// The cleanup of transformers 4.30's `clean_up_tokenization`, in its order (without the
/// `" do not"` rule the `tokenizers` crate's WordPiece decoder adds).
const CLEANUP: [(&str, &str); 10] = [
    (" .", "."),
    (" ?", "?"),
    (" !", "!"),
    (" ,", ","),
    (" ' ", "'"),
    (" n't", "n't"),
    (" 'm", "'m"),
    (" 's", "'s"),
    (" 've", "'ve"),
    (" 're", "'re"),
];

/// Why a `vocab.txt` cannot be BLIP's tokenizer vocabulary.
#[derive(Debug, thiserror::Error)]
#[error("{path}: not a BERT vocabulary for BLIP: {reason}")]
pub struct VocabError {
    /// The file.
    pub path: std::path::PathBuf,
    /// What is wrong with it.
    pub reason: String,
}

/// A BERT WordPiece vocabulary (one token per line, id = line number) with BLIP's two added
/// tokens after it: `[DEC]` (the caption's first id) and `[ENC]`.
pub struct BertVocab {
    tokens: Vec<String>,
    ids: HashMap<String, i64>,
}

impl BertVocab {
    /// Reads `vocab.txt` and checks BERT's fixed ids.
    pub fn load(path: &Path) -> Result<Self, VocabError> {
        let error = |reason: String| VocabError {
            path: path.to_path_buf(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|e| error(format!("cannot read: {e}")))?;
        let text = String::from_utf8(bytes).map_err(|_| error("not UTF-8 text".into()))?;
        Self::from_text(&text).map_err(error)
    }

    /// The vocabulary of a `vocab.txt`'s text.
    pub fn from_text(text: &str) -> Result<Self, String> {
        // BERT's `load_vocab`: every line is a token, its newline removed.
        let tokens: Vec<String> = text
            .lines()
            .map(|l| l.strip_suffix('\r').unwrap_or(l).to_string())
            .collect();
        for (id, name) in FIXED {
            if tokens.get(id as usize).map(String::as_str) != Some(name) {
                return Err(format!("line {} is not `{name}`", id + 1));
            }
        }
        let mut ids = HashMap::with_capacity(tokens.len());
        for (i, t) in tokens.iter().enumerate() {
            // Duplicates: the later line wins, as in BERT's dict.
            ids.insert(t.clone(), i as i64);
        }
        Ok(Self { tokens, ids })
    }

    /// Number of lines (30522 for `bert-base-uncased`).
    pub fn len(&self) -> i64 {
        self.tokens.len() as i64
    }

    /// Whether the vocabulary has no token (never true once loaded).
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// `[DEC]`, BLIP's `bos_token` (30522).
    pub fn dec(&self) -> i64 {
        self.len()
    }

    /// `[ENC]` (30523).
    pub fn enc(&self) -> i64 {
        self.len() + 1
    }

    /// WordPiece ids of `text` split on whitespace (enough for BLIP's lower-case ASCII prompt).
    pub fn encode(&self, text: &str) -> Vec<i64> {
        text.split_whitespace()
            .flat_map(|w| self.wordpiece(w))
            .collect()
    }

    /// BERT's greedy longest-match-first WordPiece of one word.
    fn wordpiece(&self, word: &str) -> Vec<i64> {
        let chars: Vec<char> = word.chars().collect();
        if chars.len() > MAX_WORD_CHARS {
            return vec![UNK];
        }
        let mut pieces = Vec::new();
        let mut start = 0;
        while start < chars.len() {
            let found = (start + 1..=chars.len()).rev().find_map(|end| {
                let piece: String = chars[start..end].iter().collect();
                let piece = if start > 0 {
                    format!("##{piece}")
                } else {
                    piece
                };
                self.ids.get(&piece).map(|&id| (id, end))
            });
            match found {
                Some((id, end)) => {
                    pieces.push(id);
                    start = end;
                }
                None => return vec![UNK],
            }
        }
        pieces
    }

    /// The decoder's first ids: `[CLS] a picture of [SEP]` with `[CLS]` replaced by `[DEC]` and
    /// `[SEP]` dropped, as BLIP's `generate` does ([30522, 1037, 3861, 1997] for BERT).
    pub fn prompt_ids(&self) -> Vec<i64> {
        let mut ids = vec![self.dec()];
        ids.extend(self.encode(PROMPT));
        ids
    }

    /// The caption of generated `ids` (prompt included): special ids dropped, tokens joined
    /// with spaces, `" ##"` removed, stripped, cleaned up; then the first 13 characters cut,
    /// whatever they are (BLIP's `caption[len(self.prompt):]`).
    pub fn caption(&self, ids: &[i64]) -> String {
        let special = [PAD, UNK, CLS, SEP, MASK, self.dec(), self.enc()];
        let words: Vec<&str> = ids
            .iter()
            .filter(|id| !special.contains(id))
            .filter_map(|&id| self.tokens.get(usize::try_from(id).ok()?))
            .map(String::as_str)
            .collect();
        let mut text = words.join(" ").replace(" ##", "").trim().to_string();
        for (from, to) in CLEANUP {
            text = text.replace(from, to);
        }
        text.chars().skip(PROMPT.chars().count()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vocab(words: &[&str]) -> BertVocab {
        let mut lines = vec!["[PAD]".to_string()];
        lines.extend((0..99).map(|i| format!("[unused{i}]")));
        lines.extend(["[UNK]", "[CLS]", "[SEP]", "[MASK]"].map(String::from));
        lines.extend(words.iter().map(|w| w.to_string()));
        BertVocab::from_text(&(lines.join("\n") + "\n")).unwrap()
    }

    const WORDS: [&str; 16] = [
        "a", "picture", "of", "##ten", "cat", ".", ",", "'", "s", "n't", "do", "not", "##s", "m",
        "'s", "?",
    ];

    fn ids(v: &BertVocab, words: &[&str]) -> Vec<i64> {
        let mut out = v.prompt_ids();
        out.extend(words.iter().map(|w| v.ids[*w]));
        out
    }

    #[test]
    fn prompt_is_dec_then_the_three_words() {
        let v = vocab(&WORDS);
        assert_eq!(v.prompt_ids(), vec![120, 104, 105, 106]);
        assert_eq!(v.encode("cats"), vec![108, 116]);
        assert_eq!(v.encode("dogs"), vec![UNK]);
    }

    #[test]
    fn first_subword_joins_the_prompt_and_the_cut_takes_characters() {
        let v = vocab(&WORDS);
        // "a picture often cat": the 13 characters end at the "t" of "often" [quirk].
        assert_eq!(v.caption(&ids(&v, &["##ten", "cat"])), "en cat");
        // A first "," joins "of": "a picture of, cat" → " cat".
        assert_eq!(v.caption(&ids(&v, &[",", "cat"])), " cat");
        assert_eq!(v.caption(&ids(&v, &["cat", "##s", "."])), "cats.");
    }

    #[test]
    fn special_ids_vanish_unk_included() {
        let v = vocab(&WORDS);
        let mut seq = ids(&v, &["cat"]);
        seq.extend([UNK, PAD, MASK, CLS, v.enc(), v.ids["cat"], SEP]);
        assert_eq!(v.caption(&seq), "cat cat");
    }

    #[test]
    fn cleanup_rules_apply_in_order() {
        let v = vocab(&WORDS);
        // " ' " is replaced before " 's": "cat ' s" → "cat's".
        assert_eq!(v.caption(&ids(&v, &["cat", "'", "s"])), "cat's");
        assert_eq!(v.caption(&ids(&v, &["cat", "'s", "?"])), "cat's?");
        assert_eq!(v.caption(&ids(&v, &["do", "n't", "cat"])), "don't cat");
        // No "do not" → "don't" rule (the tokenizers crate's extra one).
        assert_eq!(v.caption(&ids(&v, &["do", "not", "cat"])), "do not cat");
        // " ' m" is not " 'm": the apostrophe rule leaves "'m" joined to the word before.
        assert_eq!(v.caption(&ids(&v, &["cat", "'", "m"])), "cat'm");
    }

    #[test]
    fn the_cut_counts_characters_not_bytes() {
        let v = vocab(&["a", "picture", "ö", "cat"]);
        let seq = vec![
            v.dec(),
            v.ids["a"],
            v.ids["picture"],
            v.ids["ö"],
            v.ids["cat"],
        ];
        // "a picture ö cat": 13 characters are "a picture ö c" (13 bytes would end before "cat").
        assert_eq!(v.caption(&seq), "at");
    }

    #[test]
    fn vocabularies_without_berts_fixed_lines_are_refused() {
        assert!(BertVocab::from_text("[PAD]\nhello\n").is_err());
        let mut lines: Vec<String> = (0..104).map(|i| format!("w{i}")).collect();
        lines[0] = "[PAD]".into();
        assert!(BertVocab::from_text(&lines.join("\n")).is_err());
    }
}
