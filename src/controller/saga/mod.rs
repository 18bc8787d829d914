//! Operations as sagas: the pure decision logic.
//!
//! An operation is an ordered list of steps (declared in `jobs/`). Going forward, the
//! cursor walks the steps; each is executed once it is `pending` and awaited while
//! `running`. When a step fails (or a cancel arrives at a step boundary) the saga turns
//! around: from the failed step back to the first, every step that did something is undone
//! in reverse — the failed step included, because it may have half-happened and undo steps
//! are idempotent. The engine (`engine.rs`) persists every transition before it acts, so
//! after a crash this same logic, fed the stored state, says what to do next.
//!
//! Node results carry the attempt number they answer; a result for an older attempt (a
//! duplicate delivery, a job re-queued by apalis after a node crash) is ignored.
//!
//! A node that is offline never wedges a saga: its steps wait (the engine does not
//! dispatch to an offline node) and a cancel then *abandons* the node step in hand, forward
//! or undo, instead of waiting for it: the engine puts what the step may have left on the
//! node on that node's cleanup list, and the unwind goes on with what the controller can
//! undo. An undo that fails is `undo_failed`: the unwind goes on, but resources the node
//! may still use (the guest's leases) are kept, marked for cleanup.

pub mod engine;
pub mod initplan;
pub mod kinds;
pub mod launch;
pub mod steps;

use crate::jobs::KindDef;
use crate::model::{OpState, RunsOn, StepOutcome, StepRecord, StepState};

/// The mutable part of an operation that the saga logic works on.
#[derive(Debug, Clone, PartialEq)]
pub struct Saga {
    pub state: OpState,
    pub cursor: i64,
    pub steps: Vec<StepRecord>,
    pub cancel_requested: bool,
    pub error: Option<String>,
    /// The operation's node is offline (or gone): its node steps cannot run now. Not
    /// stored; the engine sets it before asking [`Saga::next`].
    pub node_offline: bool,
}

/// What the engine must do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Run (or dispatch) step `step`, forward or as its undo.
    Execute { step: usize, undo: bool },
    /// A node step is out; nothing to do until its result or its lease runs out.
    Wait,
    /// Give up node step `step` (forward or undo): its node is offline and a cancel came.
    Abandon { step: usize, undo: bool },
    /// Tell the node running pivot step `step` to stop, and go on waiting for its result.
    Interrupt { step: usize },
    /// The operation ended in this state.
    Finished(OpState),
}

pub fn new_steps(def: &KindDef) -> Vec<StepRecord> {
    def.steps
        .iter()
        .map(|s| StepRecord {
            name: s.name.to_string(),
            runs_on: s.runs_on,
            state: StepState::Pending,
            attempt: 0,
            tries: 0,
            dispatched_at: None,
            lease_ms: None,
            started_at: None,
            finished_at: None,
            error: None,
            refusal: None,
            output: None,
        })
        .collect()
}

impl Saga {
    fn begin_undo(&mut self, from: i64) {
        self.state = OpState::Undoing;
        self.cursor = from;
        for s in &mut self.steps {
            s.tries = 0;
        }
    }

    fn lease_expired(s: &StepRecord, now: i64, lease_ms: i64) -> bool {
        let lease = s.lease_ms.unwrap_or(lease_ms).max(lease_ms);
        s.runs_on == RunsOn::Node && s.dispatched_at.is_some_and(|d| now - d >= lease)
    }

    /// A cancel against an offline node: node steps are given up rather than awaited,
    /// except a pivot and what follows it, whose results decide where things are.
    fn abandons(&self, def: &KindDef, i: usize, s: &StepRecord) -> bool {
        self.cancel_requested
            && self.node_offline
            && s.runs_on == RunsOn::Node
            && !self.pivot_reached(def, i)
    }

    /// A cancel of an interruptible node step in flight: given up at once, node online or
    /// not (the engine tells the node to stop it). A pivot is not given up (see
    /// [`Next::Interrupt`]).
    fn interrupts(&self, def: &KindDef, i: usize, s: &StepRecord) -> bool {
        self.cancel_requested
            && s.runs_on == RunsOn::Node
            && def
                .steps
                .get(i)
                .is_some_and(|d| d.interruptible && !d.pivot)
    }

    /// Step `i` is a pivot, or comes after one that is done: there is no way back.
    fn pivot_reached(&self, def: &KindDef, i: usize) -> bool {
        def.steps.get(i).is_some_and(|d| d.pivot)
            || self.steps[..i.min(self.steps.len())]
                .iter()
                .zip(def.steps.iter())
                .any(|(s, d)| d.pivot && s.state == StepState::Done)
    }

    /// An undo failed: the resources the node may still use must not be given back.
    pub fn keep_leases(&self) -> bool {
        self.steps.iter().any(|s| s.state == StepState::UndoFailed)
    }

