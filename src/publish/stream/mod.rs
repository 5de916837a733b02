//! The RabbitMQ stream publisher: exactly once, keyed on the WAL position.
//!
//! Every event is published by a named producer with a publishing id derived from its
//! position ([`id`]); the stream stores the highest id per name and drops a message whose id
//! is not above it, so republishing after a crash stores nothing twice. A dropped duplicate
//! still comes back as a confirm: the event is in the stream once.
//!
//! # Why the crate's low-level client, not its `Producer`
//!
//! The official crate (`rabbitmq-stream-client` 0.11) has hazards for this use, read in its
//! source:
//! - `Producer::send_with_confirm` waits 1 s for the confirm and then fails
//!   (`src/producer.rs`, `do_send_with_confirm`): a slow broker would look like a refusal.
//! - A confirm or publish error for a publishing id the producer does not track hits
//!   `todo!()` (`src/producer.rs`, `ProducerConfirmHandler::handle_message`); the panic is
//!   caught (`src/client/mod.rs`, `handle_message` wraps the handler in `catch_unwind`) but
//!   the rest of that confirm frame is then never delivered. Publishing the same id twice
//!   (two confirms, one waiter) triggers it.
//! - The producer's batching task packs whatever is queued (up to `batch_size`) into one
//!   publish frame without checking its size against the negotiated maximum
//!   (`src/producer.rs`, `schedule_batch_send`; `src/client/codec.rs` encodes any size); the
//!   broker closes the connection on a frame that is too large, and every retry would do the
//!   same. (The client's own `publish` has the same gap: "TODO batch publish with max frame
//!   size check", `src/client/mod.rs`.)
//! - On a lost connection the producer's waiters are never answered (the `None` branch of
//!   its handler only calls `on_closed`).
//! - Sub-entry batching (compressing several messages into one entry) would defeat
//!   deduplication, which works per entry; walbox never uses it.
//!
//! So walbox uses the crate's [`Client`] (`src/client/mod.rs`) with its own confirm handler:
//! a waiter per (producer, id) answered by a positive confirm, a publish error, or the loss
//! of the connection; ids strictly increasing per producer on one connection, so no id is
//! ever published twice there and an unknown confirm is impossible (and ignored if it came).
//!
//! # Several messages per publish frame
//!
//! [`Publisher::publish`] checks a message against the frame limit on its own, fixes its
//! place (its producer's id order) and queues it; one sending task ([`send_frames`]) takes
//! whatever is queued when it is free and packs each producer's messages, in queue order,
//! into publish frames that stay under [`MAX_FRAME`]. Each message keeps its own publishing
//! id (no sub-entry batching: deduplication is per message, as before), so a frame is only
//! fewer writes. Nothing waits to fill a frame: a lone message goes out at once. Once the
//! broker refuses a message, queued messages that were not yet sent never are (their
//! waiters hear "not sent"), so the refused-then-stop rule holds for every message of every
//! frame.

pub(crate) mod id;
pub(crate) mod message;
pub(crate) mod partition;
mod tls;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use rabbitmq_stream_client::error::ClientError;
use rabbitmq_stream_client::types::Message;
use rabbitmq_stream_client::types::{MessageResult, ResponseCode, ResponseKind};
use rabbitmq_stream_client::{Client, ClientOptions};
use rabbitmq_stream_protocol::codec::Encoder;
use tokio::sync::{mpsc, oneshot};
use tokio::time::timeout;
use tracing::{info, warn};

use self::id::{Position, PublishingId, producer_name};
use super::{Outcome, Publisher, Refused};
use crate::config::{PartitionKey, StreamNode, StreamTarget};
use crate::error::{Error, Result};
use crate::lsn::Lsn;
use crate::outbox::OutboxMessage;

/// The largest frame walbox sends: the crate's client asks for 1 MiB
/// (`src/client/options.rs`, `default_max_frame_size`) and the connection uses the smaller
/// of that and the broker's `stream.frame_max` (`src/client/mod.rs`, `negotiate_value`);
/// RabbitMQ's default is also 1 MiB. A broker configured lower closes the connection on a
/// frame between its limit and this one.
pub(crate) const MAX_FRAME: u32 = 1_048_576;

/// How long one node may take to accept a connection, and a request its answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Heartbeat asked of the broker (seconds): a dead link is noticed within a few of them.
const HEARTBEAT_SECS: u32 = 10;

/// The most queued messages the sending task takes for one round of frames.
const MAX_BATCH: usize = 1024;

/// The bytes of a publish frame before its messages: length 4, key 2, version 2, publisher
/// id 1, message count 4.
const FRAME_HEADER: u32 = 13;

type Waiters = Mutex<HashMap<(u8, u64), oneshot::Sender<Outcome>>>;

