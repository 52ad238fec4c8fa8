//! Model upscalers against spandrel 0.4.2 and A1111 v1.10.1 (`tests/reference/
//! upscaler_reference.py`): each architecture's network and spandrel's call on tiny random
//! weights, spandrel's detection of each file (both ESRGAN key layouts, wrappers, `.pth` and
//! `.safetensors`), typed refusals of foreign and hostile files, A1111's two tilings, and
//! Hires. fix and the models-folder listing with a model upscaler.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use sdhost::upscale::detect::DetectError;
use sdhost::upscale::tiling::{upscale_2, upscale_pil_patch, upscale_with_model, TileSettings};
use sdhost::upscale::{UpscalerError, UpscalerModel};
use tch::{Device, Tensor};

use crate::cli::{assert_one_line_error, assert_success, make_tiny, pixels, run_sdhost};
use crate::common::{read_tensors, run_reference};

/// The reference's files, made once for every test of this module.
pub(crate) fn reference() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        run_reference("upscaler_reference.py", &[dir.as_os_str()]);
        dir
    })
}

fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shape differs from spandrel's");
    (a - b).abs().max().double_value(&[])
}

#[test]
fn every_architecture_matches_spandrel_and_is_detected_as_spandrel_detects_it() {
    tch::set_num_threads(1);
    let dir = reference();
    let outputs: HashMap<String, Tensor> = read_tensors(&dir.join("outputs.safetensors"));
    let detected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("detected.json")).unwrap()).unwrap();
    let input = &outputs["input"];
    let files = detected.as_object().unwrap();
    assert_eq!(files.len(), 13);
    for (file, expected) in files {
        let model = UpscalerModel::load(&dir.join("models").join(file), Device::Cpu)
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(
            model.architecture().name(),
            expected["architecture"],
            "{file}"
        );
        assert_eq!(model.scale(), expected["scale"], "{file}");
        let network = max_abs(&model.forward(input), &outputs[file.as_str()]);
        let call = max_abs(&model.call(input), &outputs[&format!("{file}:call")]);
        assert!(network <= 1e-4, "{file}: network off by {network:.2e}");
        assert!(call <= 1e-4, "{file}: call off by {call:.2e}");
    }
}

#[test]
fn foreign_and_hostile_files_are_typed_errors() {
    let dir = reference();
    match UpscalerModel::load(&dir.join("hostile.pth"), Device::Cpu) {
        Err(UpscalerError::Pickle(e)) => {
            assert!(e.to_string().contains("system"), "{e}")
        }
        Err(e) => panic!("hostile pickle: wrong error {e}"),
        Ok(_) => panic!("hostile pickle loaded"),
    }
    match UpscalerModel::load(&dir.join("unknown.safetensors"), Device::Cpu) {
        Err(UpscalerError::Detect {
            source: DetectError::Unknown(keys),
            ..
        }) => assert!(keys.contains("encoder.conv_in.weight"), "{keys}"),
        Err(e) => panic!("unknown state dict: wrong error {e}"),
        Ok(_) => panic!("unknown state dict loaded"),
    }
    let text = dir.join("notes.txt");
    std::fs::write(&text, "hello").unwrap();
    assert!(matches!(
        UpscalerModel::load(&text, Device::Cpu),
        Err(UpscalerError::Extension { .. })
    ));
}

/// Pixels that differ, and by how much at most.
fn compare(name: &str, actual: &image::RgbImage, expected: &image::RgbImage) -> (usize, u8) {
    assert_eq!(actual.dimensions(), expected.dimensions(), "{name}: size");
    let mut differing = 0;
    let mut worst = 0;
    for (a, e) in actual.as_raw().iter().zip(expected.as_raw()) {
        let d = a.abs_diff(*e);
        differing += usize::from(d > 0);
        worst = worst.max(d);
    }
    (differing, worst)
}

#[test]
fn tiled_upscales_match_a1111s_transcriptions() {
    tch::set_num_threads(1);
    let dir = reference();
    let load =
        |name: &str| UpscalerModel::load(&dir.join("models").join(name), Device::Cpu).unwrap();
    let (esrgan, swinir, compact) = (
        load("esrgan_4x.pth"),
        load("swinir_classical_2x.pth"),
        load("compact_4x.pth"),
    );
    let input = pixels(&dir.join("tile_input.png"));
    let never = || false;
    for (tile, overlap) in [(8, 2), (10, 3), (192, 8)] {
        let settings = TileSettings { tile, overlap };
        let cases = [
            (
                format!("grid_{tile}_{overlap}.png"),
                upscale_with_model(&esrgan, &input, settings, &never),
            ),
            (
                format!("tiled2_{tile}_{overlap}.png"),
                upscale_2(&swinir, &input, settings, &never),
            ),
        ];
        for (name, ours) in cases {
            let expected = pixels(&dir.join(&name));
            let (differing, worst) = compare(&name, &ours, &expected);
            // Float noise of 1e-6 can move a value across a rounding boundary: one level, rarely.
            assert!(
                worst <= 1 && differing * 200 <= expected.as_raw().len(),
                "{name}: {differing} values differ, by up to {worst}"
            );
        }
    }
    let untiled = upscale_pil_patch(&compact, &input);
    let (differing, worst) = compare("untiled", &untiled, &pixels(&dir.join("untiled.png")));
    assert!(worst <= 1 && differing * 200 <= untiled.as_raw().len());
    // A stop between tiles gives the picture back unchanged, as A1111's interrupt does.
    let stopped = upscale_with_model(
        &esrgan,
        &input,
        TileSettings {
            tile: 8,
            overlap: 2,
        },
        &|| true,
    );
    assert_eq!(stopped, input);
}

