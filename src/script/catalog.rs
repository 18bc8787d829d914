//! The scripts corral knows: shipped ones (compiled into the binary from `scripts/`) and
//! users' (stored by the controller), compiled once and cached by content.
//!
//! Shipped scripts are compiled at start, so a broken one stops the controller before it
//! serves anything. A user's script is validated when it is saved: it must compile, define
//! its entry point, and (for a profile) produce a valid plan for a sample guest.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

use super::guest::{self, GuestFacts, TemplateFacts};
use super::sandbox::{Limits, Sandbox, Script, ScriptError};
use crate::guestinit::{AgentAction, InitPlan};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `scripts/os-init/*.rhai`: `fn plan(guest)`.
    Profile,
    /// `scripts/boot/*.rhai`: `fn actions(guest, params)`.
    Boot,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Profile => "os-init",
            Kind::Boot => "boot",
        }
    }
    fn entry(self) -> (&'static str, usize) {
        match self {
            Kind::Profile => ("plan", 1),
            Kind::Boot => ("actions", 2),
        }
    }
    fn shipped(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Kind::Profile => PROFILES,
            Kind::Boot => BOOT_JOBS,
        }
    }
}

pub const PROFILES: &[(&str, &str)] = &[
    (
        "cloud-init",
        include_str!("../../scripts/os-init/cloud-init.rhai"),
    ),
    (
        "debian-agent",
        include_str!("../../scripts/os-init/debian-agent.rhai"),
    ),
    (
        "rhel-agent",
        include_str!("../../scripts/os-init/rhel-agent.rhai"),
    ),
    (
        "windows",
        include_str!("../../scripts/os-init/windows.rhai"),
    ),
    (
        "test-guest",
        include_str!("../../scripts/os-init/test-guest.rhai"),
    ),
];

/// Shipped boot jobs are system jobs: corral queues them itself (password reset, hostname
/// and IP changes) and hides them from users' default listings (S21).
pub const BOOT_JOBS: &[(&str, &str)] = &[
    (
        "reset-password",
        include_str!("../../scripts/boot/reset-password.rhai"),
    ),
    (
        "set-hostname",
        include_str!("../../scripts/boot/set-hostname.rhai"),
    ),
    (
        "change-ip",
        include_str!("../../scripts/boot/change-ip.rhai"),
    ),
    (
        "inject-ssh-keys",
        include_str!("../../scripts/boot/inject-ssh-keys.rhai"),
    ),
];

/// The profile a template gets when none is named.
pub fn default_profile(os_type: &str) -> &'static str {
    if os_type == "windows" {
        "windows"
    } else {
        "cloud-init"
    }
}

/// The leading `//` comment of a script: its description.
pub fn description(source: &str) -> String {
    source
        .lines()
        .skip_while(|l| l.trim().is_empty())
        .take_while(|l| l.trim_start().starts_with("//"))
        .map(|l| l.trim_start().trim_start_matches('/').trim())
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn shipped(kind: Kind, name: &str) -> Option<&'static str> {
    kind.shipped()
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, s)| *s)
}

/// A script name: what a file name, a URL path segment and a log line all accept.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "name {name:?} must be 1 to 64 lowercase letters, digits, '-' or '_'"
        ))
    }
}

pub struct Scripts {
    sandbox: Sandbox,
    cache: Mutex<HashMap<(Kind, String), (u64, Script)>>,
}

impl Scripts {
    /// Compiles every shipped script; the first one that fails is the error.
    pub fn new(limits: Limits) -> Result<Self, ScriptError> {
        let s = Scripts {
            sandbox: Sandbox::new(limits),
            cache: Mutex::new(HashMap::new()),
        };
        for kind in [Kind::Profile, Kind::Boot] {
            for (name, source) in kind.shipped() {
                s.compiled(kind, name, source)?;
            }
        }
        Ok(s)
    }

    pub fn sandbox(&self) -> &Sandbox {
        &self.sandbox
    }

