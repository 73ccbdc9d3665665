//! A real Kafka-protocol broker for tests: nisshi with memory storage on a
//! free port, owned by the test (stopped on drop, and killed with the test
//! process if that dies first), or an external broker named by
//! `TEST_KAFKA_BOOTSTRAP_SERVERS`.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct Broker {
    bootstrap: String,
    port: u16,
    child: Mutex<Option<Child>>,
    bin: Option<PathBuf>,
}

/// Where `scripts/install-broker.sh` puts nisshi.
pub fn default_nisshi_path() -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    cache.join("todo-platform/nisshi-0.8.1/bin/nisshi")
}

impl Broker {
    /// Starts a broker of this test's own (or uses the external one).
    pub fn start() -> Broker {
        if let Ok(external) = std::env::var("TEST_KAFKA_BOOTSTRAP_SERVERS") {
            if !external.trim().is_empty() {
                return Broker {
                    bootstrap: external,
                    port: 0,
                    child: Mutex::new(None),
                    bin: None,
                };
            }
        }
        let bin = std::env::var_os("NISSHI_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(default_nisshi_path);
        assert!(
            bin.exists(),
            "no broker for the tests: {} does not exist. Run scripts/install-broker.sh \
             (or set NISSHI_BIN, or TEST_KAFKA_BOOTSTRAP_SERVERS to a running broker)",
            bin.display()
        );
        let port = free_port();
        let broker = Broker {
            bootstrap: format!("127.0.0.1:{port}"),
            port,
            child: Mutex::new(None),
            bin: Some(bin),
        };
        broker.spawn();
        broker
    }

    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// Stops the broker (kill -9: an outage, not a goodbye).
    pub fn stop(&self) {
        assert!(
            self.bin.is_some(),
            "this test stops and restarts the broker: it needs one it started itself \
             (unset TEST_KAFKA_BOOTSTRAP_SERVERS)"
        );
        if let Some(mut child) = self.lock().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while port_open(self.port) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts it again on the same port. Memory storage: it comes back empty,
    /// so topics must be created again.
    pub fn restart(&self) {
        self.stop();
        self.spawn();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn spawn(&self) {
        let Some(bin) = &self.bin else { return };
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::env::temp_dir().join(format!("nisshi-{}.log", self.port));
        let log_file = std::fs::File::create(&log).ok();
        let mut cmd = Command::new(bin);
        cmd.args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
            "--storage-engine",
            "memory://nisshi/",
            "--group-initial-rebalance-delay",
            "0ms",
        ])
        .stdin(Stdio::null());
        match log_file.and_then(|f| f.try_clone().ok().map(|g| (f, g))) {
            Some((out, err)) => {
                cmd.stdout(out).stderr(err);
            }
            None => {
                cmd.stdout(Stdio::null()).stderr(Stdio::null());
            }
        }
        kill_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("could not start {}: {e}", bin.display()));
        *self.lock() = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !port_open(self.port) {
            assert!(
                Instant::now() < deadline,
                "nisshi did not open port {} within 20 s (log: {})",
                self.port,
                log.display()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.lock().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

fn port_open(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok()
}

/// The broker dies with the test's thread even if the test panics hard.
#[cfg(target_os = "linux")]
fn kill_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches only the child.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn kill_with_parent(_cmd: &mut Command) {}
