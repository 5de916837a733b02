//! An in-memory publisher for tests: it records every message and answers each one only when
//! the test says so (confirm, nack, return, close the channel, lose the connection).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use super::{Outcome, Position, Publisher, Refused};
use crate::error::{Error, Result};
use crate::outbox::OutboxMessage;

/// One published message, awaiting the test's answer.
pub(crate) struct Sent {
    pub(crate) message: OutboxMessage,
    /// Where the engine said the event lies in the WAL.
    pub(crate) position: Position,
    answer: Option<oneshot::Sender<Outcome>>,
    /// The broker positively confirmed it.
    pub(crate) confirmed: bool,
    /// The broker returned it as unroutable.
    pub(crate) returned: bool,
}

impl Sent {
    /// Not answered yet.
    pub(crate) fn is_open(&self) -> bool {
        self.answer.is_some()
    }

    /// Answer this message (once; later answers are ignored). Returns whether it was unanswered.
    #[allow(dead_code)]
    pub(crate) fn answer(&mut self, outcome: Outcome) -> bool {
        match self.answer.take() {
            Some(sender) => {
                self.confirmed = matches!(outcome, Outcome::Confirmed);
                self.returned = matches!(outcome, Outcome::Refused(Refused::Returned { .. }));
                let _ = sender.send(outcome);
                true
            }
            None => false,
        }
    }
}

/// What the test sees and controls.
#[derive(Clone, Default)]
pub(crate) struct Broker {
    pub(crate) sent: Arc<Mutex<Vec<Sent>>>,
    lost: Arc<AtomicBool>,
}

impl Broker {
    /// The connection drops: every unanswered confirm resolves as lost, publishing fails.
    pub(crate) fn lose_connection(&self) {
        self.lost.store(true, Ordering::SeqCst);
        for sent in self.sent.lock().unwrap().iter_mut() {
            sent.answer.take();
        }
    }
}

pub(crate) struct MemoryPublisher {
    broker: Broker,
}

impl MemoryPublisher {
    pub(crate) fn new(broker: Broker) -> Self {
        MemoryPublisher { broker }
    }
}

/// A confirm whose sender was dropped unanswered counts as lost, never as confirmed.
pub(crate) async fn answered(receiver: oneshot::Receiver<Outcome>) -> Outcome {
    receiver.await.unwrap_or_else(|_| {
        Outcome::Refused(Refused::Lost(Error::transient(
            "the connection to the broker was lost before it answered",
        )))
    })
}

impl Publisher for MemoryPublisher {
    type Confirm = std::pin::Pin<Box<dyn Future<Output = Outcome> + Send>>;

    async fn publish(&self, message: OutboxMessage, position: Position) -> Result<Self::Confirm> {
        if self.broker.lost.load(Ordering::SeqCst) {
            return Err(Error::transient("publishing: the connection is closed"));
        }
        let (sender, receiver) = oneshot::channel();
        self.broker.sent.lock().unwrap().push(Sent {
            message,
            position,
            answer: Some(sender),
            confirmed: false,
            returned: false,
        });
        Ok(Box::pin(answered(receiver)))
    }

    fn is_connected(&self) -> bool {
        !self.broker.lost.load(Ordering::SeqCst)
    }

    async fn close(self) {}
}
