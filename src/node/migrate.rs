//! [`NodeAction::Migrate`] on the source node: a running guest moves to another node's
//! hypervisor, live, and its progress goes to the controller once a second.
//!
//! 1. **Where is it?** A job arrives at least once, and a migration may have finished
//!    while the agent or the controller was down. So the job first looks: running here
//!    and not on the target → migrate; gone from here and running on the target →
//!    already done (reported as such); a migration job of an earlier attempt still
//!    running here → wait for it to end, then look again.
//! 2. **Migrate.** libvirt's managed migration (`virDomainMigrate3`, this agent opening
//!    both connections): live, persistent on the target, undefined here, the disks' own
//!    data copied with the memory (`VIR_MIGRATE_NON_SHARED_INC`: an overlay's backing
//!    template is already on the target, only the overlay's blocks, the data disks and
//!    the read-only seed's copy made there beforehand are involved) unless the storage is
//!    shared. The definition on the target is this one with the disks' paths, the VNC
//!    port and the VNC address changed ([`retarget_xml`]); MAC, IP, I/O limits and
//!    everything else stay as they are.
//! 3. **Watch.** Every second: libvirt's job statistics become a progress event (percent,
//!    bytes processed and remaining, dirty rate, pass, expected downtime, ETA); the
//!    step's fence is read, and a cancel aborts the libvirt job, which leaves the guest
//!    running here, untouched. With `postcopy`, a migration still copying memory after
//!    its third pass switches to post-copy.
//!
//! If this agent dies mid-migration, libvirt aborts the migration with the connection
//! that drove it: the guest keeps running here and the re-delivered job starts over.

use std::time::Duration;

use virt::connect::Connect;
use virt::domain::{Domain, MigrateParameters};
use virt::sys;

use super::actions::{self, ActionError};
use super::hypervisor::{DomState, HvError, JobFigures, MigrationPlan};
use super::{interrupted, NodeCtx};
use crate::model::{
    MigrateReport, MigrationStats, MigrationTarget, MigrationTuning, NodeEvent, NodeJob,
    StepOutcome,
};

/// How often the job's figures are read and reported.
const POLL: Duration = Duration::from_secs(1);
/// Pre-copy passes after which a migration allowed post-copy switches to it.
const POSTCOPY_AFTER_PASSES: u64 = 3;

/// What the migration step was given.
pub struct Migration<'a> {
    pub guest_id: &'a str,
    pub to: &'a MigrationTarget,
    pub paths: &'a [(String, String)],
    pub vnc_port: u16,
    pub tuning: &'a MigrationTuning,
}

/// Runs the migration step (see the module doc).
pub async fn run(
    ctx: &NodeCtx,
    job: &NodeJob,
    m: Migration<'_>,
) -> Result<StepOutcome, ActionError> {
    for p in m.paths {
        actions::inside(&ctx.settings.storage_dir, &p.0)?;
    }
    let hv = ctx.hv.as_ref();
    // An earlier attempt's migration may still run: its end decides where the guest is.
    while hv.job_stats(m.guest_id).await.ok().flatten().is_some() {
        tokio::time::sleep(POLL).await;
    }
    let here = hv.state(m.guest_id).await?;
    let there = hv.state_at(&m.to.libvirt_uri, m.guest_id).await?;
    match (here, there) {
        (_, Some(DomState::Running | DomState::Paused)) if !is_live(here) => {
            return already_there();
        }
        (Some(DomState::Running), None | Some(DomState::Shutoff)) => {}
        (here, there) => {
            return Err(ActionError::Permanent(format!(
                "cannot migrate: the domain is {} here and {} on node {}",
                describe(here),
                describe(there),
                m.to.node_id
            )))
        }
    }
    let plan = MigrationPlan {
        uri: m.to.libvirt_uri.clone(),
        address: m.to.address.clone(),
        paths: m.paths.to_vec(),
        vnc_port: m.vnc_port,
        vnc_listen: m.to.vnc_listen.clone(),
        copy_storage: !m.to.shared_storage,
        bandwidth_mib: m.tuning.bandwidth_mib.or(ctx.cfg.migration_rate_mib),
        auto_converge: m.tuning.auto_converge,
        postcopy: m.tuning.postcopy,
    };
    watch(ctx, job, m.guest_id, plan).await
}

