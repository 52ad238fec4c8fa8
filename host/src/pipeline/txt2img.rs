//! One txt2img job as A1111 runs it (`modules/processing.py: process_images_inner`,
//! `StableDiffusionProcessingTxt2Img.init`, `.sample` and `.sample_hr_pass`): per batch, each
//! image's seed noise is sampled over the whole schedule, then with Hires. fix upscaled (in
//! latent space or in pixels) and sampled again as img2img at the larger size, decoded and
//! given its infotext.
//!
//! The stages it shares with img2img (seeds, noise, networks, conditioning, one sampling pass,
//! decode) are [`GenerationJob`]'s; [`Txt2ImgJob`] adds the first pass's start and the hires
//! pass.

use image::RgbImage;
use sdhost_plugin_api::Flow;
use tch::{Device, Kind, Tensor};

use super::encode::{InitEncoding, InitLatent};
use super::error::guarded;
use super::hires::{HiresTarget, HiresUpscale, HiresUpscaler, LatentMode};
use super::job::{family_settings, BatchPrompts, ImageKind, PromptSetting, SamplingPass};
use super::mask_latents::InpaintingConditioning;
use super::model::GenerationModel;
use super::stop::JobStop;
use crate::extra_networks::parse_prompt;
use crate::models::unet::TokenMerging;
use crate::request::{GenerationRequest, HiresFacts, InvalidRequest, MAX_SIDE};
use crate::rng::Generator;
use crate::sampling::plan::{SamplerSettings, SamplingPlan};
use crate::sampling::plugins::SamplerRegistry;
use crate::sampling::schedule::Schedule;

pub use super::job::{
    GeneratedImage, GenerationJob, ImageSeeds, JobConditioning, JobError, JobEvent, JobOutcome,
};

/// The Hires. fix pass of a job, resolved before any work.
pub struct HiresPass<'a> {
    /// The upscale's size and crop.
    pub target: HiresTarget,
    /// Latent mode, or pixel or model upscaler ready to run.
    pub upscaler: HiresUpscale,
    /// The img2img plan of the pass (hires sampler, schedule, steps, denoising strength).
    pub plan: SamplingPlan<'a>,
    /// One image's latent shape after the crop.
    pub shape: [i64; 3],
}

/// A txt2img job: the shared stages, and the Hires. fix pass when the request enables it.
pub struct Txt2ImgJob<'a> {
    /// Settings, seeds, first-pass plan and the shared stages.
    pub job: GenerationJob<'a>,
    /// The hires pass.
    pub hires: Option<HiresPass<'a>>,
}

