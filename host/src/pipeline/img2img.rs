//! One img2img job as A1111 runs it (`modules/processing.py: process_images_inner`,
//! `StableDiffusionProcessingImg2Img.init` and `.sample`): the init image is resized and
//! encoded once, then `n_iter` batches of `batch_size` images are sampled, each image from
//! its own seed, decoded and given its infotext.
//!
//! [`run_img2img`] is the job; its stages, in A1111's order, are the methods of
//! [`Img2ImgJob`] and [`composite`]: prepare → init latents → condition → per batch sample →
//! decode → composite → finish (infotext; the front end saves or sends the image).

use image::{GrayImage, RgbImage};
use sdhost_plugin_api::{Flow, ScheduleInput};
use tch::{Device, Kind, Tensor};

use super::error::guarded;
use super::extra_networks::{activate_extra_networks, JobNetworks};
use super::init::JobInit;
use super::model::GenerationModel;
use super::stop::{BatchStop, JobStop};
use crate::device::release_freed_memory;
use crate::extra_networks::parse_prompt;
use crate::infotext::Infotext;
use crate::prepare::inpaint::{MaskedContent, Patch};
use crate::prompt::conditioning::{CondPart, Conditioner, ConditioningError, ScheduledCond};
use crate::prompt::embeddings::ti_hashes;
use crate::request::{GenerationRequest, ImageFacts, RngChoice};
use crate::rng::{fixed_seed, random_seed, ImageRng, RngSource, SeedList, Variation};
use crate::sampling::brownian::{BrownianError, BrownianTreeNoise};
use crate::sampling::denoiser::{CfgDenoiser, Guidance, LatentMask, RefinerStage};
use crate::sampling::noise::JobNoise;
use crate::sampling::plan::SamplingPlan;
use crate::sampling::plugins::{SampleRequest, SamplerRegistry, SamplingError};

// What a job returns on failure, re-exported so callers find it beside `run_img2img`.
pub use super::error::JobError;

