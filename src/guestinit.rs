//! Init plans: what a guest must look like after its first boot, and how it gets there.
//!
//! The controller builds an [`InitPlan`] for each new guest (hostname, users with hashed
//! passwords and SSH keys, static network, files, commands). The node turns the plan into a
//! cloud-init NoCloud seed (`meta-data`, `user-data`, `network-config`, volume id `cidata`),
//! the format Proxmox, Incus and OpenNebula also use. Passwords never travel or rest in
//! plain text: the plan carries a SHA-512 crypt hash, which is what cloud-init's
//! `chpasswd` (type `hash`) and `/etc/shadow` take.

use std::path::Path;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::render::{RenderError, Renderer};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InitPlan {
    pub instance_id: String,
    pub hostname: String,
    pub users: Vec<InitUser>,
    pub network: Option<StaticNetwork>,
    pub write_files: Vec<InitFile>,
    pub runcmd: Vec<String>,
    /// How the plan reaches the guest. The seed is always built (it is harmless where
    /// nothing reads it); `agent` also replays the plan through the guest agent once it
    /// answers, for images without cloud-init.
    #[serde(default)]
    pub delivery: Delivery,
    /// Which of the guest's seeds hold its password hashes and SSH keys.
    #[serde(default)]
    pub seed_secrets: SeedSecrets,
}

/// Which seeds carry secrets (with `delivery: seed`; an agent delivers them otherwise and
/// no seed holds them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeedSecrets {
    /// Only the first seed: cloud-init sets users once per instance, so every rebuild
    /// after the first boot leaves them out.
    #[default]
    FirstBoot,
    /// Every seed: for images that keep no state and apply their seed at every boot
    /// (corral's test guest); their seed must keep the secrets or lose the password.
    Always,
}

impl InitPlan {
    /// The plan a seed is written from: with secrets only when cloud-init reads them from
    /// it (`delivery: seed`) and, after the first seed (`rebuild`), only when the profile
    /// asks for them at every boot.
    pub fn for_seed(&self, rebuild: bool) -> InitPlan {
        let keep = self.delivery == Delivery::Seed
            && (!rebuild || self.seed_secrets == SeedSecrets::Always);
        if keep {
            self.clone()
        } else {
            self.without_secrets()
        }
    }

    /// The plan with its users' password hashes and SSH keys left out.
    pub fn without_secrets(&self) -> InitPlan {
        let mut plan = self.clone();
        for u in &mut plan.users {
            u.password_hash = None;
            u.ssh_keys.clear();
        }
        plan
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    /// cloud-init (or cloudbase-init) reads the NoCloud seed at first boot.
    #[default]
    Seed,
    /// The guest agent applies the plan after the first boot.
    Agent,
}

/// One thing done inside a running guest through the QEMU guest agent (boot jobs, and
/// init plans delivered by agent). Commands run under `/bin/sh -c`, so agent actions need a
/// POSIX guest; Windows guests take their plan from the seed through cloudbase-init.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum AgentAction {
    WriteFile {
        path: String,
        content: String,
        #[serde(default = "default_mode")]
        mode: String,
        #[serde(default)]
        append: bool,
    },
    Exec {
        command: String,
    },
    /// `guest-set-user-password` with `crypted: true`: the hash goes in, never a password.
    SetPassword {
        user: String,
        password_hash: String,
    },
}

fn default_mode() -> String {
    "0644".into()
}

impl AgentAction {
    /// A short label for progress and results; never includes file contents or hashes.
    pub fn label(&self) -> String {
        match self {
            AgentAction::WriteFile { path, append, .. } => {
                format!("{} {path}", if *append { "append" } else { "write" })
            }
            AgentAction::Exec { command } => {
                let c: String = command.chars().take(60).collect();
                format!("exec {c}")
            }
            AgentAction::SetPassword { user, .. } => format!("set password of {user}"),
        }
    }

    /// Checks what an untrusted script produced; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            AgentAction::WriteFile { path, mode, .. } => {
                check_path(path)?;
                check_mode(mode)
            }
            AgentAction::Exec { command } if command.trim().is_empty() => {
                Err("exec: the command is empty".into())
            }
            AgentAction::Exec { .. } => Ok(()),
            AgentAction::SetPassword {
                user,
                password_hash,
            } => {
                check_user(user)?;
                check_hash(password_hash)
            }
        }
    }
}

pub fn check_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') || path.contains('\0') || path.split('/').any(|c| c == "..") {
        return Err(format!("file path {path:?} must be absolute, without '..'"));
    }
    Ok(())
}

