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
            TemplateCmd::Add {
                name,
                path,
                os,
                min_memory,
            } => {
                let os = match os.as_str() {
                    "linux" => OsType::Linux,
                    "windows" => OsType::Windows,
                    _ => {
                        return Err(CliError::Usage(format!(
                            "--os {os:?}: use linux or windows"
                        )))
                    }
                };
                let mut t = CreateTemplate::new(name, os, path);
                t.min_memory_mib = min_memory;
                emit_record(self.out, &resources_api::template_create(c, t).await?);
            }
            TemplateCmd::List => {
                let list = resources_api::template_list(c).await?;
                emit(self.out, &list, || {
                    let mut t = Table::new(&["name", "os", "profile", "min memory", "path", "age"]);
                    for x in &list {
                        t.row(vec![
                            x.name.clone(),
                            x.os_type.clone(),
                            x.os_init_profile.clone(),
                            mib(u64::from(x.min_memory_mib)),
                            x.path.clone(),
                            age(&x.created_at),
                        ]);
                    }
                    t
                });
            }
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
