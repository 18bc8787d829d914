//! `corral-node`: the node agent alone, for KVM hosts.
//!
//! It runs the same agent as `corral agent` (`corral::node::run`), built without the
//! controller, the API, the CLI and the bench, and with the system allocator. The agent
//! sits beside guests that need the host's memory, so what it keeps resident matters
//! more than allocation speed: linked alone it maps a fraction of the full binary's
//! code, and glibc's malloc holds less idle heap than the controller's mimalloc.
//! `corral agent` hands over to this binary when it is installed beside it.

use std::path::PathBuf;

use clap::Parser;
use corral::config::Config;
use corral::process::{init_tracing, shutdown_signal};

/// The corral node agent for this host.
#[derive(Parser)]
#[command(name = "corral-node", version)]
struct Args {
    /// TOML config file (its [node] table); CORRAL_* variables override it.
    #[arg(long, short, env = "CORRAL_CONFIG")]
    config: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Two workers: the agent's work is waiting on libvirt, Redis and child processes.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        init_tracing();
        let cfg = Config::load(args.config.as_deref())?;
        corral::node::run(cfg.node, shutdown_signal()).await?;
        Ok(())
    })
}
