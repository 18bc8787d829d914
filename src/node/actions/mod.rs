//! Node actions: each job's work against the local hypervisor and disk-image directory,
//! one module per action (mini-redis's layout: one file per command), dispatched by
//! [`run`]. The disk, snapshot and resize actions live in `node::disks`,
//! `node::snapshots` and `node::resize`, which they share helpers with.
//!
//! Every action checks before it acts, because a job may run twice (apalis re-queues a
//! dead worker's jobs; the controller re-dispatches after a lease): a disk that exists with
//! the right backing file is kept, a defined domain is not defined again, a running domain
//! is not started again, a file already gone is fine. Files are written under a temporary
//! name and renamed, so "exists" always means "complete".

mod agent_init;
mod agent_run;
mod attach_disk;
mod build_seed;
mod cleanup;
mod console_ticket;
mod create_disk;
mod create_volume;
mod define;
mod destroy;
mod detach_disk;
mod discard_copy;
mod grow_disk;
mod rebase;
mod reboot;
mod remove_file;
mod resume;
mod set_disk_limits;
mod set_ha;
mod shutdown;
mod start;
mod suspend;
mod undefine;
mod update_interface;

use std::path::Path;
use std::time::Duration;

use super::hypervisor::{DomState, HvError, Hypervisor};
use super::{resize, snapshots};
use crate::guestinit::{render_seed, write_seed_iso, Delivery, InitPlan};
use crate::model::{
    AgentBatch, AgentReport, BatchReport, CleanupItem, CleanupReport, CleanupResult, DomainSpec,
    InitInput, IoTune, NodeAction, Refusal, StepOutcome, TemplateSource,
};
use crate::render::Renderer;

/// What a node knows that affects how actions run.
pub struct NodeSettings {
    pub domain_type: String,
    pub machine: String,
    pub vnc_listen: String,
    pub storage_dir: std::path::PathBuf,
    /// Where a disk may be cloned from (`image_dirs`).
    pub image_dirs: Vec<std::path::PathBuf>,
    /// Runs OS-init profiles (under the node's own script limits).
    pub scripts: std::sync::Arc<crate::script::Scripts>,
    /// The bridges a guest may be attached to.
    pub allowed_bridges: Vec<String>,
    /// Where template images this node does not see are fetched from.
    pub images: Option<std::sync::Arc<super::fetch::ImageSource>>,
    /// Bandwidth a disk conversion (guest → template) may use, MiB/s; None: unlimited.
    pub convert_rate_mib: Option<u64>,
}

/// Refuses a NIC on a bridge this node does not allow guests on.
fn bridge_allowed(s: &NodeSettings, bridge: &str) -> Result<(), ActionError> {
    if s.allowed_bridges.iter().any(|b| b == bridge) {
        Ok(())
    } else {
        Err(ActionError::Refused(
            Refusal::BridgeNotAllowed,
            format!(
                "bridge {bridge} is not one this node lets guests use (allowed_bridges: {})",
                s.allowed_bridges.join(", ")
            ),
        ))
    }
}

/// The init plan last computed in one job: a sequence's seed and agent delivery share
/// one run of the profile.
#[derive(Default)]
pub struct Plans(Option<(InitInput, InitPlan)>);

impl Plans {
    fn get(
        &mut self,
        scripts: &crate::script::Scripts,
        init: &InitInput,
    ) -> Result<InitPlan, ActionError> {
        if let Some((input, plan)) = &self.0 {
            if input == init {
                return Ok(plan.clone());
            }
        }
        // A script error names the script and the line; running it again gives the same.
        let plan = scripts
            .plan(&init.profile, &init.source, &init.facts)
            .map_err(|e| ActionError::failed("running the OS-init profile", e))?;
        self.0 = Some((init.clone(), plan.clone()));
        Ok(plan)
    }
}

/// Why an action failed, and whether trying again can help. Each variant that wraps an
/// error keeps it as its source; the step's error text is the whole chain
/// ([`crate::chain::chain`]), made in [`outcome`].
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    /// The action cannot succeed as asked: the step fails and unwinds.
    #[error("{0}")]
    Permanent(String),
    /// Trying again later may succeed.
    #[error("{0}")]
    Transient(String),
    /// Refused by the node's own rules (permanent), with the typed reason.
    #[error("{1}")]
    Refused(Refusal, String),
    /// `what` failed because of `source`.
    #[error("{what}")]
    Failed {
        what: String,
        permanent: bool,
        #[source]
        source: crate::chain::Cause,
    },
    /// The hypervisor failed; its error says whether to try again.
    #[error(transparent)]
    Hv(#[from] HvError),
}

