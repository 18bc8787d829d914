//! Running OS-init profiles and boot jobs: what a script receives and how its answer is
//! turned into typed, checked data.
//!
//! A profile defines `fn plan(guest)` and returns a map:
//!
//! ```text
//! #{ hostname: "web-1",
//!    users: [#{ name: "root", password_hash: guest.password_hash, ssh_keys: guest.ssh_keys }],
//!    network: #{ mac: guest.mac, address: guest.address, gateway: guest.gateway, dns: guest.dns },
//!    files: [#{ path: "/etc/motd", content: "hi\n", mode: "0644", append: false }],
//!    commands: ["systemctl restart ssh"],
//!    delivery: "seed" }          // or "agent" for images without cloud-init
//! ```
//!
//! A boot job defines `fn actions(guest, params)` and returns an array of actions built
//! with the host API (`write_file`, `append_file`, `exec`, `set_password`).
//!
//! Unknown keys are refused (a typo must not silently drop a file), paths must be absolute,
//! modes octal, and passwords crypt hashes.

use base64::Engine as _;
use rhai::Dynamic;
use serde::{Deserialize, Serialize};

use super::sandbox::{Sandbox, Script, ScriptError};
use crate::guestinit::{
    check_hash, check_mode, check_path, check_user, AgentAction, Delivery, InitFile, InitPlan,
    InitUser, SeedSecrets, StaticNetwork,
};

