//! The k-diffusion denoiser over the UNet, with classifier-free guidance (A1111's
//! `CFGDenoiser` around k-diffusion's `CompVisDenoiser` / `CompVisVDenoiser`).
//!
//! One call evaluates, for every image of the batch, each `AND` part of its prompt and its
//! negative prompt at the conditioning scheduled for this model call, in one UNet batch where
//! the token lengths agree, and combines the denoised outputs:
//! `D = D_u + Σ_j w_j·s·(D_c_j − D_u)`.

use std::panic::{catch_unwind, AssertUnwindSafe};

use tch::{Kind, Tensor};

use super::noise_levels::{NoiseLevels, NoiseModel};
use super::session::{Denoise, StepFailure};
use crate::models::unet::{TokenMerging, UNetModel};
use crate::prompt::conditioning::{cond_at_call, Cond, CondPart, ScheduledCond};
use sdhost_plugin_api::abi::HostErrorKind;

pub use crate::models::Prediction;

/// The conditioning of a job's batch.
pub struct Guidance {
    /// Per image: the `AND` parts of its positive prompt.
    pub conds: Vec<Vec<CondPart>>,
    /// Per image: its negative prompt's schedule.
    pub unconds: Vec<Vec<ScheduledCond>>,
    /// CFG scale `s`.
    pub cfg_scale: f64,
}

/// Inpainting's per-call blend with the clean init latent (A1111
/// `modules/sd_samplers_cfg_denoiser.py: CFGDenoiser.forward`, `mask_before_denoising`).
pub struct LatentMask {
    /// The init latent [B, 4, h, w] (with "latent noise"/"latent nothing" applied).
    pub init_latent: Tensor,
    /// 1 where the original is kept (A1111 `mask`), broadcastable to the latent.
    pub keep: Tensor,
    /// 1 where the image is regenerated (A1111 `nmask`).
    pub regenerate: Tensor,
    /// Blend the model's input instead of its output (A1111's timestep samplers: DDIM, PLMS,
    /// UniPC).
    pub before_denoising: bool,
}

/// A second model that takes over sampling part-way (A1111's refiner,
/// `modules/sd_samplers_common.py: apply_refiner`): from the first model call whose progress
/// `(999 − nearest level of σ)/1000` (timestep samplers: `(999 − ⌊t⌋)/1000`) reaches
/// `switch_at`, its UNet and its own conditioning denoise the same latent.
pub struct RefinerStage<'m> {
    /// The refiner's UNet.
    pub unet: &'m UNetModel,
    /// What it predicts.
    pub prediction: Prediction,
    /// Its conditioning of the job's prompts.
    pub guidance: Guidance,
    /// Progress at which it takes over, 0–1.
    pub switch_at: f64,
}

/// The UNet as a k-diffusion denoiser with classifier-free guidance.
pub struct CfgDenoiser<'m> {
    unet: &'m UNetModel,
    levels: &'m NoiseLevels,
    prediction: Prediction,
    guidance: Guidance,
    /// Extra input channels of inpainting models, per image [B, 5, h, w], appended to x.
    image_conditioning: Option<Tensor>,
    /// Inpainting's blend with the init latent.
    latent_mask: Option<LatentMask>,
    /// Round the timestep to fp16 before the UNet, as A1111 does with an fp16 UNet.
    round_timestep_fp16: bool,
    /// Most rows per UNet call; halved automatically when the device runs out of memory.
    max_rows: usize,
    call: usize,
    /// The refiner still to switch to.
    refiner: Option<RefinerStage<'m>>,
    /// Whether the refiner took over.
    switched: bool,
    /// The last call's denoised prediction (A1111's `last_latent`, what an interrupted batch
    /// is decoded from).
    last_denoised: Option<Tensor>,
    /// Token merging in every UNet call (the refiner's too: A1111's patch stays on the model).
    token_merging: Option<TokenMerging>,
}

