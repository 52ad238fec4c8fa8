//! Colour correction against the libraries A1111 uses, value for value. OpenCV 4.13's 8-bit
//! `COLOR_RGB2LAB` and `COLOR_LAB2RGB` are compared on all 2²⁴ inputs of each
//! (tests/reference/opencv_lab_reference.py); the whole correction (OpenCV's Lab,
//! scikit-image's `match_histograms`, blendmodes 2022's luminosity blend, called as A1111's
//! `apply_color_correction` calls them) on pictures, flat colours, gradients, noise, near-grey
//! and saturated images and odd sizes (tests/reference/color_correction_reference.py). Every
//! value must be identical.

use crate::common;

use image::{Rgb, RgbImage};
use sdhost::prepare::color_correction::{opencv_lab, ColorCorrection};
use std::time::Instant;

/// The 8-bit triple that pixel `i` of the exhaustive reference holds.
fn triple(i: usize) -> [u8; 3] {
    [(i >> 16) as u8, (i >> 8) as u8, i as u8]
}

/// Differing values between our conversion of every triple and the reference's bytes, with
/// the first few for the failure message.
fn count_differences(convert: fn([u8; 3]) -> [u8; 3], expected: &[u8]) -> (usize, Vec<String>) {
    assert_eq!(expected.len(), 3 << 24, "the reference wrote every triple");
    let mut count = 0;
    let mut examples = Vec::new();
    for (i, want) in expected.chunks_exact(3).enumerate() {
        let got = convert(triple(i));
        let differing = got.iter().zip(want).filter(|(a, b)| a != b).count();
        if differing > 0 && examples.len() < 5 {
            examples.push(format!("{:?} → ours {got:?}, cv2 {want:?}", triple(i)));
        }
        count += differing;
    }
    (count, examples)
}

#[test]
fn opencv_lab_conversions_equal_cv2_on_every_8_bit_triple() {
    let dir = tempfile::tempdir().unwrap();
    common::run_reference("opencv_lab_reference.py", &[dir.path().as_os_str()]);
    let start = Instant::now();
    for (name, convert, file) in [
        (
            "RGB → Lab",
            opencv_lab::rgb_to_lab as fn(_) -> _,
            "rgb_to_lab.bin",
        ),
        ("Lab → RGB", opencv_lab::lab_to_rgb, "lab_to_rgb.bin"),
    ] {
        let expected = std::fs::read(dir.path().join(file)).unwrap();
        let (count, examples) = count_differences(convert, &expected);
        println!("{name}: {count} of {} values differ", 3 << 24);
        assert_eq!(count, 0, "{name} differs from cv2: {examples:?}");
    }
    println!("both directions compared in {:.2?}", start.elapsed());
}

/// A deterministic hash of a pixel index, for noise.
fn noise(i: u32) -> u8 {
    let mut x = i.wrapping_mul(0x9e37_79b1);
    x ^= x >> 15;
    x = x.wrapping_mul(0x85eb_ca77);
    x ^= x >> 13;
    (x >> 24) as u8
}

/// A flat image of one colour.
fn flat(w: u32, h: u32, colour: [u8; 3]) -> RgbImage {
    RgbImage::from_pixel(w, h, Rgb(colour))
}

/// An image of hashed noise, its channels independent.
fn noisy(w: u32, h: u32, seed: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        let i = (seed * 7_919 + y * w + x) * 3;
        Rgb([noise(i), noise(i + 1), noise(i + 2)])
    })
}

