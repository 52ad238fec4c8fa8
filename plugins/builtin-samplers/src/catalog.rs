//! The sampler table: how A1111 presents each sampler, and the function that runs it.

use sdhost_plugin_api::abi_stable::std_types::{RNone, RSome, RString, RVec};
use sdhost_plugin_api::{
    Context, Latent, OptionValue, SampleError, SamplerInfo, SamplerOption, ScheduleInput,
};

use crate::{dpm_solver, dpmpp, dpmpp_sde, euler, heun, lcm, lms, restart, timesteps, unipc};

/// A sampler function: walks the context's σ schedule from `x`.
type Run = for<'c, 'a> fn(&'c Context<'a>, Latent<'c, 'a>) -> Result<Latent<'c, 'a>, SampleError>;

/// Flags of a sampler, as A1111's sampler table sets them.
#[derive(Clone, Copy)]
struct Flags {
    discard_penultimate_sigma: bool,
    second_order: bool,
    uses_ensd: bool,
    brownian: bool,
}

/// One row of the table.
struct Entry {
    name: &'static str,
    aliases: &'static [&'static str],
    default_schedule: Option<&'static str>,
    input: ScheduleInput,
    flags: Flags,
    options: fn() -> Vec<SamplerOption>,
    run: Run,
}

fn number(name: &str, default: f64, help: &str) -> SamplerOption {
    SamplerOption {
        name: name.into(),
        default: OptionValue::Number(default),
        help: help.into(),
    }
}

/// Karras churn options of Euler, Heun and DPM2 (A1111 options `s_churn` ...).
fn churn_options() -> Vec<SamplerOption> {
    vec![
        number(
            "s_churn",
            0.0,
            "stochasticity: noise added back per step (0 = none)",
        ),
        number("s_tmin", 0.0, "lowest σ at which churn applies"),
        number("s_tmax", f64::INFINITY, "highest σ at which churn applies"),
        number("s_noise", 1.0, "scale of the added noise"),
    ]
}

/// Samplers without options.
fn no_options() -> Vec<SamplerOption> {
    Vec::new()
}

/// Restart's option (A1111 `s_noise`).
fn noise_options() -> Vec<SamplerOption> {
    vec![number("s_noise", 1.0, "scale of the added noise")]
}

/// UniPC's options (A1111 `uni_pc_variant`, `uni_pc_skip_type`, `uni_pc_order`,
/// `uni_pc_lower_order_final`).
fn unipc_options() -> Vec<SamplerOption> {
    let text = |name: &str, default: &str, help: &str| SamplerOption {
        name: name.into(),
        default: OptionValue::Text(default.into()),
        help: help.into(),
    };
    vec![
        text("variant", "bh1", "B(h) variant: bh1 or bh2"),
        text(
            "skip_type",
            "time_uniform",
            "time spacing: time_uniform or time_quadratic",
        ),
        number("order", 3.0, "solver order (at most the number of steps)"),
        number(
            "lower_order_final",
            1.0,
            "lower the order on the final steps (1 = on)",
        ),
    ]
}

/// DDIM's option (A1111 `eta_ddim`).
fn ddim_options() -> Vec<SamplerOption> {
    vec![number(
        "eta",
        0.0,
        "share of fresh noise per step (0 = deterministic)",
    )]
}

/// Options of the ancestral and SDE samplers (A1111 `eta_ancestral`, `s_noise`).
fn ancestral_options() -> Vec<SamplerOption> {
    vec![
        number(
            "eta",
            1.0,
            "share of fresh noise per step (0 = deterministic)",
        ),
        number("s_noise", 1.0, "scale of the added noise"),
    ]
}

/// No flags set.
const NONE: Flags = Flags {
    discard_penultimate_sigma: false,
    second_order: false,
    uses_ensd: false,
    brownian: false,
};

