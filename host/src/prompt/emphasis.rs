//! A1111's emphasis syntax (`parse_prompt_attention`): `(a)` ×1.1, `[a]` ÷1.1, `(a:1.3)`,
//! escapes `\(`, and `BREAK` markers.

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
pub fn parse_prompt_attention(text: &str) -> Vec<Fragment> {
    let mut res: Vec<Fragment> = Vec::new();
    let mut round: Vec<usize> = Vec::new();
    let mut square: Vec<usize> = Vec::new();
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
            let from = round.pop().expect("checked non-empty");
            multiply(&mut res, from, w);
        } else if token == ")" && !round.is_empty() {
            let from = round.pop().expect("checked non-empty");
            multiply(&mut res, from, ROUND_BRACKET);
        } else if token == "]" && !square.is_empty() {
            let from = square.pop().expect("checked non-empty");
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
    // Unclosed brackets still apply, from their position to the end.
    for from in round {
        multiply(&mut res, from, ROUND_BRACKET);
    }
    for from in square {
        multiply(&mut res, from, SQUARE_BRACKET);
    }
    if res.is_empty() {
        res.push(Fragment::new("", 1.0));
    }
    // Merge neighbours of equal weight.
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
}
