//! What the realtime tests share: todo-realtime in-process, and a WebSocket
//! client that reads JSON frames.
// Each test file uses its own part of this module.
#![allow(dead_code)]

use futures::StreamExt;
use serde_json::Value;
use std::time::Duration;
use todo_api::testing::{Api, Stack};
use todo_platform::config::Env;
use todo_platform::shutdown::{self, ShutdownTrigger};
use todo_realtime::app::{App, Options};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const WAIT: Duration = Duration::from_secs(30);

/// A stack, its todo-api, and todo-realtime (with `vars`) beside them: where
/// most tests start.
pub async fn start(vars: &[(&str, &str)]) -> (Stack, Api, Realtime) {
    let stack = Stack::new().await;
    let api = stack.spawn_api().await;
    let rt = Realtime::spawn(&stack, &api, vars).await;
    (stack, api, rt)
}

pub use todo_testing::eventually;

pub struct Realtime {
    pub base: String,
    trigger: ShutdownTrigger,
    handle: JoinHandle<anyhow::Result<()>>,
}

impl Realtime {
    /// Starts todo-realtime with `vars` over the defaults, and waits until it
    /// has read the log (ready).
    pub async fn spawn(stack: &Stack, api: &Api, vars: &[(&str, &str)]) -> Realtime {
        Self::spawn_with(stack, api, vars, stack.settings()).await
    }

    /// As `spawn`, with these settings (a given port, say).
    pub async fn spawn_with(
        stack: &Stack,
        api: &Api,
        vars: &[(&str, &str)],
        settings: todo_platform::config::Settings,
    ) -> Realtime {
        let mut map: std::collections::HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        map.insert("REALTIME_API_URL".into(), api.base.clone());
        let options =
            Options::from_lookup(&Env::new(move |k: &str| map.get(k).cloned())).expect("options");
        let app = App::build(&settings, &stack.jwt_settings(), options)
            .await
            .expect("todo-realtime starts");
        let base = format!("127.0.0.1:{}", app.port());
        let (trigger, shutdown) = shutdown::channel();
        let handle = tokio::spawn(app.run(shutdown));
        let ready = format!("http://{base}/ready");
        eventually(WAIT, Duration::from_millis(100), async || {
            let r = stack.http.get(&ready).send().await;
            if r.is_ok_and(|r| r.status().is_success()) {
                Ok(())
            } else {
                Err("todo-realtime never became ready".to_owned())
            }
        })
        .await;
        Realtime {
            base,
            trigger,
            handle,
        }
    }

    pub fn port(&self) -> u16 {
        self.base
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port")
    }

    pub fn url(&self, token: &str, since: Option<u64>) -> String {
        match since {
            Some(s) => format!("ws://{}/ws?token={token}&since={s}", self.base),
            None => format!("ws://{}/ws?token={token}", self.base),
        }
    }

    /// A connection of `token`'s, past the frames of its start.
    pub async fn connected(&self, token: &str, since: Option<u64>) -> Client {
        let mut client = Client::connect(&self.url(token, since)).await;
        client.start().await;
        client
    }

    pub async fn stop(self) {
        self.trigger.trigger();
        self.handle
            .await
            .expect("task")
            .expect("todo-realtime ran cleanly");
    }
}

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Client {
    pub async fn connect(url: &str) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("WebSocket connects");
        Client { ws }
    }

    /// The next JSON frame, or None if none comes within `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()??;
            match msg.expect("frame") {
                Message::Text(text) => {
                    return Some(serde_json::from_str(&text).expect("JSON frame"))
                }
                Message::Close(frame) => panic!("closed by the server: {frame:?}"),
                _ => continue,
            }
        }
    }

    /// Frames up to (without) the `ready` that ends a connection's start;
    /// and the sequence `ready` reports.
    pub async fn start(&mut self) -> (Vec<Value>, Value) {
        let mut before = Vec::new();
        loop {
            let frame = self.next(WAIT).await.expect("ready frame");
            if frame["type"] == "ready" {
                return (before, frame["sequence"].clone());
            }
            before.push(frame);
        }
    }

    /// Event frames until `n` have arrived.
    pub async fn events(&mut self, n: usize) -> Vec<Value> {
        let mut got = Vec::new();
        while got.len() < n {
            match self.next(WAIT).await {
                Some(f) => got.push(f),
                None => panic!("{} of {n} frames arrived: {got:?}", got.len()),
            }
        }
        got
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}