/// A1111's sampler table (`sd_samplers_kdiffusion.py` and friends), in its UI order.
const ENTRIES: &[Entry] = &[
    Entry {
        name: "DPM++ 2M",
        aliases: &["k_dpmpp_2m"],
        default_schedule: Some("karras"),
        input: ScheduleInput::Sigmas,
        flags: NONE,
        options: no_options,
        run: dpmpp::dpmpp_2m,
    },
    Entry {
        name: "DPM++ SDE",
        aliases: &["k_dpmpp_sde"],
        default_schedule: Some("karras"),
        input: ScheduleInput::Sigmas,
        flags: Flags {
            second_order: true,
            brownian: true,
            ..NONE
        },
        options: ancestral_options,
        run: dpmpp_sde::dpmpp_sde,
    },
    Entry {
        name: "DPM++ 2M SDE",
        aliases: &["k_dpmpp_2m_sde"],
        default_schedule: Some("exponential"),
        input: ScheduleInput::Sigmas,
        flags: Flags {
            brownian: true,
            ..NONE
        },
        options: ancestral_options,
        run: dpmpp_sde::dpmpp_2m_sde,
    },
    Entry {
        name: "DPM++ 2M SDE Heun",
        aliases: &["k_dpmpp_2m_sde_heun"],
        default_schedule: Some("exponential"),
        input: ScheduleInput::Sigmas,
        flags: Flags {
            brownian: true,
            ..NONE
        },
        options: ancestral_options,
        run: dpmpp_sde::dpmpp_2m_sde_heun,
    },
    Entry {
        name: "DPM++ 2S a",
        aliases: &["k_dpmpp_2s_a"],
        default_schedule: Some("karras"),
        input: ScheduleInput::Sigmas,
        flags: Flags {
            uses_ensd: true,
            second_order: true,
            ..NONE
        },
        options: ancestral_options,
        run: dpmpp::dpmpp_2s_ancestral,
    },
    Entry {
        name: "DPM++ 3M SDE",
        aliases: &["k_dpmpp_3m_sde"],
        default_schedule: Some("exponential"),
        input: ScheduleInput::Sigmas,
        flags: Flags {
            discard_penultimate_sigma: true,
            brownian: true,
            ..NONE
        },
        options: ancestral_options,
        run: dpmpp_sde::dpmpp_3m_sde,
    },
    Entry {
        name: "Euler a",
        aliases: &["k_euler_a", "k_euler_ancestral"],
        default_schedule: None,
        input: ScheduleInput::Sigmas,
        flags: Flags {
            uses_ensd: true,
            ..NONE
        },
        options: ancestral_options,
        run: euler::euler_ancestral,
    },
    Entry {
        name: "Euler",
        aliases: &["k_euler"],
        default_schedule: None,
        input: ScheduleInput::Sigmas,
        flags: NONE,
        options: churn_options,
        run: euler::euler,
    },
    Entry {
        name: "LMS",
        aliases: &["k_lms"],
        default_schedule: None,
        input: ScheduleInput::Sigmas,
        flags: NONE,
        options: no_options,
        run: lms::lms,
    },
    Entry {
        name: "Heun",
        aliases: &["k_heun"],
        default_schedule: None,
        input: ScheduleInput::Sigmas,
        flags: Flags {
            second_order: true,
            ..NONE
        },
        options: churn_options,
        run: heun::heun,
    },
    Entry {
        name: "DPM2",
        aliases: &["k_dpm_2"],
        default_schedule: Some("karras"),
        input: ScheduleInput::Sigmas,
        flags: Flags {
            discard_penultimate_sigma: true,
            second_order: true,
            ..NONE
        },
        options: churn_options,
        run: heun::dpm_2,
    },
    Entry {
        name: "DPM2 a",
        aliases: &["k_dpm_2_a"],
        default_schedule: Some("karras"),
        input: ScheduleInput::Sigmas,
        flags: Flags {
            discard_penultimate_sigma: true,
            uses_ensd: true,
            second_order: true,
            ..NONE
        },
        options: ancestral_options,
        run: heun::dpm_2_ancestral,
    },
    Entry {
        name: "DPM fast",
        aliases: &["k_dpm_fast"],
        default_schedule: None,
        input: ScheduleInput::Sigmas,
        flags: Flags {
            uses_ensd: true,
            ..NONE
        },
        options: ancestral_options,
        run: dpm_solver::dpm_fast,
    },
    Entry {
        name: "DPM adaptive",
        aliases: &["k_dpm_ad"],
        default_schedule: None,
        input: ScheduleInput::Sigmas,
        flags: Flags {
            uses_ensd: true,
            ..NONE
        },
        options: ancestral_options,
        run: dpm_solver::dpm_adaptive,
    },
    Entry {
        name: "Restart",
        aliases: &["restart"],
        default_schedule: Some("karras"),
        input: ScheduleInput::Sigmas,
        flags: Flags {
            second_order: true,
            ..NONE
        },
        options: noise_options,
        run: restart::restart,
    },
    Entry {
        name: "DDIM",
        aliases: &["ddim"],
        default_schedule: None,
        input: ScheduleInput::Timesteps,
        flags: NONE,
        options: ddim_options,
        run: timesteps::ddim,
    },
    Entry {
        name: "PLMS",
        aliases: &["plms"],
        default_schedule: None,
        input: ScheduleInput::Timesteps,
        flags: NONE,
        options: no_options,
        run: timesteps::plms,
    },
    Entry {
        name: "UniPC",
        aliases: &["unipc"],
        default_schedule: None,
        input: ScheduleInput::Timesteps,
        flags: NONE,
        options: unipc_options,
        run: unipc::unipc,
    },
    Entry {
        name: "LCM",
        aliases: &["k_lcm"],
        default_schedule: Some("lcm"),
        input: ScheduleInput::Sigmas,
        flags: NONE,
        options: no_options,
        run: lcm::lcm,
    },
];

fn describe(entry: &Entry) -> SamplerInfo {
    SamplerInfo {
        name: entry.name.into(),
        aliases: entry.aliases.iter().map(|a| RString::from(*a)).collect(),
        default_schedule: match entry.default_schedule {
            Some(schedule) => RSome(schedule.into()),
            None => RNone,
        },
        input: entry.input,
        discard_penultimate_sigma: entry.flags.discard_penultimate_sigma,
        second_order: entry.flags.second_order,
        uses_ensd: entry.flags.uses_ensd,
        brownian: entry.flags.brownian,
        options: RVec::from((entry.options)()),
    }
}

/// Every sampler of the plugin, in A1111's UI order.
pub fn samplers() -> Vec<SamplerInfo> {
    ENTRIES.iter().map(describe).collect()
}

/// Runs the sampler called `name` (the export helper has already resolved aliases).
pub fn run<'c, 'a>(
    name: &str,
    context: &'c Context<'a>,
    x: Latent<'c, 'a>,
) -> Result<Latent<'c, 'a>, SampleError> {
    let entry = ENTRIES
        .iter()
        .find(|entry| entry.name == name)
        .ok_or_else(|| SampleError::BadInput(format!("no sampler named {name}")))?;
    (entry.run)(context, x)
}
