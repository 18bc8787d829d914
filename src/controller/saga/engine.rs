//! The saga engine: the controller's one loop that moves operations forward (S56).
//!
//! It wakes on a channel (an operation was created, a node result arrived, a cancel was
//! asked) and on a sweep timer (leases that ran out, operations waiting for room in a node's
//! in-flight window, everything that was active when the controller last stopped). For an
//! operation it repeats: read the row inside a write transaction, ask [`Saga::next`] what to
//! do, do it, write the result back in the same transaction, commit.
//!
//! * Controller steps run inside that transaction: their effect and the "done" mark commit
//!   together or not at all.
//! * Node steps are marked dispatched and committed *before* the job is pushed. If the
//!   push is lost (crash, Redis down) the lease runs out and the step is dispatched again;
//!   node actions are idempotent, and the attempt number filters duplicate results.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::steps::{self, StepEnv, StepError};
use super::{eta_seconds, Next, Saga};
use crate::controller::store::{self as st, events, OpRow, Store, StoreError, Tx};
use crate::fault::Fault;
use crate::jobs::{Catalog, KindDef};
use crate::model::{now_ms, NodeJob, OpState, RunsOn, StepOutcome, StepState};
use crate::transport::Queues;

pub struct Engine {
    pub store: Store,
    pub catalog: Arc<Catalog>,
    pub queues: Arc<Queues>,
    pub env: StepEnv,
    pub lease_ms: i64,
    pub max_tries: u32,
    pub window: usize,
    pub fault: Option<Fault>,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("operation {op} has unknown kind {kind}")]
    UnknownKind { op: String, kind: String },
}

impl From<sqlx::Error> for EngineError {
    fn from(e: sqlx::Error) -> Self {
        EngineError::Store(StoreError::Db(e))
    }
}

/// What dispatching a node step came to.
enum NodeStep {
    /// Nothing to do on the node (no node yet, or no undo): the saga moved on.
    Skipped,
    /// Waiting on a transient error; the sweep retries.
    Blocked,
    /// Waiting for room in this node's in-flight window.
    WindowFull(String),
    /// The job is out; the saga waits for its result.
    Dispatched,
}

/// Handle to wake the engine for one operation.
#[derive(Clone)]
pub struct Waker(mpsc::UnboundedSender<String>);

impl Waker {
    pub fn wake(&self, op_id: &str) {
        // A closed channel means the engine is shutting down; the sweep at the next
        // start finds the operation anyway.
        let _ = self.0.send(op_id.to_string());
    }
}

pub fn channel() -> (Waker, mpsc::UnboundedReceiver<String>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (Waker(tx), rx)
}

