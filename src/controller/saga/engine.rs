//! The saga engine: the controller's one loop that moves operations forward (S56).
//!
//! It wakes on a channel (an operation was created, a node result arrived, a cancel was
//! asked) and on a sweep timer (leases that ran out, operations waiting for room in a node's
//! in-flight window or for a node to return, cancels, everything that was active when the
//! controller last stopped). For an operation it repeats: read the row inside a write
//! transaction, decode its typed request, ask [`Saga::next`] what to do, do it, write the
//! result back in the same transaction, commit.
//!
//! * Controller steps run inside that transaction: their effect and the "done" mark commit
//!   together or not at all.
//! * Node steps are marked dispatched and committed *before* the job is pushed. If the
//!   push is lost (crash, Redis down) the lease runs out and the step is dispatched again;
//!   node actions are idempotent, and the attempt number filters duplicate results. A
//!   step's lease outlasts its action's own time limit (a shutdown's timeout).
//! * Nothing is dispatched to an offline node: the operation says it waits for it, and a
//!   cancel abandons the waiting step, listing its leftovers for the node's cleanup.
//! * A node with cleanup items it never ran takes no new work until a `node.cleanup`
//!   operation (started by the janitor in the sweep) has run them.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::kinds::{self, Ctx, Effect, OpKind, Request};
use super::steps::{StepEnv, StepError, StepErrorClass};
use super::{eta_seconds, Next, Saga};
use crate::controller::store::{self as st, events, OpRow, Store, StoreError, Tx};
use crate::fault::Fault;
use crate::jobs::{Catalog, KindDef};
use crate::model::{
    now_ms, rfc3339, GuestState, NodeAction, NodeJob, OpState, RunsOn, StepOutcome, StepState,
};
use crate::transport::Queues;

