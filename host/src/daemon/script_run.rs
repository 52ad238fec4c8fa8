//! A script's jobs on the worker: [`WorkerHost`] is the daemon's [`ScriptHost`]. One plan of
//! all its steps is announced first, then each job's steps and images count on from the last
//! (so a client's progress bar covers every cell), checkpoints are loaded as the jobs ask, and
//! the script's grids come last as `result` events marked `grid`, before `done`.

use super::event::{DoneOutcome, ErrorCode, Event, Outgoing, ProgressDetail};
use super::queue::{Job, Scheduler};
use super::worker::{
    error_code, interrogate_error_code, job_error, job_flow, publish_step, result_event,
    rgba_attachment, step_event, warning_event, Worker,
};
use crate::interrogate::Interrogator;
use crate::pipeline::img2img::{run_img2img_with, JobEvent, JobOutcome};
use crate::pipeline::preview::PreviewSettings;
use crate::pipeline::txt2img::run_txt2img;
use crate::sampling::plugins::SamplerRegistry;
use crate::scripts::sd_upscale::ready_upscaler;
use crate::scripts::{Script, ScriptError, ScriptHost, ScriptImage, ScriptJob, UpscalerChoice};
use crate::sd_vae::VaeChooser;
use crate::upscale::ReadyUpscaler;

/// The worker running one script job.
struct WorkerHost<'w> {
    worker: &'w mut Worker,
    job: &'w Job,
    preview: Option<PreviewSettings>,
    /// Steps reported by the script's finished jobs.
    steps_done: usize,
    /// Images sent by them.
    images_sent: usize,
    /// Their warnings, for `done`.
    warnings: Vec<String>,
}

impl ScriptHost for WorkerHost<'_> {
    fn registry(&self) -> &SamplerRegistry {
        &self.worker.registry
    }

    fn has_checkpoint(&self, name: &str) -> bool {
        self.worker.catalog().find(name).is_some()
    }

    fn plan(&mut self, total_steps: usize, jobs: usize) {
        let planned = Event::Progress {
            id: self.job.request_id.clone(),
            job: self.job.id,
            step: 0,
            detail: ProgressDetail::Planned {
                total: total_steps,
                images: jobs,
            },
        };
        Worker::send(self.job, planned);
    }

    fn run(&mut self, sjob: &ScriptJob) -> Result<JobOutcome, ScriptError> {
        let job = self.job;
        if let Some(name) = &sjob.checkpoint {
            self.worker
                .load_checkpoint(name, false)
                .map_err(|(_, message)| ScriptError::Checkpoint {
                    name: name.clone(),
                    message,
                })?;
        }
        let params = &sjob.params;
        let vae_warning = self
            .worker
            .model
            .select_vae_for(VaeChooser::Client, &params.sd_vae)
            .map_err(|e| ScriptError::Checkpoint {
                name: params.sd_vae.clone(),
                message: e.to_string(),
            })?;
        if let Some(warning) = vae_warning {
            self.warn(warning);
        }
        self.worker
            .select_refiner(&params.refiner_checkpoint)
            .map_err(|message| ScriptError::Checkpoint {
                name: params.refiner_checkpoint.clone(),
                message,
            })?;
        let (offset, first_index) = (self.steps_done, self.images_sent);
        let mut steps_per_batch = 0;
        let mut job_steps = 0;
        let mut warnings = Vec::new();
        let worker = &*self.worker;
        let (model, registry, live) = (&worker.model, &worker.registry, &worker.live);
        let preview = self.preview;
        let deliver = sjob.init.as_ref().is_none_or(|init| init.deliver);
        let mut observe = |event: JobEvent<'_>| {
            match event {
                JobEvent::Started {
                    batches,
                    steps_per_batch: steps,
                    hires_steps,
                    ..
                } => {
                    steps_per_batch = steps;
                    job_steps = steps * batches;
                    live.planned(batches, steps, hires_steps);
                }
                JobEvent::Step {
                    batch,
                    step,
                    denoised,
                } => {
                    publish_step(live, model, params, (batch, step), denoised);
                    let mut outgoing = step_event(
                        job,
                        (params, preview),
                        model,
                        (batch, step, steps_per_batch),
                        denoised,
                    );
                    if let Event::Progress { step, .. } = &mut outgoing.event {
                        *step += offset;
                    }
                    Worker::send(job, outgoing);
                }
                JobEvent::Image(_) if !deliver => {}
                JobEvent::Image(image) => {
                    let mut outgoing = result_event(job, image);
                    if let Event::Result { index, cell, .. } = &mut outgoing.event {
                        *index += first_index;
                        cell.clone_from(&sjob.cell);
                    }
                    Worker::send(job, outgoing);
                }
                JobEvent::Warning(message) => {
                    warnings.push(message.to_string());
                    Worker::send(job, warning_event(job, message));
                }
            }
            job_flow(job)
        };
        let outcome = match &sjob.init {
            Some(init) => run_img2img_with(
                model,
                registry,
                params,
                init.inputs(),
                &job.stop,
                &mut observe,
            ),
            None => run_txt2img(model, registry, params, &job.stop, &mut observe),
        }?;
        self.steps_done += job_steps;
        if deliver {
            self.images_sent += outcome.images.len();
        }
        self.warnings.extend(warnings);
        Ok(outcome)
    }

    fn upscaler(&self, choice: &UpscalerChoice) -> Result<(String, ReadyUpscaler), ScriptError> {
        ready_upscaler(choice, &self.worker.model)
    }

    fn stopped(&self) -> bool {
        self.job.stop.ends_job()
    }

    fn interrogator(&mut self) -> &mut Interrogator {
        &mut self.worker.interrogator
    }
}

