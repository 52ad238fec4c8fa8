//! A1111's VAE override (`sd_vae`): an external VAE file swapped into the loaded model decodes
//! exactly as a checkpoint carrying those weights, switching back restores the checkpoint's own
//! bit for bit, `.pt`/`.ckpt` and `.safetensors` files load the same, bad files are refused
//! before any work, A1111's resolution rules, and the infotext keys with their round trip
//! through the CLI's `--models-dir`, `--vae` and `--from-png`.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use image::RgbImage;
use sdhost::infotext::Infotext;
use sdhost::pipeline::img2img::{run_img2img_unobserved, GeneratedImage};
use sdhost::pipeline::model::GenerationModel;
use sdhost::request::GenerationRequest;
use sdhost::sd_vae::{load_vae_file, VaeError, VaeResolution};
use sha2::{Digest, Sha256};
use tch::{Device, Kind, Tensor};

/// Base checkpoint (seed 1) and the VAE files made from a donor checkpoint (seed 2).
struct Fixture {
    dir: tempfile::TempDir,
    base: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let base = common::tiny_model(dir.path(), 1);
        let donor_dir = dir.path().join("donor");
        std::fs::create_dir_all(&donor_dir).unwrap();
        let donor = common::tiny_model(&donor_dir, 2);
        common::run_reference(
            "vae_files.py",
            &[base.as_os_str(), donor.as_os_str(), dir.path().as_os_str()],
        );
        Fixture { dir, base }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn load(path: &Path) -> GenerationModel {
    GenerationModel::load(path, Device::Cpu, Kind::Float, None).unwrap()
}

/// One small img2img job (the VAE encodes the init image and decodes the result).
fn job(model: &GenerationModel, init: &RgbImage) -> GeneratedImage {
    let params = GenerationRequest {
        prompt: "a lighthouse".into(),
        seed: 4321,
        width: 48,
        height: 40,
        sampler: sdhost::sampling::plan::SamplerSettings {
            sampler: "Euler".into(),
            steps: 3,
            ..Default::default()
        },
        ..GenerationRequest::ui_defaults()
    };
    let registry = common::builtin_registry();
    let mut outcome =
        run_img2img_unobserved(model, &registry, &params, init, None).expect("job runs");
    outcome.images.remove(0)
}

fn sha10(path: &Path) -> String {
    let digest = Sha256::digest(std::fs::read(path).unwrap());
    digest
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()[..10]
        .to_string()
}

#[test]
fn an_external_vae_decodes_as_its_weights_and_switching_back_restores_the_own() {
    tch::set_num_threads(1);
    let fixture = Fixture::new();
    let init = common::test_picture(&fixture.file("init.png"));
    let vae_file = fixture.file("vae.safetensors");

    let mut model = load(&fixture.base);
    let own = job(&model, &init);
    assert!(
        own.infotext.get("VAE").is_none(),
        "no VAE key for the own VAE"
    );

    assert_eq!(model.select_vae(vae_file.to_str().unwrap()).unwrap(), None);
    let swapped = job(&model, &init);
    let reference = job(&load(&fixture.file("merged.safetensors")), &init);
    assert_eq!(
        swapped.image.as_raw(),
        reference.image.as_raw(),
        "the swapped VAE decodes as a checkpoint with those weights"
    );
    assert_ne!(
        swapped.image.as_raw(),
        own.image.as_raw(),
        "the VAE matters"
    );
    assert_eq!(swapped.infotext.get("VAE"), Some("vae.safetensors"));
    assert_eq!(
        swapped.infotext.get("VAE hash"),
        Some(sha10(&vae_file).as_str())
    );
    // A1111's slots: right after Model.
    let text = swapped.infotext.to_text();
    let model_at = text.find("Model: ").unwrap();
    let hash_at = text.find("VAE hash: ").unwrap();
    let vae_at = text.find("VAE: ").unwrap();
    assert!(model_at < hash_at && hash_at < vae_at, "{text}");

    // Back to the checkpoint's own: the original pixels, bit for bit; and to the file again,
    // now from the cache.
    assert_eq!(model.select_vae("None").unwrap(), None);
    let back = job(&model, &init);
    assert_eq!(back.image.as_raw(), own.image.as_raw());
    assert!(back.infotext.get("VAE").is_none());
    model.select_vae(vae_file.to_str().unwrap()).unwrap();
    assert_eq!(job(&model, &init).image.as_raw(), swapped.image.as_raw());

    // A name that is not there: A1111's warning, and the checkpoint's own VAE.
    let warning = model.select_vae("nowhere.safetensors").unwrap();
    assert!(
        warning
            .as_deref()
            .is_some_and(|w| w.contains("nowhere.safetensors")),
        "{warning:?}"
    );
    assert_eq!(job(&model, &init).image.as_raw(), own.image.as_raw());
}

/// The decoder's output for a fixed latent.
fn decode(vae: &sdhost::models::vae::AutoencoderKl) -> Tensor {
    let _guard = tch::no_grad_guard();
    let latent = Tensor::arange(120, (Kind::Float, Device::Cpu)).reshape([1, 4, 5, 6]) / 60.0 - 1.0;
    vae.decode(&latent)
}

#[test]
fn pickled_and_safetensors_vae_files_load_the_same() {
    tch::set_num_threads(1);
    let fixture = Fixture::new();
    let model = load(&fixture.base);
    let config = model.sd.vae.config().clone();
    let read = |name: &str| load_vae_file(&fixture.file(name), &config, Kind::Float, Device::Cpu);
    let safetensors = decode(&read("vae.safetensors").unwrap());
    // `vae.pt` wraps the dict in `state_dict` and carries `loss.*` and the EMA counters.
    for pickle in ["vae.pt", "vae.ckpt"] {
        let decoded = decode(&read(pickle).unwrap_or_else(|e| panic!("{pickle}: {e}")));
        assert!(
            decoded.equal(&safetensors),
            "{pickle} decodes as the .safetensors"
        );
    }
    assert!(!decode(&model.sd.vae).equal(&safetensors));
}

/// Writes the tensors of `source` with `edit` applied to their list as a new safetensors file.
fn edited_copy(
    source: &Path,
    target: &Path,
    edit: impl FnOnce(&mut Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)>),
) {
    let bytes = std::fs::read(source).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<_> = file
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            (
                name,
                view.dtype(),
                view.shape().to_vec(),
                view.data().to_vec(),
            )
        })
        .collect();
    edit(&mut tensors);
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(name, dtype, shape, data)| {
            (
                name.clone(),
                safetensors::tensor::TensorView::new(*dtype, shape.clone(), data).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, target).unwrap();
}

