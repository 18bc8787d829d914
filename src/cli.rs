//! The `corral` client subcommands, for people and for scripts: every call goes through
//! the generated Rust SDK (`sdk/rust`), the same client the tests and other programs use.
//!
//! Server and token come from `--url`/`CORRAL_URL` (default `http://127.0.0.1:8620`) and
//! `--token`/`CORRAL_TOKEN`, else the admin token file that `corral up` writes. Lists and
//! records print as tables; `-o json` and `-o yaml` print the API's records for scripts.
//! `--wait` follows the operations a command started: progress bars on a terminal, one line
//! per change otherwise. Commands that take several guests act on each and report each.
//!
//! Exit status: 0 when everything succeeded, 1 when an operation or one of several guests
//! failed, 2 when the command could not be carried out at all.

mod admin;
mod disks;
mod guests;
mod metrics;
mod nodes;
mod ops;
pub mod output;
mod progress;
mod resources;
mod scripts;
mod snapshots;
mod tokens;
mod users;

pub use admin::{AuditArgs, SettingsCmd};
pub use disks::DiskCmd;
pub use guests::GuestCmd;
pub use nodes::{NodeCmd, PluginCmd};
pub use ops::OpCmd;
pub use output::Output;
pub use resources::{file_body, PoolCmd, TemplateCmd};
pub use scripts::{BootJobCmd, ScriptCmd, ScriptKind};
pub use snapshots::SnapshotCmd;
pub use tokens::TokenCmd;
pub use users::UserCmd;

use clap::Args;
use corral_client::apis::configuration::Configuration;
use corral_client::session::{Session, SessionError};

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The server refused: its message, and what to do about it when that is clear.
    #[error("{message}{}", hint(*.status))]
    Api { status: u16, message: String },
    #[error("cannot reach corral at {url}: {reason} (is `corral up` running? --url or CORRAL_URL names another server)")]
    Unreachable { url: String, reason: String },
    #[error("{0}")]
    Usage(String),
}

fn hint(status: u16) -> &'static str {
    match status {
        401 => " (the token is not accepted: set CORRAL_TOKEN, or --token-file to the file `corral up` wrote)",
        403 => " (this needs an administrator's token)",
        _ => "",
    }
}

impl<T> From<corral_client::apis::Error<T>> for CliError {
    fn from(e: corral_client::apis::Error<T>) -> Self {
        SessionError::from(e).into()
    }
}

impl From<SessionError> for CliError {
    fn from(e: SessionError) -> Self {
        match e {
            SessionError::Api { status, message } => CliError::Api { status, message },
            SessionError::Transport(reason) => CliError::Unreachable {
                url: String::new(),
                reason,
            },
        }
    }
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
    /// Output format: a table for people, or the API's records as JSON or YAML.
    #[arg(short = 'o', long, value_enum, default_value = "table", global = true)]
    pub output: Output,
}

pub struct Client {
    session: Session,
    out: Output,
    url: String,
}

/// Parses `128MiB`, `1GiB`, `512M`, `2G` or a bare number of MiB.
pub fn parse_mib(s: &str) -> Result<u32, CliError> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u32 = num
        .parse()
        .map_err(|_| CliError::Usage(format!("bad size {s:?}: write e.g. 512MiB or 2GiB")))?;
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
                        "no token: set CORRAL_TOKEN, or run `corral up`, which writes {} ({e})",
                        opts.token_file
                    ))
                })?,
        };
        // The server's root or its API base, either works.
        let root = opts.url.trim_end_matches('/');
        let base = if root.ends_with("/api/v1") {
            root.to_string()
        } else {
            format!("{root}/api/v1")
        };
        Ok(Client {
            session: Session::with_token(&base, &token),
            out: opts.output,
            url: opts.url,
        })
    }

    fn config(&self) -> &Configuration {
        &self.session.config
    }

    /// Node ids to host names, for tables people read (`-o json` keeps the ids). Empty
    /// when the caller may not list nodes: the tables then show ids.
    async fn node_names(&self) -> Names {
        match corral_client::apis::nodes_api::node_list(self.config(), None).await {
            Ok(nodes) => Names(nodes.into_iter().map(|n| (n.id, n.hostname)).collect()),
            Err(_) => Names::default(),
        }
    }

    /// Guest ids to names, for tables people read.
    async fn guest_names(&self) -> Names {
        let list = corral_client::apis::guests_api::guest_list(
            self.config(),
            None,
            None,
            None,
            Some(1000),
            None,
        )
        .await;
        match list {
            Ok(guests) => Names(guests.into_iter().map(|g| (g.id, g.name)).collect()),
            Err(_) => Names::default(),
        }
    }

    /// Names the server in an unreachable error.
    pub fn explain(&self, e: CliError) -> CliError {
        match e {
            CliError::Unreachable { reason, .. } => CliError::Unreachable {
                url: self.url.clone(),
                reason,
            },
            other => other,
        }
    }

    /// Runs `each` for every item; failures are reported per item and the rest go on.
    /// Returns the results that succeeded and whether all did.
    async fn each<T, F, Fut>(&self, items: &[String], mut each: F) -> (Vec<T>, bool)
    where
        F: FnMut(String) -> Fut,
        Fut: std::future::Future<Output = Result<T, CliError>>,
    {
        let mut done = Vec::new();
        let mut all = true;
        for item in items {
            match each(item.clone()).await {
                Ok(v) => done.push(v),
                Err(e) => {
                    all = false;
                    eprintln!("{item}: {}", self.explain(e));
                }
            }
        }
        (done, all)
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

/// Ids to the names people read; an id without a name (a deleted guest) shows as itself.
#[derive(Default)]
struct Names(std::collections::HashMap<String, String>);

impl Names {
    fn of(&self, id: &Option<String>) -> String {
        match id {
            Some(id) => self.0.get(id).cloned().unwrap_or_else(|| id.clone()),
            None => "-".into(),
        }
    }
}
