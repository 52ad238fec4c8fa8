//! How a running job is asked to stop, with A1111's meanings (`modules/shared_state.py:
//! State.interrupt`, `State.skip`) beside the socket protocol's `cancel`:
//!
//! - **cancel** (sdhost's socket `cancel`, a closed connection, shutdown): the job stops at the
//!   sampler's next model call, noise draw or step; the unfinished batch is dropped and the
//!   images already finished are kept.
//! - **interrupt** (A1111's `/interrupt`): sampling stops the same way, but the running batch is
//!   still decoded from its last denoised prediction and returned, as A1111's
//!   `launch_sampling` returns `last_latent`; later batches are dropped.
//! - **skip** (A1111's `/skip`): as interrupt for the running batch only; the job goes on with
//!   the next batch.
//!
//! One [`JobStop`] is shared between the job and whoever may stop it (the daemon's queue keeps
//! one per job); it is cheap to clone.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The stop requests of one job (see the module doc for what each does).
#[derive(Debug, Clone, Default)]
pub struct JobStop {
    flags: Arc<Flags>,
}

#[derive(Debug, Default)]
struct Flags {
    /// Set by any request: the sampler polls it at every model call, noise draw and step.
    halt: Arc<AtomicBool>,
    cancelled: AtomicBool,
    interrupted: AtomicBool,
    skipped: AtomicBool,
}

/// What a batch whose sampling was stopped becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchStop {
    /// Dropped, and the job ends (cancel).
    Drop,
    /// Decoded from its last denoised prediction, and the job ends (interrupt).
    KeepAndEnd,
    /// Decoded from its last denoised prediction, and the job goes on (skip).
    KeepAndGoOn,
}

impl JobStop {
    /// A job that nobody has asked to stop.
    pub fn new() -> Self {
        Self::default()
    }

    /// sdhost's `cancel`: drop the unfinished batch and end the job.
    pub fn cancel(&self) {
        self.flags.cancelled.store(true, Ordering::SeqCst);
        self.flags.halt.store(true, Ordering::SeqCst);
    }

    /// A1111's interrupt: return the running batch as far as it got, then end the job.
    pub fn interrupt(&self) {
        self.flags.interrupted.store(true, Ordering::SeqCst);
        self.flags.halt.store(true, Ordering::SeqCst);
    }

    /// A1111's skip: return the running batch as far as it got, then go on with the next.
    pub fn skip(&self) {
        self.flags.skipped.store(true, Ordering::SeqCst);
        self.flags.halt.store(true, Ordering::SeqCst);
    }

    /// Whether the job was cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.flags.cancelled.load(Ordering::SeqCst)
    }

    /// Whether the job was interrupted.
    pub fn is_interrupted(&self) -> bool {
        self.flags.interrupted.load(Ordering::SeqCst)
    }

    /// Whether sampling should stop now (any request, a skip not yet consumed included).
    pub fn is_halted(&self) -> bool {
        self.flags.halt.load(Ordering::SeqCst)
    }

    /// Whether the job should end before its next batch or pass (cancel or interrupt; a skip
    /// only ends the running batch).
    pub fn ends_job(&self) -> bool {
        self.is_cancelled() || self.is_interrupted()
    }

    /// The flag the sampler polls: set by every request.
    pub fn sampler_flag(&self) -> Arc<AtomicBool> {
        self.flags.halt.clone()
    }

    /// What happens to a batch whose sampling stopped: cancel wins over interrupt, interrupt
    /// over skip; a sampler stopped with no request (the observer's [`Flow::Cancel`]) is a
    /// cancel.
    ///
    /// [`Flow::Cancel`]: sdhost_plugin_api::Flow::Cancel
    pub fn batch_stop(&self) -> BatchStop {
        if self.is_cancelled() {
            BatchStop::Drop
        } else if self.is_interrupted() {
            BatchStop::KeepAndEnd
        } else if self.flags.skipped.load(Ordering::SeqCst) {
            BatchStop::KeepAndGoOn
        } else {
            BatchStop::Drop
        }
    }

    /// Starts a new batch: a skip of the previous one is consumed (A1111 clears
    /// `state.skipped` at the top of each batch), other requests stay.
    pub fn next_batch(&self) {
        if self.flags.skipped.swap(false, Ordering::SeqCst) && !self.ends_job() {
            self.flags.halt.store(false, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_request_halts_the_sampler_with_its_own_meaning() {
        let stop = JobStop::new();
        assert!(!stop.is_halted());
        assert_eq!(stop.batch_stop(), BatchStop::Drop, "no request: a cancel");

        let skip = JobStop::new();
        let handle = skip.clone();
        handle.skip();
        assert!(skip.is_halted() && skip.sampler_flag().load(Ordering::SeqCst));
        assert_eq!(skip.batch_stop(), BatchStop::KeepAndGoOn);
        assert!(!skip.ends_job());
        skip.next_batch();
        assert!(!skip.is_halted(), "the next batch samples again");
        assert_eq!(skip.batch_stop(), BatchStop::Drop);

        let interrupt = JobStop::new();
        interrupt.skip();
        interrupt.interrupt();
        assert_eq!(interrupt.batch_stop(), BatchStop::KeepAndEnd);
        interrupt.next_batch();
        assert!(interrupt.is_halted() && interrupt.ends_job());

        let cancel = JobStop::new();
        cancel.interrupt();
        cancel.cancel();
        assert_eq!(cancel.batch_stop(), BatchStop::Drop);
        assert!(cancel.ends_job() && cancel.is_cancelled());
    }
}