pub fn check_mode(mode: &str) -> Result<(), String> {
    let ok = (3..=4).contains(&mode.len()) && mode.chars().all(|c| ('0'..='7').contains(&c));
    if ok {
        Ok(())
    } else {
        Err(format!("file mode {mode:?} must be octal, like \"0644\""))
    }
}

pub fn check_user(user: &str) -> Result<(), String> {
    // POSIX-portable names: a letter or '_' first, so never '.', '..' or an option.
    let ok = !user.is_empty()
        && user.len() <= 32
        && user.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!("user name {user:?} is not valid"))
    }
}

/// A password must arrive as a crypt hash: a script that returns a plain password would
/// put it in the seed and the job store.
pub fn check_hash(hash: &str) -> Result<(), String> {
    if hash.starts_with('$') && hash.len() > 20 && !hash.contains(char::is_whitespace) {
        Ok(())
    } else {
        Err("password_hash must be a crypt hash ($6$...), never a plain password".into())
    }
}

impl InitPlan {
    /// The plan as guest-agent actions, in cloud-init's order: hostname, passwords and
    /// keys, files, commands. Networking is whatever files and commands the profile wrote
    /// (ifupdown, netplan, ifcfg): only the profile knows the image.
    pub fn agent_actions(&self) -> Vec<AgentAction> {
        let mut out = vec![AgentAction::Exec {
            command: format!(
                "hostname {h} && echo {h} > /etc/hostname",
                h = crate::script::hostapi::shell_quote(&self.hostname)
            ),
        }];
        for u in &self.users {
            if let Some(h) = &u.password_hash {
                out.push(AgentAction::SetPassword {
                    user: u.name.clone(),
                    password_hash: h.clone(),
                });
            }
            if !u.ssh_keys.is_empty() {
                out.push(ssh_keys_action(&u.name, &u.ssh_keys));
            }
        }
        for f in &self.write_files {
            let content = base64::engine::general_purpose::STANDARD
                .decode(&f.content_b64)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            out.push(AgentAction::WriteFile {
                path: f.path.clone(),
                content,
                mode: f.permissions.clone(),
                append: f.append,
            });
        }
        out.extend(
            self.runcmd
                .iter()
                .map(|c| AgentAction::Exec { command: c.clone() }),
        );
        out
    }
}

