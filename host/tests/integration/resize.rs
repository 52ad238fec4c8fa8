//! A1111's resize modes against Pillow (the library A1111 resizes with) on odd sizes and
//! aspect ratios: every pixel within 1 level per channel, nearly all identical; and the
//! init image's transparency flattened as A1111 flattens it.

use crate::common::run_reference;
use sdhost::prepare::init_image::{load_init_image, DEFAULT_BACKGROUND};
use sdhost::prepare::resize::{resize_image, ResizeMode};

#[test]
fn resize_modes_match_pillow() {
    let dir = tempfile::tempdir().unwrap();
    run_reference("resize_reference.py", &[dir.path().as_os_str()]);
    let mut cases = 0;
    let mut worst = 0u8;
    let mut differing = 0usize;
    let mut total = 0usize;
    while dir.path().join(format!("src_{cases}.png")).exists() {
        let i = cases;
        let src = image::open(dir.path().join(format!("src_{i}.png")))
            .unwrap()
            .to_rgb8();
        let target = std::fs::read_to_string(dir.path().join(format!("target_{i}.txt"))).unwrap();
        let (tw, th) = target.split_once(' ').unwrap();
        let (tw, th): (u32, u32) = (tw.parse().unwrap(), th.parse().unwrap());
        for (mode_index, mode) in [
            ResizeMode::JustResize,
            ResizeMode::CropAndResize,
            ResizeMode::ResizeAndFill,
        ]
        .into_iter()
        .enumerate()
        {
            let expected = image::open(dir.path().join(format!("mode{mode_index}_{i}.png")))
                .unwrap()
                .to_rgb8();
            let actual = resize_image(mode, &src, tw, th);
            assert_eq!(actual.dimensions(), expected.dimensions());
            for (a, e) in actual.as_raw().iter().zip(expected.as_raw()) {
                let d = a.abs_diff(*e);
                worst = worst.max(d);
                differing += usize::from(d != 0);
                total += 1;
                assert!(d <= 1, "case {i} mode {mode_index}: {a} vs Pillow {e}");
            }
        }
        cases += 1;
    }
    assert!(cases >= 6);
    println!("max difference {worst} level, {differing} of {total} values differ");
    assert!(
        differing * 100 <= total,
        "more than 1% of values differ from Pillow"
    );

    // Transparency flattened over white exactly as A1111 (Pillow) does it.
    let flattened = load_init_image(&dir.path().join("rgba.png"), DEFAULT_BACKGROUND).unwrap();
    let expected = image::open(dir.path().join("flattened.png"))
        .unwrap()
        .to_rgb8();
    assert_eq!(flattened, expected, "flatten differs from Pillow");
}

#[test]
fn resize_mode_names() {
    assert_eq!(ResizeMode::parse("1"), Some(ResizeMode::CropAndResize));
    assert_eq!(
        ResizeMode::parse("resize-and-fill"),
        Some(ResizeMode::ResizeAndFill)
    );
    assert_eq!(
        ResizeMode::parse("Latent upscale"),
        Some(ResizeMode::LatentUpscale)
    );
    assert_eq!(ResizeMode::parse("stretch"), None);
    // The UI labels (what the infotext writes) parse back to their mode.
    for mode in [
        ResizeMode::JustResize,
        ResizeMode::CropAndResize,
        ResizeMode::ResizeAndFill,
        ResizeMode::LatentUpscale,
    ] {
        assert_eq!(ResizeMode::parse(mode.label()), Some(mode));
    }
}
