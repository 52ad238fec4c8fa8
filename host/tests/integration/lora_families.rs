//! LoRA and LyCORIS files in the key forms of SD 2.x, SDXL and the SDXL refiner, applied
//! through `<lora:…>` tags on tiny checkpoints of each family and compared with a
//! transcription of A1111's `load_network`/`network_apply_weights` on any family
//! (tests/reference/lora_reference.py `make-family`, `a1111-any`): SD2's q/k/v stacked into
//! thirds of OpenCLIP's `in_proj`, SDXL's LDM-named UNet and `lora_te1_`/`lora_te2_` text keys,
//! diffusers-named SDXL UNet keys with A1111's up-block-0 upsampler quirk, LoHa on SDXL, the
//! text-encoder/UNet multiplier rule, restoring bit for bit, and networks made for another
//! family (warned about, the job still runs).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use sdhost::checkpoint::Checkpoint;
use sdhost::pipeline::extra_networks::activate_extra_networks;
use sdhost::pipeline::img2img::{run_img2img, JobEvent};
use sdhost::pipeline::model::GenerationModel;
use sdhost::pipeline::stop::JobStop;
use sdhost::request::GenerationRequest;
use sdhost::sampling::plan::SamplerSettings;
use sdhost::tiny_model::{write_tiny_model, TinyFamily, TinyModelSpec};
use sdhost_plugin_api::Flow;

use crate::common;
use crate::lora::{assert_layers_match, assert_original, load};

/// Largest difference allowed between patched weights and A1111's (both fp32).
const WEIGHT_TOLERANCE: f64 = 1e-6;

/// The checkpoints, LoRA files and reference weights, made once for the run.
struct Fixture {
    dir: PathBuf,
    sd1: PathBuf,
    sd2: PathBuf,
    sdxl: PathBuf,
    refiner: PathBuf,
    lora_dir: PathBuf,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("lora-families-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |family: TinyFamily, name: &str, seed: i64| {
            let path = dir.join(format!("{name}.safetensors"));
            write_tiny_model(&TinyModelSpec::family(family, seed), &path).unwrap();
            path
        };
        let sd1 = write(TinyFamily::Sd1, "sd1", 71);
        let sd2 = write(TinyFamily::Sd2, "sd2", 72);
        let sdxl = write(TinyFamily::Sdxl, "sdxl", 73);
        let refiner = write(TinyFamily::SdxlRefiner, "refiner", 74);
        let lora_dir = dir.join("Lora");
        let s = |p: &Path| p.display().to_string();
        let lora = |name: &str| s(&lora_dir.join(format!("{name}.safetensors")));
        let reference = |name: &str| s(&dir.join(format!("{name}.safetensors")));
        let jobs = serde_json::json!([
            ["make", s(&sd1), s(&lora_dir), "5"],
            ["make-family", s(&sd2), s(&lora_dir), "6"],
            ["make-family", s(&sdxl), s(&lora_dir), "7"],
            ["make-family", s(&refiner), s(&lora_dir), "8"],
            [
                "a1111-any",
                s(&sd2),
                reference("a1111-sd2"),
                format!("{}:0.7:1.3", lora("sd2_kohya"))
            ],
            [
                "a1111-any",
                s(&sdxl),
                reference("a1111-sdxl"),
                format!("{}:0.7:1.3", lora("sdxl_kohya"))
            ],
            [
                "a1111-any",
                s(&sdxl),
                reference("a1111-sdxl-diffusers"),
                format!("{}:1:1", lora("sdxl_diffusers"))
            ],
            [
                "a1111-any",
                s(&sdxl),
                reference("a1111-sdxl-stack"),
                format!("{}:-0.5:0.9", lora("sdxl_kohya")),
                format!("{}:0.8:0.6", lora("sdxl_loha"))
            ],
            [
                "a1111-any",
                s(&refiner),
                reference("a1111-refiner"),
                format!("{}:1:0.5", lora("refiner_kohya"))
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
            sd1,
            sd2,
            sdxl,
            refiner,
            lora_dir,
        }
    })
}

