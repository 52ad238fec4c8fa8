//! Interrogate DeepBooru against `tests/reference/deepbooru_reference.py`: a tiny DeepDanbooru
//! (all 179 convolutions, widths / 32, 12 tags) whose probabilities match a from-scratch
//! PyTorch model at 128², 256² and 512²; the tag strings for A1111's options exactly; the 512²
//! path from a non-square picture through A1111's "resize and fill"; hostile, truncated and
//! wrong-layout files refused with typed errors.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use sdhost::interrogate::deepbooru::{format_tags, preprocess, DeepDanbooru, DeepbooruError};
use sdhost::interrogate::InterrogateOptions;
use sdhost::models::deepdanbooru::LayoutError;
use sdhost::pickle::PickleError;
use sdhost::weights::LoadError;
use tch::{Device, Tensor};

use crate::common::{read_tensors, run_reference};

/// The reference's files, made once for every test of this module.
fn reference() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        run_reference(
            "deepbooru_reference.py",
            &["--references".as_ref(), dir.as_os_str()],
        );
        dir
    })
}

fn model() -> DeepDanbooru {
    DeepDanbooru::load(&reference().join("model.pt"), Device::Cpu).unwrap()
}

fn picture(name: &str) -> image::RgbImage {
    image::open(reference().join(name)).unwrap().to_rgb8()
}

fn expected_probabilities() -> HashMap<String, Tensor> {
    read_tensors(&reference().join("probabilities.safetensors"))
}

fn max_abs(actual: &[f32], expected: &Tensor) -> f64 {
    let expected = Vec::<f32>::try_from(expected).unwrap();
    assert_eq!(actual.len(), expected.len());
    actual
        .iter()
        .zip(&expected)
        .map(|(a, e)| f64::from((a - e).abs()))
        .fold(0.0, f64::max)
}

#[test]
fn probabilities_match_the_reference_network_at_every_size() {
    tch::set_num_threads(1);
    let model = model();
    assert_eq!(model.tags().len(), 12);
    assert_eq!(model.net().config().stages[5].out, 128);
    let expected = expected_probabilities();
    for (name, file) in [
        ("128", "input_128.png"),
        ("256", "input_256.png"),
        ("512", "preprocessed_512.png"),
    ] {
        let p = model.probabilities(&picture(file)).unwrap();
        let err = max_abs(&p, &expected[&format!("p_{name}")]);
        println!("{name}²: max abs error {err:.2e}");
        assert!(err <= 1e-5, "{name}²: probabilities off by {err:.2e}");
    }
}

