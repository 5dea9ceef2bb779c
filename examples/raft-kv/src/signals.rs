//! When to stop: on SIGINT (Ctrl-C), SIGTERM (`kill`, service managers) or SIGHUP (the terminal
//! went away), and, for a node started by the cluster launcher, when its standard input ends:
//! the launcher holds the other end of that pipe, so however the launcher ends (a signal, a
//! crash, `kill -9`), the kernel closes the pipe and its nodes stop too.

use std::io;

/// The stop signals, listened to from creation on (create it before starting anything that
/// must not outlive this process, so no signal falls between the two).
pub struct StopSignals {
    #[cfg(unix)]
    signals: [(tokio::signal::unix::Signal, &'static str); 3],
}

impl StopSignals {
    /// Starts listening (from within a tokio runtime). From then on these signals no longer
    /// end the process at once: [`StopSignals::recv`] reports them.
    pub fn new() -> io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(StopSignals {
                signals: [
                    (signal(SignalKind::interrupt())?, "SIGINT"),
                    (signal(SignalKind::terminate())?, "SIGTERM"),
                    (signal(SignalKind::hangup())?, "SIGHUP"),
                ],
            })
        }
        #[cfg(not(unix))]
        Ok(StopSignals {})
    }

    /// Waits for the next stop signal and names it.
    pub async fn recv(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            let [(interrupt, a), (terminate, b), (hangup, c)] = &mut self.signals;
            // `None` means the signal driver is gone (the runtime is stopping): stop too.
            tokio::select! {
                _ = interrupt.recv() => a,
                _ = terminate.recv() => b,
                _ = hangup.recv() => c,
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await; // An error means no handler: stop now.
            "Ctrl-C"
        }
    }
}

/// Starts watching standard input on a thread of its own (which the process's exit ends): the
/// receiver completes (with an error, as the sender is dropped) once stdin reaches its end or
/// cannot be read.
pub fn watch_stdin() -> io::Result<tokio::sync::oneshot::Receiver<()>> {
    let (sender, receiver) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new().name("stdin-watch".to_owned()).spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink()); // Ends the same way.
        drop(sender);
    })?;
    Ok(receiver)
}
