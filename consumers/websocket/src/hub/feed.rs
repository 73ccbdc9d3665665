//! One user's feed: their events in sequence order, the ones that came
//! before their predecessor, what stays for a resume, and their live
//! connections. The hub decides when a feed gives up on a missing event
//! and how long history stays; the feed keeps the order.

use super::{Delivered, HubConfig, Live, Pushed, Start};
use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use todo_consumer::Mark;
use tokio::sync::mpsc;

/// What a feed needs to keep its history within bounds.
pub(super) struct Ledger<'a> {
    pub config: &'a HubConfig,
    /// Bytes of history and held events, all feeds together.
    pub bytes: &'a AtomicUsize,
}

struct Subscriber {
    id: u64,
    /// Events up to this sequence are already known to the client.
    after: u64,
    tx: mpsc::Sender<Live>,
}

pub(super) struct Feed {
    /// The sequence expected next; everything before it was delivered.
    /// 0 until the first event (sequences start at 1).
    next: u64,
    /// The lowest sequence this feed took from the log: an event below it
    /// was never delivered here (it arrived late, from the other topic, as
    /// the feed started).
    start: u64,
    /// Delivered events, sequences `next - history.len() .. next`.
    history: VecDeque<Pushed>,
    /// Events that arrived before their predecessor, with their arrival.
    held: BTreeMap<u64, (Instant, Pushed)>,
    /// Where the log ended once the first held event had waited
    /// `reorder_wait` (and which event that was): the missing ones are
    /// given up once the log has been read that far without them.
    late_since: Option<(u64, Arc<Mark>)>,
    subscribers: Vec<Subscriber>,
    last_activity: Instant,
}

impl Feed {
    pub fn empty(now: Instant) -> Feed {
        Feed {
            next: 0,
            start: 0,
            history: VecDeque::new(),
            held: BTreeMap::new(),
            late_since: None,
            subscribers: Vec::new(),
            last_activity: now,
        }
    }

    pub fn touch(&mut self, now: Instant) {
        self.last_activity = now;
    }

    /// Takes one event from the log: delivered if it is next (with what was
    /// held behind it), held if it came early, ignored if redelivered.
    pub fn take(&mut self, event: Pushed, now: Instant, ledger: &Ledger<'_>) -> Delivered {
        let mut counts = Delivered::default();
        if self.next == 0 {
            self.next = event.sequence;
            self.start = event.sequence;
        }
        if event.sequence < self.start {
            self.arrived_late(event, ledger);
        } else if event.sequence < self.next {
            // Redelivered.
        } else if event.sequence == self.next {
            self.deliver(event, ledger, &mut counts);
            self.drain_held(ledger, &mut counts);
        } else if let std::collections::btree_map::Entry::Vacant(slot) =
            self.held.entry(event.sequence)
        {
            ledger.bytes.fetch_add(event.text.len(), Ordering::Relaxed);
            slot.insert((now, event));
        }
        counts
    }

    /// The first held event's sequence and arrival, if any is held.
    pub fn first_held(&self) -> Option<(u64, Instant)> {
        self.held.first_key_value().map(|(&s, (at, _))| (s, *at))
    }

    pub fn held_count(&self) -> usize {
        self.held.len()
    }

    /// The mark taken when the held event `first` turned late: taken now
    /// (by `mark`) the first time, the same one while it stays first.
    pub fn late_mark(&mut self, first: u64, mark: impl FnOnce() -> Arc<Mark>) -> Arc<Mark> {
        match &self.late_since {
            Some((event, mark)) if *event == first => mark.clone(),
            _ => {
                let mark = mark();
                self.late_since = Some((first, mark.clone()));
                mark
            }
        }
    }

    /// Gives up on the events missing before the held `first`: the live
    /// connections are told to resync, the history restarts after the gap
    /// (what came before it cannot be served to a resume any more), and
    /// what was held is delivered.
    pub fn skip_gap(&mut self, first: u64, ledger: &Ledger<'_>, counts: &mut Delivered) {
        self.subscribers
            .retain(|s| s.tx.try_send(Live::Resync).is_ok());
        while !self.history.is_empty() {
            self.pop_oldest(ledger.bytes);
        }
        self.next = first;
        self.start = first;
        self.drain_held(ledger, counts);
    }

    /// The first sequence missing (before the held events).
    pub fn next(&self) -> u64 {
        self.next
    }