/// What the confirm handler and the publisher share.
struct Shared {
    waiters: Waiters,
    /// False once the connection is gone or the stream's topology changed.
    open: AtomicBool,
    /// An event was refused (before it was sent, or by the broker's publish error): nothing
    /// after it may go out in this session, or the stream would store later ids and then drop
    /// the refused event as a duplicate when it is published again.
    refused: AtomicBool,
    /// The broker refused an event: the sending task sends nothing more, not even what was
    /// queued before the refusal came. (A message refused before it was queued, too large
    /// for a frame, does not halt it: everything queued lies before that message.)
    halted: AtomicBool,
}

impl Shared {
    fn new() -> Shared {
        Shared {
            waiters: Mutex::new(HashMap::new()),
            open: AtomicBool::new(true),
            refused: AtomicBool::new(false),
            halted: AtomicBool::new(false),
        }
    }

    /// Answer every waiter with `why`: the connection will answer none of them.
    fn fail_all(&self, why: &str) {
        self.open.store(false, Ordering::SeqCst);
        let waiters: Vec<_> = self.waiters.lock().unwrap().drain().collect();
        for (_, waiter) in waiters {
            let _ = waiter.send(Outcome::Refused(Refused::Lost(Error::transient(why))));
        }
    }

    /// The broker refused these messages: answer their waiters, and publish nothing more in
    /// this session (see `refused`).
    fn refuse(&self, publisher_id: u8, refused: impl Iterator<Item = (u64, String)>) {
        self.halted.store(true, Ordering::SeqCst);
        self.refused.store(true, Ordering::SeqCst);
        let mut waiters = self.waiters.lock().unwrap();
        for (publishing_id, code) in refused {
            if let Some(waiter) = waiters.remove(&(publisher_id, publishing_id)) {
                let _ = waiter.send(Outcome::Refused(Refused::StreamError { code }));
            }
        }
    }

    /// These queued messages will not be sent: answer their waiters.
    fn not_sent(&self, frame: &Frame, why: &str) {
        let mut waiters = self.waiters.lock().unwrap();
        for id in &frame.ids {
            if let Some(waiter) = waiters.remove(&(frame.publisher_id, *id)) {
                let _ = waiter.send(Outcome::Refused(Refused::Lost(Error::transient(why))));
            }
        }
    }

    fn handle(&self, item: MessageResult) {
        match item {
            Some(Ok(response)) => match response.kind_ref() {
                ResponseKind::PublishConfirm(confirm) => {
                    let mut waiters = self.waiters.lock().unwrap();
                    for id in &confirm.publishing_ids {
                        // An unknown id cannot happen (each id is published once per
                        // connection); if it did, there is nobody to tell.
                        if let Some(waiter) = waiters.remove(&(confirm.publisher_id, *id)) {
                            let _ = waiter.send(Outcome::Confirmed);
                        }
                    }
                }
                ResponseKind::PublishError(error) => {
                    let refused = error.publishing_errors.iter().map(|refused| {
                        (refused.publishing_id, format!("{:?}", refused.error_code))
                    });
                    self.refuse(error.publisher_id, refused);
                }
                // The stream's leader moved or the stream was deleted: the broker drops this
                // connection's publishers, so nothing in flight will be confirmed here.
                ResponseKind::MetadataUpdate(_) => {
                    self.fail_all("the stream's leader moved or the stream was deleted");
                }
                _ => {}
            },
            Some(Err(error)) => {
                self.fail_all(&format!("reading from the stream connection: {error}"));
            }
            None => self.fail_all("the connection to the stream's broker closed"),
        }
    }
}

/// The broker's answer to one message.
pub(crate) enum StreamConfirm {
    /// Answered at publish time (refused before it was sent).
    Ready(Option<Outcome>),
    Waiting(oneshot::Receiver<Outcome>),
}

impl Future for StreamConfirm {
    type Output = Outcome;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        match &mut *self {
            StreamConfirm::Ready(outcome) => Poll::Ready(outcome.take().unwrap_or_else(|| {
                Outcome::Refused(Refused::Lost(Error::definite(
                    "a confirm was polled after it resolved (a walbox bug)",
                )))
            })),
            StreamConfirm::Waiting(receiver) => Poll::Ready(
                std::task::ready!(Pin::new(receiver).poll(cx)).unwrap_or_else(|_| {
                    Outcome::Refused(Refused::Lost(Error::transient(
                        "the stream connection closed before the broker answered",
                    )))
                }),
            ),
        }
    }
}

/// One generation's named producer of one partition on this connection.
struct Producer {
    generation: u16,
    /// Index into the partitions (0 for a plain stream).
    partition: usize,
    publisher_id: u8,
    /// The id of the last message published on this connection: the next must be above it.
    last_sent: Option<u64>,
}

/// What the broker had stored for one of walbox's producers when this connection started.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Stored {
    pub(crate) generation: u16,
    /// 0: nothing stored yet.
    pub(crate) publishing_id: u64,
}

impl Stored {
    /// The commit LSN of the stored event (zero when none is).
    pub(crate) fn commit_lsn(self) -> Lsn {
        if self.publishing_id == 0 {
            return Lsn::ZERO;
        }
        PublishingId {
            generation: self.generation,
            id: self.publishing_id,
        }
        .position()
        .commit_lsn
    }
}

