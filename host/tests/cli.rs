//! The `sdhost` binary on good and bad input: one-line errors, non-zero exit, never a panic.

use std::path::Path;
use std::process::{Command, Output};

/// Runs the binary with mixed `&str`/path arguments.
macro_rules! sdhost {
    ($($arg:expr),* $(,)?) => {
        run_sdhost(&[$(std::ffi::OsStr::new(&$arg)),*])
    };
}

fn run_sdhost(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sdhost"))
        .args(args)
        .env(
            "SDHOST_CACHE_DIR",
            std::env::temp_dir().join("sdhost-test-cache"),
        )
        .output()
        .expect("run sdhost")
}

fn assert_one_line_error(out: &Output, mentions: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "expected failure, got success; stderr: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "not one line: {stderr}"
    );
    assert!(
        stderr.starts_with("error: ") && stderr.contains(mentions),
        "{stderr}"
    );
}

fn make_tiny(path: &Path, extra: &[&str]) {
    let mut args: Vec<&std::ffi::OsStr> =
        vec!["dev".as_ref(), "make-tiny-model".as_ref(), path.as_os_str()];
    args.extend(extra.iter().map(std::ffi::OsStr::new));
    let out = run_sdhost(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn info_describes_a_tiny_model() {
    let dir = tempfile::tempdir().unwrap();
    // Missing folders of the output path are created.
    let model = dir.path().join("models/new/tiny.safetensors");
    make_tiny(&model, &["--inpainting", "--dtype", "fp16"]);
    let out = sdhost!("info", model);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "SD 1.x inpainting",
        "in 9 out 4",
        "F16",
        "model hash:",
        "legacy",
        "vocabulary 49408",
    ] {
        assert!(
            text.contains(expected),
            "`{expected}` missing from:\n{text}"
        );
    }
    let json = sdhost!("info", "--json", model);
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).expect("valid JSON");
    assert_eq!(value["architecture"]["unet"]["in_channels"], 9);
    assert_eq!(value["hashes"]["model_hash"].as_str().unwrap().len(), 10);
}

#[test]
fn check_runs_every_network() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny.safetensors");
    make_tiny(&model, &[]);
    let out = sdhost!("check", model, "--threads", "1",);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok: every network ran"));
}

#[test]
fn bad_files_fail_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny.safetensors");
    make_tiny(&model, &[]);
    let bytes = std::fs::read(&model).unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty.safetensors", vec![], "empty"),
        (
            "truncated.safetensors",
            bytes[..bytes.len() - 100].to_vec(),
            "not a valid .safetensors",
        ),
        (
            "corrupt.safetensors",
            [&[0xffu8; 8][..], &bytes[8..]].concat(),
            "not a valid .safetensors",
        ),
        (
            "text.safetensors",
            b"hello, this is not a model".to_vec(),
            "not a valid .safetensors",
        ),
        (
            "model.ckpt",
            b"\x80\x02}q\x00.".to_vec(),
            "convert it to .safetensors",
        ),
    ];
    for (name, data, mentions) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, data).unwrap();
        for cmd in ["info", "check"] {
            let out = sdhost!(cmd, path);
            assert_one_line_error(&out, mentions);
            assert_one_line_error(&out, name);
        }
    }
    let missing = dir.path().join("absent.safetensors");
    assert_one_line_error(&sdhost!("info", missing), "cannot read");
}

#[test]
fn non_sd_safetensors_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("not-sd.safetensors");
    let t = tch::Tensor::zeros([4, 4], (tch::Kind::Float, tch::Device::Cpu));
    sdhost::tiny_model::save_safetensors(&[("lora_unet_down.weight".into(), t)], &path).unwrap();
    assert_one_line_error(&sdhost!("info", path), "not a Stable Diffusion checkpoint");
}

#[test]
fn unknown_device_and_dtype_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny.safetensors");
    make_tiny(&model, &[]);
    let out = sdhost!("check", model, "--device", "tpu",);
    assert_one_line_error(&out, "unknown device `tpu`");
    let out = sdhost!("check", model, "--dtype", "int3",);
    assert_one_line_error(&out, "unknown dtype `int3`");
}

#[test]
fn prompt_shows_schedule_tokens_and_embeddings() {
    let dir = tempfile::tempdir().unwrap();
    let emb_dir = dir.path().join("embeddings");
    std::fs::create_dir(&emb_dir).unwrap();
    let vectors = tch::Tensor::ones([2, 768], (tch::Kind::Float, tch::Device::Cpu));
    sdhost::tiny_model::save_safetensors(
        &[("emb_params".into(), vectors)],
        &emb_dir.join("dongwm-nt.safetensors"),
    )
    .unwrap();
    let out = sdhost!(
        "prompt",
        "a (cat:1.3) [dog:bird:0.5] BREAK dongwm-nt",
        "--steps",
        "10",
        "--embeddings-dir",
        emb_dir,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "model calls ..=5: \"a (cat:1.3) dog BREAK dongwm-nt\"",
        "model calls ..=10: \"a (cat:1.3) bird BREAK dongwm-nt\"",
        "cat</w>×1.300",
        "in 2 chunk(s)",
        "<dongwm-nt> <dongwm-nt>",
        "TI hashes: dongwm-nt: ",
    ] {
        assert!(
            text.contains(expected),
            "`{expected}` missing from:\n{text}"
        );
    }
}

#[test]
fn samplers_lists_every_plugin_and_skipped_library() {
    let dir = tempfile::tempdir().unwrap();
    let release = Path::new(env!("CARGO_BIN_EXE_sdhost")).parent().unwrap();
    for lib in ["libexample_sampler.so", "libnot_a_plugin.so"] {
        std::fs::copy(release.join(lib), dir.path().join(lib)).unwrap();
    }
    let out = sdhost!("samplers", "--plugins-dir", dir.path(), "--options");
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = |name: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} missing from:\n{stdout}"))
            .to_string()
    };
    assert!(line("Euler a").contains("sdhost built-in"));
    assert!(line("Midpoint").contains("example"));
    assert!(stdout.contains("midpoint = 0.5"), "{stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("libnot_a_plugin.so: not an sdhost sampler plugin"),
        "{stderr}"
    );
}

#[test]
fn png_info_prints_and_parses_infotext() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("00000-1.png");
    let text = "a cat\nNegative prompt: blurry\nSteps: 20, Sampler: Euler, Schedule type: Automatic, CFG scale: 7, Seed: 1, Size: 8x8, TI hashes: \"a: 1, b: 2\"";
    let image = image::RgbImage::new(8, 8);
    sdhost::pipeline::png_info::save_png(&path, &image, Some(text)).unwrap();
    let out = sdhost!("png-info", path);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim_end(), text);
    let out = sdhost!("png-info", path, "--json");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["negative_prompt"], "blurry");
    assert_eq!(json["parameters"]["TI hashes"], "a: 1, b: 2");
    let plain = dir.path().join("plain.png");
    sdhost::pipeline::png_info::save_png(&plain, &image, None).unwrap();
    assert_one_line_error(&sdhost!("png-info", plain), "has no generation parameters");
    assert_one_line_error(
        &sdhost!("png-info", dir.path().join("missing.png")),
        "missing.png",
    );
}
