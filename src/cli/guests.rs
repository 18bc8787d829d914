//! `corral guest …`: create, list, show, delete, power actions on several guests at once,
//! and the in-guest changes (hostname, password, address).

use clap::Subcommand;
use corral_client::apis::guests_api;
use corral_client::models::{
    self, ChangeIp, CreateGuest, GuestAction, GuestState, ResetPassword, UpdateGuest,
};

use super::output::{age, emit, emit_record, mib, opt, Table};
use super::{parse_mib, CliError, Client};

#[derive(Debug, Subcommand)]
pub enum GuestCmd {
    /// Create guests (one operation each). With --count N and --name web: web-1 … web-N.
    Create(CreateArgs),
    /// List guests: name, state, node, address, CPUs, memory, age.
    List {
        /// Only guests in this state (running, shutoff, …).
        #[arg(long)]
        state: Option<String>,
        /// Only guests on this node.
        #[arg(long)]
        node: Option<String>,
        /// Only guests with this tag.
        #[arg(long)]
        tag: Option<String>,
    },
    /// One guest, every field.
    Show { guest: String },
    /// Make a new template from a shut-off guest's disk, or from one of its snapshots.
    Template {
        guest: String,
        name: String,
        #[arg(long)]
        snapshot: Option<String>,
        #[arg(long)]
        wait: bool,
    },
    /// Change a guest's vCPUs and/or memory (e.g. --memory 512MiB): any size while it is
    /// shut off, within its maxima while it runs.
    Resize {
        guest: String,
        #[arg(long)]
        cpu: Option<u32>,
        #[arg(long)]
        memory: Option<String>,
        /// A new ceiling for live growth (the guest must be shut off).
        #[arg(long)]
        max_cpu: Option<u32>,
        /// A new ceiling for live growth (the guest must be shut off).
        #[arg(long)]
        max_memory: Option<String>,
        #[arg(long)]
        wait: bool,
    },
    /// Move a guest to another node (administrators): a running one live, a stopped one
    /// cold with its snapshots. With --wait, a progress bar follows libvirt's figures
    /// (or the bytes copied); Ctrl-C leaves the migration running (`corral op cancel`
    /// stops it, and the guest stays where it was).
    Migrate(MigrateArgs),
    /// Turn a guest's HA on or off: restarted on another node (on the same shared
    /// storage) when its node is fenced, stopped by its node when that node fences
    /// itself.
    Ha {
        guest: String,
        #[arg(value_parser = ["on", "off"])]
        state: String,
        #[arg(long)]
        wait: bool,
    },
    /// Open a running guest's VNC console: prints where to connect and a one-time
    /// password that stops working after --valid seconds.
    Console {
        guest: String,
        #[arg(long, default_value_t = 60)]
        valid: u64,
    },
    /// Delete guests with their disks; their addresses return to the pool.
    Delete {
        #[arg(required = true)]
        guests: Vec<String>,
        #[arg(long)]
        wait: bool,
    },
    /// Start guests.
    Start(Power),
    /// Shut guests down cleanly (ACPI), powering off after --timeout seconds.
    Shutdown {
        #[command(flatten)]
        power: Power,
        #[arg(long)]
        timeout: Option<u64>,
    },
    /// Power guests off at once.
    Poweroff(Power),
    /// Reboot guests cleanly.
    Reboot(Power),
    /// Reset guests (hard reboot).
    Reset(Power),
    /// Pause guests in memory.
    Suspend(Power),
    /// Resume paused guests.
    Resume(Power),
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
    /// Every guest's newest figures: CPU, memory, disk and network.
    Top {
        /// Only guests on this node.
        #[arg(long)]
        node: Option<String>,
    },
    /// A guest's figures over a range, as a chart.
    Metrics(super::metrics::RangeArgs),
}

