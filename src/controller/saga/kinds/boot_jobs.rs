//! Boot jobs (S12, S13, S14, S18, S19, S21, S78): Rhai scripts that produce guest-agent
//! actions, queued per guest and run by a `guest.boot_jobs` operation:
//!
//! 1. `claim` (controller): the guest's pending jobs (or the ones the request named) are
//!    marked `running` under this operation. A job whose script is gone is marked `failed`
//!    at once. Undo puts the claimed jobs back to `pending` with the reason, so a run that
//!    could not reach the guest loses nothing.
//! 2. `run` (node): one agent run, one batch per job (see `node::agent`). Each batch
//!    carries its job's script (the source pinned at queue time), parameters and the
//!    guest's current facts; the node evaluates it under its own deadline just before the
//!    run, so no user script ever runs in the controller's writer transaction. A script
//!    that fails fails its job with the script's error (it would fail the same way at
//!    every boot); the other jobs run.
//! 3. `complete` (controller): each job `done` or `failed` with its per-action results;
//!    a successful password reset or key injection also updates the guest's init secrets,
//!    so that a later agent delivery does not bring the old password back.
//! 4. `refresh_seed` (node): the seed is rebuilt from the current record (hostname, IP),
//!    for images that read it at every boot. Like every rebuild after the first boot, it
//!    leaves out the password hash and SSH keys (see `node::actions`).
//!
//! When does a run start? At once when the caller asks and the guest runs; otherwise at its
//! next boot: a guest seen entering `running` (libvirt's lifecycle event, or a start,
//! reboot or create that succeeded) gets `boot_pending`, and the engine's sweep starts a
//! run for it once it is free ([`start_due_runs`]).

use serde::{Deserialize, Serialize};

use super::{Ctx, Effect, Kind, Request, StepDef};
use crate::controller::alloc;
use crate::controller::saga::initplan::{guest_facts, init_input, script_source};
use crate::controller::saga::launch::{create_op, LaunchError, Target};
use crate::controller::saga::steps::{guest_of, StepEnv, StepError};
use crate::controller::store::{self as st, OpRow, Store, StoreError, Tx};
use crate::jobs::Catalog;
use crate::model::{AgentBatch, AgentReport, BatchScript, BootJobState, NodeAction};
use crate::script::catalog::Kind as ScriptKind;

/// How long a run waits for the agent of a guest that just booted.
pub const AGENT_WAIT_SECS: u64 = 300;

/// Payload of `guest.boot_jobs`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunPayload {
    /// Only these jobs (a "run now" request); None: every pending job of the guest.
    #[serde(default)]
    pub job_ids: Option<Vec<String>>,
}

super::steps! {
    pub enum Step {
        Claim = StepDef::controller("claim", "evaluating boot scripts").undoable(),
        Run = StepDef::node("run", "running boot jobs in the guest").weight(6).lease_secs(900),
        Complete = StepDef::controller("complete", "recording results"),
        RefreshSeed = StepDef::node("refresh_seed", "rebuilding the init seed"),
    }
}

/// `guest.boot_jobs`: run a guest's pending boot jobs through its guest agent (at boot, or now).
pub struct BootJobs;

impl Kind for BootJobs {
    const NAME: &'static str = "guest.boot_jobs";
    const DESCRIPTION: &'static str =
        "Run a guest's pending boot jobs through its guest agent (at boot, or now).";
    type Payload = RunPayload;
    type Step = Step;

    async fn run(
        cx: &mut Ctx<'_, '_>,
        p: &RunPayload,
        step: Step,
        undo: bool,
    ) -> Result<Effect, StepError> {
        let g = guest_of(cx.tx, cx.op).await?;
        let action = match (step, undo) {
            (Step::Claim, false) => {
                claim(cx.tx, cx.op, &g, p).await?;
                None
            }
            (Step::Claim, true) => {
                unclaim(cx.tx, cx.op).await?;
                None
            }
            (Step::Run, false) => run_action(cx.tx, cx.env, cx.op, &g).await?,
            (Step::Complete, false) => {
                complete(cx.tx, cx.env, cx.op, &g).await?;
                None
            }
            (Step::RefreshSeed, false) => refresh_seed_action(cx.tx, &g, None).await?,
            (Step::Run | Step::Complete | Step::RefreshSeed, true) => None,
        };
        Ok(super::on_guest_node(&g, action))
    }
}

