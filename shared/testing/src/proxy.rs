//! A TCP proxy a test can cut: the way to take a dependency (PostgreSQL)
//! away from one service for a while without stopping it for everyone.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub struct TcpProxy {
    port: u16,
    up: Arc<AtomicBool>,
    /// Bumped on every cut; connections opened before it end.
    generation: watch::Sender<u64>,
    accept: JoinHandle<()>,
}

impl TcpProxy {
    /// Listens on a free port of 127.0.0.1 and forwards to `target`.
    pub async fn start(target: SocketAddr) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("proxy bind: {e}"));
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        let up = Arc::new(AtomicBool::new(true));
        let (generation, _) = watch::channel(0u64);
        let accept = tokio::spawn(accept_loop(
            listener,
            target,
            up.clone(),
            generation.clone(),
        ));
        TcpProxy {
            port,
            up,
            generation,
            accept,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Drops every open connection and refuses new ones until [`restore`].
    ///
    /// [`restore`]: TcpProxy::restore
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.generation.send_modify(|g| *g += 1);
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    up: Arc<AtomicBool>,
    generation: watch::Sender<u64>,
) {
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            continue;
        };
        if !up.load(Ordering::SeqCst) {
            // Refused: the peer sees the connection closed at once.
            drop(inbound);
            continue;
        }
        let mut cut = generation.subscribe();
        tokio::spawn(async move {
            let Ok(mut outbound) = TcpStream::connect(target).await else {
                return;
            };
            tokio::select! {
                _ = copy_bidirectional(&mut inbound, &mut outbound) => {}
                _ = cut.changed() => {}
            }
        });
    }
}
