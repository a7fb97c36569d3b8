//! Process shutdown: one token, cancelled on SIGTERM or Ctrl-C, that every
//! server and background task of the process watches.
pub use tokio_util::sync::CancellationToken;

/// A token cancelled when the process receives SIGTERM or SIGINT. The handlers
/// are installed before this returns, so there is no window in which a signal
/// still kills the process outright. Must be called inside a Tokio runtime.
pub fn on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::spawn(async move {
                    let which = tokio::select! {
                        _ = term.recv() => "SIGTERM",
                        _ = int.recv() => "SIGINT",
                    };
                    tracing::info!(signal = which, "shutdown signal received; draining");
                    trigger.cancel();
                });
            }
            (Err(err), _) | (_, Err(err)) => {
                tracing::error!(error = %err, "cannot install signal handlers; stop with SIGKILL");
            }
        }
    }
    #[cfg(not(unix))]
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        trigger.cancel();
    });
    token
}
