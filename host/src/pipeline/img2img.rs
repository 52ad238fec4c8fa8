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
use tch::Tensor;

use super::error::guarded;
use super::init::JobInit;
use super::job::{BatchPrompts, ImageKind, SamplingPass};
use super::model::GenerationModel;
use super::stop::JobStop;
use crate::device::release_freed_memory;
use crate::models::unet::TokenMerging;
use crate::prepare::inpaint::{MaskedContent, Patch};
use crate::request::GenerationRequest;
use crate::rng::ImageRng;
use crate::sampling::denoiser::LatentMask;
use crate::sampling::plan::SamplingPlan;
use crate::sampling::plugins::SamplerRegistry;

// The stages and types img2img shares with txt2img, re-exported where callers find them.
pub use super::job::{
    GeneratedImage, GenerationJob, ImageSeeds, JobConditioning, JobError, JobEvent, JobOutcome,
};

/// An img2img job: the shared stages plus [`Img2ImgJob::init_latents`] and
/// [`Img2ImgJob::sample`].
pub type Img2ImgJob<'a> = GenerationJob<'a>;

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
    let inputs = Img2ImgInputs {
        image: init_image,
        mask,
        latent_mask: None,
        color_target: None,
    };
    run_img2img_with(model, registry, params, inputs, stop, observe)
}

/// [`run_img2img`] to its end, with no observer and nothing to stop it (the bench and tests).
pub fn run_img2img_unobserved(
    model: &GenerationModel,
    registry: &SamplerRegistry,
    params: &GenerationRequest,
    init_image: &RgbImage,
    mask: Option<&GrayImage>,
) -> Result<JobOutcome, JobError> {
    let stop = JobStop::new();
    run_img2img(
        model,
        registry,
        params,
        init_image,
        mask,
        &stop,
        &mut |_| Flow::Continue,
    )
}

/// An img2img job's pictures: the init image and mask, and what A1111's scripts set besides
/// them on `p`.
#[derive(Clone, Copy)]
pub struct Img2ImgInputs<'a> {
    /// The init image.
    pub image: &'a RgbImage,
    /// The mask (255 = regenerate).
    pub mask: Option<&'a GrayImage>,
    /// A1111's `p.latent_mask`: the mask the latents are blended with instead of the processed
    /// mask (the outpainting scripts' narrower band), at the job's size.
    pub latent_mask: Option<&'a GrayImage>,
    /// A1111's `p.color_corrections` set by a script: colour correction matches this picture
    /// instead of the prepared init image (Loopback keeps the original).
    pub color_target: Option<&'a RgbImage>,
}

