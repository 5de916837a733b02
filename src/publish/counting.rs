//! The dry run's publisher (`walbox replay --dry-run`): publishes nothing, confirms every
//! message at once, and counts them.

use std::future::{Ready, ready};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{Outcome, Position, Publisher};
use crate::error::Result;
use crate::outbox::OutboxMessage;

/// Counts what it is given; the count is for debugging (the engine counts events itself).
#[derive(Debug, Default)]
pub(crate) struct CountingPublisher {
    messages: AtomicU64,
}

impl Publisher for CountingPublisher {
    type Confirm = Ready<Outcome>;

    async fn publish(&self, _message: OutboxMessage, _position: Position) -> Result<Self::Confirm> {
        self.messages.fetch_add(1, Ordering::Relaxed);
        Ok(ready(Outcome::Confirmed))
    }

    fn is_connected(&self) -> bool {
        true
    }

    async fn close(self) {}
}