/// Appends SSH keys to a user's `authorized_keys` (skipping keys already there).
pub fn ssh_keys_action(user: &str, keys: &[String]) -> AgentAction {
    use crate::script::hostapi::shell_quote;
    let home = if user == "root" {
        "/root".to_string()
    } else {
        format!("/home/{user}")
    };
    let mut cmd = format!(
        "mkdir -p {home}/.ssh && chmod 700 {home}/.ssh && touch {home}/.ssh/authorized_keys"
    );
    for k in keys {
        let q = shell_quote(k);
        cmd.push_str(&format!(
            " && (grep -qxF {q} {home}/.ssh/authorized_keys || printf '%s\\n' {q} >> {home}/.ssh/authorized_keys)"
        ));
    }
    cmd.push_str(&format!(" && chmod 600 {home}/.ssh/authorized_keys"));
    AgentAction::Exec { command: cmd }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InitUser {
    pub name: String,
    /// SHA-512 crypt (`$6$...`); never the password itself.
    pub password_hash: Option<String>,
    pub ssh_keys: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StaticNetwork {
    pub mac: String,
    /// Address with prefix length, e.g. `192.0.2.10/24`.
    pub address: String,
    pub gateway: Option<String>,
    pub dns: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InitFile {
    pub path: String,
    /// Content, base64-encoded so any bytes survive YAML.
    pub content_b64: String,
    /// Octal mode as cloud-init expects it, e.g. `0644`.
    pub permissions: String,
    /// Append to the file instead of replacing it.
    #[serde(default)]
    pub append: bool,
}

impl InitFile {
    pub fn text(path: &str, content: &str, permissions: &str) -> Self {
        InitFile {
            path: path.to_string(),
            content_b64: base64::engine::general_purpose::STANDARD.encode(content),
            permissions: permissions.to_string(),
            append: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("rendering the seed: {0}")]
    Render(#[from] RenderError),
    #[error("writing the seed: {0}")]
    Io(#[from] std::io::Error),
    #[error("building the seed image: {0}")]
    Iso(#[from] crate::iso::IsoError),
    #[error("hashing the password: {0}")]
    Hash(String),
}

/// SHA-512 crypt of a password for `/etc/shadow`.
pub fn crypt_password(password: &str) -> Result<String, InitError> {
    let params =
        sha_crypt::Sha512Params::new(5000).map_err(|e| InitError::Hash(format!("{e:?}")))?;
    sha_crypt::sha512_simple(password, &params).map_err(|e| InitError::Hash(format!("{e:?}")))
}

/// The three NoCloud documents of a plan.
pub struct SeedDocs {
    pub meta_data: String,
    pub user_data: String,
    pub network_config: Option<String>,
}

pub fn render_seed(renderer: &Renderer, plan: &InitPlan) -> Result<SeedDocs, InitError> {
    let ctx = minijinja::context! { plan => crate::render::val(plan) };
    let meta_data = renderer.render("meta-data", &ctx)?;
    let user_data = renderer.render("user-data", &ctx)?;
    let network_config = match &plan.network {
        Some(net) => Some(renderer.render(
            "network-config",
            minijinja::context! { net => crate::render::val(net) },
        )?),
        None => None,
    };
    Ok(SeedDocs {
        meta_data,
        user_data,
        network_config,
    })
}

/// Writes the seed ISO at `path` (atomically: a crash never leaves half an ISO under the
/// final name, so "exists" means "complete"). The image is built in-process
/// ([`crate::iso`]): no subprocess per guest.
pub async fn write_seed_iso(docs: &SeedDocs, path: &Path) -> Result<(), InitError> {
    let mut files: Vec<(&str, &[u8])> = vec![
        ("meta-data", docs.meta_data.as_bytes()),
        ("user-data", docs.user_data.as_bytes()),
    ];
    if let Some(net) = &docs.network_config {
        files.push(("network-config", net.as_bytes()));
    }
    let image = crate::iso::build("cidata", &files)?;
    let tmp = crate::node::staged(&path.to_string_lossy());
    // The seed holds password hashes and SSH keys: 0600, like every file corral keeps.
    let staged = std::path::PathBuf::from(&tmp);
    tokio::task::spawn_blocking(move || crate::modes::write_private(&staged, &image))
        .await
        .map_err(std::io::Error::other)??;
    tokio::fs::rename(&tmp, path).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> InitPlan {
        InitPlan {
            seed_secrets: SeedSecrets::FirstBoot,
            instance_id: "i-1".into(),
            hostname: "web-1".into(),
            users: vec![InitUser {
                name: "root".into(),
                password_hash: Some("$6$salt$hash".into()),
                ssh_keys: vec![],
            }],
            network: Some(StaticNetwork {
                mac: "52:54:00:00:00:01".into(),
                address: "192.0.2.10/24".into(),
                gateway: Some("192.0.2.1".into()),
                dns: vec!["192.0.2.1".into(), "192.0.2.2".into()],
            }),
            write_files: vec![InitFile::text("/etc/motd", "hi\n", "0644")],
            runcmd: vec!["echo \"done\" > /tmp/x".into()],
            delivery: Delivery::Seed,
        }
    }

    #[test]
    fn seed_documents_match_golden_files() {
        let r = Renderer::new(None).unwrap();
        let docs = render_seed(&r, &plan()).unwrap();
        crate::render::golden("meta-data", &docs.meta_data);
        crate::render::golden("user-data", &docs.user_data);
        crate::render::golden("network-config", &docs.network_config.unwrap());
    }

    #[test]
    fn crypt_password_is_sha512_and_verifies() {
        let h = crypt_password("s3cret").unwrap();
        assert!(h.starts_with("$6$"), "{h}");
        assert!(sha_crypt::sha512_check("s3cret", &h).is_ok());
        assert!(sha_crypt::sha512_check("wrong", &h).is_err());
    }

    #[test]
    fn only_a_seed_the_guest_reads_its_secrets_from_holds_them() {
        let hash = |p: &InitPlan| p.users[0].password_hash.clone();
        let mut p = plan();
        p.users[0].ssh_keys = vec!["ssh-ed25519 AAAA k".into()];
        // cloud-init's first seed has them; a rebuild after first boot does not.
        assert_eq!(hash(&p.for_seed(false)), Some("$6$salt$hash".into()));
        assert_eq!(hash(&p.for_seed(true)), None);
        assert!(p.for_seed(true).users[0].ssh_keys.is_empty());
        // A stateless image asks for them in every seed.
        p.seed_secrets = SeedSecrets::Always;
        assert_eq!(hash(&p.for_seed(true)), Some("$6$salt$hash".into()));
        // The agent delivers them: no seed holds them.
        p.delivery = Delivery::Agent;
        assert_eq!(hash(&p.for_seed(false)), None);
        assert_eq!(hash(&p.for_seed(true)), None);
    }
}
