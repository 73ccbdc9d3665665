//! Graceful shutdown: one trigger, many listeners (cloned into every task),
//! and the process signals that pull the trigger. The listeners are
//! `tokio_util`'s [`CancellationToken`]; the trigger is the one place that
//! cancels it, so a task that only listens cannot end everyone's work.

use tokio_util::sync::CancellationToken;

/// Pulled once (or dropped); every [`Shutdown`] of its channel then resolves.
#[derive(Debug)]
pub struct ShutdownTrigger {
    token: CancellationToken,
}

impl ShutdownTrigger {
    pub fn trigger(&self) {
        self.token.cancel();
    }

    pub fn subscribe(&self) -> Shutdown {
        Shutdown {
            token: self.token.clone(),
        }
    }
}

impl Drop for ShutdownTrigger {
    fn drop(&mut self) {
        self.trigger();
    }
}

#[derive(Debug, Clone)]
pub struct Shutdown {
    token: CancellationToken,
}

impl Shutdown {
    /// Runs `job` now and then every `period`, until shutdown (a run in
    /// progress finishes first): the retention jobs' loop.
    pub async fn every<F, Fut>(mut self, period: std::time::Duration, mut job: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        loop {
            job().await;
            tokio::select! {
                _ = self.recv() => return,
                _ = tokio::time::sleep(period) => {}
            }
        }
    }

    /// A shutdown for work beside a service that must end when the service
    /// does, even when the service ends on its own (an error) rather than
    /// by this shutdown: it resolves on this one or on its own trigger.
    pub fn child(&self) -> (ShutdownTrigger, Shutdown) {
        let token = self.token.child_token();
        (
            ShutdownTrigger {
                token: token.clone(),
            },
            Shutdown { token },
        )
    }

    /// Resolves once shutdown has been triggered (at once if it already was).
    pub async fn recv(&mut self) {
        self.token.cancelled().await
    }

    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }
}

pub fn channel() -> (ShutdownTrigger, Shutdown) {
    let token = CancellationToken::new();
    (
        ShutdownTrigger {
            token: token.clone(),
        },
        Shutdown { token },
    )
}

/// A shutdown pulled by the process signals (see [`signal`]): what a
/// service's `main` runs with.
pub fn on_signal() -> Shutdown {
    let (trigger, shutdown) = channel();
    tokio::spawn(async move {
        signal().await;
        trigger.trigger();
    });
    shutdown
}

/// Ends a service's `main`: a failure is logged and printed on one line,
/// and the process exits with status 1.
pub fn exit_on_failure(binary: &str, result: anyhow::Result<()>) {
    if let Err(e) = result {
        tracing::error!(error = %format!("{e:#}"), "{binary} failed");
        eprintln!("{binary}: {e:#}");
        std::process::exit(1);
    }
}

/// Resolves on SIGTERM (what Docker, Kubernetes and Render send) or Ctrl-C.
pub async fn signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal received");
}
