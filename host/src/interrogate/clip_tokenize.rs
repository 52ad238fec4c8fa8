//! `clip.tokenize(texts, context_length=77, truncate=True)` (`clip/clip.py: tokenize`), how
//! A1111's interrogator tokenizes category lines (`modules/interrogate.py: rank`).

use crate::prompt::tokenizer::{ClipTokenizer, BOS, EOS};
use tch::Tensor;

/// The row of one text without its padding: `<|startoftext|>`, the BPE ids of OpenAI's
/// `SimpleTokenizer`, `<|endoftext|>`; longer than `context_length`, it keeps the first
/// `context_length` ids and makes the last one `<|endoftext|>` (`truncate=True`).
pub fn token_row(text: &str, context_length: usize) -> Vec<i64> {
    let ids = ClipTokenizer::shared().encode_simple_tokenizer(text);
    let mut row: Vec<i64> = std::iter::once(BOS)
        .chain(ids)
        .chain(std::iter::once(EOS))
        .map(i64::from)
        .collect();
    if row.len() > context_length {
        row.truncate(context_length);
        if let Some(last) = row.last_mut() {
            *last = i64::from(EOS);
        }
    }
    row
}

/// `clip.tokenize(texts, context_length, truncate=True)`: one row per text, zero-padded to
/// `context_length` [N, context_length] (int64; OpenAI returns int32, the ids are the same).
pub fn tokenize(texts: &[String], context_length: usize) -> Tensor {
    let rows: Vec<Vec<i64>> = texts.iter().map(|t| token_row(t, context_length)).collect();
    padded(&rows, context_length)
}

/// `rows` zero-padded to `width` as one [N, width] int64 tensor.
pub fn padded(rows: &[Vec<i64>], width: usize) -> Tensor {
    let mut flat = vec![0i64; rows.len() * width];
    for (row, out) in rows.iter().zip(flat.chunks_mut(width.max(1))) {
        let n = row.len().min(width);
        out[..n].copy_from_slice(&row[..n]);
    }
    Tensor::from_slice(&flat).reshape([rows.len() as i64, width as i64])
}

/// The part of `row` the text tower's result depends on: up to and including the first
/// largest id, where `encode_text` takes its features (`argmax`, the first `<|endoftext|>`).
/// Attention is causal, so later positions cannot change it (spec §4.9).
pub fn through_end_of_text(row: &[i64]) -> &[i64] {
    let max = row.iter().copied().max().unwrap_or(0);
    let end = row.iter().position(|&id| id == max).map_or(0, |i| i + 1);
    &row[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_have_start_end_truncation_and_padding() {
        let eos = i64::from(EOS);
        assert_eq!(token_row("", 77), vec![i64::from(BOS), eos]);
        let long = token_row(&"word ".repeat(100), 77);
        assert_eq!(long.len(), 77);
        assert_eq!(long[76], eos);
        assert_eq!(long[75], long[1]);
        // Written special tokens become their ids.
        let row = token_row("a <|endoftext|> b", 77);
        assert_eq!(row.iter().filter(|&&id| id == eos).count(), 2);
        assert_eq!(through_end_of_text(&row).len(), 3);
        let t = tokenize(&["a".into(), "".into()], 5);
        assert_eq!(t.size(), [2, 5]);
        assert_eq!(i64::try_from(t.get(1).get(2)).unwrap(), 0);
    }
}
