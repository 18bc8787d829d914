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
}

impl Client {
    pub async fn op(&self, cmd: OpCmd) -> Result<bool, CliError> {
        let c = self.config();
        match cmd {
            OpCmd::List {
                active,
                state,
                kind,
                guest,
            } => {
                let state = state
                    .map(|s| {
                        serde_json::from_value::<OperationState>(serde_json::Value::String(
                            s.clone(),
                        ))
                        .map_err(|_| {
                            CliError::Usage(format!(
                                "no operation state {s:?}: use pending, running, undoing, succeeded, failed or cancelled"
                            ))
                        })
                    })
                    .transpose()?;
                let ops = operations_api::operation_list(
                    c,
                    state,
                    kind.as_deref(),
                    guest.as_deref(),
                    Some(active),
                    Some(1000),
                    None,
                )
                .await?;
                emit(self.out, &ops, || {
                    let mut t = Table::new(&["id", "kind", "state", "progress", "guest", "age"]);
                    for o in &ops {
                        t.row(vec![
                            o.id.clone(),
                            o.kind.clone(),
                            o.state.clone(),
                            format!("{:>3}% {}", o.progress.percent, o.progress.stage),
                            opt(&o.guest_id),
                            age(&o.created_at),
                        ]);
                    }
                    t
                });
                Ok(true)
            }
            OpCmd::Show { id } => {
                let op = operations_api::operation_get(c, &id).await?;
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
            OpCmd::Wait { ids } => {
                if self.out == super::Output::Table {
                    return self.follow(&ids).await;
                }
                let mut ended = Vec::new();
                for id in &ids {
                    ended.push(self.session.wait(id).await?);
                }
                let ok = ended.iter().all(|o| o.state == "succeeded");
                emit(self.out, &ended, || Table::new(&[]));
                Ok(ok)
            }
            OpCmd::Cancel { ids } => {
                let (ops, all) = self
                    .each(&ids, |id| async move {
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
    }
}
