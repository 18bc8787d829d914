//! The catalog of operation kinds, built from the kinds' own modules.
//!
//! A kind is an ordered list of saga steps. Each kind's module in
//! `controller::saga::kinds` declares its steps once, in its step enum: each variant's
//! [`StepDef`] says where the step runs, whether it has an undo, its progress label, its
//! weight in the percent, and optionally its lease and whether a cancel may interrupt it.
//! The enum's order is the saga's order; the names are the ones stored in operation rows.
//! Nothing is declared twice, so nothing can disagree: [`Catalog::builtin`] only checks
//! what a compiler cannot (unique names, weights above zero). `corral kinds` prints the
//! catalog.

use crate::controller::saga::kinds::OpKind;
use crate::model::RunsOn;

/// One operation kind as the engine sees it.
#[derive(Debug, Clone, Copy)]
pub struct KindDef {
    /// The stored name (`guest.create`).
    pub kind: &'static str,
    pub description: &'static str,
    pub steps: &'static [StepDef],
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

/// One saga step, declared beside its code with the `const` builders below:
/// `StepDef::node("build", "building the guest").undoable().weight(12)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepDef {
    /// The stored name (append-only: rows in the field carry it).
    pub name: &'static str,
    pub runs_on: RunsOn,
    /// The progress label while it runs.
    pub stage: &'static str,
    /// Its share of the operation's percent.
    pub weight: u32,
    /// Whether it has an undo that an unwind must run.
    pub undo: bool,
    /// The step's own lease, for node steps that may rightly run longer than the
    /// controller's `step_lease_secs` (guest-agent runs wait for a booting guest).
    pub lease_secs: Option<u64>,
    /// A long node step a cancel need not wait for: the controller gives it up at once
    /// (its undo's leftovers go on the node's cleanup list) and tells the node, which
    /// stops it and removes what it wrote.
    pub interruptible: bool,
    /// The point of no return: once it is done the operation only goes forward (a
    /// migrated guest runs on its new node). A cancel after it has no effect, a failure
    /// after it does not unwind past it, and a cancel while it runs is passed to the node
    /// (with `interruptible`) but its result is awaited: it decides which way the
    /// operation goes.
    pub pivot: bool,
}

impl StepDef {
    const fn new(name: &'static str, runs_on: RunsOn, stage: &'static str) -> StepDef {
        StepDef {
            name,
            runs_on,
            stage,
            weight: 1,
            undo: false,
            lease_secs: None,
            interruptible: false,
            pivot: false,
        }
    }
    /// A step done in the controller's transaction.
    pub const fn controller(name: &'static str, stage: &'static str) -> StepDef {
        StepDef::new(name, RunsOn::Controller, stage)
    }
    /// A step dispatched to a node.
    pub const fn node(name: &'static str, stage: &'static str) -> StepDef {
        StepDef::new(name, RunsOn::Node, stage)
    }
    /// The step has an undo.
    pub const fn undoable(self) -> StepDef {
        StepDef { undo: true, ..self }
    }
    pub const fn weight(self, weight: u32) -> StepDef {
        StepDef { weight, ..self }
    }
    pub const fn lease_secs(self, secs: u64) -> StepDef {
        StepDef {
            lease_secs: Some(secs),
            ..self
        }
    }
    pub const fn interruptible(self) -> StepDef {
        StepDef {
            interruptible: true,
            ..self
        }
    }
    pub const fn pivot(self) -> StepDef {
        StepDef {
            pivot: true,
            ..self
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("operation kind {kind} has no steps")]
    NoSteps { kind: OpKind },
    #[error("operation kind {kind} names step {step} twice")]
    Twice { kind: OpKind, step: &'static str },
    #[error("step {step} of {kind} weighs nothing: its progress would never move")]
    Weightless { kind: OpKind, step: &'static str },
    #[error("kind name {0} is used twice")]
    KindTwice(&'static str),
}

/// What a compiler cannot check of one kind's table.
fn check(kind: OpKind, def: &KindDef) -> Result<(), CatalogError> {
    if def.steps.is_empty() {
        return Err(CatalogError::NoSteps { kind });
    }
    for (i, s) in def.steps.iter().enumerate() {
        if def.steps[..i].iter().any(|o| o.name == s.name) {
            return Err(CatalogError::Twice { kind, step: s.name });
        }
        if s.weight == 0 {
            return Err(CatalogError::Weightless { kind, step: s.name });
        }
    }
    Ok(())
}

/// Every kind's table, checked; indexed by [`OpKind`].
#[derive(Debug, Clone)]
pub struct Catalog {
    kinds: Vec<(OpKind, KindDef)>,
}

impl Catalog {
    pub fn builtin() -> Result<Self, CatalogError> {
        let mut kinds: Vec<(OpKind, KindDef)> = Vec::with_capacity(OpKind::ALL.len());
        for &kind in OpKind::ALL {
            let def = kind.def();
            check(kind, &def)?;
            if kinds.iter().any(|(_, d)| d.kind == def.kind) {
                return Err(CatalogError::KindTwice(def.kind));
            }
            kinds.push((kind, def));
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

    /// The kinds at a glance (`corral kinds`): each kind, then its steps in order with
    /// where they run, whether they undo, their weight, lease and stage.
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        for k in self.kinds() {
            let _ = writeln!(out, "{}  {}", k.kind, k.description);
            for (i, s) in k.steps.iter().enumerate() {
                let runs_on = match s.runs_on {
                    RunsOn::Controller => "controller",
                    RunsOn::Node => "node",
                };
                let mut flags = Vec::new();
                if s.undo {
                    flags.push("undo".to_string());
                }
                if s.interruptible {
                    flags.push("interruptible".to_string());
                }
                if s.pivot {
                    flags.push("pivot".to_string());
                }
                if let Some(l) = s.lease_secs {
                    flags.push(format!("lease {l}s"));
                }
                let _ = writeln!(
                    out,
                    "  {:>2}. {:<18} {:<10} w{:<3} {:<33} {}",
                    i + 1,
                    s.name,
                    runs_on,
                    s.weight,
                    flags.join(", "),
                    s.stage
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_or_weightless_step_or_an_empty_kind_is_refused() {
        const TWICE: &[StepDef] = &[StepDef::node("a", "x"), StepDef::controller("a", "y")];
        const LIGHT: &[StepDef] = &[StepDef::node("a", "x").weight(0)];
        let def = |steps| KindDef {
            kind: "test.kind",
            description: "",
            steps,
        };
        let k = OpKind::GuestCreate;
        assert!(matches!(
            check(k, &def(TWICE)),
            Err(CatalogError::Twice { step: "a", .. })
        ));
        assert!(matches!(
            check(k, &def(LIGHT)),
            Err(CatalogError::Weightless { .. })
        ));
        assert!(matches!(
            check(k, &def(&[])),
            Err(CatalogError::NoSteps { .. })
        ));
    }

    #[test]
    fn builtin_catalog_loads_every_kind() {
        let c = Catalog::builtin().unwrap();
        assert_eq!(c.get(OpKind::GuestCreate).kind, "guest.create");
        assert_eq!(c.kinds().count(), OpKind::ALL.len());
        let build = &c.get(OpKind::GuestCreate).steps[2];
        assert_eq!(
            (build.name, build.runs_on, build.undo, build.weight),
            ("build", RunsOn::Node, true, 12)
        );
    }
}