impl<'m> CfgDenoiser<'m> {
    /// A denoiser for `guidance` over `unet`, rounding timesteps to fp16 (A1111's default).
    pub fn new(
        unet: &'m UNetModel,
        levels: &'m NoiseLevels,
        prediction: Prediction,
        guidance: Guidance,
    ) -> Self {
        CfgDenoiser {
            unet,
            levels,
            prediction,
            guidance,
            image_conditioning: None,
            latent_mask: None,
            round_timestep_fp16: true,
            max_rows: usize::MAX,
            call: 0,
            refiner: None,
            switched: false,
            last_denoised: None,
            token_merging: None,
        }
    }

    /// Merges tokens in the UNet's self-attention as `merging` says (A1111's token merging).
    pub fn token_merging(mut self, merging: TokenMerging) -> Self {
        self.token_merging = Some(merging);
        self
    }

    /// The denoised prediction of the last model call, if there was one.
    pub fn last_denoised(&self) -> Option<Tensor> {
        self.last_denoised.as_ref().map(Tensor::shallow_clone)
    }

    /// Hands sampling over to `refiner` when its switch point is reached.
    pub fn refiner(mut self, refiner: RefinerStage<'m>) -> Self {
        self.refiner = Some(refiner);
        self
    }

    /// Whether a refiner took over (the infotext's `Refiner` keys are written then).
    pub fn switched_to_refiner(&self) -> bool {
        self.switched
    }

    /// Switches to the refiner at the first call whose progress reaches its switch point.
    /// The levels (and so the progress) are the base model's: both share SD's schedule.
    fn maybe_switch(&mut self, sigma: f64, timestep: Option<f64>) {
        let Some(refiner) = &self.refiner else {
            return;
        };
        let level = match timestep {
            Some(t) => t.max(0.0) as usize,
            None => self.levels.nearest_level(sigma),
        };
        let progress = (999.0 - level as f64) / 1000.0;
        if progress < refiner.switch_at {
            return;
        }
        let refiner = self.refiner.take().expect("checked above");
        self.unet = refiner.unet;
        self.prediction = refiner.prediction;
        self.guidance = refiner.guidance;
        // The inpainting channels only reach a refiner that takes them.
        if refiner.unet.config().in_channels == 4 {
            self.image_conditioning = None;
        }
        self.switched = true;
    }

    /// Whether the timestep is rounded to fp16 (A1111 with a half-precision UNet).
    pub fn round_timestep_fp16(mut self, round: bool) -> Self {
        self.round_timestep_fp16 = round;
        self
    }

    /// Limits the rows of one UNet call (cond and uncond of all images share a call if
    /// they fit; A1111's `batch_cond_uncond`).
    pub fn max_rows(mut self, rows: usize) -> Self {
        self.max_rows = rows.max(1);
        self
    }

    /// Adds the inpainting model's image conditioning (masked image latent and mask).
    pub fn image_conditioning(mut self, conditioning: Tensor) -> Self {
        self.image_conditioning = Some(conditioning);
        self
    }

    /// Blends every model call with the clean init latent where the mask keeps the original.
    pub fn latent_mask(mut self, mask: LatentMask) -> Self {
        self.latent_mask = Some(mask);
        self
    }

    /// The UNet timestep for a noise level.
    fn timestep(&self, sigma: f64, timestep: Option<f64>) -> f64 {
        let t = timestep.unwrap_or_else(|| self.levels.sigma_to_t(sigma));
        if self.round_timestep_fp16 {
            f64::from(half::f16::from_f64(t))
        } else {
            t
        }
    }

