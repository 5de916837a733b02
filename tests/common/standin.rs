//! A stand-in AMQP 0-9-1 broker on 127.0.0.1 that forces one frame order a real RabbitMQ only
//! produces when timing happens to line up: the `basic.return` of an unroutable message, then
//! one `basic.ack` with `multiple` covering it and the next (routed) message. It speaks what
//! walbox's publishers need (connection and channel handshakes, confirm mode, declares,
//! publishes split over method, header and body frames, heartbeats, closes) and records, by
//! `message_id`, every message it took and every one it returned, so a test can count.
//!
//! Its routing rule, for the messages whose id is in the unroutable set: each is returned
//! every time it is published until it has been the first message returned on a connection,
//! and taken from then on. A client reads its confirms in order, so the first return on a
//! connection is the one it acts on (walbox holds that event and ends the session); returns
//! after it on the same connection go unread. So every unroutable event meets the frame order
//! once where the client acts on it, and the run ends after at most one connection per
//! unroutable event, whatever position the client resumes from.
//!
//! The one timer: a returned message's ack waits for the next routed message, but a client
//! that sends nothing for [`LONE_ACK_AFTER`] while such an ack is held is waiting for it (a
//! window of one message), so it gets that ack alone. A real broker never holds an ack
//! indefinitely; without this the two would wait for each other. It decides only whether the
//! ack is a lone one ([`ReturnAck::Alone`]), never whether a message is returned.

use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use amq_protocol::frame::{AMQPContentHeader, AMQPFrame, WriteContext, gen_frame, parse_frame};
use amq_protocol::protocol::{
    AMQPClass, BasicProperties, basic, channel, confirm, connection, exchange, queue,
};
use amq_protocol::types::{AMQPValue, FieldTable, LongString, ShortString};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Interval;

/// What the stand-in saw, for a test's counts.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    /// Its answer to every message published in confirm mode, in arrival order.
    pub answers: Vec<Answer>,
    /// Connections the client opened.
    pub connections: usize,
    /// Frames it does not speak, or a publish outside confirm mode: a test should see none.
    pub unexpected: Vec<String>,
}

/// The stand-in's answer to one message.
#[derive(Clone, Debug)]
pub struct Answer {
    /// The connection it came on, counted from 1.
    pub connection: usize,
    pub message_id: String,
    /// Returned (else taken: acked with no return).
    pub returned: bool,
    /// The first message returned on its connection: the return the client acts on.
    pub first_return: bool,
    /// How a returned message was acked (`None`: taken, or the connection closed first).
    pub ack: Option<ReturnAck>,
}

/// How the ack of a returned message went out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReturnAck {
    /// In one ack with `multiple` with the next routed message: the frame order under test.
    WithNext,
    /// Alone, to a client that waited for it (see [`LONE_ACK_AFTER`]).
    Alone,
}

impl Seen {
    /// The ids of the messages it took, in arrival order, repeats included.
    pub fn taken(&self) -> impl Iterator<Item = &str> {
        self.answers
            .iter()
            .filter(|answer| !answer.returned)
            .map(|answer| answer.message_id.as_str())
    }

    /// The ids of the messages it returned, in order, repeats included.
    pub fn returned(&self) -> impl Iterator<Item = &str> {
        self.answers
            .iter()
            .filter(|answer| answer.returned)
            .map(|answer| answer.message_id.as_str())
    }

    /// The returns the client acted on (each connection's first) whose ack went out `how`.
    pub fn first_returns_acked(&self, how: ReturnAck) -> usize {
        self.answers
            .iter()
            .filter(|answer| answer.first_return && answer.ack == Some(how))
            .count()
    }
}

/// A running stand-in broker; stops (with its connections) when dropped.
pub struct StandIn {
    pub port: u16,
    seen: Arc<Mutex<Seen>>,
    listener: JoinHandle<()>,
}

