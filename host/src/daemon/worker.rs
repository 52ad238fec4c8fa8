//! The worker: the one thread that owns the model and the device. It takes jobs from the
//! queue in turn, streams their events to their connection and survives every job failure.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use sdhost_plugin_api::Flow;
use serde_json::json;
use tch::{Device, Kind};

use super::protocol::{Attachment, PixelFormat};
use super::queue::{Job, JobKind, Outgoing, Scheduler};
use super::request::GenerateRequest;
use super::ModelCatalog;
use crate::pipeline::img2img::{run_img2img, GeneratedImage, JobError, JobEvent};
use crate::pipeline::model::GenerationModel;
use crate::pipeline::preview::preview_image;
use crate::prepare::init_image::DEFAULT_BACKGROUND;
use crate::prepare::modes::ModeInputs;
use crate::sampling::plugins::SamplerRegistry;

/// What clients see of the loaded model (kept current by the worker).
#[derive(Debug, Clone, Default)]
pub struct ModelStatus {
    /// Infotext name of the loaded model.
    pub name: String,
    /// Its short hash.
    pub hash: String,
    /// Its file.
    pub path: PathBuf,
    /// Whether it is the random-weight demo model.
    pub demo: bool,
    /// Embeddings its prompts can use.
    pub embeddings: Vec<String>,
}

/// The worker's resources.
pub struct Worker {
    /// The loaded model.
    pub model: GenerationModel,
    /// Samplers.
    pub registry: SamplerRegistry,
    /// Models that can be selected.
    pub catalog: ModelCatalog,
    /// Embeddings folder for every model.
    pub embeddings_dir: Option<PathBuf>,
    /// Device and dtype models load on.
    pub device: Device,
    /// Dtype.
    pub kind: Kind,
    /// Shared status for `list` and `welcome`.
    pub status: Arc<Mutex<ModelStatus>>,
}

/// An `error` event for a job.
pub fn error_event(
    request_id: &serde_json::Value,
    job: Option<u64>,
    code: &str,
    message: &str,
) -> Outgoing {
    let mut header = json!({"type": "error", "id": request_id, "code": code, "message": message});
    if let Some(job) = job {
        header["job"] = json!(job);
    }
    Outgoing::event(header)
}

/// The error code of a failed job.
fn error_code(error: &JobError) -> &'static str {
    match error {
        JobError::InvalidParams(_) | JobError::Plan(_) | JobError::Unsupported(_) => {
            "invalid_params"
        }
        JobError::Mask(_) => "bad_mask",
        JobError::OutOfMemory { .. } => "out_of_memory",
        JobError::Sampling(_) => "sampler_failed",
        JobError::Rng(_) | JobError::Torch { .. } => "internal",
    }
}

