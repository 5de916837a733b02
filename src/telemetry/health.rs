//! The relay's state as the health endpoints see it: which phase it is in (ready only while
//! streaming with the broker connected and the outbox table's guard able to check; available
//! while streaming or standing by to take over) and a heartbeat proving its loop still turns.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Where the relay is. [`RelayState::Streaming`] and [`RelayState::Backfilling`] are ready.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum RelayState {
    Starting = 0,
    /// Reading from the slot and connected to the broker.
    Streaming = 1,
    /// Another walbox holds the slot; waiting to take over.
    StandingBy = 2,
    /// A transient failure ended the session; retrying with backoff.
    Reconnecting = 3,
    /// Stuck on an event the broker keeps refusing (a poison event).
    Halted = 4,
    Stopping = 5,
    /// Sending the rows already in the table at the cut-over, before streaming (connected to
    /// the database and the broker, doing the relay's work: ready).
    Backfilling = 6,
}

impl RelayState {
    pub(crate) const ALL: [RelayState; 7] = [
        RelayState::Starting,
        RelayState::Backfilling,
        RelayState::Streaming,
        RelayState::StandingBy,
        RelayState::Reconnecting,
        RelayState::Halted,
        RelayState::Stopping,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            RelayState::Starting => "starting",
            RelayState::Streaming => "streaming",
            RelayState::StandingBy => "standing_by",
            RelayState::Reconnecting => "reconnecting",
            RelayState::Halted => "halted",
            RelayState::Stopping => "stopping",
            RelayState::Backfilling => "backfilling",
        }
    }

    fn from_u8(value: u8) -> RelayState {
        RelayState::ALL
            .into_iter()
            .find(|state| *state as u8 == value)
            .unwrap_or(RelayState::Starting)
    }
}

/// How long the loop may go without a heartbeat before /healthz says the process is stuck.
/// The loops beat at least every second; this leaves room for a slow machine.
pub(crate) const STALL_LIMIT: Duration = Duration::from_secs(30);

pub(crate) struct Health {
    state: AtomicU8,
    born: Instant,
    /// Milliseconds since `born` of the last heartbeat.
    last_beat_ms: AtomicU64,
    /// The guard (engine/guard.rs) cannot read the catalogs: nothing more is acknowledged.
    unproven: AtomicBool,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            state: AtomicU8::new(RelayState::Starting as u8),
            born: Instant::now(),
            last_beat_ms: AtomicU64::new(0),
            unproven: AtomicBool::new(false),
        }
    }
}

impl Health {
    pub(crate) fn set_state(&self, state: RelayState) {
        self.state.store(state as u8, Ordering::Relaxed);
        self.beat();
    }

    pub(crate) fn state(&self) -> RelayState {
        RelayState::from_u8(self.state.load(Ordering::Relaxed))
    }

    /// Streaming, and the guard can check the publication (while it cannot, the relay goes
    /// on but acknowledges nothing more).
    pub(crate) fn ready(&self) -> bool {
        matches!(
            self.state(),
            RelayState::Streaming | RelayState::Backfilling
        ) && !self.unproven.load(Ordering::Relaxed)
    }

    /// Relaying, or standing by to take over the moment the relaying walbox lets the slot go:
    /// what an orchestrator's readiness probe needs, so that a rolling update can start the new
    /// walbox (it stands by) before it stops the old one. Not while starting, reconnecting,
    /// halted or stopping.
    pub(crate) fn available(&self) -> bool {
        self.ready() || self.state() == RelayState::StandingBy
    }

    /// Whether the guard's last attempt to read the catalogs failed.
    pub(crate) fn set_unproven(&self, unproven: bool) {
        self.unproven.store(unproven, Ordering::Relaxed);
    }

    /// The relay's loop is turning.
    pub(crate) fn beat(&self) {
        let now = self.born.elapsed().as_millis() as u64;
        self.last_beat_ms.store(now, Ordering::Relaxed);
    }

    /// Time since the last heartbeat.
    pub(crate) fn since_last_beat(&self) -> Duration {
        let last = Duration::from_millis(self.last_beat_ms.load(Ordering::Relaxed));
        self.born.elapsed().saturating_sub(last)
    }

    pub(crate) fn alive(&self) -> bool {
        self.since_last_beat() < STALL_LIMIT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streaming_and_backfilling_are_ready_and_a_standby_is_available() {
        let health = Health::default();
        for state in RelayState::ALL {
            health.set_state(state);
            assert_eq!(health.state(), state);
            let ready = matches!(state, RelayState::Streaming | RelayState::Backfilling);
            assert_eq!(health.ready(), ready, "{state:?}");
            assert_eq!(
                health.available(),
                ready || state == RelayState::StandingBy,
                "{state:?}"
            );
        }
        assert!(health.alive());
    }

    #[test]
    fn not_ready_while_the_guard_cannot_check() {
        let health = Health::default();
        health.set_state(RelayState::Streaming);
        health.set_unproven(true);
        assert!(!health.ready());
        health.set_unproven(false);
        assert!(health.ready());
    }
}