    /// Forgets history older than `oldest` and closed connections; false
    /// once nothing is left worth keeping (no history, nothing held, no
    /// connection, quiet for `idle`).
    pub fn sweep(
        &mut self,
        oldest: DateTime<Utc>,
        now: Instant,
        idle: Duration,
        bytes: &AtomicUsize,
    ) -> bool {
        self.trim(oldest, bytes);
        self.subscribers.retain(|s| !s.tx.is_closed());
        !self.history.is_empty()
            || !self.held.is_empty()
            || !self.subscribers.is_empty()
            || now.duration_since(self.last_activity) < idle
    }

    /// Registers a connection that has seen everything up to `since`
    /// (nothing, if `None`: it gets live events only): where it starts, and
    /// the latest sequence delivered.
    pub fn subscribe(
        &mut self,
        id: u64,
        since: Option<u64>,
        tx: mpsc::Sender<Live>,
    ) -> (Start, Option<u64>) {
        let live_only = self.next.saturating_sub(1);
        let (start, after) = match (since, self.floor()) {
            (None, _) => (Start::Backlog(Vec::new()), live_only),
            // Nothing known of this user: a client that says it saw
            // something cannot be proven up to date.
            (Some(0), None) => (Start::Backlog(Vec::new()), 0),
            (Some(_), None) => (Start::Resync, 0),
            (Some(s), Some(floor)) if s < floor => (Start::Resync, live_only),
            (Some(s), Some(_)) => {
                let backlog = self
                    .history
                    .iter()
                    .filter(|e| e.sequence > s)
                    .map(|e| e.text.clone())
                    .collect();
                // A client ahead of this replica skips what it has seen.
                (Start::Backlog(backlog), s.max(live_only))
            }
        };
        self.subscribers.push(Subscriber { id, after, tx });
        (start, self.latest())
    }

    pub fn unsubscribe(&mut self, id: u64) {
        self.subscribers.retain(|s| s.id != id);
    }

    /// The user was erased: each connection gets `frame` and is ended.
    /// Returns the bytes this feed held, for the budget.
    pub fn erase(self, frame: &axum::extract::ws::Utf8Bytes, counts: &mut Delivered) -> usize {
        let kept: usize = self.history.iter().map(|e| e.text.len()).sum::<usize>()
            + self.held.values().map(|(_, e)| e.text.len()).sum::<usize>();
        for s in self.subscribers {
            // A full buffer drops the connection all the same.
            if s.tx.try_send(Live::Event(frame.clone())).is_ok() {
                counts.sent += 1;
                let _ = s.tx.try_send(Live::Erased);
            }
        }
        kept
    }

    /// The lowest `since` this feed can serve (none before its first event).
    fn floor(&self) -> Option<u64> {
        (self.next > 0).then(|| self.next - 1 - self.history.len() as u64)
    }

    fn latest(&self) -> Option<u64> {
        (self.next > 1).then(|| self.next - 1)
    }

