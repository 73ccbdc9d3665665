//! Every user's recent events and live connections, kept per replica.
//!
//! A user's events carry a `sequence` that grows by one with each of them,
//! across both topics (`task-events`, `reminders`). The hub hands them to the
//! user's connections strictly in that order: an event that arrives before
//! its predecessor (the two topics are read side by side) is held until the
//! predecessor comes. It is given up on only when both hold: it is late
//! (`reorder_wait` since the early event came), and it is not merely unread
//! (everything the log held at that moment has been read, by the
//! [`ReadHorizon`]): one topic read minutes behind the other delays events
//! but loses none. Then the connections are told to `resync`, since they
//! missed something.
//!
//! Each user's delivered events stay in a window (at most `max_events`, none
//! older than `window`), so a client that reconnects with the last sequence
//! it saw gets exactly what came after it. All users' windows together, with
//! the events held for a predecessor, stay under `max_bytes`: past it, the
//! window is shortened for everyone, and lengthened again, up to `window`,
//! once there is room ([`window`]). When the point a client resumes from is
//! older than the window, or the hub cannot prove it holds everything after
//! it (a user it has not heard of), the answer is `resync`: fetch the state
//! over REST.
//!
//! One user's order, history and connections are a [`feed`]; the hub owns
//! the feeds, the shared budget, and when to give up on a missing event.
//!
//! Locking: users are spread over shards, each a plain mutex held only for
//! in-memory work (never across an await), so one user's traffic does not
//! wait on another's.

mod feed;
mod window;

use axum::extract::ws::Utf8Bytes;
use chrono::{DateTime, Utc};
use feed::{Feed, Ledger};
use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use todo_consumer::{Mark, ReadHorizon};
use tokio::sync::mpsc;
use window::Window;

const SHARDS: usize = 32;

#[derive(Debug, Clone)]
pub struct HubConfig {
    /// How long a user's events stay available for a resume.
    pub window: Duration,
    /// At most this many events per user stay available for a resume.
    pub max_events: usize,
    /// How long an event that came before its predecessor waits for the
    /// predecessor to reach the log (waiting for it to be read takes as
    /// long as the reading does).
    pub reorder_wait: Duration,
    /// How long the cursor of a user with no events and no connection is
    /// kept (so that a quiet user's reconnect needs no resync).
    pub idle_cursor: Duration,
    /// Most bytes of frames kept for resumes, all users together.
    pub max_bytes: usize,
}

/// An event ready to send: its sequence, when it happened, and its frame.
#[derive(Debug, Clone)]
pub struct Pushed {
    pub sequence: u64,
    pub time: DateTime<Utc>,
    pub text: Utf8Bytes,
}

/// Where a new connection starts.
#[derive(Debug)]
pub enum Start {
    /// What it missed (possibly nothing), in order; live events follow.
    Backlog(Vec<Utf8Bytes>),
    /// The hub cannot serve everything after the requested sequence.
    Resync,
}

#[derive(Debug)]
pub struct Subscription {
    pub id: u64,
    pub start: Start,
    /// The latest sequence the hub has delivered for this user.
    pub latest: Option<u64>,
}

/// What a connection receives after its start.
#[derive(Debug, Clone)]
pub enum Live {
    Event(Utf8Bytes),
    /// Events were lost for this user (a gap in the log): refetch the state.
    Resync,
    /// The user was erased: the connection ends after what came before.
    Erased,
}

/// Counts reported to the caller, which owns the metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    pub sent: u64,
    /// Connections dropped because their send buffer was full.
    pub dropped: u64,
}

pub struct Hub {
    config: HubConfig,
    /// How far the log has been read: what tells a missing event from an
    /// unread one.
    horizon: Arc<ReadHorizon>,
    shards: Vec<Mutex<HashMap<String, Feed>>>,
    next_id: AtomicU64,
    /// Bytes of frames kept (history and held events), all users together.
    bytes: AtomicUsize,
    window: Window,
}

