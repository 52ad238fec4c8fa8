//! Cross-request batching on the worker: which queued jobs may run as one batch, and running
//! such a group with each job's events going to its own connection (the pipeline side is
//! `pipeline/joint.rs`).

use std::cell::Cell;

use image::DynamicImage;
use sdhost_plugin_api::Flow;

use super::event::{ErrorCode, Event};
use super::queue::{Job, JobKind, Scheduler};
use super::worker::{job_error, job_observer, outcome_event, Worker};
use crate::pipeline::img2img::{JobEvent, JobOutcome};
use crate::pipeline::joint::{joinable, run_joint, JointInputs, JointMember};
use crate::request::GenerationRequest;

/// The generation parameters of a job that may join a batch (no script).
fn batchable(job: &Job) -> Option<&GenerationRequest> {
    match &job.kind {
        JobKind::Txt2img(request) if request.script.is_none() => Some(&request.params),
        JobKind::Generate(request) if request.script.is_none() => Some(&request.params),
        _ => None,
    }
}

/// Whether two img2img jobs start from the same pictures.
fn same_pictures(first: &JobKind, next: &JobKind) -> bool {
    let same = |a: &Option<DynamicImage>, b: &Option<DynamicImage>| a == b;
    match (first, next) {
        (JobKind::Txt2img(_), JobKind::Txt2img(_)) => true,
        (JobKind::Generate(a), JobKind::Generate(b)) => {
            a.mode == b.mode
                && a.image == b.image
                && same(&a.mask, &b.mask)
                && same(&a.sketch, &b.sketch)
        }
        _ => false,
    }
}

impl Worker {
    /// Whether the queued job `next` can join the jobs `taken` (taken in turn, the first of
    /// them first) in one batch: joint batching on, the images within its limit, and the same
    /// request but for prompts, seeds and batch size on the same pictures.
    pub(super) fn joins(&self, taken: &[Job], next: &Job) -> bool {
        let (Some(first), Some(params)) = (taken.first(), batchable(next)) else {
            return false;
        };
        let Some(first_params) = batchable(first) else {
            return false;
        };
        let images: usize = taken
            .iter()
            .filter_map(batchable)
            .map(|p| p.batch_size)
            .sum();
        self.joint_batch > 1
            && images + params.batch_size <= self.joint_batch
            && !next.stop.is_cancelled()
            && same_pictures(&first.kind, &next.kind)
            && joinable(first_params, params)
    }

    /// Runs `group` (jobs that [`Self::joins`] accepted) as one batch: each job is started,
    /// streamed and ended on its own connection as if it ran alone.
    pub(super) fn serve_joint(&mut self, group: &[Job], queue: &Scheduler) {
        let mut running = Vec::new();
        for job in group {
            if job.stop.is_cancelled() {
                // Cancelled while waiting in the group: never started.
                let event = Event::Cancelled {
                    id: job.request_id.clone(),
                    job: job.id,
                    images: 0,
                };
                Self::send(job, event);
                continue;
            }
            let started = Event::Started {
                id: job.request_id.clone(),
                job: job.id,
            };
            Self::send(job, started);
            running.push(job);
        }
        let Some(first) = running.first() else {
            return;
        };
        let fail_all = |code: ErrorCode, message: &str| {
            for job in &running {
                Self::send(job, job_error(job, code, message));
            }
        };
        let Some(first_params) = batchable(first) else {
            return fail_all(
                ErrorCode::Internal,
                "a job that cannot join a batch joined one",
            );
        };
        let vae_warning = match self.select_job_models(first_params) {
            Ok(warning) => warning,
            Err(message) => return fail_all(ErrorCode::InvalidParams, &message),
        };
        // The pictures are the same for every job: prepared once.
        let pictures = match &first.kind {
            JobKind::Generate(request) => match request.prepare() {
                Ok(prepared) => Some(prepared),
                Err(error) => return fail_all(ErrorCode::BadRequest, &error.to_string()),
            },
            _ => None,
        };
        let inputs = match &pictures {
            Some((image, mask)) => JointInputs::Img2img {
                image,
                mask: mask.as_ref(),
            },
            None => JointInputs::Txt2img,
        };
        self.live.begin(match inputs {
            JointInputs::Txt2img => "scripts_txt2img",
            JointInputs::Img2img { .. } => "scripts_img2img",
        });
        let model = &self.model;
        // Only the first job publishes the running state (`/progress` shows one job).
        // A job cancelled mid-batch is told at once (the others go on): its `cancelled`
        // event is sent when its observer first answers Cancel.
        let told: Vec<Cell<bool>> = running.iter().map(|_| Cell::new(false)).collect();
        let mut observers: Vec<_> = running
            .iter()
            .zip(&told)
            .enumerate()
            .map(|(index, (job, told))| {
                let params = batchable(job).expect("every job of the group is batchable");
                let live = (index == 0).then_some(&*self.live);
                let mut observe = job_observer(job, (params, preview_of(job)), model, live);
                let mut images = 0;
                move |event: JobEvent<'_>| {
                    images += usize::from(matches!(event, JobEvent::Image(_)));
                    let flow = observe(event);
                    if flow == Flow::Cancel && !told.replace(true) {
                        let outcome = Ok(JobOutcome {
                            images: Vec::new(),
                            cancelled: true,
                            interrupted: false,
                            warnings: Vec::new(),
                        });
                        let mut event = outcome_event(job, outcome, queue, None);
                        if let Event::Cancelled { images: sent, .. } = &mut event {
                            *sent = images;
                        }
                        Self::send(job, event);
                    }
                    flow
                }
            })
            .collect();
        let mut members: Vec<JointMember<'_>> = running
            .iter()
            .zip(observers.iter_mut())
            .map(|(job, observe)| JointMember {
                params: batchable(job).expect("every job of the group is batchable"),
                stop: &job.stop,
                observe,
            })
            .collect();
        let outcomes = run_joint(model, &self.registry, inputs, &mut members);
        drop(members);
        drop(observers);
        self.live.end();
        for ((job, outcome), told) in running.iter().zip(outcomes).zip(&told) {
            if !told.get() {
                Self::send(job, outcome_event(job, outcome, queue, vae_warning.clone()));
            }
        }
    }
}

/// The previews a job's client asked for.
fn preview_of(job: &Job) -> Option<crate::pipeline::preview::PreviewSettings> {
    match &job.kind {
        JobKind::Txt2img(request) => request.preview,
        JobKind::Generate(request) => request.preview,
        _ => None,
    }
}
