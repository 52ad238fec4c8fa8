//! The framework-free parts of A1111's img2img scripts against a Python transcription of them
//! (tests/reference/scripts_reference.py): prompt matrix combinations and legends, Python's
//! `shlex.split`, `cmdargs` and `splitlines` for prompts from file, loopback's strength curves,
//! both outpainting scripts' canvases and masks, and Outpainting mk2's matched noise (NumPy's
//! `default_rng(0)` stream, FFTs, scikit-image's histogram matching).

use std::path::Path;

use crate::common::run_reference;
use image::{GrayImage, RgbImage};
use sdhost::scripts::loopback::LoopbackArgs;
use sdhost::scripts::matched_noise::matched_noise;
use sdhost::scripts::outpainting::{Directions, Expansion};
use sdhost::scripts::outpainting_mk2::{ExpandStep, Mk2Args, Side};
use sdhost::scripts::poor_mans_outpainting::PoorMansArgs;
use sdhost::scripts::prompt_matrix::{annotations, grid_rows, PromptMatrixArgs};
use sdhost::scripts::prompts_from_file::{cmdargs, lines, shlex_split, LineArgs};
use serde_json::{json, Value};

fn reference() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    run_reference("scripts_reference.py", &[dir.path().as_os_str()]);
    dir
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn rgb(path: &Path) -> RgbImage {
    image::open(path).unwrap().to_rgb8()
}

fn gray(path: &Path) -> GrayImage {
    image::open(path).unwrap().to_luma8()
}

/// (values differing, largest difference) between two 8-bit pictures of one size.
fn difference(a: &[u8], b: &[u8]) -> (usize, u8) {
    assert_eq!(a.len(), b.len(), "sizes differ");
    a.iter().zip(b).fold((0, 0), |(n, worst), (x, y)| {
        let d = x.abs_diff(*y);
        (n + usize::from(d != 0), worst.max(d))
    })
}

/// The matched noise equals A1111's but for rare one-level steps where libtorch's FFT and
/// NumPy's differ in the last bits before the 8-bit truncation.
fn assert_noise_close(what: &str, actual: &RgbImage, expected: &RgbImage) {
    assert_eq!(actual.dimensions(), expected.dimensions(), "{what}: size");
    let (n, worst) = difference(actual.as_raw(), expected.as_raw());
    println!(
        "{what}: {n} of {} values differ, by at most {worst}",
        actual.as_raw().len()
    );
    assert!(worst <= 1, "{what}: a value differs by {worst}");
    assert!(
        n * 200 <= actual.as_raw().len(),
        "{what}: {n} values differ"
    );
}

fn args_json(args: &LineArgs) -> serde_json::Map<String, Value> {
    let mut map = serde_json::Map::new();
    let mut put = |key: &str, value: Option<Value>| {
        if let Some(v) = value {
            map.insert(key.into(), v);
        }
    };
    put("prompt", args.prompt.clone().map(Value::from));
    put(
        "negative_prompt",
        args.negative_prompt.clone().map(Value::from),
    );
    put("sd_model", args.sd_model.clone().map(Value::from));
    put("seed", args.seed.map(Value::from));
    put("subseed", args.subseed.map(Value::from));
    put("subseed_strength", args.subseed_strength.map(Value::from));
    put(
        "seed_resize_from_h",
        args.seed_resize_from_h.map(Value::from),
    );
    put(
        "seed_resize_from_w",
        args.seed_resize_from_w.map(Value::from),
    );
    put("sampler_name", args.sampler_name.clone().map(Value::from));
    put("batch_size", args.batch_size.map(Value::from));
    put("n_iter", args.n_iter.map(Value::from));
    put("steps", args.steps.map(Value::from));
    put("cfg_scale", args.cfg_scale.map(Value::from));
    put("width", args.width.map(Value::from));
    put("height", args.height.map(Value::from));
    map
}

#[test]
fn prompt_matrix_prompts_loopback_and_lines_match_a1111() {
    let dir = reference();
    let cases = read_json(&dir.path().join("cases.json"));

    for case in cases["matrix"].as_array().unwrap() {
        let prompt = case["prompt"].as_str().unwrap();
        let comma = PromptMatrixArgs::new(false, false, "positive", "comma", 0).unwrap();
        let space = PromptMatrixArgs::new(true, true, "negative", "space", 0).unwrap();
        assert_eq!(
            json!(comma.prompts(prompt).unwrap()),
            case["comma"],
            "{prompt:?}"
        );
        assert_eq!(
            json!(space.prompts(prompt).unwrap()),
            case["space_at_start"],
            "{prompt:?}"
        );
        assert_eq!(json!(grid_rows(prompt)), case["rows"], "{prompt:?}");
        let (hor, ver) = annotations(prompt);
        assert_eq!(json!(hor), case["hor"], "{prompt:?}");
        assert_eq!(json!(ver), case["ver"], "{prompt:?}");
    }

    for case in cases["shlex"].as_array().unwrap() {
        let line = case["line"].as_str().unwrap();
        match shlex_split(line) {
            Ok(words) => assert_eq!(json!(words), case["words"], "{line:?}"),
            Err(e) => assert!(
                case["error"].is_string(),
                "{line:?}: {e} but Python split it"
            ),
        }
    }

    const UNSUPPORTED: [&str; 8] = [
        "outpath_samples",
        "outpath_grids",
        "prompt_for_display",
        "styles",
        "restore_faces",
        "tiling",
        "do_not_save_samples",
        "do_not_save_grid",
    ];
    for case in cases["cmdargs"].as_array().unwrap() {
        let line = case["line"].as_str().unwrap();
        match (cmdargs(line), case.get("args")) {
            (Ok(args), Some(expected)) => {
                let mut expected = expected.as_object().unwrap().clone();
                // Read and ignored, as A1111 v1.10.1 ignores `p.sampler_index`.
                expected.remove("sampler_index");
                let unsupported: Vec<String> = UNSUPPORTED
                    .iter()
                    .filter(|t| expected.remove(**t).is_some())
                    .map(|t| t.to_string())
                    .collect();
                assert_eq!(args.unsupported, unsupported, "{line:?}");
                assert_eq!(args_json(&args), expected, "{line:?}");
            }
            (Err(_), None) => {}
            (ours, theirs) => panic!("{line:?}: sdhost {ours:?}, A1111 {theirs:?} / {case}"),
        }
    }

    let text = cases["lines"]["text"].as_str().unwrap();
    assert_eq!(json!(lines(text)), cases["lines"]["lines"]);

    for case in cases["loopback"].as_array().unwrap() {
        let args = LoopbackArgs::new(
            case["loops"].as_i64().unwrap(),
            case["final"].as_f64().unwrap(),
            case["curve"].as_str().unwrap(),
            "None",
        )
        .unwrap();
        let initial = case["initial"].as_f64().unwrap();
        let theirs = case["strengths"].as_array().unwrap();
        assert_eq!(theirs.len(), args.loops);
        for (i, expected) in theirs.iter().enumerate() {
            // serde_json's float parser is not correctly rounded; the formula is A1111's.
            let d = (args.strength(i, initial) - expected.as_f64().unwrap()).abs();
            assert!(d <= 1e-15, "{case}: loop {i} differs by {d}");
        }
    }
}

