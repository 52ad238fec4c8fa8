//! The job queue: FIFO per connection, round-robin across connections (one client's batch of
//! jobs does not starve another's), bounded, with a stop handle per job (cancel, interrupt, skip).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Condvar, Mutex};

use crossbeam_channel::Sender;

use super::event::Outgoing;
use super::request::{GenerateRequest, InterrogateJob, Txt2imgJob};
use crate::pipeline::stop::JobStop;

/// A connection's number.
pub type ConnId = u64;

/// What a queued job does.
#[derive(Debug)]
pub enum JobKind {
    /// An img2img / inpaint job.
    Generate(Box<GenerateRequest>),
    /// A txt2img job (with Hires. fix when its parameters enable it).
    Txt2img(Box<Txt2imgJob>),
    /// Load another model.
    SelectModel(String),
    /// A prompt from a picture (A1111's interrogate buttons).
    Interrogate(Box<InterrogateJob>),
    /// A picture through an upscaler (A1111's extras upscale).
    Upscale(Box<super::upscale::UpscaleJob>),
}

/// A queued job.
#[derive(Debug)]
pub struct Job {
    /// The daemon's job number (unique per daemon).
    pub id: u64,
    /// The client's request id.
    pub request_id: serde_json::Value,
    /// Its connection.
    pub conn: ConnId,
    /// What to do.
    pub kind: JobKind,
    /// How it is stopped: cancelled (socket), interrupted or skipped (A1111's API).
    pub stop: JobStop,
    /// Where its events go.
    pub events: Sender<Outgoing>,
}

#[derive(Default)]
struct State {
    queued: BTreeMap<ConnId, VecDeque<Job>>,
    /// Connections with queued jobs, in turn order.
    turns: VecDeque<ConnId>,
    waiting: usize,
    /// The running jobs (more than one when queued jobs run as one batch).
    running: Vec<(u64, ConnId, JobStop)>,
    shutdown: bool,
}

/// The daemon's queue, shared by the connections and the worker.
pub struct Scheduler {
    state: Mutex<State>,
    wake: Condvar,
    capacity: usize,
}

/// Why a job was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// `capacity` jobs are waiting.
    #[error("the daemon's queue is full; try again when a job has finished")]
    Full,
    /// The daemon is stopping.
    #[error("the daemon is shutting down")]
    ShuttingDown,
}

/// What a cancel request found.
#[derive(Debug)]
pub enum CancelOutcome {
    /// The job was waiting: here it is, removed.
    Dequeued(Box<Job>),
    /// The job is running: its flag is set, the worker stops it at the next step.
    Flagged,
    /// No such job of this connection.
    Unknown,
}

