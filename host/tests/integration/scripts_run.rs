//! A1111's other img2img scripts run end to end through `sdhost img2img --script`: Loopback
//! equals its chain of img2img calls pixel for pixel, a prompt matrix cell and a prompts-from-file
//! line equal their single jobs, the outpainting scripts and SD upscale return one composed
//! picture of the grown or enlarged size (their tile jobs unsaved), and bad script arguments
//! are refused before the model loads.

use std::path::{Path, PathBuf};
use std::process::Output;

use crate::cli::{assert_success, pixels, run_sdhost};
use crate::common;
use sdhost::scripts::loopback::LoopbackArgs;

/// A folder with a tiny model and a 40x32 init picture.
struct Fixture {
    dir: tempfile::TempDir,
    model: PathBuf,
    init: PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let model = common::tiny_model(dir.path(), 7);
    let init = dir.path().join("init.png");
    image::RgbImage::from_fn(40, 32, |x, y| {
        image::Rgb([(x * 6) as u8, (y * 7) as u8, 120])
    })
    .save(&init)
    .unwrap();
    Fixture { dir, model, init }
}

/// `sdhost img2img` on the fixture's model from `init` into `out` with `extra` flags.
fn img2img(fx: &Fixture, init: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "img2img".as_ref(),
        "--model".as_ref(),
        fx.model.as_os_str(),
        "--out-dir".as_ref(),
        out.as_os_str(),
        "--threads".as_ref(),
        "1".as_ref(),
        "--init-image".as_ref(),
        init.as_os_str(),
        "--sampler-name".as_ref(),
        "Euler".as_ref(),
    ];
    // Seed 5 and 3 steps unless `extra` says otherwise.
    for (flag, value) in [("--seed", "5"), ("--steps", "3")] {
        if !extra.contains(&flag) {
            args.extend([std::ffi::OsStr::new(flag), std::ffi::OsStr::new(value)]);
        }
    }
    args.extend(extra.iter().map(std::ffi::OsStr::new));
    run_sdhost(&args)
}

fn pngs(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|e| e == "png"));
    files.sort();
    files
}

#[test]
fn loopback_equals_its_chain_of_img2img_calls() {
    let fx = fixture();
    let (out, grids) = (fx.dir.path().join("out"), fx.dir.path().join("grids"));
    let done = img2img(
        &fx,
        &fx.init,
        &out,
        &[
            "--denoising-strength",
            "0.6",
            "--script",
            "Loopback",
            "--script-arg",
            "3",
            "--script-arg",
            "0.3",
            "--script-arg",
            "Lazy",
            "--script-arg",
            "None",
            "--grid-dir",
            grids.to_str().unwrap(),
        ],
    );
    assert_success(&done);
    let loops = pngs(&out);
    assert_eq!(loops.len(), 3, "{loops:?}");
    assert_eq!(pngs(&grids).len(), 1, "the loops' one-row grid");
    assert_eq!(pixels(&pngs(&grids)[0]).width(), 3 * 40);

    let args = LoopbackArgs::new(3, 0.3, "Lazy", "None").unwrap();
    let mut init = fx.init.clone();
    for (i, looped) in loops.iter().enumerate() {
        let single_out = fx.dir.path().join(format!("chain{i}"));
        let strength = format!("{:?}", args.strength(i, 0.6));
        let seed = (5 + i).to_string();
        let single = img2img(
            &fx,
            &init,
            &single_out,
            &["--denoising-strength", &strength, "--seed", &seed],
        );
        assert_success(&single);
        let chained = pngs(&single_out).remove(0);
        assert_eq!(pixels(looped), pixels(&chained), "loop {i}");
        init = chained;
    }
}