pub(crate) struct StreamPublisher {
    client: Client,
    /// To the sending task ([`send_frames`]), in publishing order.
    queue: mpsc::UnboundedSender<Queued>,
    sender: tokio::task::JoinHandle<()>,
    /// The stream, or the super stream's partitions in the broker's order.
    partitions: Vec<String>,
    /// A super stream's routing fingerprint, part of its producers' names.
    routing: Option<String>,
    /// `--super-stream`: what picks the partition.
    partition_key: Option<PartitionKey>,
    slot: String,
    shared: Arc<Shared>,
    producers: tokio::sync::Mutex<Vec<Producer>>,
    /// The stored id of each partition's producer at start, for the dedup count.
    stored: Vec<Stored>,
    /// Events published in this session whose id was at or below the stored one: the broker
    /// drops them as duplicates (republished after a restart).
    deduplicated: Counter,
    /// The same, this session only: logged once the first new event goes out.
    republished: AtomicU64,
}

impl StreamPublisher {
    /// Connect to the stream's leader (through the first node of `--stream-url` that
    /// answers; for a super stream, to that node), and check for each partition that the
    /// broker's stored id for walbox's producer is not beyond `ceiling`, the end of this
    /// server's WAL.
    ///
    /// # The rewound-LSN check
    ///
    /// If the stored id's position lies beyond what this PostgreSQL server has ever written,
    /// the server is not the one whose WAL walbox published (a failover to a standby that
    /// lacked it, or a new cluster under the same slot name): its new events would reuse
    /// positions, and the broker would drop them as duplicates. walbox stops with a definite
    /// error instead of losing them. What it cannot see: a server that has already written
    /// past the stored position again (the reused range then lies below the stored id, and
    /// only `synchronized_standby_slots` prevents that).
    pub(crate) async fn connect(
        target: &StreamTarget,
        slot: &str,
        ceiling: Lsn,
        deduplicated: Counter,
    ) -> Result<Self> {
        let (client, shared) = connect_leader(target).await?;
        let checked = check_partitions(&client, target, slot, ceiling).await;
        let Layout {
            partitions,
            routing,
            stored,
        } = match checked {
            Ok(checked) => checked,
            Err(error) => {
                let _ = timeout(Duration::from_secs(2), client.close()).await;
                return Err(error);
            }
        };
        let (queue, queued) = mpsc::unbounded_channel();
        let sender = tokio::spawn(send_frames(client.clone(), Arc::clone(&shared), queued));
        Ok(StreamPublisher {
            client,
            queue,
            sender,
            partitions,
            routing,
            partition_key: target.partition_key.clone(),
            slot: slot.to_owned(),
            shared,
            producers: tokio::sync::Mutex::new(Vec::new()),
            stored,
            deduplicated,
            republished: AtomicU64::new(0),
        })
    }

    /// The furthest stored position over the partitions when this connection started.
    pub(crate) fn stored_through(&self) -> Lsn {
        self.stored
            .iter()
            .map(|stored| stored.commit_lsn())
            .max()
            .unwrap_or(Lsn::ZERO)
    }

    /// The producer's name: per generation, and per partition and routing of a super stream.
    fn producer_name(&self, generation: u16, partition: usize) -> String {
        name_of(
            &self.slot,
            generation,
            self.routing.as_deref().map(|routing| (partition, routing)),
        )
    }

    /// The partition `message` goes to: RabbitMQ's hash routing of its key.
    fn partition_of(&self, message: &OutboxMessage) -> usize {
        match &self.partition_key {
            None => 0,
            Some(key) => partition::route(&partition::key_of(message, key), self.partitions.len()),
        }
    }

    /// The publisher id of one generation's producer of `partition` on this connection,
    /// declared on first use.
    async fn producer<'a>(
        &self,
        producers: &'a mut Vec<Producer>,
        generation: u16,
        partition: usize,
    ) -> Result<&'a mut Producer> {
        if let Some(index) = producers
            .iter()
            .position(|p| p.generation == generation && p.partition == partition)
        {
            return Ok(&mut producers[index]);
        }
        let publisher_id = u8::try_from(producers.len())
            .map_err(|_| Error::definite("more than 256 producers on one stream connection"))?;
        let name = self.producer_name(generation, partition);
        let stream = &self.partitions[partition];
        let response = timeout(
            REQUEST_TIMEOUT,
            self.client
                .declare_publisher(publisher_id, Some(name.clone()), stream),
        )
        .await
        .map_err(|_| Error::transient("the stream broker did not answer declare-publisher"))?
        .map_err(|e| stream_error("declaring the producer", &e))?;
        if !response.is_ok() {
            return Err(response_error(
                &format!("declaring producer `{name}` on stream `{stream}`"),
                response.code(),
            ));
        }
        producers.push(Producer {
            generation,
            partition,
            publisher_id,
            last_sent: None,
        });
        Ok(producers.last_mut().expect("just pushed"))
    }
}

