//! `corral template …` and `corral pool …`.

use clap::Subcommand;
use corral_client::apis::resources_api;
use corral_client::models::{AddressState, CreatePool, CreateTemplate, OsType, UpdateTemplate};

use super::output::{age, cell, emit, emit_record, mib, opt, Table};
use super::{CliError, Client};

#[derive(Debug, Subcommand)]
pub enum TemplateCmd {
    /// Register a qcow2 or raw image as a template.
    Add {
        name: String,
        path: String,
        /// linux or windows.
        #[arg(long, default_value = "linux")]
        os: String,
        /// Memory a guest of this template needs at least, MiB.
        #[arg(long)]
        min_memory: Option<u32>,
    },
    /// Upload a local qcow2 or raw image as a new template (streamed; its SHA-256 is
    /// computed here and checked by the controller).
    Upload {
        name: String,
        file: std::path::PathBuf,
        #[arg(long, default_value = "linux")]
        os: String,
        #[arg(long)]
        min_memory: Option<u32>,
    },
    /// Download a template's image to a local file.
    Download {
        template: String,
        file: std::path::PathBuf,
    },
    List,
    Show {
        template: String,
    },
    #[command(alias = "remove")]
    Delete {
        template: String,
    },
    /// Set the OS-init profile new guests of the template get (`default` to reset).
    SetProfile {
        template: String,
        profile: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum PoolCmd {
    /// Create an IP pool: a network and its first range of allocatable addresses.
    Add {
        name: String,
        #[arg(long)]
        cidr: String,
        #[arg(long)]
        start: String,
        #[arg(long)]
        end: String,
        #[arg(long)]
        gateway: Option<String>,
        #[arg(long)]
        dns: Vec<String>,
        /// Bridge guests of this pool attach to (default: the node's).
        #[arg(long)]
        bridge: Option<String>,
    },
    List,
    Show {
        pool: String,
    },
    /// A pool's addresses and who holds them.
    Addresses {
        pool: String,
        /// free, allocated, reserved or disabled.
        #[arg(long)]
        state: Option<String>,
    },
    #[command(alias = "remove")]
    Delete {
        pool: String,
    },
}

impl Client {
    pub async fn template(&self, cmd: TemplateCmd) -> Result<bool, CliError> {
        let c = self.config();
        match cmd {
            TemplateCmd::Upload {
                name,
                file,
                os,
                min_memory,
            } => self.template_upload(&name, &file, &os, min_memory).await?,
            TemplateCmd::Download { template, file } => {
                self.template_download(&template, &file).await?
            }
            TemplateCmd::Add {
                name,
                path,
                os,
                min_memory,
            } => {
                let os = os_type(&os)?;
                let mut t = CreateTemplate::new(name, os, path);
                t.min_memory_mib = min_memory;
                emit_record(self.out, &resources_api::template_create(c, t).await?);
            }
            TemplateCmd::List => self.template_list().await?,
            TemplateCmd::Show { template } => {
                emit_record(self.out, &resources_api::template_get(c, &template).await?);
            }
            TemplateCmd::Delete { template } => {
                resources_api::template_delete(c, &template).await?;
                eprintln!("template {template} deleted");
            }
            TemplateCmd::SetProfile { template, profile } => {
                let mut u = UpdateTemplate::new();
                u.os_init_profile = Some((profile != "default").then_some(profile));
                emit_record(
                    self.out,
                    &resources_api::template_update(c, &template, u).await?,
                );
            }
        }
        Ok(true)
    }

    /// `template upload`: streams `file` as template `name`, with its SHA-256 for the
    /// controller to check.
    async fn template_upload(
        &self,
        name: &str,
        file: &std::path::Path,
        os: &str,
        min_memory: Option<u32>,
    ) -> Result<(), CliError> {
        let c = self.config();
        let os = os_type(os)?;
        let sha = sha256_of(file)?;
        // Sent here rather than through the generated client, which streams the
        // file without the `Content-Type` the endpoint requires.
        let f = tokio::fs::File::open(file)
            .await
            .map_err(|e| CliError::Usage(format!("{}: {e}", file.display())))?;
        let os = serde_json::to_value(os)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let mut query = vec![("os_type", os), ("sha256", sha)];
        if let Some(m) = min_memory {
            query.push(("min_memory_mib", m.to_string()));
        }
        let mut req = c
            .client
            .put(format!("{}/templates/{name}/image", c.base_path))
            .query(&query)
            .header("content-type", "application/octet-stream")
            .body(file_body(f));
        if let Some(t) = &c.bearer_access_token {
            req = req.bearer_auth(t);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| CliError::Usage(format!("uploading: {e}")))?;
        let status = resp.status();
        let v: serde_json::Value = resp.json().await.unwrap_or_default();
        if !status.is_success() {
            return Err(CliError::Usage(format!(
                "upload refused ({status}): {}",
                v["message"].as_str().unwrap_or("")
            )));
        }
        emit_record(self.out, &v);
        Ok(())
    }

    /// `template download`: `template`'s image into `file`, chunk by chunk.
    async fn template_download(
        &self,
        template: &str,
        file: &std::path::Path,
    ) -> Result<(), CliError> {
        let mut resp = resources_api::template_download(self.config(), template).await?;
        let mut out = std::fs::File::create(file)
            .map_err(|e| CliError::Usage(format!("{}: {e}", file.display())))?;
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| CliError::Usage(format!("downloading: {e}")))?
        {
            std::io::Write::write_all(&mut out, &chunk)
                .map_err(|e| CliError::Usage(format!("{}: {e}", file.display())))?;
        }
        Ok(())
    }

    /// `template list`.
    async fn template_list(&self) -> Result<(), CliError> {
        let list = resources_api::template_list(self.config()).await?;
        emit(self.out, &list, || {
            let mut t = Table::new(&[
                "name",
                "os",
                "profile",
                "min memory",
                "size",
                "sha256",
                "path",
                "age",
            ]);
            for x in &list {
                t.row(vec![
                    x.name.clone(),
                    x.os_type.clone(),
                    x.os_init_profile.clone(),
                    mib(u64::from(x.min_memory_mib)),
                    x.size_bytes.map(|b| mib(b >> 20)).unwrap_or_default(),
                    x.sha256
                        .as_deref()
                        .map(|h| h.chars().take(12).collect())
                        .unwrap_or_default(),
                    x.path.clone(),
                    age(&x.created_at),
                ]);
            }
            t
        });
        Ok(())
    }

    pub async fn pool(&self, cmd: PoolCmd) -> Result<bool, CliError> {
        let c = self.config();
        match cmd {
            PoolCmd::Add {
                name,
                cidr,
                start,
                end,
                gateway,
                dns,
                bridge,
            } => {
                let mut p = CreatePool::new(cidr, name, end, start);
                p.gateway = gateway;
                p.dns = (!dns.is_empty()).then_some(dns);
                p.bridge = bridge;
                emit_record(self.out, &resources_api::pool_create(c, p).await?);
            }
            PoolCmd::List => {
                let list = resources_api::pool_list(c).await?;
                emit(self.out, &list, || {
                    let mut t =
                        Table::new(&["name", "cidr", "gateway", "bridge", "used", "free", "size"]);
                    for p in &list {
                        t.row(vec![
                            p.name.clone(),
                            p.cidr.clone(),
                            opt(&p.gateway),
                            p.bridge.clone(),
                            p.used.to_string(),
                            p.free.to_string(),
                            p.size.to_string(),
                        ]);
                    }
                    t
                });
            }
            PoolCmd::Show { pool } => {
                emit_record(self.out, &resources_api::pool_get(c, &pool).await?);
            }
            PoolCmd::Addresses { pool, state } => {
                let state = state
                    .map(|s| {
                        serde_json::from_value::<AddressState>(serde_json::Value::String(s.clone()))
                            .map_err(|_| {
                                CliError::Usage(format!(
                                    "--state {s:?}: use free, allocated, reserved or disabled"
                                ))
                            })
                    })
                    .transpose()?;
                let list = resources_api::pool_addresses(c, &pool, state, Some(4096), None).await?;
                emit(self.out, &list, || {
                    let mut t = Table::new(&["ip", "state", "guest", "note"]);
                    for a in &list {
                        t.row(vec![
                            a.ip.clone(),
                            cell(&serde_json::to_value(a.state).unwrap_or_default()),
                            opt(&a.guest_id),
                            opt(&a.note),
                        ]);
                    }
                    t
                });
            }
            PoolCmd::Delete { pool } => {
                resources_api::pool_delete(c, &pool).await?;
                eprintln!("pool {pool} deleted");
            }
        }
        Ok(true)
    }
}

fn os_type(os: &str) -> Result<OsType, CliError> {
    match os {
        "linux" => Ok(OsType::Linux),
        "windows" => Ok(OsType::Windows),
        _ => Err(CliError::Usage(format!(
            "--os {os:?}: use linux or windows"
        ))),
    }
}

/// The SHA-256 of a local file, hex.
fn sha256_of(path: &std::path::Path) -> Result<String, CliError> {
    use sha2::Digest;
    use std::io::Read;
    let mut f = std::fs::File::open(path)
        .map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// A file as a streamed request body, read a MiB at a time.
pub fn file_body(file: tokio::fs::File) -> reqwest::Body {
    let chunks = futures::stream::unfold(file, |mut f| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 1 << 20];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(bytes::Bytes::from(buf)), f))
            }
            Err(e) => Some((Err(e), f)),
        }
    });
    reqwest::Body::wrap_stream(chunks)
}
