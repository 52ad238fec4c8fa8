//! What img2img and txt2img jobs share (A1111 `modules/processing.py: process_images_inner`
//! and the parts of `StableDiffusionProcessing` both use): the job's settings resolved, its
//! events and outcome, extra networks, prompt conditioning, one sampling pass over a batch
//! (noise, guidance, refiner, stop), and decoding.

use sdhost_plugin_api::Flow;
use tch::{Device, Kind, Tensor};

use super::error::guarded;
use super::extra_networks::{activate_extra_networks, JobNetworks};
use super::model::GenerationModel;
use super::stop::{BatchStop, JobStop};
use crate::device::release_freed_memory;
use crate::extra_networks::hypernetwork::ActiveHypernetworks;
use crate::extra_networks::parse_prompt;
use crate::infotext::Infotext;
use crate::models::unet::TokenMerging;
use crate::prepare::inpaint::Patch;
use crate::prompt::cache::{CachedConditioning, CondKey, ConditioningCache};
use crate::prompt::conditioning::{CondPart, Conditioner, ConditioningError, ScheduledCond};
use crate::prompt::embeddings::ti_hashes;
use crate::request::{GenerationRequest, HiresFacts, ImageFacts, RngChoice};
use crate::rng::{fixed_seed, random_seed, ImageRng, RngSource, SeedList, Variation};
use crate::sampling::brownian::{BrownianError, BrownianTreeNoise};
use crate::sampling::denoiser::{CfgDenoiser, Guidance, LatentMask, RefinerStage};
use crate::sampling::noise::JobNoise;
use crate::sampling::plan::{SamplerSettings, SamplingPlan};
use crate::sampling::plugins::{SampleRequest, SamplerRegistry, SamplingError};
use image::RgbImage;

pub use super::error::JobError;

/// Progress reported while a job runs.
pub enum JobEvent<'a> {
    /// The job is set up: how many images, and sampler steps per batch.
    Started {
        images: usize,
        batches: usize,
        /// Every step of a batch, its Hires. fix pass included.
        steps_per_batch: usize,
        /// Of those, the Hires. fix pass's (0 without one): A1111 counts that pass as a job
        /// of its own, so its job count is twice the batch count.
        hires_steps: usize,
    },
    /// Batch `batch` (from 0) finished sampler step `step` (from 1; a Hires. fix pass goes
    /// on counting after the first pass's steps).
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

impl JobOutcome {
    /// A job that ran to its end, or until an interrupt.
    pub fn ended(images: Vec<GeneratedImage>, warnings: Vec<String>, stop: &JobStop) -> Self {
        JobOutcome {
            images,
            cancelled: stop.is_cancelled(),
            interrupted: stop.is_interrupted() && !stop.is_cancelled(),
            warnings,
        }
    }

    /// A cancelled job: the images finished before.
    pub fn cancelled(images: Vec<GeneratedImage>, warnings: Vec<String>) -> Self {
        JobOutcome {
            images,
            cancelled: true,
            interrupted: false,
            warnings,
        }
    }
}

/// The extra networks of a running job: LoRAs patched, hypernetworks set until it is dropped.
pub struct ActiveNetworks {
    /// What the LoRA stage gives the prompts.
    pub networks: JobNetworks,
    /// Held for the job: the hypernetworks are cleared when it ends, however it ends.
    pub hypernetworks: ActiveHypernetworks,
    /// The warnings of both.
    pub warnings: Vec<String>,
}

