//! The worker: the one thread that owns the model and the device. It takes jobs from the
//! queue in turn, streams their events to their connection and survives every job failure.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sdhost_plugin_api::Flow;
use tch::{Device, Kind};

use super::catalog::SharedCatalog;
use super::event::{
    DoneOutcome, ErrorCode, Event, Outgoing, Placement, PreviewFacts, ProgressDetail,
};
use super::live::LiveState;
use super::model_status::ModelStatus;
use super::protocol::{Attachment, PixelFormat};
use super::queue::{Job, JobKind, Scheduler};
use super::request::{GenerateRequest, InterrogateJob, Txt2imgJob};
use super::resident::{FileStamp, ResidentModel, ResidentModels};
use crate::extra_networks::dirs::NetworkDirs;
use crate::interrogate::{InterrogateError, Interrogator};
use crate::pipeline::img2img::{run_img2img, GeneratedImage, JobError, JobEvent, JobOutcome};
use crate::pipeline::model::GenerationModel;
use crate::pipeline::preview::{preview_image, PreviewSettings};
use crate::pipeline::txt2img::run_txt2img;
use crate::request::GenerationRequest;
use crate::sampling::plugins::SamplerRegistry;
use crate::scripts::{ScriptInit, ScriptJob};
use crate::sd_vae::VaeChooser;

/// The worker's resources.
pub struct Worker {
    /// The loaded model.
    pub model: GenerationModel,
    /// Samplers.
    pub registry: SamplerRegistry,
    /// Models that can be selected (shared with the front ends, which rescan it).
    pub catalog: SharedCatalog,
    /// Embeddings folder for every model.
    pub embeddings_dir: Option<PathBuf>,
    /// Where every model's jobs find extra networks and VAEs.
    pub network_dirs: NetworkDirs,
    /// Device and dtype models load on.
    pub device: Device,
    /// Dtype.
    pub kind: Kind,
    /// Shared status for `list` and `welcome`.
    pub status: Arc<Mutex<ModelStatus>>,
    /// Where the running job's progress is published (the HTTP API's `/progress`).
    pub live: Arc<LiveState>,
    /// The interrogation models, loaded on first use.
    pub interrogator: Interrogator,
    /// Checkpoints kept loaded besides `model` (`sd_checkpoints_limit`).
    pub resident: ResidentModels,
    /// Most images in one batch of queued jobs run together (1: each job alone).
    pub joint_batch: usize,
}

/// A generation job's pipeline call, given the model, the samplers and the event observer.
type RunJob<'a> = dyn FnMut(
        &GenerationModel,
        &SamplerRegistry,
        &mut dyn FnMut(JobEvent<'_>) -> Flow,
    ) -> Result<JobOutcome, JobError>
    + 'a;

/// The error code of a failed job.
pub(super) fn error_code(error: &JobError) -> ErrorCode {
    match error {
        JobError::InvalidParams(_)
        | JobError::Plan(_)
        | JobError::Unsupported(_)
        | JobError::Prompt(_) => ErrorCode::InvalidParams,
        JobError::Mask(_) => ErrorCode::BadMask,
        JobError::OutOfMemory { .. } => ErrorCode::OutOfMemory,
        JobError::Sampling(_) => ErrorCode::SamplerFailed,
        JobError::Rng(_) | JobError::Torch { .. } => ErrorCode::Internal,
    }
}

/// The error code of a failed interrogation: a model file missing or unreadable is
/// `model_load_failed`, bad options `invalid_params`.
pub(super) fn interrogate_error_code(error: &InterrogateError) -> ErrorCode {
    match error {
        InterrogateError::InvalidOptions(_) | InterrogateError::EmptyPicture(..) => {
            ErrorCode::InvalidParams
        }
        InterrogateError::OutOfMemory(_) => ErrorCode::OutOfMemory,
        InterrogateError::Torch(_) | InterrogateError::Ranking(_) => ErrorCode::Internal,
        InterrogateError::Missing(_)
        | InterrogateError::Blip(_)
        | InterrogateError::ClipModel(_)
        | InterrogateError::Categories(_)
        | InterrogateError::Deepbooru(_) => ErrorCode::ModelLoadFailed,
    }
}

/// The `error` event of job `job` failing with `code`.
pub(super) fn job_error(job: &Job, code: ErrorCode, message: impl Into<String>) -> Outgoing {
    Event::error(&job.request_id, Some(job.id), code, message).into()
}

