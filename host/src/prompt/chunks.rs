//! Tokenisation of a prompt line into 75-token chunks, as A1111 does it
//! (`TextConditionalModel.tokenize_line`): BREAK, comma backtracking, embeddings.

use super::clean::TextCleaning;
use super::embeddings::{Embedding, EmbeddingDatabase};
use super::emphasis::parse_prompt_attention;
use super::tokenizer::{ClipTokenizer, BOS, COMMA, EOS};
use std::sync::Arc;

/// Tokens per chunk between BOS and EOS.
pub const CHUNK_LENGTH: usize = 75;
/// How far back a full chunk looks for a comma to break at (A1111 `comma_padding_backtrack`).
pub const COMMA_PADDING_BACKTRACK: usize = 20;

/// An embedding placed in a chunk: its vectors go at token positions `offset + 1 ..`.
#[derive(Clone, Debug)]
pub struct ChunkFix {
    /// Position within the 75 tokens (before the BOS shift).
    pub offset: usize,
    /// The embedding.
    pub embedding: Arc<Embedding>,
}

/// One 77-token chunk: BOS, 75 tokens (EOS-padded), EOS, with a weight per token.
#[derive(Clone, Debug, Default)]
pub struct PromptChunk {
    /// Token ids, 77 once closed.
    pub tokens: Vec<u32>,
    /// Attention weight per token.
    pub multipliers: Vec<f64>,
    /// Embeddings to inject.
    pub fixes: Vec<ChunkFix>,
}

impl PromptChunk {
    /// The chunk of an empty prompt: BOS then EOS padding.
    pub fn empty() -> Self {
        let mut chunk = Self::default();
        chunk.close();
        chunk
    }

    fn close(&mut self) {
        let pad = CHUNK_LENGTH.saturating_sub(self.tokens.len());
        self.tokens.extend(std::iter::repeat_n(EOS, pad));
        self.multipliers.extend(std::iter::repeat_n(1.0, pad));
        self.tokens.insert(0, BOS);
        self.tokens.push(EOS);
        self.multipliers.insert(0, 1.0);
        self.multipliers.push(1.0);
    }
}

/// A prompt line in chunks, with the number of prompt tokens it has.
#[derive(Clone, Debug)]
pub struct TokenizedPrompt {
    /// The chunks (at least one).
    pub chunks: Vec<PromptChunk>,
    /// Tokens used, without BOS/EOS/padding (A1111's "token count").
    pub token_count: usize,
}

/// Splits `line` (prompt editing already resolved) into chunks.
pub fn tokenize_line(line: &str, embeddings: &EmbeddingDatabase) -> TokenizedPrompt {
    tokenize_line_with(line, embeddings, TextCleaning::Clip)
}