#[test]
fn sd2_text_qkv_stack_into_in_proj_thirds_and_unet_keys_follow_a1111() {
    let f = fixture();
    let model = load(&f.sd2, vec![f.lora_dir.clone()]);
    let job = activate_extra_networks(&model, "a cat <lora:sd2_kohya:0.7:1.3>");
    assert!(job.warnings.is_empty(), "{:?}", job.warnings);
    let changed = assert_layers_match(
        &model,
        &f.dir.join("a1111-sd2.safetensors"),
        &f.sd2,
        WEIGHT_TOLERANCE,
    );
    // The reference's 219 modules: 201 UNet linears and convolutions and per OpenCLIP block
    // q, k, v (one in_proj tensor), out_proj, c_fc and c_proj; LoRA leaves biases.
    assert_eq!(changed, 201 + 3 * 4);
    let in_proj = "cond_stage_model.model.transformer.resblocks.0.attn.in_proj";
    let live = &model.sd.layers[in_proj].weight;
    let stored = Checkpoint::open(&f.sd2)
        .unwrap()
        .raw(&format!("{}_weight", in_proj))
        .unwrap();
    let rows = live.size()[0] / 3;
    for third in 0..3 {
        assert!(
            !live
                .narrow(0, third * rows, rows)
                .equal(&stored.narrow(0, third * rows, rows)),
            "third {third} of in_proj is patched"
        );
    }

    // Another set, then none: the original weights bit for bit.
    activate_extra_networks(&model, "<lora:sd2_kohya:-1>");
    activate_extra_networks(&model, "a cat");
    assert_original(&model, &f.sd2);
    assert!(!model.lora.lock().unwrap().is_patched());
}

#[test]
fn sdxl_ldm_and_diffusers_named_unets_and_both_text_encoders_follow_a1111() {
    let f = fixture();
    let model = load(&f.sdxl, vec![f.lora_dir.clone()]);
    let job = activate_extra_networks(&model, "a cat <lora:sdxl_kohya:0.7:1.3>");
    assert!(job.warnings.is_empty(), "{:?}", job.warnings);
    let changed = assert_layers_match(
        &model,
        &f.dir.join("a1111-sdxl.safetensors"),
        &f.sdxl,
        WEIGHT_TOLERANCE,
    );
    // 264 UNet layers, 3 CLIP-L blocks of 6 and 3 bigG blocks of 4 tensors (q/k/v stacked).
    assert_eq!(changed, 264 + 3 * 6 + 3 * 4);

    // Diffusers names: A1111's formulas put up-block 0's upsampler at output_blocks.2.1.conv,
    // which SDXL does not have (its is 2.2), and have no rule for add_embedding: those layers
    // are reported and left, the rest patched.
    let job = activate_extra_networks(&model, "a cat <lora:sdxl_diffusers:1>");
    assert_eq!(job.warnings.len(), 1, "{:?}", job.warnings);
    assert!(
        job.warnings[0].contains("9 keys match no layer")
            && job.warnings[0].contains("add_embedding"),
        "{}",
        job.warnings[0]
    );
    let changed = assert_layers_match(
        &model,
        &f.dir.join("a1111-sdxl-diffusers.safetensors"),
        &f.sdxl,
        WEIGHT_TOLERANCE,
    );
    assert_eq!(changed, 264 - 3);
    let upsampler = "model.diffusion_model.output_blocks.2.2.conv";
    let stored = Checkpoint::open(&f.sdxl)
        .unwrap()
        .raw(&format!("{upsampler}.weight"))
        .unwrap();
    assert!(model.sd.layers[upsampler].weight.equal(&stored));

    // LoRA with a negative te multiplier stacked with LoHa (LyCORIS) on every layer.
    let job = activate_extra_networks(
        &model,
        "<lora:sdxl_kohya:te=-0.5:unet=0.9> <lyco:sdxl_loha:0.8:0.6>",
    );
    // lyco comes later, so it is the set (A1111's alias order): only LoHa applies.
    assert!(job.warnings.is_empty(), "{:?}", job.warnings);
    let job = activate_extra_networks(
        &model,
        "<lora:sdxl_kohya:te=-0.5:unet=0.9> <lora:sdxl_loha:0.8:0.6>",
    );
    assert!(job.warnings.is_empty(), "{:?}", job.warnings);
    assert_layers_match(
        &model,
        &f.dir.join("a1111-sdxl-stack.safetensors"),
        &f.sdxl,
        WEIGHT_TOLERANCE,
    );

    activate_extra_networks(&model, "");
    assert_original(&model, &f.sdxl);
}