impl ActionError {
    /// `what` failed for good because of `e`.
    pub fn failed(
        what: impl Into<String>,
        e: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        ActionError::Failed {
            what: what.into(),
            permanent: true,
            source: Box::new(e),
        }
    }

    /// `what` failed because of `e`; trying again may succeed.
    pub fn retry(
        what: impl Into<String>,
        e: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        ActionError::Failed {
            what: what.into(),
            permanent: false,
            source: Box::new(e),
        }
    }

    pub fn is_permanent(&self) -> bool {
        match self {
            ActionError::Permanent(_) | ActionError::Refused(..) => true,
            ActionError::Transient(_) => false,
            ActionError::Failed { permanent, .. } => *permanent,
            ActionError::Hv(e) => !e.is_transient(),
        }
    }
}

fn ok(state: Option<DomState>) -> StepOutcome {
    StepOutcome::Ok {
        guest_state: state.map(|s| s.as_str().to_string()),
        domain_xml: None,
        output: None,
    }
}

/// A step's outcome as it goes to the controller: an error becomes its whole chain here.
pub fn outcome(r: Result<StepOutcome, ActionError>) -> StepOutcome {
    match r {
        Ok(o) => o,
        Err(e) => StepOutcome::Failed {
            error: crate::chain::chain(&e),
            permanent: e.is_permanent(),
            refusal: match e {
                ActionError::Refused(r, _) => Some(r),
                _ => None,
            },
        },
    }
}

/// Refuses paths outside the node's disk-image directory: a job names files to create and
/// delete, and a node must never be talked into touching anything else.
pub(crate) fn inside(storage: &Path, path: &str) -> Result<(), ActionError> {
    let p = Path::new(path);
    if p.is_absolute() && p.starts_with(storage) && !path.contains("/../") {
        Ok(())
    } else {
        Err(ActionError::Refused(
            Refusal::OutsideStorage,
            format!(
                "{path} is outside the node's disk-image directory {}",
                storage.display()
            ),
        ))
    }
}
/// What every action works with.
pub struct Cx<'a> {
    pub hv: &'a dyn Hypervisor,
    pub renderer: &'a Renderer,
    pub s: &'a NodeSettings,
    /// The init plan computed earlier in the same job, if any.
    pub plans: &'a mut Plans,
}

/// Runs one action.
pub async fn run(
    hv: &dyn Hypervisor,
    renderer: &Renderer,
    s: &NodeSettings,
    action: &NodeAction,
    plans: &mut Plans,
) -> Result<StepOutcome, ActionError> {
    let mut cx = Cx {
        hv,
        renderer,
        s,
        plans,
    };
    dispatch(&mut cx, action).await
}

