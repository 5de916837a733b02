//! Changes → messages → the publisher: the apply step of a session. It keeps the outbox
//! table's shape (from its Relation messages) and the open transaction, turns each outbox
//! Insert and each relayed logical decoding message into a message, publishes it within the
//! in-flight window, and hands its confirm and every transaction boundary to the confirm
//! tracker, in stream order.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};
use tracing::warn;

use super::Failure;
use super::guard::Guard;
use super::poison::DeadLetter;
use super::tables::Tables;
use crate::config::Config;
use crate::error::Error;
use crate::lsn::Lsn;
use crate::outbox::message_id;
use crate::outbox::{EventError, OutboxMessage, OutboxShape, Transaction};
use crate::pgoutput::{Insert, LogicalMessage, Message, Relation, TupleData};
use crate::publish::confirm::{EventRef, Pending, Published};
use crate::publish::{Position, Publisher};
use crate::source::Change;
use crate::telemetry::{Side, Telemetry};

/// How long a Relation of a table the guard does not know waits for a newer reading.
const RELATION_PROOF_WAIT: Duration = Duration::from_secs(30);

/// The per-session state of the apply step.
pub(crate) struct Stream<'a, P: Publisher> {
    config: &'a Config,
    publisher: P,
    pending: mpsc::Sender<Pending<P::Confirm>>,
    /// Messages published and not yet answered, at most as many as it has permits.
    window: Arc<Semaphore>,
    telemetry: &'a Telemetry,
    /// The tables announced by Relation messages: which inserts are outbox events.
    tables: Tables,
    transaction: Option<Transaction>,
    /// The next outbox event's index in the open transaction (its id when the table has no
    /// id column is derived from the commit LSN and this index). Every logical decoding
    /// message of the transaction takes an index too, relayed or not.
    index_in_transaction: u32,
    routing_key: String,
    /// A poison event to replace by its dead-letter record when it comes by.
    pub(crate) dead_letter: Option<DeadLetter>,
    /// Where a row that cannot become a message goes (the dead-letter exchange); None: walbox
    /// stops on it.
    pub(crate) unencodable_to: Option<String>,
    /// The highest commit LSN of an event handed to the publisher.
    pub(crate) published_through: Lsn,
    /// Republished messages (`walbox replay`) carry the header `x-replay: true`.
    replaying: bool,
    /// Outbox events handed to the publisher in this session.
    pub(crate) events: u64,
    /// The guard's view of the outbox table (the live relay; a fixed one for a replay).
    pub(crate) guard: Option<Guard>,
}

impl<'a, P: Publisher> Stream<'a, P> {
    pub(crate) fn new(
        config: &'a Config,
        publisher: P,
        pending: mpsc::Sender<Pending<P::Confirm>>,
        window: Arc<Semaphore>,
        replaying: bool,
        telemetry: &'a Telemetry,
    ) -> Self {
        Stream {
            config,
            publisher,
            pending,
            window,
            telemetry,
            tables: Tables::default(),
            transaction: None,
            index_in_transaction: 0,
            routing_key: String::new(),
            dead_letter: None,
            unencodable_to: None,
            published_through: Lsn::ZERO,
            replaying,
            events: 0,
            guard: None,
        }
    }

    pub(crate) fn publisher(&self) -> &P {
        &self.publisher
    }

    /// Stop handing anything to the tracker (so it ends once every verdict is in) and give
    /// the publisher back, to close it.
    pub(crate) fn finish(self) -> P {
        self.publisher
    }

    /// Apply one change; an error says which side failed.
    pub(crate) async fn apply(&mut self, change: Change) -> Result<(), Failure> {
        tracing::trace!(?change, "change");
        match change {
            Change::Begin(transaction) => self.begin(transaction),
            Change::Commit { end_lsn } => self.commit(end_lsn).await?,
            // Between transactions, the server has sent everything before `wal_end`; once
            // what came before is confirmed, PostgreSQL may release it. This keeps an idle
            // outbox on a busy database from pinning WAL.
            Change::Keepalive { wal_end } if self.transaction.is_none() => {
                self.telemetry.metrics.received(wal_end);
                self.boundary(wal_end).await?;
            }
            Change::Keepalive { .. } => {}
            Change::Message(Message::Relation(relation)) => self.relation(&relation).await?,
            Change::Message(Message::Insert(insert)) => self.insert(&insert).await?,
            Change::Message(Message::Message(message)) => self.logical(&message).await?,
            // Updates, deletes, truncates, types, origins: not outbox events.
            Change::Message(_) => {}
        }
        Ok(())
    }

