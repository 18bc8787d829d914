//! [`NodeAction::CopyOut`] on the source node: a stopped guest is copied to another
//! node's hypervisor, with its bytes copied as progress.
//!
//! 1. **Where is it?** The domain must be shut off here, and not running on the target
//!    (a re-run after a crash finds the target's copy shut off and makes it again).
//! 2. **Files.** Each file (system disk, data disks, seed) is uploaded whole through the
//!    target's libvirt (`virStorageVolUpload` into the directory pool that holds the
//!    target's disk-image directory, a transient one when it has none), so a qcow2 file
//!    arrives with its internal snapshots. Nothing but libvirt's own connection is
//!    needed between the nodes, the one live migration already uses. With shared storage
//!    nothing is copied.
//! 3. **Definition and snapshots.** The definition (secrets included: its VNC password)
//!    is defined on the target with the paths and the VNC port changed, then each
//!    snapshot's metadata is redefined there, parents first, the current one marked.
//!
//! The system disk still names this node's template image as its backing file; the
//! migration's next step, on the target, points it at the target's copy
//! (`actions::rebase`). A cancel stops the upload between chunks; the migration's undo
//! removes what reached the target.

use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use virt::connect::Connect;
use virt::domain::Domain;
use virt::storage_pool::StoragePool;
use virt::storage_vol::StorageVol;
use virt::stream::Stream;
use virt::sys;

use super::actions::{self, ActionError};
use super::hypervisor::{DomState, HvError};
use super::{interrupted, progress, NodeCtx};
use crate::model::{CopyReport, MigrationTarget, NodeJob, StepOutcome};

/// How much of a file is read and sent at once.
const CHUNK: usize = 4 << 20;
/// How often at most the copy's progress is reported.
const REPORT_EVERY: Duration = Duration::from_millis(500);

/// A copy as the hypervisor runs it.
#[derive(Debug, Clone, PartialEq)]
pub struct CopyPlan {
    /// The target's libvirt URI.
    pub uri: String,
    /// Each file's path here and on the target.
    pub paths: Vec<(String, String)>,
    pub vnc_port: u16,
    pub vnc_listen: String,
    /// Upload the files; false: the storage is shared.
    pub copy_files: bool,
}

/// Hears the bytes sent so far and the total.
pub type Sent = Box<dyn Fn(u64, u64) + Send>;

/// What the copy step was given.
pub struct Copy<'a> {
    pub guest_id: &'a str,
    pub to: &'a MigrationTarget,
    pub paths: &'a [(String, String)],
    pub vnc_port: u16,
}

