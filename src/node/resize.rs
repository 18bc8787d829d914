//! Resizing a guest (S75).
//!
//! - Shut off: its definition gets the new `<vcpu>` and memory, maxima included, the rest
//!   (secrets too: the definition is read with them) kept as it was.
//! - Running: it moves within the maxima its definition has, live and in the definition
//!   at once; hot-plugged vCPUs are onlined through the guest agent, since a guest
//!   without udev rules leaves them offline. The maxima change only while it is off.

use std::time::Duration;

use super::actions::ActionError;
use super::agent;
use super::hypervisor::{DomState, HvError, Hypervisor};
use crate::model::{GuestSize, ResizeReport, StepOutcome};

/// `def` with element `tag` (its attributes and content) replaced by `with`.
fn replace_element(def: &str, tag: &str, with: &str) -> Result<String, ActionError> {
    let open = format!("<{tag}");
    let start = def
        .match_indices(&open)
        .map(|(i, _)| i)
        .find(|i| def[i + open.len()..].starts_with([' ', '>']))
        .ok_or_else(|| ActionError::Permanent(format!("the definition has no <{tag}>")))?;
    let close = format!("</{tag}>");
    let end = start
        + def[start..].find(&close).ok_or_else(|| {
            ActionError::Permanent(format!("the definition's <{tag}> is not closed"))
        })?
        + close.len();
    Ok(format!("{}{with}{}", &def[..start], &def[end..]))
}

/// The definition with `size`: its maxima as `<vcpu>` and `<memory>`, the current
/// vCPUs (`current=`) and memory (`<currentMemory>`) within them.
pub fn resized(def: &str, size: GuestSize) -> Result<String, ActionError> {
    let size = size.normalized();
    let vcpu = if size.max_cpus > size.cpus {
        format!(
            "<vcpu placement='static' current='{}'>{}</vcpu>",
            size.cpus, size.max_cpus
        )
    } else {
        format!("<vcpu placement='static'>{}</vcpu>", size.cpus)
    };
    let def = replace_element(def, "vcpu", &vcpu)?;
    let def = replace_element(
        &def,
        "memory",
        &format!("<memory unit='MiB'>{}</memory>", size.max_memory_mib),
    )?;
    replace_element(
        &def,
        "currentMemory",
        &format!(
            "<currentMemory unit='MiB'>{}</currentMemory>",
            size.memory_mib
        ),
    )
}

/// The text of element `tag` and its `unit` attribute, if any.
fn element_text<'a>(def: &'a str, tag: &str) -> Option<(&'a str, Option<&'a str>)> {
    let open = format!("<{tag}");
    let start = def
        .match_indices(&open)
        .map(|(i, _)| i + open.len())
        .find(|i| def[*i..].starts_with([' ', '>']))?;
    let head_end = start + def[start..].find('>')?;
    let head = &def[start..head_end];
    let text_end = head_end + def[head_end..].find('<')?;
    let unit = head.find("unit=").and_then(|i| {
        let rest = &head[i + 6..];
        rest.find(['\'', '"']).map(|j| &rest[..j])
    });
    Some((def[head_end + 1..text_end].trim(), unit))
}

/// The maxima a definition allows live: its `<vcpu>` count and `<memory>` in MiB.
pub fn maxima(def: &str) -> Result<(u32, u32), ActionError> {
    let bad = |what: &str| ActionError::Permanent(format!("the definition's {what} is unreadable"));
    let (cpus, _) = element_text(def, "vcpu").ok_or_else(|| bad("<vcpu>"))?;
    let cpus: u32 = cpus.parse().map_err(|_| bad("<vcpu>"))?;
    let (mem, unit) = element_text(def, "memory").ok_or_else(|| bad("<memory>"))?;
    let mem: u64 = mem.parse().map_err(|_| bad("<memory>"))?;
    let mib = match unit.unwrap_or("KiB") {
        "KiB" | "k" | "K" => mem / 1024,
        "MiB" | "M" => mem,
        "GiB" | "G" => mem * 1024,
        other => return Err(bad(&format!("<memory> unit {other:?}"))),
    };
    Ok((cpus, mib as u32))
}

/// The vCPUs a running domain has plugged: `<vcpu current='N'>`, else its `<vcpu>`.
fn live_vcpus(xml: &str) -> Option<u32> {
    let at = xml.find("<vcpu")?;
    let head = &xml[at..at + xml[at..].find('>')?];
    match head.find("current='") {
        Some(i) => head[i + 9..].split('\'').next()?.parse().ok(),
        None => element_text(xml, "vcpu")?.0.parse().ok(),
    }
}

/// How long a live resize waits for the guest to see hot-plugged vCPUs.
const ONLINE_WAIT: Duration = Duration::from_secs(20);