    fn begin(&mut self, transaction: Transaction) {
        self.transaction = Some(transaction);
        self.index_in_transaction = 0;
    }

    async fn commit(&mut self, end_lsn: Lsn) -> Result<(), Failure> {
        self.transaction = None;
        self.telemetry.metrics.transaction();
        self.telemetry.metrics.received(end_lsn);
        self.boundary(end_lsn).await
    }

    /// A Relation message: which table it is, and the outbox's new shape (see `tables`).
    async fn relation(&mut self, relation: &Relation) -> Result<(), Failure> {
        let commit_lsn = self.transaction.map(|transaction| transaction.commit_lsn);
        // A table the guard's last reading does not know may be a partition or inheritance
        // child made since (in this very transaction, even): its rows would be skipped as
        // another table's. A reading at or past this commit knows every table made before it.
        if let Some(guard) = self.guard.as_mut().filter(|guard| guard.is_live())
            && self
                .tables
                .would_skip(relation, &self.config.table, guard.outbox().as_ref())
        {
            let at = commit_lsn.unwrap_or(Lsn::ZERO);
            guard
                .proven_to(at, RELATION_PROOF_WAIT)
                .await
                .map_err(postgres)?;
        }
        let outbox = self.guard.as_ref().and_then(Guard::outbox);
        self.tables
            .relation(
                relation,
                &self.config.table,
                &self.config.mapping,
                outbox.as_ref(),
                commit_lsn,
            )
            .map_err(postgres)
    }

    /// An Insert: when it is an outbox row, build its message (or the dead-letter record in
    /// its place) and publish it.
    async fn insert(&mut self, insert: &Insert) -> Result<(), Failure> {
        // None only for a table its Relation proved to be another; an insert no Relation
        // announced is an error.
        if self
            .tables
            .shape(insert.relation_id)
            .map_err(postgres)?
            .is_none()
        {
            return Ok(());
        }
        let transaction = self.transaction.ok_or_else(|| {
            postgres(Error::definite(
                "an insert arrived outside a transaction (a walbox bug)",
            ))
        })?;
        let index = self.index_in_transaction;
        self.index_in_transaction += 1;
        self.refuse_unchanged_toast(insert, &transaction, index)?;
        let outgoing = self.build(Source::Row(insert), &transaction, index)?;
        self.events += 1;
        let outgoing = self.replace_poison(outgoing, &transaction);
        let position = Position {
            commit_lsn: transaction.commit_lsn,
            index,
        };
        self.publish(outgoing, &transaction, position).await
    }

    /// An outbox insert whose row carries the "unchanged TOAST" marker is a definite stop, not
    /// a poison row for the dead-letter exchange: the value is not NULL but unknown to walbox
    /// (it is in the table, not in the stream), and PostgreSQL never writes the marker in an
    /// insert, so relaying the row with the column missing would deliver an event that was
    /// never committed. Nothing from this transaction on is acknowledged.
    fn refuse_unchanged_toast(
        &self,
        insert: &Insert,
        transaction: &Transaction,
        index: u32,
    ) -> Result<(), Failure> {
        let Some(shape) = self.tables.shape(insert.relation_id).map_err(postgres)? else {
            return Ok(());
        };
        let Some(column) = shape.unchanged_toast(&insert.new_tuple) else {
            return Ok(());
        };
        Err(postgres(Error::definite(format!(
            "the outbox insert at x-commit-lsn {lsn} (event {index} of transaction {xid}) \
             carries pgoutput's \"unchanged TOAST\" marker in column {column} instead of its \
             value. PostgreSQL sends that marker only for an update's unchanged column, never \
             for an insert, so the replication stream is not what PostgreSQL writes (a proxy or \
             plugin in between?). walbox stops here rather than relay the column as NULL, and \
             acknowledged nothing from this transaction on; please report it with the server \
             version",
            lsn = transaction.commit_lsn,
            xid = transaction.xid,
        ))))
    }

