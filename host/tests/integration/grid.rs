//! Grid pictures against a transcription of A1111's `modules/images.py` run with Pillow and the
//! same Roboto file (tests/reference/grid_reference.py): every grid exactly A1111's size, the
//! cells exactly where A1111 pastes them, each label's ink within 2 px of Pillow's, the
//! legend pixels close (the rasterisers antialias differently); SD upscale's tiles identical.

use crate::common::run_reference;
use image::{Rgb, RgbImage};
use sdhost::prepare::tiles::{combine_grid, split_grid};
use sdhost::scripts::grid::font::LegendFont;
use sdhost::scripts::grid::{
    combine_z_grids, draw_grid_annotations, draw_prompt_matrix, image_grid, GridAnnotation,
};
use serde_json::Value;
use std::path::Path;

fn load(dir: &Path, name: &str) -> RgbImage {
    image::open(dir.join(name)).unwrap().to_rgb8()
}

fn annotations(v: &Value) -> Vec<Vec<GridAnnotation>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|lines| {
            lines
                .as_array()
                .unwrap()
                .iter()
                .map(|t| GridAnnotation::new(t.as_str().unwrap()))
                .collect()
        })
        .collect()
}

fn u32_of(case: &Value, key: &str) -> u32 {
    case[key].as_u64().unwrap() as u32
}

/// Bounding box of the ink (a channel at least 100 levels off white) in a region.
fn ink_box(img: &RgbImage, x0: u32, y0: u32, x1: u32, y1: u32) -> Option<(u32, u32, u32, u32)> {
    let mut b: Option<(u32, u32, u32, u32)> = None;
    for y in y0..y1.min(img.height()) {
        for x in x0..x1.min(img.width()) {
            if img.get_pixel(x, y).0.iter().any(|&c| c < 155) {
                b = Some(match b {
                    None => (x, y, x, y),
                    Some((a, c, d, e)) => (a.min(x), c.min(y), d.max(x), e.max(y)),
                });
            }
        }
    }
    b
}

/// The label strips of an annotated grid: one region above each column, one left of each row.
fn label_regions(case: &Value, cols: u32, rows: u32) -> Vec<(u32, u32, u32, u32)> {
    let (cw, ch) = (u32_of(case, "cell_w"), u32_of(case, "cell_h"));
    let (pad_left, pad_top) = (u32_of(case, "pad_left"), u32_of(case, "pad_top"));
    let margin = case["margin"].as_u64().unwrap_or(0) as u32;
    let mut regions = Vec::new();
    for col in 0..cols {
        let x = pad_left + (cw + margin) * col;
        regions.push((x, 0, x + cw, pad_top));
    }
    for row in 0..rows {
        let y = pad_top + (ch + margin) * row;
        regions.push((0, y, pad_left, y + ch));
    }
    regions
}