/// `walbox-<slot>-g<generation>`, with `-p<partition>-r<routing fingerprint>` on a super
/// stream ([`partition`]: a routing change is a new producer identity).
fn name_of(slot: &str, generation: u16, partition: Option<(usize, &str)>) -> String {
    match partition {
        None => producer_name(slot, generation),
        Some((partition, routing)) => {
            format!(
                "{}-p{partition}-r{routing}",
                producer_name(slot, generation)
            )
        }
    }
}

/// Where walbox publishes and what the broker stored there.
struct Layout {
    /// The stream, or the super stream's partitions in the broker's order.
    partitions: Vec<String>,
    /// A super stream's routing fingerprint ([`partition::fingerprint`]).
    routing: Option<String>,
    /// What the broker stored for walbox's producer of each partition.
    stored: Vec<Stored>,
}

impl Layout {
    /// The name of walbox's producer of partition `index`.
    fn producer(&self, slot: &str, index: usize) -> String {
        name_of(
            slot,
            self.stored[index].generation,
            self.routing.as_deref().map(|routing| (index, routing)),
        )
    }
}

/// One partition's producer and what the broker stored for it.
#[derive(Clone, Debug, serde::Serialize)]
pub(crate) struct StoredFor {
    pub(crate) stream: String,
    pub(crate) producer: String,
    /// 0: nothing stored yet.
    pub(crate) publishing_id: u64,
    /// The commit LSN the id stands for ("0/0" when none).
    pub(crate) commit_lsn: String,
}

/// For `walbox status`: what the broker stored for each of walbox's producers (the
/// generation of `ceiling`).
pub(crate) async fn stored_positions(
    target: &StreamTarget,
    slot: &str,
    ceiling: Lsn,
) -> Result<Vec<StoredFor>> {
    let (client, shared) = connect_leader(target).await?;
    let queried = stored_ids(&client, target, slot, ceiling).await;
    let _ = timeout(Duration::from_secs(2), client.close()).await;
    shared.fail_all("status query finished");
    let layout = queried?;
    Ok(layout
        .partitions
        .iter()
        .zip(&layout.stored)
        .enumerate()
        .map(|(index, (stream, here))| StoredFor {
            stream: stream.clone(),
            producer: layout.producer(slot, index),
            publishing_id: here.publishing_id,
            commit_lsn: here.commit_lsn().to_string(),
        })
        .collect())
}

/// The partitions to publish to (the stream itself, or the super stream's partitions in
/// the broker's order), and what the broker stored for walbox's producer of each.
async fn stored_ids(
    client: &Client,
    target: &StreamTarget,
    slot: &str,
    ceiling: Lsn,
) -> Result<Layout> {
    let partitions = match target.partition_key {
        None => vec![target.stream.clone()],
        Some(_) => {
            let response = timeout(REQUEST_TIMEOUT, client.partitions(target.stream.clone()))
                .await
                .map_err(|_| {
                    Error::transient("the stream broker did not answer a partitions query")
                })?
                .map_err(|e| stream_error("asking for the super stream's partitions", &e))?;
            if response.streams.is_empty() {
                return Err(Error::definite(format!(
                    "super stream `{}` has no partitions (or does not exist); run `walbox \
                     setup` to declare it, or create it",
                    target.stream
                )));
            }
            response.streams
        }
    };
    let routing = target
        .partition_key
        .as_ref()
        .map(|key| partition::fingerprint(key, &partitions));
    let generation = (ceiling.as_u64() >> 48) as u16;
    let mut stored = Vec::new();
    for (index, partition) in partitions.iter().enumerate() {
        let name = name_of(
            slot,
            generation,
            routing.as_deref().map(|routing| (index, routing)),
        );
        let publishing_id = timeout(
            REQUEST_TIMEOUT,
            client.query_publisher_sequence(&name, partition),
        )
        .await
        .map_err(|_| Error::transient("the stream broker did not answer a sequence query"))?
        .map_err(|e| stream_error("querying the producer's stored publishing id", &e))?;
        stored.push(Stored {
            generation,
            publishing_id,
        });
    }
    Ok(Layout {
        partitions,
        routing,
        stored,
    })
}

/// The partitions to publish to, and for each the stored id of walbox's producer, checked
/// against `ceiling` (see [`StreamPublisher::connect`]).
async fn check_partitions(
    client: &Client,
    target: &StreamTarget,
    slot: &str,
    ceiling: Lsn,
) -> Result<Layout> {
    let layout = stored_ids(client, target, slot, ceiling).await?;
    if let Some(routing) = &layout.routing
        && layout.stored.iter().all(|here| here.publishing_id == 0)
    {
        info!(super_stream = %target.stream, routing, partitions = layout.partitions.len(),
            "nothing stored yet under this routing's producers: a new super stream, or the super stream's routing changed (partition key or partitions); events the slot replays are stored again under the new producers, duplicates of what the old routing stored, never dropped");
    }
    for (index, (partition, here)) in layout.partitions.iter().zip(&layout.stored).enumerate() {
        if here.publishing_id == 0 {
            continue;
        }
        let name = layout.producer(slot, index);
        let stored_id = here.publishing_id;
        let through = here.commit_lsn();
        if through > ceiling {
            return Err(Error::definite(format!(
                "stream `{partition}` already holds events of slot `{slot}` up to commit \
                 {through} (producer `{name}`, publishing id {stored_id}), beyond the end of \
                 this PostgreSQL server's WAL ({ceiling}). This server is not the one those \
                 events came from (a failover to a standby that lacked that WAL, or a new \
                 cluster under the same slot name): its events would reuse those positions \
                 and the stream would drop them as duplicates. Fail over only to standbys \
                 listed in synchronized_standby_slots (walbox docs, \"PostgreSQL failover\"); to \
                 start afresh, relay this server into a new stream or under a new slot name"
            )));
        }
        info!(stream = %partition, producer = %name, stored_publishing_id = stored_id,
            stored_through = %through,
            "the stream holds this slot's events up to here; republished ones at or before it are dropped by the broker");
    }
    Ok(layout)
}