/// A job whose step was interrupted before it ran: a migration reports where the guest
/// is (already on the target when an earlier attempt moved it), anything else that it
/// did not run.
pub async fn interrupted_before_start(
    ctx: &NodeCtx,
    job: &NodeJob,
) -> Result<StepOutcome, ActionError> {
    let not_run = || {
        Err(ActionError::Permanent(
            "interrupted by a cancel before it ran".into(),
        ))
    };
    let crate::model::NodeAction::Migrate { guest_id, to, .. } = &job.action else {
        return not_run();
    };
    let here = ctx.hv.state(guest_id).await?;
    let there = ctx.hv.state_at(&to.libvirt_uri, guest_id).await?;
    if is_live(there) && !is_live(here) {
        return already_there();
    }
    not_run()
}

fn is_live(s: Option<DomState>) -> bool {
    matches!(s, Some(DomState::Running | DomState::Paused))
}

fn describe(s: Option<DomState>) -> &'static str {
    s.map_or("not defined", DomState::as_str)
}

fn already_there() -> Result<StepOutcome, ActionError> {
    let report = MigrateReport {
        already_there: true,
        ..MigrateReport::default()
    };
    StepOutcome::reported(Some("running".into()), None, &report)
        .map_err(|e| ActionError::failed("encoding the report", e))
}

/// Runs the migration while reporting its figures and honouring a cancel.
async fn watch(
    ctx: &NodeCtx,
    job: &NodeJob,
    guest: &str,
    plan: MigrationPlan,
) -> Result<StepOutcome, ActionError> {
    let hv = ctx.hv.clone();
    let (g, postcopy) = (guest.to_string(), plan.postcopy);
    let migration = tokio::spawn(async move { hv.migrate(&g, plan).await });
    tokio::pin!(migration);
    let mut tick = tokio::time::interval(POLL);
    let (mut last, mut cancelled, mut switched) = (MigrationStats::default(), false, false);
    let done = loop {
        tokio::select! {
            r = &mut migration => break r.map_err(HvError::Join)?,
            _ = tick.tick() => {
                if let Ok(Some(f)) = ctx.hv.job_stats(guest).await {
                    last = stats(&f);
                    report(ctx, job, &last).await;
                    if postcopy && !switched && f.iteration > POSTCOPY_AFTER_PASSES {
                        switched = ctx.hv.start_post_copy(guest).await.is_ok();
                    }
                }
                if !cancelled && !switched {
                    if let Some(stop) = interrupted(ctx, job, &[]).await {
                        if matches!(stop, ActionError::Permanent(_)) {
                            // A cancel: libvirt unwinds its migration, the guest stays.
                            cancelled = ctx.hv.abort_job(guest).await.is_ok();
                        }
                    }
                }
            }
        }
    };
    match done {
        Ok(figures) => {
            let downtime_ms = figures.as_ref().map_or(0, |f| f.downtime_ms);
            let mut stats = figures.as_ref().map_or(last, stats);
            stats.percent = 100;
            stats.remaining_bytes = 0;
            stats.eta_secs = Some(0);
            let report = MigrateReport {
                stats,
                downtime_ms,
                already_there: false,
            };
            StepOutcome::reported(Some("running".into()), None, &report)
                .map_err(|e| ActionError::failed("encoding the report", e))
        }
        Err(_) if cancelled => Err(ActionError::Permanent(
            "interrupted by a cancel; the guest stays on its node".into(),
        )),
        Err(e) => Err(ActionError::Failed {
            what: "migrating the guest".into(),
            // libvirt's migration either finished or left the guest where it was: trying
            // again is safe, and a network hiccup may pass.
            permanent: !e.is_transient(),
            source: Box::new(e),
        }),
    }
}

