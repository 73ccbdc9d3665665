//! A channel's circuit breaker: when most of the recent attempts of many
//! users fail (the SMTP server or a push service is down), attempts pause
//! and one probe at a time tests the channel, with a pause that doubles
//! after each failed probe. Deliveries held meanwhile keep their retries:
//! an attempt that fails while the breaker is open or probing is not
//! counted against its reminder, so a long outage delays reminders instead
//! of failing them.
//!
//! Only one outcome per user is counted (their latest), so no single user's
//! broken address or endpoint can open the breaker for everyone else.
//! Permanent failures (a refused address) say nothing about the channel and
//! are not counted either. The state is this process's own: each replica
//! learns it from its own attempts.

use std::collections::VecDeque;
use std::time::Duration;
use tokio::time::Instant;

/// How many users' latest outcomes are looked at.
pub const WINDOW: usize = 20;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    /// `REMINDER_BREAKER_MIN_USERS`: users whose latest attempt is known
    /// before the breaker may open (0: never opens).
    pub min_users: usize,
    /// `REMINDER_BREAKER_FAILURE_PERCENT`: it opens when more than this
    /// share of them failed.
    pub failure_percent: u8,
    /// `REMINDER_BREAKER_OPEN_MS`: the first pause; it doubles after each
    /// failed probe, up to `max_open`.
    pub open_for: Duration,
    pub max_open: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            min_users: 5,
            failure_percent: 50,
            open_for: Duration::from_secs(5),
            max_open: Duration::from_secs(300),
        }
    }
}

/// What the channel may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Start up to this many attempts.
    Attempts(usize),
    /// Start exactly one attempt, the probe.
    Probe,
    /// Start nothing for this long (or until a probe in flight ends).
    Wait(Duration),
}

/// How an attempt ended, as the breaker counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    /// A failure that another attempt might not have: the channel's.
    Transient,
    /// A failure of this delivery's own (its address, its settings).
    Permanent,
}

/// What became of the breaker after an outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Count the attempt against its delivery, as usual.
    Charge,
    /// The channel is broken: do not count it, try again at `retry_in`
    /// (when the next probe may run).
    Hold { retry_in: Duration },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    /// The value of `todo_reminder_channel_breaker_state`.
    pub fn gauge(self) -> i64 {
        match self {
            State::Closed => 0,
            State::Open => 1,
            State::HalfOpen => 2,
        }
    }
}

#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    state: State,
    /// Open: no attempt before this.
    until: Instant,
    /// Failed probes in a row (the pause doubles with each).
    failed_probes: u32,
    /// The latest outcome of each of the last [`WINDOW`] users, oldest
    /// first (true: delivered).
    recent: VecDeque<(String, bool)>,
}

impl Breaker {
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            state: State::Closed,
            until: Instant::now(),
            failed_probes: 0,
            recent: VecDeque::with_capacity(WINDOW),
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// Whether attempts may start now, `free` being the channel's free slots.
    pub fn admit(&mut self, now: Instant, free: usize) -> Admit {
        match self.state {
            State::Closed => Admit::Attempts(free),
            State::Open if now >= self.until && free > 0 => {
                self.state = State::HalfOpen;
                Admit::Probe
            }
            State::Open => Admit::Wait(self.until.saturating_duration_since(now)),
            // The probe's end wakes the worker.
            State::HalfOpen => Admit::Wait(self.config.max_open),
        }
    }

    /// Counts one attempt's outcome. `probe` says whether it was the
    /// attempt [`Admit::Probe`] allowed.
    pub fn record(&mut self, now: Instant, user: &str, outcome: Outcome, probe: bool) -> Verdict {
        if probe {
            return match outcome {
                Outcome::Transient => self.open(now),
                // Delivered (or refused for its own reasons): the channel
                // answers again.
                Outcome::Delivered | Outcome::Permanent => {
                    self.close();
                    Verdict::Charge
                }
            };
        }
        match (self.state, outcome) {
            (_, Outcome::Permanent) => Verdict::Charge,
            (State::Closed, outcome) => {
                self.remember(user, outcome == Outcome::Delivered);
                if outcome == Outcome::Transient && self.tripped() {
                    self.open(now)
                } else {
                    Verdict::Charge
                }
            }
            // Attempts that started before the breaker opened end while it
            // is open: a failure is the outage's, not the delivery's.
            (State::Open | State::HalfOpen, Outcome::Transient) => Verdict::Hold {
                retry_in: self.until.saturating_duration_since(now),
            },
            (State::Open | State::HalfOpen, Outcome::Delivered) => Verdict::Charge,
        }
    }

    /// The probe [`Admit::Probe`] allowed could not start (nothing was due,
    /// or the lease failed): the next round may probe at once.
    pub fn probe_not_started(&mut self, now: Instant) {
        if self.state == State::HalfOpen {
            self.state = State::Open;
            self.until = now;
        }
    }

    fn remember(&mut self, user: &str, delivered: bool) {
        if let Some(at) = self.recent.iter().position(|(u, _)| u == user) {
            self.recent.remove(at);
        }
        if self.recent.len() >= WINDOW {
            self.recent.pop_front();
        }
        self.recent.push_back((user.to_owned(), delivered));
    }

    fn tripped(&self) -> bool {
        let known = self.recent.len();
        if self.config.min_users == 0 || known < self.config.min_users {
            return false;
        }
        let failed = self.recent.iter().filter(|(_, ok)| !ok).count();
        // More than `failure_percent` of `known`, in integers.
        failed * 100 > known * usize::from(self.config.failure_percent)
    }

