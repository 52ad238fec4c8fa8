//! `sdhost txt2img` with Hires. fix on a tiny model: PNGs at the hires size whose infotext
//! carries A1111's txt2img keys, read back by `png-info` and reproduced by `--from-png`;
//! user mistakes as one-line errors.

use std::ffi::OsStr;
use std::path::Path;

use crate::cli::{assert_one_line_error, assert_success, make_tiny, pixels, run_sdhost};

fn txt2img(model: &Path, out_dir: &Path, extra: &[&str]) -> std::process::Output {
    let mut args: Vec<&OsStr> = vec![
        "txt2img".as_ref(),
        "--model".as_ref(),
        model.as_os_str(),
        "--out-dir".as_ref(),
        out_dir.as_os_str(),
        "--threads".as_ref(),
        "1".as_ref(),
    ];
    args.extend(extra.iter().map(OsStr::new));
    run_sdhost(&args)
}

#[test]
fn txt2img_with_hires_fix_writes_pngs_that_from_png_reproduces() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny.safetensors");
    make_tiny(&model, &[]);
    let out_dir = dir.path().join("out");
    let out = txt2img(
        &model,
        &out_dir,
        &[
            "--prompt",
            "a (red:1.1) cat",
            "--negative-prompt",
            "blurry",
            "--width",
            "48",
            "--height",
            "32",
            "--seed",
            "5",
            "--steps",
            "4",
            "--sampler",
            "Euler a",
            "--batch-count",
            "2",
            "--enable-hr",
            "true",
            "--hr-scale",
            "1.5",
            "--hr-upscaler",
            "Latent (bicubic)",
            "--hr-second-pass-steps",
            "3",
            "--hr-sampler-name",
            "DPM++ 2M",
            "--hr-prompt",
            "a big cat",
            "--denoising-strength",
            "0.6",
        ],
    );
    assert_success(&out);
    let second = out_dir.join("00001-6.png");
    assert_eq!(pixels(&second).dimensions(), (72, 48), "the hires size");

    let out = run_sdhost(&["png-info".as_ref(), second.as_os_str(), "--json".as_ref()]);
    assert_success(&out);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let params = &json["parameters"];
    for (key, value) in [
        ("Steps", "4"),
        ("Sampler", "Euler a"),
        ("Seed", "6"),
        ("Size", "48x32"),
        ("Denoising strength", "0.6"),
        ("Hires sampler", "DPM++ 2M"),
        ("Hires prompt", "a big cat"),
        ("Hires upscale", "1.5"),
        ("Hires steps", "3"),
        ("Hires upscaler", "Latent (bicubic)"),
    ] {
        assert_eq!(params[key], value, "{key} in {params}");
    }

    let again = dir.path().join("again");
    let from_png = ["--from-png", second.to_str().unwrap()];
    assert_success(&txt2img(&model, &again, &from_png));
    assert_eq!(pixels(&again.join("00000-6.png")), pixels(&second));

    let none = dir.path().join("none");
    let run = |extra: &[&str]| txt2img(&model, &none, extra);
    assert_one_line_error(
        &run(&["--enable-hr", "true", "--hr-upscaler", "4x-UltraSharp"]),
        "could not find upscaler named 4x-UltraSharp",
    );
    assert_one_line_error(
        &run(&["--enable-hr", "true", "--hr-scale", "100"]),
        "Hires. fix size",
    );
    assert!(!none.exists());
}

#[test]
fn txt2img_without_hires_has_no_denoising_strength_and_pixel_upscalers_run() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny.safetensors");
    make_tiny(&model, &[]);
    let plain = dir.path().join("plain");
    let base = [
        "--width", "40", "--height", "32", "--seed", "3", "--steps", "3",
    ];
    assert_success(&txt2img(&model, &plain, &base));
    let image = plain.join("00000-3.png");
    assert_eq!(pixels(&image).dimensions(), (40, 32));
    let text = sdhost::pipeline::png_info::read_png_infotext(&image)
        .unwrap()
        .unwrap();
    assert!(!text.contains("Denoising strength"), "{text}");
    assert!(!text.contains("Hires"), "{text}");

    // The txt2img tab's Hires. fix defaults: upscaler Latent, strength 0.7, scale 2.
    let tab = dir.path().join("tab");
    assert_success(&txt2img(
        &model,
        &tab,
        &[&base[..], &["--enable-hr", "true"]].concat(),
    ));
    let image = tab.join("00000-3.png");
    assert_eq!(pixels(&image).dimensions(), (80, 64));
    let text = sdhost::pipeline::png_info::read_png_infotext(&image)
        .unwrap()
        .unwrap();
    for key in [
        "Denoising strength: 0.7",
        "Hires upscale: 2",
        "Hires upscaler: Latent",
    ] {
        assert!(text.contains(key), "{key} in {text}");
    }

    for upscaler in ["None", "Lanczos", "Nearest"] {
        let out_dir = dir.path().join(upscaler);
        let hires = [
            "--enable-hr",
            "true",
            "--hr-upscaler",
            upscaler,
            "--hr-resize-x",
            "64",
        ];
        assert_success(&txt2img(
            &model,
            &out_dir,
            &[&base[..], &hires[..]].concat(),
        ));
        // 64 wide keeps 40:32, so 64x51 → the 8-pixel grid: 64x48.
        assert_eq!(pixels(&out_dir.join("00000-3.png")).dimensions(), (64, 48));
    }
}