impl Engine {
    /// Runs until `shutdown` resolves.
    pub async fn run(
        self: Arc<Self>,
        mut wakes: mpsc::UnboundedReceiver<String>,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let mut sweep = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                Some(id) = wakes.recv() => { self.advance_logged(&id).await; }
                _ = sweep.tick() => {
                    match self.store.active_op_ids(now_ms() - self.lease_ms).await {
                        Ok(ids) => {
                            // Once a node's window is full, the rest of its backlog waits
                            // for the next sweep without each taking the write lock.
                            let mut full = std::collections::HashSet::new();
                            for (id, node) in ids {
                                if node.as_ref().is_some_and(|n| full.contains(n)) {
                                    continue;
                                }
                                if let Some(n) = self.advance_logged(&id).await {
                                    full.insert(n);
                                }
                            }
                        }
                        Err(e) => tracing::warn!("sweep: {e}"),
                    }
                    match super::bootjobs::start_due_runs(&self.store, &self.catalog).await {
                        Ok(ops) => {
                            for id in ops {
                                self.advance_logged(&id).await;
                            }
                        }
                        Err(e) => tracing::warn!("starting boot-job runs: {e}"),
                    }
                }
            }
        }
    }

    async fn advance_logged(&self, id: &str) -> Option<String> {
        match self.advance(id).await {
            Ok(full) => full,
            Err(e) => {
                tracing::warn!(op = id, "advancing operation: {e}");
                None
            }
        }
    }

    fn def(&self, op: &OpRow) -> Result<&KindDef, EngineError> {
        self.catalog
            .get(&op.kind)
            .ok_or_else(|| EngineError::UnknownKind {
                op: op.id.clone(),
                kind: op.kind.clone(),
            })
    }

    /// Moves one operation as far as it can go without waiting.
    pub async fn advance(&self, id: &str) -> Result<Option<String>, EngineError> {
        for _ in 0..64 {
            let mut tx = self.store.begin().await?;
            let Some(mut op) = st::op_in(&mut tx, id).await? else {
                return Ok(None);
            };
            if op.op_state().is_terminal() {
                return Ok(None);
            }
            let def = self.def(&op)?.clone();
            let mut saga = load(&op)?;
            let before = saga.clone();
            let now = now_ms();
            match saga.next(&def, now, self.lease_ms) {
                Next::Wait => {
                    if saga != before {
                        self.save(&mut tx, &mut op, &saga, &def).await?;
                        self.store.commit(tx).await?;
                    }
                    return Ok(None);
                }
                Next::Finished(state) => {
                    self.finish(&mut tx, &mut op, &saga, &def, state).await?;
                    self.store.commit(tx).await?;
                    crate::controller::hooks::after_op(&self.env.plugins, &op);
                    return Ok(None);
                }
                Next::Execute { step, undo } => {
                    let name = def.steps[step].name.clone();
                    if def.steps[step].runs_on == RunsOn::Controller {
                        if !self
                            .controller_step(tx, &mut op, saga, &def, step, undo)
                            .await?
                        {
                            return Ok(None);
                        }
                        self.inject(&op.kind, &name, if undo { "undone" } else { "after" });
                    } else {
                        match self.node_step(tx, &mut op, saga, &def, step, undo).await? {
                            NodeStep::Skipped => {}
                            NodeStep::Blocked => return Ok(None),
                            NodeStep::WindowFull(node) => return Ok(Some(node)),
                            NodeStep::Dispatched => {
                                self.inject(
                                    &op.kind,
                                    &name,
                                    if undo {
                                        "undo_dispatched"
                                    } else {
                                        "dispatched"
                                    },
                                );
                                return Ok(None);
                            }
                        }
                    }
                }
            }
        }
        Ok(None)
    }

    /// Returns true when the saga moved on (so the caller loops).
    async fn controller_step(
        &self,
        mut tx: Tx<'static>,
        op: &mut OpRow,
        mut saga: Saga,
        def: &KindDef,
        step: usize,
        undo: bool,
    ) -> Result<bool, EngineError> {
        let name = def.steps[step].name.clone();
        let now = now_ms();
        saga.mark_started(step, undo, now);
        match steps::run_controller(&mut tx, &self.env, op, &name, undo).await {
            Ok(()) => {
                self.settle(tx, op, &mut saga, def, step, undo, None)
                    .await?;
                Ok(true)
            }
            Err(StepError::Transient(e)) => {
                drop(tx); // roll back whatever the step wrote
                tracing::debug!(op = %op.id, step = %name, "transient: {e}");
                let mut tx = self.store.begin().await?;
                op.message = e;
                op.updated_at = now_ms();
                st::save_op(&mut tx, op).await?;
                self.store.commit(tx).await?;
                Ok(false)
            }
            Err(StepError::Permanent(e)) => {
                drop(tx);
                let mut tx = self.store.begin().await?;
                let Some(mut fresh) = st::op_in(&mut tx, &op.id).await? else {
                    return Ok(false);
                };
                let mut saga = load(&fresh)?;
                saga.mark_started(step, undo, now);
                self.settle(tx, &mut fresh, &mut saga, def, step, undo, Some(e))
                    .await?;
                *op = fresh;
                Ok(true)
            }
        }
    }

    /// Records the end of a started step (with its error, if any) and commits.
    #[allow(clippy::too_many_arguments)]
    async fn settle(
        &self,
        mut tx: Tx<'static>,
        op: &mut OpRow,
        saga: &mut Saga,
        def: &KindDef,
        step: usize,
        undo: bool,
        error: Option<String>,
    ) -> Result<(), EngineError> {
        saga.mark_finished(step, undo, error, now_ms());
        self.save(&mut tx, op, saga, def).await?;
        self.store.commit(tx).await?;
        crate::controller::hooks::after_step(&self.env.plugins, op, step);
        Ok(())
    }

    /// Dispatches a node step.
    async fn node_step(
        &self,
        mut tx: Tx<'static>,
        op: &mut OpRow,
        mut saga: Saga,
        def: &KindDef,
        step: usize,
        undo: bool,
    ) -> Result<NodeStep, EngineError> {
        let name = def.steps[step].name.clone();
        let now = now_ms();
        let action = match steps::node_action(&mut tx, &self.env, op, &name, undo).await {
            Ok(a) => a,
            Err(StepError::Transient(e)) => {
                tracing::debug!(op = %op.id, "node step {name}: {e}");
                return Ok(NodeStep::Blocked);
            }
            Err(StepError::Permanent(e)) => {
                saga.mark_started(step, undo, now);
                self.settle(tx, op, &mut saga, def, step, undo, Some(e))
                    .await?;
                return Ok(NodeStep::Skipped);
            }
        };
        let Some((node, action)) = action else {
            saga.mark_started(step, undo, now);
            self.settle(tx, op, &mut saga, def, step, undo, None)
                .await?;
            return Ok(NodeStep::Skipped);
        };
        let redispatch = saga.steps[step].dispatched_at.is_some();
        if !redispatch && st::inflight_on_node(&mut tx, &node).await? >= self.window as i64 {
            // The node's window is full: the backlog stays in SQL; the sweep retries.
            return Ok(NodeStep::WindowFull(node));
        }
        op.node_id = Some(node.clone());
        let attempt = saga.mark_started(step, undo, now);
        self.save(&mut tx, op, &saga, def).await?;
        self.store.commit(tx).await?;
        // Fence first: the key must name this attempt before any copy of the job can run.
        // Its lifetime is twice the lease: a job older than that has been superseded.
        let ttl =
            std::time::Duration::from_millis((def.lease_ms(step, self.lease_ms) * 2).max(1) as u64);
        if let Err(e) = self.queues.fence(&op.id, step, undo, attempt, ttl).await {
            tracing::warn!(op = %op.id, step = %name, "fencing: {e}; the lease will dispatch it again");
            return Ok(NodeStep::Dispatched);
        }
        let job = NodeJob {
            op_id: op.id.clone(),
            step,
            attempt,
            undo,
            action,
        };
        if let Err(e) = self.queues.push(&node, job).await {
            // The step stays dispatched; its lease runs out and it is dispatched again.
            tracing::warn!(op = %op.id, step = %name, "pushing to node {node}: {e}");
        }
        Ok(NodeStep::Dispatched)
    }

    /// Applies a node's step result (from the ingest loop). Returns whether it applied.
    pub async fn apply_result(
        &self,
        op_id: &str,
        step: usize,
        attempt: u32,
        undo: bool,
        outcome: &StepOutcome,
    ) -> Result<bool, EngineError> {
        let mut tx = self.store.begin().await?;
        let Some(mut op) = st::op_in(&mut tx, op_id).await? else {
            return Ok(false);
        };
        if op.op_state().is_terminal() {
            return Ok(false);
        }
        let def = self.def(&op)?.clone();
        let mut saga = load(&op)?;
        if !saga.apply_result(step, attempt, undo, outcome, self.max_tries, now_ms()) {
            return Ok(false);
        }
        if let (
            StepOutcome::Ok {
                guest_state,
                domain_xml,
                ..
            },
            Some(g),
        ) = (outcome, op.guest_id.clone())
        {
            if let Some(state) = guest_state {
                if st::set_guest_state(&mut tx, &g, state).await? {
                    events::append(
                        &mut tx,
                        "guest.state",
                        &g,
                        &serde_json::json!({"guest_id": g, "state": state}),
                    )
                    .await?;
                }
            }
            if let Some(xml) = domain_xml {
                st::set_guest_xml(&mut tx, &g, xml).await?;
            }
        }
        self.save(&mut tx, &mut op, &saga, &def).await?;
        self.store.commit(tx).await?;
        crate::controller::hooks::after_step(&self.env.plugins, &op, step);
        if let Err(e) = self.queues.unfence(op_id, step, undo).await {
            // The key expires by itself; until then a stale copy could still run once.
            tracing::warn!(op = op_id, step, "unfencing: {e}");
        }
        Ok(true)
    }

    async fn save(
        &self,
        tx: &mut Tx<'_>,
        op: &mut OpRow,
        saga: &Saga,
        def: &KindDef,
    ) -> Result<(), EngineError> {
        let now = now_ms();
        op.state = saga.state.as_str().to_string();
        op.steps = serde_json::to_string(&saga.steps).map_err(StoreError::from)?;
        op.cursor = saga.cursor;
        op.error = saga.error.clone();
        let waiting_on_node = saga.steps.iter().any(|s| {
            s.runs_on == RunsOn::Node && matches!(s.state, StepState::Running | StepState::Undoing)
        });
        op.inflight_node = if waiting_on_node && !saga.state.is_terminal() {
            op.node_id.clone()
        } else {
            None
        };
        op.percent = saga.percent(def);
        op.stage = saga.stage(def);
        op.started_at.get_or_insert(now);
        op.updated_at = now;
        st::save_op(tx, op).await?;
        events::append(tx, "operation", &op.id, &progress_event(op, now)).await?;
        Ok(())
    }

    /// Ends an operation: its final state, the guest's, the lock released, an event.
    async fn finish(
        &self,
        tx: &mut Tx<'_>,
        op: &mut OpRow,
        saga: &Saga,
        def: &KindDef,
        state: OpState,
    ) -> Result<(), EngineError> {
        let mut saga = saga.clone();
        saga.state = state;
        op.finished_at = Some(now_ms());
        if let Some(g) = op.guest_id.clone() {
            let guest_state = match (op.kind.as_str(), state) {
                ("guest.create", OpState::Cancelled) => {
                    // Cancelled before it existed anywhere: nothing to keep.
                    st::delete_guest(tx, &g).await?;
                    None
                }
                ("guest.create" | "guest.delete", OpState::Failed) => Some("error"),
                _ => None,
            };
            if let Some(s) = guest_state {
                if st::set_guest_state(tx, &g, s).await? {
                    events::append(
                        tx,
                        "guest.state",
                        &g,
                        &serde_json::json!({"guest_id": g, "state": s}),
                    )
                    .await?;
                }
            }
            // The guest has just booted: its pending boot jobs run once it is free.
            if state == OpState::Succeeded
                && matches!(
                    op.kind.as_str(),
                    "guest.create" | "guest.start" | "guest.reboot" | "guest.reset"
                )
            {
                super::bootjobs::mark_booted(tx, &g).await?;
            }
            st::unlock_guest(tx, &g, &op.id).await?;
        }
        self.save(tx, op, &saga, def).await?;
        if state == OpState::Succeeded {
            sqlx::query("UPDATE operations SET percent = 100 WHERE id = ?")
                .bind(&op.id)
                .execute(&mut **tx)
                .await?;
            op.percent = 100;
        }
        Ok(())
    }

    fn inject(&self, kind: &str, step: &str, when: &str) {
        if let Some(f) = &self.fault {
            f.check(kind, step, when);
        }
    }
}

fn load(op: &OpRow) -> Result<Saga, EngineError> {
    Ok(Saga {
        state: op.op_state(),
        cursor: op.cursor,
        steps: op.step_records()?,
        cancel_requested: op.cancel_requested,
        error: op.error.clone(),
    })
}

/// The structured progress every operation event carries.
pub fn progress_event(op: &OpRow, now: i64) -> serde_json::Value {
    serde_json::json!({
        "operation_id": op.id,
        "kind": op.kind,
        "guest_id": op.guest_id,
        "state": op.state,
        "stage": op.stage,
        "percent": op.percent,
        "eta_seconds": eta_seconds(op.started_at, now, op.percent),
        "error": op.error,
    })
}