/// [`tokenize_line`] with a tokenizer's own text cleaning.
pub fn tokenize_line_with(
    line: &str,
    embeddings: &EmbeddingDatabase,
    cleaning: TextCleaning,
) -> TokenizedPrompt {
    let tokenizer = ClipTokenizer::shared();
    let mut builder = ChunkBuilder::default();
    for fragment in parse_prompt_attention(line) {
        if fragment.is_break() {
            builder.next_chunk();
            continue;
        }
        let tokens = tokenizer.encode_with(&fragment.text, cleaning);
        let weight = fragment.weight;
        let mut pos = 0;
        while pos < tokens.len() {
            let token = tokens[pos];
            let current = builder.chunk.tokens.len();
            if token == COMMA {
                builder.last_comma = Some(current);
            } else if let Some(comma) = builder
                .last_comma
                .filter(|&c| current == CHUNK_LENGTH && current - c <= COMMA_PADDING_BACKTRACK)
            {
                // Move the words after the last comma into the next chunk. A1111 moves tokens
                // and weights only, not embedding fixes; reproduced for identical results.
                let tail_tokens = builder.chunk.tokens.split_off(comma + 1);
                let tail_weights = builder.chunk.multipliers.split_off(comma + 1);
                builder.next_chunk();
                builder.chunk.tokens = tail_tokens;
                builder.chunk.multipliers = tail_weights;
            }
            if builder.chunk.tokens.len() == CHUNK_LENGTH {
                builder.next_chunk();
            }
            match embeddings.find_at(&tokens, pos) {
                None => {
                    builder.chunk.tokens.push(token);
                    builder.chunk.multipliers.push(weight);
                    pos += 1;
                }
                Some((embedding, name_tokens)) => {
                    let n = embedding.len();
                    if builder.chunk.tokens.len() + n > CHUNK_LENGTH {
                        builder.next_chunk();
                    }
                    builder.chunk.fixes.push(ChunkFix {
                        offset: builder.chunk.tokens.len(),
                        embedding: Arc::clone(embedding),
                    });
                    builder.chunk.tokens.extend(std::iter::repeat_n(0, n));
                    builder
                        .chunk
                        .multipliers
                        .extend(std::iter::repeat_n(weight, n));
                    pos += name_tokens;
                }
            }
        }
    }
    if !builder.chunk.tokens.is_empty() || builder.chunks.is_empty() {
        builder.next_chunk();
    }
    TokenizedPrompt {
        chunks: builder.chunks,
        token_count: builder.token_count,
    }
}

#[derive(Default)]
struct ChunkBuilder {
    chunks: Vec<PromptChunk>,
    chunk: PromptChunk,
    token_count: usize,
    last_comma: Option<usize>,
}

impl ChunkBuilder {
    fn next_chunk(&mut self) {
        self.token_count += self.chunk.tokens.len();
        let mut chunk = std::mem::take(&mut self.chunk);
        chunk.close();
        self.chunks.push(chunk);
        self.last_comma = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(line: &str) -> TokenizedPrompt {
        tokenize_line(line, &EmbeddingDatabase::default())
    }

    #[test]
    fn empty_prompt_is_one_padding_chunk() {
        let t = chunks("");
        assert_eq!(t.chunks.len(), 1);
        assert_eq!(t.chunks[0].tokens, PromptChunk::empty().tokens);
        assert_eq!(t.token_count, 0);
    }

    #[test]
    fn chunk_layout_and_weights() {
        let t = chunks("a (cat:1.5)");
        let c = &t.chunks[0];
        assert_eq!(c.tokens.len(), 77);
        assert_eq!(&c.tokens[..3], &[BOS, 320, 2368]);
        assert_eq!(c.tokens[3..], [EOS; 74]);
        assert_eq!(&c.multipliers[..3], &[1.0, 1.0, 1.5]);
        assert_eq!(t.token_count, 2);
    }

    #[test]
    fn break_starts_a_new_chunk() {
        assert_eq!(chunks("a BREAK b").chunks.len(), 2);
        let t = chunks("BREAK x");
        assert_eq!(t.chunks.len(), 2);
        assert_eq!(t.chunks[0].tokens, PromptChunk::empty().tokens);
    }

    #[test]
    fn long_prompts_split_at_75_tokens_or_the_last_comma() {
        // 80 single-token words: 75 in the first chunk, 5 in the second.
        let t = chunks(&"cat ".repeat(80));
        assert_eq!(t.chunks.len(), 2);
        assert_eq!(t.token_count, 80);
        assert_eq!(t.chunks[1].tokens[1..6], [2368; 5]);
        // A comma at token 70 moves the 4 words after it into the next chunk.
        let line = format!("{}, {}", "cat ".repeat(70), "dog ".repeat(10));
        let t = chunks(&line);
        assert_eq!(t.chunks[0].tokens[71], COMMA);
        assert_eq!(
            t.chunks[0].tokens[72], EOS,
            "the chunk ends after the comma"
        );
        assert_eq!(t.chunks[1].tokens[1..11], [1929; 10]);
    }
}