/// The `warning` event of job `job`.
pub(super) fn warning_event(job: &Job, message: &str) -> Event {
    Event::Warning {
        id: job.request_id.clone(),
        job: job.id,
        message: message.to_string(),
    }
}

/// What a job's observer answers the sampler: stop once the job is cancelled.
pub(super) fn job_flow(job: &Job) -> Flow {
    if job.stop.is_cancelled() {
        Flow::Cancel
    } else {
        Flow::Continue
    }
}

pub(super) fn rgba_attachment(name: &str, image: &image::RgbaImage) -> (Attachment, Vec<u8>) {
    (
        Attachment {
            name: name.into(),
            format: PixelFormat::Rgba8,
            width: image.width(),
            height: image.height(),
            length: image.as_raw().len() as u64,
        },
        image.as_raw().clone(),
    )
}

/// The `progress` event of sampler step `step` of batch `batch`, with the preview of the batch's
/// first image when the request asked for one at this step. A preview that cannot be made
/// (out of memory in a full decode …) is left out: previews never fail a job.
pub(super) fn step_event(
    job: &Job,
    (params, preview): (&GenerationRequest, Option<PreviewSettings>),
    model: &GenerationModel,
    (batch, step, steps_per_batch): (usize, usize, usize),
    denoised: &tch::Tensor,
) -> Outgoing {
    let progress = |preview| Event::Progress {
        id: job.request_id.clone(),
        job: job.id,
        step: batch * steps_per_batch + step,
        detail: ProgressDetail::Step { batch, preview },
    };
    let Some(settings) = preview.filter(|s| s.due(step)) else {
        return progress(None).into();
    };
    match preview_image(
        settings.method,
        denoised,
        0,
        &model.sd.vae,
        model.kind,
        params.vae_tiling(),
    ) {
        Ok(image) => {
            let rgba = image::DynamicImage::ImageRgb8(image).to_rgba8();
            let facts = PreviewFacts {
                width: rgba.width(),
                height: rgba.height(),
                index: batch * params.batch_size,
            };
            Outgoing {
                event: progress(Some(facts)),
                attachments: vec![rgba_attachment("preview", &rgba)],
            }
        }
        Err(error) => {
            eprintln!("sdhost: job {}: no preview at step {step}: {error}", job.id);
            progress(None).into()
        }
    }
}

/// Publishes sampler step `step` of batch `batch` as the running job's state, with a cheap
/// preview of the batch's first image when one is due (A1111's live previews, which
/// `/progress` shows). A preview that cannot be made is left out.
pub(super) fn publish_step(
    live: &LiveState,
    model: &GenerationModel,
    params: &GenerationRequest,
    (batch, step): (usize, usize),
    denoised: &tch::Tensor,
) {
    live.step(batch, step);
    if !live.preview_due() {
        return;
    }
    let method = crate::pipeline::preview::PreviewMethod::ApproxCheap;
    match preview_image(
        method,
        denoised,
        0,
        &model.sd.vae,
        model.kind,
        params.vae_tiling(),
    ) {
        Ok(image) => live.set_preview(image),
        Err(error) => eprintln!("sdhost: no live preview at step {step}: {error}"),
    }
}

/// The `result` event of one finished image: the image, and the patch when inpainting.
pub(super) fn result_event(job: &Job, image: &GeneratedImage) -> Outgoing {
    let rgba = image::DynamicImage::ImageRgb8(image.image.clone()).to_rgba8();
    let mut attachments = vec![rgba_attachment("image", &rgba)];
    if let Some(patch) = &image.patch {
        attachments.push(rgba_attachment("patch", &patch.image));
    }
    Outgoing {
        event: Event::Result {
            id: job.request_id.clone(),
            job: job.id,
            index: image.index,
            seed: image.seed,
            infotext: image.infotext.to_text(),
            patch: image.patch.as_ref().map(|p| Placement { x: p.x, y: p.y }),
            grid: false,
            cell: Vec::new(),
        },
        attachments,
    }
}

