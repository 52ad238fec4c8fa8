//! Text cleaning before BPE, as A1111's tokenizer runs it (transformers' slow `CLIPTokenizer`
//! with ftfy installed): ftfy's default fixes, whitespace folding, lower case.
//!
//! ftfy's fixes are reproduced except mojibake repair (`fix_encoding`), which guesses at
//! mis-decoded byte sequences with large heuristic tables; such text is passed through as is.

use regex::Regex;
use std::sync::LazyLock;
use unicode_normalization::UnicodeNormalization;

static HTML_ENTITY: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"&#?[0-9A-Za-z]{1,24};").expect("valid regex"));
static ANSI_ESCAPE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new("\x1b\\[((?:\\d|;)*)([a-zA-Z])").expect("valid regex"));
static WHITESPACE: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\s+").expect("valid regex"));

/// Cleans `text` the way A1111's CLIP tokenizer does before splitting it into words.
pub fn clean_text(text: &str) -> String {
    let fixed = fix_text(text);
    WHITESPACE.replace_all(&fixed, " ").trim().to_lowercase()
}

/// How a text encoder's tokenizer cleans text: transformers' `CLIPTokenizer` (SD1, SDXL's
/// CLIP-L) or open_clip's `SimpleTokenizer` (SD2, SDXL's bigG), which also runs
/// `html.unescape` twice after ftfy (`open_clip/tokenizer.py: basic_clean`). OpenAI's own
/// `SimpleTokenizer` (`clip/simple_tokenizer.py: basic_clean`, `clip.tokenize` of A1111's
/// interrogator) cleans exactly as open_clip's, which was copied from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TextCleaning {
    /// transformers' cleaning.
    Clip,
    /// open_clip's and OpenAI CLIP's cleaning.
    OpenClip,
}

/// Cleans `text` as `cleaning` says.
pub fn clean_text_with(text: &str, cleaning: TextCleaning) -> String {
    match cleaning {
        TextCleaning::Clip => clean_text(text),
        TextCleaning::OpenClip => {
            let fixed = fix_text(text);
            let unescaped = htmlize::unescape(htmlize::unescape(&fixed).as_ref()).into_owned();
            WHITESPACE
                .replace_all(unescaped.trim(), " ")
                .trim()
                .to_lowercase()
        }
    }
}

/// ftfy's `fix_text` with its default configuration (without mojibake repair), applied until
/// the text stops changing, as ftfy does.
pub fn fix_text(text: &str) -> String {
    // ftfy leaves entities alone in text that looks like HTML.
    let unescape = !text.contains('<');
    let mut text = text.to_string();
    loop {
        let mut next = if unescape {
            unescape_html(&text)
        } else {
            text.clone()
        };
        // Terminal escapes go before control characters are dropped, as in ftfy's order.
        next = ANSI_ESCAPE.replace_all(&next, "").into_owned();
        next = next
            .chars()
            .flat_map(|c| fix_char(c).chars().collect::<Vec<_>>())
            .collect();
        next = next.nfc().collect();
        if next == text {
            return next;
        }
        text = next;
    }
}

/// Entities such as `&amp;` or `&#233;` (only with the closing semicolon, as ftfy decodes them).
fn unescape_html(text: &str) -> String {
    HTML_ENTITY
        .replace_all(text, |m: &regex::Captures| {
            htmlize::unescape(&m[0]).into_owned()
        })
        .into_owned()
}

/// The per-character fixes, in ftfy's order: C1 controls as Windows-1252, Latin ligatures,
/// full/half width forms, curly quotes, line breaks, and removal of unwanted control characters.
fn fix_char(c: char) -> String {
    let c = c1_as_windows_1252(c);
    if let Some(s) = latin_ligature(c) {
        return s.to_string();
    }
    let c = match c {
        '\u{3000}' => ' ',
        '\u{FF01}'..='\u{FFEF}' => {
            let wide: String = c.to_string().nfkc().collect();
            if wide.chars().count() == 1 {
                wide.chars().next().expect("one char")
            } else if wide != c.to_string() {
                return wide;
            } else {
                c
            }
        }
        _ => c,
    };
    let c = match c {
        '\u{02BC}' | '\u{2018}'..='\u{201B}' => '\'',
        '\u{201C}'..='\u{201F}' => '"',
        '\u{2028}' | '\u{2029}' | '\u{85}' => '\n',
        _ => c,
    };
    if is_unwanted_control(c) {
        String::new()
    } else {
        c.to_string()
    }
}

fn c1_as_windows_1252(c: char) -> char {
    const TABLE: [char; 32] = [
        '€', '\u{81}', '‚', 'ƒ', '„', '…', '†', '‡', 'ˆ', '‰', 'Š', '‹', 'Œ', '\u{8D}', 'Ž',
        '\u{8F}', '\u{90}', '‘', '’', '“', '”', '•', '–', '—', '˜', '™', 'š', '›', 'œ', '\u{9D}',
        'ž', 'Ÿ',
    ];
    match c {
        '\u{80}'..='\u{9F}' => TABLE[c as usize - 0x80],
        _ => c,
    }
}

fn latin_ligature(c: char) -> Option<&'static str> {
    Some(match c {
        'Ĳ' => "IJ",
        'ĳ' => "ij",
        'ŉ' => "ʼn",
        'Ǳ' => "DZ",
        'ǲ' => "Dz",
        'ǳ' => "dz",
        'Ǆ' => "DŽ",
        'ǅ' => "Dž",
        'ǆ' => "dž",
        'Ǉ' => "LJ",
        'ǈ' => "Lj",
        'ǉ' => "lj",
        'Ǌ' => "NJ",
        'ǋ' => "Nj",
        'ǌ' => "nj",
        'ﬀ' => "ff",
        'ﬁ' => "fi",
        'ﬂ' => "fl",
        'ﬃ' => "ffi",
        'ﬄ' => "ffl",
        'ﬅ' => "ſt",
        'ﬆ' => "st",
        _ => return None,
    })
}

fn is_unwanted_control(c: char) -> bool {
    matches!(c,
        '\u{00}'..='\u{08}' | '\u{0B}' | '\u{0E}'..='\u{1F}' | '\u{7F}'
        | '\u{206A}'..='\u{206F}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFC}')
}

#[cfg(test)]
mod tests {
    use super::clean_text;

    #[test]
    fn examples() {
        assert_eq!(
            clean_text("  A “Curly”\tQuote ’s  "),
            "a \"curly\" quote 's"
        );
        assert_eq!(clean_text("ﬁne ＦＵＬＬ\u{3000}width"), "fine full width");
        assert_eq!(
            clean_text("fish &amp; chips &amp no"),
            "fish & chips &amp no"
        );
        assert_eq!(clean_text("<b> &amp; </b>"), "<b> &amp; </b>");
        assert_eq!(clean_text("\u{93}c1 quotes\u{94}"), "\"c1 quotes\"");
        assert_eq!(clean_text("e\u{301}t\u{e9}"), "\u{e9}t\u{e9}");
    }
}
