//! Token merging: the UNet against the `tomesd` package applied as A1111 applies it
//! (`modules/sd_models.py: apply_token_merging`; `tests/reference/token_merging_reference.py`),
//! A1111's choice of ratio per pass (`modules/processing.py: get_token_merging_ratio`), its
//! infotext keys, and whole jobs from the command line.

use std::ffi::OsStr;
use std::path::Path;

use crate::cli::{assert_one_line_error, assert_success, make_tiny, pixels, run_sdhost};
use crate::common::{assert_close, read_tensors, relative_error, run_reference};
use sdhost::checkpoint::{infer_architecture, Checkpoint};
use sdhost::infotext::Infotext;
use sdhost::models::unet::TokenMerging;
use sdhost::models::StableDiffusion;
use sdhost::request::{GenerationRequest, InvalidRequest};
use sdhost::tiny_model::{write_tiny_model, Preset, TinyModelSpec};
use serde_json::{json, Map, Value};
use tch::{Device, Kind};

/// Latent sizes whose first level has enough tokens to merge: a square one and one with odd
/// sides (a row and a column outside the 2×2 cells, all sources).
const SIZES: &str = "16x16,13x9";
/// The ratios compared.
const RATIOS: &str = "0.3,0.5";
/// The UNet parity tests' tolerance, relative to the output's scale.
const TOLERANCE: f64 = 1e-4;

#[test]
fn token_merging_matches_tomesd() {
    tch::set_num_threads(1);
    let _guard = tch::no_grad_guard();
    let dir = tempfile::tempdir().expect("temp dir");
    let model = dir.path().join("model.safetensors");
    let reference = dir.path().join("reference.safetensors");
    let spec = TinyModelSpec {
        preset: Preset::TinyDeep,
        inpainting: false,
        seed: 23,
        storage: Kind::Float,
    };
    write_tiny_model(&spec, &model).expect("write model");
    run_reference(
        "token_merging_reference.py",
        &[
            model.as_os_str(),
            reference.as_os_str(),
            "--sizes".as_ref(),
            SIZES.as_ref(),
            "--ratios".as_ref(),
            RATIOS.as_ref(),
        ],
    );
    let r = read_tensors(&reference);
    let ckpt = Checkpoint::open(&model).expect("open");
    let arch = infer_architecture(&ckpt).expect("infer");
    let sd = StableDiffusion::load(&ckpt, &arch, Kind::Float, Device::Cpu).expect("load");
    for size in SIZES.split(',') {
        let input = |name: &str| &r[&format!("{size}.{name}")];
        let run = |merging: Option<TokenMerging>| {
            sd.unet
                .forward_merging(input("x"), input("t"), input("context"), None, merging)
        };
        // Ratio 0 is the plain UNet, bit for bit.
        let plain = run(None);
        assert_close(&format!("{size} plain"), &plain, input("plain"), TOLERANCE);
        let zero = run(TokenMerging::new(0.0));
        assert!(zero.equal(&plain), "{size}: ratio 0 changed the output");
        for ratio in RATIOS.split(',') {
            let key = format!("{size}.{ratio}");
            let out = run(TokenMerging::new(ratio.parse().expect("a ratio")));
            let expected = &r[&format!("{key}.out")];
            assert_close(&key, &out, expected, TOLERANCE);
            // Merging changes the output far beyond the tolerance, so the test sees it.
            let apart = relative_error(input("plain"), expected);
            println!("{key}: merging moved the output {apart:.3e}");
            assert!(apart > 100.0 * TOLERANCE, "{key}: merging changed nothing");
        }
    }
}

fn request(changes: Value) -> Result<GenerationRequest, InvalidRequest> {
    let Value::Object(map) = changes else {
        unreachable!("changes are an object")
    };
    GenerationRequest::ui_defaults().overlay(&map)
}