impl Hub {
    pub fn new(config: HubConfig, horizon: Arc<ReadHorizon>) -> Hub {
        Hub {
            horizon,
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            next_id: AtomicU64::new(1),
            bytes: AtomicUsize::new(0),
            window: Window::new(config.window),
            config,
        }
    }

    fn ledger(&self) -> Ledger<'_> {
        Ledger {
            config: &self.config,
            bytes: &self.bytes,
        }
    }

    /// Bytes of frames kept for resumes.
    pub fn buffered_bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// How far back a resume can reach now.
    pub fn window(&self) -> Duration {
        self.window.get()
    }

    pub fn config(&self) -> &HubConfig {
        &self.config
    }

    fn shard(&self, user: &str) -> MutexGuard<'_, HashMap<String, Feed>> {
        let mut h = DefaultHasher::new();
        user.hash(&mut h);
        lock(&self.shards[(h.finish() as usize) % SHARDS])
    }

    /// Takes one event of `user` from the log.
    pub fn publish(&self, user: &str, event: Pushed, now: Instant) -> Delivered {
        let mut shard = self.shard(user);
        let feed = feed_of(&mut shard, user, now);
        let counts = feed.take(event, now, &self.ledger());
        feed.trim(self.window.oldest_kept(), &self.bytes);
        drop(shard);
        if self.buffered_bytes() > self.config.max_bytes {
            self.shrink();
        }
        counts
    }

    /// Shortens the window until everything kept fits `max_bytes` again.
    fn shrink(&self) {
        self.window.shrink(|window| {
            while self.buffered_bytes() > self.config.max_bytes {
                let can_go_on = window.shorten();
                let oldest = window.oldest_kept();
                for shard in &self.shards {
                    for feed in lock(shard).values_mut() {
                        feed.trim(oldest, &self.bytes);
                    }
                }
                if !can_go_on {
                    break;
                }
            }
            tracing::warn!(
                window_ms = window.current_ms(),
                bytes = self.buffered_bytes(),
                "resume window shortened to stay within REALTIME_RESUME_MAX_BYTES"
            );
        });
    }

    /// Gives up on events that never came: for every user whose oldest held
    /// event is late and whose missing events are not merely unread (see the
    /// module's notes), or who has more held than a window may keep, skips
    /// the missing ones, tells the live connections to resync, and delivers
    /// what was held.
    pub fn expire_held(&self, now: Instant) -> Delivered {
        let mut counts = Delivered::default();
        // One mark serves every feed that turns late in this pass.
        let mut mark_now: Option<Arc<Mark>> = None;
        for shard in &self.shards {
            for (user, feed) in lock(shard).iter_mut() {
                let Some((first, since)) = feed.first_held() else {
                    continue;
                };
                // Held events are bounded like a window (and by the byte
                // budget, through the window's shortening), not only by time.
                let overfull = feed.held_count() > self.config.max_events;
                if !overfull {
                    if now.duration_since(since) < self.config.reorder_wait {
                        continue;
                    }
                    let mark = feed.late_mark(first, || {
                        mark_now
                            .get_or_insert_with(|| Arc::new(self.horizon.mark()))
                            .clone()
                    });
                    if !self.horizon.reached(&mark) {
                        continue;
                    }
                }
                tracing::warn!(
                    user,
                    missing_from = feed.next(),
                    missing_to = first - 1,
                    overfull,
                    "events never arrived; connections told to resync"
                );
                feed.skip_gap(first, &self.ledger(), &mut counts);
            }
        }
        counts
    }

    /// Forgets what is older than the window, and users with nothing left;
    /// lengthens a shortened window again while there is room.
    pub fn sweep(&self, now: Instant) {
        self.window
            .regrow(self.buffered_bytes(), self.config.max_bytes);
        let oldest = self.window.oldest_kept();
        for shard in &self.shards {
            lock(shard)
                .retain(|_, feed| feed.sweep(oldest, now, self.config.idle_cursor, &self.bytes));
        }
    }

    /// Registers a connection of `user` that has seen everything up to
    /// `since` (nothing, if `None`: it gets live events only).
    pub fn subscribe(
        &self,
        user: &str,
        since: Option<u64>,
        tx: mpsc::Sender<Live>,
        now: Instant,
    ) -> Subscription {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut shard = self.shard(user);
        let (start, latest) = feed_of(&mut shard, user, now).subscribe(id, since, tx);
        Subscription { id, start, latest }
    }

    /// `user` was erased: each of their connections gets `frame` (the
    /// `user.erased` event) and is ended, and nothing of theirs stays here,
    /// so no resume can bring back an event of theirs.
    pub fn erase(&self, user: &str, frame: Utf8Bytes) -> Delivered {
        let mut counts = Delivered::default();
        let Some(feed) = self.shard(user).remove(user) else {
            return counts;
        };
        let kept = feed.erase(&frame, &mut counts);
        self.bytes.fetch_sub(kept, Ordering::Relaxed);
        counts
    }

    pub fn unsubscribe(&self, user: &str, id: u64) {
        if let Some(feed) = self.shard(user).get_mut(user) {
            feed.unsubscribe(id);
        }
    }
}