impl Worker {
    /// A CPU fp32 worker over the checkpoints of `dir` with `first` loaded, keeping `limit`
    /// loaded, no interrogation models (the benchmarks' and tests' worker).
    pub fn over_models(
        dir: &Path,
        first: &Path,
        limit: usize,
        registry: SamplerRegistry,
    ) -> Result<Self, crate::pipeline::model::ModelError> {
        let model = GenerationModel::load(first, Device::Cpu, Kind::Float, None)?;
        let status = ModelStatus::of(&model, first.to_path_buf(), limit);
        Ok(Worker {
            model,
            registry,
            catalog: super::ModelCatalog::scan(Some(dir), None).shared(),
            embeddings_dir: None,
            network_dirs: NetworkDirs::default(),
            device: Device::Cpu,
            kind: Kind::Float,
            status: Arc::new(Mutex::new(status)),
            live: Arc::new(LiveState::default()),
            interrogator: Interrogator::new(
                crate::interrogate::InterrogateFiles::default(),
                Device::Cpu,
                None,
            ),
            resident: ResidentModels::new(FileStamp::of(first)),
            joint_batch: 1,
        })
    }
}

impl Worker {
    /// Serves jobs until the queue shuts down: one at a time, or queued jobs that differ only
    /// in prompts and seeds as one batch (`joint_batch`).
    pub fn run(mut self, queue: &Scheduler) {
        while let Some(group) = queue.next_group(|taken, next| self.joins(taken, next)) {
            // Whatever a job hits, the worker (and with it the daemon) must go on.
            let outcome = catch_unwind(AssertUnwindSafe(|| match group.as_slice() {
                [job] => self.serve(job, queue),
                jobs => self.serve_joint(jobs, queue),
            }));
            if let Err(payload) = outcome {
                let message = crate::error::panic_message(&*payload);
                for job in &group {
                    Self::send(job, job_error(job, ErrorCode::Internal, &message));
                }
            }
            queue.finished();
        }
    }

    pub(super) fn send(job: &Job, event: impl Into<Outgoing>) {
        // A closed connection already cancelled the job; nothing to tell it.
        let _ = job.events.send(event.into());
    }

    fn serve(&mut self, job: &Job, queue: &Scheduler) {
        let (id, job_id) = (job.request_id.clone(), job.id);
        if job.stop.is_cancelled() {
            let stopped = if queue.is_shut_down() {
                let message = "the daemon is shutting down; the job did not start";
                job_error(job, ErrorCode::ShuttingDown, message)
            } else {
                let images = 0;
                Event::Cancelled {
                    id,
                    job: job_id,
                    images,
                }
                .into()
            };
            Self::send(job, stopped);
            return;
        }
        Self::send(job, Event::Started { id, job: job_id });
        match &job.kind {
            JobKind::SelectModel(name) => self.select_model(job, name),
            JobKind::Interrogate(request) => {
                self.live.begin("interrogate");
                self.interrogate(job, request);
                self.live.end();
            }
            JobKind::Upscale(request) => {
                self.live.begin("extras");
                self.upscale(job, request, queue);
                self.live.end();
            }
            JobKind::Generate(request) => {
                self.live.begin("scripts_img2img");
                self.generate(job, request, queue);
                self.live.end();
            }
            JobKind::Txt2img(request) => {
                self.live.begin("scripts_txt2img");
                self.txt2img(job, request, queue);
                self.live.end();
            }
        }
    }

    /// The catalog as last scanned.
    pub(super) fn catalog(&self) -> std::sync::RwLockReadGuard<'_, super::ModelCatalog> {
        self.catalog.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Loads the refiner a request names (a catalog name or title, or a file), keeping it
    /// loaded for later jobs.
    pub(super) fn select_refiner(&mut self, name: &str) -> Result<(), String> {
        if name.is_empty() {
            return Ok(());
        }
        let found = self.catalog().find(name);
        let path = match found {
            Some(path) => path,
            None if Path::new(name).is_file() => PathBuf::from(name),
            None => {
                let known = self.catalog().names().join(", ");
                return Err(format!("no refiner checkpoint \"{name}\" (known: {known})"));
            }
        };
        self.model
            .select_refiner(&path, self.embeddings_dir.as_deref())
            .map(drop)
            .map_err(|e| format!("refiner: {e}"))
    }

