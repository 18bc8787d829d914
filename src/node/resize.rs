//! Resizing a stopped guest: its definition gets the new `<vcpu>` and memory, the rest
//! (secrets included: the definition is read with them) kept as it was.

use super::actions::ActionError;
use super::hypervisor::{DomState, Hypervisor};
use crate::model::StepOutcome;

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

/// The definition with `cpus` vCPUs and `memory_mib` of memory.
pub fn resized(def: &str, cpus: u32, memory_mib: u32) -> Result<String, ActionError> {
    let def = replace_element(
        def,
        "vcpu",
        &format!("<vcpu placement='static'>{cpus}</vcpu>"),
    )?;
    let def = replace_element(
        &def,
        "memory",
        &format!("<memory unit='MiB'>{memory_mib}</memory>"),
    )?;
    replace_element(
        &def,
        "currentMemory",
        &format!("<currentMemory unit='MiB'>{memory_mib}</currentMemory>"),
    )
}

pub async fn resize(
    hv: &dyn Hypervisor,
    guest: &str,
    cpus: u32,
    memory_mib: u32,
) -> Result<StepOutcome, ActionError> {
    match hv.state(guest).await? {
        None => {
            return Err(ActionError::Permanent(format!(
                "domain {guest} is not defined here"
            )))
        }
        Some(DomState::Shutoff | DomState::Crashed) => {}
        Some(other) => {
            return Err(ActionError::Permanent(format!(
                "the guest is {}: shut it down to resize it",
                other.as_str()
            )))
        }
    }
    let def = hv.definition(guest).await?;
    hv.define(&resized(&def, cpus, memory_mib)?)
        .await
        .map_err(|e| ActionError::Permanent(format!("redefining the domain: {e}")))?;
    Ok(StepOutcome::Ok {
        guest_state: None,
        domain_xml: Some(hv.xml(guest).await?),
        output: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_sizes_change() {
        let def = "<domain><memoryBacking/><memory unit='KiB'>131072</memory>\n<currentMemory unit='KiB'>131072</currentMemory>\n<vcpu placement='static'>1</vcpu><devices><graphics passwd='x'/></devices></domain>";
        let r = resized(def, 2, 256).unwrap();
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
        assert!(resized("<domain/>", 1, 1).is_err());
    }
}
