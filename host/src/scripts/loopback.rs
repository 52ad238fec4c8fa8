//! A1111's "Loopback" script (`scripts/loopback.py`): img2img run `loops` times, each result the
//! next init image, the denoising strength moving from the request's to "Final denoising
//! strength" along a curve, the seed one higher each loop; per batch count it starts again from
//! the original picture (the seed keeps counting).
//!
//! What A1111 carries across loops and this reproduces: colour correction matches every loop to
//! the *original* init image (`p.color_corrections` set once); masked content becomes
//! "original" after the first loop; the mask stays. "Append interrogated prompt" interrogates
//! each loop's init image (the original picture in the first loop) with CLIP or DeepBooru
//! through the host's interrogator and makes the prompt `original, result` (just `result` when
//! the original prompt is empty).

use super::grid::{image_grid, GRID_BACKGROUND};
use super::{
    fix_seed, picture_error, plan_jobs, ScriptError, ScriptHost, ScriptImage, ScriptInit,
    ScriptJob, ScriptOutcome,
};

use crate::interrogate::InterrogateMethod;
use crate::request::GenerationRequest;

/// "Denoising strength curve".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DenoisingCurve {
    /// `sin(progress·π/2)`: most of the change early.
    Aggressive,
    /// `progress`.
    #[default]
    Linear,
    /// `1 − cos(progress·π/2)`: most of the change late.
    Lazy,
}

impl DenoisingCurve {
    /// A1111's name (infotext `Denoising curve`).
    pub fn name(self) -> &'static str {
        match self {
            DenoisingCurve::Aggressive => "Aggressive",
            DenoisingCurve::Linear => "Linear",
            DenoisingCurve::Lazy => "Lazy",
        }
    }

    /// From A1111's name (exact, as its dropdown sends it).
    pub fn from_name(name: &str) -> Result<Self, LoopbackError> {
        match name {
            "Aggressive" => Ok(DenoisingCurve::Aggressive),
            "Linear" => Ok(DenoisingCurve::Linear),
            "Lazy" => Ok(DenoisingCurve::Lazy),
            other => Err(LoopbackError::UnknownCurve(other.to_string())),
        }
    }
}

/// Why Loopback cannot run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LoopbackError {
    /// Not Aggressive, Linear or Lazy.
    #[error("unknown denoising strength curve {0:?} (Aggressive, Linear, Lazy)")]
    UnknownCurve(String),
    /// Unknown interrogation choice.
    #[error("unknown interrogation {0:?} (None, CLIP, DeepBooru)")]
    UnknownInterrogation(String),
    /// Loops below 1.
    #[error("loops must be at least 1, got {0}")]
    Loops(i64),
    /// Final strength outside 0–1.
    #[error("final denoising strength must be between 0 and 1, got {0}")]
    FinalStrength(f64),
}

/// The script's arguments in A1111's order.
#[derive(Debug, Clone, PartialEq)]
pub struct LoopbackArgs {
    /// "Loops" (A1111: 1–32, default 4).
    pub loops: usize,
    /// "Final denoising strength" (default 0.5).
    pub final_denoising_strength: f64,
    /// "Denoising strength curve" (default Linear).
    pub curve: DenoisingCurve,
    /// "Append interrogated prompt at each iteration": None, CLIP or DeepBooru.
    pub append_interrogation: Option<InterrogateMethod>,
}

impl Default for LoopbackArgs {
    fn default() -> Self {
        LoopbackArgs {
            loops: 4,
            final_denoising_strength: 0.5,
            curve: DenoisingCurve::Linear,
            append_interrogation: None,
        }
    }
}

impl LoopbackArgs {
    /// The arguments from A1111's values, checked.
    pub fn new(
        loops: i64,
        final_denoising_strength: f64,
        curve: &str,
        append_interrogation: &str,
    ) -> Result<Self, LoopbackError> {
        let append_interrogation = match append_interrogation {
            "None" => None,
            "CLIP" => Some(InterrogateMethod::Clip),
            "DeepBooru" => Some(InterrogateMethod::Deepbooru),
            other => return Err(LoopbackError::UnknownInterrogation(other.into())),
        };
        if loops < 1 {
            return Err(LoopbackError::Loops(loops));
        }
        if !(0.0..=1.0).contains(&final_denoising_strength) {
            return Err(LoopbackError::FinalStrength(final_denoising_strength));
        }
        Ok(LoopbackArgs {
            loops: loops as usize,
            final_denoising_strength,
            curve: DenoisingCurve::from_name(curve)?,
            append_interrogation,
        })
    }

    /// The strength of loop `index` (0-based) when the first loop used `initial`
    /// (`calculate_denoising_strength`): one loop keeps `initial`; else the curve at
    /// `index / (loops − 1)` moves it towards the final strength.
    pub fn strength(&self, index: usize, initial: f64) -> f64 {
        if self.loops == 1 {
            return initial;
        }
        let progress = index as f64 / (self.loops - 1) as f64;
        let along = match self.curve {
            DenoisingCurve::Aggressive => (progress * std::f64::consts::PI * 0.5).sin(),
            DenoisingCurve::Lazy => 1.0 - (progress * std::f64::consts::PI * 0.5).cos(),
            DenoisingCurve::Linear => progress,
        };
        initial + (self.final_denoising_strength - initial) * along
    }

