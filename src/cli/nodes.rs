//! `corral node …` (the hosts, as the controller sees them) and `corral plugin list`.
//! The node agent itself is started with `corral agent`.

use clap::Subcommand;
use corral_client::apis::{nodes_api, plugins_api};
use corral_client::models::{EnrollNode, GuestRecords};

use super::output::{emit, emit_record, mib, opt, Table};
use super::{CliError, Client};

#[derive(Debug, Subcommand)]
pub enum NodeCmd {
    /// List nodes: name, online, guests, CPUs, free memory, storage free.
    List,
    /// One node, every field (its cleanup list included).
    Show { node: String },
    /// Enroll a node (its configured `node_id`, else its /etc/machine-id): prints its own
    /// Redis credentials once, as the `redis_url` to give the agent (`CORRAL_REDIS_URL`).
    Enroll { node: String },
    /// Give an enrolled node a new Redis secret (printed once); the old one stops working.
    Rotate { node: String },
    /// Revoke a node's Redis credential: it can no longer reach its queue or report.
    Revoke { node: String },
    /// Remove a node from the cloud; its guests' records are kept (`--guests keep`, for
    /// its return) or deleted with their addresses freed (`--guests delete`).
    Remove {
        node: String,
        #[arg(long, value_parser = ["keep", "delete"], default_value = "keep")]
        guests: String,
        #[arg(long)]
        wait: bool,
    },
    /// Move every guest off a node (each a live migration, two at a time); the node stops
    /// taking new guests. Prints where each guest goes and which cannot move, and why.
    Drain {
        node: String,
        #[arg(long)]
        wait: bool,
    },
    /// Set the node's fence command, which HA runs before it restarts the node's guests
    /// elsewhere: a program in the controller's fence directory and its arguments
    /// (`{node}` and `{address}` are replaced), e.g.
    /// `corral node fence n1 -- ipmi-off {address}`. `--clear` removes it.
    Fence {
        node: String,
        #[arg(long, conflicts_with = "command")]
        clear: bool,
        #[arg(last = true, required_unless_present = "clear")]
        command: Vec<String>,
    },
    /// Every node's newest figures: CPU, memory, storage.
    Top,
    /// A node's figures over a range, as a chart.
    Metrics(super::metrics::RangeArgs),
}

#[derive(Debug, Subcommand)]
pub enum PluginCmd {
    /// Controller plugins and their state.
    List,
}

impl Client {
    pub async fn node(&self, cmd: NodeCmd) -> Result<bool, CliError> {
        let c = self.config();
        match cmd {
            NodeCmd::List => {
                let list = nodes_api::node_list(c, None).await?;
                emit(self.out, &list, || {
                    let mut t = Table::new(&[
                        "id",
                        "hostname",
                        "online",
                        "guests",
                        "cpus",
                        "free memory",
                        "storage free",
                    ]);
                    for n in &list {
                        t.row(vec![
                            n.id.clone(),
                            n.hostname.clone(),
                            if n.online {
                                "yes".into()
                            } else {
                                format!("no, for {}s", opt(&n.offline_seconds))
                            },
                            n.guests.to_string(),
                            n.cpus.to_string(),
                            mib(n.free_memory_mib),
                            mib(n.storage_free_mib),
                        ]);
                    }
                    t
                });
                Ok(true)
            }
            NodeCmd::Show { node } => {
                emit_record(self.out, &nodes_api::node_get(c, &node).await?);
                Ok(true)
            }
            NodeCmd::Enroll { node } => {
                emit_record(
                    self.out,
                    &nodes_api::node_enroll(c, EnrollNode::new(node)).await?,
                );
                Ok(true)
            }
            NodeCmd::Rotate { node } => {
                emit_record(
                    self.out,
                    &nodes_api::node_rotate_credential(c, &node).await?,
                );
                Ok(true)
            }
            NodeCmd::Revoke { node } => {
                nodes_api::node_revoke_credential(c, &node).await?;
                Ok(true)
            }
            NodeCmd::Drain { node, wait } => self.node_drain(&node, wait).await,
            NodeCmd::Top => self.node_top().await,
            NodeCmd::Metrics(a) => self.metrics_chart(true, a).await,
            NodeCmd::Fence {
                node,
                clear,
                command,
            } => {
                self.node_fence(&node, if clear { Vec::new() } else { command })
                    .await
            }
            NodeCmd::Remove { node, guests, wait } => self.node_remove(&node, &guests, wait).await,
        }
    }

    /// `node remove`: its guests' records kept or deleted, followed with --wait.
    async fn node_remove(&self, node: &str, guests: &str, wait: bool) -> Result<bool, CliError> {
        let records = if guests == "delete" {
            GuestRecords::Delete
        } else {
            GuestRecords::Keep
        };
        let a = nodes_api::node_remove(self.config(), node, records).await?;
        if wait {
            return self.follow(&[a.operation_id]).await;
        }
        emit_record(self.out, &a);
        Ok(true)
    }

    /// `node drain`: the plan as a table (guest, to node or why it stays), then the
    /// operation, followed with --wait.
    /// `node fence`: sets the node's fence command (an empty one removes it).
    async fn node_fence(&self, node: &str, command: Vec<String>) -> Result<bool, CliError> {
        let mut set = corral_client::models::NodeSettings::new();
        set.fence_command = Some(command);
        emit_record(
            self.out,
            &nodes_api::node_update(self.config(), node, set).await?,
        );
        Ok(true)
    }

    async fn node_drain(&self, node: &str, wait: bool) -> Result<bool, CliError> {
        let a = nodes_api::node_drain(self.config(), node).await?;
        emit(self.out, &a, || {
            let mut t = Table::new(&["guest", "goes to", "or stays because"]);
            for m in &a.moves {
                t.row(vec![m.guest.clone(), m.to.clone(), String::new()]);
            }
            for u in &a.unmovable {
                t.row(vec![u.guest.clone(), String::new(), u.reason.clone()]);
            }
            t
        });
        if wait {
            return self.follow(std::slice::from_ref(&a.operation_id)).await;
        }
        Ok(true)
    }

    pub async fn plugin(&self, cmd: PluginCmd) -> Result<bool, CliError> {
        let PluginCmd::List = cmd;
        let list = plugins_api::plugin_list(self.config()).await?;
        emit(self.out, &list, || {
            let mut t = Table::new(&["name", "state", "hooks", "calls", "failures", "error"]);
            for p in &list {
                t.row(vec![
                    p.name.clone(),
                    p.state.clone(),
                    p.hooks.join(","),
                    p.calls.to_string(),
                    p.failures.to_string(),
                    opt(&p.last_error.clone().or(p.error.clone())),
                ]);
            }
            t
        });
        Ok(true)
    }
}
