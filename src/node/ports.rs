//! Reserving the VNC port range with `net.ipv4.ip_local_reserved_ports` (S69), so no
//! outgoing connection is ever given a port a guest's VNC server will need.
//!
//! The sysctl holds a comma-separated list of ports and ranges that others (Kubernetes,
//! databases) may have set too: corral merges its range in and never drops theirs.

const SYSCTL: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";

/// Returns the new value, or None when `min..=max` is already covered.
pub fn merge(current: &str, min: u16, max: u16) -> Option<String> {
    let mut covered = vec![false; usize::from(max - min) + 1];
    for item in current
        .trim()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let (a, b) = match item.split_once('-') {
            Some((a, b)) => (a.trim().parse::<u32>(), b.trim().parse::<u32>()),
            None => (item.parse::<u32>(), item.parse::<u32>()),
        };
        let (Ok(a), Ok(b)) = (a, b) else { continue };
        for p in a.max(u32::from(min))..=b.min(u32::from(max)) {
            covered[(p - u32::from(min)) as usize] = true;
        }
    }
    if covered.iter().all(|c| *c) {
        return None;
    }
    let mine = if min == max {
        min.to_string()
    } else {
        format!("{min}-{max}")
    };
    Some(if current.trim().is_empty() {
        mine
    } else {
        format!("{},{mine}", current.trim())
    })
}

/// Reserves the range; returns a status line for the node's worker list.
pub fn reserve(min: u16, max: u16) -> String {
    let current = match std::fs::read_to_string(SYSCTL) {
        Ok(c) => c,
        Err(e) => return format!("not reserved: reading {SYSCTL}: {e}"),
    };
    match merge(&current, min, max) {
        None => format!("reserved {min}-{max}"),
        Some(value) => match std::fs::write(SYSCTL, &value) {
            Ok(()) => format!("reserved {min}-{max}"),
            Err(e) => {
                tracing::warn!("cannot reserve VNC ports {min}-{max} in {SYSCTL}: {e}; other programs may take them");
                format!("not reserved: {e}")
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::merge;

    #[test]
    fn merging_keeps_what_others_reserved() {
        assert_eq!(merge("", 5900, 5999).as_deref(), Some("5900-5999"));
        assert_eq!(
            merge("8080,9000-9100\n", 5900, 5999).as_deref(),
            Some("8080,9000-9100,5900-5999")
        );
        assert_eq!(merge("5800-6000", 5900, 5999), None, "already covered");
        assert_eq!(
            merge("5900-5950,5951-5999", 5900, 5999),
            None,
            "covered in pieces"
        );
        assert_eq!(
            merge("5900-5950", 5900, 5999).as_deref(),
            Some("5900-5950,5900-5999")
        );
        assert_eq!(merge("junk,5900", 5900, 5900), None);
    }
}