/// A progress event with the migration's figures, best effort.
async fn report(ctx: &NodeCtx, job: &NodeJob, s: &MigrationStats) {
    let stage = format!(
        "migrating: {}% ({} of {} MiB left{})",
        s.percent,
        s.remaining_bytes >> 20,
        s.total_bytes >> 20,
        s.eta_secs
            .map(|e| format!(", about {e} s"))
            .unwrap_or_default()
    );
    let ev = NodeEvent::StepProgress {
        node_id: ctx.node_id.clone(),
        op_id: job.op_id.clone(),
        step: job.step,
        attempt: job.attempt,
        undo: job.undo,
        done: s.percent.min(99),
        of: 100,
        stage,
        migration: Some(Box::new(s.clone())),
    };
    if let Err(e) = ctx.publisher.publish(&ev).await {
        tracing::debug!(op = %job.op_id, "migration progress not reported: {e}");
    }
}

/// libvirt's figures as corral reports them.
pub fn stats(f: &JobFigures) -> MigrationStats {
    let rate = f.mem_bps + f.disk_bps;
    let percent = (f.data_processed.min(f.data_total) * 100)
        .checked_div(f.data_total)
        .unwrap_or(0) as u32;
    MigrationStats {
        percent,
        processed_bytes: f.data_processed,
        remaining_bytes: f.data_remaining,
        total_bytes: f.data_total,
        dirty_rate_bps: f.dirty_rate,
        iteration: f.iteration,
        rate_bps: rate,
        expected_downtime_ms: f.expected_downtime_ms,
        eta_secs: (rate > 0).then(|| f.data_remaining.div_ceil(rate)),
        elapsed_ms: f.elapsed_ms,
    }
}

/// The libvirt side, on the blocking pool: opens the target, migrates, and reads the
/// finished job's figures on the target.
pub fn libvirt_migrate(d: &Domain, plan: &MigrationPlan) -> Result<Option<JobFigures>, HvError> {
    let xml = d.xml_desc(sys::VIR_DOMAIN_XML_MIGRATABLE)?;
    let xml = retarget_xml(&xml, &plan.paths, plan.vnc_port, &plan.vnc_listen)?;
    let dconn = Connect::open(Some(&plan.uri))?;
    let params = MigrateParameters {
        dest_xml: Some(xml.clone()),
        persist_xml: Some(xml),
        uri: Some(format!("tcp://{}", bracket(&plan.address))),
        bandwidth: plan.bandwidth_mib,
        ..MigrateParameters::default()
    };
    let mut flags =
        sys::VIR_MIGRATE_LIVE | sys::VIR_MIGRATE_PERSIST_DEST | sys::VIR_MIGRATE_UNDEFINE_SOURCE;
    if plan.copy_storage {
        flags |= sys::VIR_MIGRATE_NON_SHARED_INC;
    } else {
        // Both nodes declared the same shared storage: libvirt recognises only some
        // cluster filesystems as shared and would refuse the others, so the operator's
        // declaration is what counts (docs/ARCHITECTURE.md, "Storage layouts").
        flags |= sys::VIR_MIGRATE_UNSAFE;
    }
    if plan.auto_converge {
        flags |= sys::VIR_MIGRATE_AUTO_CONVERGE;
    }
    if plan.postcopy {
        flags |= sys::VIR_MIGRATE_POSTCOPY;
    }
    let r = d.migrate3(&dconn, params, flags).map(|there| {
        super::jobctl::stats(&there, sys::VIR_DOMAIN_JOB_STATS_COMPLETED)
            .ok()
            .flatten()
    });
    drop(dconn);
    Ok(r?)
}

/// An IPv6 address in brackets, as a URI needs it.
fn bracket(address: &str) -> String {
    if address.contains(':') && !address.starts_with('[') {
        format!("[{address}]")
    } else {
        address.to_string()
    }
}

/// Why a definition cannot be sent to the target as it is.
#[derive(Debug, thiserror::Error)]
pub enum RetargetError {
    #[error("the definition has no disk at {0}")]
    NoDisk(String),
    #[error("the definition has no VNC console")]
    NoConsole,
}