/// `guest migrate`'s arguments.
#[derive(Debug, clap::Args)]
pub struct MigrateArgs {
    guest: String,
    /// The node to move to; left out, placement picks among the other nodes.
    #[arg(long)]
    to: Option<String>,
    /// MiB/s this migration may use.
    #[arg(long)]
    bandwidth_mib: Option<u64>,
    /// Slow the guest down while it dirties memory faster than the link copies it.
    #[arg(long)]
    auto_converge: bool,
    /// Switch to post-copy after three passes.
    #[arg(long)]
    postcopy: bool,
    #[arg(long)]
    wait: bool,
}

/// The arguments of `corral guest create`.
#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    #[arg(long)]
    template: String,
    #[arg(long, default_value_t = 1)]
    cpu: u32,
    /// e.g. 128MiB, 1GiB, or a number of MiB.
    #[arg(long, default_value = "128MiB")]
    memory: String,
    /// vCPUs it can grow to while running (default: --cpu, no live growth).
    #[arg(long)]
    max_cpu: Option<u32>,
    /// Memory it can grow to while running (default: --memory).
    #[arg(long)]
    max_memory: Option<String>,
    #[arg(long, default_value_t = 1)]
    count: u32,
    /// The guest's name; with --count, the prefix of the names.
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
    /// An SSH public key for the guest's user (repeatable).
    #[arg(long = "ssh-key")]
    ssh_keys: Vec<String>,
    /// A tag for grouping and filtering (repeatable).
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// Follow the operations to their end.
    #[arg(long)]
    wait: bool,
}

#[derive(Debug, clap::Args)]
pub struct Power {
    /// Guest names or ids.
    #[arg(required = true)]
    guests: Vec<String>,
    /// Follow the operations to their end.
    #[arg(long)]
    wait: bool,
}

fn state(s: &GuestState) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default()
}

fn parse_state(s: &str) -> Result<GuestState, CliError> {
    serde_json::from_value(serde_json::Value::String(s.to_string())).map_err(|_| {
        CliError::Usage(format!(
            "no guest state {s:?}: use creating, running, shutoff, paused, error, …"
        ))
    })
}

impl Client {
    pub async fn guest(&self, cmd: GuestCmd) -> Result<bool, CliError> {
        match cmd {
            GuestCmd::Create(args) => self.guest_create(args).await,
            GuestCmd::List { state, node, tag } => self.guest_list(state, node, tag).await,
            GuestCmd::Show { guest } => {
                let g = guests_api::guest_get(self.config(), &guest).await?;
                emit_record(self.out, &g);
                Ok(true)
            }
            GuestCmd::Template {
                guest,
                name,
                snapshot,
                wait,
            } => self.guest_template(guest, name, snapshot, wait).await,
            GuestCmd::Resize {
                guest,
                cpu,
                memory,
                max_cpu,
                max_memory,
                wait,
            } => {
                let size = models::GuestSize {
                    cpus: cpu,
                    memory_mib: memory.as_deref().map(parse_mib).transpose()?,
                    max_cpus: max_cpu,
                    max_memory_mib: max_memory.as_deref().map(parse_mib).transpose()?,
                };
                self.guest_resize(guest, size, wait).await
            }
            GuestCmd::Migrate(m) => self.guest_migrate(m).await,
            GuestCmd::Ha { guest, state, wait } => self.guest_ha(&guest, state == "on", wait).await,
            GuestCmd::Console { guest, valid } => {
                let req = models::ConsoleRequest {
                    valid_seconds: Some(valid),
                };
                let console = guests_api::guest_console(self.config(), &guest, req).await?;
                emit_record(self.out, &console);
                Ok(true)
            }
            GuestCmd::Delete { guests, wait } => self.guest_delete(guests, wait).await,
            GuestCmd::Start(p) => self.power(p, GuestAction::Start, None).await,
            GuestCmd::Shutdown { power, timeout } => {
                self.power(power, GuestAction::Shutdown, timeout).await
            }
            GuestCmd::Poweroff(p) => self.power(p, GuestAction::Poweroff, None).await,
            GuestCmd::Reboot(p) => self.power(p, GuestAction::Reboot, None).await,
            GuestCmd::Reset(p) => self.power(p, GuestAction::Reset, None).await,
            GuestCmd::Suspend(p) => self.power(p, GuestAction::Suspend, None).await,
            GuestCmd::Resume(p) => self.power(p, GuestAction::Resume, None).await,
            GuestCmd::Hostname {
                guest,
                hostname,
                wait,
            } => self.guest_hostname(guest, hostname, wait).await,
            GuestCmd::Password {
                guest,
                user,
                password,
                generate,
                wait,
            } => {
                let mut r = ResetPassword::new();
                r.user = user;
                r.password = password;
                r.generate = generate.then_some(true);
                self.guest_password(guest, r, wait).await
            }
            GuestCmd::Top { node } => self.guest_top(node).await,
            GuestCmd::Metrics(a) => self.metrics_chart(false, a).await,
            GuestCmd::ChangeIp { guest, ip, wait } => {
                let mut body = ChangeIp::new();
                body.ip = ip;
                let a = guests_api::guest_change_ip(self.config(), &guest, body).await?;
                self.started(&[a], wait).await
            }
        }
    }

