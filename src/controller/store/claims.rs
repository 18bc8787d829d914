//! What a node claims against what an administrator accepted.
//!
//! Each heartbeat carries the node's claims: CPUs, memory, storage, its over-commit
//! ratios and its disk-image directory. A node that lies (a compromised host, a bad
//! config) could attract new guests, and their secrets, by claiming more than it has, or
//! break template registration for everyone by claiming `/` as its disk-image directory.
//! So the controller accepts a node's claims once, at its first heartbeat after
//! enrollment, and from then on bounds every claim by what was accepted: more CPUs, memory,
//! storage or over-commit than accepted is held (shown on the node as `held`) until an
//! administrator accepts it (`POST /nodes/{id}/capacity`); less is believed at once (a
//! node that lost memory must not get more guests). The disk-image directory stays the
//! accepted one whatever the node says later, and one that would contain a template
//! directory (`/`, `/var`, …) is never accepted.

use serde::{Deserialize, Serialize};

use crate::model::NodeFacts;

/// The accepted part of a node's claims.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Accepted {
    pub cpus: u32,
    pub memory_mib: u64,
    pub storage_total_mib: u64,
    pub cpu_overcommit: Option<f64>,
    pub memory_overcommit: Option<f64>,
    /// Empty when the claimed one was refused.
    pub storage_dir: String,
}

/// What a claim asks beyond what was accepted (each field only when it does).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Held {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage_total_mib: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_overcommit: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_overcommit: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage_dir: Option<String>,
}

impl Held {
    pub fn is_empty(&self) -> bool {
        *self == Held::default()
    }
}

/// Whether `dir` may be a node's disk-image directory: absolute, and neither a template
/// directory nor one that contains one (a guest's disk is never a template, so template
/// registration refuses paths inside it).
pub fn storage_dir_ok(dir: &str, image_dirs: &[std::path::PathBuf]) -> bool {
    let d = std::path::Path::new(dir);
    d.is_absolute()
        && d.components().count() > 1
        && !dir.contains("/../")
        && !image_dirs.iter().any(|i| i.starts_with(d))
}

impl Accepted {
    /// What a node's first claims make accepted.
    pub fn first(f: &NodeFacts, image_dirs: &[std::path::PathBuf]) -> Accepted {
        Accepted {
            cpus: f.cpus,
            memory_mib: f.memory_mib,
            storage_total_mib: f.storage_total_mib,
            cpu_overcommit: f.cpu_overcommit,
            memory_overcommit: f.memory_overcommit,
            storage_dir: if storage_dir_ok(&f.storage_dir, image_dirs) {
                f.storage_dir.clone()
            } else {
                String::new()
            },
        }
    }

    /// The claims bounded by what was accepted, and what was held back.
    pub fn bound(&self, claim: &NodeFacts) -> (NodeFacts, Held) {
        let mut f = claim.clone();
        let mut held = Held::default();
        let cap_u64 = |claimed: u64, accepted: u64, slot: &mut Option<u64>| {
            if claimed > accepted {
                *slot = Some(claimed);
            }
            claimed.min(accepted)
        };
        if f.cpus > self.cpus {
            held.cpus = Some(f.cpus);
            f.cpus = self.cpus;
        }
        f.memory_mib = cap_u64(claim.memory_mib, self.memory_mib, &mut held.memory_mib);
        f.free_memory_mib = f.free_memory_mib.min(f.memory_mib);
        f.storage_total_mib = cap_u64(
            claim.storage_total_mib,
            self.storage_total_mib,
            &mut held.storage_total_mib,
        );
        f.storage_free_mib = f.storage_free_mib.min(f.storage_total_mib);
        let ratio = |claimed: Option<f64>, accepted: Option<f64>, slot: &mut Option<f64>| match (
            claimed, accepted,
        ) {
            (Some(c), Some(a)) if c > a => {
                *slot = Some(c);
                Some(a)
            }
            (Some(c), None) => {
                *slot = Some(c);
                None
            }
            (c, _) => c,
        };
        f.cpu_overcommit = ratio(
            claim.cpu_overcommit,
            self.cpu_overcommit,
            &mut held.cpu_overcommit,
        );
        f.memory_overcommit = ratio(
            claim.memory_overcommit,
            self.memory_overcommit,
            &mut held.memory_overcommit,
        );
        if claim.storage_dir != self.storage_dir {
            held.storage_dir = Some(claim.storage_dir.clone());
        }
        f.storage_dir = self.storage_dir.clone();
        (f, held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(cpus: u32, mem: u64, dir: &str) -> NodeFacts {
        NodeFacts {
            cpus,
            memory_mib: mem,
            free_memory_mib: mem,
            storage_total_mib: 1000,
            storage_free_mib: 1000,
            storage_dir: dir.into(),
            cpu_overcommit: Some(4.0),
            memory_overcommit: Some(1.0),
            ..Default::default()
        }
    }

    #[test]
    fn a_claim_beyond_what_was_accepted_is_held_and_less_is_believed() {
        let dirs = vec![std::path::PathBuf::from("/var/lib/corral/templates")];
        let a = Accepted::first(&facts(4, 8192, "/var/lib/corral/images"), &dirs);
        let mut lie = facts(512, 1 << 30, "/");
        lie.memory_overcommit = Some(100.0);
        let (f, held) = a.bound(&lie);
        assert_eq!((f.cpus, f.memory_mib, f.free_memory_mib), (4, 8192, 8192));
        assert_eq!(f.memory_overcommit, Some(1.0));
        assert_eq!(f.storage_dir, "/var/lib/corral/images");
        assert_eq!(held.cpus, Some(512));
        assert_eq!(held.storage_dir.as_deref(), Some("/"));
        assert_eq!(held.memory_overcommit, Some(100.0));
        let (f, held) = a.bound(&facts(2, 4096, "/var/lib/corral/images"));
        assert_eq!((f.cpus, f.memory_mib), (2, 4096));
        assert!(held.is_empty(), "{held:?}");
    }

    #[test]
    fn a_directory_holding_the_templates_is_never_a_disk_image_directory() {
        let dirs = vec![std::path::PathBuf::from("/var/lib/corral/templates")];
        for bad in [
            "/",
            "/var",
            "/var/lib/corral",
            "relative",
            "/var/lib/corral/templates",
        ] {
            assert!(!storage_dir_ok(bad, &dirs), "{bad}");
        }
        assert!(storage_dir_ok("/var/lib/corral/images", &dirs));
        assert_eq!(Accepted::first(&facts(1, 1, "/"), &dirs).storage_dir, "");
    }
}
