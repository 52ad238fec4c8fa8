//! A1111's emphasis syntax (`parse_prompt_attention`): `(a)` ×1.1, `[a]` ÷1.1, `(a:1.3)`,
//! escapes `\(`, and `BREAK` markers.

use super::marker::split_at;
use regex::Regex;
use std::sync::LazyLock;

/// Multiplier of one pair of round brackets.
pub const ROUND_BRACKET: f64 = 1.1;
/// Multiplier of one pair of square brackets.
pub const SQUARE_BRACKET: f64 = 1.0 / 1.1;

static ATTENTION: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\\\(|\\\)|\\\[|\\\]|\\\\|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|\]|[^\\()\[\]:]+|:")
        .expect("valid regex")
});
static BREAK: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\s*\bBREAK\b\s*").expect("valid regex"));

/// A run of prompt text with its attention weight, or a `BREAK` (text "BREAK", weight −1,
/// as A1111 marks it; brackets around a BREAK scale that −1, which turns it into a word).
#[derive(Clone, Debug, PartialEq)]
pub struct Fragment {
    /// The text.
    pub text: String,
    /// Its attention multiplier.
    pub weight: f64,
}

impl Fragment {
    fn new(text: impl Into<String>, weight: f64) -> Self {
        Self {
            text: text.into(),
            weight,
        }
    }

    /// Whether this is a chunk break.
    pub fn is_break(&self) -> bool {
        self.text == "BREAK" && self.weight == -1.0
    }
}

/// Splits `text` into weighted fragments, exactly as A1111's "Original" emphasis parser does.
///
/// A1111 multiplies every fragment from a bracket's opening to the end of the list when the
/// bracket closes (and each unclosed one at the end), and merges neighbours by deleting from
/// the list: quadratic in the prompt's length. Here each close is recorded with the fragments
/// it covers and every fragment's weight is the product of the closes that cover it,
/// multiplied in the same order (so the weights are A1111's to the bit), then merged in one
/// pass. Tokens are found with `find_iter`: `captures_iter` ran the regex's capture engine
/// over every text run, milliseconds for a few kilobytes of non-ASCII text, and the prompt
/// schedule parses each step's prompt.
pub fn parse_prompt_attention(text: &str) -> Vec<Fragment> {
    let mut res: Vec<Fragment> = Vec::new();
    let mut round: Vec<usize> = Vec::new();
    let mut square: Vec<usize> = Vec::new();
    let mut closes: Vec<Close> = Vec::new();

    // `find_iter` runs the regex's fast engine; only a `:weight)` token needs its number.
    for m in ATTENTION.find_iter(text) {
        let token = m.as_str();
        let explicit = explicit_weight(token);
        let close = |from: usize, by: f64, res: &Vec<Fragment>| Close {
            from,
            to: res.len(),
            by,
        };
        if let Some(escaped) = token.strip_prefix('\\') {
            res.push(Fragment::new(escaped, 1.0));
        } else if token == "(" {
            round.push(res.len());
        } else if token == "[" {
            square.push(res.len());
        } else if let (Some(w), false) = (explicit, round.is_empty()) {
            let from = round.pop().expect("checked non-empty");
            closes.push(close(from, w, &res));
        } else if token == ")" && !round.is_empty() {
            let from = round.pop().expect("checked non-empty");
            closes.push(close(from, ROUND_BRACKET, &res));
        } else if token == "]" && !square.is_empty() {
            let from = square.pop().expect("checked non-empty");
            closes.push(close(from, SQUARE_BRACKET, &res));
        } else if token.contains("BREAK") {
            for (i, part) in split_at(token, "BREAK", &BREAK).into_iter().enumerate() {
                if i > 0 {
                    res.push(Fragment::new("BREAK", -1.0));
                }
                res.push(Fragment::new(part, 1.0));
            }
        } else {
            res.push(Fragment::new(token, 1.0));
        }
    }
    // Unclosed brackets still apply, from their position to the end (round ones first, each
    // kind from the outermost, as A1111's two loops run).
    let end = res.len();
    for (from, by) in round
        .into_iter()
        .map(|from| (from, ROUND_BRACKET))
        .chain(square.into_iter().map(|from| (from, SQUARE_BRACKET)))
    {
        closes.push(Close { from, to: end, by });
    }
    apply_closes(&mut res, &closes);
    if res.is_empty() {
        res.push(Fragment::new("", 1.0));
    }
    merge_equal_neighbours(res)
}

/// The weight of a `:weight)` token (the regex's group: `:\s*([+-]?[.\d]+)\s*\)`), parsed as
/// Python's `float` would (a malformed number such as `1..2` is no weight).
fn explicit_weight(token: &str) -> Option<f64> {
    let inner = token.strip_prefix(':')?.strip_suffix(')')?;
    inner.trim().parse::<f64>().ok()
}

