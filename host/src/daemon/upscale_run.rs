//! The worker's side of an `upscale` job (the request and its checks are `upscale.rs`): the
//! picture through the extras core, one `result`, then `done`; cancel stops a model upscaler
//! between tiles.

use super::event::{DoneOutcome, ErrorCode, Event, Outgoing};
use super::queue::{Job, Scheduler};
use super::upscale::{join_alpha, UpscaleJob};
use super::worker::{job_error, rgba_attachment, Worker};
use crate::upscale::extras::{infotext, postprocess, ExtrasError, UpscalerSource};

impl Worker {
    /// Runs an `upscale` job: its `result` (the picture, the postprocessing infotext) and
    /// `done`; `cancelled` when stopped between a model's tiles.
    pub(super) fn upscale(&mut self, job: &Job, request: &UpscaleJob, queue: &Scheduler) {
        let source = UpscalerSource {
            dirs: &self.network_dirs.upscalers,
            cache: &self.model.upscalers,
            device: self.device,
        };
        let stop = || job.stop.is_cancelled();
        let (id, job_id) = (job.request_id.clone(), job.id);
        let event: Outgoing = match postprocess(&request.image, &request.upscale, &source, &stop) {
            Ok((image, info)) => {
                let rgba = join_alpha(&image, request.alpha.as_ref());
                Self::send(
                    job,
                    Outgoing {
                        event: Event::Result {
                            id: id.clone(),
                            job: job_id,
                            index: 0,
                            seed: 0,
                            infotext: infotext(&info),
                            patch: None,
                            grid: false,
                            cell: Vec::new(),
                        },
                        attachments: vec![rgba_attachment("image", &rgba)],
                    },
                );
                Event::Done {
                    id,
                    job: job_id,
                    outcome: DoneOutcome::Images {
                        images: 1,
                        warnings: Vec::new(),
                    },
                }
                .into()
            }
            Err(ExtrasError::Stopped) if queue.is_shut_down() => job_error(
                job,
                ErrorCode::ShuttingDown,
                "the daemon is shutting down; the upscale stopped",
            ),
            Err(ExtrasError::Stopped) => Event::Cancelled {
                id,
                job: job_id,
                images: 0,
            }
            .into(),
            // The file went away since the request was accepted.
            Err(error @ ExtrasError::Unknown(_)) => {
                job_error(job, ErrorCode::InvalidParams, error.to_string())
            }
            Err(error @ ExtrasError::Load { .. }) => {
                job_error(job, ErrorCode::ModelLoadFailed, error.to_string())
            }
        };
        Self::send(job, event);
    }
}
