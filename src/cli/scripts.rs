//! `corral profile …`, `corral bootscript …` (Rhai scripts) and `corral bootjob …`.

use clap::Subcommand;
use corral_client::apis::scripts_api as api;
use corral_client::models::{NewScript, QueueBootJobs, ScriptSource, ScriptView};
use serde_json::Value;

use super::output::{age, emit, emit_record, opt, Table};
use super::{CliError, Client};

#[derive(Debug, Subcommand)]
pub enum ScriptCmd {
    /// List them (boot scripts: `--system` adds corral's own, for administrators).
    List {
        #[arg(long)]
        system: bool,
    },
    /// Print a script's source (`-o json|yaml`: the whole record).
    Show { name: String },
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
    #[command(alias = "remove")]
    Delete { name: String },
}

/// Which scripts a [`ScriptCmd`] is about.
#[derive(Debug, Clone, Copy)]
pub enum ScriptKind {
    /// OS-init profiles: how a guest's first boot is planned.
    Profile,
    /// Boot scripts: jobs queued on guests.
    Boot,
}

#[derive(Debug, Subcommand)]
pub enum BootJobCmd {
    /// Queue a boot script for guests: at their next boot, or now with `--now`.
    Queue {
        script: String,
        #[arg(required = true)]
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
        #[arg(required = true)]
        ids: Vec<String>,
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
    pub async fn scripts(&self, kind: ScriptKind, cmd: ScriptCmd) -> Result<bool, CliError> {
        let c = self.config();
        let one = |v: ScriptView| {
            emit_record(self.out, &v);
            Ok(true)
        };
        match (kind, cmd) {
            (kind, ScriptCmd::List { system }) => {
                let list = match kind {
                    ScriptKind::Profile => api::profile_list(c).await?,
                    ScriptKind::Boot => api::boot_script_list(c, Some(system)).await?,
                };
                emit(self.out, &list, || {
                    let mut t = Table::new(&["name", "origin", "description"]);
                    for s in &list {
                        t.row(vec![
                            s.name.clone(),
                            if s.shipped { "shipped" } else { "user" }.into(),
                            super::output::first_sentence(&s.description),
                        ]);
                    }
                    t
                });
                Ok(true)
            }
            (kind, ScriptCmd::Show { name }) => {
                let s = match kind {
                    ScriptKind::Profile => api::profile_get(c, &name).await?,
                    ScriptKind::Boot => api::boot_script_get(c, &name).await?,
                };
                if self.out == super::Output::Table {
                    println!("{}", super::output::printable(&s.source));
                    return Ok(true);
                }
                one(s)
            }
            (ScriptKind::Profile, ScriptCmd::Create { name, file }) => {
                one(api::profile_create(c, NewScript::new(name, read(&file)?)).await?)
            }
            (ScriptKind::Boot, ScriptCmd::Create { name, file }) => {
                one(api::boot_script_create(c, NewScript::new(name, read(&file)?)).await?)
            }
            (ScriptKind::Profile, ScriptCmd::Update { name, file }) => {
                one(api::profile_update(c, &name, ScriptSource::new(read(&file)?)).await?)
            }
            (ScriptKind::Boot, ScriptCmd::Update { name, file }) => {
                one(api::boot_script_update(c, &name, ScriptSource::new(read(&file)?)).await?)
            }
            (kind, ScriptCmd::Delete { name }) => {
                match kind {
                    ScriptKind::Profile => api::profile_delete(c, &name).await?,
                    ScriptKind::Boot => api::boot_script_delete(c, &name).await?,
                }
                eprintln!("{name} deleted");
                Ok(true)
            }
        }
    }

    pub async fn boot_jobs(&self, cmd: BootJobCmd) -> Result<bool, CliError> {
        let c = self.config();
        match cmd {
            BootJobCmd::Queue {
                script,
                guests,
                params,
                now,
            } => {
                let mut q = QueueBootJobs::new(guests, script);
                q.params = Some(Some(parse_params(&params)?));
                q.run_now = Some(now);
                let queued = api::boot_job_queue(c, q).await?;
                emit(self.out, &queued, || {
                    let mut t = Table::new(&["job", "guest", "operation"]);
                    for j in &queued.jobs {
                        t.row(vec![j.id.clone(), j.guest_id.clone(), opt(&j.operation_id)]);
                    }
                    t
                });
            }
            BootJobCmd::List {
                guest,
                state,
                system,
            } => {
                let jobs =
                    api::guest_boot_jobs(c, &guest, state.as_deref(), Some(system), None, None)
                        .await?;
                emit(self.out, &jobs, || {
                    let mut t = Table::new(&["id", "script", "state", "attempts", "age", "error"]);
                    for j in &jobs {
                        t.row(vec![
                            j.id.clone(),
                            j.script.clone(),
                            j.state.clone(),
                            j.attempts.to_string(),
                            age(&j.created_at),
                            opt(&j.error),
                        ]);
                    }
                    t
                });
            }
            BootJobCmd::Pending { system } => {
                let list = api::boot_job_pending_guests(c, Some(system)).await?;
                emit(self.out, &list, || {
                    let mut t = Table::new(&["guest", "pending"]);
                    for g in &list {
                        t.row(vec![g.name.clone(), g.pending.to_string()]);
                    }
                    t
                });
            }
            BootJobCmd::Cancel { ids } => {
                let (_, all) = self
                    .each(&ids, |id| async move {
                        api::boot_job_cancel(c, &id).await?;
                        eprintln!("{id} cancelled");
                        Ok(())
                    })
                    .await;
                return Ok(all);
            }
        }
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