/// Runs a txt2img job. `observe` sees progress and each image as it is finished; returning
/// [`Flow::Cancel`] from a step stops the job, keeping the images already finished; `stop`
/// cancels, interrupts or skips it from elsewhere (see [`JobStop`]: an interrupt in the first
/// pass returns that pass's result without the hires pass, as A1111's `sample_hr_pass` does).
pub fn run_txt2img(
    model: &GenerationModel,
    registry: &SamplerRegistry,
    params: &GenerationRequest,
    stop: &JobStop,
    observe: &mut dyn FnMut(JobEvent<'_>) -> Flow,
) -> Result<JobOutcome, JobError> {
    let _guard = tch::no_grad_guard();
    let txt2img = Txt2ImgJob::prepare(model, registry, params)?;
    let job = &txt2img.job;
    let active = job.activate_all_networks();
    let networks = &active.networks;
    let mut warnings = active.warnings.clone();
    let conditioning = job.condition(networks)?;
    // The hires prompt's own networks, when its tags differ (A1111 activates
    // `hr_extra_network_data` before the hires pass, the prompt's again for the next batch).
    let (hr_prompt, hr_negative) = params
        .hires
        .prompts(&params.prompt, &params.negative_prompt);
    let hr_networks = (txt2img.hires.is_some()
        && parse_prompt(hr_prompt).1 != parse_prompt(&params.prompt).1)
        .then(|| job.activate_networks_for(hr_prompt));
    let hires_conditioning = match &txt2img.hires {
        Some(hires) => {
            let hr = hr_networks.as_ref().unwrap_or(networks);
            // The hires prompt without its tags (the networks' prompt is the first pass's
            // when the tags are the same).
            let stripped = parse_prompt(hr_prompt).0;
            warnings.extend(
                hr_networks
                    .iter()
                    .flat_map(|n| &n.warnings)
                    .map(|w| format!("Hires prompt: {w}")),
            );
            Some(job.condition_prompts(
                hr,
                &PromptSetting {
                    prompt: &stripped,
                    negative_prompt: hr_negative,
                    steps: hires_steps(params),
                    second_order: hires.plan.sampler.info.second_order,
                    size: hires.target.upscale_to,
                },
            )?)
        }
        None => None,
    };
    // Switches the model's networks between the passes when the hires prompt has its own.
    let switch_networks = |hires_pass: bool| {
        if hr_networks.is_some() {
            let prompt = if hires_pass {
                hr_prompt
            } else {
                &params.prompt
            };
            job.activate_networks_for(prompt);
        }
    };
    switch_networks(false);
    for warning in &warnings {
        observe(JobEvent::Warning(warning));
    }
    let total = params.n_iter * params.batch_size;
    let hires_steps_run = txt2img.hires.as_ref().map_or(0, |h| h.plan.steps_run);
    observe(JobEvent::Started {
        images: total,
        batches: params.n_iter,
        steps_per_batch: job.plan.steps_run + hires_steps_run,
        hires_steps: hires_steps_run,
    });

    let mut images = Vec::with_capacity(total);
    for batch in 0..params.n_iter {
        stop.next_batch();
        if stop.ends_job() {
            break;
        }
        if batch > 0 {
            switch_networks(false);
        }
        let Some(mut samples) = txt2img.sample(&conditioning, batch, stop, observe)? else {
            return Ok(JobOutcome::cancelled(images, warnings));
        };
        if let (Some(hires), Some(hr_conditioning)) = (&txt2img.hires, &hires_conditioning) {
            // A1111's `sample_hr_pass` returns the first pass as it is after an interrupt.
            if !stop.is_interrupted() {
                switch_networks(true);
                let pass =
                    txt2img.sample_hires(hires, hr_conditioning, samples, batch, stop, observe)?;
                let Some(pass) = pass else {
                    return Ok(JobOutcome::cancelled(images, warnings));
                };
                samples = pass;
            }
        }
        job.finish_batch(
            batch,
            samples,
            (&mut images, &mut warnings),
            observe,
            &mut |seeds, image| txt2img.finish_image(&conditioning, seeds, image),
        )?;
    }
    Ok(JobOutcome::ended(images, warnings, stop))
}

/// The hires pass's steps (`hr_second_pass_steps or steps`).
fn hires_steps(params: &GenerationRequest) -> usize {
    match params.hires.hr_second_pass_steps {
        0 => params.sampler.steps,
        steps => steps,
    }
}

/// A request error of a hires field.
fn invalid(field: &str, message: String) -> JobError {
    JobError::InvalidParams(InvalidRequest::Value {
        field: field.into(),
        message,
    })
}

impl<'a> Txt2ImgJob<'a> {
    /// Validates `params`, resolves seeds and the first pass's plan (the whole schedule), and
    /// with Hires. fix its upscaler, target size and plan; an unknown upscaler, sampler or
    /// schedule is refused here, before any work (A1111 `init`: "could not find upscaler").
    pub fn prepare(
        model: &'a GenerationModel,
        registry: &'a SamplerRegistry,
        params: &'a GenerationRequest,
    ) -> Result<Self, JobError> {
        let job = GenerationJob::with_plan(model, registry, params, |settings| {
            Ok(SamplingPlan::txt2img(registry, settings, &model.levels)?)
        })?;
        let hires = params.hires.enable_hr;
        let hires = if hires {
            Some(Self::hires_pass(model, registry, params)?)
        } else {
            None
        };
        Ok(Txt2ImgJob { job, hires })
    }

    fn hires_pass(
        model: &'a GenerationModel,
        registry: &'a SamplerRegistry,
        params: &'a GenerationRequest,
    ) -> Result<HiresPass<'a>, JobError> {
        let hires = &params.hires;
        let named =
            HiresUpscaler::named(hires.hr_upscaler.as_deref(), &model.network_dirs.upscalers)
                .map_err(|e| invalid("hr_upscaler", e.to_string()))?;
        // A model upscaler is read now, so a broken or foreign file fails before sampling.
        let upscaler = match named {
            HiresUpscaler::Latent(mode) => HiresUpscale::Latent(mode),
            HiresUpscaler::Pixels(upscaler) => HiresUpscale::Pixels(
                model
                    .upscalers
                    .ready(&upscaler, model.device)
                    .map_err(|e| invalid("hr_upscaler", e.to_string()))?,
            ),
        };
        let downscale = model.downscale();
        let target = HiresTarget::new(hires, params.width, params.height);
        let (w, h) = target.upscale_to;
        if !(downscale..=MAX_SIDE).contains(&w) || !(downscale..=MAX_SIDE).contains(&h) {
            return Err(invalid(
                "hr_scale",
                format!(
                    "the Hires. fix size {w}x{h} must be between {downscale} and {MAX_SIDE} pixels"
                ),
            ));
        }
        let schedule = match hires.scheduler() {
            None => params.sampler.schedule,
            Some(name) => {
                Schedule::from_name(name).map_err(|e| invalid("hr_scheduler", e.to_string()))?
            }
        };
        let settings = SamplerSettings {
            sampler: hires
                .sampler()
                .unwrap_or(&params.sampler.sampler)
                .to_string(),
            schedule,
            steps: hires_steps(params),
            // `sample_hr_pass` passes its steps to `sample_img2img`, so `setup_img2img_steps`
            // runs exactly that many whatever `img2img_fix_steps` says.
            fix_steps: true,
            ..params.sampler.clone()
        };
        let plan = SamplingPlan::new(registry, &family_settings(model, &settings), &model.levels)?;
        let (lh, lw) = target.upscaled_latent(downscale);
        let (tx, ty) = target.truncate;
        let shape = [4, lh - ty, lw - tx];
        if shape[1] < 1 || shape[2] < 1 {
            return Err(invalid(
                "hr_resize_x",
                format!(
                    "the Hires. fix crop leaves no image ({}x{})",
                    shape[2], shape[1]
                ),
            ));
        }
        Ok(HiresPass {
            target,
            upscaler,
            plan,
            shape,
        })
    }

    /// Samples batch `batch`'s first pass from its seeds' noise (A1111 `sample`: `x =
    /// rng.next()`, the sampler from σmax). `None` when cancelled.
    pub fn sample(
        &self,
        conditioning: &JobConditioning,
        batch: usize,
        stop: &JobStop,
        observe: &mut dyn FnMut(JobEvent<'_>) -> Flow,
    ) -> Result<Option<Tensor>, JobError> {
        let prompts = BatchPrompts::shared(conditioning, self.job.params.batch_size);
        self.sample_with_prompts(prompts, batch, stop, observe)
    }

    /// [`Txt2ImgJob::sample`] with each image's own prompts (a joint batch of queued jobs).
    pub fn sample_with_prompts(
        &self,
        conditioning: BatchPrompts<'_>,
        batch: usize,
        stop: &JobStop,
        observe: &mut dyn FnMut(JobEvent<'_>) -> Flow,
    ) -> Result<Option<Tensor>, JobError> {
        let job = &self.job;
        let (model, params) = (job.model, job.params);
        let seeds = job.seeds.batch(batch, params.batch_size).0;
        let mut rng = job.batch_rng(batch, job.shape)?;
        let noise = rng.first()?.to_device(model.device);
        let x = guarded("initial noise", || job.plan.txt2img_start(&noise))?;
        let image_conditioning = self.blank_conditioning(seeds, job.shape)?;
        let pass = SamplingPass {
            plan: &job.plan,
            last_latent: x.shallow_clone(),
            x,
            rng,
            seeds,
            shape: job.shape,
            conditioning,
            // A1111's default `hires_fix_refiner_pass` is "second pass".
            refiner: self.hires.is_none(),
            latent_mask: None,
            image_conditioning,
            batch,
            steps_before: 0,
            token_merging: TokenMerging::new(params.token_merging_ratio(true)),
        };
        job.sample_pass(pass, stop, observe)
    }

    /// The hires pass of a batch (A1111 `sample_hr_pass`): the first pass upscaled, cropped to
    /// the target, noised with fresh noise of the seeds at the new size and sampled as img2img
    /// with the hires prompts. A skip before it returns the upscaled latent unsampled, as
    /// A1111's sampler stops at once. `None` when cancelled.
    pub fn sample_hires(
        &self,
        hires: &HiresPass<'_>,
        conditioning: &JobConditioning,
        samples: Tensor,
        batch: usize,
        stop: &JobStop,
        observe: &mut dyn FnMut(JobEvent<'_>) -> Flow,
    ) -> Result<Option<Tensor>, JobError> {
        let prompts = BatchPrompts::shared(conditioning, self.job.params.batch_size);
        self.sample_hires_with_prompts(hires, prompts, samples, batch, stop, observe)
    }

    /// [`Txt2ImgJob::sample_hires`] with each image's own hires prompts (a joint batch).
    pub fn sample_hires_with_prompts(
        &self,
        hires: &HiresPass<'_>,
        conditioning: BatchPrompts<'_>,
        samples: Tensor,
        batch: usize,
        stop: &JobStop,
        observe: &mut dyn FnMut(JobEvent<'_>) -> Flow,
    ) -> Result<Option<Tensor>, JobError> {
        let job = &self.job;
        let (model, params) = (job.model, job.params);
        let seeds = job.seeds.batch(batch, params.batch_size).0;
        let (upscaled, image_conditioning) = match &hires.upscaler {
            HiresUpscale::Latent(mode) => self.upscale_latent(*mode, hires, &samples, seeds)?,
            HiresUpscale::Pixels(upscaler) => {
                let (w, h) = hires.target.upscale_to;
                let decoded = job.decode(samples)?;
                let images: Vec<RgbImage> = guarded("hires upscale", || {
                    decoded
                        .iter()
                        .map(|image| upscaler.upscale_to(image, w, h))
                        .collect()
                })?;
                self.encode(&images, seeds)?
            }
        };
        let cropped = hires.target.crop(&upscaled);
        let image_conditioning = image_conditioning.map(|c| hires.target.crop(&c));
        let mut rng = job.batch_rng(batch, hires.shape)?;
        let noise = rng.first()?.to_device(model.device);
        let x = guarded("hires noise", || {
            hires
                .plan
                .start_latent(&cropped, &noise, params.img2img_extra_noise)
        })?;
        let pass = SamplingPass {
            plan: &hires.plan,
            x,
            rng,
            seeds,
            shape: hires.shape,
            conditioning,
            refiner: true,
            latent_mask: None,
            image_conditioning,
            last_latent: cropped,
            batch,
            steps_before: job.plan.steps_run,
            // A1111's `sample_hr_pass` re-patches the model with the hires ratio.
            token_merging: TokenMerging::new(params.token_merging_ratio_hr()),
        };
        job.sample_pass(pass, stop, observe)
    }

    /// Latent upscale; an inpainting model's conditioning is the blank one, or with a mask
    /// weight below 1 the upscaled latent's decoded image's (A1111's shortcut).
    fn upscale_latent(
        &self,
        mode: LatentMode,
        hires: &HiresPass<'_>,
        samples: &Tensor,
        seeds: &[u64],
    ) -> Result<(Tensor, Option<Tensor>), JobError> {
        let job = &self.job;
        let size = hires.target.upscaled_latent(job.model.downscale());
        let upscaled = mode
            .resize(samples, size)
            .map_err(|e| JobError::torch("latent upscale", e.to_string()))?;
        let shape = [4, size.0, size.1];
        if !self.is_inpainting_model() {
            return Ok((upscaled, None));
        }
        if job.params.inpaint.mask_weight < 1.0 {
            let images = job.decode(upscaled.shallow_clone())?;
            let conditioning = self.image_conditioning(&images, seeds)?;
            return Ok((upscaled, conditioning));
        }
        Ok((upscaled, self.blank_conditioning(seeds, shape)?))
    }

    /// Pixel upscale's way back: each image encoded (A1111 `images_tensor_to_samples`, image
    /// by image, the VAE samples drawn as A1111 draws them), with an inpainting model's
    /// conditioning of the whole image.
    fn encode(
        &self,
        images: &[RgbImage],
        seeds: &[u64],
    ) -> Result<(Tensor, Option<Tensor>), JobError> {
        let (model, params) = (self.job.model, self.job.params);
        let mut latents = Vec::with_capacity(images.len());
        // ldm's posterior sample draws from torch's global CPU generator, which the first
        // pass's `rng.randn(seed, …)` left seeded with the batch's last seed: image i takes
        // its i-th draw.
        let last = seeds.last().copied().unwrap_or_default();
        let mut posterior = Generator::new(last, Device::Cpu)?;
        for image in images {
            let encoding = guarded("VAE encode", || {
                InitEncoding::new(
                    &model.sd.vae,
                    image,
                    model.device,
                    model.kind,
                    params.vae_tiling(),
                )
            })?;
            let latent = match params.init_latent {
                crate::request::InitLatentMode::Sample => {
                    encoding.latent(InitLatent::Sample(&mut posterior))?
                }
                crate::request::InitLatentMode::Mean => encoding.latent(InitLatent::Mean)?,
            };
            latents.push(latent.to_kind(Kind::Float));
        }
        let latent = guarded("VAE encode", || Tensor::cat(&latents, 0))?;
        Ok((latent, self.image_conditioning(images, seeds)?))
    }

    fn is_inpainting_model(&self) -> bool {
        self.job.model.sd.architecture.unet.in_channels == 9
    }

    /// An inpainting model's conditioning of whole images, nothing masked... but all of it
    /// regenerated (A1111 `img2img_image_conditioning` without a mask).
    fn image_conditioning(
        &self,
        images: &[RgbImage],
        seeds: &[u64],
    ) -> Result<Option<Tensor>, JobError> {
        if !self.is_inpainting_model() {
            return Ok(None);
        }
        let (model, params) = (self.job.model, self.job.params);
        let mut parts = Vec::with_capacity(images.len());
        for (image, &seed) in images.iter().zip(seeds) {
            let (h, w) = (i64::from(image.height()), i64::from(image.width()));
            let mask = Tensor::ones([1, 1, h, w], (Kind::Float, model.device));
            let downscale = i64::from(model.downscale());
            let conditioning = guarded("inpainting conditioning", || {
                InpaintingConditioning::new(
                    &model.sd.vae,
                    image,
                    &mask,
                    params.inpaint.mask_weight,
                    (h / downscale, w / downscale),
                    model.kind,
                    params.vae_tiling(),
                )
            })?;
            // The conditioning's VAE sample is the seed's second draw, after the latent's.
            let mut generator = Generator::new(seed, Device::Cpu)?;
            let _ = generator.randn(&[1, 4, h / downscale, w / downscale], Kind::Float)?;
            parts.push(conditioning.for_image(InitLatent::Sample(&mut generator))?);
        }
        Ok(Some(guarded("inpainting conditioning", || {
            Tensor::cat(&parts, 0).to_kind(model.kind)
        })?))
    }

    /// An inpainting model's txt2img conditioning (A1111 `txt2img_image_conditioning`): the
    /// latent of a mid-grey image, everything masked; `None` for other models.
    fn blank_conditioning(
        &self,
        seeds: &[u64],
        shape: [i64; 3],
    ) -> Result<Option<Tensor>, JobError> {
        if !self.is_inpainting_model() {
            return Ok(None);
        }
        let (model, params) = (self.job.model, self.job.params);
        let downscale = i64::from(model.downscale());
        let (h, w) = (shape[1], shape[2]);
        let grey = Tensor::zeros(
            [1, 3, h * downscale, w * downscale],
            (model.kind, model.device),
        );
        let encoding = guarded("inpainting conditioning", || {
            InitEncoding::from_pixels(&model.sd.vae, &grey, params.vae_tiling())
        })?;
        let mut parts = Vec::with_capacity(seeds.len());
        for &seed in seeds {
            let mut generator = Generator::new(seed, Device::Cpu)?;
            let latent = encoding.latent(InitLatent::Sample(&mut generator))?;
            let mask = Tensor::ones([1, 1, h, w], (latent.kind(), latent.device()));
            parts.push(Tensor::cat(&[mask, latent], 1));
        }
        Ok(Some(guarded("inpainting conditioning", || {
            Tensor::cat(&parts, 0).to_kind(model.kind)
        })?))
    }

    /// One image's infotext and place in the job: txt2img's keys, with Hires. fix's.
    pub fn finish_image(
        &self,
        conditioning: &JobConditioning,
        seeds: ImageSeeds,
        image: RgbImage,
    ) -> GeneratedImage {
        let job = &self.job;
        let hires = self.hires.as_ref().map(|hires| HiresFacts {
            schedule_label: hires
                .plan
                .schedule
                .filter(|_| hires.plan.schedule_label != job.plan.schedule_label)
                .map(|_| hires.plan.schedule_label.clone()),
        });
        job.finish(
            conditioning,
            seeds,
            (image, None),
            ImageKind {
                inpainting: false,
                inpainting_conditioning: self.is_inpainting_model(),
                txt2img: Some(hires),
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::hires::HiresSettings;
    use crate::pipeline::img2img::tests::{registry, tiny_model};
    use crate::tiny_model::{write_tiny_model, Preset, TinyModelSpec};

    fn params(upscaler: Option<&str>) -> GenerationRequest {
        GenerationRequest {
            prompt: "a cat".into(),
            width: 64,
            height: 48,
            seed: 99,
            batch_size: 2,
            n_iter: 2,
            sampler: SamplerSettings {
                sampler: "Euler a".into(),
                steps: 4,
                denoising_strength: 0.5,
                ..SamplerSettings::default()
            },
            hires: HiresSettings {
                enable_hr: upscaler.is_some(),
                hr_scale: 1.5,
                hr_upscaler: upscaler.map(String::from),
                hr_sampler_name: Some("Euler".into()),
                ..HiresSettings::default()
            },
            ..GenerationRequest::default()
        }
    }

    /// A stop request made at (batch, step).
    type StopAt = (usize, usize, fn(&JobStop));

    fn run(params: &GenerationRequest, at: Option<StopAt>) -> (JobOutcome, usize) {
        let dir = tempfile::tempdir().unwrap();
        let (model, registry) = (tiny_model(dir.path()), registry());
        let stop = JobStop::new();
        let mut steps = 0;
        let outcome = run_txt2img(&model, &registry, params, &stop, &mut |event| {
            if let JobEvent::Step { batch, step, .. } = event {
                steps += 1;
                if let Some((b, s, request)) = at {
                    if (batch, step) == (b, s) {
                        request(&stop);
                    }
                }
            }
            Flow::Continue
        })
        .expect("the job runs");
        (outcome, steps)
    }

    #[test]
    fn txt2img_makes_every_image_at_its_size_with_its_infotext() {
        let (outcome, steps) = run(&params(None), None);
        assert_eq!(outcome.images.len(), 4);
        assert_eq!(steps, 8, "4 steps per batch");
        let first = &outcome.images[0];
        assert_eq!(first.image.dimensions(), (64, 48));
        let text = first.infotext.to_text();
        assert!(
            text.contains("Seed: 99") && text.contains("Size: 64x48"),
            "{text}"
        );
        assert!(!text.contains("Denoising strength"), "{text}");
        assert_eq!(outcome.images[1].seed, 100);
    }

    #[test]
    fn hires_fix_upscales_and_samples_again_with_each_upscaler() {
        for upscaler in ["Latent", "Latent (nearest-exact)", "Lanczos"] {
            let (outcome, steps) = run(&params(Some(upscaler)), None);
            assert_eq!(outcome.images.len(), 4);
            // 4 first-pass steps and exactly 4 hires steps per batch (A1111's hires pass passes
            // its steps, so `setup_img2img_steps` takes its fix-steps branch).
            assert_eq!(steps, 2 * (4 + 4), "{upscaler}");
            let image = &outcome.images[0];
            assert_eq!(image.image.dimensions(), (96, 72), "{upscaler}");
            let text = image.infotext.to_text();
            for key in [
                "Denoising strength: 0.5",
                "Hires upscale: 1.5",
                "Hires sampler: Euler",
                &format!("Hires upscaler: {upscaler}"),
            ] {
                assert!(text.contains(key), "{key} in {text}");
            }
            let mut back = GenerationRequest::default();
            assert!(back.apply_infotext(&image.infotext).is_empty());
            assert_eq!(back.hires.hr_scale, 1.5);
            assert!(back.hires.enable_hr);
            assert_eq!(back.hires.hr_upscaler.as_deref(), Some(upscaler));
            assert_eq!(back.hires.hr_sampler_name.as_deref(), Some("Euler"));
        }
    }

    #[test]
    fn an_unknown_upscaler_is_refused_before_any_work() {
        let dir = tempfile::tempdir().unwrap();
        let (model, registry) = (tiny_model(dir.path()), registry());
        let params = params(Some("4x-UltraSharp"));
        let error = Txt2ImgJob::prepare(&model, &registry, &params)
            .err()
            .expect("refused");
        assert!(matches!(error, JobError::InvalidParams(_)), "{error}");
    }

    #[test]
    fn interrupt_in_the_first_pass_returns_it_without_the_hires_pass() {
        let (outcome, steps) = run(&params(Some("Latent")), Some((0, 2, JobStop::interrupt)));
        assert!(outcome.interrupted);
        assert_eq!(outcome.images.len(), 2);
        assert_eq!(outcome.images[0].image.dimensions(), (64, 48));
        assert_eq!(steps, 2);
    }

    #[test]
    fn skip_in_the_hires_pass_keeps_the_batch_and_goes_on() {
        let (outcome, steps) = run(&params(Some("Latent")), Some((0, 5, JobStop::skip)));
        assert!(!outcome.interrupted && !outcome.cancelled);
        assert_eq!(outcome.images.len(), 4);
        assert_eq!(outcome.images[0].image.dimensions(), (96, 72));
        assert_eq!(steps, 5 + 8);
    }

    #[test]
    fn ddim_family_samplers_walk_the_whole_schedule_from_the_noise() {
        for sampler in ["DDIM", "PLMS"] {
            let params = GenerationRequest {
                sampler: SamplerSettings {
                    sampler: sampler.into(),
                    ..params(None).sampler
                },
                n_iter: 1,
                ..params(None)
            };
            // A1111's timestep samplers call back steps − 1 times (the last timestep is t = 1).
            let (outcome, steps) = run(&params, None);
            assert_eq!((outcome.images.len(), steps), (2, 3), "{sampler}");
        }
    }

    #[test]
    fn inpainting_models_get_their_conditioning_in_both_passes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny-inpainting.safetensors");
        let spec = TinyModelSpec {
            preset: Preset::Tiny,
            inpainting: true,
            seed: 7,
            storage: Kind::Float,
        };
        write_tiny_model(&spec, &path).unwrap();
        let model = GenerationModel::load(&path, Device::Cpu, Kind::Float, None).unwrap();
        let registry = registry();
        for (upscaler, weight) in [("Latent", 1.0), ("Latent", 0.5), ("Nearest", 1.0)] {
            let mut params = params(Some(upscaler));
            params.inpaint.mask_weight = weight;
            let outcome = run_txt2img(&model, &registry, &params, &JobStop::new(), &mut |_| {
                Flow::Continue
            })
            .unwrap_or_else(|e| panic!("{upscaler} {weight}: {e}"));
            assert_eq!(outcome.images[3].image.dimensions(), (96, 72));
            let text = outcome.images[0].infotext.to_text();
            assert!(text.contains("Conditional mask weight"), "{text}");
        }
    }
}