#[test]
fn bad_vae_files_are_refused_before_work_and_leave_the_model_as_it_was() {
    tch::set_num_threads(1);
    let fixture = Fixture::new();
    let good = fixture.file("vae.safetensors");
    let missing = fixture.file("missing-key.safetensors");
    edited_copy(&good, &missing, |t| {
        t.retain(|(n, ..)| n != "decoder.conv_out.bias")
    });
    let unexpected = fixture.file("extra-key.safetensors");
    edited_copy(&good, &unexpected, |t| {
        let first = t[0].clone();
        t.push((
            "decoder.extra_layer.weight".into(),
            first.1,
            first.2,
            first.3,
        ));
    });
    let misshaped = fixture.file("bad-shape.safetensors");
    edited_copy(&good, &misshaped, |t| {
        let bias = t
            .iter_mut()
            .find(|(n, ..)| n == "decoder.conv_out.bias")
            .unwrap();
        bias.2 = vec![bias.2[0] - 1];
        bias.3.truncate(bias.3.len() - 4);
    });
    let whole_checkpoint = fixture.base.clone();
    let not_a_vae = fixture.file("notes.bin");
    std::fs::write(&not_a_vae, b"hello").unwrap();

    let mut model = load(&fixture.base);
    let init = common::test_picture(&fixture.file("init.png"));
    let own = job(&model, &init);
    for (path, mentions) in [
        (&missing, "missing tensor `decoder.conv_out.bias`"),
        (&unexpected, "decoder.extra_layer.weight"),
        (&misshaped, "decoder.conv_out.bias"),
        // A whole checkpoint is not an autoencoder's state dict (A1111's strict load fails).
        (&whole_checkpoint, "whole checkpoint"),
        (&not_a_vae, "not a .safetensors, .pt or .ckpt"),
    ] {
        let error = model.select_vae(path.to_str().unwrap()).unwrap_err();
        let text = error.to_string();
        assert!(text.contains(mentions), "{}: {text}", path.display());
        assert!(matches!(error, VaeError::File(_)), "{error:?}");
    }
    let error = model
        .select_vae(fixture.file("gone/vae.pt").to_str().unwrap())
        .unwrap_err();
    assert!(matches!(error, VaeError::Choice(_)), "{error:?}");
    assert!(model.external_vae().is_none());
    assert_eq!(job(&model, &init).image.as_raw(), own.image.as_raw());
}

#[test]
fn resolution_follows_a1111_for_a_models_folder() {
    tch::set_num_threads(1);
    let fixture = Fixture::new();
    let models = fixture.file("models");
    let checkpoints = models.join("Stable-diffusion");
    std::fs::create_dir_all(&checkpoints).unwrap();
    std::fs::create_dir_all(models.join("VAE/sub")).unwrap();
    let checkpoint = checkpoints.join("anime.safetensors");
    std::fs::copy(&fixture.base, &checkpoint).unwrap();
    std::fs::copy(fixture.file("vae.ckpt"), models.join("VAE/sub/kl-f8.ckpt")).unwrap();
    let folders = sdhost::extra_networks::dirs::ModelFolders {
        models_dir: Some(models.clone()),
        ..Default::default()
    };
    let mut model = load(&checkpoint).with_network_dirs(folders.network_dirs());
    let names: Vec<String> = model.vae_list().choices();
    assert_eq!(names, ["Automatic", "None", "kl-f8.ckpt"]);
    // Automatic without a VAE named like the checkpoint: its own.
    assert_eq!(
        model.resolve_vae("Automatic").unwrap(),
        VaeResolution::Own { warning: None }
    );
    // By name (the file name with its extension).
    model.select_vae("kl-f8.ckpt").unwrap();
    assert_eq!(model.external_vae().unwrap().name, "kl-f8.ckpt");
    // A `*.vae.*` file beside the checkpoint is what Automatic picks.
    std::fs::copy(fixture.file("vae.pt"), checkpoints.join("anime.vae.pt")).unwrap();
    assert!(matches!(
        model.resolve_vae("Automatic").unwrap(),
        VaeResolution::File { path, .. } if path == checkpoints.join("anime.vae.pt")
    ));
    model.select_vae("Automatic").unwrap();
    assert_eq!(model.external_vae().unwrap().name, "anime.vae.pt");
    model.select_vae("None").unwrap();
    assert!(model.external_vae().is_none());
}