// A table, one line per action: rustfmt would spread each struct pattern over lines.
#[rustfmt::skip]
async fn dispatch(cx: &mut Cx<'_>, action: &NodeAction) -> Result<StepOutcome, ActionError> {
    use NodeAction as A;
    let hv = cx.hv;
    match action {
        A::CreateDisk { path, template_path, template } => create_disk::run(cx, path, template_path, template.as_ref()).await,
        A::RemoveFile { path } => remove_file::run(cx, path).await,
        A::BuildSeed { path, init, replace } => build_seed::run(cx, path, init, *replace).await,
        A::Define { spec } => define::run(cx, spec).await,
        A::ConsoleTicket { guest_id, vnc_port, password, valid_until_ms } => console_ticket::run(cx, guest_id, *vnc_port, password, *valid_until_ms).await,
        A::UpdateInterface { spec } => update_interface::run(cx, spec).await,
        A::AgentRun { guest_id, batches, wait_secs, strict } => agent_run::run(cx, guest_id, batches, *wait_secs, *strict).await,
        A::AgentInit { guest_id, init, wait_secs } => agent_init::run(cx, guest_id, init, *wait_secs).await,
        A::Undefine { guest_id } => undefine::run(cx, guest_id).await,
        A::Start { guest_id } => start::run(cx, guest_id).await,
        A::Destroy { guest_id } => destroy::run(cx, guest_id).await,
        A::Shutdown { guest_id, timeout_secs } => shutdown::run(cx, guest_id, *timeout_secs).await,
        A::Reboot { guest_id } => reboot::run(cx, guest_id, false).await,
        A::Reset { guest_id } => reboot::run(cx, guest_id, true).await,
        A::Suspend { guest_id } => suspend::run(cx, guest_id).await,
        A::Resume { guest_id } => resume::run(cx, guest_id).await,
        A::Cleanup { items } => cleanup::run(cx, items).await,
        A::DiscardCopy { guest_id, paths } => discard_copy::run(cx, guest_id, paths).await,
        A::SetHa { guest_id, on } => set_ha::run(cx, guest_id, *on).await,
        A::Rebase { path, template_path, template } => rebase::run(cx, path, template_path, template.as_ref()).await,
        A::CreateVolume { path, size_mib } => create_volume::run(cx, path, *size_mib).await,
        A::AttachDisk { guest_id, path, target, limits } => attach_disk::run(cx, guest_id, path, target, limits.as_ref()).await,
        A::DetachDisk { guest_id, path, target } => detach_disk::run(cx, guest_id, path, target).await,
        A::GrowDisk { path, size_mib, attached } => grow_disk::run(cx, path, *size_mib, attached.as_ref()).await,
        A::SetDiskLimits { guest_id, path, target, limits } => set_disk_limits::run(cx, guest_id, path, target, limits.as_ref()).await,
        A::ResizeDomain { guest_id, size } => resize::resize(hv, guest_id, *size).await,
        A::CreateSnapshot { guest_id, name } => snapshots::create(hv, guest_id, name).await,
        A::RevertSnapshot { guest_id, name } => snapshots::revert(hv, guest_id, name).await,
        A::DeleteSnapshot { guest_id, name } => snapshots::delete(hv, guest_id, name).await,
        // The node's job handler runs these whole (a sequence sub-step by sub-step, a
        // conversion with its progress): they never nest.
        A::ConvertImage { .. } | A::Sequence { .. } | A::Migrate { .. } | A::CopyOut { .. } => {
            Err(ActionError::Permanent(format!("{} runs only as a whole job", action.name())))
        }
    }
}

/// An agent run's outcome, its report as the step's output; `strict`: a failed batch
/// fails the step (an init plan), otherwise each batch's result is only reported.
fn agent_outcome(
    report: crate::model::AgentReport,
    strict: bool,
) -> Result<StepOutcome, ActionError> {
    if strict {
        if let Some(e) = report.batches.iter().find_map(|b| b.error.clone()) {
            return Err(ActionError::Permanent(e));
        }
    }
    Ok(StepOutcome::Ok {
        guest_state: None,
        domain_xml: None,
        output: Some(
            serde_json::to_value(&report)
                .map_err(|e| ActionError::failed("encoding the report", e))?,
        ),
    })
}

/// The domain's state once it is not on its way down (a shutdown just requested, by
/// corral or inside the guest, leaves QEMU running for a moment).
async fn settled(hv: &dyn Hypervisor, uuid: &str) -> Result<DomState, ActionError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let st = require(hv, uuid).await?;
        if st != DomState::ShuttingDown || tokio::time::Instant::now() >= deadline {
            return Ok(st);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn require(hv: &dyn Hypervisor, uuid: &str) -> Result<DomState, ActionError> {
    hv.state(uuid)
        .await?
        .ok_or_else(|| ActionError::Permanent(format!("domain {uuid} is not defined on this node")))
}

fn ignore_gone(r: Result<(), HvError>) -> Result<(), ActionError> {
    match r {
        Ok(()) | Err(HvError::NoDomain(_)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The image a system disk is made on: the template's own when this node sees it in its
/// image directories (never another guest's disk, even when an image directory holds the
/// disk-image directory), else this node's cached copy, fetched when missing.
pub async fn backing_image(
    s: &NodeSettings,
    template_path: &str,
    template: Option<&crate::model::TemplateSource>,
    progress: &super::fetch::Progress<'_>,
) -> Result<String, ActionError> {
    let allowed = crate::config::in_dirs(&s.image_dirs, template_path)
        && !crate::config::in_dirs(std::slice::from_ref(&s.storage_dir), template_path);
    if allowed && Path::new(template_path).exists() {
        return Ok(template_path.to_string());
    }
    match (template, &s.images) {
        (Some(t), Some(images)) => images.cached(t, progress).await,
        _ if !allowed => Err(ActionError::Refused(
            Refusal::OutsideImageDirs,
            format!("template image {template_path} is outside this node's image directories"),
        )),
        _ => Err(ActionError::Permanent(format!(
            "template image {template_path} does not exist on this node, and the node has \
             no controller_url to fetch it from"
        ))),
    }
}
