//! Splitting prompt text at A1111's whole-word markers (`BREAK`, `AND`) without running the
//! marker's regex over the whole text.
//!
//! The markers' patterns (`\s*\bBREAK\b\s*`, `\bAND\b`) use Unicode word boundaries, which the
//! regex crate's fast engines give up on for non-ASCII text: its slowest engine then walks
//! every character. A 30 KB prompt of mostly non-ASCII text with one `BREAK` took 0.1 s a
//! schedule entry in the fuzz build (7.5 s for its 80 entries; fuzz/crashes/prompt). Every
//! match contains the marker's literal, so the regex only ever needs to look at the few
//! characters around each occurrence.

use regex::Regex;

/// `regex.split(text)` for a `regex` whose every match contains `literal` and otherwise only
/// whitespace around it (with word boundaries at the literal's ends). The regex runs once per
/// occurrence of `literal`, over that occurrence, the whitespace on each side and one more
/// character after it, with the text before as its context; the parts are the same.
pub fn split_at<'t>(text: &'t str, literal: &str, regex: &Regex) -> Vec<&'t str> {
    let mut parts = Vec::new();
    // End of the last match; where to look for the next occurrence.
    let (mut last, mut from) = (0, 0);
    while let Some(at) = text[from..].find(literal).map(|i| from + i) {
        let start = last + text[last..at].trim_end_matches(char::is_whitespace).len();
        let after = at + literal.len();
        let space = text[after..].len() - text[after..].trim_start().len();
        let end = text[after + space..]
            .chars()
            .next()
            .map_or(after + space, |c| after + space + c.len_utf8());
        // `find_at` reads the characters before `start` for `\b`, and the one after the
        // whitespace stands for everything beyond it.
        match regex.find_at(&text[..end], start) {
            Some(m) => {
                parts.push(&text[last..m.start()]);
                last = m.end();
                from = m.end();
            }
            None => from = at + literal.chars().next().map_or(1, char::len_utf8),
        }
    }
    parts.push(&text[last..]);
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patterns() -> [(&'static str, Regex); 2] {
        [
            ("BREAK", Regex::new(r"\s*\bBREAK\b\s*").unwrap()),
            ("AND", Regex::new(r"\bAND\b").unwrap()),
        ]
    }

    #[test]
    fn parts_are_the_regexs_split() {
        let cases = [
            "",
            "BREAK",
            "a BREAK b",
            "a  BREAK  BREAK b",
            "BREAKBREAK BREAK",
            "xBREAK BREAKy BREAK_ BREAK",
            "éBREAK BREAKé ∂ BREAK ∂",
            "\u{3000}BREAK\u{3000}x\u{a0}BREAK\t\n",
            "a AND b ANDAND c AND",
            "BANDANA AND_PERP x",
            "日本AND日本 AND 日本",
        ];
        for (literal, regex) in patterns() {
            for text in cases {
                let expected: Vec<&str> = regex.split(text).collect();
                assert_eq!(
                    split_at(text, literal, &regex),
                    expected,
                    "{literal} in {text:?}"
                );
            }
        }
    }

    #[test]
    fn random_texts_of_markers_words_and_spaces_split_as_the_regex_does() {
        // Texts built from pieces that meet at every kind of boundary: ASCII and non-ASCII
        // word characters, Unicode spaces, markers and their prefixes.
        let pieces = [
            "BREAK", "AND", "BRE", "AN", "a", "_", "é", "日", "∂", "1", " ", "  ", "\t", "\n",
            "\u{3000}", "\u{a0}", "\u{fffd}", "(", ":", ",",
        ];
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for (literal, regex) in patterns() {
            for _ in 0..20_000 {
                let len = (next() % 24) as usize;
                let text: String = (0..len)
                    .map(|_| pieces[(next() % pieces.len() as u64) as usize])
                    .collect();
                let expected: Vec<&str> = regex.split(&text).collect();
                assert_eq!(split_at(&text, literal, &regex), expected, "{text:?}");
            }
        }
    }
}