/// The domain's definition for the target: every disk source in `paths` moved to its
/// target path, and the VNC port and address changed. Refuses a definition that lacks
/// one of the paths or a VNC console, rather than send a guest off half-moved.
pub fn retarget_xml(
    xml: &str,
    paths: &[(String, String)],
    vnc_port: u16,
    vnc_listen: &str,
) -> Result<String, RetargetError> {
    let mut out = xml.to_string();
    for (from, to) in paths {
        let old = format!("file='{}'", escape(from));
        if !out.contains(&old) {
            return Err(RetargetError::NoDisk(from.clone()));
        }
        out = out.replace(&old, &format!("file='{}'", escape(to)));
    }
    let start = out
        .find("<graphics type='vnc'")
        .ok_or(RetargetError::NoConsole)?;
    let end = out[start..]
        .find("</graphics>")
        .or_else(|| out[start..].find("/>"))
        .map(|e| start + e)
        .ok_or(RetargetError::NoConsole)?;
    let graphics = set_attr(&out[start..end], "port", &vnc_port.to_string());
    let graphics = set_attr(&graphics, "listen", vnc_listen);
    let graphics = set_attr(&graphics, "address", vnc_listen);
    out.replace_range(start..end, &graphics);
    Ok(out)
}

/// Every `name='…'` in `element` set to `value`.
fn set_attr(element: &str, name: &str, value: &str) -> String {
    let key = format!(" {name}='");
    let mut out = String::with_capacity(element.len());
    let mut rest = element;
    while let Some(i) = rest.find(&key) {
        let value_at = i + key.len();
        let Some(close) = rest[value_at..].find('\'') else {
            break;
        };
        out.push_str(&rest[..value_at]);
        out.push_str(&escape(value));
        rest = &rest[value_at + close..];
    }
    out.push_str(rest);
    out
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('\'', "&apos;")
        .replace('<', "&lt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    const XML: &str = "<domain type='qemu'>\n  <devices>\n    <disk type='file' device='disk'>\n      <source file='/a/g.qcow2'/>\n      <target dev='vda' bus='virtio'/>\n    </disk>\n    <disk type='file' device='cdrom'>\n      <source file='/a/g-seed.iso'/>\n    </disk>\n    <graphics type='vnc' port='5901' autoport='no' listen='127.0.0.1'>\n      <listen type='address' address='127.0.0.1'/>\n    </graphics>\n    <video/>\n  </devices>\n</domain>";

    #[test]
    fn the_definition_follows_the_paths_and_the_console() {
        let paths = vec![
            ("/a/g.qcow2".to_string(), "/b/g.qcow2".to_string()),
            ("/a/g-seed.iso".to_string(), "/b/g-seed.iso".to_string()),
        ];
        let out = retarget_xml(XML, &paths, 6001, "10.0.0.2").unwrap();
        assert!(out.contains("<source file='/b/g.qcow2'/>"), "{out}");
        assert!(out.contains("<source file='/b/g-seed.iso'/>"), "{out}");
        assert!(!out.contains("/a/"), "{out}");
        assert!(
            out.contains("<graphics type='vnc' port='6001' autoport='no' listen='10.0.0.2'>"),
            "{out}"
        );
        assert!(out.contains("address='10.0.0.2'"), "{out}");
        assert!(out.contains("<target dev='vda' bus='virtio'/>"), "{out}");
    }

    #[test]
    fn a_path_the_definition_lacks_or_no_console_is_refused() {
        let paths = vec![("/a/other.qcow2".to_string(), "/b/other.qcow2".to_string())];
        let e = retarget_xml(XML, &paths, 6001, "10.0.0.2").unwrap_err();
        assert!(e.to_string().contains("/a/other.qcow2"), "{e}");
        let no_vnc = XML.replace("type='vnc'", "type='spice'");
        assert!(retarget_xml(&no_vnc, &[], 6001, "x").is_err());
    }

    #[test]
    fn figures_give_percent_and_eta() {
        let f = JobFigures {
            data_processed: 75 << 20,
            data_remaining: 25 << 20,
            data_total: 100 << 20,
            mem_bps: 5 << 20,
            ..JobFigures::default()
        };
        let s = stats(&f);
        assert_eq!(s.percent, 75);
        assert_eq!(s.eta_secs, Some(5));
        assert_eq!(stats(&JobFigures::default()).eta_secs, None);
    }
}
