//! Queued jobs sampled as one batch (the daemon's cross-request batching; A1111's queue runs
//! jobs one after another): jobs whose requests differ only in prompts, seeds and batch size
//! share every UNet call, each image with its own job's prompts, seeds and infotext, so each
//! comes out as its own run makes it (within the float noise of a larger UNet batch).
//!
//! The joint batch is one [`GenerationJob`] (the "leader", the first member's settings with
//! every member's images and seeds); each member keeps its own job for validation,
//! conditioning and infotext. A member that is cancelled leaves the batch at the next step
//! (its events stop; the others go on); an interrupt or skip of every member that is left ends
//! sampling with the last denoised prediction, as a single job's does.

use image::{GrayImage, RgbImage};
use sdhost_plugin_api::Flow;
use tch::Tensor;

use super::img2img::{composite, Img2ImgJob, InitLatents};
use super::job::{
    BatchPrompts, GeneratedImage, GenerationJob, ImageSeeds, JobError, JobEvent, JobOutcome,
    PromptSetting,
};
use super::model::GenerationModel;
use super::stop::JobStop;
use super::txt2img::Txt2ImgJob;
use crate::extra_networks::parse_prompt;
use crate::prepare::inpaint::MaskedContent;
use crate::request::{GenerationRequest, MAX_BATCH_SIZE};
use crate::rng::SeedList;
use crate::sampling::plugins::SamplerRegistry;

/// What the jobs of a joint batch start from (the same for all of them).
#[derive(Clone, Copy)]
pub enum JointInputs<'a> {
    /// txt2img without Hires. fix.
    Txt2img,
    /// img2img on one init image, inpainting where the mask says.
    Img2img {
        /// The init image (flattened to RGB).
        image: &'a RgbImage,
        /// The mask (255 = regenerate).
        mask: Option<&'a GrayImage>,
    },
}

/// One job of a joint batch: its request, its stop handle and where its events go.
pub struct JointMember<'a> {
    /// The job's parameters.
    pub params: &'a GenerationRequest,
    /// How its client stops it.
    pub stop: &'a JobStop,
    /// Its events, as [`run_img2img`](super::img2img::run_img2img) reports them.
    pub observe: &'a mut dyn FnMut(JobEvent<'_>) -> Flow,
}

/// Whether a queued job with `next` can join a joint batch whose first job has `first`: the
/// same request but for prompts, seeds and batch size, one batch each, the same extra-network
/// tags (the networks are patched once for the batch), no Hires. fix (its second pass has
/// per-job prompts and sizes of its own) and no "latent noise" fill (drawn from the job's
/// first seed). The init image and mask are the caller's to compare.
pub fn joinable(first: &GenerationRequest, next: &GenerationRequest) -> bool {
    let alone = |r: &GenerationRequest| {
        r.n_iter == 1
            && !r.hires.enable_hr
            && r.inpaint.masked_content != MaskedContent::LatentNoise
    };
    alone(first)
        && alone(next)
        && first.batch_size + next.batch_size <= MAX_BATCH_SIZE
        && shared_settings(first) == shared_settings(next)
        && parse_prompt(&first.prompt).1 == parse_prompt(&next.prompt).1
}

/// A request with what may differ inside a joint batch cleared.
fn shared_settings(request: &GenerationRequest) -> GenerationRequest {
    GenerationRequest {
        prompt: String::new(),
        negative_prompt: String::new(),
        seed: 0,
        subseed: 0,
        batch_size: 1,
        ..request.clone()
    }
}