fn sdhost(dir: &Path, args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sdhost"))
        .env("SDHOST_CACHE_DIR", dir.join("cache"))
        .args(args)
        .output()
        .expect("run sdhost")
}

fn succeeded(out: &Output) -> String {
    assert!(
        out.status.success(),
        "sdhost failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_cli_takes_a_models_folder_a_vae_by_name_and_reproduces_from_the_png() {
    let fixture = Fixture::new();
    let dir = fixture.dir.path();
    let models = dir.join("webui/models");
    std::fs::create_dir_all(models.join("Stable-diffusion/sd15")).unwrap();
    std::fs::create_dir_all(models.join("VAE")).unwrap();
    std::fs::copy(
        &fixture.base,
        models.join("Stable-diffusion/sd15/base.safetensors"),
    )
    .unwrap();
    let vae = models.join("VAE/kl-f8-anime.safetensors");
    std::fs::copy(fixture.file("vae.safetensors"), &vae).unwrap();
    common::test_picture(&fixture.file("init.png"));
    let init = fixture.file("init.png");
    let out = |name: &str| dir.join(name);
    let args = |out_dir: &Path, extra: &[&str]| -> Vec<std::ffi::OsString> {
        let mut args: Vec<std::ffi::OsString> = vec![
            "img2img".into(),
            "--models-dir".into(),
            models.clone().into(),
            "--model".into(),
            "sd15/base".into(),
            "--init-image".into(),
            init.clone().into(),
            "--out-dir".into(),
            out_dir.into(),
            "--steps".into(),
            "2".into(),
            "--seed".into(),
            "5".into(),
            "--width".into(),
            "48".into(),
            "--height".into(),
            "40".into(),
            "--threads".into(),
            "1".into(),
        ];
        args.extend(extra.iter().map(Into::into));
        args
    };
    let run = |args: Vec<std::ffi::OsString>| {
        let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        sdhost(dir, &refs)
    };
    let first = run(args(&out("a"), &["--vae", "kl-f8-anime.safetensors"]));
    let png = PathBuf::from(succeeded(&first).lines().next().unwrap().trim());
    let text = sdhost::pipeline::png_info::read_png_infotext(&png)
        .unwrap()
        .unwrap();
    let infotext = Infotext::parse(&text);
    assert_eq!(infotext.get("VAE"), Some("kl-f8-anime.safetensors"));
    assert_eq!(infotext.get("VAE hash"), Some(sha10(&vae).as_str()));
    assert_eq!(infotext.get("Model"), Some("base"));

    // `--from-png` finds the VAE by name and makes the same pixels.
    let again = run(args(&out("b"), &["--from-png", png.to_str().unwrap()]));
    let png_again = PathBuf::from(succeeded(&again).lines().next().unwrap().trim());
    assert_eq!(
        image::open(&png).unwrap().to_rgb8().as_raw(),
        image::open(&png_again).unwrap().to_rgb8().as_raw()
    );
    // The same job with the checkpoint's own VAE differs; without the file, `--from-png`
    // warns and goes on with the checkpoint's own, as A1111 does.
    let own = run(args(&out("c"), &["--vae", "None"]));
    let own_png = PathBuf::from(succeeded(&own).lines().next().unwrap().trim());
    assert_ne!(
        image::open(&png).unwrap().to_rgb8().as_raw(),
        image::open(&own_png).unwrap().to_rgb8().as_raw()
    );
    std::fs::remove_file(&vae).unwrap();
    let missing = run(args(&out("d"), &["--from-png", png.to_str().unwrap()]));
    let missing_png = PathBuf::from(succeeded(&missing).lines().next().unwrap().trim());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(
        stderr.contains("Couldn't find VAE named kl-f8-anime.safetensors"),
        "{stderr}"
    );
    assert_eq!(
        image::open(&own_png).unwrap().to_rgb8().as_raw(),
        image::open(&missing_png).unwrap().to_rgb8().as_raw()
    );
    // An unknown checkpoint name is a clear error naming what is there.
    let unknown = run(args(&out("e"), &[])
        .into_iter()
        .map(|a| if a == "sd15/base" { "nope".into() } else { a })
        .collect());
    assert!(!unknown.status.success());
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        stderr.contains("nope") && stderr.contains("sd15/base"),
        "{stderr}"
    );
}
