//! Token-id parity of the CLIP tokenizer with A1111's (ftfy + CLIP BPE), on a corpus that
//! covers what prompts contain.

use crate::common;

use sdhost::prompt::tokenizer::ClipTokenizer;

/// Texts where ids differ on purpose: ftfy's mojibake repair (`fix_encoding`) is not reproduced.
const KNOWN_DIFFERENCES: &[&str] = &["cafÃ© mojibake", "â€œsmart quotesâ€\u{9d} gone wrong"];

fn corpus() -> Vec<String> {
    let mut texts: Vec<String> = [
        "a photo of a cat",
        "Masterpiece, best quality, 1girl, solo, (looking at viewer:1.2), [blurry]",
        "Hello, World!! 123 4.5 -7 1e10 3/4 50% #hashtag @user ~tilde~ `code` {braces}",
        "don't it's we're they've I'm you'll he'd DON'T",
        "“curly double” ‘curly single’ „low“ ‚low‘ ʼmodifierʼ",
        "café naïve résumé Ångström Øre Straße İstanbul ΣΊΣΥΦΟΣ ὀδυσσεύς",
        "日本語のテキスト、中文文本。한국어 텍스트",
        "emoji 🐱👍🏽 👨‍👩‍👧 🏳️‍🌈 ❤️",
        "(emphasis) ((double)) [less] (weight:1.5) \\(escaped\\) [a:b:0.5] [c|d] BREAK e AND f :1.2",
        "ﬁne ﬂow ＦＵＬＬ\u{3000}ｗｉｄｔｈ ｶﾀｶﾅ Ĳssel ǅemal",
        "fish &amp; chips &lt;3 &eacute;t&eacute; &#233;t&#xe9; &amp no-semicolon &nbsp;x",
        "<b>html-like &amp; stays</b>",
        "tab\tnew\nline\r\nspaces   \u{2028}sep\u{85}nel",
        "c1 \u{93}quotes\u{94} \u{80}uro \u{96} dash",
        "control\u{1}\u{7f} chars\u{feff} bom \u{200b}zero\u{200d}width",
        "combining e\u{301} vs é, A\u{30a}",
        "ansi \u{1b}[31mred\u{1b}[0m text",
        "numbers 0123456789 ١٢٣ ½ ² ⅷ",
        "",
        "   ",
        "A1111-style_prompt, with_underscores and-dashes, CamelCaseWords, ALLCAPS",
        "symbols ©®™ ±×÷ →← ♥♦ ★☆ …",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    texts.push("very long prompt, ".repeat(60));
    texts.push("supercalifragilisticexpialidocious ".repeat(20));
    texts.extend(KNOWN_DIFFERENCES.iter().map(|s| s.to_string()));
    texts
}

#[test]
fn ids_equal_a1111_tokenizer() {
    let texts = corpus();
    let dir = tempfile::tempdir().unwrap();
    let corpus_path = dir.path().join("corpus.json");
    let out_path = dir.path().join("ids.json");
    std::fs::write(&corpus_path, serde_json::to_vec(&texts).unwrap()).unwrap();
    common::run_reference(
        "tokenize_reference.py",
        &[corpus_path.as_os_str(), out_path.as_os_str()],
    );
    let expected: Vec<Vec<u32>> =
        serde_json::from_slice(&std::fs::read(&out_path).unwrap()).unwrap();

    let tokenizer = ClipTokenizer::shared();
    let mut mismatches = Vec::new();
    for (text, want) in texts.iter().zip(&expected) {
        let got = tokenizer.encode(text);
        if &got != want {
            mismatches.push(text.as_str());
            if !KNOWN_DIFFERENCES.contains(&text.as_str()) {
                eprintln!("{text:?}\n  sdhost {got:?}\n  A1111  {want:?}");
            }
        }
    }
    assert_eq!(
        mismatches, KNOWN_DIFFERENCES,
        "only the listed texts may differ"
    );
}