impl StandIn {
    /// Listen on a free port; the messages whose `message_id` is in `unroutable` are returned.
    pub async fn start(unroutable: HashSet<String>) -> StandIn {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the stand-in broker");
        let port = listener.local_addr().expect("its address").port();
        let routing = Arc::new(Routing {
            unroutable,
            seen: Arc::default(),
        });
        let seen = Arc::clone(&routing.seen);
        let listener = tokio::spawn(async move {
            // Dropping the set (the listener aborted) aborts every connection with it.
            let mut connections = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let number = {
                    let mut seen = routing.seen.lock().unwrap();
                    seen.connections += 1;
                    seen.connections
                };
                let connection = Connection::new(stream, number, Arc::clone(&routing));
                connections.spawn(connection.serve());
            }
        });
        StandIn {
            port,
            seen,
            listener,
        }
    }

    /// An `--amqp-url` for it.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    pub fn seen(&self) -> Seen {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

/// The routing rule and the record, shared by every connection.
struct Routing {
    unroutable: HashSet<String>,
    seen: Arc<Mutex<Seen>>,
}

impl Routing {
    /// Whether the message `id` is returned (else taken), recorded before any answer goes
    /// out, so a test that saw a confirm also sees the record. `first` is whether nothing was
    /// returned on this connection yet. The answer's place in [`Seen::answers`] comes back
    /// with a return, to record its ack.
    fn returns(&self, id: &str, connection: usize, first: bool) -> Option<usize> {
        let mut seen = self.seen.lock().unwrap();
        let acted_on = seen
            .answers
            .iter()
            .any(|answer| answer.first_return && answer.message_id == id);
        let returned = self.unroutable.contains(id) && !acted_on;
        seen.answers.push(Answer {
            connection,
            message_id: id.to_owned(),
            returned,
            first_return: returned && first,
            ack: None,
        });
        returned.then_some(seen.answers.len() - 1)
    }

    /// The returned messages at these places in [`Seen::answers`] were acked `how`.
    fn acked(&self, answers: &[usize], how: ReturnAck) {
        let mut seen = self.seen.lock().unwrap();
        for &answer in answers {
            seen.answers[answer].ack = Some(how);
        }
    }

    fn unexpected(&self, what: String) {
        self.seen.lock().unwrap().unexpected.push(what);
    }
}

/// A message arriving over its method, header and body frames.
struct Incoming {
    publish: basic::Publish,
    header: Option<AMQPContentHeader>,
    body: Vec<u8>,
}

/// One open channel.
#[derive(Default)]
struct Channel {
    confirm: bool,
    /// The delivery tag of the last message published on it in confirm mode (tags count from 1).
    last_tag: u64,
    /// Returned messages whose acks wait for the next routed message's: their tags and their
    /// places in [`Seen::answers`].
    held: Vec<(u64, usize)>,
    incoming: Option<Incoming>,
}

/// The frame size the stand-in offers (RabbitMQ's default).
const FRAME_MAX: u32 = 131_072;
/// The heartbeat interval it offers, in seconds.
const HEARTBEAT: u16 = 10;
/// How long a client may send nothing while a returned message's ack is held before it gets
/// that ack alone (see the module doc).
pub const LONE_ACK_AFTER: Duration = Duration::from_millis(500);
/// AMQP's reply code for an unroutable mandatory message.
const NO_ROUTE: u16 = 312;

/// One client connection.
struct Connection {
    stream: TcpStream,
    /// Its number, counted from 1.
    number: usize,
    buffer: Vec<u8>,
    routing: Arc<Routing>,
    channels: HashMap<u16, Channel>,
    frame_max: u32,
    /// Sends our heartbeats once the client agreed an interval.
    heartbeat: Option<Interval>,
    /// A message was returned on this connection.
    returned_any: bool,
}

impl Connection {
    fn new(stream: TcpStream, number: usize, routing: Arc<Routing>) -> Self {
        Connection {
            stream,
            number,
            buffer: Vec::with_capacity(64 * 1024),
            routing,
            channels: HashMap::new(),
            frame_max: FRAME_MAX,
            heartbeat: None,
            returned_any: false,
        }
    }