    /// D(x, σ) for the given rows (image index, conditioning) in chunks of `max_rows`.
    fn denoise_rows(
        &mut self,
        x: &Tensor,
        sigma: f64,
        t: f64,
        rows: &[(usize, &Cond)],
    ) -> Result<Vec<Tensor>, StepFailure> {
        let mut out = Vec::with_capacity(rows.len());
        let mut start = 0;
        while start < rows.len() {
            let end = (start + self.max_rows).min(rows.len());
            match self.run_unet(x, sigma, t, &rows[start..end]) {
                Ok(denoised) => {
                    out.extend(denoised);
                    start = end;
                }
                Err(failure) if failure.kind == HostErrorKind::OutOfMemory && end - start > 1 => {
                    // Split the batch rather than fail: A1111's answer to "does not fit".
                    self.max_rows = (end - start) / 2;
                }
                Err(failure) => return Err(failure),
            }
        }
        Ok(out)
    }

    /// One UNet call; libtorch errors (they panic in tch) become step failures.
    fn run_unet(
        &self,
        x: &Tensor,
        sigma: f64,
        t: f64,
        rows: &[(usize, &Cond)],
    ) -> Result<Vec<Tensor>, StepFailure> {
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let index: Vec<i64> = rows.iter().map(|(image, _)| *image as i64).collect();
            let index = Tensor::from_slice(&index).to_device(x.device());
            let x_rows = x.index_select(0, &index);
            let c_in = 1.0 / (sigma * sigma + 1.0).sqrt();
            let mut input = &x_rows * c_in;
            if let Some(conditioning) = &self.image_conditioning {
                input = Tensor::cat(&[input, conditioning.index_select(0, &index)], 1);
            }
            let kind = self.unet_kind();
            let context = Tensor::stack(
                &rows.iter().map(|(_, c)| &c.crossattn).collect::<Vec<_>>(),
                0,
            )
            .to_kind(kind);
            // SDXL's vectors go in the UNet's dtype too, as A1111's dtype hijack casts them.
            let vectors: Option<Vec<&Tensor>> =
                rows.iter().map(|(_, c)| c.vector.as_ref()).collect();
            let y = vectors.map(|v| Tensor::stack(&v, 0).to_kind(kind));
            let timesteps = Tensor::full([rows.len() as i64], t, (Kind::Float, x.device()));
            let output = self
                .unet
                .forward_merging(
                    &input.to_kind(kind),
                    &timesteps,
                    &context,
                    y.as_ref(),
                    self.token_merging,
                )
                .to_kind(x.kind());
            let denoised = match self.prediction {
                Prediction::Epsilon => &x_rows - output * sigma,
                Prediction::V => {
                    let c_skip = 1.0 / (sigma * sigma + 1.0);
                    let c_out = -sigma / (sigma * sigma + 1.0).sqrt();
                    &x_rows * c_skip + output * c_out
                }
            };
            denoised.unbind(0)
        }));
        outcome.map_err(|payload| torch_panic("model call", &*payload))
    }

    fn unet_kind(&self) -> Kind {
        self.unet.kind()
    }
}

/// Turns a panic from a tch operation into a step failure (out of memory gets its own kind).
pub fn torch_panic(context: &str, payload: &(dyn std::any::Any + Send)) -> StepFailure {
    let text = crate::error::panic_message(payload);
    StepFailure::from_torch(context, &tch::TchError::Torch(text))
}

impl Denoise for CfgDenoiser<'_> {
    fn denoise(
        &mut self,
        x: &Tensor,
        sigma: f64,
        timestep: Option<f64>,
    ) -> Result<Tensor, StepFailure> {
        let denoised = self.masked(x, sigma, timestep)?;
        self.last_denoised = Some(denoised.shallow_clone());
        Ok(denoised)
    }
}

