//! Noise levels, every A1111 sigma schedule, the LCM schedule, DDIM timesteps and the img2img
//! step arithmetic vs k-diffusion and A1111's definitions run in Python.

use crate::common;

use crate::common::{read_tensors, relative_error, run_reference};
use sdhost::checkpoint::Checkpoint;
use sdhost::sampling::noise_levels::{LcmNoiseLevels, NoiseLevels, NoiseModel};
use sdhost::sampling::schedule::{
    beta_ppf, ddim_timesteps, img2img_steps, lcm_sigmas, lcm_timestep_for_sigma, Schedule,
    ScheduleOptions,
};
use sdhost::tiny_model::save_safetensors;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use tch::{Kind, Tensor};

const TOLERANCE: f64 = 1e-6;
const STEPS: [usize; 7] = [1, 2, 3, 10, 20, 37, 150];

/// One schedule computed on the Rust side, named as the reference stores it.
struct Case {
    name: String,
    model: &'static str,
    lcm: bool,
    schedule: Schedule,
    steps: usize,
    options: ScheduleOptions,
}

impl Case {
    fn json(&self, levels: &NoiseLevels) -> Value {
        let o = &self.options;
        // The model's own σ is sent by name: libtorch's CPU sqrt is not correctly rounded, so
        // the reference's table may differ from ours in the last bit.
        let sigma = |value: Option<f64>, model: f64| match value {
            Some(v) if v == model => json!("model"),
            v => json!(v.unwrap_or(0.0)),
        };
        json!({
            "name": self.name, "model": self.model, "lcm": self.lcm,
            "schedule": self.schedule.name(), "steps": self.steps,
            "options": {
                "sigma_min": sigma(o.sigma_min, levels.sigma_min()),
                "sigma_max": sigma(o.sigma_max, levels.sigma_max()),
                "rho": o.rho.unwrap_or(0.0), "beta_alpha": o.beta_alpha, "beta_beta": o.beta_beta,
                "discard": o.discard_penultimate, "sdxl": o.sdxl, "old_karras": o.old_karras_sigmas,
            },
        })
    }
}

/// Largest relative error per group of comparisons, printed at the end.
#[derive(Default)]
struct Errors(BTreeMap<String, f64>);

impl Errors {
    fn check(&mut self, group: &str, name: &str, actual: &[f64], expected: &Tensor) {
        let actual = Tensor::from_slice(actual);
        let err = relative_error(&actual, expected);
        assert!(
            err <= TOLERANCE,
            "{name}: relative error {err:.3e}\n ours {}\n ref  {}",
            actual,
            expected
        );
        let worst = self.0.entry(group.to_string()).or_insert(0.0);
        *worst = worst.max(err);
    }
}

fn vec_i64(t: &Tensor) -> Vec<i64> {
    Vec::<i64>::try_from(&t.to_kind(Kind::Int64).flatten(0, -1)).unwrap()
}

/// DDPM's original linear β (1e-4…0.02): a table unlike SD's, σmax ≈ 157.
fn ddpm_linear_alphas() -> Vec<f32> {
    let mut product = 1.0f64;
    (0..1000)
        .map(|i| {
            product *= 1.0 - (1e-4 + (0.02 - 1e-4) * i as f64 / 999.0);
            product as f32
        })
        .collect()
}

fn write_alphas(path: &Path, alphas: &[f32], kind: Kind) {
    let tensor = Tensor::from_slice(alphas).to_kind(kind);
    save_safetensors(&[("alphas_cumprod".to_string(), tensor)], path).unwrap();
}

fn load_levels(path: &Path) -> NoiseLevels {
    NoiseLevels::from_checkpoint(&Checkpoint::open(path).unwrap()).unwrap()
}

