//! `corral op …`: list, show, wait for and cancel operations.

use clap::Subcommand;
use corral_client::apis::operations_api;
use corral_client::models::OperationState;

use super::output::{age, emit, emit_record, opt, Table};
use super::{CliError, Client};

#[derive(Debug, Subcommand)]
pub enum OpCmd {
    /// List operations, oldest first: id, kind, state, progress, guest, age.
    List {
        /// Only pending, running or undoing ones.
        #[arg(long)]
        active: bool,
        /// Only this state (pending, running, undoing, succeeded, failed, cancelled).
        #[arg(long)]
        state: Option<String>,
        /// Only this kind, e.g. guest.create.
        #[arg(long)]
        kind: Option<String>,
        /// Only operations on this guest (id).
        #[arg(long)]
        guest: Option<String>,
    },
    /// One operation with its steps.
    Show { id: String },
    /// Follow operations to their end.
    Wait {
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Ask operations to stop and unwind.
    Cancel {
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// An operation's log: what the controller did and what the node said, by step.
    Log {
        id: String,
        /// Each line's full detail too.
        #[arg(long)]
        detail: bool,
    },
}

impl Client {
    pub async fn op(&self, cmd: OpCmd) -> Result<bool, CliError> {
        match cmd {
            OpCmd::List {
                active,
                state,
                kind,
                guest,
            } => self.op_list(active, state, kind, guest).await,
            OpCmd::Show { id } => self.op_show(&id).await,
            OpCmd::Wait { ids } => self.op_wait(&ids).await,
            OpCmd::Cancel { ids } => self.op_cancel(&ids).await,
            OpCmd::Log { id, detail } => self.op_log(&id, detail).await,
        }
    }

    /// `op log`: one line each, the detail indented under it with `--detail` (a failed
    /// line's detail is always shown).
    async fn op_log(&self, id: &str, detail: bool) -> Result<bool, CliError> {
        let lines = operations_api::operation_log(self.config(), id).await?;
        if self.out != super::Output::Table {
            emit(self.out, &lines, || Table::new(&[]));
            return Ok(true);
        }
        for l in &lines {
            let step = match (&l.step_name, l.attempt) {
                (Some(n), Some(a)) => format!("{n}#{a}{}", if l.undo { " undo" } else { "" }),
                _ => "-".into(),
            };
            println!(
                "{} {:<5} {:<18} {:<14} {}",
                l.at,
                l.level,
                super::output::printable_line(&l.source),
                step,
                super::output::printable_line(&l.message)
            );
            if let Some(d) = &l.detail {
                if detail || l.level == "error" {
                    for line in d.lines() {
                        println!("      {}", super::output::printable_line(line));
                    }
                }
            }
        }
        Ok(true)
    }

    /// `op list`, filtered.
    async fn op_list(
        &self,
        active: bool,
        state: Option<String>,
        kind: Option<String>,
        guest: Option<String>,
    ) -> Result<bool, CliError> {
        let state = state
            .map(|s| {
                serde_json::from_value::<OperationState>(serde_json::Value::String(s.clone()))
                    .map_err(|_| {
                        CliError::Usage(format!(
                            "no operation state {s:?}: use pending, running, undoing, succeeded, failed or cancelled"
                        ))
                    })
            })
            .transpose()?;
        let ops = operations_api::operation_list(
            self.config(),
            state,
            kind.as_deref(),
            guest.as_deref(),
            Some(active),
            Some(1000),
            None,
        )
        .await?;
        let guests = self.guest_names().await;
        emit(self.out, &ops, || {
            let mut t = Table::new(&["id", "kind", "state", "progress", "guest", "age"]);
            for o in &ops {
                t.row(vec![
                    o.id.clone(),
                    o.kind.clone(),
                    o.state.clone(),
                    format!("{:>3}% {}", o.progress.percent, o.progress.stage),
                    guests.of(&o.guest_id),
                    age(&o.created_at),
                ]);
            }
            t
        });
        Ok(true)
    }

    /// `op show`: the operation, then a table of its steps.
    async fn op_show(&self, id: &str) -> Result<bool, CliError> {
        let op = operations_api::operation_get(self.config(), id).await?;
        if self.out != super::Output::Table {
            emit_record(self.out, &op);
            return Ok(true);
        }
        println!(
            "{} {} {}  {}% {}",
            op.id,
            op.kind,
            op.state,
            op.progress.percent,
            super::output::printable_line(&op.progress.stage)
        );
        if let Some(e) = &op.error {
            println!("error: {}", super::output::printable(e));
        }
        let mut t = Table::new(&["step", "runs on", "state", "attempt", "error"]);
        for s in &op.steps {
            t.row(vec![
                s.name.clone(),
                s.runs_on.clone(),
                s.state.clone(),
                s.attempt.to_string(),
                opt(&s.error),
            ]);
        }
        print!("{}", t.render());
        Ok(true)
    }

    /// `op wait`: progress on a table output, the ended operations otherwise; true when
    /// all succeeded.
    async fn op_wait(&self, ids: &[String]) -> Result<bool, CliError> {
        if self.out == super::Output::Table {
            return self.follow(ids).await;
        }
        let mut ended = Vec::new();
        for id in ids {
            ended.push(self.session.wait(id).await?);
        }
        let ok = ended.iter().all(|o| o.state == "succeeded");
        emit(self.out, &ended, || Table::new(&[]));
        Ok(ok)
    }

    /// `op cancel`: one request per operation; one that fails does not stop the rest.
    async fn op_cancel(&self, ids: &[String]) -> Result<bool, CliError> {
        let c = self.config();
        let (ops, all) = self
            .each(ids, |id| async move {
                Ok(operations_api::operation_cancel(c, &id).await?)
            })
            .await;
        emit(self.out, &ops, || {
            let mut t = Table::new(&["id", "kind", "state", "cancel requested"]);
            for o in &ops {
                t.row(vec![
                    o.id.clone(),
                    o.kind.clone(),
                    o.state.clone(),
                    o.cancel_requested.to_string(),
                ]);
            }
            t
        });
        Ok(all)
    }
}