/// Progress reported while a job runs.
pub enum JobEvent<'a> {
    /// The job is set up: how many images, and sampler steps per batch.
    Started {
        images: usize,
        batches: usize,
        steps_per_batch: usize,
    },
    /// Batch `batch` (from 0) finished sampler step `step` (from 1).
    Step {
        batch: usize,
        step: usize,
        /// The step's denoised prediction of the batch (scaled latents [batch_size, 4, h, w],
        /// for inpainting with the kept area already the init latent's): what previews show.
        denoised: &'a Tensor,
    },
    /// An image is done (decoded, with its infotext).
    Image(&'a GeneratedImage),
    /// Something the user should know that did not stop the job (a LoRA not found, keys of a
    /// network that match no layer …); sent before `Started`, except a VAE's switch to fp32
    /// after NaN, sent when it happens.
    Warning(&'a str),
}

/// One finished image.
pub struct GeneratedImage {
    /// Position in the job (batch after batch).
    pub index: usize,
    /// Its seed.
    pub seed: u64,
    /// The pixels (inpainting: the composite over the original).
    pub image: RgbImage,
    /// Inpainting: the generated area as an RGBA layer with its offset, for editors.
    pub patch: Option<Patch>,
    /// Its generation parameters.
    pub infotext: Infotext,
}

/// What a job produced.
pub struct JobOutcome {
    /// The finished images, in order.
    pub images: Vec<GeneratedImage>,
    /// Whether it was cancelled (socket `cancel`, or the observer's [`Flow::Cancel`]): the
    /// unfinished batch was dropped.
    pub cancelled: bool,
    /// Whether it was interrupted (A1111's interrupt): the running batch was decoded from its
    /// last denoised prediction and later batches were dropped.
    pub interrupted: bool,
    /// The warnings reported while it ran (also sent as [`JobEvent::Warning`]).
    pub warnings: Vec<String>,
}

/// The source of per-image noise for a model on `device`.
fn rng_source(choice: RngChoice, device: Device) -> Result<RngSource, JobError> {
    match (choice, device) {
        (RngChoice::Cpu, _) => Ok(RngSource::Torch(Device::Cpu)),
        (RngChoice::Nv, _) => Ok(RngSource::Nv),
        (RngChoice::Gpu, Device::Cuda(_)) => Ok(RngSource::Torch(device)),
        (RngChoice::Gpu, other) => Err(JobError::Unsupported(format!(
            "the GPU RNG needs a CUDA device, the model runs on {other:?}; use the CPU or NV RNG"
        ))),
    }
}

/// Copies a prompt's conditioning for another image of the batch (tensors are shared).
fn share_parts(parts: &[CondPart]) -> Vec<CondPart> {
    parts
        .iter()
        .map(|part| CondPart {
            schedule: share_schedule(&part.schedule),
            weight: part.weight,
        })
        .collect()
}

fn share_schedule(schedule: &[ScheduledCond]) -> Vec<ScheduledCond> {
    schedule
        .iter()
        .map(|s| ScheduledCond {
            end_at_step: s.end_at_step,
            cond: s.cond.shallow_clone(),
        })
        .collect()
}

/// Runs an img2img job on `init_image` (already flattened to RGB), inpainting where `mask`
/// (255 = regenerate, the image's size) says when one is given. `observe` sees progress
/// and each image as it is finished; returning [`Flow::Cancel`] from a step stops the job
/// after the current step, keeping the images already finished. `stop` cancels, interrupts
/// or skips it from elsewhere at the sampler's next model call, noise draw or step (see
/// [`JobStop`]), which also stops plugins that never report a step.
///
/// The stages run in the order of A1111's `modules/processing.py: process_images_inner`:
/// [`Img2ImgJob::prepare`], [`Img2ImgJob::init_latents`], [`Img2ImgJob::activate_networks`],
/// [`Img2ImgJob::condition`], then per batch [`Img2ImgJob::sample`], [`Img2ImgJob::decode`],
/// [`composite`] and [`Img2ImgJob::finish_image`].
pub fn run_img2img(
    model: &GenerationModel,
    registry: &SamplerRegistry,
    params: &GenerationRequest,
    init_image: &RgbImage,
    mask: Option<&GrayImage>,
    stop: &JobStop,
    observe: &mut dyn FnMut(JobEvent<'_>) -> Flow,
) -> Result<JobOutcome, JobError> {
    let _guard = tch::no_grad_guard();
    let job = Img2ImgJob::prepare(model, registry, params)?;
    let init = job.init_latents(init_image, mask)?;
    // The extra networks, before the prompts are encoded: LoRAs patch the weights;
    // hypernetworks are set on the UNet for the whole job and cleared when it ends, however
    // it ends.
    let networks = job.activate_networks();
    let hypernetworks = model.activate_hypernetworks(&parse_prompt(&params.prompt).1);
    let mut warnings = networks.warnings.clone();
    warnings.extend(hypernetworks.warnings().iter().cloned());
    for warning in &warnings {
        observe(JobEvent::Warning(warning));
    }
    let conditioning = job.condition(&networks)?;
    let total = params.n_iter * params.batch_size;
    observe(JobEvent::Started {
        images: total,
        batches: params.n_iter,
        steps_per_batch: job.plan.steps_run,
    });

    let mut images = Vec::with_capacity(total);
    for batch in 0..params.n_iter {
        stop.next_batch();
        if stop.ends_job() {
            break;
        }
        let Some(samples) = job.sample(&init, &conditioning, batch, stop, observe)? else {
            return Ok(JobOutcome {
                images,
                cancelled: true,
                interrupted: false,
                warnings,
            });
        };
        release_freed_memory(model.device);
        let (decoded, warning) = job.decode_with_warning(samples)?;
        if let Some(warning) = warning {
            observe(JobEvent::Warning(&warning));
            warnings.push(warning);
        }
        let (batch_seeds, batch_subseeds) = job.seeds.batch(batch, params.batch_size);
        for ((generated, &seed), &subseed) in
            decoded.into_iter().zip(batch_seeds).zip(batch_subseeds)
        {
            let (image, patch) = composite(&init.init, generated);
            let generated = job.finish_image(
                &init.init,
                &conditioning,
                ImageSeeds {
                    index: images.len(),
                    seed,
                    subseed,
                },
                image,
                patch,
            );
            observe(JobEvent::Image(&generated));
            images.push(generated);
        }
    }
    Ok(JobOutcome {
        images,
        cancelled: stop.is_cancelled(),
        interrupted: stop.is_interrupted() && !stop.is_cancelled(),
        warnings,
    })
}

/// A job with its settings resolved, before any image work: the stages of [`run_img2img`]
/// are its methods, each callable on its own.
pub struct Img2ImgJob<'a> {
    /// The loaded model.
    pub model: &'a GenerationModel,
    /// Where the sampler comes from.
    pub registry: &'a SamplerRegistry,
    /// The job's parameters (validated).
    pub params: &'a GenerationRequest,
    /// Sampler, schedule and the σ levels the job walks.
    pub plan: SamplingPlan<'a>,
    /// Where per-image noise comes from.
    pub source: RngSource,
    /// Every image's seed and variation seed, batch after batch.
    pub seeds: SeedList,
    /// One image's latent shape [4, h, w].
    pub shape: [i64; 3],
    /// Whether a batch has switched to the refiner (from then on the infotext names it, as
    /// A1111 keeps the keys once added).
    refiner_switched: std::cell::Cell<bool>,
}

/// The job's init: the prepared and encoded image, and, for "latent noise", its noise.
pub struct InitLatents {
    /// What is computed once from the init image and mask.
    pub init: JobInit,
    /// Masked content "latent noise": the first batch's initial noise, also used for later
    /// batches (A1111 draws it once in `init`).
    pub latent_noise: Option<Tensor>,
}

/// The prompts as CLIP conditioning, shared by every batch of the job.
pub struct JobConditioning {
    /// The prompt's `AND` parts, each scheduled per model call.
    pub cond: Vec<CondPart>,
    /// The negative prompt, scheduled per model call.
    pub uncond: Vec<ScheduledCond>,
    /// Infotext `TI hashes` of the embeddings the prompts used.
    pub ti_hashes: Option<String>,
    /// Infotext `Lora hashes` of the networks the job runs with.
    pub lora_hashes: Option<String>,
    /// The refiner's prompt and negative prompt, when the job has one.
    pub refiner: Option<(Vec<CondPart>, Vec<ScheduledCond>)>,
}

/// Where one image sits in the job and which seeds made it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageSeeds {
    /// Position in the job (batch after batch).
    pub index: usize,
    /// The image's seed.
    pub seed: u64,
    /// The image's variation seed.
    pub subseed: u64,
}