    fn open(&mut self, now: Instant) -> Verdict {
        if self.state == State::HalfOpen {
            self.failed_probes = self.failed_probes.saturating_add(1);
        }
        let pause = self
            .config
            .open_for
            .saturating_mul(1 << self.failed_probes.min(16))
            .min(self.config.max_open);
        self.state = State::Open;
        self.until = now + pause;
        Verdict::Hold { retry_in: pause }
    }

    fn close(&mut self) {
        self.state = State::Closed;
        self.failed_probes = 0;
        self.recent.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(BreakerConfig {
            min_users: 5,
            failure_percent: 50,
            open_for: Duration::from_secs(1),
            max_open: Duration::from_secs(4),
        })
    }

    fn fail_users(b: &mut Breaker, now: Instant, users: std::ops::Range<u32>) -> Vec<Verdict> {
        users
            .map(|u| b.record(now, &format!("u{u}"), Outcome::Transient, false))
            .collect()
    }

    #[test]
    fn most_users_failing_opens_it_and_the_attempt_that_opened_it_is_held() {
        let mut b = breaker();
        let now = Instant::now();
        let verdicts = fail_users(&mut b, now, 0..5);
        assert_eq!(verdicts[..4], [Verdict::Charge; 4]);
        assert_eq!(
            verdicts[4],
            Verdict::Hold {
                retry_in: Duration::from_secs(1)
            }
        );
        assert_eq!(b.state(), State::Open);
        assert_eq!(b.admit(now, 8), Admit::Wait(Duration::from_secs(1)));
    }

    #[test]
    fn one_user_failing_again_and_again_never_opens_it() {
        let mut b = breaker();
        let now = Instant::now();
        for _ in 0..100 {
            assert_eq!(
                b.record(now, "mallory", Outcome::Transient, false),
                Verdict::Charge
            );
        }
        for u in 0..3 {
            b.record(now, &format!("u{u}"), Outcome::Delivered, false);
        }
        assert_eq!(b.state(), State::Closed);
        assert_eq!(b.admit(now, 8), Admit::Attempts(8));
    }

    #[test]
    fn half_failing_is_not_most_and_permanent_failures_do_not_count() {
        let mut b = breaker();
        let now = Instant::now();
        for u in 0..5 {
            b.record(now, &format!("ok{u}"), Outcome::Delivered, false);
        }
        for u in 0..20 {
            b.record(now, &format!("refused{u}"), Outcome::Permanent, false);
        }
        fail_users(&mut b, now, 0..5);
        assert_eq!(
            b.state(),
            State::Closed,
            "5 of 10 failed: not more than half"
        );
        b.record(now, "u5", Outcome::Transient, false);
        assert_eq!(b.state(), State::Open, "6 of 11");
    }

    #[test]
    fn a_probe_after_the_pause_closes_it_or_doubles_the_pause_up_to_the_cap() {
        let mut b = breaker();
        let start = Instant::now();
        fail_users(&mut b, start, 0..5);
        let mut now = start;
        for pause in [2, 4, 4] {
            now += Duration::from_secs(1);
            assert_eq!(b.admit(now, 8), Admit::Probe);
            assert_eq!(b.state(), State::HalfOpen);
            assert!(
                matches!(b.admit(now, 8), Admit::Wait(_)),
                "one probe at a time"
            );
            assert_eq!(
                b.record(now, "u0", Outcome::Transient, true),
                Verdict::Hold {
                    retry_in: Duration::from_secs(pause)
                }
            );
            now += Duration::from_secs(pause - 1);
            assert!(matches!(b.admit(now, 8), Admit::Wait(_)));
        }
        now += Duration::from_secs(1);
        assert_eq!(b.admit(now, 8), Admit::Probe);
        assert_eq!(
            b.record(now, "u0", Outcome::Delivered, true),
            Verdict::Charge
        );
        assert_eq!(b.state(), State::Closed);
        assert_eq!(b.admit(now, 8), Admit::Attempts(8));
        // Closed afresh: the old failures are forgotten, the pause reset.
        fail_users(&mut b, now, 10..14);
        assert_eq!(b.state(), State::Closed);
        assert_eq!(
            b.record(now, "u14", Outcome::Transient, false),
            Verdict::Hold {
                retry_in: Duration::from_secs(1)
            }
        );
    }

    #[test]
    fn attempts_that_end_while_it_is_open_are_held_not_charged() {
        let mut b = breaker();
        let now = Instant::now();
        fail_users(&mut b, now, 0..5);
        let later = now + Duration::from_millis(400);
        assert_eq!(
            b.record(later, "u9", Outcome::Transient, false),
            Verdict::Hold {
                retry_in: Duration::from_millis(600)
            }
        );
        assert_eq!(
            b.record(later, "u8", Outcome::Delivered, false),
            Verdict::Charge
        );
        assert_eq!(b.state(), State::Open, "only a probe closes it");
    }

    #[test]
    fn a_zero_minimum_turns_it_off() {
        let mut b = Breaker::new(BreakerConfig {
            min_users: 0,
            ..BreakerConfig::default()
        });
        let now = Instant::now();
        assert!(fail_users(&mut b, now, 0..50)
            .iter()
            .all(|v| *v == Verdict::Charge));
        assert_eq!(b.state(), State::Closed);
    }
}