    /// Makes the checkpoint `name` (a catalog name or title) the loaded model and publishes
    /// it: nothing to do when it is the loaded one and `reload` is off (`reload` reads the
    /// loaded one again); a resident model whose file is unchanged comes back without a load
    /// (A1111's `sd_checkpoints_limit`); the model it replaces stays resident within the
    /// limit. The error says why not.
    pub fn load_checkpoint(&mut self, name: &str, reload: bool) -> Result<(), (ErrorCode, String)> {
        let found = self.catalog().find(name);
        let Some(path) = found else {
            let known = self.catalog().names().join(", ");
            let message = format!("no model \"{name}\" (known: {known})");
            return Err((ErrorCode::UnknownModel, message));
        };
        let current = self
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if current.path == path && !reload {
            return Ok(());
        }
        let limit = current.checkpoints_limit.max(1);
        let start = std::time::Instant::now();
        let resident = if current.path == path {
            None
        } else {
            self.resident.take(&path)
        };
        let (model, status, stamp, how) = match resident {
            Some(resident) => (
                resident.model,
                resident.status,
                resident.stamp,
                "switched to",
            ),
            None => {
                // Room first: with the new model in, at most `limit` are in memory.
                self.resident.trim(limit - 1);
                let stamp = FileStamp::of(&path);
                let model = GenerationModel::load(
                    &path,
                    self.device,
                    self.kind,
                    self.embeddings_dir.as_deref(),
                )
                .map_err(|error| (ErrorCode::ModelLoadFailed, error.to_string()))?
                .with_network_dirs(self.network_dirs.clone());
                let status = ModelStatus::of(&model, path, limit);
                (model, status, stamp, "loaded")
            }
        };
        let status = ModelStatus {
            checkpoints_limit: current.checkpoints_limit,
            ..status
        };
        let previous = std::mem::replace(&mut self.model, model);
        let switched = status.path != current.path;
        *self.status.lock().unwrap_or_else(|p| p.into_inner()) = status;
        let previous_stamp = self.resident.replace_current_stamp(stamp);
        if switched {
            let kept = ResidentModel {
                model: previous,
                status: current,
                stamp: previous_stamp,
            };
            self.resident.keep(kept, limit);
        }
        eprintln!(
            "sdhost: {how} {} in {:.2} s",
            self.model.name,
            start.elapsed().as_secs_f64()
        );
        Ok(())
    }

    fn select_model(&mut self, job: &Job, name: &str) {
        // `select_model` always loads, the loaded model included (a fresh copy from disk).
        match self.load_checkpoint(name, true) {
            Ok(()) => {
                let done = Event::Done {
                    id: job.request_id.clone(),
                    job: job.id,
                    outcome: DoneOutcome::Model {
                        model: self.model.name.clone(),
                        hash: self.model.hash.clone(),
                    },
                };
                Self::send(job, done);
            }
            Err((code, message)) => Self::send(job, job_error(job, code, message)),
        }
    }

    fn interrogate(&mut self, job: &Job, request: &InterrogateJob) {
        let result =
            self.interrogator
                .interrogate(&request.image, request.method, &request.options);
        match result {
            Ok(caption) => {
                let done = Event::Done {
                    id: job.request_id.clone(),
                    job: job.id,
                    outcome: DoneOutcome::Caption {
                        caption,
                        method: request.method.api_name().to_string(),
                    },
                };
                Self::send(job, done);
            }
            Err(error) => {
                let code = interrogate_error_code(&error);
                Self::send(job, job_error(job, code, error.to_string()));
            }
        }
    }

    fn generate(&mut self, job: &Job, request: &GenerateRequest, queue: &Scheduler) {
        let (init, mask) = match request.prepare() {
            Ok(inputs) => inputs,
            Err(error) => {
                Self::send(
                    job,
                    job_error(job, ErrorCode::BadRequest, error.to_string()),
                );
                return;
            }
        };
        if let Some(script) = &request.script {
            let base = ScriptJob {
                params: request.params.clone(),
                init: Some(ScriptInit::new(init, mask)),
                checkpoint: None,
                cell: Vec::new(),
            };
            self.run_script(job, script, &base, request.preview, queue);
            return;
        }
        let params = &request.params;
        let (init, mask) = (&init, mask.as_ref());
        self.run_job(
            job,
            (params, request.preview),
            queue,
            &mut |model, registry, observe| {
                run_img2img(model, registry, params, init, mask, &job.stop, observe)
            },
        );
    }

    fn txt2img(&mut self, job: &Job, request: &Txt2imgJob, queue: &Scheduler) {
        if let Some(script) = &request.script {
            let base = ScriptJob {
                params: request.params.clone(),
                init: None,
                checkpoint: None,
                cell: Vec::new(),
            };
            self.run_script(job, script, &base, request.preview, queue);
            return;
        }
        let params = &request.params;
        self.run_job(
            job,
            (params, request.preview),
            queue,
            &mut |model, registry, observe| {
                run_txt2img(model, registry, params, &job.stop, observe)
            },
        );
    }

