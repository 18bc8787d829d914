//! The `corral` binary: CLI parsing and role dispatch.
//!
//! The CLI client ([`cli`]) and `corral bench` ([`bench`]) are modules of this binary, not of
//! the library: no library user needs them, so the library the controller and the node are
//! built from stays free of them.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};
use corral::process::{init_tracing, shutdown_signal};

use cli::{Client, ClientOpts};
use corral::config::Config;

mod bench;
mod cli;

/// The controller makes many short-lived allocations on many threads (HTTP, SQLite rows,
/// JSON); under load glibc's malloc spent much of its time consolidating and locking.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "corral",
    version,
    about = "A lightweight private cloud for KVM"
)]
struct Cli {
    /// TOML config file ([controller] and [node] tables); CORRAL_* variables override it.
    #[arg(long, short, env = "CORRAL_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(flatten)]
    client: ClientOpts,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Controller and a local node in one process: the single-machine setup.
    Up {
        /// Where the database, Redis data, disk images and the admin token live.
        #[arg(long, env = "CORRAL_DATA_DIR", default_value = "/var/lib/corral")]
        data_dir: PathBuf,
    },
    /// The controller: API, database, saga engine.
    Controller,
    /// The node agent for this host (the hosts as the controller sees them: `corral node`).
    Agent,
    /// Print the OpenAPI document.
    Openapi,
    /// Print the operation kinds and their saga steps, as this binary runs them.
    Kinds,
    /// Measure: raw vs end-to-end create rate, RSS, TCG guest timings, event latency, reads.
    Bench(BenchArgs),
    /// Guests.
    #[command(subcommand)]
    Guest(cli::GuestCmd),
    /// Operations.
    #[command(subcommand)]
    Op(cli::OpCmd),
    /// Templates.
    #[command(subcommand)]
    Template(cli::TemplateCmd),
    /// IP pools.
    #[command(subcommand)]
    Pool(cli::PoolCmd),
    /// Nodes: the hosts guests run on.
    #[command(subcommand)]
    Node(cli::NodeCmd),
    /// Data disks: create, attach, detach, grow, delete.
    #[command(subcommand)]
    Disk(cli::DiskCmd),
    /// Guest snapshots: take, list, revert, delete.
    #[command(subcommand)]
    Snapshot(cli::SnapshotCmd),
    /// OS-init profiles (Rhai).
    #[command(subcommand)]
    Profile(cli::ScriptCmd),
    /// Boot scripts (Rhai).
    #[command(subcommand)]
    Bootscript(cli::ScriptCmd),
    /// Boot jobs: queue, list, pending, cancel.
    #[command(subcommand)]
    Bootjob(cli::BootJobCmd),
    /// Controller plugins.
    #[command(subcommand)]
    Plugin(cli::PluginCmd),
    /// Your API tokens: create (named, optionally expiring), list, revoke.
    #[command(subcommand)]
    Token(cli::TokenCmd),
    /// Users and roles; `corral user passwd` changes your own password.
    #[command(subcommand)]
    User(cli::UserCmd),
    /// The audit trail, newest first: who did what, from where, to what (administrators).
    Audit(cli::AuditArgs),
    /// System settings: retention, mail for password recovery (administrators).
    #[command(subcommand)]
    Settings(cli::SettingsCmd),
    /// Print a shell completion script: `corral completions bash > /etc/bash_completion.d/corral`.
    Completions { shell: clap_complete::Shell },
}

