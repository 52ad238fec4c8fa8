//! `<lora:…>` tags on the tiny models against diffusers' own LoRA loading and a transcription
//! of A1111's patching (tests/reference/lora_reference.py): kohya and PEFT files with LoCon
//! convolutions and alphas that are not the rank, stacking with a negative multiplier, `dyn`,
//! a 9-channel inpainting model, a LoRA made for another architecture, switching sets back to
//! the exact original weights, a whole img2img job, and a Hires. fix prompt's own LoRA.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use sdhost::checkpoint::Checkpoint;
use sdhost::extra_networks::dirs::NetworkDirs;
use sdhost::pipeline::extra_networks::activate_extra_networks;
use sdhost::pipeline::img2img::{run_img2img, run_img2img_unobserved, JobEvent};
use sdhost::pipeline::model::GenerationModel;
use sdhost::pipeline::stop::JobStop;
use sdhost::request::GenerationRequest;
use sdhost::sampling::plan::SamplerSettings;
use sdhost_plugin_api::Flow;
use sha2::{Digest, Sha256};
use tch::{Device, Kind};

use crate::common;

/// Largest difference allowed between patched weights and the references.
const WEIGHT_TOLERANCE: f64 = 1e-5;

/// The models, LoRA files and reference weights, made once for the run.
struct Fixture {
    dir: PathBuf,
    base: PathBuf,
    inpainting: PathBuf,
    lora_dir: PathBuf,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir =
            Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("lora-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let base = common::tiny_model(&dir, 21);
        let inpainting = common::tiny_inpainting_model(&dir, 21);
        let lora_dir = dir.join("Lora");
        // A subfolder, as users sort their LoRAs.
        let files = lora_dir.join("styles");
        let s = |p: &Path| p.display().to_string();
        let lora = |name: &str| s(&files.join(format!("{name}.safetensors")));
        let jobs = serde_json::json!([
            ["make", s(&base), s(&files), "5"],
            [
                "diffusers",
                s(&base),
                lora("kohya"),
                s(&dir.join("diffusers-kohya.safetensors"))
            ],
            [
                "diffusers",
                s(&base),
                lora("peft"),
                s(&dir.join("diffusers-peft.safetensors"))
            ],
            [
                "a1111",
                s(&base),
                s(&dir.join("a1111-stack.safetensors")),
                format!("{}:1:1", lora("kohya")),
                format!("{}:-0.5:0.7", lora("peft"))
            ],
            [
                "a1111",
                s(&base),
                s(&dir.join("a1111-dyn.safetensors")),
                format!("{}:0.8:0.8:1", lora("kohya"))
            ],
            [
                "a1111",
                s(&inpainting),
                s(&dir.join("a1111-inpainting.safetensors")),
                format!("{}:1:1", lora("kohya"))
            ],
        ]);
        let jobs_path = dir.join("jobs.json");
        std::fs::write(&jobs_path, jobs.to_string()).unwrap();
        common::run_reference(
            "lora_reference.py",
            &["batch".as_ref(), jobs_path.as_os_str()],
        );
        Fixture {
            dir,
            base,
            inpainting,
            lora_dir,
        }
    })
}

pub(crate) fn load(checkpoint: &Path, lora_dirs: Vec<PathBuf>) -> GenerationModel {
    GenerationModel::load(checkpoint, Device::Cpu, Kind::Float, None)
        .unwrap()
        .with_network_dirs(NetworkDirs {
            lora: lora_dirs,
            ..NetworkDirs::default()
        })
}

/// The checkpoint's names of a layer's weight and bias: OpenCLIP's merged attention is
/// recorded as `….attn.in_proj` but stored as `in_proj_weight`/`in_proj_bias`.
pub(crate) fn tensor_names(layer: &str) -> (String, String) {
    match layer.strip_suffix(".in_proj") {
        Some(attn) => (
            format!("{attn}.in_proj_weight"),
            format!("{attn}.in_proj_bias"),
        ),
        None => (format!("{layer}.weight"), format!("{layer}.bias")),
    }
}

