//! `corral disk …`: data disks (create, attach, detach, grow, delete) and, with
//! `--all`, guests' system and seed disks.

use clap::Subcommand;
use corral_client::apis::guests_api;
use corral_client::models::{AttachDisk, CreateDisk, DiskAccepted, DiskLimits, ResizeDisk};

use super::output::{emit, emit_record, opt, Table};
use super::{CliError, Client};

#[derive(Debug, Subcommand)]
pub enum DiskCmd {
    /// List data disks: name, size, node, guest and device; --all adds system and seed disks.
    List {
        #[arg(long)]
        all: bool,
    },
    /// One disk, every field.
    Show { disk: String },
    /// Create an empty data disk, on a guest's node (--guest) or a node (--node).
    Create {
        name: String,
        #[arg(long)]
        size_gib: u64,
        #[arg(long, conflicts_with = "guest")]
        node: Option<String>,
        #[arg(long)]
        guest: Option<String>,
        /// I/O operations per second.
        #[arg(long)]
        iops: Option<u64>,
        /// Bytes per second.
        #[arg(long)]
        bps: Option<u64>,
        #[arg(long)]
        wait: bool,
    },
    /// Attach a data disk to a guest on its node (hot-plugged when the guest runs).
    Attach {
        disk: String,
        guest: String,
        #[arg(long)]
        wait: bool,
    },
    /// Detach a data disk from its guest.
    Detach {
        disk: String,
        #[arg(long)]
        wait: bool,
    },
    /// Grow a data disk to --size-gib (live when its guest runs).
    Resize {
        disk: String,
        #[arg(long)]
        size_gib: u64,
        #[arg(long)]
        wait: bool,
    },
    /// Replace a data disk's I/O limits (live when its guest runs); neither flag lifts
    /// them.
    Limits {
        disk: String,
        /// I/O operations per second.
        #[arg(long)]
        iops: Option<u64>,
        /// Bytes per second.
        #[arg(long)]
        bps: Option<u64>,
        #[arg(long)]
        wait: bool,
    },
    /// Delete a detached data disk and its file.
    Delete {
        disk: String,
        #[arg(long)]
        wait: bool,
    },
}

impl Client {
    async fn disk_op(&self, a: DiskAccepted, wait: bool) -> Result<bool, CliError> {
        if wait {
            return self.follow(&[a.operation_id]).await;
        }
        emit_record(self.out, &a);
        Ok(true)
    }

    pub async fn disk(&self, cmd: DiskCmd) -> Result<bool, CliError> {
        let c = self.config();
        match cmd {
            DiskCmd::List { all } => self.disk_list(all).await,
            DiskCmd::Show { disk } => {
                emit_record(self.out, &guests_api::disk_get(c, &disk).await?);
                Ok(true)
            }
            DiskCmd::Create {
                name,
                size_gib,
                node,
                guest,
                iops,
                bps,
                wait,
            } => {
                let mut req = CreateDisk::new(name, size_gib);
                req.node = node;
                req.guest = guest;
                if iops.is_some() || bps.is_some() {
                    req.limits = Some(Box::new(DiskLimits {
                        total_iops_sec: iops,
                        total_bytes_sec: bps,
                    }));
                }
                let a = guests_api::disk_create(c, req).await?;
                self.disk_op(a, wait).await
            }
            DiskCmd::Attach { disk, guest, wait } => {
                let a = guests_api::disk_attach(c, &disk, AttachDisk::new(guest)).await?;
                self.disk_op(a, wait).await
            }
            DiskCmd::Detach { disk, wait } => {
                let a = guests_api::disk_detach(c, &disk).await?;
                self.disk_op(a, wait).await
            }
            DiskCmd::Resize {
                disk,
                size_gib,
                wait,
            } => {
                let a = guests_api::disk_resize(c, &disk, ResizeDisk::new(size_gib)).await?;
                self.disk_op(a, wait).await
            }
            DiskCmd::Limits {
                disk,
                iops,
                bps,
                wait,
            } => {
                let limits = DiskLimits {
                    total_iops_sec: iops,
                    total_bytes_sec: bps,
                };
                let a = guests_api::disk_set_limits(c, &disk, limits).await?;
                self.disk_op(a, wait).await
            }
            DiskCmd::Delete { disk, wait } => {
                let a = guests_api::disk_delete(c, &disk).await?;
                self.disk_op(a, wait).await
            }
        }
    }

    /// `disk list`: the data disks, and with `all` the system and seed disks too.
    async fn disk_list(&self, all: bool) -> Result<bool, CliError> {
        let list = guests_api::disk_list(self.config(), Some(all)).await?;
        let (nodes, guests) = (self.node_names().await, self.guest_names().await);
        emit(self.out, &list, || {
            let mut t = Table::new(&["name", "kind", "size", "node", "guest", "device", "state"]);
            for d in &list {
                t.row(vec![
                    d.name.clone(),
                    d.kind.clone(),
                    d.size_gib.map(|g| format!("{g} GiB")).unwrap_or_default(),
                    nodes.of(&Some(d.node_id.clone())),
                    guests.of(&d.guest_id),
                    opt(&d.target),
                    d.state.clone(),
                ]);
            }
            t
        });
        Ok(true)
    }
}