    fn deliver(&mut self, event: Pushed, ledger: &Ledger<'_>, counts: &mut Delivered) {
        let sequence = event.sequence;
        self.subscribers.retain(|s| {
            if sequence <= s.after {
                return true;
            }
            match s.tx.try_send(Live::Event(event.text.clone())) {
                Ok(()) => {
                    counts.sent += 1;
                    true
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    counts.dropped += 1;
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
        self.next = sequence + 1;
        ledger.bytes.fetch_add(event.text.len(), Ordering::Relaxed);
        self.history.push_back(event);
        while self.history.len() > ledger.config.max_events {
            self.pop_oldest(ledger.bytes);
        }
    }

    fn pop_oldest(&mut self, bytes: &AtomicUsize) {
        if let Some(e) = self.history.pop_front() {
            bytes.fetch_sub(e.text.len(), Ordering::Relaxed);
        }
    }

    /// An event older than anything this feed took from the log: its two
    /// topics are read side by side, so as a feed starts, its first event
    /// can come from one topic before an earlier one from the other. It
    /// cannot reach the connections that expect it in order any more: they
    /// are told to resync (never silently left without it). It joins the
    /// history when that leaves no hole, so a resume from before it gets it.
    fn arrived_late(&mut self, event: Pushed, ledger: &Ledger<'_>) {
        let sequence = event.sequence;
        self.subscribers.retain(|s| {
            if s.after < sequence {
                s.tx.try_send(Live::Resync).is_ok()
            } else {
                true
            }
        });
        let contiguous = sequence + 1 == self.start
            && self.history.front().map(|e| e.sequence) == Some(self.start)
            && self.history.len() < ledger.config.max_events;
        if contiguous {
            ledger.bytes.fetch_add(event.text.len(), Ordering::Relaxed);
            self.history.push_front(event);
            self.start = sequence;
        }
    }

    /// Delivers held events that are now next in line.
    fn drain_held(&mut self, ledger: &Ledger<'_>, counts: &mut Delivered) {
        while let Some(entry) = self.held.first_entry() {
            if *entry.key() != self.next {
                break;
            }
            let (_, event) = entry.remove();
            // Counted again as history.
            ledger.bytes.fetch_sub(event.text.len(), Ordering::Relaxed);
            self.deliver(event, ledger, counts);
        }
        if self.held.is_empty() {
            self.late_since = None;
        }
    }

    pub fn trim(&mut self, oldest: DateTime<Utc>, bytes: &AtomicUsize) {
        while self.history.front().is_some_and(|e| e.time < oldest) {
            self.pop_oldest(bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::received;
    use super::*;
    use axum::extract::ws::Utf8Bytes;

    /// What a feed's ledger points at: the config and the byte count.
    struct Budget {
        config: HubConfig,
        bytes: AtomicUsize,
    }

    impl Budget {
        fn new() -> Budget {
            Budget {
                config: HubConfig {
                    window: Duration::from_secs(3600),
                    max_events: 3,
                    reorder_wait: Duration::from_secs(1),
                    idle_cursor: Duration::from_secs(60),
                    max_bytes: 1 << 20,
                },
                bytes: AtomicUsize::new(0),
            }
        }

        fn ledger(&self) -> Ledger<'_> {
            Ledger {
                config: &self.config,
                bytes: &self.bytes,
            }
        }

        fn kept(&self) -> usize {
            self.bytes.load(Ordering::Relaxed)
        }
    }

    fn event(sequence: u64) -> Pushed {
        Pushed {
            sequence,
            time: Utc::now(),
            text: Utf8Bytes::from(format!("e{sequence}")),
        }
    }

    /// A feed that took event 1, and a connection that saw up to `since`.
    fn after_one(budget: &Budget, since: Option<u64>) -> (Feed, mpsc::Receiver<Live>) {
        let now = Instant::now();
        let mut feed = Feed::empty(now);
        let (tx, rx) = mpsc::channel(16);
        feed.take(event(1), now, &budget.ledger());
        feed.subscribe(1, since, tx);
        (feed, rx)
    }

    #[test]
    fn early_events_wait_for_their_predecessor_and_repeats_change_nothing() {
        let budget = Budget::new();
        let (mut feed, mut rx) = after_one(&budget, None);
        let (ledger, now) = (budget.ledger(), Instant::now());
        feed.take(event(3), now, &ledger);
        assert_eq!(feed.first_held().map(|(s, _)| s), Some(3));
        assert!(received(&mut rx).is_empty(), "3 waits for 2");
        assert_eq!(feed.take(event(2), now, &ledger).sent, 2);
        feed.take(event(2), now, &ledger);
        assert_eq!(received(&mut rx), ["e2", "e3"], "in order, once each");
        assert_eq!(feed.first_held(), None);
        assert_eq!(feed.next(), 4);
        assert_eq!(budget.kept(), 6, "three frames kept");
    }

    #[test]
    fn skipping_a_gap_tells_the_connections_and_restarts_the_history_after_it() {
        let budget = Budget::new();
        let (mut feed, mut rx) = after_one(&budget, Some(1));
        let ledger = budget.ledger();
        feed.take(event(4), Instant::now(), &ledger);
        feed.skip_gap(4, &ledger, &mut Delivered::default());
        assert_eq!(received(&mut rx), ["resync", "e4"]);
        let (late_tx, _late_rx) = mpsc::channel(16);
        let (start, latest) = feed.subscribe(2, Some(1), late_tx);
        assert!(
            matches!(start, Start::Resync),
            "1 is before the gap: no resume from it"
        );
        assert_eq!(latest, Some(4));
        assert_eq!(budget.kept(), 2, "only e4 is kept");
    }
}