/// Connect to the first node that answers, then to the stream's leader if that is another
/// node (publishing through another node works, but every message then makes an extra hop).
async fn connect_leader(target: &StreamTarget) -> Result<(Client, Arc<Shared>)> {
    let mut failures = Vec::new();
    for node in &target.nodes {
        match connect_node(node, &node.host, node.port).await {
            Ok(client) => {
                let metadata = timeout(
                    REQUEST_TIMEOUT,
                    client.metadata(vec![target.stream.clone()]),
                )
                .await
                .map_err(|_| Error::transient("the stream broker did not answer a metadata query"))?
                .map_err(|e| stream_error("asking for the stream's leader", &e))?;
                let client = match metadata.get(&target.stream) {
                    Some(meta)
                        if (meta.leader.host.as_str(), meta.leader.port)
                            != (node.host.as_str(), u32::from(node.port)) =>
                    {
                        let port = u16::try_from(meta.leader.port).unwrap_or(node.port);
                        match connect_node(node, &meta.leader.host, port).await {
                            Ok(leader) => {
                                let _ = timeout(Duration::from_secs(2), client.close()).await;
                                leader
                            }
                            Err(error) => {
                                warn!(%error, leader = %meta.leader.host, port,
                                    "cannot reach the stream's leader; publishing through another node");
                                client
                            }
                        }
                    }
                    _ => client,
                };
                let shared = Arc::new(Shared::new());
                let handler = Arc::clone(&shared);
                client
                    .set_handler(move |item: MessageResult| {
                        let handler = Arc::clone(&handler);
                        async move {
                            handler.handle(item);
                            Ok(())
                        }
                    })
                    .await;
                return Ok((client, shared));
            }
            Err(error) => {
                if target.nodes.len() > 1 {
                    warn!(node = %node, %error, "stream node failed; trying the next");
                }
                failures.push(error);
            }
        }
    }
    Err(no_node(failures))
}

/// Every node failed: definite when each said so (a certificate or credentials no retry will
/// change), else transient (the supervisor backs off and tries again).
fn no_node(mut failures: Vec<Error>) -> Error {
    if failures.iter().all(|error| !error.is_transient()) && !failures.is_empty() {
        return failures.swap_remove(0);
    }
    let reasons: Vec<String> = failures.iter().map(ToString::to_string).collect();
    Error::transient(format!("no stream node answered: {}", reasons.join("; ")))
}

async fn connect_node(node: &StreamNode, host: &str, port: u16) -> Result<Client> {
    let scheme = if node.tls.is_some() {
        "rabbitmq-stream+tls"
    } else {
        "rabbitmq-stream"
    };
    let connecting = format!("connecting to {scheme}://{host}:{port}");
    let mut options = ClientOptions::builder()
        .host(host)
        .port(port)
        .user(&node.user)
        .password(node.password.expose())
        .v_host(&node.vhost)
        .heartbeat(HEARTBEAT_SECS)
        .max_frame_size(MAX_FRAME)
        .client_provided_name("walbox".to_owned());
    if let Some(tls) = &node.tls {
        options = options.tls(
            tls::configuration(tls, host)
                .map_err(|why| Error::definite(format!("{connecting}: {why}")))?,
        );
    }
    let connected = timeout(REQUEST_TIMEOUT, Client::connect(options.build()))
        .await
        .map_err(|_| {
            Error::transient(format!(
                "{connecting}: no answer within {} s",
                REQUEST_TIMEOUT.as_secs()
            ))
        })?;
    match (connected, &node.tls) {
        (Ok(client), _) => Ok(client),
        (Err(ClientError::ConnectionClosed), Some(tls)) => {
            match tls::refusal_after_handshake(tls, host, port).await {
                Some(why) => Err(Error::definite(format!("{connecting}: {why}"))),
                None => Err(Error::transient(format!("{connecting}: connection closed"))),
            }
        }
        (Err(error), _) => Err(stream_error(&connecting, &error)),
    }
}

