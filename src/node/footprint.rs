//! The agent's idle footprint.
//!
//! The agent shares its host with guests that need the memory, so an idle agent should
//! hold little. Two things made the full `corral` binary large as an agent:
//! - **Code.** One binary with the controller, the API, the CLI and the bench is 47 MB,
//!   and the page cache maps its text in large folios, so an agent that runs a small part
//!   of it still kept about 18 MiB of it resident.
//! - **Heap.** The binary's allocator is mimalloc, chosen for the controller's many
//!   threads. It reserves its arena with `MADV_HUGEPAGE`, so on hosts whose transparent
//!   huge pages are set to "madvise" (Debian's default) every first touch commits 2 MiB.
//!
//! So the agent has its own binary, `corral-node` (`src/bin/corral-node.rs`): the node
//! code alone, with the system allocator. [`hand_over`] makes `corral agent` run it when
//! it is installed beside `corral` (both are built and installed together), so every way
//! of starting an agent gets the lean one. Without it, the agent runs inside `corral`,
//! restarted once with mimalloc's huge pages off (`MIMALLOC_ALLOW_THP=0`; mimalloc reads
//! it before `main`, so setting it from inside is too late). An administrator's own
//! setting of that variable is kept.

use std::os::unix::process::CommandExt;
use std::path::Path;

/// The mimalloc option the fallback sets.
const ALLOW_THP: &str = "MIMALLOC_ALLOW_THP";

/// The lean agent binary's name, looked for beside the running executable.
pub const NODE_BINARY: &str = "corral-node";

/// Replaces this process with `corral-node` from the same directory, passing the config
/// file on; failing that, with itself without mimalloc's huge pages. Returns only when
/// neither applies or the `exec` failed: the agent then runs in this process, only larger.
pub fn hand_over(config: Option<&Path>) {
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    if let Some(node) = exe.parent().map(|d| d.join(NODE_BINARY)) {
        if node.is_file() {
            let mut cmd = std::process::Command::new(&node);
            if let Some(c) = config {
                cmd.arg("--config").arg(c);
            }
            let err = cmd.exec();
            eprintln!(
                "warning: could not start {} ({err}); running the agent in this process",
                node.display()
            );
        }
    }
    if std::env::var_os(ALLOW_THP).is_some() {
        return;
    }
    let err = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env(ALLOW_THP, "0")
        .exec();
    eprintln!("warning: could not restart the agent without huge pages ({err}); going on");
}
