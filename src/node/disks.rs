//! Data disk actions on a node: create a volume, attach it to a guest, detach it, grow it.
//!
//! Every action looks before it acts, because a job may run twice:
//! * attaching to a running guest hot-plugs the disk and adds it to the definition
//!   (libvirt `AFFECT_LIVE | AFFECT_CONFIG`); to a stopped guest it redefines the domain
//!   from its definition with the disk added. Either is skipped when the disk is there.
//! * detaching from a running guest asks the guest to release the device and waits until
//!   it did (up to [`RELEASE_WAIT`]); a guest that does not is a transient failure the
//!   saga retries. A stopped guest is redefined without the disk.
//! * growing a disk of a running guest goes through QEMU (`virDomainBlockResize`), so
//!   the guest sees the new size at once; otherwise `qemu-img resize` grows the file.
//!   Neither ever shrinks.
//!
//! The disk's I/O limits are rendered into its `<iotune>`, so they live in the
//! definition and survive restarts. Changing them on a running guest goes through QEMU
//! (see `iotune`) and the definition at once.

use std::path::Path;
use std::time::{Duration, Instant};

use tokio::process::Command;

use super::actions::ActionError;
use super::hypervisor::{DomState, Hypervisor};
use crate::model::{IoTune, StepOutcome};

/// How long a running guest gets to release a detached disk.
pub const RELEASE_WAIT: Duration = Duration::from_secs(20);

/// A device name corral hands out: `vd` and one or two letters.
fn valid_target(t: &str) -> bool {
    t.len() >= 3
        && t.len() <= 4
        && t.starts_with("vd")
        && t[2..].chars().all(|c| c.is_ascii_lowercase())
}

/// The `<disk>` element of a data disk.
pub fn disk_xml(path: &str, target: &str, limits: Option<&IoTune>) -> Result<String, ActionError> {
    if !valid_target(target) {
        return Err(ActionError::Permanent(format!(
            "{target:?} is not a device name corral uses"
        )));
    }
    if path.contains(['\'', '"', '<', '>', '&']) {
        return Err(ActionError::Permanent(format!(
            "{path:?} has characters a disk path may not have"
        )));
    }
    let mut tune = String::new();
    if let Some(l) = limits {
        if let Some(n) = l.total_iops_sec {
            tune.push_str(&format!("<total_iops_sec>{n}</total_iops_sec>"));
        }
        if let Some(n) = l.total_bytes_sec {
            tune.push_str(&format!("<total_bytes_sec>{n}</total_bytes_sec>"));
        }
    }
    if !tune.is_empty() {
        tune = format!("<iotune>{tune}</iotune>");
    }
    Ok(format!(
        "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>\
         <source file='{path}'/><target dev='{target}' bus='virtio'/>{tune}</disk>"
    ))
}

fn has_disk(xml: &str, path: &str) -> bool {
    xml.contains(&format!("file='{path}'"))
}

/// `def` with `device` added at the end of its devices.
fn with_device(def: &str, device: &str) -> Result<String, ActionError> {
    let at = def
        .rfind("</devices>")
        .ok_or_else(|| ActionError::Permanent("the definition has no <devices>".into()))?;
    Ok(format!("{}{device}\n  {}", &def[..at], &def[at..]))
}

/// `def` without the `<disk>` element whose source is `path`.
fn without_disk(def: &str, path: &str) -> Option<String> {
    let src = def.find(&format!("file='{path}'"))?;
    let start = def[..src].rfind("<disk ")?;
    let end = src + def[src..].find("</disk>")? + "</disk>".len();
    let rest = def[end..].trim_start_matches([' ', '\n']);
    Some(format!("{}{}", def[..start].trim_end_matches(' '), rest))
}

fn done(xml: String) -> StepOutcome {
    StepOutcome::Ok {
        guest_state: None,
        domain_xml: Some(xml),
        output: None,
    }
}