/// A client error: a refused login or a TLS handshake that failed on a certificate is
/// definite, anything else (a cut, a timeout) transient.
fn stream_error(context: &str, error: &ClientError) -> Error {
    match error {
        ClientError::RequestError(code) => response_error(context, code),
        ClientError::Io(io) => match tls::handshake_refusal(io) {
            Some(why) => Error::definite(format!("{context}: {why}")),
            None => Error::transient(format!("{context}: {io}")),
        },
        ClientError::Tls(tls) => Error::definite(format!("{context}: TLS: {tls}")),
        other => Error::transient(format!("{context}: {other}")),
    }
}

/// A response code: what configuration can fix is definite, the rest transient.
fn response_error(context: &str, code: &ResponseCode) -> Error {
    match code {
        ResponseCode::AuthenticationFailure
        | ResponseCode::SaslMechanismNotSupported
        | ResponseCode::VirtualHostAccessFailure
        | ResponseCode::AccessRefused => Error::definite(format!(
            "{context}: the broker refused access ({code:?}); check the stream URL's user, \
             password and vhost and their permissions"
        )),
        ResponseCode::StreamDoesNotExist => Error::definite(format!(
            "{context}: the stream does not exist ({code:?}); run `walbox setup --target \
             stream` to declare it, or create it"
        )),
        other => Error::transient(format!("{context}: {other:?}")),
    }
}

/// The bytes `message` takes in a publish frame (protocol version 1): publishing id 8,
/// length 4, the message. A frame is [`FRAME_HEADER`] plus its messages' sizes.
fn size_in_frame(message: &Message) -> u32 {
    8 + 4 + message.encoded_size()
}

/// One message waiting in the queue for its publish frame.
struct Queued {
    publisher_id: u8,
    id: u64,
    message: Message,
    /// [`size_in_frame`].
    size: u32,
}

/// One producer's messages for one publish frame, in publishing order.
struct Frame {
    publisher_id: u8,
    ids: Vec<u64>,
    messages: Vec<Message>,
    /// The frame's bytes, length included.
    size: u32,
}

/// Pack `batch` (in queue order) into frames: each producer's messages in their order,
/// a new frame whenever the next message would take its producer's frame over
/// [`MAX_FRAME`]. A producer's frames come in the order of their messages. (Frames of
/// different producers may go out in another order than their messages were queued: each
/// producer's ids are deduplicated on their own, so only each producer's order matters.)
fn frames(batch: &mut Vec<Queued>) -> Vec<Frame> {
    let mut frames: Vec<Frame> = Vec::new();
    // Each producer's last frame: (publisher id, index into `frames`).
    let mut open: Vec<(u8, usize)> = Vec::new();
    for queued in batch.drain(..) {
        let last = open
            .iter()
            .find(|(publisher_id, _)| *publisher_id == queued.publisher_id)
            .map(|&(_, at)| at)
            .filter(|&at| frames[at].size + queued.size <= MAX_FRAME);
        let at = match last {
            Some(at) => at,
            None => {
                frames.push(Frame {
                    publisher_id: queued.publisher_id,
                    ids: Vec::new(),
                    messages: Vec::new(),
                    size: FRAME_HEADER,
                });
                let at = frames.len() - 1;
                open.retain(|(publisher_id, _)| *publisher_id != queued.publisher_id);
                open.push((queued.publisher_id, at));
                at
            }
        };
        let frame = &mut frames[at];
        frame.ids.push(queued.id);
        frame.messages.push(queued.message);
        frame.size += queued.size;
    }
    frames
}

/// The sending task: whatever was queued since it last sent, packed into [`frames`] and
/// written, until the publisher is closed or dropped. After the broker refused a message,
/// or once the connection is gone, what is still queued is answered "not sent".
async fn send_frames(
    client: Client,
    shared: Arc<Shared>,
    mut queue: mpsc::UnboundedReceiver<Queued>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        for frame in frames(&mut batch) {
            if shared.halted.load(Ordering::SeqCst) {
                shared.not_sent(
                    &frame,
                    "not sent: the broker refused an earlier event of this session",
                );
                continue;
            }
            if !shared.open.load(Ordering::SeqCst) {
                shared.not_sent(&frame, "not sent: the stream connection closed");
                continue;
            }
            let Frame {
                publisher_id,
                messages,
                ..
            } = frame;
            if let Err(error) = client.publish(publisher_id, messages, 1).await {
                shared.fail_all(&format!("publishing to the stream: {error}"));
            }
        }
    }
}

impl Publisher for StreamPublisher {
    type Confirm = StreamConfirm;