#[test]
fn prompt_matrix_and_prompts_from_file_run_their_single_jobs() {
    let fx = fixture();
    let (out, grids) = (fx.dir.path().join("matrix"), fx.dir.path().join("grids"));
    let done = img2img(
        &fx,
        &fx.init,
        &out,
        &[
            "--prompt",
            "a barn|red|at night",
            "--script",
            "prompt matrix",
            "--grid-dir",
            grids.to_str().unwrap(),
        ],
    );
    assert_success(&done);
    let cells = pngs(&out);
    assert_eq!(cells.len(), 4);
    let grid = pngs(&grids);
    assert_eq!(grid.len(), 1);
    assert_eq!(grid[0].file_name().unwrap(), "prompt_matrix-0000.png");
    assert!(
        pixels(&grid[0]).width() > 2 * 40,
        "two columns and a legend"
    );
    let single_out = fx.dir.path().join("matrix_single");
    assert_success(&img2img(
        &fx,
        &fx.init,
        &single_out,
        &["--prompt", "a barn, red, at night"],
    ));
    assert_eq!(pixels(&cells[3]), pixels(&pngs(&single_out)[0]));

    let out = fx.dir.path().join("lines");
    let done = img2img(
        &fx,
        &fx.init,
        &out,
        &[
            "--prompt",
            "barn",
            "--script",
            "Prompts from file or textbox",
            "--script-arg",
            "true",
            "--script-arg",
            "false",
            "--script-arg",
            "end",
            "--script-arg",
            "--prompt \"a cat\" --steps 2\n\ndog",
        ],
    );
    assert_success(&done);
    let lines = pngs(&out);
    assert_eq!(lines.len(), 2);
    // "Iterate seed every line": the second line's seed is 5 + batch size × batch count.
    for (i, (prompt, steps, seed)) in [("barn a cat", "2", "5"), ("barn dog", "3", "6")]
        .into_iter()
        .enumerate()
    {
        let single_out = fx.dir.path().join(format!("line{i}"));
        assert_success(&img2img(
            &fx,
            &fx.init,
            &single_out,
            &["--prompt", prompt, "--steps", steps, "--seed", seed],
        ));
        assert_eq!(pixels(&lines[i]), pixels(&pngs(&single_out)[0]), "line {i}");
    }
}

#[test]
fn outpainting_and_sd_upscale_return_one_composed_picture() {
    let fx = fixture();
    let run = |name: &str, extra: &[&str]| -> image::RgbImage {
        let out = fx.dir.path().join(name);
        let grids = fx.dir.path().join(format!("{name}-grids"));
        let mut flags = vec!["--grid-dir", grids.to_str().unwrap()];
        flags.extend(extra);
        let done = img2img(&fx, &fx.init, &out, &flags);
        assert_success(&done);
        let files = pngs(&out);
        assert_eq!(files.len(), 1, "{name}: only the composed picture is saved");
        pixels(&files[0])
    };
    // 40 + 8 on the left rounds up to 64: the left side grows by 24.
    let grown = run(
        "mk2",
        &[
            "--script",
            "Outpainting mk2",
            "--script-arg",
            "null",
            "--script-arg",
            "8",
            "--script-arg",
            "4",
            "--script-arg",
            "[\"left\"]",
        ],
    );
    assert_eq!(grown.dimensions(), (64, 32));
    let poor = run(
        "poor",
        &[
            "--width",
            "64",
            "--height",
            "64",
            "--script",
            "Poor man's outpainting",
            "--script-arg",
            "8",
            "--script-arg",
            "2",
            "--script-arg",
            "1",
        ],
    );
    assert_eq!(poor.dimensions(), (64, 64));
    let upscaled = run(
        "upscale",
        &[
            "--width",
            "32",
            "--height",
            "32",
            "--script",
            "SD upscale",
            "--script-arg",
            "null",
            "--script-arg",
            "8",
            "--script-arg",
            "Lanczos",
            "--script-arg",
            "2",
        ],
    );
    assert_eq!(upscaled.dimensions(), (80, 64));
}

