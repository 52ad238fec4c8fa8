//! What the running job is doing, published by the worker for every job (socket or HTTP) and
//! read by the HTTP API's `/progress` without touching the queue: A1111's `shared.state`
//! (`modules/shared_state.py: State`) with its field meanings, and the latest live preview.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use image::RgbImage;

/// A1111's `show_progress_every_n_steps` default.
pub const DEFAULT_PREVIEW_EVERY: usize = 10;

/// A1111's `State` fields as `/progress` shows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateFields {
    /// `skip` was asked during this job.
    pub skipped: bool,
    /// `interrupt` was asked since the last job began (it stays set while idle).
    pub interrupted: bool,
    /// `""` idle, `scripts_img2img` / `scripts_txt2img`, `Batch n out of m`.
    pub job: String,
    /// 0 idle; the job's batch count while it runs.
    pub job_count: usize,
    /// `%Y%m%d%H%M%S` of the job's start (`"0"` before the first).
    pub job_timestamp: String,
    /// Batches finished.
    pub job_no: usize,
    /// Index (from 0) of the last finished sampler step of the running batch.
    pub sampling_step: usize,
    /// Steps each batch runs (stale between jobs, as in A1111).
    pub sampling_steps: usize,
}

/// A snapshot for `/progress`.
#[derive(Debug, Clone)]
pub struct LiveSnapshot {
    /// The state fields.
    pub fields: StateFields,
    /// When the running job began (None when idle).
    pub started: Option<Instant>,
    /// The latest preview and its serial number (for caching its encoding).
    pub preview: Option<(u64, Arc<RgbImage>)>,
}

#[derive(Debug)]
struct Inner {
    fields: StateFields,
    started: Option<Instant>,
    preview: Option<(u64, Arc<RgbImage>)>,
    serial: u64,
    /// `sampling_step` of the last preview (A1111's `current_image_sampling_step`).
    preview_step: usize,
    /// Batch count of the running job (for the `Batch n out of m` label).
    batches: usize,
    /// The batch being sampled.
    batch: usize,
}

/// The running job's state, shared by the worker (writer) and the API (reader).
#[derive(Debug)]
pub struct LiveState {
    inner: Mutex<Inner>,
    /// Preview every this many steps (0: no previews); A1111's option.
    preview_every: AtomicUsize,
}

impl Default for LiveState {
    fn default() -> Self {
        LiveState {
            inner: Mutex::new(Inner {
                fields: StateFields {
                    skipped: false,
                    interrupted: false,
                    job: String::new(),
                    job_count: 0,
                    job_timestamp: "0".into(),
                    job_no: 0,
                    sampling_step: 0,
                    sampling_steps: 0,
                },
                started: None,
                preview: None,
                serial: 0,
                preview_step: 0,
                batches: 0,
                batch: 0,
            }),
            preview_every: AtomicUsize::new(DEFAULT_PREVIEW_EVERY),
        }
    }
}

