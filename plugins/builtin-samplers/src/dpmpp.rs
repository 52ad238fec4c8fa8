//! DPM-Solver++ samplers without Brownian noise: 2M (multistep) and 2S ancestral (Lu et al.
//! 2022, as in k-diffusion), written in λ = −ln σ.

use sdhost_plugin_api::{Context, Latent, SampleResult, SamplerSpec};

use crate::common::{
    add_ancestral_noise, ancestral_options, ancestral_step, denoise_step, lambda, require_steps,
    to_d,
};

/// How A1111 presents "DPM++ 2M" (its row of the sampler table).
pub fn dpmpp_2m_spec() -> SamplerSpec {
    SamplerSpec::new("DPM++ 2M")
        .alias("k_dpmpp_2m")
        .default_schedule("karras")
}

/// DPM++ 2M: second-order multistep using the previous denoised prediction.
pub fn dpmpp_2m<'c, 'a>(context: &'c Context<'a>, mut x: Latent<'c, 'a>) -> SampleResult<'c, 'a> {
    let steps = require_steps(context)?;
    let sigmas = context.sigmas();
    let mut old_denoised: Option<Latent<'c, 'a>> = None;
    for i in 0..steps {
        let denoised = denoise_step(context, i, &x)?;
        let (t, t_next) = (lambda(sigmas[i]), lambda(sigmas[i + 1]));
        let h = t_next - t;
        let ratio = sigmas[i + 1] / sigmas[i];
        let factor = -(-h).exp_m1();
        x = match &old_denoised {
            Some(old) if sigmas[i + 1] != 0.0 => {
                let r = (t - lambda(sigmas[i - 1])) / h;
                let a = 1.0 + 1.0 / (2.0 * r);
                let b = -1.0 / (2.0 * r);
                Latent::combine(
                    context,
                    &[(ratio, &x), (factor * a, &denoised), (factor * b, old)],
                )
            }
            _ => x.mix(ratio, &denoised, factor),
        };
        old_denoised = Some(denoised);
    }
    Ok(x)
}

/// How A1111 presents "DPM++ 2S a" (its row of the sampler table).
pub fn dpmpp_2s_ancestral_spec() -> SamplerSpec {
    SamplerSpec::new("DPM++ 2S a")
        .alias("k_dpmpp_2s_a")
        .default_schedule("karras")
        .uses_ensd()
        .second_order()
        .with(ancestral_options)
}

/// DPM++ 2S ancestral: a two-stage single step to σ_down, then fresh noise of σ_up.
pub fn dpmpp_2s_ancestral<'c, 'a>(
    context: &'c Context<'a>,
    mut x: Latent<'c, 'a>,
) -> SampleResult<'c, 'a> {
    let steps = require_steps(context)?;
    let eta = context.number("eta")?;
    let sigmas = context.sigmas();
    for i in 0..steps {
        let denoised = denoise_step(context, i, &x)?;
        let (sigma_down, sigma_up) = ancestral_step(sigmas[i], sigmas[i + 1], eta);
        if sigma_down == 0.0 {
            let d = to_d(&x, &denoised, sigmas[i]);
            x = x.mix(1.0, &d, sigma_down - sigmas[i]);
        } else {
            let (t, t_next) = (lambda(sigmas[i]), lambda(sigma_down));
            let h = t_next - t;
            let s = t + h / 2.0;
            let sigma_s = (-s).exp();
            let x_2 = x.mix(sigma_s / sigmas[i], &denoised, -(-h / 2.0).exp_m1());
            let denoised_2 = context.denoise(&x_2, sigma_s)?;
            x = x.mix(sigma_down / sigmas[i], &denoised_2, -(-h).exp_m1());
        }
        x = add_ancestral_noise(context, x, sigmas[i + 1], sigma_up)?;
    }
    Ok(x)
}