/// The (init, generated) pairs, named; `picture` is the common test picture.
fn cases(picture: &RgbImage) -> Vec<(&'static str, RgbImage, RgbImage)> {
    let (w, h) = picture.dimensions();
    let colour_shifted = RgbImage::from_fn(w, h, |x, y| {
        let p = picture.get_pixel(x, y);
        Rgb([p[2], p[0], p[1].saturating_add(40)])
    });
    let darker_noisy = RgbImage::from_fn(w, h, |x, y| {
        let n = ((x * 7919 + y * 104_729) % 61) as u8;
        let p = picture.get_pixel(x, y);
        Rgb([p[0] / 2 + n, p[1] / 3 + n, p[2] / 2])
    });
    let saturated = RgbImage::from_fn(w, h, |x, y| {
        Rgb([
            (x * 2) as u8,
            255 - (y * 3) as u8,
            if x > y { 250 } else { 5 },
        ])
    });
    // Every value of two channels, the third their XOR, on an odd size.
    let gradient = RgbImage::from_fn(257, 131, |x, y| {
        Rgb([x.min(255) as u8, (y * 2) as u8, ((x ^ y) & 255) as u8])
    });
    // Grey with one-level tints, and pure black and white pixels, whose luma the blend must
    // reach from colourful matched values.
    let near_grey = RgbImage::from_fn(90, 61, |x, y| {
        let g = ((x + y) * 2).min(255) as u8;
        match noise(y * 90 + x) % 8 {
            0 => Rgb([0, 0, 0]),
            1 => Rgb([255, 255, 255]),
            k => Rgb([g.saturating_add(k & 1), g, g.saturating_sub((k >> 1) & 1)]),
        }
    });
    let greyish_target = RgbImage::from_fn(50, 40, |x, y| {
        let g = (x * 5) as u8;
        Rgb([g, g.saturating_add((y % 3) as u8), g])
    });
    // Blocks of primaries, secondaries, black, white and mid grey.
    let palette = [
        [255, 0, 0],
        [0, 255, 0],
        [0, 0, 255],
        [255, 255, 0],
        [0, 255, 255],
        [255, 0, 255],
        [0, 0, 0],
        [255, 255, 255],
        [128, 128, 128],
    ];
    let extremes = RgbImage::from_fn(45, 37, |x, y| {
        Rgb(palette[((x / 5 + y / 4) % palette.len() as u32) as usize])
    });
    vec![
        ("colour-shifted picture", picture.clone(), colour_shifted),
        ("darker noisy picture", picture.clone(), darker_noisy),
        ("saturated ramps", picture.clone(), saturated),
        (
            "flat colour onto the picture",
            picture.clone(),
            flat(40, 30, [200, 30, 90]),
        ),
        (
            "gradient onto a flat colour",
            flat(33, 21, [90, 140, 60]),
            gradient.clone(),
        ),
        (
            "odd-size gradient onto the picture",
            picture.clone(),
            gradient,
        ),
        (
            "noise onto noise of another size",
            noisy(64, 50, 1),
            noisy(123, 77, 2),
        ),
        (
            "near grey onto the picture",
            picture.clone(),
            near_grey.clone(),
        ),
        ("near grey onto grey", greyish_target.clone(), near_grey),
        (
            "saturated blocks onto grey",
            greyish_target,
            extremes.clone(),
        ),
        ("saturated blocks onto noise", noisy(20, 20, 3), extremes),
        (
            "one pixel",
            flat(1, 1, [10, 200, 30]),
            flat(1, 1, [240, 20, 120]),
        ),
        ("one column", picture.clone(), noisy(1, 97, 4)),
    ]
}

#[test]
fn colour_correction_equals_a1111_on_every_pixel() {
    let dir = tempfile::tempdir().unwrap();
    let picture = common::test_picture(&dir.path().join("picture.png"));
    let cases = cases(&picture);
    for (i, (_, target, generated)) in cases.iter().enumerate() {
        target
            .save(dir.path().join(format!("target_{i}.png")))
            .unwrap();
        generated
            .save(dir.path().join(format!("generated_{i}.png")))
            .unwrap();
    }
    common::run_reference("color_correction_reference.py", &[dir.path().as_os_str()]);
    for (i, (name, target, generated)) in cases.iter().enumerate() {
        let expected = image::open(dir.path().join(format!("corrected_{i}.png")))
            .unwrap()
            .to_rgb8();
        let actual = ColorCorrection::new(target).apply(generated);
        let (_, max) = common::pixel_difference(&actual, &expected);
        let (moved, _) = common::pixel_difference(generated, &expected);
        println!("{name}: max |Δ| {max}; the correction moved values by {moved:.2} on average");
        assert_eq!(max, 0, "{name}: corrected image differs from A1111's");
        if i < 3 {
            assert!(
                moved > 5.0,
                "{name}: the correction should move it, the test cannot tell"
            );
        }
    }
}

#[test]
fn empty_images_pass_through_colour_correction() {
    let picture = common::test_picture(&tempfile::tempdir().unwrap().path().join("p.png"));
    let empty = RgbImage::new(0, 0);
    assert_eq!(ColorCorrection::new(&picture).apply(&empty), empty);
    // scikit-image raises on an empty template; we keep the generated image.
    assert_eq!(ColorCorrection::new(&empty).apply(&picture), picture);
}
