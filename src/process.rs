//! What every corral process sets up the same way: its log subscriber and its shutdown
//! signal. Shared by the `corral` binary and the lean `corral-node` binary.

use tokio::sync::watch;

/// Logs to stderr, filtered by `CORRAL_LOG` (an `EnvFilter` directive); by default `info`
/// for corral and `warn` for the libraries that are chatty at `info`.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CORRAL_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,sqlx=warn,apalis=warn,apalis_redis=warn,poem=warn")
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
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