pub struct Engine {
    pub store: Store,
    pub catalog: Arc<Catalog>,
    pub queues: Arc<Queues>,
    pub env: StepEnv,
    /// HA (S74): how long a node stays offline before it is fenced and its HA guests
    /// restart elsewhere.
    pub ha_after_ms: i64,
    pub lease_ms: i64,
    pub max_tries: u32,
    pub window: usize,
    /// How long the janitor waits before it runs a node's failed cleanup items again.
    pub janitor_ms: i64,
    pub fault: Option<Fault>,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Launch(#[from] super::launch::LaunchError),
    /// Redis did not answer: try again later.
    #[error("the node queues")]
    Queue(#[from] crate::transport::TransportError),
    /// Recording a step's leftovers failed: try again later.
    #[error("recording a step's leftovers")]
    Leftovers(#[source] StepError),
    /// A node reported on a step that was dispatched to another node (or to none): the
    /// report is refused, whatever it says.
    #[error("node {node} reported on operation {op}, which it does not hold")]
    NotYours { node: String, op: String },
}

impl From<sqlx::Error> for EngineError {
    fn from(e: sqlx::Error) -> Self {
        EngineError::Store(StoreError::Db(e))
    }
}

/// What an operation waiting for offline node `n` says.
fn waiting_for(n: &str, liveness: Option<(bool, Option<i64>)>) -> String {
    match liveness {
        Some((_, Some(since))) => format!("waiting for node {n}, offline since {}", rfc3339(since)),
        Some(_) => format!("waiting for node {n}, offline"),
        None => format!("waiting for node {n}, which is not registered"),
    }
}

/// Node liveness as one run has read it: each node is read once per run.
struct Liveness(std::collections::HashMap<String, Option<(bool, Option<i64>)>>);

impl Liveness {
    fn new() -> Self {
        Liveness(std::collections::HashMap::new())
    }

    /// Whether node `n` is online, and since when it is offline (None: not registered).
    async fn of(
        &mut self,
        tx: &mut Tx<'_>,
        n: &str,
    ) -> Result<Option<(bool, Option<i64>)>, EngineError> {
        if let Some(l) = self.0.get(n) {
            return Ok(*l);
        }
        let l = st::node_liveness_in(tx, n).await?;
        self.0.insert(n.to_string(), l);
        Ok(l)
    }
}

/// How often (in 100 ms sweep ticks) the engine looks for dispatches Redis does not hold.
const UNPUSHED_EVERY_TICKS: u64 = 30;
/// Sweeps (of 100 ms) between two looks for nodes due a failover.
const HA_EVERY_TICKS: u64 = 10;
/// A dispatch younger than this may still be on its way to Redis.
const UNPUSHED_GRACE_MS: i64 = 2_000;

/// A node's report counts only if its operation's node steps were dispatched to that
/// node: the stream it came on names the sender, so one node cannot finish, fail or move
/// another node's steps.
fn holder_is(op: &OpRow, from: &str) -> Result<(), EngineError> {
    if op.node_id.as_deref() == Some(from) {
        return Ok(());
    }
    Err(EngineError::NotYours {
        node: from.to_string(),
        op: op.id.clone(),
    })
}

/// What may only happen once the transaction that recorded it has committed.
enum Post {
    /// A dispatched step's job, fenced then pushed.
    Push {
        node: String,
        job: NodeJob,
        ttl: Duration,
    },
    /// A running step was given up (an interrupting cancel): its fence says so, and the
    /// node stops the job and removes what it wrote.
    Interrupt {
        node: String,
        op: String,
        step: usize,
        undo: bool,
    },
    /// A step's result is applied: no copy of its job may run any more.
    Unfence {
        node: String,
        op: String,
        step: usize,
        undo: bool,
    },
    AfterStep(Box<OpRow>, usize),
    AfterOp(Box<OpRow>),
    /// The operation ended: its waiters wake.
    Ended(String),
    /// A crash-test fault point (`CORRAL_FAULT`): the state before it is committed.
    Inject {
        kind: String,
        step: String,
        when: &'static str,
    },
}

impl Post {
    /// What follows giving up a running step on `node`: an interrupt the running job
    /// sees; or, when the node is offline and died with the job in flight, its fence
    /// removed, because apalis hands that job back once the node returns, and a copy whose
    /// fence still held would write again what the cleanup list removes.
    fn abandoned(node: &str, op: &str, step: usize, undo: bool, offline: bool) -> Post {
        let (node, op) = (node.to_string(), op.to_string());
        if offline {
            Post::Unfence {
                node,
                op,
                step,
                undo,
            }
        } else {
            Post::Interrupt {
                node,
                op,
                step,
                undo,
            }
        }
    }
}

/// What a run does once its transaction is committed.
struct Poster {
    queues: Arc<Queues>,
    ended: tokio::sync::broadcast::Sender<String>,
    plugins: Arc<crate::controller::plugins::Plugins>,
    fault: Option<Fault>,
}

impl Poster {
    /// What follows a commit, in order.
    async fn after_commit(&self, p: Post) {
        match p {
            Post::Push { node, job, ttl } => {
                // Fence first: the key must name this attempt before any copy of the job
                // can run. If either fails the step stays dispatched; its lease runs out
                // and it is dispatched again.
                if let Err(e) = self
                    .queues
                    .fence(&node, &job.op_id, job.step, job.undo, job.attempt, ttl)
                    .await
                {
                    tracing::warn!(op = %job.op_id, step = job.step, "fencing: {e}; the lease will dispatch it again");
                    return;
                }
                let op_id = job.op_id.clone();
                if let Err(e) = self.queues.push(&node, job).await {
                    tracing::warn!(op = %op_id, "pushing to node {node}: {e}");
                }
            }
            Post::Unfence {
                node,
                op,
                step,
                undo,
            } => {
                if let Err(e) = self.queues.unfence(&node, &op, step, undo).await {
                    // The key expires by itself; until then a stale copy could still run once.
                    tracing::warn!(op = %op, step, "unfencing: {e}");
                }
            }
            Post::Interrupt {
                node,
                op,
                step,
                undo,
            } => {
                if let Err(e) = self.queues.interrupt(&node, &op, step, undo).await {
                    // The job runs to its end; its result is ignored and the cleanup
                    // list removes what it wrote.
                    tracing::warn!(op = %op, step, "interrupting: {e}");
                }
            }
            Post::AfterStep(op, step) => {
                crate::controller::hooks::after_step(&self.plugins, &op, step)
            }
            Post::AfterOp(op) => crate::controller::hooks::after_op(&self.plugins, &op),
            Post::Ended(id) => {
                // No receiver (nobody waits) is fine.
                let _ = self.ended.send(id);
            }
            Post::Inject { kind, step, when } => {
                if let Some(f) = &self.fault {
                    f.check(&kind, &step, when);
                }
            }
        }
    }
}

impl Post {
    fn inject(kind: &str, step: &str, when: &'static str) -> Post {
        Post::Inject {
            kind: kind.to_string(),
            step: step.to_string(),
            when,
        }
    }
}

/// Whether `advance` goes on with the same operation.
enum Flow {
    Continue,
    Stop,
    /// Waiting for room in this node's in-flight window.
    WindowFull(String),
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
        let mut ticks: u64 = 0;
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                Some(id) = wakes.recv() => { self.advance_logged(&id).await; }
                _ = sweep.tick() => {
                    // At start, then every few seconds: dispatches Redis does not hold.
                    if ticks.is_multiple_of(UNPUSHED_EVERY_TICKS) {
                        let grace = if ticks == 0 { 0 } else { UNPUSHED_GRACE_MS };
                        if let Err(e) = self.recover_unpushed(grace).await {
                            tracing::debug!("looking for dispatches that never reached Redis: {e}");
                        }
                    }
                    if ticks.is_multiple_of(HA_EVERY_TICKS) {
                        match self.ha_watch().await {
                            Ok(ops) => for id in ops { self.advance_logged(&id).await; },
                            Err(e) => tracing::warn!("HA: {e}"),
                        }
                    }
                    ticks = ticks.wrapping_add(1);
                    self.sweep().await
                }
            }
        }
    }

