//! Colour correction against A1111's code path (OpenCV Lab, scikit-image histogram matching,
//! blendmodes' luminosity blend) in tests/reference/color_correction_reference.py.

mod common;

use image::RgbImage;
use sdhost::prepare::color_correction::ColorCorrection;

/// Mean absolute difference per channel value allowed (OpenCV's 8-bit Lab is fixed point,
/// ours is computed in f64 and rounded).
const MEAN_TOLERANCE: f64 = 1.0;

#[test]
fn color_correction_matches_a1111() {
    let dir = tempfile::tempdir().unwrap();
    let target = common::test_picture(&dir.path().join("target.png"));
    let (w, h) = target.dimensions();
    // A colour-shifted copy, a darker noisy one and a saturated one.
    let generated = [
        RgbImage::from_fn(w, h, |x, y| {
            let p = target.get_pixel(x, y);
            image::Rgb([p[2], p[0], p[1].saturating_add(40)])
        }),
        RgbImage::from_fn(w, h, |x, y| {
            let n = ((x * 7919 + y * 104_729) % 61) as u8;
            let p = target.get_pixel(x, y);
            image::Rgb([p[0] / 2 + n, p[1] / 3 + n, p[2] / 2])
        }),
        RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([
                (x * 2) as u8,
                255 - (y * 3) as u8,
                if x > y { 250 } else { 5 },
            ])
        }),
    ];
    for (i, image) in generated.iter().enumerate() {
        image
            .save(dir.path().join(format!("generated_{i}.png")))
            .unwrap();
    }
    common::run_reference("color_correction_reference.py", &[dir.path().as_os_str()]);
    let correction = ColorCorrection::new(&target);
    for (i, image) in generated.iter().enumerate() {
        let expected = image::open(dir.path().join(format!("corrected_{i}.png")))
            .unwrap()
            .to_rgb8();
        let actual = correction.apply(image);
        let (mean, max) = common::pixel_difference(&actual, &expected);
        let (moved, _) = common::pixel_difference(image, &expected);
        println!("image {i}: mean |Δ| {mean:.4}, max {max}; correction moved it by {moved:.2}");
        assert!(mean <= MEAN_TOLERANCE, "image {i}: mean |Δ| {mean:.4}");
        assert!(moved > 5.0 * MEAN_TOLERANCE, "the test cannot tell");
    }
}
