//! CLIP interrogation after the caption (category files, ranking, the prompt string) against a
//! transcription of A1111's `InterrogateModels.categories / rank / interrogate`
//! (tests/reference/clip_rank_reference.py) fed the same features: the whole string exact,
//! with and without ranks, probabilities within 1e-5; and the `%.3f` formatting of
//! probabilities against Python's on awkward values. The CLIP network itself is replaced by
//! seeded features here; its parity is tested with the model.

use crate::common::run_reference;
use image::RgbImage;
use sdhost::interrogate::clip_interrogation::clip_matches;
use sdhost::interrogate::ranking::format_match;
use sdhost::interrogate::seeded_features::SeededClipFeatures;
use sdhost::interrogate::{
    interrogate_clip, Categories, ClipFeatures, FeatureCache, InterrogateOptions,
};
use std::collections::HashSet;
use std::path::Path;
use tch::Tensor;

/// ViT-L/14's feature width: cosines of random rows spread the softmax like real ones.
const DIM: usize = 768;
/// Picks the seeded features; changed only if the reference reports a too-narrow margin.
const IDENTITY: &str = "clip-rank-test-1";

fn write_categories(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let files: [(&str, &[u8]); 4] = [
        (
            "a.txt",
            "Alice Example\n\n  Bob Example  \nCedric Seaut (Keos Masons)\nJosé ’Pepe’ García\n\n\
             \tDaniel Doe\r\nEve\u{3000}\nFrank\n"
                .as_bytes(),
        ),
        (
            "b.top3.txt",
            "oil painting\n\nwatercolor\ncharcoal drawing\r\ndigital art\n\nphotograph\n\
             sculpture\nline art"
                .as_bytes(),
        ),
        // Skipped in every case: neither side reads it, so its bytes do not matter.
        ("c.txt", b"skipped \xff\xfe list\n"),
        (
            "d.top2.lists.txt",
            "trending on artstation\nhighly detailed\n\u{1c}soft light\u{1f}\nbokeh\nfilm grain\n\
             volumetric lighting\ncinematic\nsharp focus\nhdr\n"
                .as_bytes(),
        ),
    ];
    for (name, content) in files {
        std::fs::write(dir.join(name), content).unwrap();
    }
}

/// (caption, dict limit, ranks, skipped categories).
fn cases() -> Vec<(&'static str, u32, bool, Vec<&'static str>)> {
    vec![
        ("a picture of a cat", 2, false, vec!["c"]),
        ("", 2, true, vec!["c"]),
        ("x", 0, true, vec!["c", "d.top2.lists"]),
        ("a painting", 1500, false, vec!["c", "a"]),
        ("y", 0, true, vec!["c"]),
    ]
}

fn options(limit: u32, ranks: bool, skip: &[&str]) -> InterrogateOptions {
    InterrogateOptions {
        interrogate_clip_dict_limit: limit,
        interrogate_return_ranks: ranks,
        interrogate_clip_skip_categories: skip.iter().map(|s| s.to_string()).collect(),
        ..InterrogateOptions::default()
    }
}

/// Probabilities whose `.3f` is easy to get wrong: multiples of 0.0005 (near the rounding
/// boundary in float32), exact binary ties (k/16, k/1024), tiny and near-1 values.
fn format_values() -> Vec<f32> {
    let mut values: Vec<f32> = (0..=2000).map(|i| i as f32 * 0.0005).collect();
    values.extend((0..=16).map(|k| k as f32 / 16.0));
    values.extend((0..=1024).map(|k| k as f32 / 1024.0));
    values.extend([1e-9, 4.9999e-4, 5.0001e-4, 0.999_999_9, 0.9995, 0.999_500_1]);
    values
}