    /// Queue one message for the sending task, numbered by its position.
    async fn publish(&self, message: OutboxMessage, position: Position) -> Result<StreamConfirm> {
        if self.shared.refused.load(Ordering::SeqCst) {
            return Err(Error::transient(
                "an earlier event of this session was refused; nothing after it is published",
            ));
        }
        let numbered = position
            .publishing_id()
            .map_err(|unnumbered| Error::definite(unnumbered.to_string()))?;
        let partition = self.partition_of(&message);
        let mut producers = self.producers.lock().await;
        let producer = self
            .producer(&mut producers, numbered.generation, partition)
            .await?;
        // Never the same id twice on one connection (two confirms for one waiter) and never
        // out of order (the broker would drop the later-sent, lower id).
        if producer.last_sent.is_some_and(|last| numbered.id <= last) {
            return Err(Error::definite(format!(
                "event {} (commit {}, index {}) is not after the event published before it on \
                 this connection (a walbox bug); stopping rather than lose it to \
                 deduplication",
                message.id, position.commit_lsn, position.index
            )));
        }
        producer.last_sent = Some(numbered.id);
        let publisher_id = producer.publisher_id;
        let stream_message = message::stream_message(&message, numbered.id);
        let size = size_in_frame(&stream_message);
        if FRAME_HEADER + size > MAX_FRAME {
            self.shared.refused.store(true, Ordering::SeqCst);
            return Ok(StreamConfirm::Ready(Some(Outcome::Refused(
                Refused::Rejected {
                    reason: format!(
                        "the message needs a {}-byte frame, above the stream connection's \
                         {MAX_FRAME}-byte limit",
                        FRAME_HEADER + size
                    ),
                },
            ))));
        }
        let stored = self.stored[partition];
        if numbered.generation == stored.generation && numbered.id <= stored.publishing_id {
            self.deduplicated.inc();
            self.republished.fetch_add(1, Ordering::Relaxed);
        } else {
            let republished = self.republished.swap(0, Ordering::Relaxed);
            if republished > 0 {
                info!(stream = %self.partitions[partition], republished,
                    "republished events the stream already held; the broker drops them as duplicates");
            }
        }
        let (sender, receiver) = oneshot::channel();
        let key = (publisher_id, numbered.id);
        self.shared.waiters.lock().unwrap().insert(key, sender);
        // The handler marks the connection closed before it answers the waiters: either it
        // saw this one, or this check sees the mark.
        let queued = self.queue.send(Queued {
            publisher_id,
            id: numbered.id,
            message: stream_message,
            size,
        });
        drop(producers);
        if queued.is_err() {
            self.shared.waiters.lock().unwrap().remove(&key);
            return Err(Error::transient(
                "the stream publisher's sending task ended",
            ));
        }
        if !self.shared.open.load(Ordering::SeqCst) {
            self.shared.waiters.lock().unwrap().remove(&key);
        }
        Ok(StreamConfirm::Waiting(receiver))
    }

    fn is_connected(&self) -> bool {
        self.shared.open.load(Ordering::SeqCst) && !self.client.is_closed()
    }

    /// Let the sending task send what is queued (at most 2 s), then close the connection.
    async fn close(self) {
        let StreamPublisher {
            client,
            queue,
            sender,
            shared,
            ..
        } = self;
        drop(queue);
        let _ = timeout(Duration::from_secs(2), sender).await;
        if shared.open.load(Ordering::SeqCst) && !client.is_closed() {
            let _ = timeout(Duration::from_secs(2), client.close()).await;
        }
        shared.fail_all("walbox closed the stream connection");
    }
}

/// Create the stream when it is missing (`--stream-declare create`): true when this call
/// created it. The broker's defaults apply (replicated across the cluster's nodes).
pub(crate) async fn declare(target: &StreamTarget) -> Result<bool> {
    let client = connect_any(target).await?;
    let creating = async {
        match target.partition_key {
            None => client.create_stream(&target.stream, HashMap::new()).await,
            // RabbitMQ's convention: partitions NAME-0 … NAME-<N-1>, bound with keys 0 … N-1.
            Some(_) => {
                let keys: Vec<String> = (0..target.partitions).map(|n| n.to_string()).collect();
                let partitions = keys
                    .iter()
                    .map(|key| format!("{}-{key}", target.stream))
                    .collect();
                client
                    .create_super_stream(&target.stream, partitions, keys, HashMap::new())
                    .await
            }
        }
    };
    let created = timeout(REQUEST_TIMEOUT, creating).await;
    let _ = timeout(Duration::from_secs(2), client.close()).await;
    let response = created
        .map_err(|_| Error::transient("the stream broker did not answer create-stream"))?
        .map_err(|e| stream_error("creating the stream", &e))?;
    match response.code() {
        ResponseCode::Ok => Ok(true),
        ResponseCode::StreamAlreadyExists => Ok(false),
        code => Err(response_error(
            &format!("creating stream `{}`", target.stream),
            code,
        )),
    }
}

