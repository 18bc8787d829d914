//! The catalog of operation kinds, declared in `jobs/*.toml` and compiled into the binary.
//!
//! A kind is an ordered list of saga steps. The catalog only says *what* the steps are;
//! `controller::saga::steps` says how each one runs and how it is undone.

use serde::Deserialize;

use crate::model::RunsOn;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KindDef {
    pub kind: String,
    pub description: String,
    pub steps: Vec<StepDef>,
}

impl KindDef {
    /// The lease of step `i`: its own when longer, else the controller's default.
    pub fn lease_ms(&self, i: usize, default_ms: i64) -> i64 {
        self.steps
            .get(i)
            .and_then(|s| s.lease_secs)
            .map(|s| (s as i64).saturating_mul(1000).max(default_ms))
            .unwrap_or(default_ms)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepDef {
    pub name: String,
    pub runs_on: RunsOn,
    pub stage: String,
    pub weight: u32,
    pub undo: bool,
    /// The step's own lease, for node steps that may rightly run longer than the
    /// controller's `step_lease_secs` (guest-agent runs wait for a booting guest).
    #[serde(default)]
    pub lease_secs: Option<u64>,
}

const SOURCES: &[&str] = &[
    include_str!("../jobs/guest.create.toml"),
    include_str!("../jobs/guest.delete.toml"),
    include_str!("../jobs/guest.start.toml"),
    include_str!("../jobs/guest.shutdown.toml"),
    include_str!("../jobs/guest.poweroff.toml"),
    include_str!("../jobs/guest.reboot.toml"),
    include_str!("../jobs/guest.reset.toml"),
    include_str!("../jobs/guest.suspend.toml"),
    include_str!("../jobs/guest.resume.toml"),
    include_str!("../jobs/guest.set_bandwidth.toml"),
    include_str!("../jobs/guest.boot_jobs.toml"),
    include_str!("../jobs/guest.change_ip.toml"),
    include_str!("../jobs/node.remove.toml"),
];

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("jobs catalog: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("jobs catalog: kind {0} declared twice")]
    Duplicate(String),
}

#[derive(Debug, Clone)]
pub struct Catalog {
    kinds: Vec<KindDef>,
}

impl Catalog {
    pub fn builtin() -> Result<Self, CatalogError> {
        let mut kinds: Vec<KindDef> = Vec::new();
        for src in SOURCES {
            let def: KindDef = toml::from_str(src)?;
            if kinds.iter().any(|k| k.kind == def.kind) {
                return Err(CatalogError::Duplicate(def.kind));
            }
            kinds.push(def);
        }
        Ok(Catalog { kinds })
    }

    pub fn get(&self, kind: &str) -> Option<&KindDef> {
        self.kinds.iter().find(|k| k.kind == kind)
    }

    pub fn kinds(&self) -> impl Iterator<Item = &KindDef> {
        self.kinds.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_catalog_parses_and_every_kind_has_steps() {
        let c = Catalog::builtin().unwrap();
        assert!(c.get("guest.create").is_some());
        for k in c.kinds() {
            assert!(!k.steps.is_empty(), "{} has no steps", k.kind);
            assert!(
                k.steps.iter().all(|s| s.weight > 0),
                "{}: zero weight",
                k.kind
            );
        }
    }
}