impl CfgDenoiser<'_> {
    /// D(x, σ) with guidance and, when inpainting, the mask's blend with the init latent.
    fn masked(
        &mut self,
        x: &Tensor,
        sigma: f64,
        timestep: Option<f64>,
    ) -> Result<Tensor, StepFailure> {
        self.maybe_switch(sigma, timestep);
        let Some(mask) = &self.latent_mask else {
            return self.guided(x, sigma, timestep);
        };
        if mask.before_denoising {
            // The timestep samplers' x is the VP latent over √ᾱ, so the clean latent A1111
            // blends into its VP input is scaled by 1/√ᾱ = √(1+σ²) here.
            let blended = torch_op("inpainting mask", || {
                x * &mask.regenerate + &mask.init_latent * &mask.keep * (1.0 + sigma * sigma).sqrt()
            })?;
            // ε comes from the blended input; the sampler goes on from its own x.
            let denoised = self.guided(&blended, sigma, timestep)?;
            torch_op("inpainting mask", || denoised + (x - &blended))
        } else {
            let denoised = self.guided(x, sigma, timestep)?;
            let mask = self.latent_mask.as_ref().expect("checked above");
            torch_op("inpainting mask", || {
                denoised * &mask.regenerate + &mask.init_latent * &mask.keep
            })
        }
    }
}

/// Runs tensor arithmetic whose libtorch errors (panics in tch) become step failures.
fn torch_op<T>(context: &str, f: impl FnOnce() -> T) -> Result<T, StepFailure> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| torch_panic(context, &*payload))
}

impl CfgDenoiser<'_> {
    /// D(x, σ) with classifier-free guidance, before any inpainting blend.
    fn guided(
        &mut self,
        x: &Tensor,
        sigma: f64,
        timestep: Option<f64>,
    ) -> Result<Tensor, StepFailure> {
        let batch = x.size()[0] as usize;
        if self.guidance.conds.len() != batch || self.guidance.unconds.len() != batch {
            return Err(StepFailure::failed(format!(
                "conditioning for {} images, latent batch of {batch}",
                self.guidance.conds.len()
            )));
        }
        let t = self.timestep(sigma, timestep);
        let call = self.call;
        // Rows in A1111's order: every image's cond parts, then every image's uncond.
        let mut rows: Vec<(usize, Cond)> = Vec::new();
        let mut weights: Vec<f64> = Vec::new();
        for (image, parts) in self.guidance.conds.iter().enumerate() {
            for part in parts {
                rows.push((image, cond_at_call(&part.schedule, call).shallow_clone()));
                weights.push(part.weight);
            }
        }
        let cond_count = rows.len();
        for (image, schedule) in self.guidance.unconds.iter().enumerate() {
            rows.push((image, cond_at_call(schedule, call).shallow_clone()));
        }
        // Rows with different token counts cannot share a UNet batch.
        let mut outputs: Vec<Option<Tensor>> = (0..rows.len()).map(|_| None).collect();
        let mut lengths: Vec<i64> = rows.iter().map(|(_, c)| c.tokens()).collect();
        lengths.sort_unstable();
        lengths.dedup();
        for length in lengths {
            let group: Vec<usize> = (0..rows.len())
                .filter(|&i| rows[i].1.tokens() == length)
                .collect();
            let group_rows: Vec<(usize, &Cond)> =
                group.iter().map(|&i| (rows[i].0, &rows[i].1)).collect();
            let denoised = self.denoise_rows(x, sigma, t, &group_rows)?;
            for (i, d) in group.into_iter().zip(denoised) {
                outputs[i] = Some(d);
            }
        }
        let outputs: Vec<Tensor> = outputs
            .into_iter()
            .map(|o| o.expect("every row ran"))
            .collect();
        let (cond_out, uncond_out) = outputs.split_at(cond_count);
        let scale = self.guidance.cfg_scale;
        let mut result = Vec::with_capacity(batch);
        let mut part = 0;
        for (image, parts) in self.guidance.conds.iter().enumerate() {
            let uncond = &uncond_out[image];
            let mut denoised = uncond.copy();
            for _ in parts {
                denoised += (&cond_out[part] - uncond) * (weights[part] * scale);
                part += 1;
            }
            result.push(denoised);
        }
        self.call += 1;
        Ok(Tensor::stack(&result, 0))
    }
}