    /// The request of loop `index` of batch `batch` (both 0-based) from the user's `base`, whose
    /// seed is already fixed: one image, the seed `base.seed + batch·loops + index`, the loop's
    /// strength, masked content "original" after the first loop, and the script's infotext keys.
    pub fn loop_request(
        &self,
        base: &GenerationRequest,
        batch: usize,
        index: usize,
    ) -> GenerationRequest {
        let mut request = base.clone();
        request.n_iter = 1;
        request.batch_size = 1;
        request.seed = base.seed + (batch * self.loops + index) as i64;
        request.sampler.denoising_strength = self.strength(index, base.sampler.denoising_strength);
        if index > 0 {
            request.inpaint.masked_content = crate::prepare::inpaint::MaskedContent::Original;
        }
        request
    }

    /// The infotext keys A1111 adds (`p.extra_generation_params`).
    pub fn infotext_params(&self) -> Vec<(String, String)> {
        vec![
            (
                "Final denoising strength".into(),
                crate::infotext::py_float(self.final_denoising_strength),
            ),
            ("Denoising curve".into(), self.curve.name().into()),
        ]
    }
}

/// A1111's title.
pub const TITLE: &str = "Loopback";

/// Runs the loops: each batch starts from the original picture (and mask) at the request's
/// strength; every loop's image is delivered as it comes; the returned images are every loop's
/// (one batch) or each batch's last, after a one-row grid of them when there are several
/// (saved as `grid-NNNN.png`, as A1111 names it).
pub fn run(
    args: &LoopbackArgs,
    host: &mut dyn ScriptHost,
    base: &ScriptJob,
) -> Result<ScriptOutcome, ScriptError> {
    let init = base.init.as_ref().ok_or_else(|| ScriptError::InvalidArgs {
        script: TITLE,
        message: "needs an init image".into(),
    })?;
    let mut params = base.params.clone();
    fix_seed(&mut params);
    let batch_count = params.n_iter;
    let color_target = params.img2img_color_correction.then(|| {
        init.color_target
            .clone()
            .unwrap_or_else(|| init.image.clone())
    });
    let jobs: Vec<ScriptJob> = (0..batch_count)
        .flat_map(|n| (0..args.loops).map(move |i| (n, i)))
        .map(|(n, i)| ScriptJob {
            params: args.loop_request(&params, n, i),
            init: None,
            checkpoint: base.checkpoint.clone(),
            cell: Vec::new(),
        })
        .collect();
    plan_jobs(host, &jobs);
    let mut outcome = ScriptOutcome {
        grid_basename: "grid",
        ..ScriptOutcome::default()
    };
    let mut history: Vec<ScriptImage> = Vec::new();
    'batches: for n in 0..batch_count {
        let mut picture = init.image.clone();
        let mut last = None;
        for i in 0..args.loops {
            if host.stopped() {
                outcome.stopped = true;
                break 'batches;
            }
            let mut job = jobs[n * args.loops + i].clone();
            if let Some(method) = args.append_interrogation {
                let found = host.interrogate(&picture, method)?;
                job.params.prompt = match params.prompt.as_str() {
                    "" => found,
                    original => format!("{original}, {found}"),
                };
            }
            job.init = Some(ScriptInit {
                image: picture.clone(),
                mask: init.mask.clone(),
                latent_mask: None,
                color_target: color_target.clone(),
                deliver: true,
            });
            let done = host.run(&job)?;
            // A1111 leaves the loop before taking an interrupted loop's image.
            if done.cancelled || done.interrupted {
                outcome.stopped = true;
                break 'batches;
            }
            let Some(image) = done.images.first() else {
                break;
            };
            picture = image.image.clone();
            let image = ScriptImage::of(image);
            if batch_count == 1 {
                history.push(image.clone());
            }
            last = Some(image);
        }
        if batch_count > 1 {
            history.extend(last);
        }
    }
    if history.len() > 1 {
        let pictures: Vec<_> = history.iter().map(|i| i.image.clone()).collect();
        let grid =
            image_grid(&pictures, 1, GRID_BACKGROUND).map_err(|e| picture_error(TITLE, e))?;
        outcome.grids.push(ScriptImage {
            image: grid,
            infotext: history[0].infotext.clone(),
            seed: history[0].seed,
        });
        outcome.saved_grids = 1;
    }
    outcome.images = history;
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_strength_moves_along_the_curve_to_the_final_strength() {
        let args = LoopbackArgs::new(5, 0.25, "Linear", "None").unwrap();
        let s: Vec<f64> = (0..5).map(|i| args.strength(i, 0.75)).collect();
        assert_eq!(s, [0.75, 0.625, 0.5, 0.375, 0.25]);
        let one = LoopbackArgs::new(1, 0.1, "Lazy", "None").unwrap();
        assert_eq!(one.strength(1, 0.6), 0.6);
        let clip = LoopbackArgs::new(4, 0.5, "Linear", "CLIP").unwrap();
        assert_eq!(clip.append_interrogation, Some(InterrogateMethod::Clip));
        assert!(LoopbackArgs::new(4, 0.5, "Linear", "BLIP").is_err());
        assert!(LoopbackArgs::new(0, 0.5, "Linear", "None").is_err());
        assert!(LoopbackArgs::new(4, 0.5, "Steep", "None").is_err());
    }
}