async fn claim(
    tx: &mut Tx<'_>,
    op: &OpRow,
    g: &st::GuestRow,
    p: &RunPayload,
) -> Result<(), StepError> {
    for job in st::pending_jobs_in(tx, &g.id).await? {
        if p.job_ids.as_ref().is_some_and(|ids| !ids.contains(&job.id)) {
            continue;
        }
        // The source pinned at queue time; jobs from before pinning take the current one.
        let pinned = job.source.is_some()
            || script_source(tx, ScriptKind::Boot, &job.script)
                .await?
                .is_some();
        if pinned {
            st::claim_job(tx, &job.id, &op.id, "[]").await?;
        } else {
            let e = format!("boot script {} no longer exists", job.script);
            st::end_job(tx, &job.id, BootJobState::Failed, None, Some(&e)).await?;
        }
    }
    Ok(())
}

async fn unclaim(tx: &mut Tx<'_>, op: &OpRow) -> Result<(), StepError> {
    let reason = op
        .step_records()
        .ok()
        .and_then(|s| s.into_iter().rev().find_map(|s| s.error))
        .unwrap_or_else(|| "the run was undone".into());
    st::release_jobs(tx, &op.id, &reason).await?;
    Ok(())
}

/// The node action of `run`: one batch per claimed job. None when nothing was claimed.
/// The node action of `run`: one batch per claimed job, each with its script to evaluate
/// on the node. None when nothing was claimed.
async fn run_action(
    tx: &mut Tx<'_>,
    env: &StepEnv,
    op: &OpRow,
    g: &st::GuestRow,
) -> Result<Option<NodeAction>, StepError> {
    let jobs = st::jobs_of_op_in(tx, &op.id).await?;
    if jobs.is_empty() {
        return Ok(None);
    }
    let facts = guest_facts(tx, g, None).await?;
    let mut batches = Vec::with_capacity(jobs.len());
    for j in jobs {
        let params = match params_of(env, &j) {
            Ok(p) => p,
            Err(e) => {
                // Only this job cannot run; it would fail the same way at every boot.
                st::end_job(tx, &j.id, BootJobState::Failed, None, Some(&e.to_string())).await?;
                continue;
            }
        };
        let source = match j.source {
            Some(s) => s,
            None => script_source(tx, ScriptKind::Boot, &j.script)
                .await?
                .unwrap_or_default(),
        };
        // Users' scripts never see the guest's password hash.
        let mut facts = facts.clone();
        if !j.system {
            facts.password_hash = None;
        }
        batches.push(AgentBatch {
            id: j.id,
            actions: Vec::new(),
            script: Some(Box::new(BatchScript {
                name: j.script,
                source,
                params,
                facts,
            })),
        });
    }
    Ok(Some(NodeAction::AgentRun {
        guest_id: g.id.clone(),
        batches,
        wait_secs: AGENT_WAIT_SECS,
        strict: false,
    }))
}

/// A job's parameters as its script receives them: the stored ones, with the values of
/// its declared secrets opened (see `controller::api::bootjobs`).
fn params_of(
    env: &StepEnv,
    job: &st::BootJobRow,
) -> Result<serde_json::Value, crate::controller::sealed::SealError> {
    let mut params: serde_json::Value =
        serde_json::from_str(&job.params).unwrap_or(serde_json::Value::Null);
    let Some(sealed) = &job.sealed_params else {
        return Ok(params);
    };
    let secrets: serde_json::Value =
        serde_json::from_str(&env.sealer.open(sealed)?).unwrap_or_default();
    if let (Some(p), Some(s)) = (params.as_object_mut(), secrets.as_object()) {
        for (k, v) in s {
            p.insert(k.clone(), v.clone());
        }
    }
    Ok(params)
}