/// The source of per-image noise for a model on `device`.
pub(super) fn rng_source(choice: RngChoice, device: Device) -> Result<RngSource, JobError> {
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
pub(super) fn share_parts(parts: &[CondPart]) -> Vec<CondPart> {
    parts
        .iter()
        .map(|part| CondPart {
            schedule: share_schedule(&part.schedule),
            weight: part.weight,
        })
        .collect()
}

pub(super) fn share_schedule(schedule: &[ScheduledCond]) -> Vec<ScheduledCond> {
    schedule
        .iter()
        .map(|s| ScheduledCond {
            end_at_step: s.end_at_step,
            cond: s.cond.shallow_clone(),
        })
        .collect()
}

/// A job with its settings resolved, before any image work: the stages of
/// [`run_img2img`](super::img2img::run_img2img) and
/// [`run_txt2img`](super::txt2img::run_txt2img) are its methods, each callable on its own.
pub struct GenerationJob<'a> {
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
    pub(super) refiner_switched: std::cell::Cell<bool>,
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

impl JobConditioning {
    /// The model's prompt parts and negative prompt.
    fn own_prompts(&self) -> Option<(&[CondPart], &[ScheduledCond])> {
        Some((&self.cond, &self.uncond))
    }

    /// The refiner's, when the job has one.
    fn refiner_prompts(&self) -> Option<(&[CondPart], &[ScheduledCond])> {
        self.refiner
            .as_ref()
            .map(|(cond, uncond)| (cond.as_slice(), uncond.as_slice()))
    }
}

/// Chooses a conditioning's prompt parts and negative prompt (the model's or the refiner's).
type PickPrompts = fn(&JobConditioning) -> Option<(&[CondPart], &[ScheduledCond])>;

/// The prompts of each image of a batch: a job's own batch shares one conditioning; a joint
/// batch of queued jobs (`pipeline/joint.rs`) gives each image its job's.
#[derive(Clone)]
pub struct BatchPrompts<'p> {
    images: Vec<&'p JobConditioning>,
}

impl<'p> BatchPrompts<'p> {
    /// `images` images with the same prompts.
    pub fn shared(conditioning: &'p JobConditioning, images: usize) -> Self {
        BatchPrompts {
            images: vec![conditioning; images],
        }
    }

    /// One conditioning per image, in batch order.
    pub fn per_image(images: Vec<&'p JobConditioning>) -> Self {
        BatchPrompts { images }
    }

    /// The images' guidance: `pick` chooses a conditioning's prompts (the model's or the
    /// refiner's); `None` when an image has none for it.
    fn guidance(&self, cfg_scale: f64, pick: PickPrompts) -> Option<Guidance> {
        let mut conds = Vec::with_capacity(self.images.len());
        let mut unconds = Vec::with_capacity(self.images.len());
        for conditioning in &self.images {
            let (cond, uncond) = pick(conditioning)?;
            conds.push(share_parts(cond));
            unconds.push(share_schedule(uncond));
        }
        Some(Guidance {
            conds,
            unconds,
            cfg_scale,
        })
    }
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

/// What a pass's prompts are encoded for: its prompts, steps and image size.
pub struct PromptSetting<'p> {
    /// The prompt to encode, its extra-network tags taken out.
    pub prompt: &'p str,
    /// The negative prompt.
    pub negative_prompt: &'p str,
    /// The pass's sampling steps (the full schedule's, as A1111 counts prompt schedules).
    pub steps: usize,
    /// Whether its sampler calls the model twice per step.
    pub second_order: bool,
    /// The pass's image size (SDXL's size conditioning).
    pub size: (u32, u32),
}

/// What an image's infotext says that depends on the kind of job.
pub struct ImageKind {
    /// The job had a mask.
    pub inpainting: bool,
    /// The model took inpainting conditioning.
    pub inpainting_conditioning: bool,
    /// A txt2img image: `Some`, with its Hires. fix facts when the job had one.
    pub txt2img: Option<Option<HiresFacts>>,
}

/// One sampling pass over one batch: where it starts and what guides it.
pub struct SamplingPass<'p> {
    /// The plan the pass walks.
    pub plan: &'p SamplingPlan<'p>,
    /// The starting latent (noised as the plan says).
    pub x: Tensor,
    /// The batch's noise generators, past their first draw.
    pub rng: ImageRng,
    /// The batch's seeds (the Brownian tree's).
    pub seeds: &'p [u64],
    /// One image's latent shape.
    pub shape: [i64; 3],
    /// Each image's prompts.
    pub conditioning: BatchPrompts<'p>,
    /// Whether the refiner may take over in this pass.
    pub refiner: bool,
    /// Inpainting's blend with the init latent.
    pub latent_mask: Option<LatentMask>,
    /// An inpainting model's extra channels.
    pub image_conditioning: Option<Tensor>,
    /// What an interrupt before the first model call returns (A1111's first `last_latent`).
    pub last_latent: Tensor,
    /// The batch (from 0).
    pub batch: usize,
    /// Steps of the batch before this pass (its step events go on from there).
    pub steps_before: usize,
    /// Token merging in the UNet's calls (A1111 patches the model with the pass's ratio).
    pub token_merging: Option<TokenMerging>,
}