/// An A1111 `models/` tree with the tiny checkpoint and upscalers in their folders.
pub(crate) fn models_tree(root: &Path) -> PathBuf {
    let models = root.join("models");
    let reference = reference().join("models");
    for (folder, from, to) in [
        ("ESRGAN", "esrgan_4x.pth", "tiny_esrgan.pth"),
        ("SwinIR", "swinir_real_4x.pth", "tiny_swinir.pth"),
        (
            "RealESRGAN",
            "realesrgan_x2plus.pth",
            "RealESRGAN_x2plus.pth",
        ),
        (
            "ESRGAN",
            "compact_4x.safetensors",
            "tiny_compact.safetensors",
        ),
    ] {
        std::fs::create_dir_all(models.join(folder)).unwrap();
        std::fs::copy(reference.join(from), models.join(folder).join(to)).unwrap();
    }
    std::fs::create_dir_all(models.join("ESRGAN")).unwrap();
    std::fs::copy(
        reference.parent().unwrap().join("unknown.safetensors"),
        models.join("ESRGAN").join("not_an_upscaler.safetensors"),
    )
    .unwrap();
    std::fs::create_dir_all(models.join("Stable-diffusion")).unwrap();
    make_tiny(
        &models.join("Stable-diffusion").join("tiny.safetensors"),
        &[],
    );
    models
}

#[test]
fn hires_fix_runs_with_model_upscalers_from_the_models_folders() {
    let root = tempfile::tempdir().unwrap();
    let models = models_tree(root.path());
    let names: Vec<String> =
        sdhost::upscale::Upscaler::all(&sdhost::upscale::UpscalerDirs::from_models_dir(&models))
            .iter()
            .map(|u| u.name().to_string())
            .collect();
    assert_eq!(
        names,
        [
            "None",
            "Lanczos",
            "Nearest",
            "not_an_upscaler",
            "R-ESRGAN 2x+",
            "tiny_compact",
            "tiny_esrgan",
            "tiny_swinir"
        ]
    );
    let run = |upscaler: &str, out: &Path| {
        let args: Vec<&std::ffi::OsStr> = [
            "txt2img".as_ref(),
            "--models-dir".as_ref(),
            models.as_os_str(),
            "--model".as_ref(),
            "tiny".as_ref(),
            "--out-dir".as_ref(),
            out.as_os_str(),
            "--threads".as_ref(),
            "1".as_ref(),
        ]
        .into_iter()
        .chain(
            [
                "--width",
                "32",
                "--height",
                "24",
                "--seed",
                "4",
                "--steps",
                "2",
                "--enable-hr",
                "true",
                "--hr-scale",
                "2",
                "--hr-second-pass-steps",
                "2",
                "--hr-upscaler",
                upscaler,
            ]
            .into_iter()
            .map(std::ffi::OsStr::new),
        )
        .collect();
        run_sdhost(&args)
    };
    for upscaler in ["tiny_esrgan", "tiny_swinir", "R-ESRGAN 2x+", "tiny_compact"] {
        let out = root.path().join(upscaler.replace(' ', "_"));
        assert_success(&run(upscaler, &out));
        let image = out.join("00000-4.png");
        assert_eq!(pixels(&image).dimensions(), (64, 48), "{upscaler}");
        let text = sdhost::pipeline::png_info::read_png_infotext(&image)
            .unwrap()
            .unwrap();
        assert!(
            text.contains(&format!("Hires upscaler: {upscaler}")),
            "{text}"
        );
    }
    // A file that is no upscaler, and a name that is none: one-line errors before sampling.
    let out = run("not_an_upscaler", &root.path().join("bad"));
    assert_one_line_error(&out, "not an upscaler model sdhost knows");
    let out = run("4x-UltraSharp", &root.path().join("missing"));
    assert_one_line_error(&out, "could not find upscaler named 4x-UltraSharp");
}

