//! The CFG denoiser over the tiny UNet and samplers driving it through the plugin ABI, against
//! k-diffusion's CompVisDenoiser on diffusers' UNet with A1111's CFG.

use crate::common;

use crate::common::{assert_close, read_tensors, run_reference};
use sdhost::prompt::conditioning::{CondPart, ScheduledCond};
use sdhost::sampling::denoiser::{CfgDenoiser, Guidance, Prediction};
use sdhost::sampling::noise_levels::NoiseLevels;
use sdhost::sampling::plugins::{SampleRequest, SamplerRegistry};
use sdhost::sampling::session::{Denoise, Noise, StepFailure};
use sdhost_plugin_api::Flow;
use tch::Tensor;

const TOLERANCE: f64 = 1e-4;

fn fixed(cond: &Tensor) -> Vec<ScheduledCond> {
    vec![ScheduledCond {
        end_at_step: usize::MAX,
        cond: cond.shallow_clone().into(),
    }]
}

fn part(cond: &Tensor, weight: f64) -> CondPart {
    CondPart {
        schedule: fixed(cond),
        weight,
    }
}

/// Deterministic samplers draw no noise (Euler draws one unused tensor per step).
struct ZeroNoise(Vec<i64>);

impl Noise for ZeroNoise {
    fn noise(&mut self) -> Result<Tensor, StepFailure> {
        Ok(Tensor::zeros(self.0.as_slice(), tch::kind::FLOAT_CPU))
    }
    fn brownian_noise(&mut self, _: f64, _: f64) -> Result<Tensor, StepFailure> {
        Err(StepFailure::failed("not used"))
    }
}

/// The tiny model, the reference's tensors for it, and the built-in samplers.
struct Fixture {
    _dir: tempfile::TempDir,
    r: std::collections::HashMap<String, Tensor>,
    sd: sdhost::models::StableDiffusion,
    levels: NoiseLevels,
    registry: SamplerRegistry,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let model = common::tiny_model(dir.path(), 5);
    let out = dir.path().join("ref.safetensors");
    run_reference(
        "denoiser_reference.py",
        &[model.as_os_str(), out.as_os_str()],
    );
    let ckpt = sdhost::checkpoint::Checkpoint::open(&model).unwrap();
    Fixture {
        r: read_tensors(&out),
        sd: common::load_fp32(&model),
        levels: NoiseLevels::from_checkpoint(&ckpt).unwrap(),
        registry: crate::common::builtin_registry(),
        _dir: dir,
    }
}

