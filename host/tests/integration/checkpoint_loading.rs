//! Loading checkpoints as they exist in the wild: key variants, dtypes, broken files, hashes.

use crate::common;

use sdhost::checkpoint::{infer_architecture, verify_structure, Checkpoint, ModelHashes};
use sdhost::models::StableDiffusion;
use sdhost::tiny_model::{save_safetensors, write_tiny_model, Preset, TinyModelSpec};
use sdhost::weights::LoadError;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

fn tiny(dir: &Path, seed: i64) -> PathBuf {
    common::tiny_model(dir, seed)
}

/// Rewrites `src` into `dst` after `edit` changes its tensor list.
fn rewrite(src: &Path, dst: &Path, edit: impl FnOnce(&mut Vec<(String, Tensor)>)) {
    let mut tensors = Tensor::read_safetensors(src).expect("read");
    edit(&mut tensors);
    save_safetensors(&tensors, dst).expect("write");
}

fn load(path: &Path) -> Result<StableDiffusion, LoadError> {
    let ckpt = Checkpoint::open(path)?;
    let arch = infer_architecture(&ckpt)?;
    verify_structure(&ckpt, &arch)?;
    StableDiffusion::load(&ckpt, &arch, Kind::Float, Device::Cpu)
}

fn unet_output(sd: &StableDiffusion) -> Tensor {
    let _guard = tch::no_grad_guard();
    let (x, ctx) = sdhost::rng::with_global_seed(5, || {
        let opts = (Kind::Float, Device::Cpu);
        (
            Tensor::randn([1, 4, 8, 8], opts),
            Tensor::randn([1, 77, 32], opts),
        )
    });
    sd.unet
        .forward(&x, &Tensor::from_slice(&[10.0f32]), &ctx, None)
}

#[test]
fn same_seed_gives_same_bytes_and_other_seeds_differ() {
    let dir = tempfile::tempdir().unwrap();
    let a = std::fs::read(tiny(dir.path(), 1)).unwrap();
    let again = dir.path().join("again.safetensors");
    let spec = TinyModelSpec {
        preset: Preset::Tiny,
        inpainting: false,
        seed: 1,
        storage: Kind::Float,
    };
    write_tiny_model(&spec, &again).unwrap();
    assert_eq!(a, std::fs::read(&again).unwrap());
    assert_ne!(a, std::fs::read(tiny(dir.path(), 2)).unwrap());
}

#[test]
fn variants_written_by_other_tools_load_to_the_same_network() {
    tch::set_num_threads(1);
    let dir = tempfile::tempdir().unwrap();
    let base = tiny(dir.path(), 3);
    let reference = unet_output(&load(&base).unwrap());
    let clip_ref = load(&base).unwrap();

    // Old transformers: CLIP keys without `text_model.`; no position_ids; EMA copies present;
    // VAE attention projections stored as linear weights (diffusers' conversion script).
    let variant = dir.path().join("variant.safetensors");
    rewrite(&base, &variant, |tensors| {
        tensors.retain(|(k, _)| !k.ends_with("position_ids"));
        for (k, t) in tensors.iter_mut() {
            if let Some(rest) = k.strip_prefix("cond_stage_model.transformer.text_model.") {
                *k = format!("cond_stage_model.transformer.{rest}");
            }
            if k.contains("mid.attn_1.") && t.dim() == 4 {
                *t = t.squeeze_dim(-1).squeeze_dim(-1);
            }
        }
        tensors.push(("model_ema.decay".into(), Tensor::from_slice(&[0.9999f32])));
        tensors.push(("model_ema.num_updates".into(), Tensor::from_slice(&[7i32])));
    });
    let sd = load(&variant).unwrap();
    assert_eq!(
        sd.architecture.text.clip_prefix(),
        "cond_stage_model.transformer"
    );
    assert!(unet_output(&sd).equal(&reference));
    let ids = Tensor::from_slice(&[49406i64, 320, 49407]).unsqueeze(0);
    assert!(sd
        .text
        .context_of_ids(&ids)
        .equal(&clip_ref.text.context_of_ids(&ids)));
}