impl<'a> Img2ImgJob<'a> {
    /// Validates `params` and resolves sampler, noise source and seeds (A1111
    /// `modules/processing.py: process_images_inner` before `p.init`: `get_fixed_seed`).
    pub fn prepare(
        model: &'a GenerationModel,
        registry: &'a SamplerRegistry,
        params: &'a GenerationRequest,
    ) -> Result<Self, JobError> {
        let downscale = model.downscale();
        params.validate(downscale)?;
        let source = rng_source(params.randn_source, model.device)?;
        check_refiner(model, params)?;
        // Align Your Steps has its own levels for SDXL (`modules/sd_schedulers.py`).
        let mut sampler = params.sampler.clone();
        sampler.schedule_options.sdxl = model.sd.architecture.family().is_sdxl();
        let plan = SamplingPlan::new(registry, &sampler, &model.levels)?;
        let seed = fixed_seed(params.seed, random_seed);
        let subseed = fixed_seed(params.subseed, random_seed);
        let total = params.n_iter * params.batch_size;
        let seeds = SeedList::new(seed, subseed, params.subseed_strength, total);
        let shape = [
            4,
            i64::from(params.height / downscale),
            i64::from(params.width / downscale),
        ];
        Ok(Self {
            model,
            registry,
            params,
            plan,
            source,
            seeds,
            shape,
            refiner_switched: std::cell::Cell::new(false),
        })
    }

    /// Prepares and encodes the init image once per job: mask, resize or crop, fill, VAE,
    /// and "latent noise" (A1111 `StableDiffusionProcessingImg2Img.init`).
    pub fn init_latents(
        &self,
        init_image: &RgbImage,
        mask: Option<&GrayImage>,
    ) -> Result<InitLatents, JobError> {
        let (model, params) = (self.model, self.params);
        let init = JobInit::new(model, params, init_image, mask)?;
        release_freed_memory(model.device);
        let latent_noise = match (&init.inpaint, params.inpaint.masked_content) {
            (Some(_), MaskedContent::LatentNoise) => Some(
                ImageRng::with_source(
                    self.seeds.batch(0, params.batch_size).0,
                    self.shape,
                    self.source,
                )?
                .first()?
                .to_device(model.device),
            ),
            _ => None,
        };
        Ok(InitLatents { init, latent_noise })
    }