#[test]
fn outpainting_canvases_masks_and_matched_noise_match_a1111() {
    let dir = reference();
    let path = |name: String| dir.path().join(name);
    let picture = rgb(&path("picture.png".into()));
    let cases = read_json(&path("outpainting.json".into()));

    for (i, case) in cases["poor"].as_array().unwrap().iter().enumerate() {
        let names: Vec<&str> = case["direction"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let args = PoorMansArgs {
            pixels: case["pixels"].as_u64().unwrap() as u32,
            mask_blur: case["blur"].as_u64().unwrap() as u32,
            directions: Directions::from_names(&names).unwrap(),
            ..Default::default()
        };
        let canvas = args.canvas(&picture).unwrap();
        let e: Expansion = canvas.expansion;
        assert_eq!(
            json!([e.left, e.right, e.up, e.down, e.width, e.height]),
            case["expansion"]
        );
        assert_eq!(
            canvas.image,
            rgb(&path(format!("poor_{i}_image.png"))),
            "poor {i} image"
        );
        assert_eq!(
            canvas.mask,
            gray(&path(format!("poor_{i}_mask.png"))),
            "poor {i} mask"
        );
        assert_eq!(
            canvas.latent_mask,
            gray(&path(format!("poor_{i}_latent.png"))),
            "poor {i} latent mask"
        );
    }

    for (i, case) in cases["mk2"].as_array().unwrap().iter().enumerate() {
        let side = match case["side"].as_str().unwrap() {
            "left" => Side::Left,
            "right" => Side::Right,
            "up" => Side::Up,
            _ => Side::Down,
        };
        let (bx, by) = (
            case["blur_x"].as_u64().unwrap(),
            case["blur_y"].as_u64().unwrap(),
        );
        // The blur on each axis is the script's blur when that axis grows at all.
        let args = Mk2Args {
            mask_blur: bx.max(by) as u32,
            directions: Directions {
                left: bx > 0,
                right: false,
                up: by > 0,
                down: false,
            },
            noise_q: case["noise_q"].as_f64().unwrap(),
            color_variation: case["color_variation"].as_f64().unwrap(),
            ..Default::default()
        };
        assert_eq!(args.blurs(), (bx as u32, by as u32));
        let job = case["job"].as_array().unwrap();
        let job = (
            job[0].as_u64().unwrap() as u32,
            job[1].as_u64().unwrap() as u32,
        );
        let pixels = case["pixels"].as_u64().unwrap() as u32;
        let step = ExpandStep::new(&picture, pixels, side, &args, job).unwrap();
        assert_eq!(
            json!([step.width, step.height]),
            case["size"],
            "mk2 {i} size"
        );
        assert_eq!(
            step.mask,
            gray(&path(format!("mk2_{i}_mask.png"))),
            "mk2 {i} mask"
        );
        assert_eq!(
            step.latent_mask,
            gray(&path(format!("mk2_{i}_latent.png"))),
            "mk2 {i} latent mask"
        );
        assert_noise_close(
            &format!("mk2 {i} init"),
            &step.init_image,
            &rgb(&path(format!("mk2_{i}_init.png"))),
        );
        let result = RgbImage::from_fn(step.width, step.height, |x, y| {
            image::Rgb([
                ((x * 7) % 256) as u8,
                ((y * 5) % 256) as u8,
                (((x ^ y) * 3) % 256) as u8,
            ])
        });
        let grown = step.finish(&result);
        assert_noise_close(
            &format!("mk2 {i} grown"),
            &grown,
            &rgb(&path(format!("mk2_{i}_grown.png"))),
        );
    }

    for i in 0..3 {
        let settings = read_json(&path(format!("noise_{i}.json")));
        let noised = matched_noise(
            &rgb(&path(format!("noise_src_{i}.png"))),
            &gray(&path(format!("noise_mask_{i}.png"))),
            settings["noise_q"].as_f64().unwrap(),
            settings["color_variation"].as_f64().unwrap(),
        );
        assert_noise_close(
            &format!("matched noise {i}"),
            &noised,
            &rgb(&path(format!("noise_{i}.png"))),
        );
    }
}