    /// `guest create`: one operation per guest, listed or followed.
    async fn guest_create(&self, a: CreateArgs) -> Result<bool, CliError> {
        let mut g = CreateGuest::new(a.cpu, parse_mib(&a.memory)?, a.template);
        g.max_cpus = a.max_cpu;
        g.max_memory_mib = a.max_memory.as_deref().map(parse_mib).transpose()?;
        g.count = (a.count != 1).then_some(a.count);
        g.name = a.name;
        g.node = a.node;
        g.pool = a.pool;
        g.ip = a.ip;
        g.password = a.password;
        g.ssh_keys = (!a.ssh_keys.is_empty()).then_some(a.ssh_keys);
        g.tags = (!a.tags.is_empty()).then_some(a.tags);
        let accepted = guests_api::guest_create(self.config(), g).await?;
        let ids: Vec<String> = accepted
            .operations
            .iter()
            .map(|a| a.operation_id.clone())
            .collect();
        self.accepted(&accepted.operations, a.wait, &ids).await
    }

    /// `guest list`, filtered by state, node and tag.
    async fn guest_list(
        &self,
        s: Option<String>,
        node: Option<String>,
        tag: Option<String>,
    ) -> Result<bool, CliError> {
        let s = s.as_deref().map(parse_state).transpose()?;
        let guests = guests_api::guest_list(
            self.config(),
            s,
            node.as_deref(),
            tag.as_deref(),
            Some(1000),
            None,
        )
        .await?;
        let nodes = self.node_names().await;
        emit(self.out, &guests, || {
            let mut t = Table::new(&["name", "state", "node", "ip", "cpus", "memory", "age"]);
            for g in &guests {
                t.row(vec![
                    g.name.clone(),
                    state(&g.state),
                    nodes.of(&g.node_id),
                    opt(&g.ip),
                    g.cpus.to_string(),
                    mib(u64::from(g.memory_mib)),
                    age(&g.created_at),
                ]);
            }
            t
        });
        Ok(true)
    }

    /// `guest template`: a new template `name` from `guest`'s disk or one of its snapshots.
    async fn guest_template(
        &self,
        guest: String,
        name: String,
        snapshot: Option<String>,
        wait: bool,
    ) -> Result<bool, CliError> {
        let mut req = models::GuestToTemplate::new(name);
        req.snapshot = snapshot;
        let a = corral_client::apis::resources_api::guest_to_template(self.config(), &guest, req)
            .await?;
        if wait {
            return self.follow(&[a.operation_id]).await;
        }
        emit_record(self.out, &a);
        Ok(true)
    }

    /// `guest ha`.
    async fn guest_ha(&self, guest: &str, on: bool, wait: bool) -> Result<bool, CliError> {
        let a = guests_api::guest_set_ha(self.config(), guest, models::GuestHa::new(on)).await?;
        if wait {
            return self.follow(&[a.operation_id]).await;
        }
        emit_record(self.out, &a);
        Ok(true)
    }