#[test]
fn each_pass_takes_a1111s_ratio() {
    let base = request(json!({"token_merging_ratio": 0.5})).unwrap();
    assert_eq!(base.token_merging_ratio(true), 0.5);
    assert_eq!(base.token_merging_ratio(false), 0.5);
    // Hires. fix's pass: its own ratio, else the first pass's.
    assert_eq!(base.token_merging_ratio_hr(), 0.5);
    let hires = request(json!({"token_merging_ratio": 0.5, "token_merging_ratio_hr": 0.2}));
    assert_eq!(hires.unwrap().token_merging_ratio_hr(), 0.2);
    // img2img's option, when set, is img2img's ratio; txt2img never reads it.
    let options =
        request(json!({"token_merging_ratio": 0.5, "token_merging_ratio_img2img": 0.7})).unwrap();
    assert_eq!(options.token_merging_ratio(false), 0.7);
    assert_eq!(options.token_merging_ratio(true), 0.5);
    // A ratio a later request overrides beats the img2img option, as in A1111.
    let mut over = Map::new();
    over.insert(
        "override_settings".into(),
        json!({"token_merging_ratio": 0.3}),
    );
    let overridden = options.overlay(&over).unwrap();
    assert_eq!(overridden.token_merging_ratio(false), 0.3);
    // Ratios outside 0-1 are refused, naming the field.
    for field in [
        "token_merging_ratio",
        "token_merging_ratio_img2img",
        "token_merging_ratio_hr",
    ] {
        for bad in [-0.1, 1.5] {
            let refused = request(json!({ field: bad })).unwrap().validate(8);
            assert!(
                matches!(&refused, Err(InvalidRequest::Value { field: f, .. }) if f == field),
                "{field} = {bad}: {refused:?}"
            );
        }
    }
}

fn txt2img(model: &Path, out_dir: &Path, extra: &[&str]) -> std::process::Output {
    let mut args: Vec<&OsStr> = vec![
        "txt2img".as_ref(),
        "--model".as_ref(),
        model.as_os_str(),
        "--out-dir".as_ref(),
        out_dir.as_os_str(),
        "--threads".as_ref(),
        "1".as_ref(),
        "--prompt".as_ref(),
        "a cat".as_ref(),
        "--seed".as_ref(),
        "3".as_ref(),
        "--steps".as_ref(),
        "3".as_ref(),
        "--width".as_ref(),
        "128".as_ref(),
        "--height".as_ref(),
        "128".as_ref(),
    ];
    args.extend(extra.iter().map(OsStr::new));
    run_sdhost(&args)
}

fn infotext(png: &Path) -> Infotext {
    let out = run_sdhost(&["png-info".as_ref(), png.as_os_str()]);
    assert_success(&out);
    Infotext::parse(String::from_utf8_lossy(&out.stdout).trim())
}

/// A 128² job (a 16×16 latent: 256 first-level tokens) with and without merging, with Hires.
/// fix's own ratio: other pictures, A1111's keys, and `--from-png` reproduces the picture.
#[test]
fn txt2img_jobs_merge_tokens_and_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny.safetensors");
    make_tiny(&model, &[]);
    let hires = [
        "--enable-hr",
        "true",
        "--hr-scale",
        "1.5",
        "--hr-second-pass-steps",
        "2",
        "--denoising-strength",
        "0.5",
    ];
    let plain_dir = dir.path().join("plain");
    assert_success(&txt2img(&model, &plain_dir, &hires));
    let merged_dir = dir.path().join("merged");
    let mut merged_flags = hires.to_vec();
    merged_flags.extend([
        "--token-merging-ratio",
        "0.5",
        "--token-merging-ratio-hr",
        "0.3",
    ]);
    assert_success(&txt2img(&model, &merged_dir, &merged_flags));
    let (plain, merged) = (
        plain_dir.join("00000-3.png"),
        merged_dir.join("00000-3.png"),
    );
    assert_ne!(
        pixels(&plain),
        pixels(&merged),
        "merging changes the picture"
    );
    let plain_info = infotext(&plain);
    assert_eq!(plain_info.get("Token merging ratio"), None);
    assert_eq!(plain_info.get("Token merging ratio hr"), None);
    let info = infotext(&merged);
    assert_eq!(info.get("Token merging ratio"), Some("0.5"));
    assert_eq!(info.get("Token merging ratio hr"), Some("0.3"));
    // A1111's slot: after `Clip skip`/`ENSD`, before `RNG`.
    let position = |key: &str| info.params.iter().position(|(k, _)| k == key);
    assert!(
        position("Token merging ratio") < position("RNG"),
        "{info:?}"
    );

    let again = dir.path().join("again");
    let from_png = ["--from-png", merged.to_str().unwrap()];
    assert_success(&txt2img(&model, &again, &from_png));
    assert_eq!(pixels(&again.join("00000-3.png")), pixels(&merged));

    assert_one_line_error(
        &txt2img(
            &model,
            &dir.path().join("none"),
            &["--token-merging-ratio", "1.5"],
        ),
        "token_merging_ratio",
    );
}