/// Runs the copy step (see the module doc).
pub async fn run(ctx: &NodeCtx, job: &NodeJob, c: Copy<'_>) -> Result<StepOutcome, ActionError> {
    for p in c.paths {
        actions::inside(&ctx.settings.storage_dir, &p.0)?;
    }
    let hv = ctx.hv.clone();
    let here = hv.state(c.guest_id).await?;
    let there = hv.state_at(&c.to.libvirt_uri, c.guest_id).await?;
    match (here, there) {
        (Some(DomState::Shutoff), None | Some(DomState::Shutoff)) => {}
        (here, there) => {
            return Err(ActionError::Permanent(format!(
                "cannot copy a guest that is {} here and {} on node {}",
                here.map_or("not defined", DomState::as_str),
                there.map_or("not defined", DomState::as_str),
                c.to.node_id
            )))
        }
    }
    let plan = CopyPlan {
        uri: c.to.libvirt_uri.clone(),
        paths: c.paths.to_vec(),
        vnc_port: c.vnc_port,
        vnc_listen: c.to.vnc_listen.clone(),
        copy_files: !c.to.shared_storage,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(u64, u64)>();
    let sent: Sent = Box::new(move |done, total| {
        let _ = tx.send((done, total));
    });
    let (g, halt) = (c.guest_id.to_string(), stop.clone());
    let started = Instant::now();
    let copy = tokio::spawn(async move { hv.copy_out(&g, plan, sent, halt).await });
    tokio::pin!(copy);
    let mut refence = tokio::time::interval(Duration::from_secs(1));
    let mut reported = Instant::now();
    let done = loop {
        tokio::select! {
            r = &mut copy => break r.map_err(HvError::Join)?,
            _ = refence.tick() => {
                if interrupted(ctx, job, &[]).await.is_some() {
                    stop.store(true, Ordering::Relaxed);
                }
            }
            Some((done, total)) = rx.recv() => {
                if reported.elapsed() >= REPORT_EVERY {
                    reported = Instant::now();
                    let pct = (done * 100).checked_div(total).unwrap_or(0) as u32;
                    let stage = format!("copying the disks: {pct}% ({} of {} MiB)", done >> 20, total >> 20);
                    progress(ctx, job, (pct.min(99), 100), stage).await;
                }
            }
        }
    };
    if stop.load(Ordering::Relaxed) {
        return Err(ActionError::Permanent(
            "interrupted by a cancel; the guest stays on its node".into(),
        ));
    }
    let (bytes, snapshots) = done.map_err(|e| ActionError::Failed {
        what: "copying the guest".into(),
        permanent: !e.is_transient(),
        source: Box::new(e),
    })?;
    let report = CopyReport {
        bytes,
        snapshots,
        elapsed_ms: started.elapsed().as_millis() as u64,
    };
    StepOutcome::reported(Some("shutoff".into()), None, &report)
        .map_err(|e| ActionError::failed("encoding the report", e))
}

/// The libvirt side, on the blocking pool: (bytes sent, snapshots defined).
pub fn libvirt_copy_out(
    d: &Domain,
    plan: &CopyPlan,
    sent: &Sent,
    stop: &AtomicBool,
) -> Result<(u64, u32), HvError> {
    let xml = d.xml_desc(sys::VIR_DOMAIN_XML_SECURE | sys::VIR_DOMAIN_XML_INACTIVE)?;
    let xml = super::migrate::retarget_xml(&xml, &plan.paths, plan.vnc_port, &plan.vnc_listen)?;
    let snapshots = snapshots_of(d, plan)?;
    let dconn = Connect::open(Some(&plan.uri))?;
    let r = copy_to(&dconn, d, plan, sent, stop).and_then(|bytes| {
        let there = dconn.define_domain_xml(&xml)?;
        for (s, current) in &snapshots {
            let mut flags = sys::VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE;
            if *current {
                flags |= sys::VIR_DOMAIN_SNAPSHOT_CREATE_CURRENT;
            }
            there.create_snapshot_xml(s, flags)?;
        }
        Ok((bytes, snapshots.len() as u32))
    });
    drop(dconn);
    r
}

/// Each snapshot's definition for the target (paths and console moved), parents first,
/// and whether it is the current one.
fn snapshots_of(d: &Domain, plan: &CopyPlan) -> Result<Vec<(String, bool)>, HvError> {
    let mut out = Vec::new();
    for s in d.list_all_snapshots(sys::VIR_DOMAIN_SNAPSHOT_LIST_TOPOLOGICAL)? {
        let mut xml = s.xml_desc(sys::VIR_DOMAIN_SNAPSHOT_XML_SECURE)?;
        // A snapshot's definition is the domain's as it was: a disk attached since is
        // absent from it, so each path is moved where it appears.
        for (from, to) in &plan.paths {
            xml = xml.replace(&format!("file='{from}'"), &format!("file='{to}'"));
        }
        out.push((xml, s.is_current(0)?));
    }
    Ok(out)
}

/// Uploads every file; the bytes sent.
fn copy_to(
    dconn: &Connect,
    d: &Domain,
    plan: &CopyPlan,
    sent: &Sent,
    stop: &AtomicBool,
) -> Result<u64, HvError> {
    if !plan.copy_files {
        return Ok(0);
    }
    // The domain is shut off and corral holds it: no one writes its files meanwhile.
    let _ = d;
    let mut total = 0;
    for (from, _) in &plan.paths {
        total += std::fs::metadata(from).map_err(io("reading", from))?.len();
    }
    let mut done = 0;
    for (from, to) in &plan.paths {
        done = upload(dconn, from, to, (done, total), sent, stop)?;
    }
    Ok(done)
}

/// Uploads `from` as `to` on the target; the bytes sent so far, this file's included.
fn upload(
    dconn: &Connect,
    from: &str,
    to: &str,
    (mut done, total): (u64, u64),
    sent: &Sent,
    stop: &AtomicBool,
) -> Result<u64, HvError> {
    let (dir, name) = split(to)?;
    let pool = pool_at(dconn, dir)?;
    pool.refresh(0)?;
    if let Ok(old) = pool.lookup_storage_vol_by_name(name) {
        old.delete(0)?; // an earlier attempt's: its target copy never ran
    }
    let mut file = std::fs::File::open(from).map_err(io("opening", from))?;
    let len = file.metadata().map_err(io("reading", from))?.len();
    let xml = format!(
        "<volume><name>{}</name><capacity unit='bytes'>{len}</capacity>\
         <allocation unit='bytes'>0</allocation><target><format type='raw'/>\
         <permissions><mode>0600</mode></permissions></target></volume>",
        xml_escape(name)
    );
    let vol = StorageVol::create_xml(&pool, &xml, 0)?;
    let stream = Stream::new(dconn, 0)?;
    vol.upload(&stream, 0, len, 0)?;
    let mut buf = vec![0u8; CHUNK];
    loop {
        if stop.load(Ordering::Relaxed) {
            let _ = stream.abort();
            let _ = vol.delete(0);
            return Err(HvError::Stopped);
        }
        let n = file.read(&mut buf).map_err(io("reading", from))?;
        if n == 0 {
            break;
        }
        let mut at = 0;
        while at < n {
            // A blocking stream takes at least a byte or fails; anything else would
            // leave a hole in the copy.
            let k = usize::try_from(stream.send(&buf[at..n])?)
                .ok()
                .filter(|k| *k > 0)
                .ok_or(HvError::Stalled)?;
            at += k.min(n - at);
        }
        done += n as u64;
        sent(done, total);
    }
    stream.finish()?;
    Ok(done)
}

/// The target's pool over directory `dir`: the one it has, or a transient one.
fn pool_at(dconn: &Connect, dir: &str) -> Result<StoragePool, HvError> {
    if let Ok(p) = dconn.lookup_storage_pool_by_target_path(dir) {
        if p.is_active().unwrap_or(false) {
            return Ok(p);
        }
    }
    let name = format!("corral-{:016x}", fnv(dir));
    if let Ok(p) = dconn.lookup_storage_pool_by_name(&name) {
        if p.is_active().unwrap_or(false) {
            return Ok(p);
        }
    }
    let xml = format!(
        "<pool type='dir'><name>{name}</name><target><path>{}</path></target></pool>",
        xml_escape(dir)
    );
    Ok(dconn.create_storage_pool_xml(&xml, 0)?)
}

/// A stable short name for a directory (the transient pool's).
fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}

fn split(path: &str) -> Result<(&str, &str), HvError> {
    path.rsplit_once('/')
        .filter(|(d, n)| !d.is_empty() && !n.is_empty())
        .ok_or_else(|| HvError::Refused(format!("{path} is not a file in a directory")))
}

fn io<'a>(what: &'static str, path: &'a str) -> impl Fn(std::io::Error) -> HvError + 'a {
    move |source| HvError::Io {
        what,
        path: path.to_string(),
        source,
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&apos;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_path_splits_into_its_pool_directory_and_volume() {
        assert_eq!(split("/b/img/g.qcow2").unwrap(), ("/b/img", "g.qcow2"));
        assert!(split("g.qcow2").is_err());
        assert!(split("/b/").is_err());
        assert_eq!(fnv("/b/img"), fnv("/b/img"));
        assert_ne!(fnv("/b/img"), fnv("/c/img"));
    }
}