#[test]
fn bad_script_arguments_are_refused_before_the_model_loads() {
    let fx = fixture();
    let out = fx.dir.path().join("out");
    for (flags, message) in [
        (vec!["--script", "Loopback", "--script-arg", "0"], "loops"),
        (
            vec![
                "--script",
                "Loopback",
                "--script-arg",
                "4",
                "--script-arg",
                "0.5",
                "--script-arg",
                "Linear",
                "--script-arg",
                "CLIP",
            ],
            "interrogat",
        ),
        (
            vec![
                "--script",
                "Outpainting mk2",
                "--script-arg",
                "null",
                "--script-arg",
                "8",
                "--script-arg",
                "4",
                "--script-arg",
                "[\"sideways\"]",
            ],
            "direction",
        ),
        (
            vec![
                "--script",
                "SD upscale",
                "--script-arg",
                "null",
                "--script-arg",
                "64",
                "--script-arg",
                "ESRGAN_4x",
            ],
            "upscaler",
        ),
        (
            vec![
                "--script",
                "Prompt matrix",
                "--script-arg",
                "false",
                "--script-arg",
                "false",
                "--script-arg",
                "both",
            ],
            "prompt type",
        ),
        (vec!["--script", "No such script"], "not found"),
    ] {
        let done = img2img(&fx, &fx.init, &out, &flags);
        assert!(!done.status.success(), "{flags:?} ran");
        let stderr = String::from_utf8_lossy(&done.stderr).to_lowercase();
        assert!(stderr.contains(message), "{flags:?}: {stderr}");
        assert!(
            !out.exists() || pngs(&out).is_empty(),
            "{flags:?} made images"
        );
    }
}

/// Through A1111's HTTP API: Loopback's `script_args` return the loops' grid first, then each
/// loop, and each loop is the API's img2img of the previous one (strength on the curve, seed
/// one higher per loop); SD upscale answers the composed picture at the scaled size.
#[test]
fn api_runs_loopback_and_sd_upscale_from_script_args() {
    use crate::api::{decode_png, init_picture, post, start};
    let server = start(&[], None);
    let dir = tempfile::tempdir().unwrap();
    let (_, init) = init_picture(dir.path());
    let body = |init: &str, seed: u64, strength: f64| {
        serde_json::json!({
            "init_images": [init], "prompt": "a red barn", "seed": seed, "steps": 4,
            "sampler_name": "Euler", "denoising_strength": strength, "width": 40, "height": 32,
        })
    };
    let mut request = body(&init, 5, 0.6);
    request["script_name"] = "loopback".into();
    request["script_args"] = serde_json::json!([2, 0.3, "Lazy", "None"]);
    let (status, answer) = post(&server, "/sdapi/v1/img2img", &request);
    assert_eq!(status, 200, "{answer}");
    let images = answer["images"].as_array().unwrap();
    assert_eq!(images.len(), 3, "the grid, then the two loops");
    assert_eq!(decode_png(images[0].as_str().unwrap()).0.width(), 2 * 40);

    let args = LoopbackArgs::new(2, 0.3, "Lazy", "None").unwrap();
    let mut previous = init.clone();
    for (i, looped) in images[1..].iter().enumerate() {
        let (status, single) = post(
            &server,
            "/sdapi/v1/img2img",
            &body(&previous, 5 + i as u64, args.strength(i, 0.6)),
        );
        assert_eq!(status, 200, "{single}");
        let chained = single["images"][0].as_str().unwrap();
        assert_eq!(
            decode_png(looped.as_str().unwrap()).0,
            decode_png(chained).0,
            "loop {i}"
        );
        previous = chained.to_string();
    }

    let mut request = body(&init, 5, 0.4);
    request["script_name"] = "SD upscale".into();
    request["script_args"] = serde_json::json!([null, 8, "Lanczos", 2]);
    let (status, answer) = post(&server, "/sdapi/v1/img2img", &request);
    assert_eq!(status, 200, "{answer}");
    let images = answer["images"].as_array().unwrap();
    assert_eq!(images.len(), 1, "only the composed picture");
    let (picture, text) = decode_png(images[0].as_str().unwrap());
    // The 40x36 init at scale 2, rounded down to multiples of 8 as Upscaler.upscale does.
    assert_eq!(picture.dimensions(), (80, 72));
    assert!(text.unwrap().contains("SD upscale upscaler: Lanczos"));
}