    /// Answer frames until the client closes the connection or goes away.
    async fn serve(mut self) {
        if let Err(error) = self.exchange_frames().await {
            // A client that drops the socket mid-frame is a session ending, not a test failure.
            eprintln!("stand-in broker: connection ended: {error}");
        }
    }

    async fn exchange_frames(&mut self) -> io::Result<()> {
        loop {
            let holding = self
                .channels
                .values()
                .any(|channel| !channel.held.is_empty());
            let ticker = self.heartbeat.as_mut();
            tokio::select! {
                read = self.stream.read_buf(&mut self.buffer) => {
                    if read? == 0 {
                        return Ok(());
                    }
                    while let Some(frame) = self.next_frame()? {
                        self.handle(frame).await?;
                    }
                }
                _ = tick(ticker) => self.send(&[AMQPFrame::Heartbeat]).await?,
                _ = tokio::time::sleep(LONE_ACK_AFTER), if holding => self.ack_held_alone().await?,
            }
        }
    }

    /// The next whole frame in the buffer, if one has arrived.
    fn next_frame(&mut self) -> io::Result<Option<AMQPFrame>> {
        let (consumed, frame) = match parse_frame(self.buffer.as_slice()) {
            Ok((rest, frame)) => (self.buffer.len() - rest.len(), frame),
            Err(error) if error.is_incomplete() => return Ok(None),
            Err(error) => return Err(io::Error::other(format!("unparsable frame: {error}"))),
        };
        self.buffer.drain(..consumed);
        Ok(Some(frame))
    }

    /// Answer one frame.
    async fn handle(&mut self, frame: AMQPFrame) -> io::Result<()> {
        match frame {
            AMQPFrame::ProtocolHeader(_) => {
                let start = AMQPClass::Connection(start());
                self.send(&[method_of(0, start)]).await?
            }
            AMQPFrame::Heartbeat => {}
            AMQPFrame::Method(channel, AMQPClass::Connection(method)) => {
                self.on_connection(channel, method).await?
            }
            AMQPFrame::Method(channel, AMQPClass::Channel(method)) => {
                self.on_channel(channel, method).await?
            }
            AMQPFrame::Method(channel, AMQPClass::Basic(basic::AMQPMethod::Publish(publish))) => {
                self.channel(channel).incoming = Some(Incoming {
                    publish,
                    header: None,
                    body: Vec::new(),
                });
            }
            AMQPFrame::Method(channel, class) => self.on_other_method(channel, class).await?,
            AMQPFrame::Header(channel, header) => {
                if let Some(incoming) = &mut self.channel(channel).incoming {
                    incoming.header = Some(header);
                }
                self.complete(channel).await?;
            }
            AMQPFrame::Body(channel, bytes) => {
                if let Some(incoming) = &mut self.channel(channel).incoming {
                    incoming.body.extend_from_slice(&bytes);
                }
                self.complete(channel).await?;
            }
            other => self.routing.unexpected(format!("frame {other}")),
        }
        Ok(())
    }

    /// The channel `channel` (made if the client skipped channel.open).
    fn channel(&mut self, channel: u16) -> &mut Channel {
        self.channels.entry(channel).or_default()
    }

    async fn on_connection(
        &mut self,
        channel: u16,
        method: connection::AMQPMethod,
    ) -> io::Result<()> {
        use connection::AMQPMethod as M;
        match method {
            M::StartOk(_) => {
                let tune = connection::Tune {
                    channel_max: 2047,
                    frame_max: FRAME_MAX,
                    heartbeat: HEARTBEAT,
                };
                self.send(&[method_of(channel, AMQPClass::Connection(M::Tune(tune)))])
                    .await?;
            }
            M::TuneOk(tuned) => {
                self.frame_max = if tuned.frame_max == 0 {
                    FRAME_MAX
                } else {
                    tuned.frame_max
                };
                if tuned.heartbeat > 0 {
                    let every = Duration::from_secs(u64::from(tuned.heartbeat)) / 2;
                    let first = tokio::time::Instant::now() + every;
                    self.heartbeat = Some(tokio::time::interval_at(first, every));
                }
            }
            M::Open(_) => {
                let open_ok = M::OpenOk(connection::OpenOk {});
                self.send(&[method_of(channel, AMQPClass::Connection(open_ok))])
                    .await?;
            }
            M::Close(_) => {
                // The client closes the socket once it has our close-ok (AMQP 0-9-1
                // connection.close-ok), so keep reading until it does.
                let close_ok = M::CloseOk(connection::CloseOk {});
                self.send(&[method_of(channel, AMQPClass::Connection(close_ok))])
                    .await?;
                self.heartbeat = None;
            }
            other => self
                .routing
                .unexpected(format!("connection method {other:?}")),
        }
        Ok(())
    }