    /// Decides the next action, applying the bookkeeping transitions (cursor moves,
    /// skips, the turn to undo) on the way.
    pub fn next(&mut self, def: &KindDef, now: i64, lease_ms: i64) -> Next {
        loop {
            let decided = match self.state {
                OpState::Pending => {
                    if self.cancel_requested {
                        self.state = OpState::Cancelled;
                    } else {
                        self.state = OpState::Running;
                        self.cursor = 0;
                    }
                    None
                }
                OpState::Running => self.next_forward(def, now, lease_ms),
                OpState::Undoing => self.next_backward(def, now, lease_ms),
                s => Some(Next::Finished(s)),
            };
            if let Some(next) = decided {
                return next;
            }
        }
    }

    /// One move forward: the action at the cursor, or None after a bookkeeping transition
    /// (the cursor moved on, the run succeeded, the turn to undo).
    fn next_forward(&mut self, def: &KindDef, now: i64, lease_ms: i64) -> Option<Next> {
        let i = self.cursor.max(0) as usize;
        if i >= self.steps.len() {
            self.state = OpState::Succeeded;
            return None;
        }
        let step = &self.steps[i];
        let forward = |step| Some(Next::Execute { step, undo: false });
        let past_pivot = self.pivot_reached(def, i) && !def.steps[i].pivot;
        match step.state {
            StepState::Pending if self.cancel_requested && !past_pivot => {
                self.begin_undo(i as i64 - 1)
            }
            StepState::Pending => return forward(i),
            StepState::Running
                if self.cancel_requested
                    && def.steps[i].pivot
                    && def.steps[i].interruptible
                    && !Self::lease_expired(step, now, def.lease_ms(i, lease_ms)) =>
            {
                return Some(Next::Interrupt { step: i })
            }
            StepState::Running if self.abandons(def, i, step) || self.interrupts(def, i, step) => {
                return Some(Next::Abandon {
                    step: i,
                    undo: false,
                })
            }
            StepState::Running if Self::lease_expired(step, now, def.lease_ms(i, lease_ms)) => {
                return forward(i)
            }
            StepState::Running => return Some(Next::Wait),
            StepState::Done => self.cursor += 1,
            StepState::Failed
            | StepState::Undoing
            | StepState::Undone
            | StepState::UndoFailed
            | StepState::Abandoned => self.begin_undo(i as i64),
        }
        None
    }

    /// One move back: the undo at the cursor, or None after a bookkeeping transition (a
    /// step without an undo passed, the unwind's end).
    fn next_backward(&mut self, def: &KindDef, now: i64, lease_ms: i64) -> Option<Next> {
        if self.cursor < 0 {
            let failed =
                self.steps.iter().any(|s| s.state == StepState::Failed) || self.error.is_some();
            self.state = if failed || !self.cancel_requested {
                OpState::Failed
            } else {
                OpState::Cancelled
            };
            return None;
        }
        let i = self.cursor as usize;
        if def.steps.get(i).is_some_and(|d| d.pivot) && self.steps[i].state == StepState::Done {
            // The way back ends at a pivot that happened: what it did stays.
            self.state = OpState::Failed;
            return None;
        }
        let has_undo = def.steps.get(i).is_some_and(|d| d.undo);
        let abandon = self.abandons(def, i, &self.steps[i]);
        let back = |step| Some(Next::Execute { step, undo: true });
        let give_up = |step| Some(Next::Abandon { step, undo: true });
        let step = &mut self.steps[i];
        match step.state {
            StepState::Pending
            | StepState::Undone
            | StepState::UndoFailed
            | StepState::Abandoned => self.cursor -= 1,
            StepState::Done | StepState::Failed | StepState::Running => {
                if has_undo && abandon {
                    return give_up(i);
                }
                if has_undo {
                    return back(i);
                }
                if step.state != StepState::Failed {
                    step.state = StepState::Undone;
                }
                self.cursor -= 1;
            }
            StepState::Undoing if abandon => return give_up(i),
            StepState::Undoing if Self::lease_expired(step, now, def.lease_ms(i, lease_ms)) => {
                return back(i)
            }
            StepState::Undoing => return Some(Next::Wait),
        }
        None
    }

    /// Records that step `i` was started (controller) or dispatched (node) now, with the
    /// action's own lease when it needs a longer one than the step's.
    pub fn mark_started(&mut self, i: usize, undo: bool, now: i64, lease_ms: Option<i64>) -> u32 {
        let s = &mut self.steps[i];
        s.state = if undo {
            StepState::Undoing
        } else {
            StepState::Running
        };
        s.attempt += 1;
        s.tries += 1;
        s.dispatched_at = Some(now);
        s.lease_ms = lease_ms;
        s.started_at.get_or_insert(now);
        s.attempt
    }

