//! Mask preparation against the libraries A1111 uses (tests/reference/mask_reference.py):
//! OpenCV's Gaussian mask blur, Pillow's luma and alpha threshold, the "only masked" crop
//! region on edge cases, and the "fill" of masked content.

use std::path::Path;

use crate::common::run_reference;
use image::GrayImage;
use sdhost::prepare::crop::{expand_to_aspect, mask_region, CropRegion};
use sdhost::prepare::fill::fill;
use sdhost::prepare::mask::{binary_mask, blur_mask};

const BLURS: [(u32, u32); 7] = [(4, 4), (8, 8), (1, 1), (0, 3), (5, 0), (2, 7), (64, 64)];

fn gray(path: &Path) -> GrayImage {
    image::open(path).unwrap().to_luma8()
}

fn region_json(region: Option<CropRegion>) -> serde_json::Value {
    match region {
        None => serde_json::Value::Null,
        Some(r) => serde_json::json!([r.x1, r.y1, r.x2, r.y2]),
    }
}

#[test]
fn mask_preparation_matches_opencv_and_pillow() {
    let dir = tempfile::tempdir().unwrap();
    run_reference("mask_reference.py", &[dir.path().as_os_str()]);
    let path = |name: String| dir.path().join(name);

    // Mask blur: OpenCV's fixed-point Gaussian, border reflect-101.
    let mut masks = Vec::new();
    while path(format!("mask_{}.png", masks.len())).exists() {
        masks.push(gray(&path(format!("mask_{}.png", masks.len()))));
    }
    assert!(masks.len() >= 8);
    let (mut values, mut differing, mut worst) = (0usize, 0usize, 0u8);
    for (i, mask) in masks.iter().enumerate() {
        for (bx, by) in BLURS {
            let expected = gray(&path(format!("blur_{i}_{bx}_{by}.png")));
            let actual = blur_mask(mask, bx, by);
            for (a, e) in actual.as_raw().iter().zip(expected.as_raw()) {
                let d = a.abs_diff(*e);
                values += 1;
                differing += usize::from(d != 0);
                worst = worst.max(d);
                assert!(d <= 1, "mask {i} blur {bx}x{by}: {a} vs OpenCV {e}");
            }
        }
    }
    println!("mask blur: {differing} of {values} values differ from OpenCV, by at most {worst}");

    // Pillow's convert('L') and the alpha threshold of create_binary_mask.
    let rgb = image::open(path("rgb.png".into())).unwrap();
    assert_eq!(binary_mask(&rgb, true), gray(&path("luma.png".into())));
    let rgba = image::open(path("alpha.png".into())).unwrap();
    assert_eq!(binary_mask(&rgba, true), gray(&path("binary.png".into())));

    // Crop regions: bounding box + padding, grown to the job's aspect ratio, kept inside.
    let cases: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(path("regions.json".into())).unwrap())
            .unwrap();
    for case in &cases {
        let mask = &masks[case["mask"].as_u64().unwrap() as usize];
        let (w, h, pad) = (
            case["width"].as_u64().unwrap() as u32,
            case["height"].as_u64().unwrap() as u32,
            case["pad"].as_u64().unwrap() as u32,
        );
        let region = mask_region(mask, pad);
        assert_eq!(region_json(region), case["region"], "{case}");
        let expanded = region.map(|r| expand_to_aspect(r, w, h, mask.width(), mask.height()));
        assert_eq!(region_json(expanded), case["expanded"], "{case}");
    }

    // Masked content "fill": Pillow's blurs, premultiplication and compositing, exactly.
    let image = image::open(path("image.png".into())).unwrap().to_rgb8();
    let mask = blur_mask(&masks[0], 4, 4);
    let expected = image::open(path("fill_0.png".into())).unwrap().to_rgb8();
    let filled = fill(&image, &mask);
    let differing = filled
        .as_raw()
        .iter()
        .zip(expected.as_raw())
        .filter(|(a, e)| a != e)
        .count();
    assert_eq!(
        differing, 0,
        "fill differs from Pillow in {differing} values"
    );
}