/// Runs `members` (each [`joinable`] with the first) as one batch; each gets its own outcome,
/// in order. A member whose request or prompt fails gets its error and the others go on.
pub fn run_joint(
    model: &GenerationModel,
    registry: &SamplerRegistry,
    inputs: JointInputs<'_>,
    members: &mut [JointMember<'_>],
) -> Vec<Result<JobOutcome, JobError>> {
    let _guard = tch::no_grad_guard();
    let mut outcomes: Vec<Option<Result<JobOutcome, JobError>>> =
        members.iter().map(|_| None).collect();
    let result = run_members(model, registry, inputs, members, &mut outcomes);
    let shared_error = result.err();
    outcomes
        .into_iter()
        .map(|outcome| match (outcome, &shared_error) {
            (Some(outcome), _) => outcome,
            (None, Some(error)) => Err(member_copy(error)),
            (None, None) => Err(JobError::Unsupported(
                "the joint batch ended without this job's images".into(),
            )),
        })
        .collect()
}

/// Each member's copy of a failure of the joint work (init image, sampling, decoding): its
/// kind kept where front ends tell kinds apart (out of memory, the mask, settings), its
/// message whole.
fn member_copy(error: &JobError) -> JobError {
    match error {
        JobError::Mask(mask) => JobError::Mask(mask.clone()),
        JobError::OutOfMemory { stage, message } => JobError::OutOfMemory {
            stage,
            message: message.clone(),
        },
        JobError::InvalidParams(_)
        | JobError::Prompt(_)
        | JobError::Unsupported(_)
        | JobError::Plan(_) => JobError::Unsupported(error.to_string()),
        JobError::Torch { stage, message } => JobError::Torch {
            stage,
            message: message.clone(),
        },
        JobError::Rng(_) | JobError::Sampling(_) => JobError::Torch {
            stage: "joint batch",
            message: error.to_string(),
        },
    }
}

/// One member's own job (the kind the inputs ask for).
enum MemberJob<'a> {
    Txt2img(Box<Txt2ImgJob<'a>>),
    Img2img(Box<Img2ImgJob<'a>>),
}

impl<'a> MemberJob<'a> {
    fn prepare(
        model: &'a GenerationModel,
        registry: &'a SamplerRegistry,
        params: &'a GenerationRequest,
        inputs: JointInputs<'_>,
    ) -> Result<Self, JobError> {
        Ok(match inputs {
            JointInputs::Txt2img => {
                MemberJob::Txt2img(Box::new(Txt2ImgJob::prepare(model, registry, params)?))
            }
            JointInputs::Img2img { .. } => {
                MemberJob::Img2img(Box::new(Img2ImgJob::prepare(model, registry, params)?))
            }
        })
    }

    fn job(&self) -> &GenerationJob<'a> {
        match self {
            MemberJob::Txt2img(txt2img) => &txt2img.job,
            MemberJob::Img2img(job) => job,
        }
    }

    fn job_mut(&mut self) -> &mut GenerationJob<'a> {
        match self {
            MemberJob::Txt2img(txt2img) => &mut txt2img.job,
            MemberJob::Img2img(job) => job,
        }
    }

    /// Samples the (joint) batch with each image's prompts.
    fn sample(
        &self,
        init: Option<&InitLatents>,
        prompts: BatchPrompts<'_>,
        stop: &JobStop,
        observe: &mut dyn FnMut(JobEvent<'_>) -> Flow,
    ) -> Result<Option<Tensor>, JobError> {
        match (self, init) {
            (MemberJob::Txt2img(txt2img), _) => {
                txt2img.sample_with_prompts(prompts, 0, stop, observe)
            }
            (MemberJob::Img2img(job), Some(init)) => {
                job.sample_with_prompts(init, prompts, 0, stop, observe)
            }
            (MemberJob::Img2img(_), None) => Err(missing_init()),
        }
    }
}

/// A member that takes part in the sampling.
struct Taking<'j> {
    /// Its place in `members`.
    member: usize,
    job: MemberJob<'j>,
    /// Its prompts' place in the conditionings.
    prompts: usize,
    /// Its first image's row in the joint batch.
    offset: usize,
    /// It was cancelled (its events stop).
    gone: bool,
    images: Vec<GeneratedImage>,
}