/// Compares every recorded layer of `model` with the reference checkpoint `reference`;
/// returns how many tensors differ from the checkpoint `original` and the largest |Δ|.
pub(crate) fn assert_layers_match(
    model: &GenerationModel,
    reference: &Path,
    original: &Path,
    tolerance: f64,
) -> usize {
    let expected = common::read_tensors(reference);
    let original = Checkpoint::open(original).unwrap();
    let (mut changed, mut worst) = (0, 0.0f64);
    for (key, layer) in &model.sd.layers {
        let (weight, bias) = tensor_names(key);
        let mut pairs = vec![(weight, &layer.weight)];
        if let Some(live) = &layer.bias {
            pairs.push((bias, live));
        }
        for (name, live) in pairs {
            let want = expected
                .get(&name)
                .unwrap_or_else(|| panic!("{} lacks {name}", reference.display()))
                .to_kind(Kind::Float)
                .reshape(live.size());
            let diff = (live - &want).abs().max().double_value(&[]);
            assert!(
                diff <= tolerance,
                "{name}: |Δ| {diff:e} against {}",
                reference.display()
            );
            worst = worst.max(diff);
            let before = original
                .raw(&name)
                .unwrap()
                .to_kind(Kind::Float)
                .reshape(live.size());
            if !live.equal(&before) {
                changed += 1;
            }
        }
    }
    let file = reference.file_name().unwrap().to_string_lossy();
    println!("{file}: {changed} tensors patched, max |Δ| {worst:e}");
    changed
}

/// Every recorded layer bit for bit as the checkpoint stores it.
pub(crate) fn assert_original(model: &GenerationModel, checkpoint: &Path) {
    let original = Checkpoint::open(checkpoint).unwrap();
    for (key, layer) in &model.sd.layers {
        let (weight, bias) = tensor_names(key);
        let before = original.raw(&weight).unwrap().reshape(layer.weight.size());
        assert!(layer.weight.equal(&before), "{key} is not restored exactly");
        if let Some(live) = &layer.bias {
            assert!(live.equal(&original.raw(&bias).unwrap()), "{bias}");
        }
    }
}

#[test]
fn kohya_and_peft_files_patch_weights_as_diffusers_loads_them_and_switching_restores_exactly() {
    let f = fixture();
    let model = load(&f.base, vec![f.lora_dir.clone()]);
    let job = activate_extra_networks(&model, "a cat <lora:kohya:1>");
    assert!(job.warnings.is_empty(), "{:?}", job.warnings);
    assert_eq!(job.prompt, "a cat ");
    let changed = assert_layers_match(
        &model,
        &f.dir.join("diffusers-kohya.safetensors"),
        &f.base,
        WEIGHT_TOLERANCE,
    );
    // 133 LoRA layers: every UNet convolution and linear, and the text encoder's.
    assert_eq!(changed, 133);

    // Switching to another set restores what only the first touched and patches anew.
    let job = activate_extra_networks(&model, "<lora:peft:1> a cat");
    assert!(job.warnings.is_empty(), "{:?}", job.warnings);
    let changed = assert_layers_match(
        &model,
        &f.dir.join("diffusers-peft.safetensors"),
        &f.base,
        WEIGHT_TOLERANCE,
    );
    assert_eq!(changed, 133);

    let job = activate_extra_networks(&model, "a cat");
    assert!(job.lora_hashes.is_none());
    assert_original(&model, &f.base);
    assert!(!model.lora.lock().unwrap().is_patched());

    // The same tensors in a torch.save pickle (read by the restricted unpickler).
    let job = activate_extra_networks(&model, "<lora:kohya_pickle:1>");
    assert!(job.warnings.is_empty(), "{:?}", job.warnings);
    assert_layers_match(
        &model,
        &f.dir.join("diffusers-kohya.safetensors"),
        &f.base,
        WEIGHT_TOLERANCE,
    );
    let pickle = std::fs::read(f.lora_dir.join("styles/kohya_pickle.pt")).unwrap();
    let sha: String = Sha256::digest(&pickle)
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        job.lora_hashes,
        Some(format!("kohya_pickle: {sha}")),
        "plain sha256 for pickles"
    );
}

#[test]
fn stacked_networks_with_negative_and_separate_multipliers_follow_a1111() {
    let f = fixture();
    let model = load(&f.base, vec![f.lora_dir.clone()]);
    let job = activate_extra_networks(&model, "x <lora:kohya:1> <lora:peft:te=-0.5:unet=0.7>");
    assert!(job.warnings.is_empty(), "{:?}", job.warnings);
    assert_layers_match(
        &model,
        &f.dir.join("a1111-stack.safetensors"),
        &f.base,
        WEIGHT_TOLERANCE,
    );
    // The same set again costs nothing and changes nothing.
    activate_extra_networks(&model, "y <lora:kohya:1.0> <lora:peft:-0.5:0.7>");
    assert_layers_match(
        &model,
        &f.dir.join("a1111-stack.safetensors"),
        &f.base,
        WEIGHT_TOLERANCE,
    );
    // dyn keeps the first rank; te and unet from one positional number.
    activate_extra_networks(&model, "<lora:kohya:0.8:0.8:1>");
    assert_layers_match(
        &model,
        &f.dir.join("a1111-dyn.safetensors"),
        &f.base,
        WEIGHT_TOLERANCE,
    );
    activate_extra_networks(&model, "");
    assert_original(&model, &f.base);
}

