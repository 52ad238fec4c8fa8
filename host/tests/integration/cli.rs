//! The `sdhost` binary on good and bad input: one-line errors, non-zero exit, never a panic.

use std::path::Path;
use std::process::{Command, Output};

/// Runs the binary with mixed `&str`/path arguments.
macro_rules! sdhost {
    ($($arg:expr),* $(,)?) => {
        run_sdhost(&[$(std::ffi::OsStr::new(&$arg)),*])
    };
}

pub(crate) fn run_sdhost(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sdhost"))
        .args(args)
        .env(
            "SDHOST_CACHE_DIR",
            std::env::temp_dir().join("sdhost-test-cache"),
        )
        .output()
        .expect("run sdhost")
}

/// The command succeeded; its stderr is the failure message otherwise.
pub(crate) fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub(crate) fn assert_one_line_error(out: &Output, mentions: &str) {
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

pub(crate) fn make_tiny(path: &Path, extra: &[&str]) {
    let mut args: Vec<&std::ffi::OsStr> =
        vec!["dev".as_ref(), "make-tiny-model".as_ref(), path.as_os_str()];
    args.extend(extra.iter().map(std::ffi::OsStr::new));
    let out = run_sdhost(&args);
    assert_success(&out);
}

#[test]
fn info_describes_a_tiny_model() {
    let dir = tempfile::tempdir().unwrap();
    // Missing folders of the output path are created.
    let model = dir.path().join("models/new/tiny.safetensors");
    make_tiny(&model, &["--inpainting", "--dtype", "fp16"]);
    let out = sdhost!("info", model);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_success(&out);
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
    assert_success(&out);
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
            "not a PyTorch file",
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
    assert_success(&out);
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

/// A small RGBA init image with a transparent corner.
fn write_init(path: &Path) {
    let image = image::RgbaImage::from_fn(40, 36, |x, y| {
        image::Rgba([
            (x * 6) as u8,
            (y * 7) as u8,
            120,
            if x + y < 10 { 0 } else { 255 },
        ])
    });
    image.save(path).unwrap();
}

/// A folder with a tiny model, an init image and the path of an output folder.
struct Img2ImgFixture {
    dir: tempfile::TempDir,
    model: std::path::PathBuf,
    init: std::path::PathBuf,
    out_dir: std::path::PathBuf,
}

fn img2img_fixture() -> Img2ImgFixture {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny.safetensors");
    make_tiny(&model, &[]);
    let init = dir.path().join("init.png");
    write_init(&init);
    let out_dir = dir.path().join("out");
    Img2ImgFixture {
        dir,
        model,
        init,
        out_dir,
    }
}

/// `sdhost img2img` on `model` and `init` into `out_dir` with more flags.
fn img2img_into(model: &Path, init: &Path, out_dir: &Path, extra: &[&str]) -> Output {
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "img2img".as_ref(),
        "--model".as_ref(),
        model.as_os_str(),
        "--init-image".as_ref(),
        init.as_os_str(),
        "--out-dir".as_ref(),
        out_dir.as_os_str(),
    ];
    args.extend(extra.iter().map(std::ffi::OsStr::new));
    run_sdhost(&args)
}

pub(crate) fn pixels(path: &Path) -> image::RgbImage {
    image::open(path).unwrap().to_rgb8()
}

#[test]
fn img2img_writes_pngs_that_png_info_reads_and_from_png_reproduces() {
    let Img2ImgFixture {
        dir,
        model,
        init,
        out_dir,
    } = img2img_fixture();
    let out = sdhost!(
        "img2img",
        "--model",
        model,
        "--init-image",
        init,
        "--prompt",
        "a (red:1.1) cat",
        "--negative-prompt",
        "blurry, dark",
        "--seed",
        "5",
        "--steps",
        "5",
        "--sampler",
        "DPM++ 2M",
        "--scheduler",
        "Karras",
        "--batch-count",
        "2",
        "--denoising-strength",
        "0.6",
        "--cfg-scale",
        "6.5",
        "--out-dir",
        out_dir,
        "--threads",
        "1",
    );
    assert_success(&out);
    // Default size: the init image's, down to a multiple of 8.
    let first = out_dir.join("00000-5.png");
    let second = out_dir.join("00001-6.png");
    assert_eq!(pixels(&first).dimensions(), (40, 32));

    let out = sdhost!("png-info", second, "--json");
    assert!(out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["prompt"], "a (red:1.1) cat");
    assert_eq!(json["negative_prompt"], "blurry, dark");
    let params = &json["parameters"];
    for (key, value) in [
        ("Steps", "5"),
        ("Sampler", "DPM++ 2M"),
        ("Schedule type", "Karras"),
        ("CFG scale", "6.5"),
        ("Seed", "6"),
        ("Size", "40x32"),
        ("Model", "tiny"),
        ("Denoising strength", "0.6"),
        ("RNG", "CPU"),
    ] {
        assert_eq!(params[key], value, "{key}");
    }

    // --from-png reproduces the second image exactly; a flag given overrides the PNG.
    let again = dir.path().join("again");
    let from_png = ["--from-png", second.to_str().unwrap()];
    let out = img2img_into(
        &model,
        &init,
        &again,
        &[&from_png[..], &["--threads", "1"]].concat(),
    );
    assert_success(&out);
    assert_eq!(pixels(&again.join("00000-6.png")), pixels(&second));
    let out = img2img_into(
        &model,
        &init,
        &again,
        &[&from_png[..], &["--seed", "9"]].concat(),
    );
    assert!(out.status.success());
    assert!(again.join("00001-9.png").exists(), "numbering goes on");

    // Mistakes a user can make: one line each, nothing written.
    let img2img = |extra: &[&str]| img2img_into(&model, &init, &dir.path().join("none"), extra);
    assert_one_line_error(&img2img(&["--width", "3"]), "between 8 and");
    assert_one_line_error(&img2img(&["--sampler", "Eulerish"]), "Eulerish");
    assert_one_line_error(&img2img(&["--scheduler", "wobbly"]), "wobbly");
    assert_one_line_error(&img2img(&["--option", "eta"]), "NAME=VALUE");
    assert_one_line_error(
        &img2img(&["--sampler", "Euler", "--option", "eta=1"]),
        "eta",
    );
    assert_one_line_error(&img2img(&["--rng", "gpu"]), "CUDA");
    assert_one_line_error(
        &img2img(&["--from-png", init.to_str().unwrap()]),
        "no generation parameters",
    );
    assert!(!dir.path().join("none").exists());
    let out = img2img_into(
        &model,
        &dir.path().join("nope.png"),
        &dir.path().join("none"),
        &[],
    );
    assert_one_line_error(&out, "nope.png");
    std::fs::write(dir.path().join("text.png"), b"not an image").unwrap();
    let out = img2img_into(
        &model,
        &dir.path().join("text.png"),
        &dir.path().join("none"),
        &[],
    );
    assert_one_line_error(&out, "not a readable image");
}

#[test]
fn img2img_stops_on_ctrl_c_and_keeps_finished_images() {
    let Img2ImgFixture {
        dir,
        model,
        init,
        out_dir,
    } = img2img_fixture();
    let child = Command::new(env!("CARGO_BIN_EXE_sdhost"))
        .args(["img2img", "--model"])
        .arg(&model)
        .arg("--init-image")
        .arg(&init)
        .args(["--seed", "1", "--steps", "400", "--denoising-strength", "1"])
        .args(["--batch-count", "50", "--threads", "1", "--out-dir"])
        .arg(&out_dir)
        .env("SDHOST_CACHE_DIR", dir.path().join("cache"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let first = out_dir.join("00000-1.png");
    let start = std::time::Instant::now();
    while !first.exists() {
        assert!(start.elapsed().as_secs() < 120, "no image written");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("stopped by Ctrl-C"), "{stderr}");
    let kept = std::fs::read_dir(&out_dir).unwrap().count();
    assert!((1..50).contains(&kept), "{kept} images kept");
    // What was kept is complete: every file is a readable PNG with its infotext.
    for entry in std::fs::read_dir(&out_dir).unwrap() {
        let path = entry.unwrap().path();
        assert!(sdhost::pipeline::png_info::read_png_infotext(&path)
            .unwrap()
            .is_some());
    }
}

#[test]
fn every_img2img_mode_runs_from_the_cli_on_the_bundled_pictures() {
    let Img2ImgFixture { dir, model, .. } = img2img_fixture();
    let assets = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets");
    let (picture, mask, sketch) = (
        assets.join("sample-init.png"),
        assets.join("sample-mask.png"),
        assets.join("sample-sketch.png"),
    );
    // Inpaint upload scales a mask with the image's aspect ratio.
    let half_mask = dir.path().join("half-mask.png");
    image::imageops::resize(
        &image::open(&mask).unwrap().to_luma8(),
        128,
        96,
        image::imageops::FilterType::Nearest,
    )
    .save(&half_mask)
    .unwrap();
    let original = pixels(&picture);
    let run = |mode: &str, extra: &[&std::ffi::OsStr]| {
        let out_dir = dir.path().join(mode);
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "img2img".as_ref(),
            "--model".as_ref(),
            model.as_os_str(),
            "--init-image".as_ref(),
            picture.as_os_str(),
            "--mode".as_ref(),
            mode.as_ref(),
            "--seed".as_ref(),
            "4".as_ref(),
            "--steps".as_ref(),
            "3".as_ref(),
            "--threads".as_ref(),
            "1".as_ref(),
            "--patch-out".as_ref(),
            "--out-dir".as_ref(),
            out_dir.as_os_str(),
        ];
        args.extend_from_slice(extra);
        let out = run_sdhost(&args);
        assert!(
            out.status.success(),
            "{mode}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out_dir
    };
    let img2img = run("img2img", &[]);
    assert!(
        !img2img.join("00000-4-patch.png").exists(),
        "no mask, no patch"
    );
    let sketched = run("sketch", &["--sketch".as_ref(), sketch.as_os_str()]);
    assert!(sketched.join("00000-4.png").exists());
    for (mode, extra) in [
        ("inpaint", vec!["--mask".as_ref(), mask.as_os_str()]),
        (
            "inpaint-upload",
            vec!["--mask".as_ref(), half_mask.as_os_str()],
        ),
        (
            "inpaint-sketch",
            vec![
                "--sketch".as_ref(),
                sketch.as_os_str(),
                "--mask-alpha".as_ref(),
                "20".as_ref(),
            ],
        ),
    ] {
        let out_dir = run(mode, &extra);
        let result = pixels(&out_dir.join("00000-4.png"));
        // Far from the mask the picture is the original, exactly; inside it is not.
        assert_eq!(result.get_pixel(5, 5), original.get_pixel(5, 5), "{mode}");
        assert_eq!(
            result.get_pixel(250, 186),
            original.get_pixel(250, 186),
            "{mode}"
        );
        assert_ne!(result, original, "{mode}: nothing was regenerated");
        let patch = out_dir.join("00000-4-patch.png");
        let offset = sdhost::pipeline::png_info::read_png_text(
            &patch,
            sdhost::pipeline::output::PATCH_OFFSET_KEY,
        )
        .unwrap()
        .expect("patch offset");
        assert!(offset.contains(','), "{offset}");
        assert_eq!(
            image::open(&patch).unwrap().color(),
            image::ColorType::Rgba8
        );
        let info = sdhost::pipeline::png_info::read_png_infotext(&out_dir.join("00000-4.png"))
            .unwrap()
            .unwrap();
        assert!(info.contains("Mask blur: 4"), "{info}");
    }

    // Inputs that do not fit: one line each.
    let fail = |extra: &[&str]| img2img_into(&model, &picture, &dir.path().join("none"), extra);
    assert_one_line_error(&fail(&["--mode", "inpaint"]), "Inpaint needs a mask");
    assert_one_line_error(&fail(&["--mode", "sketch"]), "Sketch needs a sketch layer");
    let square = dir.path().join("square.png");
    image::GrayImage::new(50, 50).save(&square).unwrap();
    assert_one_line_error(
        &fail(&["--mask", square.to_str().unwrap()]),
        "another aspect ratio",
    );
    assert_one_line_error(
        &fail(&["--mode", "inpaint", "--mask", square.to_str().unwrap()]),
        "50x50",
    );
    let empty = dir.path().join("empty.png");
    image::GrayImage::new(256, 192).save(&empty).unwrap();
    assert_one_line_error(
        &fail(&["--mask", empty.to_str().unwrap()]),
        "the mask is empty",
    );
    assert_one_line_error(
        &fail(&[
            "--mask",
            mask.to_str().unwrap(),
            "--inpainting-mask-weight",
            "2",
        ]),
        "inpainting_mask_weight",
    );
    assert!(!dir.path().join("none").exists());
}

#[test]
fn img2img_vae_tiling_runs_large_images_in_tiles_and_reproduces() {
    let Img2ImgFixture {
        dir,
        model,
        init,
        out_dir,
    } = img2img_fixture();
    // Larger than one 512² tile in both directions, so encode and decode both tile.
    let job = [
        "--width",
        "576",
        "--height",
        "544",
        "--steps",
        "1",
        "--seed",
        "3",
        "--threads",
        "1",
    ];
    let plain_dir = dir.path().join("plain");
    let out = img2img_into(&model, &init, &plain_dir, &job);
    assert_success(&out);
    let out = img2img_into(
        &model,
        &init,
        &out_dir,
        &[&job[..], &["--vae-tiling"]].concat(),
    );
    assert_success(&out);
    let (plain, tiled) = (plain_dir.join("00000-3.png"), out_dir.join("00000-3.png"));
    assert_eq!(pixels(&tiled).dimensions(), (576, 544));
    assert_ne!(pixels(&tiled), pixels(&plain), "tiles see only themselves");

    let parameters = |path: &Path| {
        let out = sdhost!("png-info", path, "--json");
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        json["parameters"].clone()
    };
    assert_eq!(parameters(&tiled)["VAE tiling"], "True");
    assert!(parameters(&plain).get("VAE tiling").is_none());

    let again = dir.path().join("again");
    let from_png = ["--from-png", tiled.to_str().unwrap(), "--threads", "1"];
    let out = img2img_into(&model, &init, &again, &from_png);
    assert_success(&out);
    assert_eq!(pixels(&again.join("00000-3.png")), pixels(&tiled));
}

/// 96×64 with SD 1.x's four UNet levels (skip connections of mismatched size, resized as
/// A1111 does): the PNG's infotext alone reproduces it.
#[test]
fn img2img_at_96x64_reproduces_from_its_infotext() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny-deep.safetensors");
    make_tiny(&model, &["--preset", "tiny-deep"]);
    let init = dir.path().join("init.png");
    write_init(&init);
    let first = dir.path().join("first");
    let job = [
        "--width",
        "96",
        "--height",
        "64",
        "--steps",
        "6",
        "--seed",
        "77",
        "--sampler",
        "DPM++ 2M SDE",
        "--denoising-strength",
        "0.7",
        "--threads",
        "1",
    ];
    assert_success(&img2img_into(&model, &init, &first, &job));
    let made = first.join("00000-77.png");
    assert_eq!(pixels(&made).dimensions(), (96, 64));

    let again = dir.path().join("again");
    let from_png = ["--from-png", made.to_str().unwrap(), "--threads", "1"];
    assert_success(&img2img_into(&model, &init, &again, &from_png));
    let remade = again.join("00000-77.png");
    assert_eq!(pixels(&remade), pixels(&made));
    assert_eq!(
        std::fs::read(&remade).unwrap(),
        std::fs::read(&made).unwrap()
    );
}

#[test]
fn prompt_json_has_token_ids_weights_chunks_and_the_schedule() {
    let out = sdhost!(
        "prompt",
        "a (cat:1.3) [dog:bird:0.5] AND cat BREAK dog :0.5",
        "--steps",
        "10",
        "--json",
    );
    assert_success(&out);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let parts = json["parts"].as_array().unwrap();
    assert_eq!(parts.len(), 2);
    assert_eq!(parts[1]["weight"], 0.5);

    // Prompt editing: "dog" for model calls ..=5, "bird" after.
    let schedule = parts[0]["schedule"].as_array().unwrap();
    let entries: Vec<(u64, &str)> = schedule
        .iter()
        .map(|e| {
            (
                e["end_at_step"].as_u64().unwrap(),
                e["text"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(entries, [(5, "a (cat:1.3) dog"), (10, "a (cat:1.3) bird")]);

    // CLIP ids: BOS, "a", "cat", "dog"/"bird", then EOS padding to 77; "cat" weighs 1.3.
    let ids = |entry: &serde_json::Value, chunk: usize| -> Vec<u64> {
        entry["chunks"][chunk]["token_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|id| id.as_u64().unwrap())
            .collect()
    };
    let first = ids(&schedule[0], 0);
    assert_eq!(first.len(), 77);
    assert_eq!(first[..5], [49406, 320, 2368, 1929, 49407]);
    assert_eq!(ids(&schedule[1], 0)[3], 3329);
    assert_eq!(schedule[0]["chunks"][0]["weights"][2], 1.3);
    assert_eq!(schedule[0]["chunks"][0]["tokens"][2], "cat</w>");
    assert_eq!(schedule[0]["token_count"], 3);

    // BREAK ends a chunk: "cat" and "dog" each start their own.
    let second = &parts[1]["schedule"][0];
    assert_eq!(second["chunks"].as_array().unwrap().len(), 2);
    assert_eq!((ids(second, 0)[1], ids(second, 1)[1]), (2368, 1929));
    assert!(json["embeddings_used"].as_array().unwrap().is_empty());
    assert!(json["ti_hashes"].is_null());

    // An embedding's two vectors sit at ids 0 after BOS and are named in the chunk.
    let dir = tempfile::tempdir().unwrap();
    let vectors = tch::Tensor::ones([2, 768], (tch::Kind::Float, tch::Device::Cpu));
    sdhost::tiny_model::save_safetensors(
        &[("emb_params".into(), vectors)],
        &dir.path().join("dongwm-nt.safetensors"),
    )
    .unwrap();
    let out = sdhost!(
        "prompt",
        "dongwm-nt",
        "--embeddings-dir",
        dir.path(),
        "--json"
    );
    assert_success(&out);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let chunk = &json["parts"][0]["schedule"][0]["chunks"][0];
    assert_eq!(
        ids(&json["parts"][0]["schedule"][0], 0)[..4],
        [49406, 0, 0, 49407]
    );
    assert_eq!(chunk["embeddings"][0]["name"], "dongwm-nt");
    assert_eq!(
        (
            chunk["embeddings"][0]["start"].as_u64(),
            chunk["embeddings"][0]["vectors"].as_u64()
        ),
        (Some(1), Some(2))
    );
    assert_eq!(chunk["tokens"][1], "<dongwm-nt>");
    let hash = json["embeddings_used"][0]["hash"].as_str().unwrap();
    assert_eq!(json["ti_hashes"], format!("dongwm-nt: {hash}"));
}
