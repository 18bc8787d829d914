//! Client subcommands for Rhai scripts: OS-init profiles, boot scripts and boot jobs, and
//! the in-guest changes built on them (hostname, password, IP).

use clap::Subcommand;
use serde_json::{json, Value};

use super::{CliError, Client};

#[derive(Debug, Subcommand)]
pub enum ScriptCmd {
    /// List them (boot scripts: `--system` adds corral's own, for administrators).
    List {
        #[arg(long)]
        system: bool,
    },
    Show {
        name: String,
    },
    /// Create from a Rhai file; it is compiled and tried first.
    Create {
        name: String,
        #[arg(long)]
        file: String,
    },
    Update {
        name: String,
        #[arg(long)]
        file: String,
    },
    Delete {
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum BootJobCmd {
    /// Queue a boot script for guests: at their next boot, or now with `--now`.
    Queue {
        script: String,
        guests: Vec<String>,
        /// `key=value` (repeatable); a value that parses as JSON is taken as JSON.
        #[arg(long = "param")]
        params: Vec<String>,
        #[arg(long)]
        now: bool,
    },
    /// A guest's jobs.
    List {
        guest: String,
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        system: bool,
    },
    /// Guests with pending jobs.
    Pending {
        #[arg(long)]
        system: bool,
    },
    Cancel {
        id: String,
    },
}

fn read(file: &str) -> Result<String, CliError> {
    std::fs::read_to_string(file).map_err(|e| CliError::Usage(format!("reading {file}: {e}")))
}

/// `key=value` pairs into a JSON object.
pub fn parse_params(pairs: &[String]) -> Result<Value, CliError> {
    let mut m = serde_json::Map::new();
    for p in pairs {
        let (k, v) = p
            .split_once('=')
            .ok_or_else(|| CliError::Usage(format!("--param {p:?}: use key=value")))?;
        let v = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_string()));
        m.insert(k.to_string(), v);
    }
    Ok(Value::Object(m))
}

impl Client {
    /// `base` is `/os-init-profiles` or `/boot-scripts`.
    pub async fn scripts(&self, base: &str, cmd: ScriptCmd) -> Result<bool, CliError> {
        use reqwest::Method as M;
        let v = match cmd {
            ScriptCmd::List { system } => {
                let list = self
                    .call(M::GET, &format!("{base}?include_system={system}"), None)
                    .await?;
                if !self.opts.json {
                    for s in list.as_array().into_iter().flatten() {
                        println!(
                            "{:<20} {:<8} {}",
                            s["name"].as_str().unwrap_or(""),
                            if s["shipped"] == json!(true) {
                                "shipped"
                            } else {
                                "user"
                            },
                            s["description"].as_str().unwrap_or("")
                        );
                    }
                    return Ok(true);
                }
                list
            }
            ScriptCmd::Show { name } => {
                let s = self.call(M::GET, &format!("{base}/{name}"), None).await?;
                if !self.opts.json {
                    println!("{}", s["source"].as_str().unwrap_or(""));
                    return Ok(true);
                }
                s
            }
            ScriptCmd::Create { name, file } => {
                self.call(
                    M::POST,
                    base,
                    Some(json!({"name": name, "source": read(&file)?})),
                )
                .await?
            }
            ScriptCmd::Update { name, file } => {
                self.call(
                    M::PUT,
                    &format!("{base}/{name}"),
                    Some(json!({"source": read(&file)?})),
                )
                .await?
            }
            ScriptCmd::Delete { name } => {
                self.call(M::DELETE, &format!("{base}/{name}"), None)
                    .await?
            }
        };
        self.print(&v);
        Ok(true)
    }

    pub async fn boot_jobs(&self, cmd: BootJobCmd) -> Result<bool, CliError> {
        use reqwest::Method as M;
        let v = match cmd {
            BootJobCmd::Queue {
                script,
                guests,
                params,
                now,
            } => {
                let body = json!({"guests": guests, "script": script, "params": parse_params(&params)?, "run_now": now});
                self.call(M::POST, "/boot-jobs", Some(body)).await?
            }
            BootJobCmd::List {
                guest,
                state,
                system,
            } => {
                let mut path = format!("/guests/{guest}/boot-jobs?include_system={system}");
                if let Some(s) = state {
                    path.push_str(&format!("&state={s}"));
                }
                self.call(M::GET, &path, None).await?
            }
            BootJobCmd::Pending { system } => {
                self.call(
                    M::GET,
                    &format!("/boot-jobs/pending?include_system={system}"),
                    None,
                )
                .await?
            }
            BootJobCmd::Cancel { id } => {
                self.call(M::DELETE, &format!("/boot-jobs/{id}"), None)
                    .await?
            }
        };
        self.print(&v);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::parse_params;

    #[test]
    fn params_parse_json_or_text() {
        let v = parse_params(&["a=1".into(), "b=x y".into(), "c=[\"k\"]".into()]).unwrap();
        assert_eq!(v, serde_json::json!({"a": 1, "b": "x y", "c": ["k"]}));
        assert!(parse_params(&["nokey".into()]).is_err());
    }
}