#[test]
fn a_4_channel_lora_patches_the_9_channel_inpainting_model_zero_padded() {
    let f = fixture();
    let model = load(&f.inpainting, vec![f.lora_dir.clone()]);
    let job = activate_extra_networks(&model, "<lora:kohya:1>");
    assert!(job.warnings.is_empty(), "{:?}", job.warnings);
    let changed = assert_layers_match(
        &model,
        &f.dir.join("a1111-inpainting.safetensors"),
        &f.inpainting,
        WEIGHT_TOLERANCE,
    );
    assert_eq!(changed, 133);
    // The mask and masked-image channels of the first convolution are untouched.
    let conv_in = &model.sd.layers["model.diffusion_model.input_blocks.0.0"].weight;
    let original = Checkpoint::open(&f.inpainting)
        .unwrap()
        .raw("model.diffusion_model.input_blocks.0.0.weight")
        .unwrap();
    assert!(conv_in.narrow(1, 4, 5).equal(&original.narrow(1, 4, 5)));
    assert!(!conv_in.narrow(1, 0, 4).equal(&original.narrow(1, 0, 4)));
}

fn addnet_hash(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap();
    let header = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let digest = Sha256::digest(&bytes[8 + header..]);
    digest.iter().map(|b| format!("{b:02x}")).take(6).collect()
}

#[test]
fn names_aliases_missing_files_and_foreign_networks_are_reported_and_the_job_goes_on() {
    let f = fixture();
    let model = load(&f.base, vec![f.lora_dir.clone(), f.dir.join("LyCORIS")]);
    // The alias from `ss_output_name`; the hash as A1111's addnet hash.
    let job = activate_extra_networks(
        &model,
        "<lora:kohya_alias:0.5> <lyco:nothing:1> <lora:missing:1>",
    );
    // lyco comes later than lora here, so A1111 runs the lyco set: only the missing name.
    assert_eq!(job.warnings.len(), 1, "{:?}", job.warnings);
    assert!(
        job.warnings[0].starts_with("Lora not found: nothing"),
        "{}",
        job.warnings[0]
    );
    assert!(
        job.warnings[0].contains("LyCORIS"),
        "names the folders: {}",
        job.warnings[0]
    );
    let job = activate_extra_networks(
        &model,
        "<lora:kohya_alias:0.5> <lora:mis:sing:1> <hypnotic:x>",
    );
    let hash = addnet_hash(&f.lora_dir.join("styles/kohya.safetensors"));
    assert_eq!(
        job.lora_hashes.as_deref(),
        Some(format!("kohya_alias: {hash}").as_str())
    );
    assert_eq!(job.warnings.len(), 2, "{:?}", job.warnings);
    assert!(job
        .warnings
        .iter()
        .any(|w| w.contains("sing") && w.contains("not a number")));
    assert!(job.warnings.iter().any(|w| w.contains("<hypnotic:")));

    // A LoRA for wider layers: every layer is skipped, nothing changes, the job is told.
    let job = activate_extra_networks(&model, "<lora:other:1>");
    assert_eq!(job.warnings.len(), 1, "{:?}", job.warnings);
    assert!(
        job.warnings[0].starts_with("Networks with errors: other (133)"),
        "{}",
        job.warnings[0]
    );
    assert_original(&model, &f.base);

    // No folder configured at all.
    let bare = load(&f.base, Vec::new());
    let job = activate_extra_networks(&bare, "<lora:kohya:1>");
    assert!(
        job.warnings[0].contains("no LoRA folder is configured"),
        "{:?}",
        job.warnings
    );
}

