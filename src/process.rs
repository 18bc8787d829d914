//! What every corral process sets up the same way: its log subscriber and its shutdown
//! signal. Shared by the `corral` binary and the lean `corral-node` binary.
//!
//! Logs (S28, S45):
//! * by default to stderr, which systemd sends to the journal; `CORRAL_LOG` (an
//!   `EnvFilter` directive) chooses what is written, `info` for corral and `warn` for the
//!   libraries that are chatty at `info` unless it says otherwise, so there is no debug
//!   output unless asked;
//! * with `CORRAL_LOG_DIR` set, to files there instead: `corral.<date>.log`, a new file
//!   each day, the newest `CORRAL_LOG_KEEP` (14 by default) kept;
//! * whatever the destination, lines logged while a node runs a step are also kept for
//!   that operation's log (`node::oplog`).

use tokio::sync::watch;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// Files kept when logging to a directory, unless `CORRAL_LOG_KEEP` says otherwise.
const DEFAULT_LOG_FILES: usize = 14;

pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CORRAL_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,sqlx=warn,apalis=warn,apalis_redis=warn,poem=warn")
    });
    let files = std::env::var_os("CORRAL_LOG_DIR").map(|dir| {
        let keep = std::env::var("CORRAL_LOG_KEEP")
            .ok()
            .and_then(|k| k.parse().ok())
            .unwrap_or(DEFAULT_LOG_FILES);
        crate::modes::private_dir(std::path::Path::new(&dir)).ok();
        tracing_appender::rolling::Builder::new()
            .rotation(tracing_appender::rolling::Rotation::DAILY)
            .filename_prefix("corral")
            .filename_suffix("log")
            .max_log_files(keep.max(1))
            .build(&dir)
            .map_err(|e| format!("{}: {e}", std::path::Path::new(&dir).display()))
    });
    match files {
        Some(Ok(appender)) => tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(appender)
                    .with_filter(filter),
            )
            .with(crate::node::oplog::Capture.with_filter(LevelFilter::DEBUG))
            .init(),
        other => {
            tracing_subscriber::registry()
                .with(
                    tracing_subscriber::fmt::layer()
                        .with_writer(std::io::stderr)
                        .with_filter(filter),
                )
                .with(crate::node::oplog::Capture.with_filter(LevelFilter::DEBUG))
                .init();
            if let Some(Err(e)) = other {
                tracing::warn!("cannot log to files in CORRAL_LOG_DIR ({e}): logging to stderr");
            }
        }
    }
}

/// A receiver that turns `true` on Ctrl-C or SIGTERM. Must be called inside a runtime.
pub fn shutdown_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { if let Some(t) = term.as_mut() { t.recv().await; } else { std::future::pending::<()>().await } } => {}
        }
        let _ = tx.send(true);
    });
    rx
}