fn compare_annotated(
    name: &str,
    case: &Value,
    actual: &RgbImage,
    expected: &RgbImage,
    cols: u32,
    rows: u32,
) {
    assert_eq!(
        actual.dimensions(),
        expected.dimensions(),
        "{name}: grid size differs from A1111"
    );
    let (cw, ch) = (u32_of(case, "cell_w"), u32_of(case, "cell_h"));
    let (pad_left, pad_top) = (u32_of(case, "pad_left"), u32_of(case, "pad_top"));
    let margin = case["margin"].as_u64().unwrap_or(0) as u32;
    // Cells: pixel-identical where A1111 pastes them.
    for row in 0..rows {
        for col in 0..cols {
            let (x0, y0) = (
                pad_left + (cw + margin) * col,
                pad_top + (ch + margin) * row,
            );
            for y in y0..y0 + ch {
                for x in x0..x0 + cw {
                    assert_eq!(
                        actual.get_pixel(x, y),
                        expected.get_pixel(x, y),
                        "{name}: cell pixel ({x}, {y})"
                    );
                }
            }
        }
    }
    // Labels: the same ink boxes within 2 px, the same amount of ink within 5 %, and a small
    // mean difference over the legend (antialiasing differs: FreeType hints the glyphs).
    let mut diff_sum = 0u64;
    let mut diff_n = 0u64;
    let (mut ink_actual, mut ink_expected) = (0u64, 0u64);
    for (x0, y0, x1, y1) in label_regions(case, cols, rows) {
        let a = ink_box(actual, x0, y0, x1, y1);
        let e = ink_box(expected, x0, y0, x1, y1);
        match (a, e) {
            (None, None) => {}
            (Some(a), Some(e)) => {
                let close = a.0.abs_diff(e.0) <= 2
                    && a.1.abs_diff(e.1) <= 2
                    && a.2.abs_diff(e.2) <= 2
                    && a.3.abs_diff(e.3) <= 2;
                assert!(
                    close,
                    "{name}: label ink {a:?} vs Pillow {e:?} in region {:?}",
                    (x0, y0, x1, y1)
                );
            }
            _ => panic!(
                "{name}: label ink {a:?} vs Pillow {e:?} in region {:?}",
                (x0, y0, x1, y1)
            ),
        }
        for y in y0..y1 {
            for x in x0..x1 {
                let (a, e) = (actual.get_pixel(x, y), expected.get_pixel(x, y));
                for c in 0..3 {
                    diff_sum += u64::from(a[c].abs_diff(e[c]));
                    diff_n += 1;
                }
                ink_actual += u64::from(255 - a.0.iter().min().unwrap());
                ink_expected += u64::from(255 - e.0.iter().min().unwrap());
            }
        }
    }
    let mean = diff_sum as f64 / diff_n.max(1) as f64;
    let ink = ink_actual as f64 / ink_expected.max(1) as f64;
    println!(
        "{name}: {}×{}, legend mean difference {mean:.2} levels, ink {ink:.3}× Pillow's",
        actual.width(),
        actual.height()
    );
    assert!(
        mean < 15.0,
        "{name}: legend mean difference {mean:.2} levels"
    );
    assert!(
        (ink - 1.0).abs() < 0.05,
        "{name}: {ink:.3}× Pillow's ink in the legend"
    );
}

#[test]
fn grids_match_a1111() {
    let dir = tempfile::tempdir().unwrap();
    run_reference("grid_reference.py", &[dir.path().as_os_str()]);
    let dir = dir.path();
    let cases: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    let mut checked = 0;
    for case in cases.as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let kind = case["kind"].as_str().unwrap();
        let expected = load(dir, &format!("{name}_expected.png"));
        let cells: Vec<RgbImage> = case["cells"]
            .as_array()
            .map(|c| c.iter().map(|p| load(dir, p.as_str().unwrap())).collect())
            .unwrap_or_default();
        match kind {
            "grid" => {
                let bg = &case["background"];
                let background = Rgb([0, 1, 2].map(|i| bg[i].as_u64().unwrap() as u8));
                let rows = case["rows"].as_u64().unwrap() as usize;
                let grid = image_grid(&cells, rows, background).unwrap();
                if case.get("hor").is_none() {
                    assert_eq!(grid, expected, "{name}: image_grid differs");
                } else {
                    let hor = annotations(&case["hor"]);
                    let ver = annotations(&case["ver"]);
                    let (cw, ch) = (u32_of(case, "cell_w"), u32_of(case, "cell_h"));
                    let actual =
                        draw_grid_annotations(&grid, cw, ch, &hor, &ver, u32_of(case, "margin"))
                            .unwrap();
                    compare_annotated(
                        name,
                        case,
                        &actual,
                        &expected,
                        hor.len() as u32,
                        ver.len() as u32,
                    );
                }
            }
            "matrix" => {
                let grid = image_grid(&cells, 2, Rgb([255, 255, 255])).unwrap();
                let prompts: Vec<String> = case["prompts"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| p.as_str().unwrap().to_string())
                    .collect();
                let (cw, ch) = (u32_of(case, "cell_w"), u32_of(case, "cell_h"));
                let actual =
                    draw_prompt_matrix(&grid, cw, ch, &prompts, u32_of(case, "margin")).unwrap();
                compare_annotated(name, case, &actual, &expected, 4, 2);
            }
            "z" => {
                let labels: Vec<String> = case["labels"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| p.as_str().unwrap().to_string())
                    .collect();
                let actual = combine_z_grids(&cells, Some(&labels), Rgb([255, 255, 255])).unwrap();
                // The sub-grids are padded to the largest: compare the whole row of them.
                assert_eq!(
                    actual.dimensions(),
                    expected.dimensions(),
                    "{name}: size differs"
                );
                compare_annotated(name, case, &actual, &expected, labels.len() as u32, 0);
                let pad_top = u32_of(case, "pad_top");
                for y in pad_top..actual.height() {
                    for x in 0..actual.width() {
                        assert_eq!(
                            actual.get_pixel(x, y),
                            expected.get_pixel(x, y),
                            "{name}: sub-grid pixel ({x}, {y})"
                        );
                    }
                }
            }
            "tiles" => {
                let src = load(dir, &format!("{name}_src.png"));
                let (tw, th, overlap) = (
                    u32_of(case, "tile_w"),
                    u32_of(case, "tile_h"),
                    u32_of(case, "overlap"),
                );
                let mut grid = split_grid(&src, tw, th, overlap).unwrap();
                let origins: Vec<(i64, i64)> = case["origins"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|o| (o[0].as_i64().unwrap(), o[1].as_i64().unwrap()))
                    .collect();
                let mut index = 0;
                for (ri, row) in grid.rows.iter_mut().enumerate() {
                    for (ci, tile) in row.tiles.iter_mut().enumerate() {
                        assert_eq!(
                            (row.y, tile.x),
                            origins[index],
                            "{name}: tile {index} origin"
                        );
                        index += 1;
                        let shift = 17 * (ri + 2 * ci) as u32;
                        for p in tile.image.pixels_mut() {
                            for c in p.0.iter_mut() {
                                *c = ((u32::from(*c) * 3 + shift) % 256) as u8;
                            }
                        }
                    }
                }
                assert_eq!(index, origins.len(), "{name}: tile count");
                assert_eq!(grid.tile_count(), origins.len());
                assert_eq!(
                    combine_grid(&grid),
                    expected,
                    "{name}: combine_grid differs"
                );
            }
            other => panic!("unknown case kind {other}"),
        }
        checked += 1;
    }
    assert_eq!(checked, 10);
}

