//! The `corral` client subcommands: a thin HTTP client of the API with progress display.
//!
//! Server and token come from `--url`/`CORRAL_URL` (default `http://127.0.0.1:8620`) and
//! `--token`/`CORRAL_TOKEN`, else the admin token file that `corral up` writes.

mod scripts;

pub use scripts::{BootJobCmd, ScriptCmd};

use std::io::Write;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{json, Value};

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Http(#[from] reqwest::Error),
    #[error("{status}: {message}")]
    Api { status: u16, message: String },
    #[error("{0}")]
    Usage(String),
}

#[derive(Debug, Args, Clone)]
pub struct ClientOpts {
    #[arg(
        long,
        env = "CORRAL_URL",
        default_value = "http://127.0.0.1:8620",
        global = true
    )]
    pub url: String,
    #[arg(long, env = "CORRAL_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// Token file used when no token is given.
    #[arg(
        long,
        env = "CORRAL_TOKEN_FILE",
        default_value = "/var/lib/corral/admin.token",
        global = true
    )]
    pub token_file: String,
    /// Print raw JSON.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum GuestCmd {
    /// Create guests (one operation each).
    Create {
        #[arg(long)]
        template: String,
        #[arg(long, default_value_t = 1)]
        cpu: u32,
        /// e.g. 128MiB, 1GiB, or a number of MiB.
        #[arg(long, default_value = "128MiB")]
        memory: String,
        #[arg(long, default_value_t = 1)]
        count: u32,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        node: Option<String>,
        #[arg(long)]
        pool: Option<String>,
        #[arg(long)]
        ip: Option<String>,
        #[arg(long)]
        password: Option<String>,
        /// Wait and show progress.
        #[arg(long)]
        wait: bool,
    },
    List,
    Show {
        guest: String,
    },
    Delete {
        guest: String,
        #[arg(long)]
        wait: bool,
    },
    /// start | shutdown | poweroff | reboot | reset | suspend | resume
    Action {
        action: String,
        guest: String,
        #[arg(long)]
        wait: bool,
    },
    /// Change the hostname inside the guest (now if it runs, else at its next boot).
    Hostname {
        guest: String,
        hostname: String,
        #[arg(long)]
        wait: bool,
    },
    /// Reset a password inside the guest; `--generate` prints a new random one once.
    Password {
        guest: String,
        #[arg(long)]
        user: Option<String>,
        #[arg(long, conflicts_with = "generate")]
        password: Option<String>,
        #[arg(long)]
        generate: bool,
        #[arg(long)]
        wait: bool,
    },
    /// Move the guest to another address: `--ip`, or the next free one of its pool.
    ChangeIp {
        guest: String,
        #[arg(long)]
        ip: Option<String>,
        #[arg(long)]
        wait: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum OpCmd {
    List {
        #[arg(long)]
        active: bool,
    },
    Show {
        id: String,
    },
    Wait {
        id: String,
        #[arg(long, default_value_t = 600)]
        timeout: u64,
    },
    Cancel {
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum TemplateCmd {
    Add {
        name: String,
        path: String,
        #[arg(long, default_value = "linux")]
        os: String,
        #[arg(long)]
        min_memory: Option<u32>,
    },
    List,
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
    },
    List,
}

pub struct Client {
    http: reqwest::Client,
    opts: ClientOpts,
    token: String,
}

/// Parses `128MiB`, `1GiB`, `512M`, `2G` or a bare number of MiB.
pub fn parse_mib(s: &str) -> Result<u32, CliError> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u32 = num
        .parse()
        .map_err(|_| CliError::Usage(format!("bad size {s:?}")))?;
    match unit.to_ascii_lowercase().as_str() {
        "" | "m" | "mib" | "mb" => Ok(n),
        "g" | "gib" | "gb" => Ok(n * 1024),
        _ => Err(CliError::Usage(format!(
            "bad size unit in {s:?}: use MiB or GiB"
        ))),
    }
}

impl Client {
    pub fn new(opts: ClientOpts) -> Result<Self, CliError> {
        let token = match &opts.token {
            Some(t) => t.clone(),
            None => std::fs::read_to_string(&opts.token_file)
                .map(|t| t.trim().to_string())
                .map_err(|e| {
                    CliError::Usage(format!(
                        "no token: set CORRAL_TOKEN or read {}: {e}",
                        opts.token_file
                    ))
                })?,
        };
        Ok(Client {
            http: reqwest::Client::new(),
            opts,
            token,
        })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, CliError> {
        let url = format!("{}/api/v1{path}", self.opts.url.trim_end_matches('/'));
        let mut req = self.http.request(method, url).bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let text = resp.text().await?;
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if !status.is_success() {
            let message = v
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or(&text)
                .to_string();
            return Err(CliError::Api {
                status: status.as_u16(),
                message,
            });
        }
        Ok(v)
    }

    fn print(&self, v: &Value) {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    }

    /// Polls operations until they end, drawing one progress line per operation.
    async fn wait_all(&self, ids: &[String]) -> Result<bool, CliError> {
        let mut all_ok = true;
        for id in ids {
            loop {
                let op = self
                    .call(
                        reqwest::Method::GET,
                        &format!("/operations/{id}/wait?timeout=1"),
                        None,
                    )
                    .await?;
                let state = op["state"].as_str().unwrap_or("");
                let pct = op["progress"]["percent"].as_u64().unwrap_or(0);
                let stage = op["progress"]["stage"].as_str().unwrap_or("");
                let bar: String = (0..20)
                    .map(|i| if i * 5 < pct { '#' } else { '.' })
                    .collect();
                print!("\r{} [{bar}] {pct:>3}% {stage:<40}", &id[..8.min(id.len())]);
                let _ = std::io::stdout().flush();
                if matches!(state, "succeeded" | "failed" | "cancelled") {
                    println!(
                        "\r{} [{bar}] {pct:>3}% {state}{}",
                        &id[..8.min(id.len())],
                        op["error"]
                            .as_str()
                            .map(|e| format!(": {e}"))
                            .unwrap_or_default()
                    );
                    all_ok &= state == "succeeded";
                    break;
                }
            }
        }
        Ok(all_ok)
    }

    pub async fn guest(&self, cmd: GuestCmd) -> Result<bool, CliError> {
        use reqwest::Method as M;
        let (v, wait) = match cmd {
            GuestCmd::Create {
                template,
                cpu,
                memory,
                count,
                name,
                node,
                pool,
                ip,
                password,
                wait,
            } => {
                let body = json!({"template": template, "cpus": cpu, "memory_mib": parse_mib(&memory)?, "count": count,
                    "name": name, "node": node, "pool": pool, "ip": ip, "password": password});
                (self.call(M::POST, "/guests", Some(body)).await?, wait)
            }
            GuestCmd::List => (self.call(M::GET, "/guests", None).await?, false),
            GuestCmd::Show { guest } => (
                self.call(M::GET, &format!("/guests/{guest}"), None).await?,
                false,
            ),
            GuestCmd::Delete { guest, wait } => (
                self.call(M::DELETE, &format!("/guests/{guest}"), None)
                    .await?,
                wait,
            ),
            GuestCmd::Action {
                action,
                guest,
                wait,
            } => (
                self.call(M::POST, &format!("/guests/{guest}/actions/{action}"), None)
                    .await?,
                wait,
            ),
            GuestCmd::Hostname {
                guest,
                hostname,
                wait,
            } => (
                self.call(
                    M::PATCH,
                    &format!("/guests/{guest}"),
                    Some(json!({"hostname": hostname})),
                )
                .await?,
                wait,
            ),
            GuestCmd::Password {
                guest,
                user,
                password,
                generate,
                wait,
            } => (
                self.call(
                    M::POST,
                    &format!("/guests/{guest}/password"),
                    Some(json!({"user": user, "password": password, "generate": generate})),
                )
                .await?,
                wait,
            ),
            GuestCmd::ChangeIp { guest, ip, wait } => (
                self.call(
                    M::POST,
                    &format!("/guests/{guest}/change-ip"),
                    Some(json!({"ip": ip})),
                )
                .await?,
                wait,
            ),
        };
        if let Some(pw) = v["password"].as_str() {
            // Shown once: corral keeps only its hash.
            println!("new password: {pw}");
        }
        if !wait || self.opts.json {
            self.print(&v);
            return Ok(true);
        }
        let ids: Vec<String> = match v.get("operations") {
            Some(list) => list
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|a| a["operation_id"].as_str().map(String::from))
                .collect(),
            None => v["operation_id"]
                .as_str()
                .map(String::from)
                .into_iter()
                .collect(),
        };
        self.wait_all(&ids).await
    }

    pub async fn op(&self, cmd: OpCmd) -> Result<bool, CliError> {
        use reqwest::Method as M;
        let v = match cmd {
            OpCmd::List { active } => {
                self.call(M::GET, &format!("/operations?active={active}"), None)
                    .await?
            }
            OpCmd::Show { id } => {
                self.call(M::GET, &format!("/operations/{id}"), None)
                    .await?
            }
            OpCmd::Cancel { id } => {
                self.call(M::POST, &format!("/operations/{id}/cancel"), None)
                    .await?
            }
            OpCmd::Wait { id, timeout } => {
                if self.opts.json {
                    self.call(
                        M::GET,
                        &format!("/operations/{id}/wait?timeout={}", timeout.min(600)),
                        None,
                    )
                    .await?
                } else {
                    let _ = timeout;
                    return self.wait_all(&[id]).await;
                }
            }
        };
        self.print(&v);
        Ok(true)
    }

    pub async fn template(&self, cmd: TemplateCmd) -> Result<bool, CliError> {
        use reqwest::Method as M;
        let v = match cmd {
            TemplateCmd::Add { name, path, os, min_memory } => {
                self.call(M::POST, "/templates", Some(json!({"name": name, "path": path, "os_type": os, "min_memory_mib": min_memory}))).await?
            }
            TemplateCmd::List => self.call(M::GET, "/templates", None).await?,
            TemplateCmd::Delete { template } => self.call(M::DELETE, &format!("/templates/{template}"), None).await?,
            TemplateCmd::SetProfile { template, profile } => {
                let p = if profile == "default" { Value::Null } else { Value::String(profile) };
                self.call(M::PATCH, &format!("/templates/{template}"), Some(json!({"os_init_profile": p}))).await?
            }
        };
        self.print(&v);
        Ok(true)
    }

    pub async fn pool(&self, cmd: PoolCmd) -> Result<bool, CliError> {
        use reqwest::Method as M;
        let v = match cmd {
            PoolCmd::Add {
                name,
                cidr,
                start,
                end,
                gateway,
                dns,
            } => {
                self.call(
                    M::POST,
                    "/ip-pools",
                    Some(json!({"name": name, "cidr": cidr, "range_start": start,
                    "range_end": end, "gateway": gateway, "dns": dns})),
                )
                .await?
            }
            PoolCmd::List => self.call(M::GET, "/ip-pools", None).await?,
        };
        self.print(&v);
        Ok(true)
    }

    pub async fn plugins(&self) -> Result<bool, CliError> {
        let v = self.call(reqwest::Method::GET, "/plugins", None).await?;
        self.print(&v);
        Ok(true)
    }

    pub async fn nodes(&self) -> Result<bool, CliError> {
        let v = self.call(reqwest::Method::GET, "/nodes", None).await?;
        self.print(&v);
        Ok(true)
    }

    /// Polls until the API answers, for scripts that start `corral up` in the background.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            if self
                .call(reqwest::Method::GET, "/about", None)
                .await
                .is_ok()
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::parse_mib;

    #[test]
    fn sizes() {
        assert_eq!(parse_mib("128MiB").unwrap(), 128);
        assert_eq!(parse_mib("1GiB").unwrap(), 1024);
        assert_eq!(parse_mib("256").unwrap(), 256);
        assert!(parse_mib("12XB").is_err());
        assert!(parse_mib("MiB").is_err());
    }
}
