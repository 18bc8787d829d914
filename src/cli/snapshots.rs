//! `corral snapshot …`: a guest's snapshots (take, list, revert, delete).

use clap::Subcommand;
use corral_client::apis::guests_api;
use corral_client::models::{CreateSnapshot, SnapshotAccepted};

use super::output::{emit, emit_record, opt, Table};
use super::{CliError, Client};

#[derive(Debug, Subcommand)]
pub enum SnapshotCmd {
    /// A guest's snapshots.
    List { guest: String },
    /// Take a snapshot (memory included when the guest runs; quiesced through its agent).
    Create {
        guest: String,
        name: String,
        #[arg(long)]
        description: Option<String>,
        #[arg(long)]
        wait: bool,
    },
    /// Return the guest to a snapshot: what was written since is gone.
    Revert {
        guest: String,
        snapshot: String,
        #[arg(long)]
        wait: bool,
    },
    /// Delete a snapshot.
    Delete {
        guest: String,
        snapshot: String,
        #[arg(long)]
        wait: bool,
    },
}

impl Client {
    async fn snapshot_op(&self, a: SnapshotAccepted, wait: bool) -> Result<bool, CliError> {
        if wait {
            return self.follow(&[a.operation_id]).await;
        }
        emit_record(self.out, &a);
        Ok(true)
    }

    pub async fn snapshot(&self, cmd: SnapshotCmd) -> Result<bool, CliError> {
        let c = self.config();
        match cmd {
            SnapshotCmd::List { guest } => {
                let list = guests_api::snapshot_list(c, &guest).await?;
                emit(self.out, &list, || {
                    let mut t = Table::new(&["name", "state", "vm state", "quiesced", "created"]);
                    for s in &list {
                        t.row(vec![
                            s.name.clone(),
                            s.state.clone(),
                            opt(&s.vm_state),
                            s.quiesced.to_string(),
                            s.created_at.clone(),
                        ]);
                    }
                    t
                });
                Ok(true)
            }
            SnapshotCmd::Create {
                guest,
                name,
                description,
                wait,
            } => {
                let mut req = CreateSnapshot::new(name);
                req.description = description;
                let a = guests_api::snapshot_create(c, &guest, req).await?;
                self.snapshot_op(a, wait).await
            }
            SnapshotCmd::Revert {
                guest,
                snapshot,
                wait,
            } => {
                let a = guests_api::snapshot_revert(c, &guest, &snapshot).await?;
                self.snapshot_op(a, wait).await
            }
            SnapshotCmd::Delete {
                guest,
                snapshot,
                wait,
            } => {
                let a = guests_api::snapshot_delete(c, &guest, &snapshot).await?;
                self.snapshot_op(a, wait).await
            }
        }
    }
}