fn schedule_cases(models: &[&'static str]) -> Vec<Case> {
    let mut cases = Vec::new();
    let mut push = |model, lcm, schedule: Schedule, steps, options: ScheduleOptions, tag: &str| {
        let name = format!(
            "{model}{}/{}/{steps}/{}{tag}",
            if lcm { "+lcm" } else { "" },
            schedule.name(),
            if options.discard_penultimate {
                "discard"
            } else {
                "plain"
            },
        );
        cases.push(Case {
            name,
            model,
            lcm,
            schedule,
            steps,
            options,
        });
    };
    for &model in models {
        for lcm in [false, true] {
            for schedule in Schedule::ALL {
                for steps in STEPS {
                    for discard in [false, true] {
                        let options = ScheduleOptions {
                            discard_penultimate: discard,
                            ..ScheduleOptions::default()
                        };
                        push(model, lcm, schedule, steps, options, "");
                    }
                }
            }
        }
    }
    // Option overrides on SD's computed levels.
    let sd = NoiseLevels::sd_scaled_linear();
    let overrides: Vec<(&str, ScheduleOptions)> = vec![
        (
            "range",
            ScheduleOptions {
                sigma_min: Some(0.05),
                sigma_max: Some(10.0),
                ..Default::default()
            },
        ),
        (
            "old_karras",
            ScheduleOptions {
                old_karras_sigmas: true,
                ..Default::default()
            },
        ),
        (
            // Overrides equal to the model's own are ignored, so the old 0.1…10 range stays.
            "old_karras_same",
            ScheduleOptions {
                old_karras_sigmas: true,
                sigma_min: Some(sd.sigma_min()),
                sigma_max: Some(sd.sigma_max()),
                ..Default::default()
            },
        ),
        (
            "rho5",
            ScheduleOptions {
                rho: Some(5.0),
                ..Default::default()
            },
        ),
        (
            "rho2",
            ScheduleOptions {
                rho: Some(2.0),
                ..Default::default()
            },
        ),
        (
            "rho3",
            ScheduleOptions {
                rho: Some(3.0),
                ..Default::default()
            },
        ),
        (
            "rho0.5",
            ScheduleOptions {
                rho: Some(0.5),
                ..Default::default()
            },
        ),
        (
            "rho2.5_discard",
            ScheduleOptions {
                rho: Some(2.5),
                discard_penultimate: true,
                ..Default::default()
            },
        ),
        (
            "beta",
            ScheduleOptions {
                beta_alpha: 0.5,
                beta_beta: 0.7,
                ..Default::default()
            },
        ),
        (
            "beta23",
            ScheduleOptions {
                beta_alpha: 2.0,
                beta_beta: 3.0,
                sigma_min: Some(0.1),
                ..Default::default()
            },
        ),
        (
            "sdxl",
            ScheduleOptions {
                sdxl: true,
                ..Default::default()
            },
        ),
        (
            "sdxl_discard",
            ScheduleOptions {
                sdxl: true,
                discard_penultimate: true,
                ..Default::default()
            },
        ),
    ];
    for (tag, options) in overrides {
        for schedule in Schedule::ALL {
            for steps in [10, 11, 37] {
                push(
                    "computed",
                    false,
                    schedule,
                    steps,
                    options.clone(),
                    &format!("/{tag}"),
                );
            }
        }
    }
    cases
}

#[test]
fn schedules_match_k_diffusion_and_a1111() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = common::tiny_model(dir.path(), 31);
    let fp16 = dir.path().join("alphas16.safetensors");
    let ddpm = dir.path().join("ddpm.safetensors");
    write_alphas(
        &fp16,
        NoiseLevels::sd_scaled_linear().alphas_cumprod(),
        Kind::Half,
    );
    write_alphas(&ddpm, &ddpm_linear_alphas(), Kind::Float);

    let mut models: HashMap<&'static str, NoiseLevels> = HashMap::new();
    models.insert("computed", NoiseLevels::sd_scaled_linear());
    models.insert("checkpoint", load_levels(&tiny));
    models.insert("fp16", load_levels(&fp16));
    models.insert("ddpm", load_levels(&ddpm));
    let names = ["computed", "checkpoint", "fp16", "ddpm"];

    let sd = &models["computed"];
    let mut sigmas: Vec<f64> = (0..97)
        .map(|i| (0.005f64.ln() + (200f64.ln() - 0.005f64.ln()) * i as f64 / 96.0).exp())
        .collect();
    for t in [0usize, 1, 19, 20, 500, 998, 999] {
        let s = sd.sigmas()[t];
        sigmas.extend([s, (s * sd.sigmas()[(t + 1).min(999)]).sqrt()]);
    }
    let ts: Vec<f64> = (0..=200)
        .map(|i| i as f64 * 999.0 / 200.0)
        .chain([0.25, 0.5, 1.5, 498.3, 998.99])
        .collect();
    let lcm_ts: Vec<f64> = (0..=120)
        .map(|i| i as f64 * 8.3)
        .chain([19.0, 39.0, 999.0])
        .collect();
    let ddim_cases: Vec<(usize, bool)> = [1, 2, 3, 7, 10, 20, 30, 37, 150, 999]
        .into_iter()
        .flat_map(|s| [(s, false), (s, true)])
        .chain([(1000, false)])
        .collect();
    let mut img2img = Vec::new();
    for steps in [1usize, 2, 3, 10, 20, 37, 150, 1000] {
        for ds in [
            0.0, 0.01, 0.05, 0.1, 0.3, 0.35, 0.5, 0.7, 0.75, 0.9, 0.999, 1.0,
        ] {
            for fix in [false, true] {
                img2img.push((steps, ds, fix));
            }
        }
    }
    let beta_grid: Vec<(f64, f64, f64)> = [(0.6, 0.6), (0.5, 0.7), (2.0, 3.0), (0.3, 4.0)]
        .into_iter()
        .flat_map(|(a, b)| {
            [
                1e-9,
                1e-4,
                0.01,
                0.1,
                0.25,
                0.5,
                0.75,
                0.9,
                0.99,
                0.9999,
                1.0 - 1e-9,
            ]
            .map(|p| (p, a, b))
        })
        .collect();

    let cases = schedule_cases(&names);
    let spec = json!({
        "models": {
            "computed": {"file": null},
            "checkpoint": {"file": tiny, "key": "alphas_cumprod"},
            "fp16": {"file": fp16, "key": "alphas_cumprod"},
            "ddpm": {"file": ddpm, "key": "alphas_cumprod"},
        },
        "cases": cases.iter().map(|c| c.json(&models[c.model])).collect::<Vec<_>>(),
        "sigmas": sigmas, "ts": ts, "lcm_ts": lcm_ts,
        "ddim": ddim_cases, "img2img": img2img, "beta_ppf": beta_grid,
    });
    let spec_path = dir.path().join("spec.json");
    std::fs::write(&spec_path, serde_json::to_vec(&spec).unwrap()).unwrap();
    let out = dir.path().join("reference.safetensors");
    run_reference(
        "schedules_reference.py",
        &[spec_path.as_os_str(), out.as_os_str()],
    );
    let reference = read_tensors(&out);
    let mut errors = Errors::default();

    for name in names {
        let levels = &models[name];
        let lcm = LcmNoiseLevels::new(levels).unwrap();
        let alphas: Vec<f64> = levels.alphas_cumprod().iter().map(|&a| a.into()).collect();
        errors.check(
            "alphas_cumprod",
            name,
            &alphas,
            &reference[&format!("alphas/{name}")],
        );
        errors.check(
            "sigmas",
            name,
            levels.sigmas(),
            &reference[&format!("sigmas/{name}")],
        );
        let ours: Vec<f64> = sigmas.iter().map(|&s| levels.sigma_to_t(s)).collect();
        errors.check(
            "sigma_to_t",
            name,
            &ours,
            &reference[&format!("sigma_to_t/{name}")],
        );
        let ours: Vec<f64> = ts.iter().map(|&t| levels.t_to_sigma(t)).collect();
        errors.check(
            "t_to_sigma",
            name,
            &ours,
            &reference[&format!("t_to_sigma/{name}")],
        );
        let ours: Vec<i64> = sigmas
            .iter()
            .map(|&s| lcm_timestep_for_sigma(s, levels).unwrap())
            .collect();
        assert_eq!(
            ours,
            vec_i64(&reference[&format!("lcm_sigma_to_t/{name}")]),
            "{name}: LCM timesteps"
        );
        let ours: Vec<f64> = lcm_ts.iter().map(|&t| lcm.t_to_sigma(t)).collect();
        errors.check(
            "lcm_t_to_sigma",
            name,
            &ours,
            &reference[&format!("lcm_t_to_sigma/{name}")],
        );
    }
    // The buffer every LDM checkpoint carries is what ldm computes.
    assert_eq!(
        models["checkpoint"].alphas_cumprod(),
        models["computed"].alphas_cumprod()
    );

    for case in &cases {
        let levels = &models[case.model];
        let ours = if case.lcm {
            let lcm = LcmNoiseLevels::new(levels).unwrap();
            case.schedule.sigmas(case.steps, &lcm, &case.options)
        } else {
            case.schedule.sigmas(case.steps, levels, &case.options)
        }
        .unwrap();
        let group = format!(
            "{}{}",
            case.schedule.label(),
            if case.lcm { " (LCM levels)" } else { "" }
        );
        errors.check(
            &group,
            &case.name,
            &ours,
            &reference[&format!("case/{}", case.name)],
        );
    }
    // The LCM sampler's own schedule is Uniform on LCM's levels.
    for steps in STEPS {
        let ours = lcm_sigmas(steps, sd).unwrap();
        errors.check(
            "LCM schedule",
            &format!("lcm/{steps}"),
            &ours,
            &reference[&format!("case/computed+lcm/uniform/{steps}/plain")],
        );
    }

    for (steps, discard) in &ddim_cases {
        let name = format!("ddim/{steps}/{discard}");
        let ours = ddim_timesteps(*steps, *discard).unwrap();
        assert_eq!(ours, vec_i64(&reference[&name]), "{name}");
    }
    let expected = vec_i64(&reference["img2img"]);
    for (i, (steps, ds, fix)) in img2img.iter().enumerate() {
        let (full, t_enc) = img2img_steps(*steps, *ds, *fix);
        assert_eq!(
            [full as i64, t_enc as i64],
            expected[2 * i..2 * i + 2],
            "img2img steps={steps} ds={ds} fix={fix}"
        );
    }
    let ours: Vec<f64> = beta_grid
        .iter()
        .map(|&(p, a, b)| beta_ppf(p, a, b))
        .collect();
    let expected = &reference["beta_ppf"];
    let abs = (Tensor::from_slice(&ours) - expected)
        .abs()
        .max()
        .double_value(&[]);
    assert!(abs <= 1e-12, "Beta PPF differs from scipy by {abs:.3e}");
    errors.0.insert("Beta PPF (absolute)".into(), abs);

    for (group, err) in &errors.0 {
        println!("{group}: max relative error {err:.3e}");
    }
    println!(
        "{} schedules, {} DDIM timestep lists, {} img2img step cases compared",
        cases.len(),
        ddim_cases.len(),
        img2img.len()
    );
}

#[test]
fn checkpoint_without_the_buffer_gets_sd_levels() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no_schedule.safetensors");
    save_safetensors(&[("x".to_string(), Tensor::from_slice(&[1.0f32]))], &path).unwrap();
    assert_eq!(load_levels(&path), NoiseLevels::sd_scaled_linear());
}
