//! The sampler list: each sampler's spec (declared beside its function) and its function, in
//! A1111's UI order.

use sdhost_plugin_api::{
    Context, Latent, SampleError, SampleResult, SamplerFn, SamplerInfo, SamplerSpec,
};

use crate::{dpm_solver, dpmpp, dpmpp_sde, euler, heun, lcm, lms, restart, timesteps, unipc};

/// A function returning a sampler's spec (declared beside the sampler).
type SpecFn = fn() -> SamplerSpec;

/// A1111's img2img samplers: `samplers_k_diffusion` in `modules/sd_samplers_kdiffusion.py`,
/// then `modules/sd_samplers_timesteps.py` and `modules/sd_samplers_lcm.py`.
const SAMPLERS: &[(SpecFn, SamplerFn)] = &[
    (dpmpp::dpmpp_2m_spec, dpmpp::dpmpp_2m),
    (dpmpp_sde::dpmpp_sde_spec, dpmpp_sde::dpmpp_sde),
    (dpmpp_sde::dpmpp_2m_sde_spec, dpmpp_sde::dpmpp_2m_sde),
    (
        dpmpp_sde::dpmpp_2m_sde_heun_spec,
        dpmpp_sde::dpmpp_2m_sde_heun,
    ),
    (dpmpp::dpmpp_2s_ancestral_spec, dpmpp::dpmpp_2s_ancestral),
    (dpmpp_sde::dpmpp_3m_sde_spec, dpmpp_sde::dpmpp_3m_sde),
    (euler::euler_ancestral_spec, euler::euler_ancestral),
    (euler::euler_spec, euler::euler),
    (lms::lms_spec, lms::lms),
    (heun::heun_spec, heun::heun),
    (heun::dpm_2_spec, heun::dpm_2),
    (heun::dpm_2_ancestral_spec, heun::dpm_2_ancestral),
    (dpm_solver::dpm_fast_spec, dpm_solver::dpm_fast),
    (dpm_solver::dpm_adaptive_spec, dpm_solver::dpm_adaptive),
    (restart::restart_spec, restart::restart),
    (timesteps::ddim_spec, timesteps::ddim),
    (timesteps::plms_spec, timesteps::plms),
    (unipc::unipc_spec, unipc::unipc),
    (lcm::lcm_spec, lcm::lcm),
];

/// Every sampler of the plugin, in A1111's UI order.
pub fn samplers() -> Vec<SamplerInfo> {
    SAMPLERS.iter().map(|(spec, _)| spec().into()).collect()
}

/// Runs the sampler called `name` (the export helper has already resolved aliases).
pub fn run<'c, 'a>(
    name: &str,
    context: &'c Context<'a>,
    x: Latent<'c, 'a>,
) -> SampleResult<'c, 'a> {
    let (_, sampler) = SAMPLERS
        .iter()
        .find(|(spec, _)| spec().name() == name)
        .ok_or_else(|| SampleError::BadInput(format!("no sampler named {name}")))?;
    sampler(context, x)
}