/// SD upscale enlarges with a model of the upscaler folders, named or by its place in
/// A1111's list; a name no upscaler has is refused before any tile is sampled.
#[test]
fn sd_upscale_runs_with_a_model_upscaler() {
    let root = tempfile::tempdir().unwrap();
    let models = models_tree(root.path());
    let init = root.path().join("init.png");
    image::RgbImage::from_fn(20, 16, |x, y| {
        image::Rgb([(x * 12) as u8, (y * 15) as u8, 90])
    })
    .save(&init)
    .unwrap();
    let run = |upscaler: &str, out: &Path| {
        let args: Vec<&std::ffi::OsStr> = [
            "img2img".as_ref(),
            "--models-dir".as_ref(),
            models.as_os_str(),
            "--model".as_ref(),
            "tiny".as_ref(),
            "--init-image".as_ref(),
            init.as_os_str(),
            "--out-dir".as_ref(),
            out.as_os_str(),
            "--threads".as_ref(),
            "1".as_ref(),
        ]
        .into_iter()
        .chain(
            [
                "--width",
                "32",
                "--height",
                "32",
                "--seed",
                "4",
                "--steps",
                "2",
                "--script",
                "SD upscale",
                "--script-arg",
                "null",
                "--script-arg",
                "8",
                "--script-arg",
                upscaler,
                "--script-arg",
                "2",
            ]
            .into_iter()
            .map(std::ffi::OsStr::new),
        )
        .collect();
        run_sdhost(&args)
    };
    // "tiny_esrgan" is 4x: 2 steps of Upscaler.upscale reach 80 x 64 (then Lanczos to 40 x 32).
    // Index 7 of None, Lanczos, Nearest, not_an_upscaler, R-ESRGAN 2x+, tiny_compact,
    // tiny_esrgan, tiny_swinir is tiny_swinir.
    for (upscaler, name) in [("tiny_esrgan", "tiny_esrgan"), ("7", "tiny_swinir")] {
        let out = root.path().join(name);
        assert_success(&run(upscaler, &out));
        let made: Vec<_> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "png"))
            .collect();
        assert_eq!(
            made.len(),
            1,
            "only the composed picture is saved: {made:?}"
        );
        assert_eq!(pixels(&made[0]).dimensions(), (40, 32), "{upscaler}");
        let text = sdhost::pipeline::png_info::read_png_infotext(&made[0])
            .unwrap()
            .unwrap();
        assert!(
            text.contains(&format!("SD upscale upscaler: {name}")),
            "{text}"
        );
    }
    let out = run("4x-UltraSharp", &root.path().join("missing"));
    assert_one_line_error(&out, "no upscaler \"4x-UltraSharp\"");
    assert!(!root.path().join("missing").exists());
}

#[test]
fn the_api_lists_model_upscalers_and_the_extras_run_them() {
    let root = tempfile::tempdir().unwrap();
    let models = models_tree(root.path());
    let server = crate::api::start(&["--models-dir", models.to_str().unwrap()], None);
    let (status, list) = crate::api::get(&server, "/sdapi/v1/upscalers");
    assert_eq!(status, 200);
    let esrgan = list
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "tiny_esrgan")
        .unwrap_or_else(|| panic!("tiny_esrgan in {list}"));
    assert_eq!(esrgan["model_name"], "ESRGAN_4x");
    assert_eq!(esrgan["scale"], 4.0);
    assert!(esrgan["model_path"]
        .as_str()
        .unwrap()
        .ends_with("ESRGAN/tiny_esrgan.pth"));

    let input = pixels(&reference().join("tile_input.png"));
    let mut png = Vec::new();
    input
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&png);
    let body =
        serde_json::json!({"image": b64, "upscaler_1": "tiny_swinir", "upscaling_resize": 2});
    let (status, answer) = crate::api::post(&server, "/sdapi/v1/extra-single-image", &body);
    assert_eq!(status, 200, "{answer}");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(answer["image"].as_str().unwrap())
        .unwrap();
    let out = image::load_from_memory(&bytes).unwrap().to_rgb8();
    // 23×18 by 2, rounded down to multiples of 8.
    assert_eq!(out.dimensions(), (40, 32));
    assert!(
        answer["html_info"]
            .as_str()
            .unwrap()
            .contains("Postprocess upscaler: tiny_swinir"),
        "{answer}"
    );
    // The same as the library computes in process.
    let model = UpscalerModel::load(&models.join("SwinIR/tiny_swinir.pth"), Device::Cpu).unwrap();
    let expected = sdhost::upscale::ReadyUpscaler::Model {
        model: std::sync::Arc::new(std::sync::Mutex::new(model)),
        class: sdhost::upscale::UpscalerClass::SwinIr,
        tiles: TileSettings::default(),
    }
    .upscale(&input, 2.0);
    assert_eq!(out, expected);

    let body = serde_json::json!({"image": b64, "upscaler_1": "not_an_upscaler"});
    let (status, answer) = crate::api::post(&server, "/sdapi/v1/extra-single-image", &body);
    assert_eq!(status, 500, "{answer}");
    assert!(
        answer.to_string().contains("not an upscaler model"),
        "{answer}"
    );
}
