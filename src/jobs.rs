//! The catalog of operation kinds, declared in `jobs/*.toml` and compiled into the binary.
//!
//! A kind is an ordered list of saga steps. The declaration says where each step runs, its
//! progress label, weight and lease; the kind's module in `controller::saga::kinds` owns
//! the step enum and how each step runs and is undone. Loading checks one against the
//! other: a step declared but not in the enum (a typo) or in the enum but not declared
//! fails the catalog, and so the controller's start and the unit tests.

use serde::Deserialize;

use crate::controller::saga::kinds::OpKind;
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
    /// A long node step a cancel need not wait for: the controller gives it up at once
    /// (its undo's leftovers go on the node's cleanup list) and tells the node, which
    /// stops it and removes what it wrote.
    #[serde(default)]
    pub interruptible: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("jobs catalog: {kind}: {source}")]
    Parse {
        kind: OpKind,
        #[source]
        source: toml::de::Error,
    },
    #[error("jobs catalog: jobs/{kind}.toml declares kind {declared}")]
    Misnamed { kind: OpKind, declared: String },
    #[error("jobs catalog: {kind} declares steps {declared:?}, its Rust module has {code:?}")]
    Steps {
        kind: OpKind,
        declared: Vec<String>,
        code: Vec<&'static str>,
    },
}

/// Parses `kind`'s declaration and checks it against the kind's step enum.
fn declared(kind: OpKind, src: &str) -> Result<KindDef, CatalogError> {
    let def: KindDef =
        toml::from_str(src).map_err(|source| CatalogError::Parse { kind, source })?;
    if def.kind != kind.as_str() {
        return Err(CatalogError::Misnamed {
            kind,
            declared: def.kind,
        });
    }
    let declared: Vec<String> = def.steps.iter().map(|s| s.name.clone()).collect();
    let code = kind.step_names();
    if declared != code {
        return Err(CatalogError::Steps {
            kind,
            declared,
            code,
        });
    }
    Ok(def)
}

/// Every kind's declaration, checked against its module; indexed by [`OpKind`].
#[derive(Debug, Clone)]
pub struct Catalog {
    kinds: Vec<(OpKind, KindDef)>,
}

impl Catalog {
    pub fn builtin() -> Result<Self, CatalogError> {
        let mut kinds = Vec::with_capacity(OpKind::ALL.len());
        for &kind in OpKind::ALL {
            kinds.push((kind, declared(kind, kind.declaration())?));
        }
        Ok(Catalog { kinds })
    }

    pub fn get(&self, kind: OpKind) -> &KindDef {
        // Every kind is loaded (builtin() fails otherwise), in OpKind::ALL order.
        &self.kinds[OpKind::ALL.iter().position(|k| *k == kind).unwrap_or(0)].1
    }

    pub fn kinds(&self) -> impl Iterator<Item = &KindDef> {
        self.kinds.iter().map(|(_, d)| d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_misspelled_or_missing_step_or_another_kinds_table_is_refused() {
        let src = OpKind::GuestCreate.declaration();
        let typo = src.replacen("name = \"build\"", "name = \"biuld\"", 1);
        assert!(matches!(
            declared(OpKind::GuestCreate, &typo),
            Err(CatalogError::Steps { .. })
        ));
        let start = src.find("[[steps]]\nname = \"allocate\"").unwrap();
        let end = start + src[start + 1..].find("[[steps]]").unwrap() + 1;
        let missing = format!("{}{}", &src[..start], &src[end..]);
        assert!(declared(OpKind::GuestCreate, &missing).is_err());
        let other = OpKind::GuestDelete.declaration();
        assert!(matches!(
            declared(OpKind::GuestCreate, other),
            Err(CatalogError::Misnamed { .. })
        ));
        assert!(declared(OpKind::GuestCreate, src).is_ok());
    }

    #[test]
    fn builtin_catalog_parses_and_every_kind_has_steps() {
        let c = Catalog::builtin().unwrap();
        assert_eq!(c.get(OpKind::GuestCreate).kind, "guest.create");
        assert_eq!(c.kinds().count(), OpKind::ALL.len());
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
