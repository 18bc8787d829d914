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
}

impl InitFile {
    pub fn text(path: &str, content: &str, permissions: &str) -> Self {
        InitFile {
            path: path.to_string(),
            content_b64: base64::engine::general_purpose::STANDARD.encode(content),
            permissions: permissions.to_string(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("rendering the seed: {0}")]
    Render(#[from] RenderError),
    #[error("writing the seed: {0}")]
    Io(#[from] std::io::Error),
    #[error("genisoimage failed: {0}")]
    Iso(String),
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
/// final name, so "exists" means "complete").
pub async fn write_seed_iso(docs: &SeedDocs, path: &Path) -> Result<(), InitError> {
    let work = tempfile_dir(path)?;
    let mut files = vec![
        (work.join("meta-data"), docs.meta_data.as_str()),
        (work.join("user-data"), docs.user_data.as_str()),
    ];
    if let Some(net) = &docs.network_config {
        files.push((work.join("network-config"), net.as_str()));
    }
    for (p, content) in &files {
        tokio::fs::write(p, content).await?;
    }
    let tmp = path.with_extension("iso.tmp");
    let out = tokio::process::Command::new("genisoimage")
        .arg("-quiet")
        .arg("-output")
        .arg(&tmp)
        .args(["-volid", "cidata", "-joliet", "-rock"])
        .args(files.iter().map(|(p, _)| p.as_os_str()))
        .output()
        .await;
    let _ = tokio::fs::remove_dir_all(&work).await;
    let out = out?;
    if !out.status.success() {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(InitError::Iso(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    tokio::fs::rename(&tmp, path).await?;
    Ok(())
}

fn tempfile_dir(near: &Path) -> Result<std::path::PathBuf, std::io::Error> {
    let parent = near.parent().unwrap_or(Path::new("."));
    let dir = parent.join(format!(".seed-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> InitPlan {
        InitPlan {
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
}