impl WorkerHost<'_> {
    fn warn(&mut self, message: String) {
        Worker::send(self.job, warning_event(self.job, &message));
        self.warnings.push(message);
    }
}

/// The `result` event of a script's grid number `index`.
fn grid_event(job: &Job, index: usize, grid: &ScriptImage) -> Outgoing {
    let rgba = image::DynamicImage::ImageRgb8(grid.image.clone()).to_rgba8();
    Outgoing {
        event: Event::Result {
            id: job.request_id.clone(),
            job: job.id,
            index,
            seed: grid.seed,
            infotext: grid.infotext.to_text(),
            patch: None,
            grid: true,
            cell: Vec::new(),
        },
        attachments: vec![rgba_attachment("image", &rgba)],
    }
}

/// The `error` code of a script that failed.
fn script_error_code(error: &ScriptError) -> ErrorCode {
    match error {
        ScriptError::NotFound(_) | ScriptError::InvalidArgs { .. } => ErrorCode::InvalidParams,
        ScriptError::Checkpoint { .. } => ErrorCode::ModelLoadFailed,
        ScriptError::Job(error) => error_code(error),
        ScriptError::Interrogate(error) => interrogate_error_code(error),
    }
}

impl Worker {
    /// Runs `script` over `base` as job `job`: its jobs' progress and images as they come, its
    /// grids, then `done` (or `cancelled`, or an error).
    pub(super) fn run_script(
        &mut self,
        job: &Job,
        script: &Script,
        base: &ScriptJob,
        preview: Option<PreviewSettings>,
        queue: &Scheduler,
    ) {
        let mut host = WorkerHost {
            worker: self,
            job,
            preview,
            steps_done: 0,
            images_sent: 0,
            warnings: Vec::new(),
        };
        let result = script.run(&mut host, base);
        let (mut images, mut warnings) = (host.images_sent, host.warnings);
        let (id, job_id) = (job.request_id.clone(), job.id);
        let event = match result {
            Ok(outcome) => {
                for (index, grid) in outcome.grids.iter().enumerate() {
                    Self::send(job, grid_event(job, index, grid));
                }
                // Pictures the script composed, as the job's images.
                for made in &outcome.made {
                    let mut event = grid_event(job, images, made);
                    if let Event::Result { grid, .. } = &mut event.event {
                        *grid = false;
                    }
                    Self::send(job, event);
                    images += 1;
                }
                warnings.extend(outcome.warnings);
                if outcome.stopped && queue.is_shut_down() {
                    let message = format!(
                        "the daemon is shutting down; the script stopped after {images} of its images"
                    );
                    Event::error(&id, Some(job_id), ErrorCode::ShuttingDown, message)
                } else if outcome.stopped && job.stop.is_cancelled() {
                    Event::Cancelled {
                        id,
                        job: job_id,
                        images,
                    }
                } else {
                    Event::Done {
                        id,
                        job: job_id,
                        outcome: DoneOutcome::Images { images, warnings },
                    }
                }
            }
            Err(error) => {
                let code = script_error_code(&error);
                return Self::send(job, job_error(job, code, error.to_string()));
            }
        };
        Self::send(job, event);
    }
}