    /// Activates the networks the prompt's tags name (A1111 `extra_networks.activate`): the
    /// weights are patched before the prompts are encoded, so the text encoder sees them too.
    /// A refiner gets them as well (A1111's network hooks patch whatever model runs); its
    /// warnings join the job's.
    pub fn activate_networks(&self) -> JobNetworks {
        let mut networks = activate_extra_networks(self.model, &self.params.prompt);
        if let Some(refiner) = self.refiner() {
            let theirs = activate_extra_networks(refiner, &self.params.prompt);
            networks.warnings.extend(
                theirs
                    .warnings
                    .iter()
                    .map(|w| format!("refiner {}: {w}", refiner.name)),
            );
            networks.refiner = Some(Box::new(theirs));
        }
        networks
    }

    /// The refiner the job hands over to, when it names one.
    pub fn refiner(&self) -> Option<&'a GenerationModel> {
        if self.params.refiner_checkpoint.is_empty() {
            return None;
        }
        self.model.refiner.as_deref()
    }

    /// Encodes prompt (its extra-network tags taken out by `networks`) and negative prompt with
    /// CLIP, scheduled per model call (A1111 `StableDiffusionProcessing.setup_conds`, cached
    /// across batches as A1111 caches them).
    pub fn condition(&self, networks: &JobNetworks) -> Result<JobConditioning, JobError> {
        let mut conditioning = self.condition_for(self.model, networks)?;
        // The refiner's own encoders (A1111 re-runs `setup_conds` after the switch; the same
        // prompts give the same conditioning earlier).
        if let (Some(refiner), Some(theirs)) = (self.refiner(), &networks.refiner) {
            let encoded = self.condition_for(refiner, theirs)?;
            conditioning.refiner = Some((encoded.cond, encoded.uncond));
        }
        Ok(conditioning)
    }

    /// The prompts encoded by `model`'s text encoders.
    fn condition_for(
        &self,
        model: &GenerationModel,
        networks: &JobNetworks,
    ) -> Result<JobConditioning, JobError> {
        let params = self.params;
        let prompt = &networks.prompt;
        let conditioner =
            Conditioner::new(&model.sd.text, networks.embeddings(model), params.clip_skip)
                .with_size(i64::from(params.width), i64::from(params.height));
        // Prompt schedules count model calls: twice per step for second-order samplers.
        let second_order = self.plan.sampler.info.second_order;
        let schedule_steps = params.sampler.steps * if second_order { 2 } else { 1 };
        let (cond, uncond) = guarded("prompt encoding", || {
            Ok::<_, ConditioningError>((
                conditioner.multicond(prompt, schedule_steps)?,
                conditioner.negative_schedule(&params.negative_prompt, schedule_steps)?,
            ))
        })??;
        let used = conditioner.embeddings_used(prompt, &params.negative_prompt, schedule_steps);
        Ok(JobConditioning {
            cond,
            uncond,
            ti_hashes: ti_hashes(used.iter().map(|e| e.as_ref())),
            lora_hashes: networks.lora_hashes.clone(),
            refiner: None,
        })
    }

    /// Samples batch `batch` (from 0): its seeds' noise over its init latents, the sampler,
    /// and for inpainting the kept area put back (A1111
    /// `StableDiffusionProcessingImg2Img.sample`). Reports each step to `observe`; `None` when
    /// it answered [`Flow::Cancel`] or `stop` cancelled the job; an interrupt or skip gives
    /// the last denoised prediction (A1111's `last_latent`).
    pub fn sample(
        &self,
        init: &InitLatents,
        conditioning: &JobConditioning,
        batch: usize,
        stop: &JobStop,
        observe: &mut dyn FnMut(JobEvent<'_>) -> Flow,
    ) -> Result<Option<Tensor>, JobError> {
        let (model, params, plan) = (self.model, self.params, &self.plan);
        let (InitLatents { init, latent_noise }, info) = (init, plan.sampler.info);
        let (batch_seeds, batch_subseeds) = self.seeds.batch(batch, params.batch_size);
        let mut rng = ImageRng::with_source(batch_seeds, self.shape, self.source)?
            .with_variation(Variation {
                subseeds: batch_subseeds.to_vec(),
                strength: params.subseed_strength,
                resize_from: params
                    .seed_resize_from()
                    .map(|(w, h)| (i64::from(h), i64::from(w))),
            })
            .with_ensd(params.eta_noise_seed_delta);
        let noise = rng.first()?.to_device(model.device) * params.initial_noise_multiplier;
        let latents = batch_seeds
            .iter()
            .map(|&s| init.image_latents(s))
            .collect::<Result<Vec<_>, _>>()?;
        let init_latent = guarded("init latent", || {
            let stacked = Tensor::cat(&latents.iter().map(|l| &l.init).collect::<Vec<_>>(), 0);
            match (&init.latent_mask, params.inpaint.masked_content) {
                (Some((keep, regenerate)), MaskedContent::LatentNoise) => {
                    let first = latent_noise.as_ref().expect("made for latent noise");
                    let noise = first.narrow(0, 0, stacked.size()[0]);
                    &stacked * keep + noise * regenerate
                }
                (Some((keep, _)), MaskedContent::LatentNothing) => &stacked * keep,
                _ => stacked,
            }
        })?;
        let x = plan.start_latent(&init_latent, &noise);
        let mut job_noise = JobNoise::new(rng, model.device, Kind::Float);
        if info.brownian {
            let (sigma_min, sigma_max) = plan.brownian_range();
            let tree = BrownianTreeNoise::new(
                batch_seeds,
                self.shape,
                self.source,
                model.device,
                sigma_min,
                sigma_max,
            )
            .map_err(|error| match error {
                BrownianError::Rng(error) => JobError::from(error),
                BrownianError::Torch(error) => JobError::torch("Brownian tree", error.to_string()),
                other => JobError::Unsupported(other.to_string()),
            })?;
            job_noise = job_noise.with_brownian(Box::new(tree));
        }
        let guidance = Guidance {
            conds: batch_seeds
                .iter()
                .map(|_| share_parts(&conditioning.cond))
                .collect(),
            unconds: batch_seeds
                .iter()
                .map(|_| share_schedule(&conditioning.uncond))
                .collect(),
            cfg_scale: params.cfg_scale,
        };
        let mut denoiser = CfgDenoiser::new(
            &model.sd.unet,
            &model.levels,
            model.prediction.prediction,
            guidance,
        );
        if let Some((keep, regenerate)) = &init.latent_mask {
            denoiser = denoiser.latent_mask(LatentMask {
                init_latent: init_latent.shallow_clone(),
                keep: keep.shallow_clone(),
                regenerate: regenerate.shallow_clone(),
                before_denoising: info.input == ScheduleInput::Timesteps,
            });
        }
        if init.uses_inpainting_conditioning() {
            let conditioning: Vec<&Tensor> = latents
                .iter()
                .filter_map(|l| l.conditioning.as_ref())
                .collect();
            denoiser = denoiser.image_conditioning(guarded("inpainting conditioning", || {
                Tensor::cat(&conditioning, 0).to_kind(model.kind)
            })?);
        }
        if let (Some(refiner), Some((cond, uncond))) = (self.refiner(), &conditioning.refiner) {
            denoiser = denoiser.refiner(RefinerStage {
                unet: &refiner.sd.unet,
                prediction: refiner.prediction.prediction,
                guidance: Guidance {
                    conds: batch_seeds.iter().map(|_| share_parts(cond)).collect(),
                    unconds: batch_seeds.iter().map(|_| share_schedule(uncond)).collect(),
                    cfg_scale: params.cfg_scale,
                },
                switch_at: params.refiner_switch_at,
            });
        }
        let mut step = 0;
        let mut observer_cancelled = false;
        let request = SampleRequest {
            cancel: Some(stop.sampler_flag()),
            ..plan.request(x)
        };
        let sampled = self.registry.sample(
            plan.sampler,
            request,
            &mut denoiser,
            &mut job_noise,
            &mut |report| {
                step += 1;
                let flow = observe(JobEvent::Step {
                    batch,
                    step,
                    denoised: report.denoised,
                });
                observer_cancelled |= flow == Flow::Cancel;
                flow
            },
        );
        if denoiser.switched_to_refiner() {
            self.refiner_switched.set(true);
        }
        let samples = match sampled {
            Ok(samples) => samples,
            Err(SamplingError::Cancelled) if observer_cancelled => return Ok(None),
            // A1111's `launch_sampling` returns `last_latent`: the last denoised prediction,
            // or the init latent before the first model call.
            Err(SamplingError::Cancelled) => match stop.batch_stop() {
                BatchStop::Drop => return Ok(None),
                BatchStop::KeepAndEnd | BatchStop::KeepAndGoOn => denoiser
                    .last_denoised()
                    .unwrap_or_else(|| init_latent.shallow_clone()),
            },
            Err(error) => return Err(JobError::from(error)),
        };
        // The kept area is exactly the init latent again.
        let samples = match &init.latent_mask {
            Some((keep, regenerate)) => guarded("inpainting mask", || {
                samples * regenerate + &init_latent * keep
            })?,
            None => samples,
        };
        Ok(Some(samples))
    }

    /// Decodes a batch's latents with the VAE to 8-bit images, truncated as A1111 truncates
    /// (A1111 `modules/processing.py: decode_latent_batch`).
    pub fn decode(&self, samples: Tensor) -> Result<Vec<RgbImage>, JobError> {
        self.decode_with_warning(samples).map(|(images, _)| images)
    }

    /// [`Img2ImgJob::decode`], with the warning of a switch to an fp32 VAE after NaN in fp16.
    pub fn decode_with_warning(
        &self,
        samples: Tensor,
    ) -> Result<(Vec<RgbImage>, Option<String>), JobError> {
        let model = self.model;
        guarded("VAE decode", || {
            model.decode(&samples, self.params.vae_tiling())
        })?
        .map_err(|e| JobError::Torch {
            stage: "VAE decode",
            message: e.to_string(),
        })
    }

    /// One image's infotext and place in the job (A1111 `modules/processing.py:
    /// create_infotext`; saving, A1111's `images.save_image`, is the front end's).
    pub fn finish_image(
        &self,
        init: &JobInit,
        conditioning: &JobConditioning,
        seeds: ImageSeeds,
        image: RgbImage,
        patch: Option<Patch>,
    ) -> GeneratedImage {
        let model = self.model;
        let infotext = self.params.infotext(&ImageFacts {
            seed: seeds.seed,
            subseed: seeds.subseed,
            sampler: self.plan.sampler.info,
            schedule_label: &self.plan.schedule_label,
            discard_penultimate: self.plan.discard_penultimate,
            model: (&model.name, &model.hash),
            vae: model
                .external_vae()
                .map(|vae| (vae.name.as_str(), vae.hash.as_str())),
            ti_hashes: conditioning.ti_hashes.clone(),
            lora_hashes: conditioning.lora_hashes.clone(),
            refiner: self
                .refiner()
                .filter(|_| self.refiner_switched.get())
                .map(GenerationModel::short_title),
            inpainting: init.inpaint.is_some(),
            inpainting_conditioning: init.uses_inpainting_conditioning(),
        });
        GeneratedImage {
            index: seeds.index,
            seed: seeds.seed,
            image,
            patch,
            infotext,
        }
    }
}

