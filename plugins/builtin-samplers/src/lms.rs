//! LMS: linear multistep of order up to 4 on the σ ODE (k-diffusion `sample_lms`).

use sdhost_plugin_api::{Context, Latent, SampleResult, SamplerSpec};

use crate::common::{require_steps, to_d};

/// Nodes and weights of 4-point Gauss–Legendre quadrature on [−1, 1]: exact for the cubic
/// Lagrange basis polynomials. k-diffusion integrates them with scipy's adaptive `quad`
/// (epsrel 1e-4), which is exact to rounding on polynomials this smooth.
const GAUSS_LEGENDRE_4: [(f64, f64); 4] = [
    (-0.861_136_311_594_052_6, 0.347_854_845_137_453_86),
    (-0.339_981_043_584_856_3, 0.652_145_154_862_546_1),
    (0.339_981_043_584_856_3, 0.652_145_154_862_546_1),
    (0.861_136_311_594_052_6, 0.347_854_845_137_453_86),
];

/// ∫ from σ_i to σ_{i+1} of the Lagrange basis polynomial of node i−j over nodes i, i−1, ….
fn coefficient(order: usize, sigmas: &[f64], i: usize, j: usize) -> f64 {
    let basis = |tau: f64| {
        (0..order)
            .filter(|&k| k != j)
            .map(|k| (tau - sigmas[i - k]) / (sigmas[i - j] - sigmas[i - k]))
            .product::<f64>()
    };
    let (a, b) = (sigmas[i], sigmas[i + 1]);
    let half = (b - a) / 2.0;
    let mid = (a + b) / 2.0;
    GAUSS_LEGENDRE_4
        .iter()
        .map(|(node, weight)| weight * basis(mid + half * node))
        .sum::<f64>()
        * half
}

/// The order A1111 runs LMS with (k-diffusion's default; A1111 offers no setting).
const ORDER: usize = 4;

/// How A1111 presents "LMS" (its row of the sampler table).
pub fn lms_spec() -> SamplerSpec {
    SamplerSpec::new("LMS").alias("k_lms")
}

/// LMS of order 4.
pub fn lms<'c, 'a>(context: &'c Context<'a>, mut x: Latent<'c, 'a>) -> SampleResult<'c, 'a> {
    let steps = require_steps(context)?;
    let order = ORDER;
    // k-diffusion takes the σ values from a float32 tensor.
    let sigmas: Vec<f64> = context.sigmas().iter().map(|&s| s as f32 as f64).collect();
    let mut derivatives: Vec<Latent<'c, 'a>> = Vec::new();
    for i in 0..steps {
        let denoised = context.denoise(&x, context.sigmas()[i])?;
        derivatives.push(to_d(&x, &denoised, context.sigmas()[i]));
        if derivatives.len() > order {
            derivatives.remove(0);
        }
        context.callback(i, context.sigmas()[i], context.sigmas()[i], &x, &denoised)?;
        let current = (i + 1).min(order);
        let coefficients: Vec<f64> = (0..current)
            .map(|j| coefficient(current, &sigmas, i, j))
            .collect();
        let mut terms = vec![(1.0, &x)];
        terms.extend(coefficients.iter().copied().zip(derivatives.iter().rev()));
        x = Latent::combine(context, &terms);
    }
    Ok(x)
}