#[test]
fn fp16_and_bf16_checkpoints_load() {
    let dir = tempfile::tempdir().unwrap();
    for (kind, name) in [(Kind::Half, "fp16"), (Kind::BFloat16, "bf16")] {
        let path = dir.path().join(format!("{name}.safetensors"));
        let spec = TinyModelSpec {
            preset: Preset::Tiny,
            inpainting: false,
            seed: 4,
            storage: kind,
        };
        write_tiny_model(&spec, &path).unwrap();
        let ckpt = Checkpoint::open(&path).unwrap();
        let key = "model.diffusion_model.input_blocks.0.0.weight";
        assert_eq!(
            sdhost::checkpoint::kind_of(ckpt.dtype(key).unwrap()),
            Some(kind)
        );
        let sd = load(&path).unwrap();
        assert!(unet_output(&sd).isfinite().all().int64_value(&[]) != 0);
    }
}

#[test]
fn missing_and_misshapen_tensors_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let base = tiny(dir.path(), 5);
    let missing_key = "model.diffusion_model.output_blocks.2.0.emb_layers.1.bias";
    let missing = dir.path().join("missing.safetensors");
    rewrite(&base, &missing, |t| t.retain(|(k, _)| k != missing_key));
    let err = load(&missing)
        .err()
        .expect("a missing tensor is an error")
        .to_string();
    assert!(
        err.contains(missing_key) && err.contains("missing.safetensors"),
        "{err}"
    );

    let bad_key = "first_stage_model.decoder.conv_out.bias";
    let misshapen = dir.path().join("misshapen.safetensors");
    rewrite(&base, &misshapen, |t| {
        for (k, v) in t.iter_mut() {
            if k == bad_key {
                *v = Tensor::zeros([7], (Kind::Float, Device::Cpu));
            }
        }
    });
    let err = load(&misshapen)
        .err()
        .expect("a misshapen tensor is an error");
    assert!(
        matches!(err, LoadError::ShapeMismatch { ref key, .. } if key == bad_key),
        "{err}"
    );
}

#[test]
fn broken_files_give_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let base = tiny(dir.path(), 6);
    let bytes = std::fs::read(&base).unwrap();
    let write = |name: &str, data: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, data).unwrap();
        p
    };

    let empty = write("empty.safetensors", b"");
    assert!(matches!(
        Checkpoint::open(&empty),
        Err(LoadError::Empty { .. })
    ));

    let truncated = write("truncated.safetensors", &bytes[..bytes.len() / 2]);
    assert!(matches!(
        Checkpoint::open(&truncated),
        Err(LoadError::InvalidSafetensors { .. })
    ));

    let mut corrupt = bytes.clone();
    corrupt[8..40].copy_from_slice(&[b'#'; 32]);
    let corrupt = write("corrupt.safetensors", &corrupt);
    assert!(matches!(
        Checkpoint::open(&corrupt),
        Err(LoadError::InvalidSafetensors { .. })
    ));

    let pickle = write(
        "model.ckpt",
        b"PK\x03\x04 a zip archive with a pickle inside",
    );
    let err = Checkpoint::open(&pickle).err().unwrap();
    assert!(
        matches!(
            err,
            LoadError::Pickle(sdhost::pickle::PickleError::NotTorchFile { .. })
        ),
        "{err}"
    );

    let lora = dir.path().join("lora.safetensors");
    rewrite(&base, &lora, |t| {
        t.retain(|(k, _)| k.starts_with("first_stage_model."))
    });
    let err = infer_architecture(&Checkpoint::open(&lora).unwrap())
        .err()
        .unwrap();
    assert!(matches!(err, LoadError::NotStableDiffusion { .. }), "{err}");
}

#[test]
fn hashes_match_a1111_definitions_and_are_cached() {
    use sha2::{Digest, Sha256};
    let dir = tempfile::tempdir().unwrap();
    let path = tiny(dir.path(), 8);
    let bytes = std::fs::read(&path).unwrap();
    assert!(
        bytes.len() > 0x110000,
        "the tiny model covers the legacy hash window"
    );
    let hex = |d: &[u8]| d.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let full = hex(&Sha256::digest(&bytes));
    let legacy = hex(&Sha256::digest(&bytes[0x100000..0x110000]));

    let hashes = ModelHashes::compute(&path).unwrap();
    assert_eq!(hashes.sha256, full);
    assert_eq!(hashes.short(), &full[..10]);
    assert_eq!(hashes.legacy, &legacy[..8]);

    // The cache answers for an unchanged file, and is bypassed once the file changes.
    let cache = dir.path().join("cache");
    assert_eq!(ModelHashes::cached(&path, Some(&cache)).unwrap(), hashes);
    let file = cache.join(sdhost::checkpoint::HASH_CACHE_FILE);
    let planted = std::fs::read_to_string(&file)
        .unwrap()
        .replace(&full, &"0".repeat(64));
    std::fs::write(&file, planted).unwrap();
    assert_eq!(
        ModelHashes::cached(&path, Some(&cache)).unwrap().sha256,
        "0".repeat(64)
    );
    std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
    let changed = ModelHashes::cached(&path, Some(&cache)).unwrap();
    assert_eq!(
        changed.sha256,
        hex(&Sha256::digest(&bytes[..bytes.len() - 1]))
    );
}