impl<'a> GenerationJob<'a> {
    /// Validates `params` and resolves noise source, seeds and the sampling plan that `plan`
    /// makes from the job's sampler settings (A1111 `process_images_inner` before `p.init`:
    /// `get_fixed_seed`).
    pub fn with_plan(
        model: &'a GenerationModel,
        registry: &'a SamplerRegistry,
        params: &'a GenerationRequest,
        plan: impl FnOnce(&SamplerSettings) -> Result<SamplingPlan<'a>, JobError>,
    ) -> Result<Self, JobError> {
        let downscale = model.downscale();
        params.validate(downscale)?;
        let source = rng_source(params.randn_source, model.device)?;
        check_refiner(model, params)?;
        let plan = plan(&family_settings(model, &params.sampler))?;
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

    /// Activates the networks the prompt's tags name (A1111 `extra_networks.activate`): the
    /// weights are patched before the prompts are encoded, so the text encoder sees them too.
    /// A refiner gets them as well (A1111's network hooks patch whatever model runs); its
    /// warnings join the job's.
    pub fn activate_networks(&self) -> JobNetworks {
        self.activate_networks_for(&self.params.prompt)
    }

    /// [`Self::activate_networks`] for another prompt (the Hires. fix prompt).
    pub fn activate_networks_for(&self, prompt: &str) -> JobNetworks {
        let mut networks = activate_extra_networks(self.model, prompt);
        if let Some(refiner) = self.refiner() {
            let theirs = activate_extra_networks(refiner, prompt);
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

    /// Activates the prompt's networks, LoRAs and hypernetworks, before the prompts are
    /// encoded (A1111 `extra_networks.activate` in `process_images_inner`).
    pub fn activate_all_networks(&self) -> ActiveNetworks {
        let networks = self.activate_networks();
        let hypernetworks = self
            .model
            .activate_hypernetworks(&parse_prompt(&self.params.prompt).1);
        let mut warnings = networks.warnings.clone();
        warnings.extend(hypernetworks.warnings().iter().cloned());
        ActiveNetworks {
            networks,
            hypernetworks,
            warnings,
        }
    }

    /// Decodes a batch and makes each image with `finish` from its pixels and seeds,
    /// reporting it to `observe` and adding it to `images` (a VAE's fp32 switch joins
    /// `warnings`).
    pub fn finish_batch(
        &self,
        batch: usize,
        samples: Tensor,
        (images, warnings): (&mut Vec<GeneratedImage>, &mut Vec<String>),
        observe: &mut dyn FnMut(JobEvent<'_>) -> Flow,
        finish: &mut dyn FnMut(ImageSeeds, RgbImage) -> GeneratedImage,
    ) -> Result<(), JobError> {
        release_freed_memory(self.model.device);
        let (decoded, warning) = self.decode_with_warning(samples)?;
        if let Some(warning) = warning {
            observe(JobEvent::Warning(&warning));
            warnings.push(warning);
        }
        let (seeds, subseeds) = self.seeds.batch(batch, self.params.batch_size);
        for ((image, &seed), &subseed) in decoded.into_iter().zip(seeds).zip(subseeds) {
            let seeds = ImageSeeds {
                index: images.len(),
                seed,
                subseed,
            };
            let generated = finish(seeds, image);
            observe(JobEvent::Image(&generated));
            images.push(generated);
        }
        Ok(())
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
        let params = self.params;
        self.condition_prompts(
            networks,
            &PromptSetting {
                prompt: &networks.prompt,
                negative_prompt: &params.negative_prompt,
                steps: params.sampler.steps,
                second_order: self.plan.sampler.info.second_order,
                size: (params.width, params.height),
            },
        )
    }

    /// Encodes the prompt of `networks` and the negative prompt of `setting` (the Hires. fix
    /// pass's prompts, step count and size; A1111 `calculate_hr_conds`).
    pub fn condition_prompts(
        &self,
        networks: &JobNetworks,
        setting: &PromptSetting<'_>,
    ) -> Result<JobConditioning, JobError> {
        let mut conditioning = self.condition_for(self.model, networks, setting)?;
        // The refiner's own encoders (A1111 re-runs `setup_conds` after the switch; the same
        // prompts give the same conditioning earlier).
        if let (Some(refiner), Some(theirs)) = (self.refiner(), &networks.refiner) {
            let encoded = self.condition_for(refiner, theirs, setting)?;
            conditioning.refiner = Some((encoded.cond, encoded.uncond));
        }
        Ok(conditioning)
    }

    /// The prompts encoded by `model`'s text encoders.
    fn condition_for(
        &self,
        model: &GenerationModel,
        networks: &JobNetworks,
        setting: &PromptSetting<'_>,
    ) -> Result<JobConditioning, JobError> {
        let params = self.params;
        let prompt = setting.prompt;
        let negative = setting.negative_prompt;
        let (width, height) = setting.size;
        let embeddings = networks.embeddings(model);
        let conditioner = Conditioner::new(&model.sd.text, embeddings, params.clip_skip)
            .with_size(i64::from(width), i64::from(height));
        // Prompt schedules count model calls: twice per step for second-order samplers.
        let schedule_steps = setting.steps * if setting.second_order { 2 } else { 1 };
        let key = CondKey {
            prompt: prompt.to_string(),
            negative_prompt: negative.to_string(),
            clip_skip: params.clip_skip,
            schedule_calls: schedule_steps,
            size: model.sd.text.uses_size().then_some(setting.size),
            embeddings: embeddings.fingerprint(),
            networks: networks.lora_set.clone(),
        };
        let cached = lock_cache(model).get(&key);
        let encoded = match cached {
            Some(encoded) => encoded,
            None => {
                let (cond, uncond) = guarded("prompt encoding", || {
                    Ok::<_, ConditioningError>((
                        conditioner.multicond(prompt, schedule_steps)?,
                        conditioner.negative_schedule(negative, schedule_steps)?,
                    ))
                })??;
                let used = conditioner.embeddings_used(prompt, negative, schedule_steps);
                let encoded = CachedConditioning {
                    cond,
                    uncond,
                    ti_hashes: ti_hashes(used.iter().map(|e| e.as_ref())),
                };
                lock_cache(model).insert(key, encoded.share());
                encoded
            }
        };
        Ok(JobConditioning {
            cond: encoded.cond,
            uncond: encoded.uncond,
            ti_hashes: encoded.ti_hashes,
            lora_hashes: networks.lora_hashes.clone(),
            refiner: None,
        })
    }

    /// The batch's noise generators at latent shape `shape`: the seeds, variation seeds with
    /// their strength, "resize seed from" and ENSD (A1111 `modules/rng.py: ImageRNG`).
    pub fn batch_rng(&self, batch: usize, shape: [i64; 3]) -> Result<ImageRng, JobError> {
        let params = self.params;
        let (seeds, subseeds) = self.seeds.batch(batch, params.batch_size);
        Ok(ImageRng::with_source(seeds, shape, self.source)?
            .with_variation(Variation {
                subseeds: subseeds.to_vec(),
                strength: params.subseed_strength,
                resize_from: params
                    .seed_resize_from()
                    .map(|(w, h)| (i64::from(h), i64::from(w))),
            })
            .with_ensd(params.eta_noise_seed_delta))
    }

    /// Runs one sampling pass (A1111 `launch_sampling`): CFG over the prompts, the refiner's
    /// hand-over, noise and Brownian tree, step events. `None` when the observer answered
    /// [`Flow::Cancel`] or `stop` cancelled; an interrupt or skip gives the last denoised
    /// prediction (A1111's `last_latent`).
    pub fn sample_pass(
        &self,
        pass: SamplingPass<'_>,
        stop: &JobStop,
        observe: &mut dyn FnMut(JobEvent<'_>) -> Flow,
    ) -> Result<Option<Tensor>, JobError> {
        let (model, params, plan) = (self.model, self.params, pass.plan);
        let info = plan.sampler.info;
        let seeds = pass.seeds;
        let mut job_noise = JobNoise::new(pass.rng, model.device, Kind::Float);
        if info.brownian {
            let (sigma_min, sigma_max) = plan.brownian_range();
            let tree = BrownianTreeNoise::new(
                seeds,
                pass.shape,
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
        let prompts = &pass.conditioning;
        if prompts.images.len() != seeds.len() {
            return Err(JobError::torch(
                "sampling",
                format!(
                    "prompts for {} images, a batch of {}",
                    prompts.images.len(),
                    seeds.len()
                ),
            ));
        }
        let guidance = prompts
            .guidance(params.cfg_scale, JobConditioning::own_prompts)
            .expect("every conditioning has the model's prompts");
        let mut denoiser = CfgDenoiser::new(
            &model.sd.unet,
            &model.levels,
            model.prediction.prediction,
            guidance,
        );
        if let Some(mask) = pass.latent_mask {
            denoiser = denoiser.latent_mask(mask);
        }
        if let Some(merging) = pass.token_merging {
            denoiser = denoiser.token_merging(merging);
        }
        if let Some(extra) = pass.image_conditioning {
            denoiser = denoiser.image_conditioning(extra);
        }
        let refiner = self.refiner().filter(|_| pass.refiner);
        let refiner_guidance = prompts.guidance(params.cfg_scale, JobConditioning::refiner_prompts);
        if let (Some(refiner), Some(guidance)) = (refiner, refiner_guidance) {
            denoiser = denoiser.refiner(RefinerStage {
                unet: &refiner.sd.unet,
                prediction: refiner.prediction.prediction,
                guidance,
                switch_at: params.refiner_switch_at,
            });
        }
        let (batch, mut step) = (pass.batch, pass.steps_before);
        let mut observer_cancelled = false;
        let request = SampleRequest {
            cancel: Some(stop.sampler_flag()),
            ..plan.request(pass.x)
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
        match sampled {
            Ok(samples) => Ok(Some(samples)),
            Err(SamplingError::Cancelled) if observer_cancelled => Ok(None),
            // A1111's `launch_sampling` returns `last_latent`: the last denoised prediction,
            // or what the pass started from before the first model call.
            Err(SamplingError::Cancelled) => match stop.batch_stop() {
                BatchStop::Drop => Ok(None),
                BatchStop::KeepAndEnd | BatchStop::KeepAndGoOn => {
                    Ok(Some(denoiser.last_denoised().unwrap_or(pass.last_latent)))
                }
            },
            Err(error) => Err(JobError::from(error)),
        }
    }

    /// One image's infotext and place in the job (A1111 `modules/processing.py:
    /// create_infotext`; saving, A1111's `images.save_image`, is the front end's).
    pub fn finish(
        &self,
        conditioning: &JobConditioning,
        seeds: ImageSeeds,
        (image, patch): (RgbImage, Option<Patch>),
        kind: ImageKind,
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
            inpainting: kind.inpainting,
            inpainting_conditioning: kind.inpainting_conditioning,
            txt2img: kind.txt2img,
        });
        GeneratedImage {
            index: seeds.index,
            seed: seeds.seed,
            image,
            patch,
            infotext,
        }
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
}

/// The model's prompt conditioning cache (a panic in an earlier encode leaves it whole: entries
/// are only added after encoding).
fn lock_cache(model: &GenerationModel) -> std::sync::MutexGuard<'_, ConditioningCache> {
    model
        .conditionings
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// Sampler settings as the model's family needs them: Align Your Steps has its own levels
/// for SDXL (`modules/sd_schedulers.py`).
pub fn family_settings(model: &GenerationModel, settings: &SamplerSettings) -> SamplerSettings {
    let mut settings = settings.clone();
    settings.schedule_options.sdxl = model.sd.architecture.family().is_sdxl();
    settings
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