/// The arguments of `corral bench`.
#[derive(clap::Args)]
struct BenchArgs {
    /// Evaluations of each shipped Rhai script for the script-cost figures (0: skip).
    #[arg(long, default_value_t = 2000)]
    scripts: usize,
    /// Only the script-cost figures.
    #[arg(long)]
    scripts_only: bool,
    /// guest.create operations timed end to end.
    #[arg(long, default_value_t = 1000)]
    guests: usize,
    /// Total guests held when the controller's RSS is read.
    #[arg(long, default_value_t = 10000)]
    rss_guests: usize,
    /// Domains for the raw test-driver rate.
    #[arg(long, default_value_t = 2000)]
    raw: usize,
    /// Test guest template (tests/fixtures): also time one real TCG guest and events.
    #[arg(long)]
    tcg: Option<PathBuf>,
    /// Lifecycle events timed to the SSE client (with --tcg).
    #[arg(long, default_value_t = 20)]
    events: usize,
    /// Simulated nodes for the placement and heartbeat-load figures (0: skip).
    #[arg(long, default_value_t = 100)]
    fleet: usize,
    /// Records of each kind (guests, operations, leased addresses) for the read
    /// figures: list endpoints under 64 connections, empty and loaded (0: skip).
    #[arg(long, default_value_t = 10000)]
    reads: usize,
    /// Only the read figures.
    #[arg(long)]
    reads_only: bool,
    /// Timed seconds per endpoint for the read figures.
    #[arg(long, default_value_t = 3.0)]
    reads_secs: f64,
    /// Only the storage figures: snapshot create and revert at 1 and 16 GiB on the
    /// local qemu:///system, upload against cp, template against qemu-img.
    #[arg(long)]
    storage_only: bool,
    /// The storage figures too, in the same run as the others.
    #[arg(long)]
    storage: bool,
    /// Sampling rounds (15 s apart) of 100 simulated nodes × 100 guests for the metrics
    /// figures (0: skip).
    #[arg(long, default_value_t = 4)]
    metrics_rounds: usize,
    /// Only the metrics figures.
    #[arg(long)]
    metrics_only: bool,
}

impl From<BenchArgs> for bench::BenchOpts {
    fn from(a: BenchArgs) -> Self {
        bench::BenchOpts {
            scripts: a.scripts,
            scripts_only: a.scripts_only,
            guests: a.guests,
            rss_guests: a.rss_guests,
            raw: a.raw,
            tcg: a.tcg,
            events: a.events,
            fleet: a.fleet,
            reads: a.reads,
            reads_only: a.reads_only,
            reads_secs: a.reads_secs,
            storage_only: a.storage_only,
            storage: a.storage,
            metrics_rounds: a.metrics_rounds,
            metrics_only: a.metrics_only,
        }
    }
}

async fn bind(addr: std::net::SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let opts = cli.client.clone();
    let client_opts = move || -> anyhow::Result<Client> { Ok(Client::new(opts.clone())?) };
    match cli.cmd {
        Cmd::Up { data_dir } => up(cli.config.as_deref(), &data_dir).await?,
        Cmd::Controller => {
            init_tracing();
            let cfg = Config::load(cli.config.as_deref())?;
            let listener = bind(cfg.controller.listen).await?;
            println!("corral API on http://{}/api/v1", listener.local_addr()?);
            corral::controller::run(cfg.controller, listener, shutdown_signal(), None).await?;
        }
        Cmd::Agent => {
            // The lean `corral-node` when installed beside this binary (node::footprint).
            corral::node::footprint::hand_over(cli.config.as_deref());
            init_tracing();
            let cfg = Config::load(cli.config.as_deref())?;
            corral::node::run(cfg.node, shutdown_signal()).await?;
        }
        Cmd::Openapi => println!("{}", corral::controller::api::spec_json()),
        Cmd::Kinds => print!("{}", corral::jobs::Catalog::builtin()?.table()),
        Cmd::Bench(args) => bench::run(args.into()).await?,
        Cmd::Guest(c) => client(client_opts, |k| async move { k.guest(c).await }).await?,
        Cmd::Op(c) => client(client_opts, |k| async move { k.op(c).await }).await?,
        Cmd::Template(c) => client(client_opts, |k| async move { k.template(c).await }).await?,
        Cmd::Pool(c) => client(client_opts, |k| async move { k.pool(c).await }).await?,
        Cmd::Profile(c) => {
            client(client_opts, |k| async move {
                k.scripts(cli::ScriptKind::Profile, c).await
            })
            .await?
        }
        Cmd::Bootscript(c) => {
            client(client_opts, |k| async move {
                k.scripts(cli::ScriptKind::Boot, c).await
            })
            .await?
        }
        Cmd::Bootjob(c) => client(client_opts, |k| async move { k.boot_jobs(c).await }).await?,
        Cmd::Node(c) => client(client_opts, |k| async move { k.node(c).await }).await?,
        Cmd::Disk(c) => client(client_opts, |k| async move { k.disk(c).await }).await?,
        Cmd::Snapshot(c) => client(client_opts, |k| async move { k.snapshot(c).await }).await?,
        Cmd::Plugin(c) => client(client_opts, |k| async move { k.plugin(c).await }).await?,
        Cmd::Token(c) => client(client_opts, |k| async move { k.token(c).await }).await?,
        Cmd::User(c) => client(client_opts, |k| async move { k.user(c).await }).await?,
        Cmd::Audit(a) => client(client_opts, |k| async move { k.audit(a).await }).await?,
        Cmd::Settings(c) => client(client_opts, |k| async move { k.settings(c).await }).await?,
        Cmd::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "corral", &mut std::io::stdout());
        }
    }
    Ok(())
}