    async fn sweep(&self) {
        match self.store.active_op_ids(now_ms() - self.lease_ms).await {
            Ok(ids) => {
                // Once a node's window is full, the rest of its backlog waits for the next
                // sweep without each taking the write lock.
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
        match kinds::boot_jobs::start_due_runs(&self.store, &self.catalog).await {
            Ok(ops) => {
                for id in ops {
                    self.advance_logged(&id).await;
                }
            }
            Err(e) => tracing::warn!("starting boot-job runs: {e}"),
        }
        match self.janitor().await {
            Ok(ops) => {
                for id in ops {
                    self.advance_logged(&id).await;
                }
            }
            Err(e) => tracing::warn!("janitor: {e}"),
        }
    }

    /// Starts a `node.failover` for every node offline for longer than `ha_after_ms`
    /// with HA guests left on it (see `kinds::node_failover`); after one that could not
    /// fence, again every `ha_after_ms`.
    async fn ha_watch(&self) -> Result<Vec<String>, EngineError> {
        let now = now_ms();
        let mut tx = self.store.begin().await?;
        let due = self
            .store
            .nodes_due_failover(&mut tx, now - self.ha_after_ms, now - self.ha_after_ms)
            .await?;
        let mut started = Vec::new();
        for node in due {
            tracing::warn!(node = %node, "offline too long with HA guests: failing over");
            let op = super::launch::create_op(
                &self.catalog,
                &mut tx,
                &Request::NodeFailover(Default::default()),
                super::launch::Target::Node(&node),
                st::Requester::system("corral"),
                false,
            )
            .await?;
            started.push(op.id);
        }
        self.store.commit(tx).await?;
        Ok(started)
    }

    /// Starts a `node.cleanup` for every online node with cleanup items due.
    async fn janitor(&self) -> Result<Vec<String>, EngineError> {
        let mut started = Vec::new();
        for node in self
            .store
            .nodes_due_for_cleanup(now_ms() - self.janitor_ms)
            .await?
        {
            let mut tx = self.store.begin().await?;
            let op = super::launch::create_op(
                &self.catalog,
                &mut tx,
                &Request::NodeCleanup(kinds::NoPayload),
                super::launch::Target::Node(&node),
                st::Requester::system("corral"),
                false,
            )
            .await?;
            self.store.commit(tx).await?;
            started.push(op.id);
        }
        Ok(started)
    }

    /// A step recorded as dispatched (at least `grace_ms` ago) whose fence is not in Redis
    /// never reached its node: the controller died between the commit and the push, the
    /// push failed while Redis was down, or Redis lost its data. Its lease is treated as
    /// run out, so it goes out again now instead of after a whole lease (which follows
    /// the action's own time limit, ten minutes for a create's build). Run at start and
    /// every few seconds; the fence is written before the push, so a job in Redis always
    /// has one.
    async fn recover_unpushed(&self, grace_ms: i64) -> Result<(), EngineError> {
        let now = now_ms();
        for op in self.store.dispatched_ops().await? {
            let saga = load(&op)?;
            for (i, s) in saga.steps.iter().enumerate() {
                let undo = match s.state {
                    StepState::Running => false,
                    StepState::Undoing => true,
                    _ => continue,
                };
                if s.runs_on != RunsOn::Node || s.dispatched_at.is_none_or(|d| now - d < grace_ms) {
                    continue;
                }
                let Some(node) = op.node_id.as_deref() else {
                    continue;
                };
                let fenced = self
                    .queues
                    .fence_is(node, &op.id, i, undo, s.attempt)
                    .await
                    .map_err(EngineError::Queue)?;
                if fenced {
                    continue;
                }
                let mut tx = self.store.begin().await?;
                let Some(mut fresh) = st::op_in(&mut tx, &op.id).await? else {
                    continue;
                };
                let mut again = load(&fresh)?;
                if again.steps[i].attempt != s.attempt || again.steps[i].state != s.state {
                    continue;
                }
                tracing::info!(op = %op.id, step = i, undo, "dispatch never reached Redis: sending it again");
                again.steps[i].dispatched_at = Some(0);
                fresh.steps = serde_json::to_string(&again.steps).map_err(StoreError::from)?;
                st::save_op(&mut tx, &fresh).await?;
                self.store.commit(tx).await?;
                self.advance_logged(&op.id).await;
            }
        }
        Ok(())
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

    /// Moves one operation as far as it can go without waiting.
    pub async fn advance(&self, id: &str) -> Result<Option<String>, EngineError> {
        let tx = self.store.begin().await?;
        self.run_from(tx, id, None, Vec::new()).await
    }

    /// Runs the saga of `id` inside `tx` until it must wait, then commits once and does
    /// what may only happen after the commit (`post`, then whatever the run added: a job
    /// pushed to a node, hooks, fault points). Consecutive controller steps, a node
    /// result and the dispatch it makes possible thus share one transaction; each step
    /// still runs in its own savepoint, so a failed step rolls back alone.
    ///
    /// The operation row is read once (or handed over, `loaded`) and carried from step to
    /// step: every write to it in the run goes through this copy.
    async fn run_from(
        &self,
        mut tx: Tx<'static>,
        id: &str,
        loaded: Option<(OpRow, Option<OpRow>)>,
        mut post: Vec<Post>,
    ) -> Result<Option<String>, EngineError> {
        let mut full = None;
        // The operation as the database has it (None: not read yet, or already changed in
        // this transaction), and the run's working copy.
        let (mut current, stored) = match loaded {
            Some((op, stored)) => (Some(op), stored),
            None => match st::op_in(&mut tx, id).await? {
                Some(op) => (Some(op.clone()), Some(op)),
                None => (None, None),
            },
        };
        let mut liveness = Liveness::new();
        for _ in 0..64 {
            let Some(op) = current.as_mut() else {
                break;
            };
            match self
                .step_once(&mut tx, op, &mut liveness, &mut post)
                .await?
            {
                Flow::Continue => {}
                Flow::Stop => break,
                Flow::WindowFull(n) => {
                    full = Some(n);
                    break;
                }
            }
        }
        self.close_run(tx, current, stored, post).await?;
        Ok(full)
    }

    /// Moves operation `op` by one step of its saga, in `tx`: what a run repeats until the
    /// operation waits, ends, or the node's window is full.
    async fn step_once(
        &self,
        tx: &mut Tx<'static>,
        op: &mut OpRow,
        liveness: &mut Liveness,
        post: &mut Vec<Post>,
    ) -> Result<Flow, EngineError> {
        if op.op_state().is_terminal() {
            return Ok(Flow::Stop);
        }
        let req = match Request::of(op) {
            Ok(r) => r,
            Err(e) => {
                fail_unreadable(tx, op, &crate::chain::chain(&e)).await?;
                post.push(Post::Ended(op.id.clone()));
                return Ok(Flow::Stop);
            }
        };
        let def = self.catalog.get(req.kind());
        let mut saga = load(op)?;
        if let Some(why) = foreign_steps(&saga, def) {
            fail_unreadable(tx, op, &why).await?;
            post.push(Post::Ended(op.id.clone()));
            return Ok(Flow::Stop);
        }
        let node = node_of(tx, op).await?;
        let liveness = match &node {
            Some(n) => liveness.of(tx, n).await?,
            None => None,
        };
        saga.node_offline = node.is_some() && !matches!(liveness, Some((true, _)));
        let before = saga.clone();
        Ok(match saga.next(def, now_ms(), self.lease_ms) {
            Next::Wait => self.waiting(op, &saga, &before, def),
            Next::Finished(state) => {
                self.finish(tx, op, &req, &saga, def, state).await?;
                post.push(Post::AfterOp(Box::new(op.clone())));
                post.push(Post::Ended(op.id.clone()));
                Flow::Stop
            }
            Next::Interrupt { step } => {
                // Posted at every wake while the cancel stands; the fence is set once.
                post.extend(
                    node.as_ref()
                        .map(|n| Post::abandoned(n, &op.id, step, false, false)),
                );
                self.waiting(op, &saga, &before, def)
            }
            Next::Abandon { step, undo } => {
                if let Some(n) = &node {
                    post.push(Post::abandoned(n, &op.id, step, undo, saga.node_offline));
                }
                self.abandon(tx, op, &req, saga, def, step, undo).await?;
                Flow::Continue
            }
            Next::Execute { step, .. }
                if def.steps[step].runs_on == RunsOn::Node && saga.node_offline =>
            {
                note(op, &waiting_for(&node.unwrap_or_default(), liveness));
                Flow::Stop
            }
            Next::Execute { step, undo } => {
                // A node step's room on its node is checked before its action is
                // computed: a full window costs one query, not the whole step.
                let gated = match (&node, def.steps[step].runs_on) {
                    (Some(n), RunsOn::Node) => {
                        let redispatch = saga.steps[step].dispatched_at.is_some();
                        if let Some(flow) = self.gate(tx, op, &req, n, redispatch).await? {
                            return Ok(flow);
                        }
                        Some(n.clone())
                    }
                    _ => None,
                };
                self.execute(tx, op, &req, saga, def, step, undo, gated, post)
                    .await?
            }
        })
    }

    /// Ends a run: the operation's changes go to the database once, with one progress
    /// event (what happened between two commits is never visible anyway), then the run's
    /// effects on Redis.
    async fn close_run(
        &self,
        mut tx: Tx<'static>,
        mut current: Option<OpRow>,
        stored: Option<OpRow>,
        post: Vec<Post>,
    ) -> Result<(), EngineError> {
        if let Some(op) = current.as_mut() {
            if stored.as_ref() != Some(&*op) {
                st::save_op(&mut tx, op).await?;
                events::append(
                    &mut tx,
                    "operation",
                    &op.id,
                    &progress_event(op, op.updated_at),
                )
                .await?;
            }
        }
        self.store.commit(tx).await?;
        // The run's effects on Redis happen in order, on their own task: the next
        // operation's transaction need not wait for this one's round trips. A crash
        // before they happen is the case `recover_unpushed` and the step lease cover.
        if !post.is_empty() {
            let poster = Poster {
                queues: self.queues.clone(),
                ended: self.store.ops_ended.clone(),
                plugins: self.env.plugins.clone(),
                fault: self.fault.clone(),
            };
            tokio::spawn(async move {
                for p in post {
                    poster.after_commit(p).await;
                }
            });
        }
        Ok(())
    }

    /// Runs step `step` (forward or undo): a controller step to its end, a node step up to
    /// its dispatch.
    #[allow(clippy::too_many_arguments)]
    async fn execute(
        &self,
        tx: &mut Tx<'static>,
        op: &mut OpRow,
        req: &Request,
        mut saga: Saga,
        def: &KindDef,
        step: usize,
        undo: bool,
        gated: Option<String>,
        post: &mut Vec<Post>,
    ) -> Result<Flow, EngineError> {
        let name = def.steps[step].name;
        let runs_on = def.steps[step].runs_on;
        let now = now_ms();
        // What the operation was before the step: a step rolled back leaves it so.
        let unchanged = op.clone();
        let mut sp = sqlx::Connection::begin(&mut **tx).await?;
        match self
            .run_step(&mut sp, op, req, &saga, def.steps[step], undo)
            .await
        {
            Ok(Effect::Done) => {
                sp.commit().await?;
                saga.mark_started(step, undo, now, None);
                self.settle(op, &mut saga, def, step, undo, None, post);
                if runs_on == RunsOn::Controller {
                    post.push(Post::inject(
                        &op.kind,
                        name,
                        if undo { "undone" } else { "after" },
                    ));
                }
                Ok(Flow::Continue)
            }
            Ok(Effect::Node { node, action }) => {
                // Computing the action wrote nothing worth keeping.
                sp.rollback().await?;
                if gated.as_deref() != Some(node.as_str()) {
                    let redispatch = saga.steps[step].dispatched_at.is_some();
                    if let Some(flow) = self.gate(tx, op, req, &node, redispatch).await? {
                        return Ok(flow);
                    }
                }
                Ok(self.dispatch(op, saga, def, step, undo, node, action, post))
            }
            Err(err) => {
                let e = err.message();
                match err.class() {
                    StepErrorClass::Waiting => {
                        // What the step asked for stays; the sweep runs the step again.
                        sp.commit().await?;
                        note(op, &e);
                        Ok(Flow::Stop)
                    }
                    StepErrorClass::Transient => {
                        sp.rollback().await?; // whatever the step wrote
                        tracing::debug!(op = %op.id, step = %name, "transient: {e}");
                        *op = unchanged;
                        note(op, &e);
                        Ok(Flow::Stop)
                    }
                    StepErrorClass::Permanent => {
                        sp.rollback().await?;
                        *op = unchanged;
                        let mut saga = load(op)?;
                        saga.mark_started(step, undo, now, None);
                        self.settle(op, &mut saga, def, step, undo, Some(e), post);
                        Ok(Flow::Continue)
                    }
                }
            }
        }
    }

    /// Runs the kind's handler of step `def` (forward or undo) in `tx`.
    async fn run_step(
        &self,
        tx: &mut Tx<'_>,
        op: &mut OpRow,
        req: &Request,
        saga: &Saga,
        def: crate::jobs::StepDef,
        undo: bool,
    ) -> Result<Effect, StepError> {
        let mut cx = Ctx {
            tx,
            env: &self.env,
            op,
            keep_leases: saga.keep_leases(),
        };
        match kinds::run(&mut cx, req, def.name, undo).await? {
            Effect::Node { action, .. } if def.runs_on == RunsOn::Controller => {
                Err(StepError::Permanent(format!(
                    "step {} runs on the controller but asked a node to {}",
                    def.name,
                    action.name()
                )))
            }
            effect => Ok(effect),
        }
    }

    /// Records the end of a started step (with its error, if any).
    #[allow(clippy::too_many_arguments)]
    fn settle(
        &self,
        op: &mut OpRow,
        saga: &mut Saga,
        def: &KindDef,
        step: usize,
        undo: bool,
        error: Option<String>,
        post: &mut Vec<Post>,
    ) {
        saga.mark_finished(step, undo, error, now_ms());
        op.message.clear();
        self.save(op, saga, def);
        post.push(Post::AfterStep(Box::new(op.clone()), step));
    }

    /// Whether a node step may go to `node` now: `None` if so, else what the run does
    /// instead (wait for the node's cleanup, or for room in its in-flight window; a step
    /// sent again after its lease needs no room, it already holds its place).
    async fn gate(
        &self,
        tx: &mut Tx<'static>,
        op: &mut OpRow,
        req: &Request,
        node: &str,
        redispatch: bool,
    ) -> Result<Option<Flow>, EngineError> {
        Ok(
            match st::dispatch_gate(tx, node, req.kind() != OpKind::NodeCleanup).await? {
                st::Gate::Cleanup => {
                    let msg = format!(
                        "waiting for node {node} to remove what earlier operations left there"
                    );
                    note(op, &msg);
                    Some(Flow::Stop)
                }
                // The node's window is full: the backlog stays in SQL; the sweep retries.
                st::Gate::Inflight(n) if !redispatch && n >= self.window as i64 => {
                    Some(Flow::WindowFull(node.to_string()))
                }
                st::Gate::Inflight(_) => None,
            },
        )
    }

    /// Marks a node step dispatched; the job goes to the node's queue after the commit.
    #[allow(clippy::too_many_arguments)]
    fn dispatch(
        &self,
        op: &mut OpRow,
        mut saga: Saga,
        def: &KindDef,
        step: usize,
        undo: bool,
        node: String,
        action: NodeAction,
        post: &mut Vec<Post>,
    ) -> Flow {
        let name = def.steps[step].name;
        op.node_id = Some(node.clone());
        let declared = def.lease_ms(step, self.lease_ms);
        // A minute beyond the action's own limit covers its report's way back.
        let own = action
            .time_limit_secs()
            .map(|s| (s as i64).saturating_add(60).saturating_mul(1000))
            .filter(|l| *l > declared);
        let attempt = saga.mark_started(step, undo, now_ms(), own);
        op.message.clear();
        self.save(op, &saga, def);
        // A sequence's stage is its first sub-step's until the node reports progress.
        if let NodeAction::Sequence { steps } = &action {
            if let Some(first) = steps.first() {
                op.stage = if undo {
                    format!("undoing: {}", first.stage)
                } else {
                    first.stage.clone()
                };
            }
        }
        // Committed, not yet pushed: the window `recover_unpushed` closes.
        post.push(Post::inject(&op.kind, name, "unpushed"));
        // The fence lives twice the lease: a job older than that has been superseded.
        let ttl = Duration::from_millis((own.unwrap_or(declared) * 2).max(1) as u64);
        post.push(Post::Push {
            node,
            job: NodeJob {
                op_id: op.id.clone(),
                step,
                attempt,
                undo,
                action,
            },
            ttl,
        });
        post.push(Post::inject(
            &op.kind,
            name,
            if undo {
                "undo_dispatched"
            } else {
                "dispatched"
            },
        ));
        Flow::Stop
    }

    /// Nothing to do until a result or a lease: the row keeps what the saga's look changed.
    fn waiting(&self, op: &mut OpRow, saga: &Saga, before: &Saga, def: &KindDef) -> Flow {
        if saga != before {
            self.save(op, saga, def);
        }
        Flow::Stop
    }

    /// Gives up a node step whose node is offline (a cancel, the node's removal), or an
    /// interruptible one a cancel stops: what its undo would remove goes on the node's
    /// cleanup list, and the unwind goes on.
    #[allow(clippy::too_many_arguments)]
    async fn abandon(
        &self,
        tx: &mut Tx<'static>,
        op: &mut OpRow,
        req: &Request,
        mut saga: Saga,
        def: &KindDef,
        step: usize,
        undo: bool,
    ) -> Result<(), EngineError> {
        let reason = op.abandon_reason.clone().unwrap_or_else(|| {
            if saga.node_offline {
                "cancelled while its node was offline".into()
            } else {
                "cancelled while it ran".into()
            }
        });
        let why = format!("abandoned: {reason}");
        if def.steps[step].undo {
            self.list_leftover(tx, op, req, &saga, def, step, &why)
                .await?;
        }
        tracing::info!(op = %op.id, step = %def.steps[step].name, undo, "{why}");
        saga.mark_abandoned(step, &why, now_ms());
        op.message.clear();
        self.save(op, &saga, def);
        Ok(())
    }

    /// Puts what the undo of node step `step` would remove on its node's cleanup list.
    #[allow(clippy::too_many_arguments)]
    async fn list_leftover(
        &self,
        tx: &mut Tx<'static>,
        op: &mut OpRow,
        req: &Request,
        saga: &Saga,
        def: &KindDef,
        step: usize,
        reason: &str,
    ) -> Result<(), EngineError> {
        let name = def.steps[step].name;
        let undo_action = self
            .run_step(tx, op, req, saga, def.steps[step], true)
            .await;
        match undo_action {
            Ok(Effect::Node { node, action }) => {
                st::add_cleanup(
                    tx,
                    &node,
                    op.guest_id.as_deref(),
                    Some(&op.id),
                    &action,
                    reason,
                )
                .await?;
            }
            Ok(Effect::Done) => {}
            Err(e) if e.class() == StepErrorClass::Permanent => {
                // The guest is gone: nothing names what could be left.
                tracing::warn!(op = %op.id, step = name, "no leftover recorded: {}", e.message())
            }
            Err(e) => return Err(EngineError::Leftovers(e)),
        }
        Ok(())
    }

    /// Applies a node's step result (from the ingest loop) and goes on with the saga in
    /// the same transaction. Returns whether the result applied.
    pub async fn apply_result(
        &self,
        from: &str,
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
        holder_is(&op, from)?;
        if op.op_state().is_terminal() {
            return Ok(false);
        }
        let stored = op.clone();
        let Ok(req) = Request::of(&op) else {
            return Ok(false); // the next advance fails it with the reason
        };
        let def = self.catalog.get(req.kind());
        let mut saga = load(&op)?;
        if !saga.apply_result(step, attempt, undo, outcome, self.max_tries, now_ms()) {
            return Ok(false);
        }
        if saga.steps[step].state == StepState::UndoFailed {
            // The janitor retries the undo from the node's cleanup list; until it succeeds
            // the guest's leases stay held.
            let why = format!(
                "undo of step {} failed: {}",
                def.steps[step].name,
                saga.steps[step].error.clone().unwrap_or_default()
            );
            self.list_leftover(&mut tx, &mut op, &req, &saga, def, step, &why)
                .await?;
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
            // A state this controller does not know (a newer node) is left for the
            // node's next report rather than stored.
            if let Some(state) = guest_state.as_deref().and_then(GuestState::parse) {
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
        op.message.clear();
        self.save(&mut op, &saga, def);
        let post = vec![
            Post::AfterStep(Box::new(op.clone()), step),
            Post::Unfence {
                node: from.to_string(),
                op: op_id.to_string(),
                step,
                undo,
            },
        ];
        self.run_from(tx, op_id, Some((op, Some(stored))), post)
            .await?;
        Ok(true)
    }

    /// Records a node's report that sub-steps of a running step are done: the operation's
    /// stage names the next one and its percent moves in proportion. A report for another
    /// attempt, or for a step that already ended, changes nothing.
    pub async fn progress(
        &self,
        from: &str,
        op_id: &str,
        (step, attempt, undo): (usize, u32, bool),
        (done, of): (u32, u32),
        stage: &str,
        migration: Option<&crate::model::MigrationStats>,
    ) -> Result<(), EngineError> {
        let mut tx = self.store.begin().await?;
        let Some(mut op) = st::op_in(&mut tx, op_id).await? else {
            return Ok(());
        };
        holder_is(&op, from)?;
        let Ok(req) = Request::of(&op) else {
            return Ok(());
        };
        let def = self.catalog.get(req.kind());
        let saga = load(&op)?;
        let expected = if undo {
            StepState::Undoing
        } else {
            StepState::Running
        };
        if op.op_state().is_terminal()
            || saga
                .steps
                .get(step)
                .is_none_or(|s| s.attempt != attempt || s.state != expected)
        {
            return Ok(());
        }
        let now = now_ms();
        if undo {
            op.stage = format!("undoing: {stage}");
        } else {
            op.stage = stage.to_string();
            op.percent = saga.percent_within(def, Some((step, done, of)));
        }
        op.updated_at = now;
        st::save_op(&mut tx, &op).await?;
        let mut event = progress_event(&op, now);
        if let Some(m) = migration {
            // libvirt's figures, as the node read them (S65).
            event["migration"] = serde_json::to_value(m).unwrap_or_default();
            if let Some(eta) = m.eta_secs {
                event["eta_seconds"] = eta.into();
            }
        }
        events::append(&mut tx, "operation", &op.id, &event).await?;
        self.store.commit(tx).await?;
        Ok(())
    }

    /// Brings the operation's row up to the saga: state, steps, stage, percent, the node
    /// it waits on. Only the copy changes; the run writes it once before its commit.
    fn save(&self, op: &mut OpRow, saga: &Saga, def: &KindDef) {
        let now = now_ms();
        op.state = saga.state;
        // Step records always serialize (plain data); an empty list would be caught by
        // `foreign_steps` at the next read rather than lost silently.
        op.steps = serde_json::to_string(&saga.steps).unwrap_or_default();
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
        op.percent = if saga.state == OpState::Succeeded {
            100
        } else {
            saga.percent(def)
        };
        op.stage = saga.stage(def);
        op.started_at.get_or_insert(now);
        op.updated_at = now;
    }

    /// Ends an operation: its final state, what its kind does on finish, the lock
    /// released, an event.
    async fn finish(
        &self,
        tx: &mut Tx<'_>,
        op: &mut OpRow,
        req: &Request,
        saga: &Saga,
        def: &KindDef,
        state: OpState,
    ) -> Result<(), EngineError> {
        let mut saga = saga.clone();
        saga.state = state;
        op.finished_at = Some(now_ms());
        if saga.error.is_none() {
            // A cancel that gave up steps says why and where their leftovers went.
            if let Some(why) = saga
                .steps
                .iter()
                .find(|s| s.state == StepState::Abandoned)
                .and_then(|s| s.error.clone())
            {
                saga.error = Some(format!(
                    "{why}; what its steps may have left on the node is on the node's cleanup list"
                ));
            }
        }
        kinds::on_finish(tx, req, op, state).await?;
        if let Some(g) = op.guest_id.clone() {
            st::unlock_guest(tx, &g, &op.id).await?;
        }
        op.message.clear();
        self.save(op, &saga, def);
        Ok(())
    }
}

/// Fails an operation that cannot be resumed (its stored request or steps cannot be
/// read), releasing its guest so that it can be inspected and deleted.
async fn fail_unreadable(tx: &mut Tx<'_>, op: &mut OpRow, error: &str) -> Result<(), EngineError> {
    tracing::error!(op = %op.id, "{error}");
    let now = now_ms();
    op.state = OpState::Failed;
    op.error = Some(error.to_string());
    op.inflight_node = None;
    op.stage = "failed".into();
    op.finished_at = Some(now);
    op.updated_at = now;
    if let Some(g) = op.guest_id.clone() {
        st::unlock_guest(tx, &g, &op.id).await?;
    }
    Ok(())
}

/// Why stored step records do not belong to the kind's current step list (an operation
/// left by a corral whose kind had other steps), if they do not.
fn foreign_steps(saga: &Saga, def: &KindDef) -> Option<String> {
    let stored: Vec<&str> = saga.steps.iter().map(|s| s.name.as_str()).collect();
    let known: Vec<&str> = def.steps.iter().map(|s| s.name).collect();
    (stored != known).then(|| {
        format!(
            "this operation's steps ({}) are not those of {} in this version of corral ({}); \
             it cannot be resumed: inspect its guest and delete it",
            stored.join(", "),
            def.kind,
            known.join(", ")
        )
    })
}

/// Records a waiting reason (or a transient error) on the operation.
fn note(op: &mut OpRow, message: &str) {
    if op.message != message {
        op.message = message.to_string();
        op.updated_at = now_ms();
    }
}

/// The node an operation's node steps run on: its own once it has one (placement and
/// dispatch record it), else its guest's.
async fn node_of(tx: &mut Tx<'_>, op: &OpRow) -> Result<Option<String>, StoreError> {
    if op.node_id.is_some() {
        return Ok(op.node_id.clone());
    }
    if let Some(g) = &op.guest_id {
        if let Some(n) = st::guest_node_in(tx, g).await? {
            return Ok(Some(n));
        }
    }
    Ok(op.node_id.clone())
}

fn load(op: &OpRow) -> Result<Saga, EngineError> {
    Ok(Saga {
        state: op.op_state(),
        cursor: op.cursor,
        steps: op.step_records()?,
        cancel_requested: op.cancel_requested,
        error: op.error.clone(),
        node_offline: false,
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
        "message": op.message,
        "requested_by_id": op.requested_by_id,
    })
}