    /// Chooses a generation job's VAE and loads its refiner, before any work (A1111 reloads the
    /// VAE before processing): the VAE's warning (a name not found is A1111's warning, and the
    /// job runs with the checkpoint's own; it goes into the `done` event), or why the job
    /// cannot run.
    pub(super) fn select_job_models(
        &mut self,
        params: &GenerationRequest,
    ) -> Result<Option<String>, String> {
        let warning = self
            .model
            .select_vae_for(VaeChooser::Client, &params.sd_vae)
            .map_err(|error| error.to_string())?;
        self.select_refiner(&params.refiner_checkpoint)?;
        Ok(warning)
    }

    /// Runs a generation job with its VAE and refiner, streaming its events (progress with
    /// the asked previews, warnings, results) and ending it with `done`, `cancelled` or an
    /// error.
    fn run_job(
        &mut self,
        job: &Job,
        (params, preview): (&GenerationRequest, Option<PreviewSettings>),
        queue: &Scheduler,
        run: &mut RunJob<'_>,
    ) {
        let vae_warning = match self.select_job_models(params) {
            Ok(warning) => warning,
            Err(message) => {
                Self::send(job, job_error(job, ErrorCode::InvalidParams, message));
                return;
            }
        };
        let mut observe = job_observer(job, (params, preview), &self.model, Some(&self.live));
        let outcome = run(&self.model, &self.registry, &mut observe);
        Self::send(job, outcome_event(job, outcome, queue, vae_warning));
    }
}

/// The observer of a generation job's events: progress with the asked previews, warnings and
/// results go to its connection; with `live`, its steps are also published as the running
/// job's state (the HTTP API's `/progress`). It answers [`Flow::Cancel`] once the job is
/// cancelled.
pub(super) fn job_observer<'a>(
    job: &'a Job,
    (params, preview): (&'a GenerationRequest, Option<PreviewSettings>),
    model: &'a GenerationModel,
    live: Option<&'a LiveState>,
) -> impl FnMut(JobEvent<'_>) -> Flow + 'a {
    let mut steps_per_batch = 0;
    move |event| {
        match event {
            JobEvent::Started {
                images,
                batches,
                steps_per_batch: steps,
                hires_steps,
            } => {
                steps_per_batch = steps;
                if let Some(live) = live {
                    live.planned(batches, steps, hires_steps);
                }
                let planned = Event::Progress {
                    id: job.request_id.clone(),
                    job: job.id,
                    step: 0,
                    detail: ProgressDetail::Planned {
                        total: steps * batches,
                        images,
                    },
                };
                Worker::send(job, planned);
            }
            JobEvent::Step {
                batch,
                step,
                denoised,
            } => {
                if let Some(live) = live {
                    publish_step(live, model, params, (batch, step), denoised);
                }
                Worker::send(
                    job,
                    step_event(
                        job,
                        (params, preview),
                        model,
                        (batch, step, steps_per_batch),
                        denoised,
                    ),
                )
            }
            JobEvent::Image(image) => {
                if let Some(live) = live.filter(|_| (image.index + 1) % params.batch_size == 0) {
                    live.batches_done((image.index + 1) / params.batch_size);
                }
                Worker::send(job, result_event(job, image))
            }
            JobEvent::Warning(message) => Worker::send(job, warning_event(job, message)),
        }
        job_flow(job)
    }
}

/// The event that ends a generation job: `done` (with the VAE's warning and the job's),
/// `cancelled`, or an error (`shutting_down` when the daemon stopped it).
pub(super) fn outcome_event(
    job: &Job,
    outcome: Result<JobOutcome, JobError>,
    queue: &Scheduler,
    vae_warning: Option<String>,
) -> Event {
    let (id, job_id) = (job.request_id.clone(), job.id);
    match outcome {
        // Stopped by the daemon, not by its client: say so, so that an editor reports
        // why its picture did not come.
        Ok(outcome) if outcome.cancelled && queue.is_shut_down() => Event::error(
            &id,
            Some(job_id),
            ErrorCode::ShuttingDown,
            format!(
                "the daemon is shutting down; the job stopped after {} of its images",
                outcome.images.len()
            ),
        ),
        Ok(outcome) if outcome.cancelled => Event::Cancelled {
            id,
            job: job_id,
            images: outcome.images.len(),
        },
        Ok(outcome) => Event::Done {
            id,
            job: job_id,
            outcome: DoneOutcome::Images {
                images: outcome.images.len(),
                warnings: vae_warning.into_iter().chain(outcome.warnings).collect(),
            },
        },
        Err(error) => Event::error(&id, Some(job_id), error_code(&error), error.to_string()),
    }
}