/// [`run_img2img`] with a script's extra inputs.
pub fn run_img2img_with(
    model: &GenerationModel,
    registry: &SamplerRegistry,
    params: &GenerationRequest,
    inputs: Img2ImgInputs<'_>,
    stop: &JobStop,
    observe: &mut dyn FnMut(JobEvent<'_>) -> Flow,
) -> Result<JobOutcome, JobError> {
    let _guard = tch::no_grad_guard();
    let job = Img2ImgJob::prepare(model, registry, params)?;
    let mut init = job.init_latents(inputs.image, inputs.mask)?;
    init.init.set_script_inputs(
        params,
        model.device,
        inputs.latent_mask,
        inputs.color_target,
    );
    // The extra networks, before the prompts are encoded: LoRAs patch the weights;
    // hypernetworks are set on the UNet for the whole job and cleared when it ends, however
    // it ends.
    let active = job.activate_all_networks();
    let mut warnings = active.warnings.clone();
    for warning in &warnings {
        observe(JobEvent::Warning(warning));
    }
    let conditioning = job.condition(&active.networks)?;
    let total = params.n_iter * params.batch_size;
    observe(JobEvent::Started {
        images: total,
        batches: params.n_iter,
        steps_per_batch: job.plan.steps_run,
        hires_steps: 0,
    });

    let mut images = Vec::with_capacity(total);
    for batch in 0..params.n_iter {
        stop.next_batch();
        if stop.ends_job() {
            break;
        }
        let Some(samples) = job.sample(&init, &conditioning, batch, stop, observe)? else {
            return Ok(JobOutcome::cancelled(images, warnings));
        };
        job.finish_batch(
            batch,
            samples,
            (&mut images, &mut warnings),
            observe,
            &mut |seeds, generated| {
                let (image, patch) = composite(&init.init, generated);
                job.finish_image(&init.init, &conditioning, seeds, image, patch)
            },
        )?;
    }
    Ok(JobOutcome::ended(images, warnings, stop))
}

/// The job's init: the prepared and encoded image, and, for "latent noise", its noise.
pub struct InitLatents {
    /// What is computed once from the init image and mask.
    pub init: JobInit,
    /// Masked content "latent noise": the first batch's initial noise, also used for later
    /// batches (A1111 draws it once in `init`).
    pub latent_noise: Option<Tensor>,
}

impl<'a> Img2ImgJob<'a> {
    /// Validates `params` and resolves sampler, noise source and seeds for img2img (A1111
    /// `modules/processing.py: process_images_inner` before `p.init`: `get_fixed_seed`).
    pub fn prepare(
        model: &'a GenerationModel,
        registry: &'a SamplerRegistry,
        params: &'a GenerationRequest,
    ) -> Result<Self, JobError> {
        GenerationJob::with_plan(model, registry, params, |settings| {
            Ok(SamplingPlan::new(registry, settings, &model.levels)?)
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
        let prompts = BatchPrompts::shared(conditioning, self.params.batch_size);
        self.sample_with_prompts(init, prompts, batch, stop, observe)
    }

    /// [`Img2ImgJob::sample`] with each image's own prompts (a joint batch of queued jobs).
    pub fn sample_with_prompts(
        &self,
        init: &InitLatents,
        conditioning: BatchPrompts<'_>,
        batch: usize,
        stop: &JobStop,
        observe: &mut dyn FnMut(JobEvent<'_>) -> Flow,
    ) -> Result<Option<Tensor>, JobError> {
        let (model, params, plan) = (self.model, self.params, &self.plan);
        let (InitLatents { init, latent_noise }, info) = (init, plan.sampler.info);
        let batch_seeds = self.seeds.batch(batch, params.batch_size).0;
        let mut rng = self.batch_rng(batch, self.shape)?;
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
        let x = plan.start_latent(&init_latent, &noise, params.img2img_extra_noise);
        let latent_mask = init
            .latent_mask
            .as_ref()
            .map(|(keep, regenerate)| LatentMask {
                init_latent: init_latent.shallow_clone(),
                keep: keep.shallow_clone(),
                regenerate: regenerate.shallow_clone(),
                before_denoising: info.input == ScheduleInput::Timesteps,
            });
        let image_conditioning = if init.uses_inpainting_conditioning() {
            let conditioning: Vec<&Tensor> = latents
                .iter()
                .filter_map(|l| l.conditioning.as_ref())
                .collect();
            Some(guarded("inpainting conditioning", || {
                Tensor::cat(&conditioning, 0).to_kind(model.kind)
            })?)
        } else {
            None
        };
        let pass = SamplingPass {
            plan,
            x,
            rng,
            seeds: batch_seeds,
            shape: self.shape,
            conditioning,
            refiner: true,
            latent_mask,
            image_conditioning,
            last_latent: init_latent.shallow_clone(),
            batch,
            steps_before: 0,
            token_merging: TokenMerging::new(params.token_merging_ratio(false)),
        };
        let Some(samples) = self.sample_pass(pass, stop, observe)? else {
            return Ok(None);
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
        self.finish(
            conditioning,
            seeds,
            (image, patch),
            ImageKind {
                inpainting: init.inpaint.is_some(),
                inpainting_conditioning: init.uses_inpainting_conditioning(),
                txt2img: None,
            },
        )
    }
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
pub(crate) mod tests {
    use super::*;
    use crate::prepare::inpaint::InpaintSettings;
    use crate::request::RngChoice;
    use crate::sampling::plan::SamplerSettings;
    use crate::sampling::plugins::PluginPaths;
    use crate::tiny_model::{write_tiny_model, Preset, TinyModelSpec};
    use image::{GrayImage, Luma, Rgb};
    use tch::{Device, Kind};

    /// The tiny SD1 test model, written to `dir` and loaded on the CPU.
    pub(crate) fn tiny_model(dir: &std::path::Path) -> GenerationModel {
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

    /// The built-in samplers.
    pub(crate) fn registry() -> SamplerRegistry {
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
        let whole = run_img2img_unobserved(&model, &registry, &params, &image, Some(&mask))
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