/// A bracket's multiplier over the fragments `from..to` it enclosed when it closed.
struct Close {
    from: usize,
    to: usize,
    by: f64,
}

/// Multiplies each fragment by the closes that cover it, in the order they closed. A sweep
/// keeps the closes covering the current fragment and their product: closes that join after
/// all the others (unclosed brackets, a run of openings) multiply onto it, as A1111's running
/// products do; a close that leaves, or joins before another, recomputes it.
fn apply_closes(res: &mut [Fragment], closes: &[Close]) {
    let mut starts: Vec<usize> = (0..closes.len()).collect();
    starts.sort_by_key(|&c| closes[c].from);
    let mut ends: Vec<usize> = (0..closes.len()).collect();
    ends.sort_by_key(|&c| closes[c].to);
    let (mut next_start, mut next_end) = (0, 0);
    // The covering closes' (close order, multiplier), sorted by close order.
    let mut covering: Vec<(usize, f64)> = Vec::new();
    let mut joined = Vec::new();
    let mut product = 1.0;
    for (i, fragment) in res.iter_mut().enumerate() {
        let mut left = false;
        while next_end < ends.len() && closes[ends[next_end]].to <= i {
            let c = ends[next_end];
            if let Ok(at) = covering.binary_search_by_key(&c, |&(c, _)| c) {
                covering.remove(at);
                left = true;
            }
            next_end += 1;
        }
        let last_before = covering.last().map(|&(c, _)| c);
        joined.clear();
        while next_start < starts.len() && closes[starts[next_start]].from <= i {
            let c = starts[next_start];
            if closes[c].to > i {
                let at = covering.partition_point(|&(d, _)| d < c);
                covering.insert(at, (c, closes[c].by));
                joined.push(c);
            }
            next_start += 1;
        }
        joined.sort_unstable();
        let appended = match (joined.first(), last_before) {
            (Some(&first), Some(last)) => first > last,
            _ => true,
        };
        if left || !appended {
            product = covering.iter().fold(1.0, |w, &(_, by)| w * by);
        } else {
            product = joined.iter().fold(product, |w, &c| w * closes[c].by);
        }
        // A1111 multiplies each fragment's 1.0 (a BREAK's -1.0) in place, close after close:
        // the same products, as rounding is symmetric in the sign.
        fragment.weight *= product;
    }
}