#[test]
fn refiner_takes_the_unet_keys_and_reports_the_text_keys_a1111_cannot_place() {
    let f = fixture();
    let model = load(&f.refiner, vec![f.lora_dir.clone()]);
    let job = activate_extra_networks(&model, "<lora:refiner_kohya:1:0.5>");
    // `lora_te2_` names the base model's second embedder (`1_model_…`); the refiner's only
    // embedder is `0_model_…`, so A1111 matches none of them.
    assert_eq!(job.warnings.len(), 1, "{:?}", job.warnings);
    assert!(
        job.warnings[0].contains("lora_te2_text_model_encoder_layers_0"),
        "{}",
        job.warnings[0]
    );
    let changed = assert_layers_match(
        &model,
        &f.dir.join("a1111-refiner.safetensors"),
        &f.refiner,
        WEIGHT_TOLERANCE,
    );
    assert_eq!(changed, 224, "every UNet layer, no text layer");
    activate_extra_networks(&model, "");
    assert_original(&model, &f.refiner);
}

/// Runs a two-step img2img job on `model` and returns its warnings.
fn job_warnings(model: &GenerationModel, prompt: &str) -> Vec<String> {
    let registry = common::builtin_registry();
    let params = GenerationRequest {
        prompt: prompt.into(),
        width: 64,
        height: 64,
        seed: 9,
        sampler: SamplerSettings {
            sampler: "Euler".into(),
            steps: 2,
            denoising_strength: 0.5,
            ..SamplerSettings::default()
        },
        ..GenerationRequest::default()
    };
    let init = image::RgbImage::from_pixel(64, 64, image::Rgb([120, 80, 40]));
    let mut events = Vec::new();
    let outcome = run_img2img(
        model,
        &registry,
        &params,
        &init,
        None,
        &JobStop::new(),
        &mut |e| {
            if let JobEvent::Warning(w) = e {
                events.push(w.to_string());
            }
            Flow::Continue
        },
    )
    .expect("the job runs");
    assert_eq!(outcome.images.len(), 1);
    assert_eq!(events, outcome.warnings, "the job reports what it streamed");
    outcome.warnings
}

#[test]
fn a_network_for_another_family_is_warned_about_and_the_job_runs() {
    let f = fixture();
    tch::set_num_threads(1);
    let sd1 = load(&f.sd1, vec![f.lora_dir.clone()]);
    let warnings = job_warnings(&sd1, "a cat <lora:sdxl_kohya:1>");
    println!("SDXL LoRA on SD1: {warnings:?}");
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("sdxl_kohya") && w.contains("SDXL") && w.contains("SD1")),
        "{warnings:?}"
    );
    let sdxl = load(&f.sdxl, vec![f.lora_dir.clone()]);
    let warnings = job_warnings(&sdxl, "a cat <lora:kohya:1>");
    println!("SD1 LoRA on SDXL: {warnings:?}");
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("kohya") && w.contains("SD1") && w.contains("SDXL")),
        "{warnings:?}"
    );
    // A matching family has no such warning.
    let warnings = job_warnings(&sdxl, "a cat <lora:sdxl_kohya:1>");
    assert!(warnings.is_empty(), "{warnings:?}");
}