#[test]
fn cfg_denoiser_and_samplers_match_k_diffusion_on_tiny_unet() {
    tch::set_num_threads(1);
    let _guard = tch::no_grad_guard();
    let Fixture {
        _dir,
        r,
        sd,
        levels,
        registry,
    } = fixture();

    let guidance = |case: &str| -> Guidance {
        let conds = match case {
            "single" => vec![vec![part(&r["cond_a"], 1.0)], vec![part(&r["cond_b"], 1.0)]],
            "and" => vec![
                vec![part(&r["cond_a"], 0.7), part(&r["cond_c"], 0.4)],
                vec![part(&r["cond_b"], 1.0)],
            ],
            "long" => vec![
                vec![part(&r["cond_long"], 1.0)],
                vec![part(&r["cond_b"], 1.0)],
            ],
            _ => unreachable!(),
        };
        Guidance {
            conds,
            unconds: vec![fixed(&r["uncond0"]), fixed(&r["uncond1"])],
            cfg_scale: 7.0,
        }
    };
    let sigmas = Vec::<f64>::try_from(&r["sigmas"]).unwrap();
    // The fp16 timestep rounding must be visible, or the test could not tell the modes apart.
    let rounding_effect =
        common::relative_error(&r["fp16t.single.denoised"], &r["f32t.single.denoised"]);
    println!("effect of fp16 timestep rounding: {rounding_effect:.3e}");
    assert!(rounding_effect > 10.0 * TOLERANCE);
    for (tag, round) in [("fp16t", true), ("f32t", false)] {
        for case in ["single", "and", "long"] {
            let mut denoiser =
                CfgDenoiser::new(&sd.unet, &levels, Prediction::Epsilon, guidance(case))
                    .round_timestep_fp16(round);
            let x = &r["x0"] + &r["noise"] * 3.3;
            let d = denoiser.denoise(&x, 3.3, None).unwrap();
            assert_close(
                &format!("{tag} {case} D(x, 3.3)"),
                &d,
                &r[&format!("{tag}.{case}.denoised")],
                TOLERANCE,
            );
            // Splitting the UNet batch changes nothing beyond batch-size-dependent rounding.
            let mut split =
                CfgDenoiser::new(&sd.unet, &levels, Prediction::Epsilon, guidance(case))
                    .round_timestep_fp16(round)
                    .max_rows(1);
            let d1 = split.denoise(&x, 3.3, None).unwrap();
            assert_close(&format!("{tag} {case} split"), &d1, &d, 1e-5);
        }
        for (sampler, key) in [
            ("Euler", "euler"),
            ("DPM++ 2M", "dpmpp_2m"),
            ("Heun", "heun"),
        ] {
            let found = registry.find(sampler).expect("built-in sampler");
            let mut denoiser =
                CfgDenoiser::new(&sd.unet, &levels, Prediction::Epsilon, guidance("single"))
                    .round_timestep_fp16(round);
            let mut noise = ZeroNoise(vec![2, 4, 8, 8]);
            let mut on_step = |_: sdhost::sampling::session::StepReport<'_>| Flow::Continue;
            let x = &r["x0"] + &r["noise"] * sigmas[0];
            let result = registry
                .sample(
                    found,
                    SampleRequest {
                        x,
                        sigmas: sigmas.clone(),
                        timesteps: vec![],
                        alphas_cumprod: vec![],
                        options: vec![],
                        cancel: None,
                    },
                    &mut denoiser,
                    &mut noise,
                    &mut on_step,
                )
                .unwrap();
            assert_close(
                &format!("{tag} {sampler}"),
                &result,
                &r[&format!("{tag}.single.{key}")],
                TOLERANCE,
            );
        }
    }
}

/// The whole sampling path as an img2img job runs it: plan (Karras, strength 0.6), per-image
/// generators (start noise, then every sampler draw), CFG denoiser, plugin sampler.
#[test]
fn img2img_sampling_with_a1111_noise_matches_reference() {
    use sdhost::rng::ImageRng;
    use sdhost::sampling::noise::JobNoise;
    use sdhost::sampling::plan::{SamplerSettings, SamplingPlan};
    use sdhost::sampling::schedule::Schedule;

    tch::set_num_threads(1);
    let _guard = tch::no_grad_guard();
    let Fixture {
        _dir,
        r,
        sd,
        levels,
        registry,
    } = fixture();
    for (sampler, key) in [("Euler a", "euler_a"), ("Euler", "euler")] {
        let settings = SamplerSettings {
            sampler: sampler.into(),
            schedule: Schedule::Karras,
            steps: 10,
            denoising_strength: 0.6,
            ..SamplerSettings::default()
        };
        let plan = SamplingPlan::new(&registry, &settings, &levels).unwrap();
        let mut rng = ImageRng::new(&[1234, 4294967293], [4, 8, 8], tch::Device::Cpu).unwrap();
        let x = plan.start_latent(&r["x0"], &rng.first().unwrap(), 0.0);
        let mut noise = JobNoise::new(rng, tch::Device::Cpu, tch::Kind::Float);
        let guidance = Guidance {
            conds: vec![vec![part(&r["cond_a"], 1.0)], vec![part(&r["cond_b"], 1.0)]],
            unconds: vec![fixed(&r["uncond0"]), fixed(&r["uncond1"])],
            cfg_scale: 7.0,
        };
        let mut denoiser = CfgDenoiser::new(&sd.unet, &levels, Prediction::Epsilon, guidance);
        let mut steps = 0;
        let result = registry
            .sample(
                plan.sampler,
                plan.request(x),
                &mut denoiser,
                &mut noise,
                &mut |_| {
                    steps += 1;
                    Flow::Continue
                },
            )
            .unwrap();
        assert_eq!(steps, plan.steps_run);
        assert_close(
            &format!("img2img {sampler}"),
            &result,
            &r[&format!("a1111.{key}")],
            TOLERANCE,
        );
    }
}