#[test]
fn crafted_shapes_are_refused_without_panicking() {
    let dir = tempfile::tempdir().unwrap();
    let base = tiny(dir.path(), 9);
    let zeros = |shape: &[i64]| Tensor::zeros(shape, (Kind::Float, Device::Cpu));
    type Edit = Box<dyn Fn(&mut Vec<(String, Tensor)>)>;
    let replace = |key: &'static str, t: Tensor| -> Edit {
        Box::new(move |ts: &mut Vec<(String, Tensor)>| {
            for (k, v) in ts.iter_mut() {
                if k == key {
                    *v = t.shallow_clone();
                }
            }
        })
    };
    let cases: Vec<(&str, Edit)> = vec![
        (
            "1-D UNet stem",
            replace("model.diffusion_model.input_blocks.0.0.weight", zeros(&[5])),
        ),
        (
            "empty VAE stem",
            replace(
                "first_stage_model.encoder.conv_in.weight",
                zeros(&[0, 3, 3, 3]),
            ),
        ),
        (
            "UNet width not a multiple of 32",
            replace(
                "model.diffusion_model.input_blocks.1.0.in_layers.2.weight",
                zeros(&[48, 32, 3, 3]),
            ),
        ),
        (
            "no ResBlock after the stem",
            Box::new(|ts: &mut Vec<(String, Tensor)>| {
                ts.retain(|(k, _)| {
                    !k.contains("diffusion_model.input_blocks.1.")
                        && !k.contains("diffusion_model.input_blocks.2.")
                })
            }),
        ),
    ];
    for (name, edit) in cases {
        let path = dir.path().join("crafted.safetensors");
        rewrite(&base, &path, |ts| edit(ts));
        let result = std::panic::catch_unwind(|| load(&path).map(drop));
        let err = result.unwrap_or_else(|_| panic!("{name}: panicked")).err();
        let err = err.unwrap_or_else(|| panic!("{name}: accepted"));
        assert!(
            matches!(
                err,
                LoadError::NotStableDiffusion { .. } | LoadError::ShapeMismatch { .. }
            ),
            "{name}: {err}"
        );
    }
}

/// The tiny model as `.ckpt` pickles (tests/reference/pickle_corpus.py `convert`).
fn pickled_variants(dir: &Path, seed: i64) -> PathBuf {
    let model = tiny(dir, seed);
    common::run_reference(
        "pickle_corpus.py",
        &["convert".as_ref(), model.as_os_str(), dir.as_os_str()],
    );
    model
}

/// Every tensor of `a` equals the one of `b` under the same key, bit for bit and in dtype.
fn assert_same_tensors(a: &Checkpoint, b: &Checkpoint) {
    let keys: Vec<&str> = a.keys().collect();
    assert_eq!(keys, b.keys().collect::<Vec<_>>(), "{}", a.path().display());
    for key in keys {
        assert_eq!(a.dtype(key), b.dtype(key), "{key}");
        let (x, y) = (a.raw(key).unwrap(), b.raw(key).unwrap());
        assert_eq!(x.size(), y.size(), "{key}");
        assert!(x.equal(&y), "{}: {key} differs", a.path().display());
    }
}