#[test]
fn interrogation_matches_a1111() {
    let work = tempfile::tempdir().unwrap();
    let categories_dir = work.path().join("interrogate");
    write_categories(&categories_dir);
    let categories = Categories::open(&categories_dir).unwrap();

    // Two pictures: one whose features are random, one that "looks like" the blank line.
    let image = RgbImage::from_fn(7, 5, |x, y| {
        image::Rgb([(x * 30) as u8, (y * 50) as u8, 77])
    });
    let clips = [
        SeededClipFeatures::new(DIM, IDENTITY),
        SeededClipFeatures::new(DIM, IDENTITY).seeing(""),
    ];

    // Every line of every read list, for the reference's stand-in encoder.
    let mut seen = HashSet::new();
    let lines: Vec<String> = categories
        .lists(&["c".to_string()])
        .unwrap()
        .iter()
        .flat_map(|list| list.items.clone())
        .filter(|line| seen.insert(line.clone()))
        .collect();
    assert!(lines.contains(&"José ’Pepe’ García".to_string()));
    assert!(lines.contains(&String::new()));
    let features = work.path().join("features.safetensors");
    let mut tensors: Vec<(String, Tensor)> = vec![("text".into(), clips[0].text_features(&lines))];
    for (i, clip) in clips.iter().enumerate() {
        tensors.push((format!("image_{i}"), clip.image_features(&image)));
    }
    let values = format_values();
    tensors.push(("format_values".into(), Tensor::from_slice(&values)));
    Tensor::write_safetensors(&tensors, &features).unwrap();

    let cases = cases();
    let spec = serde_json::json!({
        "categories_dir": categories_dir,
        "features": features,
        "lines": lines,
        "images": clips.len(),
        "cases": cases.iter().map(|(caption, limit, ranks, skip)| serde_json::json!({
            "caption": caption, "limit": limit, "ranks": ranks, "skip": skip,
        })).collect::<Vec<_>>(),
    });
    let spec_path = work.path().join("cases.json");
    let out_path = work.path().join("out.json");
    std::fs::write(&spec_path, serde_json::to_vec(&spec).unwrap()).unwrap();
    run_reference(
        "clip_rank_reference.py",
        &[spec_path.as_os_str(), out_path.as_os_str()],
    );
    let out: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&out_path).unwrap()).unwrap();

    let cache = FeatureCache::new(work.path().join("cache"));
    let mut worst = 0f64;
    for (i, clip) in clips.iter().enumerate() {
        for (j, (caption, limit, ranks, skip)) in cases.iter().enumerate() {
            let expected = &out["results"][i][j];
            let options = options(*limit, *ranks, skip);
            let result = interrogate_clip(caption, &image, clip, &categories, None, &options);
            let result = result.unwrap();
            println!("image {i} case {j}: {result:?}");
            assert_eq!(
                result,
                expected["result"].as_str().unwrap(),
                "image {i} case {j}"
            );
            // Through the feature cache (filled by the first picture, hit by the second).
            let cached =
                interrogate_clip(caption, &image, clip, &categories, Some(&cache), &options);
            assert_eq!(cached.unwrap(), expected["result"].as_str().unwrap());

            let found: Vec<(String, String, f32)> =
                clip_matches(&image, clip, &categories, None, &options)
                    .unwrap()
                    .into_iter()
                    .flat_map(|c| {
                        let category = c.category;
                        c.matches
                            .into_iter()
                            .map(move |(text, p)| (category.clone(), text, p))
                    })
                    .collect();
            let reference = expected["matches"].as_array().unwrap();
            assert_eq!(found.len(), reference.len(), "image {i} case {j}");
            for ((category, text, p), r) in found.iter().zip(reference) {
                assert_eq!(category, r[0].as_str().unwrap());
                assert_eq!(text, r[1].as_str().unwrap());
                let diff = (f64::from(*p) - r[2].as_f64().unwrap()).abs();
                worst = worst.max(diff);
                assert!(diff <= 1e-5, "image {i} case {j} {text:?}: {p} vs {}", r[2]);
            }
        }
    }
    println!("largest probability difference {worst:.3e}");

    let formatted = out["formatted"].as_array().unwrap();
    assert_eq!(formatted.len(), values.len());
    for (value, python) in values.iter().zip(formatted) {
        let python = python.as_str().unwrap();
        assert_eq!(
            format_match("t", *value, true),
            format!(", (t:{python})"),
            "{value:e}"
        );
    }
}