#[test]
fn img2img_with_loras_is_the_job_of_the_patched_checkpoint() {
    let f = fixture();
    tch::set_num_threads(1);
    let dir = tempfile::tempdir().unwrap();
    let init_path = dir.path().join("init.png");
    let init = common::test_picture(&init_path);
    let registry = common::builtin_registry();
    let params = |prompt: &str| GenerationRequest {
        prompt: prompt.into(),
        negative_prompt: "blurry".into(),
        width: 64,
        height: 64,
        cfg_scale: 6.5,
        seed: 31337,
        sampler: SamplerSettings {
            sampler: "Euler".into(),
            steps: 12,
            denoising_strength: 0.6,
            ..SamplerSettings::default()
        },
        ..GenerationRequest::default()
    };
    let run = |model: &GenerationModel, prompt: &str| {
        let mut warnings = Vec::new();
        let outcome = run_img2img(
            model,
            &registry,
            &params(prompt),
            &init,
            None,
            &JobStop::new(),
            &mut |e| {
                if let JobEvent::Warning(w) = e {
                    warnings.push(w.to_string());
                }
                Flow::Continue
            },
        )
        .expect("job runs");
        (outcome, warnings)
    };
    let prompt = "a red cat on a sofa <lora:kohya:1> <lora:peft:-0.5:0.7>";
    let model = load(&f.base, vec![f.lora_dir.clone()]);
    let (with_lora, warnings) = run(&model, prompt);
    assert!(
        warnings.is_empty() && with_lora.warnings.is_empty(),
        "{warnings:?}"
    );
    let image = &with_lora.images[0];
    let text = image.infotext.to_text();
    assert!(
        text.starts_with(prompt),
        "the infotext keeps the tags: {text}"
    );
    assert!(text.contains("Lora hashes: \"kohya: "), "{text}");

    let patched = dir.path().join("patched.safetensors");
    std::fs::copy(f.dir.join("a1111-stack.safetensors"), &patched).unwrap();
    let reference_model = load(&patched, Vec::new());
    let (plain, _) = run(&reference_model, "a red cat on a sofa  ");
    let (mean, max) = common::pixel_difference(&image.image, &plain.images[0].image);
    println!("LoRA tags vs the patched checkpoint: mean |Δ| {mean:.4}, max {max}");
    assert!(
        max <= 1,
        "the LoRA job is not the patched checkpoint's job: max |Δ| {max}"
    );

    // And the Python img2img reference on the patched checkpoint.
    let cases = serde_json::json!([{
        "name": "lora", "sampler": "sample_euler", "karras": false, "steps": 12,
        "strength": 0.6, "seeds": [31337], "width": 64, "height": 64,
        "prompt": "a red cat on a sofa", "negative_prompt": "blurry", "cfg_scale": 6.5,
    }]);
    let cases_path = dir.path().join("cases.json");
    std::fs::write(&cases_path, cases.to_string()).unwrap();
    common::run_reference(
        "img2img_reference.py",
        &[
            patched.as_os_str(),
            init_path.as_os_str(),
            cases_path.as_os_str(),
            dir.path().as_os_str(),
        ],
    );
    let expected = image::open(dir.path().join("lora_0.png"))
        .unwrap()
        .to_rgb8();
    let (mean, max) = common::pixel_difference(&image.image, &expected);
    println!(
        "LoRA job vs the Python reference on the patched checkpoint: mean |Δ| {mean:.4}, max {max}"
    );
    assert!(mean <= 1.0, "mean |Δ| {mean}");
    // The LoRA made a difference the comparison can see.
    let (untagged, _) = run(&model, "a red cat on a sofa");
    let (mean, _) = common::pixel_difference(&image.image, &untagged.images[0].image);
    println!("with vs without the LoRAs: mean |Δ| {mean:.2}");
    assert!(mean > 5.0, "the LoRAs barely changed the picture: {mean}");
}

#[test]
fn embeddings_bundled_in_a_lora_join_the_jobs_prompt_words() {
    let dir = tempfile::tempdir().unwrap();
    let base = common::tiny_model(dir.path(), 21);
    let lora_dir = dir.path().join("Lora");
    std::fs::create_dir_all(&lora_dir).unwrap();
    let model = load(&base, vec![lora_dir.clone()]);
    let width = model.sd.architecture.text.embedding_width();
    tch::manual_seed(4);
    let vectors = tch::Tensor::randn([2, width], (Kind::Float, Device::Cpu));
    let tensors = vec![
        (
            "bundle_emb.lorastar.string_to_param.*".to_string(),
            vectors.shallow_clone(),
        ),
        (
            "bundle_emb.widestar.string_to_param.*".to_string(),
            tch::Tensor::randn([1, width * 2], (Kind::Float, Device::Cpu)),
        ),
    ];
    sdhost::tiny_model::save_safetensors(&tensors, &lora_dir.join("bundled.safetensors")).unwrap();

    let job = activate_extra_networks(&model, "a lorastar cat <lora:bundled:1>");
    assert_eq!(job.warnings.len(), 1, "{:?}", job.warnings);
    assert!(job.warnings[0].contains("widestar"), "{}", job.warnings[0]);
    assert!(job.embeddings(&model).contains("lorastar"));
    assert!(
        !model.embeddings.contains("lorastar"),
        "the model's own list is unchanged"
    );

    let registry = common::builtin_registry();
    let params = GenerationRequest {
        prompt: "a lorastar cat <lora:bundled:1>".into(),
        width: 64,
        height: 64,
        seed: 5,
        sampler: SamplerSettings {
            sampler: "Euler".into(),
            steps: 2,
            ..SamplerSettings::default()
        },
        ..GenerationRequest::default()
    };
    let init = image::RgbImage::from_pixel(64, 64, image::Rgb([120, 80, 40]));
    let outcome = run_img2img_unobserved(&model, &registry, &params, &init, None).unwrap();
    let text = outcome.images[0].infotext.to_text();
    // A1111's BundledTIHash: the network's name stands in for the embedding's hash.
    assert!(text.contains("TI hashes: \"lorastar: bundled\""), "{text}");
}