async fn complete(
    tx: &mut Tx<'_>,
    env: &StepEnv,
    op: &OpRow,
    g: &st::GuestRow,
) -> Result<(), StepError> {
    // No report: the run had nothing to do on the node (no job was claimed).
    let report: AgentReport = op.report(Step::Run.name())?.unwrap_or_default();
    let mut secrets = g.secrets();
    let mut secrets_changed = false;
    for job in st::jobs_of_op_in(tx, &op.id).await? {
        let batch = report.batches.iter().find(|b| b.id == job.id);
        let results = batch
            .map(|b| serde_json::to_string(&b.results))
            .transpose()
            .map_err(StoreError::from)?;
        let (state, error) = match batch {
            Some(b) if b.ok => (BootJobState::Done, None),
            Some(b) => (BootJobState::Failed, b.error.clone()),
            None => (
                BootJobState::Failed,
                Some("the node did not report this job".to_string()),
            ),
        };
        // Read before the end deletes the sealed values.
        let params = params_of(env, &job).unwrap_or_default();
        st::end_job(tx, &job.id, state, results.as_deref(), error.as_deref()).await?;
        // Init secrets are the guest's main account's (root): other users' are not replayed.
        let main_user = params["user"].as_str().is_none_or(|u| u == "root");
        if state == BootJobState::Done && job.system && main_user {
            match job.script.as_str() {
                "reset-password" => {
                    if let Some(h) = params["password_hash"].as_str() {
                        secrets.password_hash = Some(h.to_string());
                        secrets_changed = true;
                    }
                }
                "change-ip" => {
                    // The guest has left its old address: the pool may hand it out again.
                    let old = params["old_address"]
                        .as_str()
                        .and_then(|a| a.split('/').next());
                    if let Some(old) = old.filter(|o| Some(*o) != g.ip.as_deref()) {
                        alloc::release_ip(tx, old, &g.id).await?;
                    }
                }
                "inject-ssh-keys" => {
                    for k in params["keys"].as_array().into_iter().flatten() {
                        if let Some(k) = k
                            .as_str()
                            .filter(|k| !secrets.ssh_keys.iter().any(|s| s == k))
                        {
                            secrets.ssh_keys.push(k.to_string());
                            secrets_changed = true;
                        }
                    }
                }
                _ => {}
            }
        }
    }
    if secrets_changed {
        st::set_guest_secrets(tx, &g.id, &secrets).await?;
    }
    Ok(())
}

/// The node action of a seed rebuild from the current record (None: the guest has no seed).
pub async fn refresh_seed_action(
    tx: &mut Tx<'_>,
    g: &st::GuestRow,
    ip: Option<(&str, &str)>,
) -> Result<Option<NodeAction>, StepError> {
    let disks = st::disks_of_in(tx, &g.id).await?;
    let Some(seed) = disks.into_iter().find(|d| d.kind == "seed") else {
        return Ok(None);
    };
    Ok(Some(NodeAction::BuildSeed {
        path: seed.path,
        init: Box::new(init_input(tx, g, ip).await?),
        replace: true,
    }))
}

/// Starts a boot-job run for each guest that booted and is free (called by the engine's
/// sweep). Returns the operations it created, to wake them.
pub async fn start_due_runs(store: &Store, catalog: &Catalog) -> Result<Vec<String>, StoreError> {
    let mut started = Vec::new();
    for guest in store.booted_free_guests(64).await? {
        let mut tx = store.begin().await?;
        // Still due and free inside the transaction: the flag is taken once.
        let Some(state) = st::take_boot_pending(&mut tx, &guest).await? else {
            continue;
        };
        if state == "running" && st::has_pending_jobs(&mut tx, &guest).await? {
            match create_op(
                catalog,
                &mut tx,
                &Request::GuestBootJobs(RunPayload::default()),
                Target::Guest(&guest),
                st::Requester::system("corral"),
                true,
            )
            .await
            {
                Ok(op) => started.push(op.id),
                Err(LaunchError::Store(e)) => return Err(e),
                Err(e) => {
                    tracing::warn!(guest, "boot jobs not started: {e}");
                    continue;
                }
            }
        }
        store.commit(tx).await?;
    }
    Ok(started)
}

/// Marks a guest as just booted: its pending boot jobs run once it is free. A guest
/// without pending jobs is not flagged, so a boot costs the sweep nothing.
pub async fn mark_booted(tx: &mut Tx<'_>, guest: &str) -> Result<(), StoreError> {
    if st::has_pending_jobs(tx, guest).await? {
        st::set_boot_pending(tx, guest).await?;
    }
    Ok(())
}
