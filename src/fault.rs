//! Fault injection for crash tests.
//!
//! `CORRAL_FAULT=<when>:<kind>:<step>` makes the process abort (like `kill -9`) at that
//! point. Controller points: `after` / `undone` (a controller step or its undo committed),
//! `unpushed` (a node step's dispatch was committed but its job not yet pushed),
//! `dispatched` / `undo_dispatched` (a node step was recorded and pushed), with the
//! operation kind, e.g. `after:guest.create:allocate`. Node points: `after:node:<action>`
//! (the action ran but its result was not reported yet), e.g. `after:node:create_disk`.
//! Unset in production; parsed once at start.

/// A parsed fault point.
#[derive(Debug, Clone)]
pub struct Fault {
    when: String,
    kind: String,
    step: String,
}

impl Fault {
    pub fn from_env() -> Option<Self> {
        let v = std::env::var("CORRAL_FAULT").ok()?;
        let mut parts = v.splitn(3, ':');
        Some(Fault {
            when: parts.next()?.to_string(),
            kind: parts.next()?.to_string(),
            step: parts.next()?.to_string(),
        })
    }

    pub fn check(&self, kind: &str, step: &str, when: &str) {
        if self.when == when && self.kind == kind && self.step == step {
            eprintln!("CORRAL_FAULT: aborting {when} {kind}/{step}");
            std::process::abort();
        }
    }
}