#[test]
fn lora_factors_that_are_empty_or_scalar_are_refused_by_name_not_a_panic() {
    // Crafted files against a linear layer: a rank-0 `lora_up` (0 rows) and a scalar
    // `lora_mid`. Reshaping either around its first dimension made libtorch panic.
    let dir = tempfile::tempdir().unwrap();
    let base = common::tiny_model(dir.path(), 21);
    let lora_dir = dir.path().join("Lora");
    std::fs::create_dir_all(&lora_dir).unwrap();
    let layer = "lora_unet_time_embedding_linear_1";
    let t = |shape: &[i64]| tch::Tensor::ones(shape, (Kind::Float, Device::Cpu));
    let files = [
        (
            "empty_up",
            vec![
                ("lora_up.weight", t(&[0, 2])),
                ("lora_down.weight", t(&[2, 3])),
            ],
        ),
        (
            "scalar_mid",
            vec![
                ("lora_up.weight", t(&[4, 2])),
                ("lora_down.weight", t(&[2, 3])),
                ("lora_mid.weight", tch::Tensor::from(1.0f32)),
            ],
        ),
    ];
    for (name, tensors) in &files {
        let named: Vec<(String, &tch::Tensor)> = tensors
            .iter()
            .map(|(suffix, t)| (format!("{layer}.{suffix}"), t))
            .collect();
        tch::Tensor::write_safetensors(&named, lora_dir.join(format!("{name}.safetensors")))
            .unwrap();
    }
    let model = load(&base, vec![lora_dir]);
    for (name, what) in [("empty_up", "lora_up"), ("scalar_mid", "lora_mid")] {
        let job = activate_extra_networks(&model, &format!("a cat <lora:{name}:1>"));
        assert_eq!(job.warnings.len(), 1, "{:?}", job.warnings);
        let warning = &job.warnings[0];
        assert!(
            warning.contains(&format!("{name}.safetensors")) && warning.contains(what),
            "names the file and the tensor: {warning}"
        );
        assert!(job.lora_hashes.is_none());
    }
    assert_original(&model, &base);
}

#[test]
fn a_hires_prompt_with_its_own_lora_patches_only_the_hires_pass() {
    use sdhost::pipeline::txt2img::run_txt2img;
    use sdhost::request::HiresSettings;
    let f = fixture();
    let model = load(&f.base, vec![f.lora_dir.clone()]);
    let registry = common::builtin_registry();
    let job = |hr_prompt: &str| {
        let params = GenerationRequest {
            prompt: "a cat".into(),
            width: 32,
            height: 32,
            seed: 3,
            n_iter: 2,
            sampler: SamplerSettings {
                sampler: "Euler".into(),
                steps: 3,
                denoising_strength: 0.6,
                ..Default::default()
            },
            hires: HiresSettings {
                enable_hr: true,
                hr_scale: 1.5,
                hr_prompt: hr_prompt.into(),
                ..HiresSettings::default()
            },
            ..GenerationRequest::default()
        };
        run_txt2img(&model, &registry, &params, &JobStop::new(), &mut |_| {
            Flow::Continue
        })
        .unwrap()
    };
    let plain = job("a cat");
    let with_lora = job("a cat <lora:kohya:1>");
    assert!(with_lora.warnings.is_empty(), "{:?}", with_lora.warnings);
    for (a, b) in plain.images.iter().zip(&with_lora.images) {
        assert_ne!(a.image, b.image, "the LoRA changes the hires pass");
    }
    assert_eq!(
        with_lora.images[0].infotext.get("Hires prompt"),
        Some("a cat <lora:kohya:1>")
    );
    // The job leaves the hires networks on; the next untagged prompt restores the weights.
    activate_extra_networks(&model, "a cat");
    assert_original(&model, &f.base);
}