/// The local time as `%Y%m%d%H%M%S`, as A1111's `job_timestamp`.
pub fn timestamp_now() -> String {
    let mut now: libc::time_t = 0;
    // SAFETY: `time` writes one time_t; `localtime_r` fills the tm we own.
    let tm = unsafe {
        libc::time(&mut now);
        let mut tm: libc::tm = std::mem::zeroed();
        libc::localtime_r(&now, &mut tm);
        tm
    };
    format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

impl LiveState {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Each update is a few field writes; a panic cannot leave a half-made state to fear.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A1111's `State.begin(job)`: a job starts (flags reset, timestamp set). The batch count
    /// is not known yet (A1111's −1 shows as a running job with nothing done).
    pub fn begin(&self, job: &str) {
        let mut inner = self.lock();
        inner.fields = StateFields {
            skipped: false,
            interrupted: false,
            job: job.into(),
            // A1111 sets −1 here; 1 keeps the same meaning (running) in an unsigned field.
            job_count: 1,
            job_timestamp: timestamp_now(),
            job_no: 0,
            sampling_step: 0,
            sampling_steps: inner.fields.sampling_steps,
        };
        inner.started = Some(Instant::now());
        inner.preview = None;
        inner.preview_step = 0;
        inner.batches = 0;
        inner.batch = 0;
    }

    /// The job is planned: `batches` batches of `steps` sampler steps.
    pub fn planned(&self, batches: usize, steps: usize) {
        let mut inner = self.lock();
        inner.fields.job_count = batches.max(1);
        inner.fields.sampling_steps = steps;
        inner.batches = batches;
        if batches > 1 {
            inner.fields.job = format!("Batch 1 out of {batches}");
        }
    }

    /// Sampler step `step` (from 1) of batch `batch` (from 0) finished.
    pub fn step(&self, batch: usize, step: usize) {
        let mut inner = self.lock();
        if batch != inner.batch {
            // A new batch: A1111's `nextjob` and the reset at the start of its sampling.
            inner.batch = batch;
            inner.fields.job_no = inner.fields.job_no.max(batch);
            inner.preview_step = 0;
            inner.fields.skipped = false;
            if inner.batches > 1 {
                inner.fields.job = format!("Batch {} out of {}", batch + 1, inner.batches);
            }
        }
        inner.fields.sampling_step = step.saturating_sub(1);
    }

    /// Whether the worker should make a preview now (A1111's `sampling_step −
    /// current_image_sampling_step ≥ show_progress_every_n_steps`).
    pub fn preview_due(&self) -> bool {
        let every = self.preview_every.load(Ordering::Relaxed);
        let inner = self.lock();
        every > 0
            && inner.fields.sampling_step - inner.preview_step.min(inner.fields.sampling_step)
                >= every
    }

    /// The latest preview of the running job.
    pub fn set_preview(&self, image: RgbImage) {
        let mut inner = self.lock();
        inner.serial += 1;
        inner.preview = Some((inner.serial, Arc::new(image)));
        inner.preview_step = inner.fields.sampling_step;
    }

    /// A batch's images are decoded: `done` batches are finished.
    pub fn batches_done(&self, done: usize) {
        let mut inner = self.lock();
        inner.fields.job_no = inner.fields.job_no.max(done);
        inner.fields.sampling_step = 0;
    }

    /// A1111's `State.end()`: idle again (`job_count` 0; `interrupted` stays until the next
    /// job, `job_no` and `sampling_steps` stay as they were).
    pub fn end(&self) {
        let mut inner = self.lock();
        inner.fields.job = String::new();
        inner.fields.job_count = 0;
        inner.started = None;
        inner.preview = None;
    }

    /// `/interrupt` was asked (A1111 sets the flag even while idle).
    pub fn interrupt(&self) {
        self.lock().fields.interrupted = true;
    }

    /// `/skip` was asked.
    pub fn skip(&self) {
        self.lock().fields.skipped = true;
    }

    /// Previews every `every` steps (0: none); A1111's `show_progress_every_n_steps`.
    pub fn set_preview_every(&self, every: usize) {
        self.preview_every.store(every, Ordering::Relaxed);
    }

    /// What `/progress` shows.
    pub fn snapshot(&self) -> LiveSnapshot {
        let inner = self.lock();
        LiveSnapshot {
            fields: inner.fields.clone(),
            started: inner.started,
            preview: inner.preview.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_walks_the_fields_as_a1111_does() {
        let live = LiveState::default();
        assert_eq!(live.snapshot().fields.job_count, 0);
        assert_eq!(live.snapshot().fields.job_timestamp, "0");
        live.interrupt();
        live.begin("scripts_img2img");
        assert!(!live.snapshot().fields.interrupted, "begin resets it");
        assert!(live.snapshot().started.is_some());
        live.planned(2, 20);
        assert_eq!(live.snapshot().fields.job, "Batch 1 out of 2");
        live.step(0, 1);
        assert!(!live.preview_due());
        live.step(0, 11);
        assert!(live.preview_due(), "step index 10 ≥ 10");
        live.set_preview(RgbImage::new(2, 2));
        assert!(!live.preview_due());
        live.batches_done(1);
        live.step(1, 3);
        let fields = live.snapshot().fields;
        assert_eq!((fields.job_no, fields.sampling_step), (1, 2));
        assert_eq!(fields.job, "Batch 2 out of 2");
        live.interrupt();
        live.end();
        let snapshot = live.snapshot();
        assert_eq!(snapshot.fields.job_count, 0);
        assert!(snapshot.fields.interrupted, "stays set while idle");
        assert!(snapshot.preview.is_none() && snapshot.started.is_none());
    }
}
