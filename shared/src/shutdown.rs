//! Graceful shutdown: one trigger, many listeners (cloned into every task),
//! and the process signals that pull the trigger.

use tokio::sync::watch;

/// Pulled once; every [`Shutdown`] cloned from its channel then resolves.
#[derive(Debug)]
pub struct ShutdownTrigger {
    tx: watch::Sender<bool>,
}

impl ShutdownTrigger {
    pub fn trigger(&self) {
        let _ = self.tx.send(true);
    }

    pub fn subscribe(&self) -> Shutdown {
        Shutdown {
            rx: self.tx.subscribe(),
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
    rx: watch::Receiver<bool>,
}

impl Shutdown {
    /// Resolves once shutdown has been triggered (at once if it already was).
    pub async fn recv(&mut self) {
        // An error means the trigger is gone, which also means shutdown.
        let _ = self.rx.wait_for(|down| *down).await;
    }

    pub fn is_triggered(&self) -> bool {
        *self.rx.borrow()
    }
}

pub fn channel() -> (ShutdownTrigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (ShutdownTrigger { tx }, Shutdown { rx })
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
