//! The agent's idle footprint.
//!
//! The binary's allocator is mimalloc, chosen for the controller's many threads (HTTP,
//! SQLite rows, JSON). mimalloc reserves its arena with `MADV_HUGEPAGE`, so on hosts
//! whose transparent huge pages are set to "madvise" (Debian's default) every first
//! touch of a region commits 2 MiB: an idle agent held 13.6 MiB of heap, against 5 MiB
//! with huge pages off. The agent moves little memory and shares its host with guests
//! that need it, so it runs with mimalloc's huge pages off.
//!
//! mimalloc reads that option (`MIMALLOC_ALLOW_THP`) from the environment when it
//! reserves its first arena, before `main` runs, so setting it from inside is too late:
//! [`lean_agent`] starts the agent again, once, with the option in its environment (the
//! same process, `exec`). An administrator's own setting of the variable is kept.

use std::os::unix::process::CommandExt;

/// The mimalloc option this module sets.
const ALLOW_THP: &str = "MIMALLOC_ALLOW_THP";

/// Re-runs this process with mimalloc's huge pages off unless the environment already
/// says; returns only when it does not need to, or when the `exec` failed (the agent
/// then runs as it is, only larger).
pub fn lean_agent() {
    if std::env::var_os(ALLOW_THP).is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let err = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env(ALLOW_THP, "0")
        .exec();
    eprintln!("warning: could not restart the agent without huge pages ({err}); going on");
}
