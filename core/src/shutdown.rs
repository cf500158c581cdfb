//! Graceful shutdown shared by every component.
//!
//! A [`Shutdown`] is a cheap, cloneable token. Long-lived loops take one and race it with their
//! work (`tokio::select!`); whoever owns the process calls [`Shutdown::trigger`], or
//! [`Shutdown::on_signals`] does on SIGINT/SIGTERM. Draining has a deadline: after it, the owner
//! stops waiting (a second signal also forces the exit).

use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Tells every task of a component that it is time to drain and stop.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts the drain. Idempotent.
    pub fn trigger(&self) {
        self.token.cancel();
    }

    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves once the drain has started.
    pub async fn wait(&self) {
        self.token.cancelled().await
    }

    /// A token that fires with this one, or on its own (for one sub-component).
    pub fn child(&self) -> Shutdown {
        Shutdown {
            token: self.token.child_token(),
        }
    }

    /// Spawns a task that triggers this shutdown on the first SIGINT or SIGTERM and exits the
    /// process with status 130 on a second one, for users who do not want to wait for the drain.
    pub fn on_signals(&self) {
        let this = self.clone();
        tokio::spawn(async move {
            if wait_signal().await.is_err() {
                return;
            }
            tracing::info!("signal received: draining (send it again to exit at once)");
            this.trigger();
            if wait_signal().await.is_ok() {
                tracing::warn!("second signal: exiting without finishing the drain");
                std::process::exit(130);
            }
        });
    }
}

async fn wait_signal() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::select! {
            _ = term.recv() => Ok(()),
            _ = int.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await
    }
}

/// Awaits `drain`, giving up after `deadline`. Returns whether the drain finished in time.
pub async fn drain_with_deadline<F: std::future::Future<Output = ()>>(
    drain: F,
    deadline: Duration,
) -> bool {
    match tokio::time::timeout(deadline, drain).await {
        Ok(()) => true,
        Err(_) => {
            tracing::warn!(?deadline, "drain did not finish before its deadline");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn trigger_wakes_waiters_and_children() {
        let s = Shutdown::new();
        let child = s.child();
        let waiter = tokio::spawn({
            let s = s.clone();
            async move { s.wait().await }
        });
        assert!(!child.is_triggered());
        s.trigger();
        waiter.await.unwrap();
        assert!(child.is_triggered());
    }

    #[tokio::test(start_paused = true)]
    async fn drain_deadline_gives_up() {
        let finished = drain_with_deadline(std::future::pending(), Duration::from_secs(5)).await;
        assert!(!finished);
        assert!(drain_with_deadline(async {}, Duration::from_secs(5)).await);
    }
}
