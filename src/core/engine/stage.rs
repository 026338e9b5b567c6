//! One stage's queues and their bookkeeping: work ready to send, retries
//! waiting for their time, calls in flight, and the hand-over between the
//! read and write stages.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::{Delayed, Reply, Run, Stage, Work};

/// What [`Engine::launch`] did.
pub(super) enum Launch {
    /// A batch went out; look again at once.
    Sent,
    /// Nothing can go out before this instant (unless a call finishes or
    /// work arrives first).
    WaitUntil(Instant),
}

pub(super) type Joined = Result<(tokio::task::Id, (u64, Vec<Reply>)), tokio::task::JoinError>;

/// One stage's queues: work ready to send, work waiting for its retry time,
/// calls in flight, and the channels from the stage before and to the next.
pub(super) struct StageState {
    pub(super) stage: Stage,
    pub(super) pending: VecDeque<Work>,
    pub(super) delayed: BinaryHeap<Reverse<Delayed>>,
    pub(super) seq: u64,
    pub(super) inflight: JoinSet<(u64, Vec<Reply>)>,
    pub(super) batches: HashMap<u64, Vec<Work>>,
    pub(super) task_ids: HashMap<tokio::task::Id, u64>,
    pub(super) waiting_since: Option<Instant>,
    pub(super) input: Option<mpsc::UnboundedReceiver<Work>>,
    pub(super) forward: Option<mpsc::UnboundedSender<Work>>,
}

impl StageState {
    pub(super) fn new(
        stage: Stage,
        pending: VecDeque<Work>,
        input: Option<mpsc::UnboundedReceiver<Work>>,
        forward: Option<mpsc::UnboundedSender<Work>>,
    ) -> Self {
        Self {
            stage,
            pending,
            delayed: BinaryHeap::new(),
            seq: 0,
            inflight: JoinSet::new(),
            batches: HashMap::new(),
            task_ids: HashMap::new(),
            waiting_since: None,
            input,
            forward,
        }
    }

    /// Takes what the stage before has handed over so far.
    pub(super) fn drain_input(&mut self) {
        let Some(rx) = self.input.as_mut() else {
            return;
        };
        loop {
            match rx.try_recv() {
                Ok(w) => self.pending.push_back(w),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    self.input = None;
                    break;
                }
            }
        }
    }

    /// Moves retries whose time has come to the front of the queue.
    pub(super) fn promote_due(&mut self, now: Instant) {
        let mut due = Vec::new();
        while self.delayed.peek().is_some_and(|Reverse(d)| d.at <= now) {
            if let Some(Reverse(d)) = self.delayed.pop() {
                due.push(d.work);
            }
        }
        for w in due.into_iter().rev() {
            self.pending.push_front(w);
        }
    }

    pub(super) fn next_due(&self) -> Option<Instant> {
        self.delayed.peek().map(|Reverse(d)| d.at)
    }

    pub(super) fn is_done(&self) -> bool {
        self.pending.is_empty() && self.delayed.is_empty() && self.inflight.is_empty() && self.input.is_none()
    }

    /// Queues a retry for `at`.
    pub(super) fn delay(&mut self, work: Work, at: Instant) {
        self.seq += 1;
        self.delayed.push(Reverse(Delayed {
            at,
            seq: self.seq,
            work,
        }));
    }

    /// Hands a validated device to the next stage.
    pub(super) fn promote(&self, w: Work, run: &Run) {
        match &self.forward {
            Some(tx) => {
                if let Err(mpsc::error::SendError(w)) = tx.send(w) {
                    run.give_up(&w);
                }
            }
            None => run.give_up(&w),
        }
    }

    /// Gives every device still queued here, or still to come from the
    /// stage before, its final outcome.
    pub(super) async fn give_up_all(&mut self, run: &Run) {
        for w in self.pending.drain(..) {
            run.give_up(&w);
        }
        while let Some(Reverse(d)) = self.delayed.pop() {
            run.give_up(&d.work);
        }
        if let Some(rx) = self.input.as_mut() {
            while let Some(w) = rx.recv().await {
                run.give_up(&w);
            }
        }
    }
}

pub(super) async fn recv_or_pending(input: &mut Option<mpsc::UnboundedReceiver<Work>>) -> Option<Work> {
    match input.as_mut() {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}