    /// A logical decoding message: when a `--messages` route takes its prefix, build its
    /// message and publish it. A transactional one is an event of its transaction, in its
    /// place among the transaction's rows; a non-transactional one stands alone in WAL order,
    /// between transactions, and (relayed or not) is a boundary at its LSN, as a keepalive
    /// there would be: the server has sent everything before it.
    async fn logical(&mut self, message: &LogicalMessage) -> Result<(), Failure> {
        let (transaction, position) = self.place(message)?;
        let id = message_id::from_position(position.commit_lsn, position.index);
        // A message whose prefix no route names is not published, and that is safe: the
        // prefix is how its writer says whom the message is for (PostgreSQL: "a textual prefix
        // that can be used by logical decoding plugins to easily recognize messages that are
        // interesting for them"), and it travels inside every message, so unlike a table's
        // identity it cannot be misread from a stale lookup. Other prefixes belong to other
        // readers of the WAL; `--messages` lists every prefix that is an event of ours. Its
        // index in the transaction was taken all the same (see `index_in_transaction`).
        if let Some((shape, tuple)) = self.config.messages.row(message, &id) {
            let outgoing =
                self.build(Source::Message(shape, &tuple), &transaction, position.index)?;
            self.events += 1;
            let outgoing = self.replace_poison(outgoing, &transaction);
            self.publish(outgoing, &transaction, position).await?;
        }
        if !message.transactional() {
            self.telemetry.metrics.received(message.lsn);
            self.boundary(message.lsn).await?;
        }
        Ok(())
    }

    /// The transaction a logical message belongs to and its position. A non-transactional
    /// message gets a transaction of its own: no xid (0), the time walbox read it (PostgreSQL
    /// sends no time with it), and as its commit LSN its position's, 8 bytes before the end of
    /// its record (publish::stream::id). Not the end PostgreSQL reports: that is often where
    /// the next transaction's commit record starts, so `--start-lsn` one past it (the advice
    /// walbox gives for an event it cannot send) would skip that transaction too, and
    /// `walbox replay --from-lsn` it would leave the message out.
    fn place(&mut self, message: &LogicalMessage) -> Result<(Transaction, Position), Failure> {
        match (message.transactional(), self.transaction) {
            (true, Some(transaction)) => {
                let index = self.index_in_transaction;
                self.index_in_transaction += 1;
                let position = Position {
                    commit_lsn: transaction.commit_lsn,
                    index,
                };
                Ok((transaction, position))
            }
            (false, None) => {
                let position = Position::of_message(message.lsn);
                let transaction = Transaction {
                    xid: 0,
                    commit_lsn: position.commit_lsn,
                    commit_time_micros: crate::outbox::timestamp::now_postgres_micros(),
                };
                Ok((transaction, position))
            }
            (true, None) => Err(postgres(Error::definite(format!(
                "a transactional logical message (prefix {}) arrived outside a transaction (a \
                 walbox bug)",
                message.prefix
            )))),
            (false, Some(transaction)) => Err(postgres(Error::definite(format!(
                "a non-transactional logical message (prefix {}) arrived inside the transaction \
                 committed at {}, which PostgreSQL does not do (a walbox bug)",
                message.prefix, transaction.commit_lsn
            )))),
        }
    }

    /// The message for the `index`-th event of `transaction`, marked as a replay when
    /// replaying: an outbox row or a logical message's row with its shape.
    fn build(
        &mut self,
        source: Source<'_, 'a>,
        transaction: &Transaction,
        index: u32,
    ) -> Result<Outgoing, Failure> {
        let (shape, tuple) = match source {
            Source::Message(shape, tuple) => (shape, tuple),
            Source::Row(insert) => match self.tables.shape(insert.relation_id).map_err(postgres)? {
                Some(shape) => (shape, &insert.new_tuple),
                None => {
                    return Err(postgres(Error::definite(
                        "an outbox insert arrived without the table's shape (a walbox bug)",
                    )));
                }
            },
        };
        let mut outgoing = match shape.message(tuple, transaction, index, &mut self.routing_key) {
            Ok(message) => Outgoing {
                message,
                dead_letter: false,
            },
            Err(problem) => self.unencodable(shape, tuple, transaction, index, problem)?,
        };
        if let Some(warning) = &outgoing.message.headers_warning {
            warn!(event_id = %outgoing.message.id, "{warning}");
        }
        if self.replaying {
            outgoing.message.mark_replayed();
        }
        Ok(outgoing)
    }