    /// The compiled script, from the cache when its source has not changed.
    pub fn compiled(&self, kind: Kind, name: &str, source: &str) -> Result<Script, ScriptError> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        source.hash(&mut h);
        let hash = h.finish();
        let key = (kind, name.to_string());
        if let Ok(cache) = self.cache.lock() {
            if let Some((h, s)) = cache.get(&key) {
                if *h == hash {
                    return Ok(s.clone());
                }
            }
        }
        let label = format!("{}/{name}", kind.as_str());
        let script = self.sandbox.compile(&label, source, &[kind.entry()])?;
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(key, (hash, script.clone()));
        }
        Ok(script)
    }

    /// Checks a script before it is saved: compiles; a profile must plan a sample guest, and
    /// a boot script's `secrets()`, if any, must name parameters.
    pub fn validate(&self, kind: Kind, name: &str, source: &str) -> Result<(), ScriptError> {
        let script = self.compiled(kind, name, source)?;
        match kind {
            Kind::Profile => {
                guest::eval_profile(&self.sandbox, &script, &sample_guest())?;
            }
            Kind::Boot => {
                guest::eval_secrets(&self.sandbox, &script)?;
            }
        }
        Ok(())
    }

    /// The parameters boot script `name` declares secret (its `fn secrets()`).
    pub fn secrets(&self, name: &str, source: &str) -> Result<Vec<String>, ScriptError> {
        let script = self.compiled(Kind::Boot, name, source)?;
        guest::eval_secrets(&self.sandbox, &script)
    }

    pub fn plan(
        &self,
        name: &str,
        source: &str,
        guest: &GuestFacts,
    ) -> Result<InitPlan, ScriptError> {
        let script = self.compiled(Kind::Profile, name, source)?;
        guest::eval_profile(&self.sandbox, &script, guest)
    }

    pub fn actions(
        &self,
        name: &str,
        source: &str,
        guest: &GuestFacts,
        params: &serde_json::Value,
    ) -> Result<Vec<AgentAction>, ScriptError> {
        let script = self.compiled(Kind::Boot, name, source)?;
        guest::eval_boot(&self.sandbox, &script, guest, params)
    }
}

/// The guest a profile is tried on before it is saved.
pub fn sample_guest() -> GuestFacts {
    GuestFacts {
        id: "00000000-0000-4000-8000-000000000000".into(),
        name: "sample".into(),
        hostname: "sample".into(),
        os_type: "linux".into(),
        profile: "sample".into(),
        ip: Some("198.51.100.10".into()),
        prefix: Some(24),
        netmask: Some("255.255.255.0".into()),
        address: Some("198.51.100.10/24".into()),
        gateway: Some("198.51.100.1".into()),
        dns: vec!["198.51.100.1".into()],
        mac: Some("52:54:00:00:00:01".into()),
        user: "root".into(),
        password_hash: Some("$6$rounds=5000$sample$0000000000000000000000".into()),
        ssh_keys: vec!["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA sample".into()],
        template: TemplateFacts {
            name: "sample".into(),
            path: "/var/lib/corral/templates/sample.qcow2".into(),
            os_type: "linux".into(),
        },
    }
}

/// Parameters for each shipped boot job on [`sample_guest`] (tests and the benchmark).
pub fn sample_params(job: &str) -> serde_json::Value {
    match job {
        "reset-password" => {
            serde_json::json!({"password_hash": "$6$rounds=5000$abc$0123456789abcdefghij"})
        }
        "set-hostname" => serde_json::json!({"hostname": "db-2"}),
        "change-ip" => serde_json::json!({"address": "198.51.100.11/24",
            "old_address": "198.51.100.10/24", "gateway": "198.51.100.1",
            "dns": ["198.51.100.1"], "mac": "52:54:00:00:00:01"}),
        _ => {
            serde_json::json!({"keys": ["ssh-ed25519 AAAA one", "ssh-rsa BBBB it's"], "user": "admin"})
        }
    }
}