#[test]
fn tag_strings_match_for_every_option() {
    tch::set_num_threads(1);
    let model = model();
    let cases: serde_json::Value =
        serde_json::from_slice(&std::fs::read(reference().join("tags.json")).unwrap()).unwrap();
    let tags: Vec<String> = serde_json::from_value(cases["tags"].clone()).unwrap();
    assert_eq!(model.tags(), tags);
    let p256 = model.probabilities(&picture("input_256.png")).unwrap();
    let source = picture("source.png");
    let cases = cases["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 16);
    for case in cases {
        let options: InterrogateOptions = serde_json::from_value(case["options"].clone()).unwrap();
        let actual = match case["input"].as_str().unwrap() {
            "256" => format_tags(model.tags(), &p256, &options),
            // The whole of Interrogate DeepBooru: resize and fill to 512², network, format.
            _ => model.tag(&source, &options).unwrap(),
        };
        assert_eq!(actual, case["expected"].as_str().unwrap(), "{case}");
    }
}

#[test]
fn a_non_square_picture_is_resized_and_filled_as_pillow_does() {
    tch::set_num_threads(1);
    let source = picture("source.png");
    assert_ne!(source.width(), source.height());
    let ours = preprocess(&source);
    let pillow = picture("preprocessed_512.png");
    assert_eq!(ours.dimensions(), (512, 512));
    let diffs: Vec<u8> = ours
        .as_raw()
        .iter()
        .zip(pillow.as_raw())
        .map(|(a, b)| a.abs_diff(*b))
        .collect();
    let differing = diffs.iter().filter(|&&d| d > 0).count();
    println!("{differing} of {} values differ from Pillow", diffs.len());
    assert!(
        diffs.iter().all(|&d| d <= 1),
        "more than 1 level from Pillow"
    );
    assert!(differing * 100 <= diffs.len(), "more than 1% differ");
    // One level here and there moves the probabilities far less than the tag strings' margins.
    let p = model().probabilities(&ours).unwrap();
    let err = max_abs(&p, &expected_probabilities()["p_512"]);
    println!("512² through our resize: max abs error {err:.2e}");
    assert!(err <= 1e-3, "512² through our resize: off by {err:.2e}");
}

fn load_error(file: &Path) -> DeepbooruError {
    match DeepDanbooru::load(file, Device::Cpu) {
        Ok(_) => panic!("{} loaded", file.display()),
        Err(e) => {
            println!("{}: {e}", file.file_name().unwrap().to_string_lossy());
            e
        }
    }
}

#[test]
fn foreign_hostile_and_broken_files_are_typed_errors() {
    let dir = reference().join("broken");
    let error = |name: &str| load_error(&dir.join(name));
    assert!(matches!(
        error("hostile.pt"),
        DeepbooruError::Pickle(PickleError::RefusedGlobal { name, .. }) if name == "system"
    ));
    assert!(matches!(
        error("missing_conv.pt"),
        DeepbooruError::Layout {
            source: LayoutError::MissingConv { index: 57 },
            ..
        }
    ));
    assert!(matches!(
        error("wrong_kernel.pt"),
        DeepbooruError::Layout {
            source: LayoutError::Kernel {
                index: 3,
                kernel: 3,
                ..
            },
            ..
        }
    ));
    assert!(matches!(
        error("wrong_channels.pt"),
        DeepbooruError::Load(LoadError::ShapeMismatch { key, .. }) if key == "n_Conv_20.weight"
    ));
    assert!(matches!(
        error("tag_count.pt"),
        DeepbooruError::TagCount {
            tags: 11,
            channels: 12,
            ..
        }
    ));
    assert!(matches!(
        error("no_tags.pt"),
        DeepbooruError::TagCount {
            tags: 0,
            channels: 12,
            ..
        }
    ));
    assert!(matches!(
        error("bad_tag.pt"),
        DeepbooruError::NotDeepDanbooru { reason, .. } if reason.contains("tags[5]")
    ));
    assert!(matches!(
        error("head_bias.pt"),
        DeepbooruError::Layout {
            source: LayoutError::UnexpectedKey { key },
            ..
        } if key == "n_Conv_178.bias"
    ));
    assert!(matches!(
        error("extra_key.pt"),
        DeepbooruError::Layout {
            source: LayoutError::UnexpectedKey { key },
            ..
        } if key == "n_Conv_179.weight"
    ));
    assert!(matches!(
        error("not_deepdanbooru.pt"),
        DeepbooruError::NotDeepDanbooru { reason, .. } if reason.contains("no `n_Conv_<i>`")
    ));
    assert!(matches!(
        error("list_root.pt"),
        DeepbooruError::NotDeepDanbooru { reason, .. } if reason.contains("list")
    ));

    // Cut short, and absent.
    let scratch = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(reference().join("model.pt")).unwrap();
    for cut in [bytes.len() / 2, bytes.len() - 30, 10] {
        let truncated = scratch.path().join(format!("cut_{cut}.pt"));
        std::fs::write(&truncated, &bytes[..cut]).unwrap();
        assert!(matches!(load_error(&truncated), DeepbooruError::Pickle(_)));
    }
    assert!(matches!(
        load_error(&scratch.path().join("absent.pt")),
        DeepbooruError::Pickle(PickleError::Io { .. })
    ));
}

#[test]
fn sizes_the_network_cannot_take_are_typed_errors() {
    let model = model();
    for (w, h) in [(100, 128), (128, 192), (64, 64)] {
        let picture = image::RgbImage::new(w, h);
        assert!(matches!(
            model.probabilities(&picture),
            Err(DeepbooruError::InputSize(_))
        ));
    }
    assert!(matches!(
        model.tag(&image::RgbImage::new(0, 5), &InterrogateOptions::default()),
        Err(DeepbooruError::EmptyPicture { .. })
    ));
    // `tag` always resizes to 512² first, so any other picture is tagged.
    let small = image::RgbImage::from_pixel(7, 3, image::Rgb([200, 30, 90]));
    model.tag(&small, &InterrogateOptions::default()).unwrap();
}

#[test]
fn the_write_model_command_makes_a_loadable_model_per_seed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model-resnet_custom_v3.pt");
    run_reference(
        "deepbooru_reference.py",
        &[
            "--write-model".as_ref(),
            path.as_os_str(),
            "--seed".as_ref(),
            "7".as_ref(),
        ],
    );
    let model = DeepDanbooru::load(&path, Device::Cpu).unwrap();
    let picture =
        image::RgbImage::from_fn(64, 40, |x, y| image::Rgb([x as u8 * 4, y as u8 * 6, 90]));
    let ranks = InterrogateOptions {
        interrogate_return_ranks: true,
        interrogate_deepbooru_score_threshold: 0.0,
        ..InterrogateOptions::default()
    };
    // Every tag but the two ratings, with its score.
    let tags = model.tag(&picture, &ranks).unwrap();
    assert_eq!(tags.matches(", ").count(), 9, "{tags}");
}
