//! "Interrogate CLIP" after the caption: the picture's best matches in each category list,
//! appended to the BLIP caption (`modules/interrogate.py: InterrogateModels.interrogate`).
//!
//! A1111 catches any failure, logs it and appends `<error>` to whatever it had so far (a BLIP
//! failure gives exactly `"<error>"`). Our front ends get a typed error instead, raised before
//! the picture is encoded, and a front end that must mimic A1111's API answer can make the
//! `<error>` string from it.

use super::categories::{Categories, CategoriesError, CategoryList};
use super::feature_cache::FeatureCache;
use super::ranking::{format_match, rank, RankError};
use super::{ClipFeatures, InterrogateOptions};
use image::RgbImage;
use std::sync::Arc;

/// Why CLIP interrogation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClipInterrogationError {
    /// The category lists cannot be read.
    #[error(transparent)]
    Categories(#[from] CategoriesError),
    /// The CLIP model gave features that cannot be compared.
    #[error(transparent)]
    Rank(#[from] RankError),
}

/// The matches of one category, best first.
#[derive(Clone, Debug, PartialEq)]
pub struct CategoryMatches {
    /// The category's name (its file stem).
    pub category: String,
    /// The matched lines with their softmax probabilities.
    pub matches: Vec<(String, f32)>,
}

/// The picture's CLIP matches in every category not skipped by
/// `interrogate_clip_skip_categories`, in category order, each category ranked over its first
/// `interrogate_clip_dict_limit` lines (text features from `cache` when given).
pub fn clip_matches(
    image: &RgbImage,
    clip: &dyn ClipFeatures,
    categories: &Categories,
    cache: Option<&FeatureCache>,
    options: &InterrogateOptions,
) -> Result<Vec<CategoryMatches>, ClipInterrogationError> {
    let lists = categories.lists(&options.interrogate_clip_skip_categories)?;
    if lists.is_empty() {
        return Ok(Vec::new());
    }
    let image_features = clip.image_features(image);
    lists
        .iter()
        .map(|list| category_matches(&image_features, list, clip, cache, options))
        .collect()
}

fn category_matches(
    image_features: &tch::Tensor,
    list: &Arc<CategoryList>,
    clip: &dyn ClipFeatures,
    cache: Option<&FeatureCache>,
    options: &InterrogateOptions,
) -> Result<CategoryMatches, ClipInterrogationError> {
    let items = list.used_items(options.interrogate_clip_dict_limit);
    // Nothing to rank (empty file, `.top0`): no matches, and no encoding either.
    let matches = if items.is_empty() || list.topn == 0 {
        Vec::new()
    } else {
        let text_features = match cache {
            Some(cache) => cache.text_features(clip, &list.name, items),
            None => clip.text_features(items),
        };
        rank(image_features, &text_features, list.topn)?
            .into_iter()
            .map(|m| (items[m.index].clone(), m.probability))
            .collect()
    };
    Ok(CategoryMatches {
        category: list.name.clone(),
        matches,
    })
}

/// A1111's CLIP interrogation result: `caption`, then `", match"` for every match of every
/// category (`", (match:0.123)"` with `interrogate_return_ranks`). An empty caption gives a
/// result starting with `", "`, and a folder without lists the caption alone, as in A1111.
pub fn interrogate_clip(
    caption: &str,
    image: &RgbImage,
    clip: &dyn ClipFeatures,
    categories: &Categories,
    cache: Option<&FeatureCache>,
    options: &InterrogateOptions,
) -> Result<String, ClipInterrogationError> {
    let mut result = caption.to_string();
    for category in clip_matches(image, clip, categories, cache, options)? {
        for (text, probability) in &category.matches {
            result += &format_match(text, *probability, options.interrogate_return_ranks);
        }
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interrogate::seeded_features::SeededClipFeatures;

    fn folder(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, content) in files {
            std::fs::write(dir.path().join(name), content).unwrap();
        }
        dir
    }

    fn options(limit: u32, ranks: bool, skip: &[&str]) -> InterrogateOptions {
        InterrogateOptions {
            interrogate_clip_dict_limit: limit,
            interrogate_return_ranks: ranks,
            interrogate_clip_skip_categories: skip.iter().map(|s| s.to_string()).collect(),
            ..InterrogateOptions::default()
        }
    }

    #[test]
    fn caption_then_matches_per_category() {
        let dir = folder(&[
            ("a.txt", "red\ngreen\nblue (dark)\n"),
            ("b.top2.list.txt", "one\ntwo\nthree\nfour\n"),
            ("c.txt", "skipped\n"),
        ]);
        let categories = Categories::open(dir.path()).unwrap();
        let clip = SeededClipFeatures::new(64, "m").seeing("blue (dark)");
        let image = RgbImage::new(4, 4);
        let options = options(0, false, &["c"]);
        let found = clip_matches(&image, &clip, &categories, None, &options).unwrap();
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].category, "a");
        assert_eq!(found[0].matches.len(), 1);
        assert_eq!(found[0].matches[0].0, "blue (dark)");
        assert_eq!(found[1].category, "b.top2.list");
        assert_eq!(found[1].matches.len(), 2);
        let expected = format!(
            "a photo, blue (dark), {}, {}",
            found[1].matches[0].0, found[1].matches[1].0
        );
        let result = interrogate_clip("a photo", &image, &clip, &categories, None, &options);
        assert_eq!(result.unwrap(), expected);

        let ranked = interrogate_clip(
            "",
            &image,
            &clip,
            &categories,
            None,
            &InterrogateOptions {
                interrogate_return_ranks: true,
                ..options.clone()
            },
        )
        .unwrap();
        let p = found[0].matches[0].1;
        assert!(
            ranked.starts_with(&format!(", (blue (dark):{:.3}), (", p)),
            "{ranked}"
        );
        assert_eq!(ranked.matches(", (").count(), 3);
    }

    #[test]
    fn limit_blank_lines_and_empty_lists() {
        let dir = folder(&[
            ("a.txt", "\n\nx\n"),
            ("b.top5.list.txt", "p\nq\nr\n"),
            ("empty.txt", ""),
            ("none.top0.list.txt", "z\n"),
        ]);
        let categories = Categories::open(dir.path()).unwrap();
        let clip = SeededClipFeatures::new(64, "m").seeing("");
        let image = RgbImage::new(1, 1);
        let found =
            clip_matches(&image, &clip, &categories, None, &options(2, false, &[])).unwrap();
        // The blank line is a candidate (and the picture "looks like" it); the limit keeps
        // two lines of b, so top5 gives two.
        assert_eq!(found[0].matches[0].0, "");
        assert_eq!(found[1].matches.len(), 2);
        assert!(found[1].matches.iter().all(|(t, _)| t == "p" || t == "q"));
        assert!(found[2].matches.is_empty() && found[3].matches.is_empty());
        // Only a's two and b's two lines were encoded.
        assert_eq!(clip.encoded_lines(), 4);
        let result = interrogate_clip(
            "cap",
            &image,
            &clip,
            &categories,
            None,
            &options(2, false, &[]),
        );
        assert!(result.unwrap().starts_with("cap, , "));
    }

    #[test]
    fn no_lists_gives_the_caption_and_a_missing_folder_an_error() {
        let dir = folder(&[("readme.md", "x")]);
        let categories = Categories::open(dir.path()).unwrap();
        let clip = SeededClipFeatures::new(8, "m");
        let image = RgbImage::new(1, 1);
        let result = interrogate_clip(
            "cap",
            &image,
            &clip,
            &categories,
            None,
            &options(0, true, &[]),
        );
        assert_eq!(result.unwrap(), "cap");

        let gone = tempfile::tempdir().unwrap();
        let categories = Categories::open(gone.path()).unwrap();
        std::fs::remove_dir(gone.path()).unwrap();
        let error = interrogate_clip(
            "cap",
            &image,
            &clip,
            &categories,
            None,
            &options(0, true, &[]),
        )
        .unwrap_err();
        assert!(matches!(error, ClipInterrogationError::Categories(_)));
    }

    #[test]
    fn cached_features_give_the_same_result() {
        let dir = folder(&[
            ("a.txt", "red\ngreen\nblue\n"),
            ("b.top3.txt", "1\n2\n3\n4\n"),
        ]);
        let categories = Categories::open(dir.path()).unwrap();
        let cache_dir = tempfile::tempdir().unwrap();
        let cache = FeatureCache::new(cache_dir.path());
        let clip = SeededClipFeatures::new(64, "m");
        let image = RgbImage::from_pixel(5, 3, image::Rgb([10, 200, 30]));
        let options = options(0, true, &[]);
        let direct = interrogate_clip("c", &image, &clip, &categories, None, &options).unwrap();
        let miss =
            interrogate_clip("c", &image, &clip, &categories, Some(&cache), &options).unwrap();
        let encoded = clip.encoded_lines();
        let hit =
            interrogate_clip("c", &image, &clip, &categories, Some(&cache), &options).unwrap();
        assert_eq!(clip.encoded_lines(), encoded);
        assert_eq!(miss, direct);
        assert_eq!(hit, direct);
    }
}