/// The font module's measurements are Pillow's: advances to 1/64 px per glyph, ascender and
/// descender exact, and the boxes of label-like lines (whose height sets the legend's) exact
/// from 11 px up; every box within a pixel (FreeType's autohinter moves a few edges outside
/// its blue zones, such as ligatures' and hyphens' tops, that the model leaves unhinted).
#[test]
fn text_measures_match_pillow() {
    const LABEL_LIKE: [&str; 5] = [
        "Steps: 20",
        "CFG Scale: 7.5",
        "AVAVA To",
        "Prompt S/R: a castle",
        "gyp",
    ];
    let dir = tempfile::tempdir().unwrap();
    run_reference("grid_reference.py", &[dir.path().as_os_str()]);
    let metrics: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("metrics.json")).unwrap())
            .unwrap();
    let (mut exact, mut total) = (0, 0);
    for m in metrics.as_array().unwrap() {
        let size = m["size"].as_u64().unwrap() as u32;
        let text = m["text"].as_str().unwrap();
        let font = LegendFont::new(size);
        let length = font.text_length(text);
        let expected_length = m["length"].as_f64().unwrap();
        assert!(
            (length - expected_length).abs() <= text.chars().count() as f64 / 64.0 + 1e-9,
            "size {size} {text:?}: length {length} vs Pillow {expected_length}"
        );
        let (asc, desc) = font.metrics();
        let em: Vec<i64> = m["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        assert_eq!(vec![asc, desc], em, "size {size}: ascender/descender");
        let b = font.text_bbox(text);
        let bbox = [b.0, b.1, b.2, b.3];
        let e: Vec<i64> = m["bbox"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        if LABEL_LIKE.contains(&text) && size >= 11 {
            assert_eq!(bbox.to_vec(), e, "size {size} {text:?}: box");
        }
        for (a, e) in bbox.iter().zip(&e) {
            assert!(
                a.abs_diff(*e) <= 1,
                "size {size} {text:?}: box {bbox:?} vs Pillow {e:?}"
            );
        }
        exact += usize::from(bbox.to_vec() == e);
        total += 1;
    }
    println!("{exact} of {total} text boxes identical to Pillow's");
}