    /// A row that cannot become a message is handled like a poison event: with a dead-letter
    /// exchange its record goes there in its place; without one walbox stops on it rather
    /// than skip it.
    fn unencodable(
        &self,
        shape: &OutboxShape,
        tuple: &TupleData,
        transaction: &Transaction,
        index: u32,
        problem: EventError,
    ) -> Result<Outgoing, Failure> {
        let Some(exchange) = &self.unencodable_to else {
            return Err(postgres(Error::definite(format!(
                "an outbox row in the transaction committed at {lsn} cannot become an AMQP \
                 message: {problem}. walbox stops here rather than skip it. The row is already \
                 in the WAL as it was inserted, so changing it in the table does not help; \
                 instead give --dead-letter-exchange to send such rows there and go on, change \
                 the mapping (template, --body, column map) so the row can be encoded, or skip \
                 that whole transaction with `walbox run --start-lsn {skip_to}`",
                lsn = transaction.commit_lsn,
                skip_to = Lsn(transaction.commit_lsn.as_u64() + 1),
            ))));
        };
        let event = shape.fallback(tuple, transaction, index);
        warn!(event_id = %event.id, commit_lsn = %transaction.commit_lsn, %exchange, %problem,
            "an outbox row cannot become a message; sending its dead-letter record in its place");
        let plan = DeadLetter {
            event_id: event.id.clone(),
            commit_lsn: transaction.commit_lsn,
            reason: format!("the row cannot become a message: {problem}"),
            failures: 0,
            exchange: exchange.clone(),
            include_payload: true,
        };
        let record = plan.record(&event, transaction, &self.config.mapping.exchange_text());
        Ok(Outgoing {
            message: record,
            dead_letter: true,
        })
    }

    /// The condemned poison event's dead-letter record in its place, when this is it.
    fn replace_poison(&self, outgoing: Outgoing, transaction: &Transaction) -> Outgoing {
        let condemned = self.dead_letter.as_ref().filter(|plan| {
            !outgoing.dead_letter && plan.is(&outgoing.message.id, transaction.commit_lsn)
        });
        let Some(plan) = condemned else {
            return outgoing;
        };
        let message = outgoing.message;
        warn!(event_id = %message.id, commit_lsn = %transaction.commit_lsn,
            exchange = %plan.exchange, "sending the poison event's dead-letter record in its place");
        Outgoing {
            message: plan.record(&message, transaction, &self.config.mapping.exchange_text()),
            dead_letter: true,
        }
    }

    /// Publish within the in-flight window and hand the confirm to the tracker.
    async fn publish(
        &mut self,
        outgoing: Outgoing,
        transaction: &Transaction,
        position: Position,
    ) -> Result<(), Failure> {
        let Outgoing {
            message,
            dead_letter,
        } = outgoing;
        let permit = Arc::clone(&self.window)
            .acquire_owned()
            .await
            .map_err(|_| amqp(Error::transient("in-flight window closed")))?;
        let event = EventRef {
            event_id: message.id.clone(),
            commit_lsn: transaction.commit_lsn,
            commit_time_micros: transaction.commit_time_micros,
            dead_letter,
        };
        self.published_through = self.published_through.max(transaction.commit_lsn);
        let confirm = self
            .publisher
            .publish(message, position)
            .await
            .map_err(amqp)?;
        self.telemetry.metrics.published();
        self.pending
            .send(Pending::Published(Published {
                confirm,
                permit,
                event,
            }))
            .await
            .map_err(|_| amqp(Error::transient("the confirm tracker stopped")))
    }

    /// Tell the tracker that everything handed over so far lies before `lsn`.
    async fn boundary(&self, lsn: Lsn) -> Result<(), Failure> {
        self.pending
            .send(Pending::Boundary(lsn))
            .await
            .map_err(|_| amqp(Error::transient("the confirm tracker stopped")))
    }
}

/// Where an event's row comes from: an Insert of the outbox table (its shape from the
/// table's Relation), or a logical decoding message made into a row by its route's shape.
enum Source<'r, 'a> {
    Row(&'r Insert),
    Message(&'a OutboxShape, &'r TupleData),
}

/// A message to publish, and whether it is a dead-letter record standing in for its event.
struct Outgoing {
    message: OutboxMessage,
    dead_letter: bool,
}

fn postgres(error: Error) -> Failure {
    Failure::new(Side::Postgres, error)
}

fn amqp(error: Error) -> Failure {
    Failure::new(Side::Amqp, error)
}