/// Any node that answers (the stream may not exist yet, so it has no leader).
async fn connect_any(target: &StreamTarget) -> Result<Client> {
    let mut failures = Vec::new();
    for node in &target.nodes {
        match connect_node(node, &node.host, node.port).await {
            Ok(client) => return Ok(client),
            Err(error) => failures.push(error),
        }
    }
    Err(no_node(failures))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rabbitmq_stream_protocol::Request;
    use rabbitmq_stream_protocol::commands::publish::PublishCommand;
    use rabbitmq_stream_protocol::types::PublishedMessage;

    /// The protocol crate's own size of the publish frame of `messages`, length included.
    fn encoded_frame(publisher_id: u8, messages: &[(u64, Message)]) -> u32 {
        let published = messages
            .iter()
            .map(|(id, message)| PublishedMessage::new(*id, message.clone(), None))
            .collect();
        4 + Request::from(PublishCommand::new(publisher_id, published, 1)).encoded_size()
    }

    fn queued(publisher_id: u8, id: u64, body: usize) -> Queued {
        let message = Message::builder().body(vec![7u8; body]).build();
        Queued {
            publisher_id,
            id,
            size: size_in_frame(&message),
            message,
        }
    }

    #[test]
    fn frames_are_measured_with_their_header() {
        let small = Message::builder().body(vec![0u8; 100]).build();
        let size = FRAME_HEADER + size_in_frame(&small);
        assert_eq!(size, encoded_frame(0, &[(1, small.clone())]));
        // length 4, key 2, version 2, publisher 1, count 4, id 8, message length 4, message.
        assert!(size > 100 + 25 && size < 100 + 40, "{size}");
        let large = Message::builder()
            .body(vec![0u8; MAX_FRAME as usize])
            .build();
        assert!(FRAME_HEADER + size_in_frame(&large) > MAX_FRAME);
    }

    #[test]
    fn frames_keep_each_producers_order_and_stay_under_the_limit() {
        // Three producers interleaved, bodies from 10 bytes to 300 KB: some frames fill up.
        let mut batch = Vec::new();
        let mut expected: HashMap<u8, Vec<u64>> = HashMap::new();
        for n in 0..300u64 {
            let publisher_id = (n * 7 % 3) as u8;
            let body = if n % 50 == 0 {
                300_000
            } else {
                10 + (n as usize * 37) % 4000
            };
            batch.push(queued(publisher_id, 1000 + n, body));
            expected.entry(publisher_id).or_default().push(1000 + n);
        }
        let frames = frames(&mut batch);
        assert!(batch.is_empty());
        let mut sent: HashMap<u8, Vec<u64>> = HashMap::new();
        for frame in &frames {
            assert!(!frame.ids.is_empty());
            let pairs: Vec<(u64, Message)> = frame
                .ids
                .iter()
                .copied()
                .zip(frame.messages.iter().cloned())
                .collect();
            // The packer's count is the protocol's, and under the limit.
            assert_eq!(frame.size, encoded_frame(frame.publisher_id, &pairs));
            assert!(frame.size <= MAX_FRAME, "{}", frame.size);
            sent.entry(frame.publisher_id)
                .or_default()
                .extend(&frame.ids);
        }
        // Every message once, each producer's in its order; several messages per frame.
        assert_eq!(sent, expected);
        assert!(frames.len() < 30, "{} frames", frames.len());
        assert!(frames.iter().any(|frame| frame.size > MAX_FRAME / 2));
    }

    #[tokio::test]
    async fn a_refusal_halts_sending_and_answers_what_was_queued() {
        let shared = Shared::new();
        let (sender, mut receiver) = oneshot::channel();
        shared.waiters.lock().unwrap().insert((0, 9), sender);
        shared.refuse(0, [(8, "StreamNotAvailable".to_owned())].into_iter());
        let frame = frames(&mut vec![queued(0, 9, 10)]).remove(0);
        assert!(shared.halted.load(Ordering::SeqCst));
        shared.not_sent(&frame, "not sent");
        match receiver.try_recv() {
            Ok(Outcome::Refused(Refused::Lost(error))) => assert!(error.is_transient()),
            other => panic!("expected a message that was not sent, got {other:?}"),
        }
    }

    #[test]
    fn a_lost_connection_answers_every_waiter() {
        let shared = Shared::new();
        let (sender, mut receiver) = oneshot::channel();
        shared.waiters.lock().unwrap().insert((0, 7), sender);
        shared.handle(None);
        assert!(!shared.open.load(Ordering::SeqCst));
        match receiver.try_recv() {
            Ok(Outcome::Refused(Refused::Lost(error))) => assert!(error.is_transient()),
            other => panic!("expected a lost confirm, got {other:?}"),
        }
    }

    #[test]
    fn a_publish_error_refuses_its_event_and_ends_publishing_for_the_session() {
        let shared = Shared::new();
        let (refused_sender, mut refused_receiver) = oneshot::channel();
        let (later_sender, mut later_receiver) = oneshot::channel();
        shared
            .waiters
            .lock()
            .unwrap()
            .insert((0, 7), refused_sender);
        shared.waiters.lock().unwrap().insert((0, 8), later_sender);
        shared.refuse(0, [(7, "StreamNotAvailable".to_owned())].into_iter());
        assert!(shared.refused.load(Ordering::SeqCst));
        match refused_receiver.try_recv() {
            Ok(Outcome::Refused(Refused::StreamError { code })) => {
                assert_eq!(code, "StreamNotAvailable")
            }
            other => panic!("expected a stream error, got {other:?}"),
        }
        // The later message is still waiting for its own answer: a refusal never confirms it.
        assert!(later_receiver.try_recv().is_err());
    }
}