/// What a script knows about its guest. Absent values are `()` in Rhai.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GuestFacts {
    pub id: String,
    pub name: String,
    pub hostname: String,
    /// `linux` or `windows`.
    pub os_type: String,
    /// The OS-init profile the guest was created with.
    pub profile: String,
    pub ip: Option<String>,
    pub prefix: Option<i64>,
    pub netmask: Option<String>,
    /// `ip/prefix`.
    pub address: Option<String>,
    pub gateway: Option<String>,
    pub dns: Vec<String>,
    pub mac: Option<String>,
    /// The account the password and keys are for: `root`, or `Administrator` on Windows.
    pub user: String,
    /// SHA-512 crypt hash of the initial password, when one was given.
    pub password_hash: Option<String>,
    pub ssh_keys: Vec<String>,
    pub template: TemplateFacts,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TemplateFacts {
    pub name: String,
    pub path: String,
    pub os_type: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanOut {
    hostname: String,
    #[serde(default)]
    users: Vec<UserOut>,
    #[serde(default)]
    network: Option<NetOut>,
    #[serde(default)]
    files: Vec<FileOut>,
    #[serde(default)]
    commands: Vec<String>,
    #[serde(default)]
    delivery: Option<String>,
    #[serde(default)]
    seed_secrets: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserOut {
    name: String,
    #[serde(default)]
    password_hash: Option<String>,
    #[serde(default)]
    ssh_keys: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NetOut {
    mac: String,
    address: String,
    #[serde(default)]
    gateway: Option<String>,
    #[serde(default)]
    dns: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileOut {
    path: String,
    content: String,
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    append: bool,
}

fn facts(guest: &GuestFacts) -> Result<Dynamic, ScriptError> {
    rhai::serde::to_dynamic(guest).map_err(|e| ScriptError::shape("(input)", e.to_string()))
}

/// Runs a profile's `plan(guest)` and checks the plan it returns.
pub fn eval_profile(
    sb: &Sandbox,
    script: &Script,
    guest: &GuestFacts,
) -> Result<InitPlan, ScriptError> {
    let out = sb.call(script, "plan", (facts(guest)?,))?;
    let bad = |m: String| ScriptError::shape(&script.name, m);
    let p: PlanOut = rhai::serde::from_dynamic(&out)
        .map_err(|e| bad(format!("plan() must return a plan map: {e}")))?;
    check_hostname(&p.hostname).map_err(bad)?;
    let mut users = Vec::new();
    for u in p.users {
        check_user(&u.name).map_err(bad)?;
        if let Some(h) = &u.password_hash {
            check_hash(h).map_err(|m| bad(format!("user {}: {m}", u.name)))?;
        }
        users.push(InitUser {
            name: u.name,
            password_hash: u.password_hash,
            ssh_keys: u.ssh_keys,
        });
    }
    let mut write_files = Vec::new();
    for f in p.files {
        let mode = f.mode.unwrap_or_else(|| "0644".into());
        check_path(&f.path).map_err(bad)?;
        check_mode(&mode).map_err(bad)?;
        write_files.push(InitFile {
            path: f.path,
            content_b64: base64::engine::general_purpose::STANDARD.encode(&f.content),
            permissions: mode,
            append: f.append,
        });
    }
    let delivery = match p.delivery.as_deref() {
        None | Some("seed") => Delivery::Seed,
        Some("agent") => Delivery::Agent,
        Some(other) => {
            return Err(bad(format!(
                "delivery {other:?} must be \"seed\" or \"agent\""
            )))
        }
    };
    let seed_secrets = match p.seed_secrets.as_deref() {
        None | Some("first_boot") => SeedSecrets::FirstBoot,
        Some("always") => SeedSecrets::Always,
        Some(other) => {
            return Err(bad(format!(
                "seed_secrets {other:?} must be \"first_boot\" or \"always\""
            )))
        }
    };
    Ok(InitPlan {
        seed_secrets,
        instance_id: guest.id.clone(),
        hostname: p.hostname,
        users,
        network: p.network.map(|n| StaticNetwork {
            mac: n.mac,
            address: n.address,
            gateway: n.gateway,
            dns: n.dns,
        }),
        write_files,
        runcmd: p.commands,
        delivery,
    })
}

/// Runs a boot job's `actions(guest, params)` and checks each action.
pub fn eval_boot(
    sb: &Sandbox,
    script: &Script,
    guest: &GuestFacts,
    params: &serde_json::Value,
) -> Result<Vec<AgentAction>, ScriptError> {
    let params = rhai::serde::to_dynamic(params)
        .map_err(|e| ScriptError::shape(&script.name, format!("params: {e}")))?;
    let out = sb.call(script, "actions", (facts(guest)?, params))?;
    let bad = |m: String| ScriptError::shape(&script.name, m);
    let actions: Vec<AgentAction> = rhai::serde::from_dynamic(&out).map_err(|e| {
        bad(format!(
            "actions() must return an array of actions (write_file, exec, set_password): {e}"
        ))
    })?;
    for (i, a) in actions.iter().enumerate() {
        a.validate()
            .map_err(|m| bad(format!("action {}: {m}", i + 1)))?;
    }
    Ok(actions)
}

/// The most parameters a boot script may declare secret, and the longest name.
const MAX_SECRETS: usize = 64;
const MAX_SECRET_NAME: usize = 64;

/// The parameters a boot script declares secret: what its optional `fn secrets()` returns,
/// an array of parameter names (none without the function). corral seals those
/// parameters' values in its database, shows them as `"***"`, and deletes them once the
/// job has ended (see `controller::api::bootjobs`): the script's author says what is
/// secret, instead of corral guessing from names.
pub fn eval_secrets(sb: &Sandbox, script: &Script) -> Result<Vec<String>, ScriptError> {
    let declared = script
        .ast
        .iter_functions()
        .any(|f| f.name == "secrets" && f.params.is_empty());
    if !declared {
        return Ok(Vec::new());
    }
    let out = sb.call(script, "secrets", ())?;
    let bad = |m: String| ScriptError::shape(&script.name, m);
    let names: Vec<String> = rhai::serde::from_dynamic(&out).map_err(|e| {
        bad(format!(
            "secrets() must return an array of parameter names: {e}"
        ))
    })?;
    if names.len() > MAX_SECRETS {
        return Err(bad(format!(
            "secrets() names {} parameters; at most {MAX_SECRETS}",
            names.len()
        )));
    }
    if let Some(n) = names
        .iter()
        .find(|n| n.is_empty() || n.len() > MAX_SECRET_NAME)
    {
        return Err(bad(format!(
            "secrets(): parameter name {n:?} must be 1 to {MAX_SECRET_NAME} bytes"
        )));
    }
    Ok(names)
}

/// RFC 1123 host name: labels of letters, digits and hyphens, 1..=63 each, 253 in all.
pub fn check_hostname(h: &str) -> Result<(), String> {
    let ok = !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "hostname {h:?} must be letters, digits and hyphens (labels of at most 63, separated by dots)"
        ))
    }
}