fn rgba_attachment(name: &str, image: &image::RgbaImage) -> (Attachment, Vec<u8>) {
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
fn step_event(
    job: &Job,
    request: &GenerateRequest,
    model: &GenerationModel,
    (batch, step, steps_per_batch): (usize, usize, usize),
    denoised: &tch::Tensor,
) -> Outgoing {
    let header = json!({
        "type": "progress", "id": job.request_id, "job": job.id,
        "step": batch * steps_per_batch + step, "batch": batch,
    });
    let mut event = Outgoing::event(header);
    let Some(settings) = request.preview.filter(|s| s.due(step)) else {
        return event;
    };
    match preview_image(
        settings.method,
        denoised,
        0,
        &model.sd.vae,
        model.kind,
        request.params.vae_tiling(),
    ) {
        Ok(image) => {
            let rgba = image::DynamicImage::ImageRgb8(image).to_rgba8();
            event.header["preview"] = json!({
                "width": rgba.width(), "height": rgba.height(),
                "index": batch * request.params.batch_size,
            });
            event.attachments.push(rgba_attachment("preview", &rgba));
        }
        Err(error) => eprintln!("sdhost: job {}: no preview at step {step}: {error}", job.id),
    }
    event
}

/// The `result` event of one finished image: the image, and the patch when inpainting.
fn result_event(job: &Job, image: &GeneratedImage) -> Outgoing {
    let rgba = image::DynamicImage::ImageRgb8(image.image.clone()).to_rgba8();
    let mut attachments = vec![rgba_attachment("image", &rgba)];
    let mut header = json!({
        "type": "result", "id": job.request_id, "job": job.id, "index": image.index,
        "seed": image.seed, "infotext": image.infotext.to_text(),
    });
    if let Some(patch) = &image.patch {
        header["patch"] = json!({"x": patch.x, "y": patch.y});
        attachments.push(rgba_attachment("patch", &patch.image));
    }
    Outgoing {
        header,
        attachments,
    }
}

impl Worker {
    /// Serves jobs until the queue shuts down.
    pub fn run(mut self, queue: &Scheduler) {
        while let Some(job) = queue.next() {
            // Whatever a job hits, the worker (and with it the daemon) must go on.
            let outcome = catch_unwind(AssertUnwindSafe(|| self.serve(&job)));
            if let Err(payload) = outcome {
                let message = crate::error::panic_message(&*payload);
                Self::send(
                    &job,
                    error_event(&job.request_id, Some(job.id), "internal", &message),
                );
            }
            queue.finished();
        }
    }

    fn send(job: &Job, event: Outgoing) {
        // A closed connection already cancelled the job; nothing to tell it.
        let _ = job.events.send(event);
    }

    fn serve(&mut self, job: &Job) {
        let started = json!({"type": "started", "id": job.request_id, "job": job.id});
        if job.cancel.load(Ordering::SeqCst) {
            Self::send(
                job,
                Outgoing::event(json!({"type": "cancelled", "id": job.request_id, "job": job.id})),
            );
            return;
        }
        Self::send(job, Outgoing::event(started));
        match &job.kind {
            JobKind::SelectModel(name) => self.select_model(job, name),
            JobKind::Generate(request) => self.generate(job, request),
        }
    }

    fn select_model(&mut self, job: &Job, name: &str) {
        let Some(path) = self.catalog.find(name).map(PathBuf::from) else {
            let known = self.catalog.names().join(", ");
            Self::send(
                job,
                error_event(
                    &job.request_id,
                    Some(job.id),
                    "unknown_model",
                    &format!("no model \"{name}\" (known: {known})"),
                ),
            );
            return;
        };
        match GenerationModel::load(
            &path,
            self.device,
            self.kind,
            self.embeddings_dir.as_deref(),
        ) {
            Ok(model) => {
                self.model = model;
                let status = ModelStatus {
                    name: self.model.name.clone(),
                    hash: self.model.hash.clone(),
                    path,
                    demo: false,
                    embeddings: self.model.embeddings.names(),
                };
                *self.status.lock().unwrap_or_else(|p| p.into_inner()) = status;
                Self::send(
                    job,
                    Outgoing::event(json!({
                        "type": "done", "id": job.request_id, "job": job.id,
                        "model": self.model.name, "hash": self.model.hash,
                    })),
                );
            }
            Err(error) => Self::send(
                job,
                error_event(
                    &job.request_id,
                    Some(job.id),
                    "model_load_failed",
                    &error.to_string(),
                ),
            ),
        }
    }

    fn generate(&mut self, job: &Job, request: &GenerateRequest) {
        let prepared = request.mode.prepare(&ModeInputs {
            image: &request.image,
            sketch: request.sketch.as_ref(),
            mask: request.mask.as_ref(),
            mask_alpha: request.params.mask_alpha,
            mask_blur: request.params.inpaint.mask_blur_x,
            background: DEFAULT_BACKGROUND,
        });
        let (init, mask) = match prepared {
            Ok(inputs) => inputs,
            Err(error) => {
                Self::send(
                    job,
                    error_event(
                        &job.request_id,
                        Some(job.id),
                        "bad_request",
                        &error.to_string(),
                    ),
                );
                return;
            }
        };
        let mut steps_per_batch = 0;
        let model = &self.model;
        let outcome = run_img2img(
            model,
            &self.registry,
            &request.params,
            &init,
            mask.as_ref(),
            &mut |event| {
                match event {
                    JobEvent::Started {
                        images,
                        batches,
                        steps_per_batch: steps,
                    } => {
                        steps_per_batch = steps;
                        Self::send(
                            job,
                            Outgoing::event(json!({
                                "type": "progress", "id": job.request_id, "job": job.id,
                                "step": 0, "total": steps * batches, "images": images,
                            })),
                        );
                    }
                    JobEvent::Step {
                        batch,
                        step,
                        denoised,
                    } => Self::send(
                        job,
                        step_event(
                            job,
                            request,
                            model,
                            (batch, step, steps_per_batch),
                            denoised,
                        ),
                    ),
                    JobEvent::Image(image) => Self::send(job, result_event(job, image)),
                }
                if job.cancel.load(Ordering::SeqCst) {
                    Flow::Cancel
                } else {
                    Flow::Continue
                }
            },
        );
        let event = match outcome {
            Ok(outcome) if outcome.cancelled => Outgoing::event(json!({
                "type": "cancelled", "id": job.request_id, "job": job.id,
                "images": outcome.images.len(),
            })),
            Ok(outcome) => Outgoing::event(json!({
                "type": "done", "id": job.request_id, "job": job.id,
                "images": outcome.images.len(),
            })),
            Err(error) => error_event(
                &job.request_id,
                Some(job.id),
                error_code(&error),
                &error.to_string(),
            ),
        };
        Self::send(job, event);
    }
}
