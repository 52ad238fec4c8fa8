//! Token merging against the `tomesd` package applied as A1111 applies it
//! (`modules/sd_models.py: apply_token_merging`; `tests/reference/token_merging_reference.py`).

use crate::common::{assert_close, read_tensors, relative_error, run_reference};
use sdhost::checkpoint::{infer_architecture, Checkpoint};
use sdhost::models::unet::TokenMerging;
use sdhost::models::StableDiffusion;
use sdhost::tiny_model::{write_tiny_model, Preset, TinyModelSpec};
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
            sd.unet.forward_merging(
                input("x"),
                input("t"),
                input("context"),
                None,
                merging,
            )
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