    async fn on_channel(&mut self, channel: u16, method: channel::AMQPMethod) -> io::Result<()> {
        use channel::AMQPMethod as M;
        let answer = match method {
            M::Open(_) => {
                self.channels.insert(channel, Channel::default());
                M::OpenOk(channel::OpenOk {})
            }
            M::Close(_) => {
                self.channels.remove(&channel);
                M::CloseOk(channel::CloseOk {})
            }
            M::CloseOk(_) => return Ok(()),
            other => {
                self.routing.unexpected(format!("channel method {other:?}"));
                return Ok(());
            }
        };
        self.send(&[method_of(channel, AMQPClass::Channel(answer))])
            .await
    }

    /// Confirm mode and declares: each answered with its `-ok` unless sent with no-wait.
    async fn on_other_method(&mut self, channel: u16, class: AMQPClass) -> io::Result<()> {
        let (nowait, answer) = match class {
            AMQPClass::Confirm(confirm::AMQPMethod::Select(select)) => {
                self.channel(channel).confirm = true;
                let ok = confirm::AMQPMethod::SelectOk(confirm::SelectOk {});
                (select.nowait, AMQPClass::Confirm(ok))
            }
            AMQPClass::Exchange(exchange::AMQPMethod::Declare(declare)) => {
                let ok = exchange::AMQPMethod::DeclareOk(exchange::DeclareOk {});
                (declare.nowait, AMQPClass::Exchange(ok))
            }
            AMQPClass::Queue(queue::AMQPMethod::Declare(declare)) => {
                let ok = queue::AMQPMethod::DeclareOk(queue::DeclareOk {
                    queue: declare.queue,
                    message_count: 0,
                    consumer_count: 0,
                });
                (declare.nowait, AMQPClass::Queue(ok))
            }
            AMQPClass::Queue(queue::AMQPMethod::Bind(bind)) => {
                let ok = queue::AMQPMethod::BindOk(queue::BindOk {});
                (bind.nowait, AMQPClass::Queue(ok))
            }
            other => {
                self.routing.unexpected(format!("method {other:?}"));
                return Ok(());
            }
        };
        if nowait {
            return Ok(());
        }
        self.send(&[method_of(channel, answer)]).await
    }

    /// Route the message arriving on `channel` once its header and whole body are in.
    async fn complete(&mut self, channel: u16) -> io::Result<()> {
        let state = self.channel(channel);
        let whole = state.incoming.as_ref().is_some_and(|incoming| {
            incoming
                .header
                .as_ref()
                .is_some_and(|header| incoming.body.len() as u64 >= header.body_size)
        });
        if !whole {
            return Ok(());
        }
        let Incoming {
            publish,
            header,
            body,
        } = state.incoming.take().expect("checked whole");
        let properties = header.expect("checked whole").properties;
        if !state.confirm {
            self.routing
                .unexpected("a publish on a channel not in confirm mode".into());
            return Ok(());
        }
        state.last_tag += 1;
        let tag = state.last_tag;
        let id = properties
            .message_id()
            .as_ref()
            .map_or_else(String::new, |id| id.as_str().to_owned());
        if let Some(answer) = self.routing.returns(&id, self.number, !self.returned_any) {
            self.returned_any = true;
            self.channel(channel).held.push((tag, answer));
            let frames = self.returned(channel, &publish, properties, body);
            return self.send(&frames).await;
        }
        // The held ack of a returned message goes out with this one's: one ack, multiple.
        let held: Vec<usize> = std::mem::take(&mut self.channel(channel).held)
            .into_iter()
            .map(|(_, answer)| answer)
            .collect();
        self.routing.acked(&held, ReturnAck::WithNext);
        let multiple = !held.is_empty();
        let ack = basic::AMQPMethod::Ack(basic::Ack {
            delivery_tag: tag,
            multiple,
        });
        self.send(&[method_of(channel, AMQPClass::Basic(ack))])
            .await
    }