pub async fn create_volume(path: &str, size_mib: u64) -> Result<StepOutcome, ActionError> {
    if !Path::new(path).exists() {
        // Made under a temporary name: "exists" means "complete".
        let tmp = super::staged(path);
        let out = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", &tmp, &format!("{size_mib}M")])
            .output()
            .await
            .map_err(|e| ActionError::retry("running qemu-img", e))?;
        if !out.status.success() {
            let _ = std::fs::remove_file(&tmp);
            return Err(ActionError::Permanent(format!(
                "qemu-img create: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        // qemu-img creates it 0644: a guest's data is its owner's alone.
        crate::modes::make_private(Path::new(&tmp))
            .map_err(|e| ActionError::retry("making the disk private", e))?;
        std::fs::rename(&tmp, path)
            .map_err(|e| ActionError::retry("moving the disk in place", e))?;
    }
    Ok(StepOutcome::Ok {
        guest_state: None,
        domain_xml: None,
        output: None,
    })
}

pub async fn attach(
    hv: &dyn Hypervisor,
    guest: &str,
    path: &str,
    target: &str,
    limits: Option<&IoTune>,
) -> Result<StepOutcome, ActionError> {
    let device = disk_xml(path, target, limits)?;
    let state = hv
        .state(guest)
        .await?
        .ok_or_else(|| ActionError::Permanent(format!("domain {guest} is not defined here")))?;
    if state == DomState::Running {
        if !has_disk(&hv.xml(guest).await?, path) {
            hv.attach_live(guest, &device)
                .await
                .map_err(|e| ActionError::failed("hot-plugging the disk", e))?;
        }
    } else {
        let def = hv.definition(guest).await?;
        if !has_disk(&def, path) {
            hv.define(&with_device(&def, &device)?)
                .await
                .map_err(|e| ActionError::failed("adding the disk", e))?;
        }
    }
    Ok(done(hv.xml(guest).await?))
}

pub async fn detach(
    hv: &dyn Hypervisor,
    guest: &str,
    path: &str,
    target: &str,
) -> Result<StepOutcome, ActionError> {
    let Some(state) = hv.state(guest).await? else {
        // No domain, no device: nothing holds the disk.
        return Ok(StepOutcome::Ok {
            guest_state: None,
            domain_xml: None,
            output: None,
        });
    };
    if state == DomState::Running {
        if has_disk(&hv.xml(guest).await?, path) {
            let device = disk_xml(path, target, None)?;
            hv.detach_live(guest, &device)
                .await
                .map_err(|e| ActionError::retry("unplugging the disk", e))?;
            let asked = Instant::now();
            while has_disk(&hv.xml(guest).await?, path) {
                if asked.elapsed() > RELEASE_WAIT {
                    return Err(ActionError::Transient(format!(
                        "the guest has not released {target} within {} s",
                        RELEASE_WAIT.as_secs()
                    )));
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
        // The live detach updated the definition too; a retry may find only that left.
        let def = hv.definition(guest).await?;
        if let Some(without) = without_disk(&def, path) {
            hv.define(&without).await?;
        }
    } else {
        let def = hv.definition(guest).await?;
        if let Some(without) = without_disk(&def, path) {
            hv.define(&without)
                .await
                .map_err(|e| ActionError::failed("removing the disk", e))?;
        }
    }
    Ok(done(hv.xml(guest).await?))
}

/// Sets the I/O limits of an attached disk: through QEMU and in the definition when the
/// guest runs (`virDomainSetBlockIoTune`), by redefining the domain with the disk's
/// element re-rendered otherwise. Setting the same limits again changes nothing.
pub async fn set_limits(
    hv: &dyn Hypervisor,
    guest: &str,
    path: &str,
    target: &str,
    limits: Option<&IoTune>,
) -> Result<StepOutcome, ActionError> {
    if !valid_target(target) {
        return Err(ActionError::Permanent(format!(
            "{target:?} is not a device name corral uses"
        )));
    }
    let state = hv
        .state(guest)
        .await?
        .ok_or_else(|| ActionError::Permanent(format!("domain {guest} is not defined here")))?;
    let def = hv.definition(guest).await?;
    let Some(without) = without_disk(&def, path) else {
        return Err(ActionError::Permanent(format!(
            "the guest's definition has no disk {path}"
        )));
    };
    if state == DomState::Running {
        hv.set_disk_limits_live(guest, target, limits)
            .await
            .map_err(|e| ActionError::failed("setting the disk's limits", e))?;
    } else {
        let device = disk_xml(path, target, limits)?;
        hv.define(&with_device(&without, &device)?)
            .await
            .map_err(|e| ActionError::failed("redefining the disk", e))?;
    }
    Ok(done(hv.xml(guest).await?))
}

/// The disk file's virtual size, bytes.
async fn virtual_size(path: &str) -> Result<u64, ActionError> {
    let out = Command::new("qemu-img")
        .args(["info", "--output=json", "-U", path])
        .output()
        .await
        .map_err(|e| ActionError::retry("running qemu-img", e))?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|_| {
        ActionError::Permanent(format!(
            "qemu-img info {path}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    })?;
    v["virtual-size"]
        .as_u64()
        .ok_or_else(|| ActionError::Permanent(format!("qemu-img info {path}: no virtual-size")))
}

pub async fn grow(
    hv: &dyn Hypervisor,
    path: &str,
    size_mib: u64,
    attached: Option<&(String, String)>,
) -> Result<StepOutcome, ActionError> {
    let bytes = size_mib * 1024 * 1024;
    if let Some((guest, target)) = attached {
        if hv.state(guest).await? == Some(DomState::Running) {
            hv.block_resize(guest, target, bytes)
                .await
                .map_err(|e| ActionError::failed("growing the disk live", e))?;
            return Ok(done(hv.xml(guest).await?));
        }
    }
    if virtual_size(path).await? < bytes {
        let out = Command::new("qemu-img")
            .args(["resize", "-q", path, &format!("{size_mib}M")])
            .output()
            .await
            .map_err(|e| ActionError::retry("running qemu-img", e))?;
        if !out.status.success() {
            return Err(ActionError::Permanent(format!(
                "qemu-img resize: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
    }
    Ok(StepOutcome::Ok {
        guest_state: None,
        domain_xml: None,
        output: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_disk_goes_into_and_out_of_a_definition_with_its_limits() {
        let def = "<domain>\n  <devices>\n    <disk type='file' device='disk'><source file='/i/sys'/></disk>\n  </devices>\n</domain>";
        let limits = IoTune {
            total_iops_sec: Some(500),
            total_bytes_sec: None,
        };
        let dev = disk_xml("/i/data-1.qcow2", "vdc", Some(&limits)).unwrap();
        assert!(dev.contains("<iotune><total_iops_sec>500</total_iops_sec></iotune>"));
        let with = with_device(def, &dev).unwrap();
        assert!(has_disk(&with, "/i/data-1.qcow2") && has_disk(&with, "/i/sys"));
        let back = without_disk(&with, "/i/data-1.qcow2").unwrap();
        assert!(!has_disk(&back, "/i/data-1.qcow2") && has_disk(&back, "/i/sys"));
        assert!(back.contains("</devices>"), "{back}");
        assert_eq!(without_disk(&back, "/i/data-1.qcow2"), None);
    }

    #[test]
    fn odd_targets_and_paths_never_reach_the_xml() {
        assert!(disk_xml("/i/a", "sda", None).is_err());
        assert!(disk_xml("/i/a", "vd1", None).is_err());
        assert!(disk_xml("/i/a'/><x", "vdc", None).is_err());
        assert!(disk_xml("/i/a", "vdab", None).is_ok());
    }
}
