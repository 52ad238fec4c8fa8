//! One img2img job as A1111 runs it (`modules/processing.py: process_images_inner`,
//! `StableDiffusionProcessingImg2Img.init` and `.sample`): the init image is resized and
//! encoded once, then `n_iter` batches of `batch_size` images are sampled, each image from
//! its own seed, decoded and given its infotext.

use image::{GrayImage, RgbImage};
use sdhost_plugin_api::{Flow, ScheduleInput};
use tch::{Device, Kind, Tensor};

use super::decode::decode_latents;
use super::error::guarded;
use super::init::JobInit;
use super::model::GenerationModel;
use crate::device::release_freed_memory;
use crate::infotext::Infotext;
use crate::prepare::inpaint::{MaskedContent, Patch};
use crate::prompt::conditioning::{CondPart, Conditioner, ScheduledCond};
use crate::prompt::embeddings::ti_hashes;
use crate::request::{GenerationRequest, ImageFacts, RngChoice};
use crate::rng::{fixed_seed, random_seed, ImageRng, RngSource, SeedList, Variation};
use crate::sampling::brownian::{BrownianError, BrownianTreeNoise};
use crate::sampling::denoiser::{CfgDenoiser, Guidance, LatentMask, Prediction};
use crate::sampling::noise::JobNoise;
use crate::sampling::plan::SamplingPlan;
use crate::sampling::plugins::{SamplerRegistry, SamplingError};

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
    /// Whether the observer stopped it before the end.
    pub cancelled: bool,
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
/// after the current step, keeping the images already finished.
pub fn run_img2img(
    model: &GenerationModel,
    registry: &SamplerRegistry,
    params: &GenerationRequest,
    init_image: &RgbImage,
    mask: Option<&GrayImage>,
    observe: &mut dyn FnMut(JobEvent<'_>) -> Flow,
) -> Result<JobOutcome, JobError> {
    let _guard = tch::no_grad_guard();
    let downscale = model.downscale();
    params.validate(downscale)?;
    let source = rng_source(params.randn_source, model.device)?;
    let plan = SamplingPlan::new(registry, &params.sampler, &model.levels)?;
    let info = plan.sampler.info;

    let seed = fixed_seed(params.seed, random_seed);
    let subseed = fixed_seed(params.subseed, random_seed);
    let total = params.n_iter * params.batch_size;
    let seeds = SeedList::new(seed, subseed, params.subseed_strength, total);

    // Init once per job (A1111 `init`): mask, resize or crop, fill, encode.
    let shape = [
        4,
        i64::from(params.height / downscale),
        i64::from(params.width / downscale),
    ];
    let init = JobInit::new(model, params, init_image, mask)?;
    release_freed_memory(model.device);
    // "Latent noise" is the first batch's initial noise, also for later batches (A1111).
    let latent_noise = match (&init.inpaint, params.inpaint.masked_content) {
        (Some(_), MaskedContent::LatentNoise) => Some(
            ImageRng::with_source(seeds.batch(0, params.batch_size).0, shape, source)?
                .first()?
                .to_device(model.device),
        ),
        _ => None,
    };

    // Conditioning: prompt schedules count model calls (twice per step for second-order
    // samplers); A1111 caches them across the job's batches, as here.
    let conditioner = Conditioner {
        clip: &model.sd.clip,
        embeddings: &model.embeddings,
        clip_skip: params.clip_skip,
    };
    let schedule_steps = params.sampler.steps * if info.second_order { 2 } else { 1 };
    let (cond, uncond) = guarded("prompt encoding", || {
        (
            conditioner.multicond(&params.prompt, schedule_steps),
            conditioner.schedule(&params.negative_prompt, schedule_steps),
        )
    })?;
    let used = conditioner.embeddings_used(&params.prompt, &params.negative_prompt, schedule_steps);
    let ti = ti_hashes(used.iter().map(|e| e.as_ref()));

    observe(JobEvent::Started {
        images: total,
        batches: params.n_iter,
        steps_per_batch: plan.steps_run,
    });

    let mut images = Vec::with_capacity(total);
    for batch in 0..params.n_iter {
        let (batch_seeds, batch_subseeds) = seeds.batch(batch, params.batch_size);
        let mut rng = ImageRng::with_source(batch_seeds, shape, source)?
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
                shape,
                source,
                model.device,
                sigma_min,
                sigma_max,
            )
            .map_err(|error| match error {
                BrownianError::Rng(error) => JobError::Rng(error),
                BrownianError::Torch(error) => JobError::Torch {
                    stage: "Brownian tree",
                    message: error.to_string(),
                },
                other => JobError::Unsupported(other.to_string()),
            })?;
            job_noise = job_noise.with_brownian(Box::new(tree));
        }
        let guidance = Guidance {
            conds: batch_seeds.iter().map(|_| share_parts(&cond)).collect(),
            unconds: batch_seeds
                .iter()
                .map(|_| share_schedule(&uncond))
                .collect(),
            cfg_scale: params.cfg_scale,
        };
        let mut denoiser =
            CfgDenoiser::new(&model.sd.unet, &model.levels, Prediction::Epsilon, guidance);
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
        let mut step = 0;
        let sampled = registry.sample(
            plan.sampler,
            plan.request(x),
            &mut denoiser,
            &mut job_noise,
            &mut |report| {
                step += 1;
                observe(JobEvent::Step {
                    batch,
                    step,
                    denoised: report.denoised,
                })
            },
        );
        let samples = match sampled {
            Ok(samples) => samples,
            Err(SamplingError::Cancelled) => {
                return Ok(JobOutcome {
                    images,
                    cancelled: true,
                })
            }
            Err(error) => return Err(JobError::Sampling(error)),
        };
        release_freed_memory(model.device);
        let decoded = guarded("VAE decode", || {
            let samples = match &init.latent_mask {
                // The kept area is exactly the init latent again (A1111 `sample`).
                Some((keep, regenerate)) => samples * regenerate + &init_latent * keep,
                None => samples,
            };
            decode_latents(
                &model.sd.vae,
                &samples.to_kind(model.kind),
                params.vae_tiling(),
            )
        })?;
        for ((generated, &image_seed), &image_subseed) in
            decoded.into_iter().zip(batch_seeds).zip(batch_subseeds)
        {
            let generated = match &init.color_correction {
                Some(correction) => correction.apply(&generated),
                None => generated,
            };
            let (image, patch) = match &init.inpaint {
                Some(prepared) => (
                    prepared.composite(&generated),
                    Some(prepared.patch(&generated)),
                ),
                None => (generated, None),
            };
            let infotext = params.infotext(&ImageFacts {
                seed: image_seed,
                subseed: image_subseed,
                sampler: info,
                schedule_label: &plan.schedule_label,
                discard_penultimate: plan.discard_penultimate,
                model: (&model.name, &model.hash),
                ti_hashes: ti.clone(),
                inpainting: init.inpaint.is_some(),
                inpainting_conditioning: init.uses_inpainting_conditioning(),
            });
            let generated = GeneratedImage {
                index: images.len(),
                seed: image_seed,
                image,
                patch,
                infotext,
            };
            observe(JobEvent::Image(&generated));
            images.push(generated);
        }
    }
    Ok(JobOutcome {
        images,
        cancelled: false,
    })
}