    /// Records the end of step `i` in the direction it ran.
    pub fn mark_finished(&mut self, i: usize, undo: bool, error: Option<String>, now: i64) {
        let s = &mut self.steps[i];
        s.dispatched_at = None;
        s.finished_at = Some(now);
        match (undo, error) {
            (false, None) => s.state = StepState::Done,
            (false, Some(e)) => {
                s.state = StepState::Failed;
                self.error = Some(format!("step {}: {e}", s.name));
                s.error = Some(e);
            }
            (true, None) => s.state = StepState::Undone,
            (true, Some(e)) => {
                // An undo that cannot complete is recorded (the operation ends failed and
                // names the leak) and the unwind goes on with the other steps, keeping
                // what the node may still use.
                s.state = StepState::UndoFailed;
                let msg = format!("undo of step {} failed: {e}", s.name);
                self.error = Some(match self.error.take() {
                    Some(prev) => format!("{prev}; {msg}"),
                    None => msg,
                });
                s.error = Some(e);
            }
        }
    }

    /// Gives up node step `i` (its node is offline and a cancel came); the engine has put
    /// what it may have left on the node's cleanup list.
    pub fn mark_abandoned(&mut self, i: usize, why: &str, now: i64) {
        let s = &mut self.steps[i];
        s.state = StepState::Abandoned;
        s.dispatched_at = None;
        s.lease_ms = None;
        s.finished_at = Some(now);
        s.error = Some(why.to_string());
    }

    /// Applies a node's result. Returns false when it was stale and ignored.
    pub fn apply_result(
        &mut self,
        i: usize,
        attempt: u32,
        undo: bool,
        outcome: &StepOutcome,
        max_tries: u32,
        now: i64,
    ) -> bool {
        let Some(s) = self.steps.get(i) else {
            return false;
        };
        let expected = if undo {
            StepState::Undoing
        } else {
            StepState::Running
        };
        if s.attempt != attempt || s.state != expected {
            return false;
        }
        match outcome {
            StepOutcome::Ok { output, .. } => {
                if output.is_some() {
                    self.steps[i].output = output.clone();
                }
                self.mark_finished(i, undo, None, now)
            }
            StepOutcome::Failed {
                error,
                permanent,
                refusal,
            } => {
                let retry = !permanent && s.tries < max_tries;
                self.steps[i].refusal = *refusal;
                if retry {
                    // Transient: put it back; the engine dispatches it again.
                    let s = &mut self.steps[i];
                    s.state = if undo {
                        StepState::Done
                    } else {
                        StepState::Pending
                    };
                    s.dispatched_at = None;
                    s.error = Some(error.clone());
                } else {
                    self.mark_finished(i, undo, Some(error.clone()), now);
                }
            }
        }
        true
    }

    /// Weighted share of the forward work that is done, 0–100.
    pub fn percent(&self, def: &KindDef) -> i64 {
        self.percent_within(def, None)
    }

    /// The percent while step `step` has `done` of its `of` sub-steps behind it: the
    /// step's weight counts in proportion.
    pub fn percent_within(&self, def: &KindDef, part: Option<(usize, u32, u32)>) -> i64 {
        let total: u64 = def.steps.iter().map(|s| u64::from(s.weight)).sum();
        if total == 0 {
            return 0;
        }
        let done: u64 = def
            .steps
            .iter()
            .zip(&self.steps)
            .filter(|(_, r)| r.state == StepState::Done)
            .map(|(d, _)| u64::from(d.weight))
            .sum();
        let (within, of) = match part {
            Some((i, done, of)) if of > 0 => (
                def.steps
                    .get(i)
                    .map_or(0, |d| u64::from(d.weight) * u64::from(done.min(of))),
                u64::from(of),
            ),
            _ => (0, 1),
        };
        ((done * of + within) * 100 / (total * of)) as i64
    }

    /// The stage label for progress: the step in hand, in its direction.
    pub fn stage(&self, def: &KindDef) -> String {
        let i = self.cursor.max(0) as usize;
        let label = def.steps.get(i).map(|d| d.stage).unwrap_or("");
        match self.state {
            OpState::Undoing => format!("undoing: {label}"),
            OpState::Succeeded => "done".into(),
            OpState::Failed => "failed".into(),
            OpState::Cancelled => "cancelled".into(),
            _ => label.to_string(),
        }
    }
}

/// Estimated seconds left, from the pace so far. None until there is a pace to go by.
pub fn eta_seconds(started_at: Option<i64>, now: i64, percent: i64) -> Option<i64> {
    let started = started_at?;
    if percent <= 0 || percent >= 100 {
        return None;
    }
    let elapsed = (now - started).max(0);
    Some(elapsed * (100 - percent) / percent / 1000)
}

#[cfg(test)]
mod tests;