/// A shard's lock. Nothing panics while holding one, but if it did, the map
/// is still consistent enough to go on with.
fn lock(shard: &Mutex<HashMap<String, Feed>>) -> MutexGuard<'_, HashMap<String, Feed>> {
    shard
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn feed_of<'a>(shard: &'a mut HashMap<String, Feed>, user: &str, now: Instant) -> &'a mut Feed {
    let feed = shard
        .entry(user.to_owned())
        .or_insert_with(|| Feed::empty(now));
    feed.touch(now);
    feed
}

/// What a connection has received so far, as the tests compare it.
#[cfg(test)]
fn received(rx: &mut mpsc::Receiver<Live>) -> Vec<String> {
    let mut out = Vec::new();
    while let Ok(live) = rx.try_recv() {
        out.push(match live {
            Live::Event(text) => text.to_string(),
            Live::Resync => "resync".into(),
            Live::Erased => "end".into(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(max_events: usize) -> HubConfig {
        HubConfig {
            window: Duration::from_secs(3600),
            max_events,
            reorder_wait: Duration::from_secs(1),
            idle_cursor: Duration::from_secs(60),
            max_bytes: 1 << 20,
        }
    }

    /// A hub whose log reader has nothing left to read.
    fn hub(max_events: usize) -> Hub {
        Hub::new(config(max_events), Arc::default())
    }

    fn event(sequence: u64) -> Pushed {
        Pushed {
            sequence,
            time: Utc::now(),
            text: Utf8Bytes::from(sequence.to_string()),
        }
    }

    fn backlog(sub: &Subscription) -> Vec<String> {
        match &sub.start {
            Start::Backlog(events) => events.iter().map(|e| e.to_string()).collect(),
            Start::Resync => vec!["resync".into()],
        }
    }

    #[test]
    fn an_erased_user_is_told_and_forgotten_and_others_keep_their_window() {
        let hub = hub(10);
        let now = Instant::now();
        let (alice_tx, mut alice) = mpsc::channel(16);
        hub.subscribe("alice", None, alice_tx, now);
        for s in 1..=3 {
            hub.publish("alice", event(s), now);
            hub.publish("bob", event(s), now);
        }
        let bytes_before = hub.buffered_bytes();
        let counts = hub.erase("alice", Utf8Bytes::from_static("erased"));
        assert_eq!(counts.sent, 1);
        assert_eq!(received(&mut alice), ["1", "2", "3", "erased", "end"]);
        assert_eq!(hub.buffered_bytes(), bytes_before / 2, "bob's window stays");
        let (tx, _rx) = mpsc::channel(16);
        assert!(
            matches!(
                hub.subscribe("alice", Some(1), tx, now).start,
                Start::Resync
            ),
            "nothing of alice's is left to resume from"
        );
        let (tx, _rx) = mpsc::channel(16);
        assert_eq!(backlog(&hub.subscribe("bob", Some(1), tx, now)), ["2", "3"]);
    }

    #[test]
    fn events_reach_only_their_users_connections() {
        let (hub, now) = (hub(100), Instant::now());
        let (a1, mut ra1) = mpsc::channel(10);
        let (a2, mut ra2) = mpsc::channel(10);
        let (b, mut rb) = mpsc::channel(10);
        hub.subscribe("alice", None, a1, now);
        hub.subscribe("alice", None, a2, now);
        hub.subscribe("bob", None, b, now);
        let counts = hub.publish("alice", event(1), now);
        assert_eq!(counts.sent, 2);
        assert_eq!(received(&mut ra1), ["1"]);
        assert_eq!(received(&mut ra2), ["1"]);
        assert!(received(&mut rb).is_empty());
    }

    #[test]
    fn a_resume_gets_exactly_what_came_after_its_sequence() {
        let (hub, now) = (hub(100), Instant::now());
        for s in 1..=30 {
            hub.publish("alice", event(s), now);
        }
        let (tx, mut rx) = mpsc::channel(10);
        let sub = hub.subscribe("alice", Some(10), tx, now);
        let expected: Vec<String> = (11..=30).map(|s| s.to_string()).collect();
        assert_eq!(backlog(&sub), expected);
        assert_eq!(sub.latest, Some(30));
        hub.publish("alice", event(30), now); // redelivered: nothing
        hub.publish("alice", event(31), now);
        assert_eq!(received(&mut rx), ["31"]);
    }

    #[test]
    fn a_resume_older_than_the_window_or_from_a_stranger_is_a_resync() {
        let (hub, now) = (hub(10), Instant::now());
        for s in 1..=30 {
            hub.publish("alice", event(s), now);
        }
        let (tx, _rx) = mpsc::channel(10);
        assert_eq!(
            backlog(&hub.subscribe("alice", Some(19), tx.clone(), now)),
            ["resync"]
        );
        assert_eq!(
            backlog(&hub.subscribe("alice", Some(20), tx.clone(), now)).len(),
            10
        );
        assert_eq!(
            backlog(&hub.subscribe("carol", Some(5), tx.clone(), now)),
            ["resync"]
        );
        assert!(backlog(&hub.subscribe("dave", Some(0), tx, now)).is_empty());
    }

    #[test]
    fn events_out_of_order_are_held_until_their_predecessor_comes() {
        let (hub, now) = (hub(100), Instant::now());
        let (tx, mut rx) = mpsc::channel(10);
        hub.publish("alice", event(1), now);
        hub.subscribe("alice", Some(1), tx, now);
        hub.publish("alice", event(3), now);
        hub.publish("alice", event(4), now);
        assert!(received(&mut rx).is_empty());
        hub.publish("alice", event(2), now);
        assert_eq!(received(&mut rx), ["2", "3", "4"]);
    }

    #[test]
    fn a_gap_that_never_fills_is_skipped_with_a_resync() {
        let (hub, now) = (hub(100), Instant::now());
        let (tx, mut rx) = mpsc::channel(10);
        hub.publish("alice", event(1), now);
        hub.subscribe("alice", None, tx, now);
        hub.publish("alice", event(3), now);
        hub.expire_held(now + Duration::from_millis(500));
        assert!(received(&mut rx).is_empty());
        hub.expire_held(now + Duration::from_secs(2));
        assert_eq!(received(&mut rx), ["resync", "3"]);
        // A resume from before the gap cannot be served any more.
        let (tx, _rx) = mpsc::channel(10);
        assert_eq!(
            backlog(&hub.subscribe("alice", Some(1), tx, now)),
            ["resync"]
        );
    }

    #[test]
    fn an_earlier_event_arriving_after_a_feed_started_is_a_resync_not_a_silent_loss() {
        let (hub, now) = (hub(100), Instant::now());
        let (tx, mut rx) = mpsc::channel(10);
        // A client that has nothing yet, and a live one.
        hub.subscribe("alice", Some(0), tx, now);
        let (live, mut live_rx) = mpsc::channel(10);
        // 5 comes first (from the reminders topic); 4 (task events) after.
        hub.publish("alice", event(5), now);
        hub.subscribe("alice", None, live, now);
        hub.publish("alice", event(4), now);
        assert_eq!(received(&mut rx), ["5", "resync"], "it missed 4");
        assert!(
            received(&mut live_rx).is_empty(),
            "a live start never expected 4"
        );
        // From now on a resume from before 4 gets both, in order.
        let (tx, _rx) = mpsc::channel(10);
        assert_eq!(
            backlog(&hub.subscribe("alice", Some(3), tx, now)),
            ["4", "5"]
        );
        hub.publish("alice", event(6), now);
        assert_eq!(received(&mut rx), ["6"]);
    }

    #[test]
    fn a_client_ahead_of_the_replica_skips_what_it_has_seen() {
        let (hub, now) = (hub(100), Instant::now());
        hub.publish("alice", event(1), now);
        let (tx, mut rx) = mpsc::channel(10);
        let sub = hub.subscribe("alice", Some(3), tx, now);
        assert!(backlog(&sub).is_empty());
        for s in 2..=4 {
            hub.publish("alice", event(s), now);
        }
        assert_eq!(received(&mut rx), ["4"]);
    }

    #[test]
    fn a_slow_connection_is_dropped_and_does_not_hold_up_others() {
        let (hub, now) = (hub(100), Instant::now());
        let (slow, mut slow_rx) = mpsc::channel(2);
        let (fast, mut fast_rx) = mpsc::channel(100);
        hub.subscribe("alice", None, slow, now);
        hub.subscribe("alice", None, fast, now);
        let mut dropped = 0;
        for s in 1..=5 {
            dropped += hub.publish("alice", event(s), now).dropped;
        }
        assert_eq!(dropped, 1);
        assert_eq!(received(&mut fast_rx).len(), 5);
        assert_eq!(received(&mut slow_rx), ["1", "2"]);
        // Its sender is gone: the connection sees the channel closed.
        assert_eq!(
            slow_rx.try_recv().err(),
            Some(mpsc::error::TryRecvError::Disconnected)
        );
    }

    #[test]
    fn quiet_users_are_forgotten_after_the_idle_time() {
        let (hub, now) = (hub(100), Instant::now());
        hub.publish("alice", event(1), now);
        let old = Utc::now() - Duration::from_secs(7200);
        hub.publish(
            "bob",
            Pushed {
                time: old,
                ..event(1)
            },
            now,
        );
        hub.sweep(now + Duration::from_secs(120));
        let (tx, _rx) = mpsc::channel(10);
        // alice's event is in the window; bob's is not and bob is forgotten.
        assert!(backlog(&hub.subscribe("alice", Some(0), tx.clone(), now)).len() == 1);
        assert_eq!(backlog(&hub.subscribe("bob", Some(1), tx, now)), ["resync"]);
    }

    #[test]
    fn past_the_byte_budget_the_oldest_events_go_first() {
        let hub = Hub::new(
            HubConfig {
                max_bytes: 1000,
                ..config(1000)
            },
            Arc::default(),
        );
        let now = Instant::now();
        // 100 events of 100 bytes, one a second, the last one now.
        for s in 1..=100u64 {
            let e = Pushed {
                sequence: s,
                time: Utc::now() - Duration::from_secs(100 - s),
                text: Utf8Bytes::from(format!("{s:0>100}")),
            };
            hub.publish("alice", e, now);
        }
        assert!(hub.buffered_bytes() <= 1000, "{}", hub.buffered_bytes());
        assert!(hub.window() < Duration::from_secs(3600));
        let (tx, _rx) = mpsc::channel(10);
        assert_eq!(
            backlog(&hub.subscribe("alice", Some(50), tx.clone(), now)),
            ["resync"]
        );
        let recent = backlog(&hub.subscribe("alice", Some(97), tx, now));
        assert_eq!(recent.len(), 3, "the newest stay");
    }

    /// Two topics, each one partition, read from offset 0 to `ends`.
    fn two_topics(ends: (i64, i64)) -> Arc<ReadHorizon> {
        let horizon = Arc::new(ReadHorizon::default());
        horizon.opened("task-events", 0, 0, ends.0);
        horizon.opened("reminders", 0, 0, ends.1);
        horizon
    }

    /// A hub over `two_topics(ends)` with a live connection of alice's,
    /// after alice's 1 (the first task event) and 3 (the first reminder)
    /// were read: 3 is held for 2.
    fn three_held_for_two(ends: (i64, i64), now: Instant) -> (Hub, mpsc::Receiver<Live>) {
        let horizon = two_topics(ends);
        let hub = Hub::new(config(100), horizon.clone());
        let (tx, rx) = mpsc::channel(10);
        hub.subscribe("alice", None, tx, now);
        hub.publish("alice", event(1), now);
        horizon.read("task-events", 0, 0);
        hub.publish("alice", event(3), now);
        horizon.read("reminders", 0, 0);
        (hub, rx)
    }

    #[test]
    fn a_predecessor_on_a_topic_read_behind_the_other_is_waited_for_past_the_reorder_wait() {
        let now = Instant::now();
        // 2 is the last of 100 task events.
        let (hub, mut rx) = three_held_for_two((100, 1), now);
        let horizon = hub.horizon.clone();
        hub.expire_held(now + Duration::from_secs(10));
        for offset in 1..99 {
            horizon.read("task-events", 0, offset);
        }
        hub.expire_held(now + Duration::from_secs(60));
        assert_eq!(received(&mut rx), ["1"], "3 waits: 2 may be unread");
        hub.publish("alice", event(2), now + Duration::from_secs(61));
        horizon.read("task-events", 0, 99);
        assert_eq!(received(&mut rx), ["2", "3"], "in order, no resync");
        let (tx, _rx) = mpsc::channel(10);
        assert_eq!(
            backlog(&hub.subscribe("alice", Some(0), tx, now)),
            ["1", "2", "3"]
        );
    }

    #[test]
    fn once_the_log_is_read_past_where_it_ended_when_the_wait_ran_out_the_gap_is_skipped() {
        let now = Instant::now();
        let (hub, mut rx) = three_held_for_two((2, 1), now);
        let horizon = hub.horizon.clone();
        // The wait runs out with one task event unread: the log's end then
        // is what has to be read.
        hub.expire_held(now + Duration::from_secs(2));
        // More arrives meanwhile; it does not hold the gap open.
        horizon.reported_end("task-events", 0, 50);
        horizon.read("task-events", 0, 1); // someone else's event
        assert_eq!(received(&mut rx), ["1"]);
        hub.expire_held(now + Duration::from_secs(3));
        assert_eq!(received(&mut rx), ["resync", "3"], "2 was never in the log");
    }

    #[test]
    fn held_events_count_in_the_byte_budget_and_an_erasure_frees_them() {
        let horizon = two_topics((1000, 1000));
        let (hub, now) = (Hub::new(config(100), horizon), Instant::now());
        hub.publish("alice", event(1), now);
        let one = hub.buffered_bytes();
        hub.publish("alice", event(3), now);
        hub.publish("alice", event(3), now); // again: counted once
        assert_eq!(hub.buffered_bytes(), one * 2);
        hub.publish("alice", event(2), now);
        assert_eq!(hub.buffered_bytes(), one * 3, "all three as history");
        hub.publish("alice", event(5), now);
        hub.erase("alice", Utf8Bytes::from_static("erased"));
        assert_eq!(hub.buffered_bytes(), 0);
    }

    #[test]
    fn more_held_than_a_window_keeps_is_given_up_without_waiting() {
        let horizon = two_topics((1000, 1000));
        let (hub, now) = (Hub::new(config(3), horizon), Instant::now());
        let (tx, mut rx) = mpsc::channel(10);
        hub.subscribe("alice", None, tx, now);
        hub.publish("alice", event(1), now);
        for s in 3..=6 {
            hub.publish("alice", event(s), now);
        }
        hub.expire_held(now);
        assert_eq!(received(&mut rx), ["1", "resync", "3", "4", "5", "6"]);
    }
}