    /// `guest migrate`.
    async fn guest_migrate(&self, m: MigrateArgs) -> Result<bool, CliError> {
        let body = models::MigrateGuest {
            node_id: m.to,
            bandwidth_mib: m.bandwidth_mib,
            auto_converge: Some(m.auto_converge),
            postcopy: Some(m.postcopy),
        };
        let a = guests_api::guest_migrate(self.config(), &m.guest, body).await?;
        if m.wait {
            return self.follow(&[a.operation_id]).await;
        }
        emit_record(self.out, &a);
        Ok(true)
    }

    /// `guest resize` to `size`.
    async fn guest_resize(
        &self,
        guest: String,
        size: models::GuestSize,
        wait: bool,
    ) -> Result<bool, CliError> {
        let a = guests_api::guest_resize(self.config(), &guest, size).await?;
        if wait {
            return self.follow(&[a.operation_id]).await;
        }
        emit_record(self.out, &a);
        Ok(true)
    }

    /// `guest delete`: one operation per guest; a guest that fails does not stop the rest.
    async fn guest_delete(&self, guests: Vec<String>, wait: bool) -> Result<bool, CliError> {
        let c = self.config();
        let (accepted, all) = self
            .each(&guests, |g| async move {
                Ok(guests_api::guest_delete(c, &g).await?)
            })
            .await;
        Ok(self.started(&accepted, wait).await? && all)
    }

    /// `guest hostname`: the change, and its operation followed with `wait`.
    async fn guest_hostname(
        &self,
        guest: String,
        hostname: String,
        wait: bool,
    ) -> Result<bool, CliError> {
        let mut u = UpdateGuest::new();
        u.hostname = Some(hostname);
        let change = guests_api::guest_update(self.config(), &guest, u).await?;
        emit_record(self.out, &change);
        self.then_follow(change.operation_id, wait).await
    }

    /// `guest password`: the reset `r`; a generated password is printed once.
    async fn guest_password(
        &self,
        guest: String,
        r: ResetPassword,
        wait: bool,
    ) -> Result<bool, CliError> {
        let reset = guests_api::guest_reset_password(self.config(), &guest, r).await?;
        if let Some(pw) = &reset.password {
            // Shown once: corral keeps only its hash.
            eprintln!("new password (shown once): {pw}");
        }
        emit_record(self.out, &reset);
        self.then_follow(reset.operation_id, wait).await
    }

    async fn power(
        &self,
        p: Power,
        action: GuestAction,
        timeout: Option<u64>,
    ) -> Result<bool, CliError> {
        let c = self.config();
        let (accepted, all) = self
            .each(&p.guests, |g| async move {
                Ok(guests_api::guest_action(c, &g, action, timeout).await?)
            })
            .await;
        Ok(self.started(&accepted, p.wait).await? && all)
    }

    /// Operations started, one per guest: a table of them, or followed to their end.
    async fn started(&self, accepted: &[models::Accepted], wait: bool) -> Result<bool, CliError> {
        let ids: Vec<String> = accepted.iter().map(|a| a.operation_id.clone()).collect();
        self.accepted(accepted, wait, &ids).await
    }

    async fn accepted(
        &self,
        accepted: &[models::Accepted],
        wait: bool,
        ids: &[String],
    ) -> Result<bool, CliError> {
        if wait && self.out == super::Output::Table {
            return if ids.is_empty() {
                Ok(true)
            } else {
                self.follow(ids).await
            };
        }
        emit(self.out, &accepted, || {
            let mut t = Table::new(&["operation", "guest"]);
            for a in accepted {
                t.row(vec![a.operation_id.clone(), a.guest_id.clone()]);
            }
            t
        });
        if wait {
            for id in ids {
                self.session.wait(id).await?;
            }
        }
        Ok(true)
    }

    async fn then_follow(&self, op: Option<String>, wait: bool) -> Result<bool, CliError> {
        match op {
            Some(id) if wait => self.follow(&[id]).await,
            _ => Ok(true),
        }
    }
}