/// Joins neighbours of equal weight (A1111's final loop), in one pass.
fn merge_equal_neighbours(res: Vec<Fragment>) -> Vec<Fragment> {
    let mut merged: Vec<Fragment> = Vec::with_capacity(res.len());
    for fragment in res {
        match merged.last_mut() {
            Some(last) if last.weight == fragment.weight => last.text.push_str(&fragment.text),
            _ => merged.push(fragment),
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Vec<(String, f64)> {
        parse_prompt_attention(text)
            .into_iter()
            .map(|f| (f.text, (f.weight * 1e5).round() / 1e5))
            .collect()
    }

    fn v(items: &[(&str, f64)]) -> Vec<(String, f64)> {
        items.iter().map(|(t, w)| (t.to_string(), *w)).collect()
    }

    #[test]
    fn spec_examples() {
        assert_eq!(
            parse("(x:1.3) [y] ((z))"),
            v(&[
                ("x", 1.3),
                (" ", 1.0),
                ("y", 0.90909),
                (" ", 1.0),
                ("z", 1.21)
            ])
        );
        assert_eq!(parse("(a:1.2 b)"), v(&[("a:1.2 b", 1.1)]));
        assert_eq!(parse(r"\(x\)"), v(&[("(x)", 1.0)]));
        assert_eq!(parse(""), v(&[("", 1.0)]));
    }

    #[test]
    fn a1111_docstring_cases() {
        assert_eq!(parse("normal text"), v(&[("normal text", 1.0)]));
        assert_eq!(
            parse("an (important) word"),
            v(&[("an ", 1.0), ("important", 1.1), (" word", 1.0)])
        );
        assert_eq!(parse("(unbalanced"), v(&[("unbalanced", 1.1)]));
        assert_eq!(parse(r"\(literal\]"), v(&[("(literal]", 1.0)]));
        assert_eq!(
            parse("(unnecessary)(parens)"),
            v(&[("unnecessaryparens", 1.1)])
        );
        assert_eq!(
            parse("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))))."),
            v(&[
                ("a ", 1.0),
                ("house", 1.5730),
                (" ", 1.1),
                ("on", 1.0),
                (" a ", 1.1),
                ("hill", 0.55),
                (", sun, ", 1.1),
                ("sky", 1.4641),
                (".", 1.0),
            ])
        );
    }

    #[test]
    fn breaks() {
        assert_eq!(
            parse("a BREAK b"),
            v(&[("a", 1.0), ("BREAK", -1.0), ("b", 1.0)])
        );
        assert_eq!(
            parse("BREAK x"),
            v(&[("", 1.0), ("BREAK", -1.0), ("x", 1.0)])
        );
        // Inside brackets the marker's −1 is scaled: it becomes the word "BREAK".
        assert_eq!(
            parse("(a BREAK b)"),
            v(&[("a", 1.1), ("BREAK", -1.1), ("b", 1.1)])
        );
        assert!(!parse_prompt_attention("(a BREAK b)")[1].is_break());
        assert!(parse_prompt_attention("a BREAK b")[1].is_break());
        assert_eq!(parse("aBREAKb"), v(&[("aBREAKb", 1.0)]));
    }

    #[test]
    fn weights_and_oddities() {
        assert_eq!(parse("(neg:-0.5)"), v(&[("neg", -0.5)]));
        assert_eq!(parse("a:1.2)"), v(&[("a:1.2)", 1.0)]));
        assert_eq!(parse("stray ] and )"), v(&[("stray ] and )", 1.0)]));
        assert_eq!(parse("[[x]]"), v(&[("x", 0.82645)]));
    }

    /// A1111's `parse_prompt_attention` as it is written (quadratic): the weights must be its
    /// to the bit.
    fn a1111(text: &str) -> Vec<Fragment> {
        let mut res: Vec<Fragment> = Vec::new();
        let (mut round, mut square) = (Vec::new(), Vec::new());
        let multiply = |res: &mut Vec<Fragment>, from: usize, by: f64| {
            for f in &mut res[from..] {
                f.weight *= by;
            }
        };
        for m in ATTENTION.captures_iter(text) {
            let token = &m[0];
            let explicit = m.get(1).and_then(|w| w.as_str().parse::<f64>().ok());
            if let Some(escaped) = token.strip_prefix('\\') {
                res.push(Fragment::new(escaped, 1.0));
            } else if token == "(" {
                round.push(res.len());
            } else if token == "[" {
                square.push(res.len());
            } else if let (Some(w), false) = (explicit, round.is_empty()) {
                let from = round.pop().unwrap();
                multiply(&mut res, from, w);
            } else if token == ")" && !round.is_empty() {
                let from = round.pop().unwrap();
                multiply(&mut res, from, ROUND_BRACKET);
            } else if token == "]" && !square.is_empty() {
                let from = square.pop().unwrap();
                multiply(&mut res, from, SQUARE_BRACKET);
            } else {
                for (i, part) in BREAK.split(token).enumerate() {
                    if i > 0 {
                        res.push(Fragment::new("BREAK", -1.0));
                    }
                    res.push(Fragment::new(part, 1.0));
                }
            }
        }
        for from in round {
            multiply(&mut res, from, ROUND_BRACKET);
        }
        for from in square {
            multiply(&mut res, from, SQUARE_BRACKET);
        }
        if res.is_empty() {
            res.push(Fragment::new("", 1.0));
        }
        let mut i = 0;
        while i + 1 < res.len() {
            if res[i].weight == res[i + 1].weight {
                let next = res.remove(i + 1);
                res[i].text.push_str(&next.text);
            } else {
                i += 1;
            }
        }
        res
    }

    #[test]
    fn every_weight_is_a1111s_to_the_bit() {
        const PIECES: &[&str] = &[
            "(", ")", "[", "]", ":1.3)", ": -0.7 )", ":", "a", "cat ", " BREAK ", "\\(", "\\]",
            "\\", "x:2)", "((", "]]", ":0.5)",
        ];
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        // Long runs of openings (the appended products), deep nests (the recomputed ones).
        let mut texts: Vec<String> = vec![
            "(a".repeat(300),
            "[b(a".repeat(150),
            format!("{}x{}", "(".repeat(200), "y)".repeat(200)),
            format!("{}x{}", "((".repeat(100), "y]:1.3)z)".repeat(100)),
        ];
        for round in 0..3200 {
            let length = if round < 3000 { next(40) } else { next(400) };
            texts.push((0..length).map(|_| PIECES[next(PIECES.len())]).collect());
        }
        for text in texts {
            let (ours, theirs) = (parse_prompt_attention(&text), a1111(&text));
            assert_eq!(ours.len(), theirs.len(), "{text:?}");
            for (a, b) in ours.iter().zip(&theirs) {
                assert_eq!(a.text, b.text, "{text:?}");
                assert_eq!(a.weight.to_bits(), b.weight.to_bits(), "{text:?}");
            }
        }
    }
}
