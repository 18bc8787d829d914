//! Node actions: each job's work against the local hypervisor and disk-image directory.
//!
//! Every action checks before it acts, because a job may run twice (apalis re-queues a
//! dead worker's jobs; the controller re-dispatches after a lease): a disk that exists with
//! the right backing file is kept, a defined domain is not defined again, a running domain
//! is not started again, a file already gone is fine. Files are written under a temporary
//! name and renamed, so "exists" always means "complete".

use std::path::Path;
use std::time::Duration;

use super::hypervisor::{DomState, HvError, Hypervisor};
use crate::guestinit::{render_seed, write_seed_iso, Delivery, InitPlan};
use crate::model::{
    AgentBatch, AgentReport, BatchReport, CleanupReport, CleanupResult, InitInput, NodeAction,
    Refusal, StepOutcome,
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

/// Renders and writes a seed ISO (atomically).
async fn write_seed(renderer: &Renderer, plan: &InitPlan, path: &str) -> Result<(), ActionError> {
    let docs =
        render_seed(renderer, plan).map_err(|e| ActionError::failed("rendering the seed", e))?;
    write_seed_iso(&docs, Path::new(path))
        .await
        .map_err(|e| ActionError::retry("writing the seed", e))
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

pub async fn run(
    hv: &dyn Hypervisor,
    renderer: &Renderer,
    s: &NodeSettings,
    action: &NodeAction,
    plans: &mut Plans,
) -> Result<StepOutcome, ActionError> {
    match action {
        NodeAction::CreateDisk {
            path,
            template_path,
            template,
        } => {
            inside(&s.storage_dir, path)?;
            let backing = backing_image(s, template_path, template.as_ref(), &|_, _| {}).await?;
            create_disk(path, &backing).await?;
            Ok(ok(None))
        }
        NodeAction::RemoveFile { path } => {
            // A template image corral was writing may be undone too.
            if !crate::config::in_dirs(&s.image_dirs, path) {
                inside(&s.storage_dir, path)?;
            }
            for file in [super::staged(path), path.clone()] {
                match tokio::fs::remove_file(&file).await {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(ActionError::retry(format!("removing {file}"), e)),
                }
            }
            Ok(ok(None))
        }
        NodeAction::BuildSeed {
            path,
            init,
            replace,
        } => {
            inside(&s.storage_dir, path)?;
            // The write is atomic (rename), so replacing is as idempotent as creating.
            if *replace || !Path::new(path).exists() {
                // Secrets only where the guest reads them from this seed (InitPlan::for_seed).
                let plan = plans.get(&s.scripts, init)?.for_seed(*replace);
                write_seed(renderer, &plan, path).await?;
            }
            Ok(ok(None))
        }
        NodeAction::Define { spec } => {
            bridge_allowed(s, &spec.bridge)?;
            let xml = renderer
                .render(
                    "domain.xml",
                    minijinja::context! {
                        spec => crate::render::val(spec),
                        domain_type => s.domain_type.clone(),
                        machine => s.machine.clone(),
                        vnc_listen => s.vnc_listen.clone(),
                        // Made here and never sent anywhere: nobody knows it, so the
                        // console opens only with a console ticket's password.
                        vnc_password => crate::model::random_secret(8),
                        tcg_cache_mib => 32,
                        emulator => None::<String>,
                    },
                )
                .map_err(|e| ActionError::failed("rendering the domain XML", e))?;
            if hv.state(&spec.guest_id).await?.is_none() {
                hv.define(&xml)
                    .await
                    .map_err(|e| ActionError::failed("defining the domain", e))?;
            }
            let live = hv.xml(&spec.guest_id).await?;
            Ok(StepOutcome::Ok {
                guest_state: Some(DomState::Shutoff.as_str().into()),
                domain_xml: Some(live),
                output: None,
            })
        }
        NodeAction::CreateVolume { path, size_mib } => {
            inside(&s.storage_dir, path)?;
            super::disks::create_volume(path, *size_mib).await
        }
        NodeAction::AttachDisk {
            guest_id,
            path,
            target,
            limits,
        } => {
            inside(&s.storage_dir, path)?;
            super::disks::attach(hv, guest_id, path, target, limits.as_ref()).await
        }
        NodeAction::DetachDisk {
            guest_id,
            path,
            target,
        } => {
            inside(&s.storage_dir, path)?;
            super::disks::detach(hv, guest_id, path, target).await
        }
        NodeAction::GrowDisk {
            path,
            size_mib,
            attached,
        } => {
            inside(&s.storage_dir, path)?;
            super::disks::grow(hv, path, *size_mib, attached.as_ref()).await
        }
        NodeAction::SetDiskLimits {
            guest_id,
            path,
            target,
            limits,
        } => {
            inside(&s.storage_dir, path)?;
            super::disks::set_limits(hv, guest_id, path, target, limits.as_ref()).await
        }
        NodeAction::ResizeDomain { guest_id, size } => {
            super::resize::resize(hv, guest_id, *size).await
        }
        NodeAction::CreateSnapshot { guest_id, name } => {
            super::snapshots::create(hv, guest_id, name).await
        }
        NodeAction::RevertSnapshot { guest_id, name } => {
            super::snapshots::revert(hv, guest_id, name).await
        }
        NodeAction::DeleteSnapshot { guest_id, name } => {
            super::snapshots::delete(hv, guest_id, name).await
        }
        NodeAction::ConsoleTicket {
            guest_id,
            vnc_port,
            password,
            valid_until_ms,
        } => {
            // Only what the controller makes (alphanumeric) goes into the XML.
            if password.is_empty() || !password.chars().all(|c| c.is_ascii_alphanumeric()) {
                return Err(ActionError::Permanent(
                    "a console password must be letters and digits".into(),
                ));
            }
            if require(hv, guest_id).await? != DomState::Running {
                return Err(ActionError::Permanent(
                    "the guest is not running: its console opens once it runs".into(),
                ));
            }
            // libvirt reads `passwdValidTo` as UTC `YYYY-MM-DDTHH:MM:SS`.
            let until: String = crate::model::rfc3339(*valid_until_ms)
                .chars()
                .take(19)
                .collect();
            let xml = format!(
                "<graphics type='vnc' port='{vnc_port}' autoport='no' listen='{}' \
                 passwd='{password}' passwdValidTo='{until}'/>",
                s.vnc_listen
            );
            hv.update_graphics_live(guest_id, &xml)
                .await
                .map_err(|e| ActionError::failed("setting the console password", e))?;
            Ok(ok(None))
        }
        NodeAction::UpdateInterface { spec } => {
            bridge_allowed(s, &spec.bridge)?;
            let xml = renderer
                .render(
                    "interface.xml",
                    minijinja::context! { spec => crate::render::val(spec) },
                )
                .map_err(|e| ActionError::failed("rendering the interface XML", e))?;
            let live = require(hv, &spec.guest_id).await? == DomState::Running;
            hv.update_device(&spec.guest_id, &xml, live)
                .await
                .map_err(|e| ActionError::failed("updating the interface", e))?;
            Ok(StepOutcome::Ok {
                guest_state: None,
                domain_xml: Some(hv.xml(&spec.guest_id).await?),
                output: None,
            })
        }
        NodeAction::AgentRun {
            guest_id,
            batches,
            wait_secs,
            strict,
        } => {
            // Boot jobs' scripts are evaluated here; one that fails fails its own job.
            let mut refused = Vec::new();
            let mut runnable = Vec::with_capacity(batches.len());
            for b in batches {
                match &b.script {
                    None => runnable.push(b.clone()),
                    Some(sc) => match s
                        .scripts
                        .actions(&sc.name, &sc.source, &sc.facts, &sc.params)
                    {
                        Ok(actions) => runnable.push(AgentBatch {
                            id: b.id.clone(),
                            actions,
                            script: None,
                        }),
                        Err(e) => refused.push(BatchReport {
                            id: b.id.clone(),
                            ok: false,
                            error: Some(e.to_string()),
                            results: Vec::new(),
                        }),
                    },
                }
            }
            let mut report = if runnable.is_empty() {
                AgentReport::default()
            } else {
                super::agent::run(hv, guest_id, &runnable, *wait_secs).await?
            };
            report.batches.extend(refused);
            agent_outcome(report, *strict)
        }
        NodeAction::AgentInit {
            guest_id,
            init,
            wait_secs,
        } => {
            let plan = plans.get(&s.scripts, init)?;
            if plan.delivery != Delivery::Agent {
                // cloud-init applies the seed at first boot.
                return Ok(ok(None));
            }
            let batches = [AgentBatch {
                id: "init".into(),
                actions: plan.agent_actions(),
                script: None,
            }];
            let report = super::agent::run(hv, guest_id, &batches, *wait_secs).await?;
            agent_outcome(report, true)
        }
        // The node's job handler runs a sequence sub-step by sub-step; one never nests.
        NodeAction::ConvertImage { .. } => Err(ActionError::Permanent(
            "an image conversion runs on its own, not inside a sequence".into(),
        )),
        NodeAction::Sequence { .. } => Err(ActionError::Permanent(
            "a sequence runs only as a whole job".into(),
        )),
        NodeAction::Undefine { guest_id } => {
            match hv.state(guest_id).await? {
                None => {}
                Some(st) => {
                    if st != DomState::Shutoff {
                        ignore_gone(hv.destroy(guest_id).await)?;
                    }
                    ignore_gone(hv.undefine(guest_id).await)?;
                }
            }
            Ok(ok(None))
        }
        NodeAction::Start { guest_id } => {
            match settled(hv, guest_id).await? {
                DomState::Running => {}
                DomState::Paused => hv.resume(guest_id).await?,
                _ => hv
                    .start(guest_id)
                    .await
                    .map_err(|e| ActionError::failed("starting the domain", e))?,
            }
            Ok(ok(hv.state(guest_id).await?))
        }
        NodeAction::Destroy { guest_id } => {
            match hv.state(guest_id).await? {
                None | Some(DomState::Shutoff) => {}
                Some(_) => ignore_gone(hv.destroy(guest_id).await)?,
            }
            let st = hv.state(guest_id).await?;
            Ok(ok(st))
        }
        NodeAction::Shutdown {
            guest_id,
            timeout_secs,
        } => {
            if require(hv, guest_id).await? == DomState::Shutoff {
                return Ok(ok(Some(DomState::Shutoff)));
            }
            hv.shutdown(guest_id).await?;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(*timeout_secs);
            loop {
                let st = hv.state(guest_id).await?;
                if matches!(st, None | Some(DomState::Shutoff)) {
                    return Ok(ok(st));
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(ActionError::Permanent(format!(
                        "the guest did not power off within {timeout_secs} s of the ACPI request; use poweroff to force it"
                    )));
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
        NodeAction::Reboot { guest_id } | NodeAction::Reset { guest_id } => {
            if require(hv, guest_id).await? != DomState::Running {
                return Err(ActionError::Permanent("the guest is not running".into()));
            }
            if matches!(action, NodeAction::Reboot { .. }) {
                hv.reboot(guest_id).await?;
            } else {
                hv.reset(guest_id).await?;
            }
            Ok(ok(hv.state(guest_id).await?))
        }
        NodeAction::Suspend { guest_id } => {
            match require(hv, guest_id).await? {
                DomState::Paused => {}
                DomState::Running => hv.suspend(guest_id).await?,
                other => {
                    return Err(ActionError::Permanent(format!(
                        "cannot suspend a guest that is {}",
                        other.as_str()
                    )))
                }
            }
            Ok(ok(hv.state(guest_id).await?))
        }
        NodeAction::Cleanup { items } => {
            // Only removals, each by the guest's uuid or a path inside the disk-image
            // directory (checked by the action itself): a cleanup list cannot be turned
            // into anything else.
            let mut results = Vec::with_capacity(items.len());
            for item in items {
                let r = match &item.action {
                    NodeAction::Destroy { .. }
                    | NodeAction::Undefine { .. }
                    | NodeAction::RemoveFile { .. } => {
                        Box::pin(run(hv, renderer, s, &item.action, plans))
                            .await
                            .map(|_| ())
                    }
                    other => Err(ActionError::Permanent(format!(
                        "{} is not a cleanup action",
                        other.name()
                    ))),
                };
                results.push(CleanupResult {
                    id: item.id,
                    error: r.err().map(|e| e.to_string()),
                });
            }
            Ok(StepOutcome::Ok {
                guest_state: None,
                domain_xml: None,
                output: Some(
                    serde_json::to_value(CleanupReport { results })
                        .map_err(|e| ActionError::failed("encoding the report", e))?,
                ),
            })
        }
        NodeAction::Resume { guest_id } => {
            match require(hv, guest_id).await? {
                DomState::Running => {}
                DomState::Paused => hv.resume(guest_id).await?,
                other => {
                    return Err(ActionError::Permanent(format!(
                        "cannot resume a guest that is {}",
                        other.as_str()
                    )))
                }
            }
            Ok(ok(hv.state(guest_id).await?))
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

/// A linked clone of the template (a qcow2 overlay naming it as backing file, written
/// in-process, see [`super::qcow2`]): instant whatever the template's size.
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

async fn create_disk(path: &str, template: &str) -> Result<(), ActionError> {
    let (path, template) = (path.to_string(), template.to_string());
    tokio::task::spawn_blocking(move || create_disk_blocking(&path, &template))
        .await
        .map_err(|e| ActionError::retry("creating the disk", e))?
}

fn create_disk_blocking(path: &str, template: &str) -> Result<(), ActionError> {
    use super::qcow2;
    let permanent = |e: qcow2::Qcow2Error| ActionError::failed("reading the template", e);
    if !Path::new(template).exists() {
        return Err(ActionError::Permanent(format!(
            "template image {template} does not exist on this node"
        )));
    }
    if Path::new(path).exists() {
        if qcow2::backing_of(Path::new(path))
            .map_err(permanent)?
            .as_deref()
            == Some(template)
        {
            return Ok(());
        }
        return Err(ActionError::Permanent(format!(
            "{path} exists and is not a clone of {template}"
        )));
    }
    let transient = |what: &str, e: std::io::Error| ActionError::retry(what, e);
    if let Some(dir) = Path::new(path).parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| transient(&format!("creating {}", dir.display()), e))?;
    }
    let size = qcow2::virtual_size(Path::new(template)).map_err(permanent)?;
    let image = qcow2::overlay(template, size).map_err(permanent)?;
    let tmp = super::staged(path);
    let written = crate::modes::write_private(Path::new(&tmp), &image).and_then(|()| {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&tmp)?
            .set_len(qcow2::overlay_len(size))
    });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(transient(&format!("writing {tmp}"), e));
    }
    std::fs::rename(&tmp, path).map_err(|e| transient(&format!("renaming {tmp}"), e))
}