fn run_members(
    model: &GenerationModel,
    registry: &SamplerRegistry,
    inputs: JointInputs<'_>,
    members: &mut [JointMember<'_>],
    outcomes: &mut [Option<Result<JobOutcome, JobError>>],
) -> Result<(), JobError> {
    // Each member's own job: its request validated, its seeds drawn.
    let mut jobs = Vec::new();
    for (index, member) in members.iter().enumerate() {
        match MemberJob::prepare(model, registry, member.params, inputs) {
            Ok(job) => jobs.push((index, job)),
            Err(error) => outcomes[index] = Some(Err(error)),
        }
    }
    let Some((_, first)) = jobs.first() else {
        return Ok(());
    };
    // The networks, once: every member's prompt has the same tags.
    let active = first.job().activate_all_networks();
    let mut taking = Vec::new();
    let mut conditionings = Vec::new();
    let mut offset = 0;
    for (index, job) in jobs {
        let params = members[index].params;
        let stripped = parse_prompt(&params.prompt).0;
        let setting = PromptSetting {
            prompt: &stripped,
            negative_prompt: &params.negative_prompt,
            steps: params.sampler.steps,
            second_order: job.job().plan.sampler.info.second_order,
            size: (params.width, params.height),
        };
        match job.job().condition_prompts(&active.networks, &setting) {
            Ok(conditioning) => {
                conditionings.push(conditioning);
                taking.push(Taking {
                    member: index,
                    job,
                    prompts: conditionings.len() - 1,
                    offset,
                    gone: false,
                    images: Vec::new(),
                });
                offset += params.batch_size;
            }
            Err(error) => outcomes[index] = Some(Err(error)),
        }
    }
    let Some(leader_member) = taking.first() else {
        return Ok(());
    };
    // The leader: the first member's settings over every image of the batch.
    let leader_params = GenerationRequest {
        batch_size: offset,
        n_iter: 1,
        ..members[leader_member.member].params.clone()
    };
    let mut leader = MemberJob::prepare(model, registry, &leader_params, inputs)?;
    leader.job_mut().seeds = SeedList {
        seeds: taking
            .iter()
            .flat_map(|t| t.job.job().seeds.seeds.iter().copied())
            .collect(),
        subseeds: taking
            .iter()
            .flat_map(|t| t.job.job().seeds.subseeds.iter().copied())
            .collect(),
    };
    let steps_run = leader.job().plan.steps_run;

    let mut warnings = active.warnings.clone();
    for t in &taking {
        let member = &mut members[t.member];
        for warning in &warnings {
            (member.observe)(JobEvent::Warning(warning));
        }
        (member.observe)(JobEvent::Started {
            images: member.params.batch_size,
            batches: 1,
            steps_per_batch: steps_run,
            hires_steps: 0,
        });
    }

    let stop = JobStop::new();
    let init = match inputs {
        JointInputs::Img2img { image, mask } => Some(leader.job().init_latents(image, mask)?),
        JointInputs::Txt2img => None,
    };
    let prompts = BatchPrompts::per_image(
        taking
            .iter()
            .flat_map(|t| {
                let images = members[t.member].params.batch_size;
                std::iter::repeat_n(&conditionings[t.prompts], images)
            })
            .collect(),
    );
    let samples = {
        let mut observe = |event: JobEvent<'_>| route_step(event, &mut taking, members, &stop);
        leader.sample(init.as_ref(), prompts, &stop, &mut observe)?
    };
    let Some(samples) = samples else {
        // Every member was cancelled.
        for t in taking {
            outcomes[t.member] = Some(Ok(JobOutcome::cancelled(Vec::new(), warnings.clone())));
        }
        return Ok(());
    };
    let leader = leader.job();
    let (decoded, vae_warning) = leader.decode_with_warning(samples)?;
    if let Some(warning) = vae_warning {
        for t in taking.iter().filter(|t| !t.gone) {
            (members[t.member].observe)(JobEvent::Warning(&warning));
        }
        warnings.push(warning);
    }
    for (row, image) in decoded.into_iter().enumerate() {
        let Some(t) = taking.iter_mut().rev().find(|t| t.offset <= row) else {
            continue;
        };
        if t.gone {
            continue;
        }
        let seeds = ImageSeeds {
            index: row - t.offset,
            seed: leader.seeds.seeds[row],
            subseed: leader.seeds.subseeds[row],
        };
        let generated = match (&t.job, &init) {
            (MemberJob::Txt2img(txt2img), _) => {
                txt2img.finish_image(&conditionings[t.prompts], seeds, image)
            }
            (MemberJob::Img2img(job), Some(init)) => {
                let (image, patch) = composite(&init.init, image);
                job.finish_image(&init.init, &conditionings[t.prompts], seeds, image, patch)
            }
            (MemberJob::Img2img(_), None) => return Err(missing_init()),
        };
        if (members[t.member].observe)(JobEvent::Image(&generated)) == Flow::Cancel {
            t.gone = true;
        }
        t.images.push(generated);
    }
    for t in taking {
        let stop = members[t.member].stop;
        let outcome = if t.gone || stop.is_cancelled() {
            JobOutcome::cancelled(t.images, warnings.clone())
        } else {
            JobOutcome::ended(t.images, warnings.clone(), stop)
        };
        outcomes[t.member] = Some(Ok(outcome));
    }
    Ok(())
}

/// An img2img member met without the init image (a caller's mistake, not a user's).
fn missing_init() -> JobError {
    JobError::Unsupported("an img2img job without its init image".into())
}

/// Gives each member that is still in the batch its rows of a step's denoised prediction;
/// stops the joint batch when every member is cancelled (cancel) or every member left is
/// interrupted or skipped (keeping the batch, as a single job does).
fn route_step(
    event: JobEvent<'_>,
    taking: &mut [Taking<'_>],
    members: &mut [JointMember<'_>],
    stop: &JobStop,
) -> Flow {
    let JobEvent::Step {
        batch,
        step,
        denoised,
    } = event
    else {
        return Flow::Continue;
    };
    for t in taking.iter_mut().filter(|t| !t.gone) {
        let member = &mut members[t.member];
        let rows = denoised.narrow(0, t.offset as i64, member.params.batch_size as i64);
        let flow = (member.observe)(JobEvent::Step {
            batch,
            step,
            denoised: &rows,
        });
        if flow == Flow::Cancel || member.stop.is_cancelled() {
            t.gone = true;
        }
    }
    let mut left = taking
        .iter()
        .filter(|t| !t.gone)
        .map(|t| members[t.member].stop)
        .peekable();
    if left.peek().is_none() {
        stop.cancel();
        return Flow::Cancel;
    }
    if left.all(|s| s.is_halted()) {
        stop.interrupt();
    }
    Flow::Continue
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::img2img::run_img2img_unobserved;
    use crate::pipeline::img2img::tests::{registry, tiny_model};
    use crate::pipeline::txt2img::run_txt2img;
    use crate::prepare::inpaint::{InpaintSettings, MaskError};
    use crate::sampling::plan::SamplerSettings;
    use image::{Luma, Rgb};

    type Observer = Box<dyn FnMut(JobEvent<'_>) -> Flow>;

    /// Three queued jobs that differ in prompts, seeds and batch size.
    fn requests() -> Vec<GenerationRequest> {
        let base = GenerationRequest {
            width: 64,
            height: 48,
            sampler: SamplerSettings {
                sampler: "DPM++ 2S a".into(),
                steps: 3,
                denoising_strength: 0.7,
                ..SamplerSettings::default()
            },
            inpaint: InpaintSettings {
                masked_content: MaskedContent::Fill,
                ..InpaintSettings::default()
            },
            ..GenerationRequest::default()
        };
        vec![
            GenerationRequest {
                prompt: "a [red:blue:2] cat".into(),
                negative_prompt: "blurry".into(),
                seed: 11,
                batch_size: 2,
                ..base.clone()
            },
            GenerationRequest {
                prompt: "a dog AND a hat :0.5".into(),
                seed: 500,
                subseed: 3,
                ..base.clone()
            },
            GenerationRequest {
                // Longer than one 75-token chunk: rows of another length in the UNet calls.
                prompt: vec!["lighthouse"; 90].join(" "),
                negative_prompt: "fog".into(),
                seed: 7,
                ..base
            },
        ]
    }

    fn picture() -> (RgbImage, GrayImage) {
        let image = RgbImage::from_fn(64, 48, |x, y| Rgb([(x * 3) as u8, (y * 5) as u8, 70]));
        let mask = GrayImage::from_fn(64, 48, |x, y| {
            Luma([if (16..40).contains(&x) && (8..30).contains(&y) {
                255
            } else {
                0
            }])
        });
        (image, mask)
    }

    /// Runs `requests` jointly; `cancel_at` cancels the job of that index at that step.
    fn joint(
        model: &GenerationModel,
        registry: &SamplerRegistry,
        inputs: JointInputs<'_>,
        requests: &[GenerationRequest],
        cancel_at: Option<(usize, usize)>,
    ) -> (Vec<Result<JobOutcome, JobError>>, Vec<usize>) {
        let stops: Vec<JobStop> = requests.iter().map(|_| JobStop::new()).collect();
        let mut steps = vec![0; requests.len()];
        let mut observers: Vec<Observer> = Vec::new();
        let counters: Vec<std::rc::Rc<std::cell::Cell<usize>>> =
            requests.iter().map(|_| Default::default()).collect();
        for (index, counter) in counters.iter().enumerate() {
            let (counter, stop) = (counter.clone(), stops[index].clone());
            observers.push(Box::new(move |event| {
                if let JobEvent::Step { step, denoised, .. } = event {
                    counter.set(counter.get() + 1);
                    assert_eq!(denoised.size()[0] as usize, [2, 1, 1][index]);
                    if cancel_at == Some((index, step)) {
                        stop.cancel();
                    }
                }
                Flow::Continue
            }));
        }
        let mut members: Vec<JointMember<'_>> = requests
            .iter()
            .zip(&stops)
            .zip(observers.iter_mut())
            .map(|((params, stop), observe)| JointMember {
                params,
                stop,
                observe: observe.as_mut(),
            })
            .collect();
        let outcomes = run_joint(model, registry, inputs, &mut members);
        for (count, counter) in steps.iter_mut().zip(&counters) {
            *count = counter.get();
        }
        (outcomes, steps)
    }

    /// Each joint image against the same job run alone: its infotext exactly, its pixels
    /// within the float noise of a larger UNet batch.
    fn assert_same_images(joint: &JobOutcome, alone: &JobOutcome) {
        assert_eq!(joint.images.len(), alone.images.len());
        assert!(!joint.cancelled && !joint.interrupted);
        for (a, b) in joint.images.iter().zip(&alone.images) {
            assert_eq!((a.index, a.seed), (b.index, b.seed));
            assert_eq!(a.infotext.to_text(), b.infotext.to_text());
            let worst = a
                .image
                .as_raw()
                .iter()
                .zip(b.image.as_raw())
                .map(|(x, y)| x.abs_diff(*y))
                .max()
                .unwrap();
            assert!(worst <= 1, "pixels differ by {worst}");
            assert_eq!(a.patch.is_some(), b.patch.is_some());
        }
    }

    #[test]
    fn joint_txt2img_images_are_the_jobs_own() {
        let dir = tempfile::tempdir().unwrap();
        let (model, registry) = (tiny_model(dir.path()), registry());
        let requests = requests();
        assert!(requests.iter().all(|r| joinable(&requests[0], r)));
        let (outcomes, steps) = joint(&model, &registry, JointInputs::Txt2img, &requests, None);
        assert_eq!(steps, [3, 3, 3]);
        for (outcome, params) in outcomes.iter().zip(&requests) {
            let alone = run_txt2img(&model, &registry, params, &JobStop::new(), &mut |_| {
                Flow::Continue
            })
            .unwrap();
            assert_same_images(outcome.as_ref().unwrap(), &alone);
        }
    }

    #[test]
    fn joint_inpainting_images_are_the_jobs_own_and_a_cancelled_job_leaves() {
        let dir = tempfile::tempdir().unwrap();
        let (model, registry) = (tiny_model(dir.path()), registry());
        let requests = requests();
        let (image, mask) = picture();
        let inputs = JointInputs::Img2img {
            image: &image,
            mask: Some(&mask),
        };
        let (outcomes, steps) = joint(&model, &registry, inputs, &requests, Some((1, 1)));
        assert_eq!(steps, [3, 1, 3], "the cancelled job's steps stop");
        let cancelled = outcomes[1].as_ref().unwrap();
        assert!(cancelled.cancelled && cancelled.images.is_empty());
        for index in [0, 2] {
            let alone =
                run_img2img_unobserved(&model, &registry, &requests[index], &image, Some(&mask))
                    .unwrap();
            assert_same_images(outcomes[index].as_ref().unwrap(), &alone);
        }
    }

    #[test]
    fn a_bad_request_fails_alone_and_others_differ_too_much_to_join() {
        let dir = tempfile::tempdir().unwrap();
        let (model, registry) = (tiny_model(dir.path()), registry());
        let mut requests = requests();
        requests[1].sampler.sampler = "No such sampler".into();
        let (outcomes, _) = joint(&model, &registry, JointInputs::Txt2img, &requests, None);
        assert!(
            matches!(outcomes[1], Err(JobError::Plan(_))),
            "{:?}",
            outcomes[1].as_ref().err()
        );
        assert_eq!(outcomes[0].as_ref().unwrap().images.len(), 2);
        assert_eq!(outcomes[2].as_ref().unwrap().images.len(), 1);
        // A failure of the shared work is each member's, of its kind.
        let (image, _) = picture();
        let empty = GrayImage::new(64, 48);
        let inputs = JointInputs::Img2img {
            image: &image,
            mask: Some(&empty),
        };
        let (outcomes, _) = joint(&model, &registry, inputs, &requests, None);
        assert!(matches!(outcomes[0], Err(JobError::Mask(MaskError::Empty))));
        assert!(matches!(outcomes[2], Err(JobError::Mask(MaskError::Empty))));

        let base = &requests[0];
        let other = |change: fn(&mut GenerationRequest)| {
            let mut next = requests[2].clone();
            change(&mut next);
            joinable(base, &next)
        };
        assert!(other(|_| ()));
        assert!(!other(|r| r.cfg_scale = 9.0));
        assert!(!other(|r| r.sampler.steps = 4));
        assert!(!other(|r| r.width = 128));
        assert!(!other(|r| r.n_iter = 2));
        assert!(!other(|r| r.prompt.push_str(" <lora:detail:0.5>")));
        assert!(!other(|r| r.hires.enable_hr = true));
        assert!(!other(|r| r.batch_size = MAX_BATCH_SIZE));
    }
}
