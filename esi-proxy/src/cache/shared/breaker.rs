//! A consecutive-failure breaker for the shared tier: after `failures` failed calls in a row the
//! tier is skipped for `open_for`, then one probe call decides whether it is back. Knows nothing
//! of Redis; kept apart so it can later be unified with the fetch breakers.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Counts consecutive failures and says whether a call may be made.
#[derive(Debug)]
pub(super) struct Breaker {
    failures_to_open: u32,
    open_for: Duration,
    state: Mutex<State>,
}

/// Where the breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Calls go through; `failures` in a row so far.
    Closed { failures: u32 },
    /// Calls are skipped until `until`.
    Open { until: Instant },
    /// One probe is out since `since`; the others are skipped until it answers (or until
    /// `open_for` passes, should the probe never answer).
    Probing { since: Instant },
}

/// What the breaker shows to health and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls are skipped.
    Open,
    /// One probe call decides.
    HalfOpen,
}

// === impl Breaker ===

impl Breaker {
    /// A closed breaker that opens after `failures_to_open` failures in a row (at least 1) and
    /// stays open for `open_for`.
    pub(super) fn new(failures_to_open: u32, open_for: Duration) -> Self {
        Self {
            failures_to_open: failures_to_open.max(1),
            open_for,
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }

    /// Whether a call may be made now; an open breaker past its time lets one probe through.
    pub(super) fn admit(&self) -> bool {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        match *state {
            State::Closed { .. } => true,
            State::Open { until } | State::Probing { since: until }
                if now >= until + self.probe_grace(&state) =>
            {
                *state = State::Probing { since: now };
                true
            }
            State::Open { .. } | State::Probing { .. } => false,
        }
    }

    /// Records a call that succeeded: the breaker closes.
    pub(super) fn success(&self) {
        *self.state.lock().unwrap_or_else(PoisonError::into_inner) = State::Closed { failures: 0 };
    }

    /// Records a call that failed; returns whether this failure opened the breaker.
    pub(super) fn failure(&self) -> bool {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let until = Instant::now() + self.open_for;
        match *state {
            State::Closed { failures } if failures + 1 >= self.failures_to_open => {
                *state = State::Open { until };
                true
            }
            State::Closed { failures } => {
                *state = State::Closed {
                    failures: failures + 1,
                };
                false
            }
            State::Probing { .. } => {
                *state = State::Open { until };
                true
            }
            // A call admitted before the breaker opened: it stays open as it is.
            State::Open { .. } => false,
        }
    }

    /// Where the breaker stands now.
    pub(super) fn state(&self) -> BreakerState {
        match *self.state.lock().unwrap_or_else(PoisonError::into_inner) {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { until } if Instant::now() >= until => BreakerState::HalfOpen,
            State::Open { .. } => BreakerState::Open,
            State::Probing { .. } => BreakerState::HalfOpen,
        }
    }

    /// How long past `since` a probe that never answered blocks the next one: `open_for`.
    fn probe_grace(&self, state: &State) -> Duration {
        match state {
            State::Probing { .. } => self.open_for,
            _ => Duration::ZERO,
        }
    }
}

// === impl BreakerState ===

impl BreakerState {
    /// The word health and logs show: `closed`, `open` or `half_open`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_failures_then_probes_once() {
        let breaker = Breaker::new(3, Duration::from_millis(30));
        // A success in between resets the count.
        for _ in 0..2 {
            assert!(breaker.admit());
            assert!(!breaker.failure());
        }
        breaker.success();
        for _ in 0..2 {
            assert!(!breaker.failure());
        }
        assert!(breaker.failure(), "the third failure in a row opens it");
        assert_eq!(breaker.state(), BreakerState::Open);
        assert!(!breaker.admit(), "open: calls are skipped");

        std::thread::sleep(Duration::from_millis(40));
        assert!(breaker.admit(), "past open_for: one probe");
        assert!(!breaker.admit(), "only one");
        assert!(breaker.failure(), "a failed probe opens it again");
        assert!(!breaker.admit());

        std::thread::sleep(Duration::from_millis(40));
        assert!(breaker.admit());
        breaker.success();
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert!(breaker.admit() && breaker.admit());
    }

    #[test]
    fn a_probe_that_never_answers_lets_another_through_later() {
        let breaker = Breaker::new(1, Duration::from_millis(20));
        assert!(breaker.failure());
        std::thread::sleep(Duration::from_millis(25));
        assert!(breaker.admit(), "the probe, then dropped unanswered");
        assert!(!breaker.admit());
        std::thread::sleep(Duration::from_millis(45));
        assert!(breaker.admit(), "a new probe once open_for passed again");
    }
}