impl Scheduler {
    /// An empty queue holding at most `capacity` waiting jobs.
    pub fn new(capacity: usize) -> Self {
        Scheduler {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the queue half-updated: every update is
        // a single collection operation. Keep serving.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues `job`, first calling `announce` with how many jobs are ahead of it (under the
    /// lock, so the announcement is sent before the worker can report the job started).
    pub fn submit(&self, job: Job, announce: impl FnOnce(&Job, usize)) -> Result<(), SubmitError> {
        let mut state = self.lock();
        if state.shutdown {
            return Err(SubmitError::ShuttingDown);
        }
        if state.waiting >= self.capacity {
            return Err(SubmitError::Full);
        }
        let ahead = state.waiting + state.running.len();
        announce(&job, ahead);
        let conn = job.conn;
        state.queued.entry(conn).or_default().push_back(job);
        if !state.turns.contains(&conn) {
            state.turns.push_back(conn);
        }
        state.waiting += 1;
        self.wake.notify_one();
        Ok(())
    }

    /// The next job in turn, waiting for one; None after [`Self::shutdown`].
    pub fn next(&self) -> Option<Job> {
        self.next_group(|_, _| false)
            .and_then(|mut group| group.pop())
    }

    /// The next job in turn (waiting for one) and, behind it, the jobs that would run right
    /// after it for as long as `joins(taken, next)` says the next one can join them: each is
    /// taken in its turn, so no job overtakes another and every connection keeps its order.
    /// None after [`Self::shutdown`].
    pub fn next_group(&self, joins: impl Fn(&[Job], &Job) -> bool) -> Option<Vec<Job>> {
        let mut state = self.lock();
        loop {
            if state.shutdown {
                return None;
            }
            if let Some(first) = Self::take_turn(&mut state) {
                let mut group = vec![first];
                while let Some(next) = Self::peek_turn(&state) {
                    if !joins(&group, next) {
                        break;
                    }
                    group.extend(Self::take_turn(&mut state));
                }
                state.running = group
                    .iter()
                    .map(|job| (job.id, job.conn, job.stop.clone()))
                    .collect();
                return Some(group);
            }
            state = self
                .wake
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }

    /// The job whose turn it is, if any.
    fn peek_turn(state: &State) -> Option<&Job> {
        let conn = state.turns.front()?;
        state.queued.get(conn)?.front()
    }

    /// Takes the job whose turn it is; its connection's turn goes to the back when it has more.
    fn take_turn(state: &mut State) -> Option<Job> {
        let conn = state.turns.pop_front()?;
        let queue = state.queued.get_mut(&conn).expect("a turn has a queue");
        let job = queue.pop_front().expect("a turn has a job");
        if queue.is_empty() {
            state.queued.remove(&conn);
        } else {
            state.turns.push_back(conn);
        }
        state.waiting -= 1;
        Some(job)
    }

    /// The worker finished its job.
    pub fn finished(&self) {
        self.lock().running.clear();
    }

    fn remove_queued(state: &mut State, conn: ConnId, job: Option<u64>) -> Vec<Job> {
        let Some(queue) = state.queued.get_mut(&conn) else {
            return Vec::new();
        };
        let (removed, kept): (Vec<Job>, Vec<Job>) = queue
            .drain(..)
            .partition(|j| job.is_none_or(|id| j.id == id));
        *queue = kept.into();
        if queue.is_empty() {
            state.queued.remove(&conn);
            state.turns.retain(|&c| c != conn);
        }
        state.waiting -= removed.len();
        removed
    }

    /// Cancels job `job` of connection `conn`.
    pub fn cancel(&self, conn: ConnId, job: u64) -> CancelOutcome {
        let mut state = self.lock();
        if let Some(found) = Self::remove_queued(&mut state, conn, Some(job)).pop() {
            return CancelOutcome::Dequeued(Box::new(found));
        }
        match state
            .running
            .iter()
            .find(|(id, owner, _)| *id == job && *owner == conn)
        {
            Some((_, _, stop)) => {
                stop.cancel();
                CancelOutcome::Flagged
            }
            None => CancelOutcome::Unknown,
        }
    }

    /// A1111's `/interrupt`, global: the running jobs, whoever's they are, return their
    /// running batch as far as it got and end; whether one was running.
    pub fn interrupt_running(&self) -> bool {
        let state = self.lock();
        for (_, _, stop) in &state.running {
            stop.interrupt();
        }
        !state.running.is_empty()
    }

    /// A1111's `/skip`, global: the running jobs return their running batch as far as it got
    /// and go on with the next; whether one was running.
    pub fn skip_running(&self) -> bool {
        let state = self.lock();
        for (_, _, stop) in &state.running {
            stop.skip();
        }
        !state.running.is_empty()
    }

    /// A connection went away: its waiting jobs are dropped and its running ones cancelled.
    pub fn drop_connection(&self, conn: ConnId) {
        let mut state = self.lock();
        Self::remove_queued(&mut state, conn, None);
        for (_, owner, stop) in &state.running {
            if *owner == conn {
                stop.cancel();
            }
        }
    }

    /// Stops taking jobs: the running jobs are flagged to stop, the worker gets no other, and
    /// the waiting jobs are returned (for the caller to tell their clients).
    pub fn shutdown(&self) -> Vec<Job> {
        let mut state = self.lock();
        state.shutdown = true;
        for (_, _, stop) in &state.running {
            stop.cancel();
        }
        let mut waiting = Vec::new();
        // Turn order, so each client learns of its jobs in the order it queued them.
        while let Some(conn) = state.turns.pop_front() {
            waiting.extend(state.queued.remove(&conn).into_iter().flatten());
        }
        state.waiting = 0;
        self.wake.notify_all();
        waiting
    }

    /// Whether [`Self::shutdown`] was called: a job stopped now was stopped by it.
    pub fn is_shut_down(&self) -> bool {
        self.lock().shutdown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: u64, conn: ConnId) -> Job {
        let (events, _) = crossbeam_channel::unbounded();
        Job {
            id,
            request_id: serde_json::Value::Null,
            conn,
            kind: JobKind::SelectModel(String::new()),
            stop: JobStop::new(),
            events,
        }
    }

    #[test]
    fn connections_take_turns_and_keep_their_order() {
        let queue = Scheduler::new(10);
        for (id, conn) in [(1, 1), (2, 1), (3, 1), (4, 2), (5, 3), (6, 2)] {
            queue.submit(job(id, conn), |_, _| {}).unwrap();
        }
        let order: Vec<u64> = (0..6)
            .map(|_| {
                let j = queue.next().unwrap();
                queue.finished();
                j.id
            })
            .collect();
        assert_eq!(order, [1, 4, 5, 2, 6, 3]);
    }

    #[test]
    fn full_queue_cancel_and_disconnect() {
        let queue = Scheduler::new(2);
        let mut positions = Vec::new();
        queue
            .submit(job(1, 1), |_, ahead| positions.push(ahead))
            .unwrap();
        queue
            .submit(job(2, 1), |_, ahead| positions.push(ahead))
            .unwrap();
        assert_eq!(positions, [0, 1]);
        assert_eq!(queue.submit(job(3, 2), |_, _| {}), Err(SubmitError::Full));
        let running = queue.next().unwrap();
        assert!(
            matches!(queue.cancel(2, 1), CancelOutcome::Unknown),
            "not its job"
        );
        assert!(matches!(queue.cancel(1, 1), CancelOutcome::Flagged));
        assert!(running.stop.is_cancelled());
        assert!(matches!(queue.cancel(1, 2), CancelOutcome::Dequeued(_)));
        queue.submit(job(4, 3), |_, _| {}).unwrap();
        queue.drop_connection(3);
        queue.finished();
        queue.shutdown();
        assert!(queue.next().is_none());
    }

    #[test]
    fn shutdown_stops_the_running_job_and_hands_back_the_waiting_ones() {
        let queue = Scheduler::new(10);
        for (id, conn) in [(1, 1), (2, 1), (3, 2), (4, 1)] {
            queue.submit(job(id, conn), |_, _| {}).unwrap();
        }
        let running = queue.next().unwrap();
        assert!(!queue.is_shut_down());
        let waiting: Vec<u64> = queue.shutdown().iter().map(|j| j.id).collect();
        assert!(running.stop.is_cancelled());
        assert!(queue.is_shut_down());
        assert_eq!(waiting, [3, 2, 4]);
        assert_eq!(
            queue.submit(job(5, 1), |_, _| {}),
            Err(SubmitError::ShuttingDown)
        );
        queue.finished();
        assert!(queue.next().is_none());
    }

    #[test]
    fn a_group_takes_the_jobs_in_turn_until_one_cannot_join() {
        let queue = Scheduler::new(10);
        for (id, conn) in [(1, 1), (2, 1), (3, 2), (4, 3), (5, 2)] {
            queue.submit(job(id, conn), |_, _| {}).unwrap();
        }
        let ids = |group: &[Job]| group.iter().map(|j| j.id).collect::<Vec<_>>();
        let group = queue.next_group(|_, next| next.id != 4).unwrap();
        assert_eq!(
            ids(&group),
            [1, 3],
            "job 4's turn is next: nothing overtakes it"
        );
        assert!(matches!(queue.cancel(2, 3), CancelOutcome::Flagged));
        assert!(group[1].stop.is_cancelled() && !group[0].stop.is_cancelled());
        assert!(queue.interrupt_running());
        assert!(group[0].stop.is_interrupted());
        queue.finished();
        assert!(!queue.interrupt_running());
        let group = queue.next_group(|taken, _| taken.len() < 2).unwrap();
        assert_eq!(ids(&group), [4, 2]);
        queue.drop_connection(1);
        assert!(group[1].stop.is_cancelled());
        queue.finished();
        assert_eq!(ids(&queue.next_group(|_, _| true).unwrap()), [5]);
    }
}