    /// Ack each held returned message on its own: the client waits for them.
    async fn ack_held_alone(&mut self) -> io::Result<()> {
        let mut frames = Vec::new();
        let mut answers = Vec::new();
        for (channel, state) in &mut self.channels {
            for (delivery_tag, answer) in std::mem::take(&mut state.held) {
                let ack = basic::AMQPMethod::Ack(basic::Ack {
                    delivery_tag,
                    multiple: false,
                });
                frames.push(method_of(*channel, AMQPClass::Basic(ack)));
                answers.push(answer);
            }
        }
        self.routing.acked(&answers, ReturnAck::Alone);
        self.send(&frames).await
    }

    /// The frames of `basic.return` for a message: the method, then the message's own
    /// properties and body, as RabbitMQ returns it.
    fn returned(
        &self,
        channel: u16,
        publish: &basic::Publish,
        properties: BasicProperties,
        body: Vec<u8>,
    ) -> Vec<AMQPFrame> {
        let returned = basic::AMQPMethod::Return(basic::Return {
            reply_code: NO_ROUTE,
            reply_text: ShortString::from("NO_ROUTE"),
            exchange: publish.exchange.clone(),
            routing_key: publish.routing_key.clone(),
        });
        let mut frames = vec![
            method_of(channel, AMQPClass::Basic(returned)),
            AMQPFrame::Header(
                channel,
                AMQPContentHeader {
                    class_id: 60,
                    body_size: body.len() as u64,
                    properties,
                },
            ),
        ];
        // A body frame carries at most frame_max less the frame's 8 bytes of framing.
        let chunk = (self.frame_max as usize).saturating_sub(8).max(1);
        frames.extend(
            body.chunks(chunk)
                .map(|part| AMQPFrame::Body(channel, part.to_vec())),
        );
        frames
    }

    /// Write `frames` in one go, so they reach the client in this order and together.
    async fn send(&mut self, frames: &[AMQPFrame]) -> io::Result<()> {
        let mut bytes = Vec::new();
        for frame in frames {
            let written = gen_frame(frame)(WriteContext::from(Vec::new()))
                .map_err(|error| io::Error::other(format!("encoding {frame}: {error:?}")))?;
            bytes.extend_from_slice(&written.write);
        }
        self.stream.write_all(&bytes).await
    }
}

/// The next heartbeat, or never before the client agreed an interval.
async fn tick(ticker: Option<&mut Interval>) {
    match ticker {
        Some(ticker) => {
            ticker.tick().await;
        }
        None => std::future::pending().await,
    }
}

fn method_of(channel: u16, class: AMQPClass) -> AMQPFrame {
    AMQPFrame::Method(channel, class)
}

/// `connection.start` as RabbitMQ sends it: AMQP 0-9, its capabilities, PLAIN.
fn start() -> connection::AMQPMethod {
    let mut capabilities = FieldTable::default();
    for capability in [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
        "authentication_failure_close",
        "per_consumer_qos",
    ] {
        capabilities.insert(capability.into(), AMQPValue::Boolean(true));
    }
    let mut server_properties = FieldTable::default();
    server_properties.insert("capabilities".into(), AMQPValue::FieldTable(capabilities));
    server_properties.insert(
        "product".into(),
        AMQPValue::LongString(LongString::from("walbox stand-in broker")),
    );
    connection::AMQPMethod::Start(connection::Start {
        version_major: 0,
        version_minor: 9,
        server_properties,
        mechanisms: LongString::from("PLAIN AMQPLAIN"),
        locales: LongString::from("en_US"),
    })
}