#[test]
fn ckpt_pickles_load_the_same_weights_as_safetensors() {
    tch::set_num_threads(1);
    let dir = tempfile::tempdir().unwrap();
    let model = pickled_variants(dir.path(), 30);
    let reference = Checkpoint::open(&model).unwrap();
    // Zip format by the current torch with a Lightning wrapper; its big-endian twin; the
    // legacy format with old CLIP key names (renamed as A1111 does).
    for name in ["zip.ckpt", "bigendian.ckpt", "legacy.ckpt"] {
        let ckpt = Checkpoint::open(dir.path().join(name)).unwrap_or_else(|e| panic!("{e}"));
        assert!(ckpt.is_pickle());
        assert_same_tensors(&ckpt, &reference);
    }
    let fp16 = Checkpoint::open(dir.path().join("fp16.ckpt")).unwrap();
    assert_same_tensors(
        &fp16,
        &Checkpoint::open(dir.path().join("fp16.safetensors")).unwrap(),
    );
    let sd = sdhost::pickle::load_state_dict(&dir.path().join("zip.ckpt")).unwrap();
    assert_eq!(sd.global_step(), Some(1234));
    // The raw object keeps Lightning's metadata as inert values.
    use sdhost::pickle::{TorchFile, Value};
    let raw = TorchFile::open(&dir.path().join("zip.ckpt")).unwrap();
    let Some(Value::Dict(callbacks)) = raw.root.get("callbacks") else {
        panic!("no callbacks")
    };
    let (class, state) = callbacks.borrow()[0].clone();
    assert!(
        matches!(&class, Value::Global(m, n) if m == "pytorch_lightning.callbacks.model_checkpoint" && n == "ModelCheckpoint"),
        "{class:?}"
    );
    assert!(matches!(state.get("best_model_score"), Some(Value::Float(x)) if x == 0.25));
    assert!(matches!(state.get("scores"), Some(Value::Object(c, _)) if c == "numpy.ndarray"));
    assert!(matches!(
        raw.root.get("checkpoint_callback"),
        Some(Value::Object(..))
    ));

    // The whole loading path: architecture, structure, networks, noise levels.
    let expected = unet_output(&load(&model).unwrap());
    let ckpt_path = dir.path().join("zip.ckpt");
    assert!(unet_output(&load(&ckpt_path).unwrap()).equal(&expected));
    let ckpt = Checkpoint::open(&ckpt_path).unwrap();
    let levels = sdhost::sampling::noise_levels::NoiseLevels::from_checkpoint(&ckpt).unwrap();
    let reference_levels =
        sdhost::sampling::noise_levels::NoiseLevels::from_checkpoint(&reference).unwrap();
    assert_eq!(levels, reference_levels);
    // The model hash is the whole file's, as for any checkpoint.
    use sha2::{Digest, Sha256};
    let hex: String = Sha256::digest(std::fs::read(&ckpt_path).unwrap())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(ModelHashes::compute(&ckpt_path).unwrap().sha256, hex);
}

#[test]
fn img2img_from_a_ckpt_matches_its_safetensors_pixel_for_pixel() {
    let dir = tempfile::tempdir().unwrap();
    let model = pickled_variants(dir.path(), 32);
    let init = dir.path().join("init.png");
    image::RgbImage::from_fn(40, 32, |x, y| {
        image::Rgb([(x * 6) as u8, (y * 7) as u8, 90])
    })
    .save(&init)
    .unwrap();
    // Pixels, not PNG bytes: the infotext names the model file and its hash.
    let run = |model: &Path, out: &str| {
        let out_dir = dir.path().join(out);
        let status = std::process::Command::new(env!("CARGO_BIN_EXE_sdhost"))
            .args(["img2img", "--seed", "7", "--steps", "4", "--threads", "1"])
            .args(["--prompt", "a red cat", "--denoising-strength", "0.7"])
            .arg("--model")
            .arg(model)
            .arg("--init-image")
            .arg(&init)
            .arg("--out-dir")
            .arg(&out_dir)
            .env("SDHOST_CACHE_DIR", dir.path().join("cache"))
            .output()
            .unwrap();
        assert!(
            status.status.success(),
            "{}",
            String::from_utf8_lossy(&status.stderr)
        );
        let png = out_dir.join("00000-7.png");
        image::open(&png).unwrap().to_rgb8().into_raw()
    };
    let safetensors = run(&model, "from-safetensors");
    assert_eq!(run(&dir.path().join("zip.ckpt"), "from-ckpt"), safetensors);
    assert_eq!(
        run(&dir.path().join("legacy.ckpt"), "from-legacy"),
        safetensors
    );

    let info = std::process::Command::new(env!("CARGO_BIN_EXE_sdhost"))
        .args(["info", "--no-hash"])
        .arg(dir.path().join("zip.ckpt"))
        .output()
        .unwrap();
    assert!(
        info.status.success(),
        "{}",
        String::from_utf8_lossy(&info.stderr)
    );
}