/// `corral up`: a private Redis, the controller and the local node in this process, all
/// rooted in `data_dir` unless configured otherwise; returns when they have stopped.
async fn up(config: Option<&Path>, data_dir: &Path) -> anyhow::Result<()> {
    init_tracing();
    let mut cfg = Config::load(config)?;
    // Single-machine defaults, rooted in the data directory unless configured.
    if std::env::var_os("CORRAL_DATABASE").is_none() && config.is_none() {
        cfg.controller.database = data_dir.join("corral.db");
        cfg.controller.data_dir = data_dir.to_path_buf();
        cfg.node.storage_dir = data_dir.join("images");
    }
    let backoff = corral::up::supervise::Backoff::new(&cfg.up);
    let (redis_url, mut redis) =
        corral::up::ensure_redis(&cfg.controller.redis_url, data_dir, backoff).await?;
    cfg.controller.redis_url = redis_url;
    let node_id = corral::node::identity(&cfg.node)?;
    cfg.controller.local_node = Some(node_id.clone());
    if !cfg.node.hypervisor_uri.starts_with("test:") {
        corral::up::ensure_bridge(&cfg.node.vm_network_bridge).await;
    }
    let listener = up_listener(&mut cfg).await?;
    let stop = shutdown_signal();
    // The local node starts once the controller enrolled it (its Redis user).
    let (started, running) = tokio::sync::oneshot::channel();
    let controller = tokio::spawn(corral::controller::run(
        cfg.controller,
        listener,
        stop.clone(),
        Some(started),
    ));
    let Ok(running) = running.await else {
        controller.await??;
        anyhow::bail!("the controller stopped before it started");
    };
    if let Some(restarts) = redis.as_mut().and_then(|r| r.take_restarts()) {
        tokio::spawn(corral::up::record_restarts(restarts, running.store.clone()));
    }
    let mut node_cfg = cfg.node.clone();
    node_cfg.node_id = Some(node_id);
    if let Some(url) = running.local_node_redis_url {
        node_cfg.redis_url = url;
    }
    let node = tokio::spawn(corral::node::run(node_cfg, stop));
    controller.await??;
    node.await??;
    Ok(())
}

/// The API's listener for `corral up`, announced with the admin token's file; the local
/// node is pointed at it when no controller URL is configured.
async fn up_listener(cfg: &mut Config) -> anyhow::Result<tokio::net::TcpListener> {
    let listener = bind(cfg.controller.listen).await?;
    println!(
        "corral API on http://{}/api/v1 (Swagger UI: /docs, health: /healthz)",
        listener.local_addr()?
    );
    // Where the local node fetches template images it does not see in its image
    // directories (on one machine it sees them all, unless configured otherwise).
    if cfg.node.controller_url.is_none() {
        let mut at = listener.local_addr()?;
        if at.ip().is_unspecified() {
            at.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        cfg.node.controller_url = Some(format!("http://{at}"));
    }
    println!(
        "admin token file: {}",
        cfg.controller.data_dir.join("admin.token").display()
    );
    Ok(listener)
}

/// Runs a client command; exit status 1 when an operation or one of several items failed,
/// 2 when the command could not be carried out.
async fn client<F, Fut>(opts: impl FnOnce() -> anyhow::Result<Client>, run: F) -> anyhow::Result<()>
where
    F: FnOnce(std::sync::Arc<Client>) -> Fut,
    Fut: std::future::Future<Output = Result<bool, cli::CliError>>,
{
    let k = match opts() {
        Ok(k) => std::sync::Arc::new(k),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2)
        }
    };
    match run(k.clone()).await {
        Ok(true) => Ok(()),
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!(
                "error: {}",
                cli::output::printable(&k.explain(e).to_string())
            );
            std::process::exit(2)
        }
    }
}
