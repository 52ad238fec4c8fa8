//! Sampler and schedule resolution and img2img noise levels, as A1111 decides them
//! (`modules/sd_samplers.py: get_sampler_and_scheduler`, `modules/sd_samplers_common.py:
//! setup_img2img_steps`, `modules/sd_samplers_kdiffusion.py: KDiffusionSampler.sample_img2img`,
//! `modules/sd_samplers_timesteps.py: CompVisSampler.sample_img2img`, `modules/sd_schedulers.py`),
//! through the built-in plugin's sampler table.

use sdhost::sampling::noise_levels::{NoiseLevels, NoiseModel};
use sdhost::sampling::plan::{PlanError, SamplerSettings, SamplingPlan};
use sdhost::sampling::plugins::SamplerRegistry;
use sdhost::sampling::schedule::Schedule;

fn registry() -> SamplerRegistry {
    crate::common::builtin_registry()
}

fn settings(sampler: &str, steps: usize, strength: f64) -> SamplerSettings {
    SamplerSettings {
        sampler: sampler.into(),
        steps,
        denoising_strength: strength,
        ..SamplerSettings::default()
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-4 * b.abs().max(1.0)
}

#[test]
fn img2img_enters_the_schedule_at_the_strength() {
    let registry = registry();
    let levels = NoiseLevels::sd_scaled_linear();
    // A1111 `KDiffusionSampler.sample_img2img`: N = 20, ds = 0.75 → t_enc = 15, so 16 steps
    // from index 4 of the schedule (Karras σ ≈ 5.789).
    let plan = SamplingPlan::new(&registry, &settings("Euler Karras", 20, 0.75), &levels).unwrap();
    assert_eq!(plan.schedule, Some(Schedule::Karras));
    assert_eq!(plan.schedule_label, "Karras");
    assert_eq!(
        (plan.t_enc, plan.steps_run, plan.sigmas.len()),
        (15, 16, 17)
    );
    assert!(close(plan.sigmas[0], 5.7894), "{}", plan.sigmas[0]);
    assert_eq!(*plan.sigmas.last().unwrap(), 0.0);
    assert_eq!(plan.full_sigmas.len(), 21);

    // ds = 0: one step from the smallest non-zero σ; ds = 1: the whole schedule from σ_max.
    let zero = SamplingPlan::new(&registry, &settings("Euler", 20, 0.0), &levels).unwrap();
    assert_eq!(zero.sigmas.len(), 2);
    assert!(close(zero.sigmas[0], 0.0292), "{}", zero.sigmas[0]);
    let one = SamplingPlan::new(&registry, &settings("Euler", 20, 1.0), &levels).unwrap();
    assert_eq!(one.sigmas.len(), 21);
    assert!(close(one.sigmas[0], 14.6146));
    // Euler has no default schedule: Automatic is the model's own (Uniform), written as such.
    assert_eq!(one.schedule, Some(Schedule::Uniform));
    assert_eq!(one.schedule_label, "Automatic");
    assert!(close(one.sigmas[1], 10.7468), "{}", one.sigmas[1]);

    // img2img_fix_steps: exactly N steps of a longer schedule.
    let fixed = SamplerSettings {
        fix_steps: true,
        ..settings("Euler", 20, 0.5)
    };
    let plan = SamplingPlan::new(&registry, &fixed, &levels).unwrap();
    assert_eq!((plan.steps_run, plan.full_sigmas.len()), (20, 41));
}

#[test]
fn bad_settings_are_refused_with_reasons() {
    let registry = registry();
    let levels = NoiseLevels::sd_scaled_linear();
    let unknown = SamplingPlan::new(&registry, &settings("Euler b", 20, 0.5), &levels);
    let message = unknown.err().unwrap().to_string();
    assert!(message.contains("unknown sampler \"Euler b\""), "{message}");
    let strength = SamplingPlan::new(&registry, &settings("Euler", 20, 1.5), &levels);
    assert!(matches!(strength, Err(PlanError::Invalid(_))));
    // Legacy suffix names are case-insensitive; non-ASCII names are refused, never a panic.
    let legacy = SamplingPlan::new(&registry, &settings("euler a KARRAS", 20, 0.5), &levels);
    assert_eq!(legacy.unwrap().schedule, Some(Schedule::Karras));
    for odd in ["İİİ Karras", "Euler aİ", "Ω", " "] {
        let refused = SamplingPlan::new(&registry, &settings(odd, 20, 0.5), &levels);
        assert!(matches!(refused, Err(PlanError::Sampler(_))), "{odd}");
    }
    let steps = SamplingPlan::new(&registry, &settings("Euler", 0, 0.5), &levels);
    assert!(matches!(steps, Err(PlanError::Invalid(_))));
}

#[test]
fn sampler_defaults_and_timestep_samplers() {
    let registry = registry();
    let levels = NoiseLevels::sd_scaled_linear();
    // The UI default: DPM++ 2M with Automatic → Karras.
    let plan = SamplingPlan::new(&registry, &SamplerSettings::default(), &levels).unwrap();
    assert_eq!(plan.sampler.info.name.as_str(), "DPM++ 2M");
    assert_eq!(
        (plan.schedule, plan.schedule_label.as_str()),
        (Some(Schedule::Karras), "Karras")
    );
    // DPM2 discards the penultimate σ: still steps + 1 values.
    let dpm2 = SamplingPlan::new(&registry, &settings("DPM2", 20, 1.0), &levels).unwrap();
    assert!(dpm2.discard_penultimate);
    assert_eq!(dpm2.full_sigmas.len(), 21);
    // DDIM at 20 steps, strength 0.75: noised to t = 751, then 751 → 1 in 14 calls.
    let ddim = SamplingPlan::new(&registry, &settings("DDIM", 20, 0.75), &levels).unwrap();
    assert_eq!(ddim.t_enc, 15);
    assert_eq!(ddim.timesteps.first(), Some(&751.0));
    assert_eq!(ddim.timesteps.last(), Some(&1.0));
    assert_eq!(ddim.timesteps.len(), 16);
    assert_eq!(ddim.steps_run, 14);
    assert!(close(ddim.sigmas[0], levels.sigmas()[751]));
    // LCM's own schedule: 4 steps from σ_max over LCM's 50 levels.
    let lcm = SamplingPlan::new(&registry, &settings("LCM", 4, 1.0), &levels).unwrap();
    assert_eq!(lcm.full_sigmas.len(), 5);
    assert!(close(lcm.full_sigmas[0], 14.6146));
}