pub async fn resize(
    hv: &dyn Hypervisor,
    guest: &str,
    size: GuestSize,
) -> Result<StepOutcome, ActionError> {
    let output = match hv.state(guest).await? {
        None => {
            return Err(ActionError::Permanent(format!(
                "domain {guest} is not defined here"
            )))
        }
        Some(DomState::Shutoff | DomState::Crashed) => {
            let def = hv.definition(guest).await?;
            hv.define(&resized(&def, size)?)
                .await
                .map_err(|e| ActionError::failed("redefining the domain", e))?;
            ResizeReport {
                live: false,
                vcpus_online: None,
            }
        }
        Some(DomState::Running) => live(hv, guest, size).await?,
        Some(other) => {
            return Err(ActionError::Permanent(format!(
                "the guest is {}: resume it or shut it down to resize it",
                other.as_str()
            )))
        }
    };
    StepOutcome::reported(None, Some(hv.xml(guest).await?), &output)
        .map_err(|e| ActionError::failed("encoding the report", e))
}

/// A running guest moves within the maxima of its definition: vCPUs are plugged (and
/// onlined through the agent) or unplugged, the balloon gives or takes memory. The
/// definition follows, so the size survives a restart.
async fn live(
    hv: &dyn Hypervisor,
    guest: &str,
    size: GuestSize,
) -> Result<ResizeReport, ActionError> {
    let (max_cpus, max_mib) = maxima(&hv.definition(guest).await?)?;
    if size.cpus > max_cpus || size.memory_mib > max_mib {
        return Err(ActionError::Permanent(format!(
            "the running guest can grow to {max_cpus} vCPUs and {max_mib} MiB, not to {} vCPUs \
             and {} MiB: shut it down to go beyond its maximum",
            size.cpus, size.memory_mib
        )));
    }
    let failed = |what: &'static str, e: HvError| ActionError::failed(what, e);
    let live = hv.xml(guest).await?;
    if live_vcpus(&live) != Some(size.cpus) {
        if live.contains("<domain type='qemu'") {
            return Err(ActionError::Permanent(format!(
                "this node {}",
                crate::model::TCG_VCPUS
            )));
        }
        hv.set_vcpus_live(guest, size.cpus)
            .await
            .map_err(|e| failed("changing the vCPUs live", e))?;
    }
    hv.set_memory_live(guest, size.memory_mib)
        .await
        .map_err(|e| failed("setting the balloon", e))?;
    let online = agent::online_vcpus(hv, guest, size.cpus, ONLINE_WAIT).await;
    Ok(ResizeReport {
        live: true,
        vcpus_online: online,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size(cpus: u32, memory_mib: u32, max_cpus: u32, max_memory_mib: u32) -> GuestSize {
        GuestSize {
            cpus,
            memory_mib,
            max_cpus,
            max_memory_mib,
        }
    }

    #[test]
    fn only_the_sizes_change() {
        let def = "<domain><memoryBacking/><memory unit='KiB'>131072</memory>\n<currentMemory unit='KiB'>131072</currentMemory>\n<vcpu placement='static'>1</vcpu><devices><graphics passwd='x'/></devices></domain>";
        let r = resized(def, size(2, 256, 0, 0)).unwrap();
        assert!(r.contains("<vcpu placement='static'>2</vcpu>"), "{r}");
        assert!(r.contains("<memory unit='MiB'>256</memory>"), "{r}");
        assert!(
            r.contains("<currentMemory unit='MiB'>256</currentMemory>"),
            "{r}"
        );
        assert!(
            r.contains("<memoryBacking/>") && r.contains("passwd='x'"),
            "{r}"
        );
        assert!(resized("<domain/>", size(1, 1, 0, 0)).is_err());
        assert_eq!(maxima(&r).unwrap(), (2, 256));
        assert_eq!(maxima(def).unwrap(), (1, 128));
    }

    #[test]
    fn maxima_are_kept_apart_from_the_current_size() {
        let def = "<domain><memory unit='KiB'>131072</memory><currentMemory unit='KiB'>131072</currentMemory><vcpu placement='static'>1</vcpu></domain>";
        let r = resized(def, size(1, 128, 4, 512)).unwrap();
        assert!(
            r.contains("<vcpu placement='static' current='1'>4</vcpu>"),
            "{r}"
        );
        assert!(r.contains("<memory unit='MiB'>512</memory>"), "{r}");
        assert!(
            r.contains("<currentMemory unit='MiB'>128</currentMemory>"),
            "{r}"
        );
        assert_eq!(maxima(&r).unwrap(), (4, 512));
        assert!(maxima("<domain><vcpu>x</vcpu></domain>").is_err());
        assert_eq!(live_vcpus(&r), Some(1));
        assert_eq!(live_vcpus(def), Some(1));
        assert_eq!(live_vcpus("<domain/>"), None);
    }
}