/// A job naming a refiner needs it loaded (front ends load it by name) and in the model's
/// latent space: the latent is handed over as it is.
fn check_refiner(model: &GenerationModel, params: &GenerationRequest) -> Result<(), JobError> {
    if params.refiner_checkpoint.is_empty() {
        return Ok(());
    }
    let Some(refiner) = model.refiner.as_deref() else {
        return Err(JobError::Unsupported(format!(
            "the refiner \"{}\" is not loaded",
            params.refiner_checkpoint
        )));
    };
    let scale = |m: &GenerationModel| m.sd.vae.config().scaling_factor;
    if scale(refiner) != scale(model) {
        return Err(JobError::Unsupported(format!(
            "the refiner {} ({}) works in another latent space than {} ({})",
            refiner.name,
            refiner.sd.architecture.family_name(),
            model.name,
            model.sd.architecture.family_name()
        )));
    }
    let (theirs, ours) = (
        refiner.sd.architecture.unet.in_channels,
        model.sd.architecture.unet.in_channels,
    );
    if theirs != 4 && theirs != ours {
        return Err(JobError::Unsupported(format!(
            "the refiner {} takes {theirs} input channels, {} gives {ours}",
            refiner.name, model.name
        )));
    }
    Ok(())
}

/// Colour correction, then for inpainting the composite over the original and the editor's
/// patch (A1111 `modules/processing.py: apply_color_correction`, `apply_overlay`).
pub fn composite(init: &JobInit, generated: RgbImage) -> (RgbImage, Option<Patch>) {
    let generated = match &init.color_correction {
        Some(correction) => correction.apply(&generated),
        None => generated,
    };
    match &init.inpaint {
        Some(prepared) => (
            prepared.composite(&generated),
            Some(prepared.patch(&generated)),
        ),
        None => (generated, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prepare::inpaint::InpaintSettings;
    use crate::sampling::plan::SamplerSettings;
    use crate::sampling::plugins::PluginPaths;
    use crate::tiny_model::{write_tiny_model, Preset, TinyModelSpec};
    use image::{GrayImage, Luma, Rgb};

    fn tiny_model(dir: &std::path::Path) -> GenerationModel {
        let path = dir.join("tiny.safetensors");
        let spec = TinyModelSpec {
            preset: Preset::Tiny,
            inpainting: false,
            seed: 7,
            storage: Kind::Float,
        };
        write_tiny_model(&spec, &path).expect("write the tiny model");
        GenerationModel::load(&path, Device::Cpu, Kind::Float, None).expect("load it")
    }

    fn registry() -> SamplerRegistry {
        SamplerRegistry::load(&PluginPaths {
            builtin: PluginPaths::discover(None).builtin,
            folder: None,
        })
    }

    fn picture() -> (RgbImage, GrayImage) {
        let image = RgbImage::from_fn(80, 64, |x, y| Rgb([(x * 3) as u8, (y * 4) as u8, 90]));
        let mask = GrayImage::from_fn(80, 64, |x, y| {
            Luma([if (20..50).contains(&x) && (16..40).contains(&y) {
                255
            } else {
                0
            }])
        });
        (image, mask)
    }

    /// Inpainting with "latent noise", colour correction and an ancestral sampler, two batches
    /// of two: every branch of the stages that a tiny model can take.
    fn params() -> GenerationRequest {
        GenerationRequest {
            prompt: "a [red:blue:2] cat".into(),
            negative_prompt: "blurry".into(),
            width: 64,
            height: 64,
            seed: 1234,
            batch_size: 2,
            n_iter: 2,
            img2img_color_correction: true,
            inpaint: InpaintSettings {
                masked_content: MaskedContent::LatentNoise,
                ..InpaintSettings::default()
            },
            sampler: SamplerSettings {
                sampler: "Euler a".into(),
                steps: 4,
                denoising_strength: 0.8,
                ..SamplerSettings::default()
            },
            ..GenerationRequest::default()
        }
    }

    #[test]
    fn the_stages_called_one_by_one_make_the_job_of_run_img2img() {
        let _guard = tch::no_grad_guard();
        let dir = tempfile::tempdir().unwrap();
        let (model, registry, params) = (tiny_model(dir.path()), registry(), params());
        let (image, mask) = picture();
        let whole = run_img2img(
            &model,
            &registry,
            &params,
            &image,
            Some(&mask),
            &JobStop::new(),
            &mut |_| Flow::Continue,
        )
        .expect("the job runs");

        let job = Img2ImgJob::prepare(&model, &registry, &params).unwrap();
        let init = job.init_latents(&image, Some(&mask)).unwrap();
        assert!(init.latent_noise.is_some());
        let networks = job.activate_networks();
        assert!(networks.warnings.is_empty());
        let conditioning = job.condition(&networks).unwrap();
        let mut by_stage = Vec::new();
        for batch in 0..params.n_iter {
            let mut steps = 0;
            let samples = job
                .sample(&init, &conditioning, batch, &JobStop::new(), &mut |_| {
                    steps += 1;
                    Flow::Continue
                })
                .unwrap()
                .expect("not cancelled");
            assert_eq!(steps, job.plan.steps_run);
            assert_eq!(samples.size(), [2, 4, 8, 8]);
            let (seeds, subseeds) = job.seeds.batch(batch, params.batch_size);
            for (i, generated) in job.decode(samples).unwrap().into_iter().enumerate() {
                let (pixels, patch) = composite(&init.init, generated);
                let seeds = ImageSeeds {
                    index: by_stage.len(),
                    seed: seeds[i],
                    subseed: subseeds[i],
                };
                by_stage.push(job.finish_image(&init.init, &conditioning, seeds, pixels, patch));
            }
        }

        assert_eq!(whole.images.len(), 4);
        assert_eq!(by_stage.len(), 4);
        for (a, b) in whole.images.iter().zip(&by_stage) {
            assert_eq!((a.index, a.seed), (b.index, b.seed));
            assert_eq!(a.image, b.image, "image {}", a.index);
            assert_eq!(a.infotext, b.infotext);
            let (pa, pb) = (a.patch.as_ref().unwrap(), b.patch.as_ref().unwrap());
            assert_eq!((&pa.image, pa.x, pa.y), (&pb.image, pb.x, pb.y));
        }
        assert_eq!(by_stage[1].seed, 1235);
        assert!(by_stage[0].infotext.to_text().contains("Seed: 1234"));
    }

    #[test]
    fn prepare_refuses_what_cannot_run_before_touching_the_image() {
        let dir = tempfile::tempdir().unwrap();
        let (model, registry) = (tiny_model(dir.path()), registry());
        let gpu = GenerationRequest {
            randn_source: RngChoice::Gpu,
            ..params()
        };
        assert!(matches!(
            Img2ImgJob::prepare(&model, &registry, &gpu),
            Err(JobError::Unsupported(_))
        ));
        let empty = GenerationRequest {
            batch_size: 0,
            ..params()
        };
        assert!(matches!(
            Img2ImgJob::prepare(&model, &registry, &empty),
            Err(JobError::InvalidParams(_))
        ));
        let unknown = GenerationRequest {
            sampler: SamplerSettings {
                sampler: "No such sampler".into(),
                ..params().sampler
            },
            ..params()
        };
        assert!(matches!(
            Img2ImgJob::prepare(&model, &registry, &unknown),
            Err(JobError::Plan(_))
        ));
    }

    #[test]
    fn sample_stops_when_the_observer_cancels() {
        let _guard = tch::no_grad_guard();
        let dir = tempfile::tempdir().unwrap();
        let (model, registry, params) = (tiny_model(dir.path()), registry(), params());
        let (image, _) = picture();
        let job = Img2ImgJob::prepare(&model, &registry, &params).unwrap();
        let init = job.init_latents(&image, None).unwrap();
        assert!(init.latent_noise.is_none(), "no mask, no latent noise");
        let conditioning = job.condition(&job.activate_networks()).unwrap();
        let sampled = job
            .sample(&init, &conditioning, 0, &JobStop::new(), &mut |_| {
                Flow::Cancel
            })
            .unwrap();
        assert!(sampled.is_none());
    }

    /// Runs the job of `params()` on the picture, calling `request` on `stop` at step 2 of
    /// the first batch; returns the outcome and the steps each batch ran.
    fn stopped_job(request: fn(&JobStop)) -> (JobOutcome, Vec<usize>) {
        let dir = tempfile::tempdir().unwrap();
        let (model, registry, params) = (tiny_model(dir.path()), registry(), params());
        let (image, mask) = picture();
        let stop = JobStop::new();
        let mut steps = vec![0; params.n_iter];
        let outcome = run_img2img(
            &model,
            &registry,
            &params,
            &image,
            Some(&mask),
            &stop,
            &mut |event| {
                if let JobEvent::Step { batch, step, .. } = event {
                    steps[batch] = step;
                    if (batch, step) == (0, 2) {
                        request(&stop);
                    }
                }
                Flow::Continue
            },
        )
        .expect("the job runs");
        (outcome, steps)
    }

    #[test]
    fn interrupt_returns_the_running_batch_and_drops_the_rest() {
        let (outcome, steps) = stopped_job(JobStop::interrupt);
        assert!(outcome.interrupted && !outcome.cancelled);
        assert_eq!(outcome.images.len(), 2, "the first batch, decoded");
        assert_eq!(steps, [2, 0]);
    }

    #[test]
    fn skip_returns_the_running_batch_and_goes_on() {
        let (outcome, steps) = stopped_job(JobStop::skip);
        assert!(!outcome.interrupted && !outcome.cancelled);
        assert_eq!(outcome.images.len(), 4);
        let full = params().sampler.steps * 4 / 5 + 1;
        assert_eq!(steps, [2, full], "the second batch samples every step");
    }

    #[test]
    fn cancel_drops_the_running_batch() {
        let (outcome, steps) = stopped_job(JobStop::cancel);
        assert!(outcome.cancelled && !outcome.interrupted);
        assert!(outcome.images.is_empty());
        assert_eq!(steps, [2, 0]);
    }
}
