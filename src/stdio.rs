//! The stdio transport: every request line gets exactly one answer, and stdout has
//! exactly one writer.
//!
//! rmcp's own stdio transport drops lines it cannot read (invalid JSON, JSON nested
//! past serde_json's limit of 128 levels) without a reply, answers a known method
//! with parameters of the wrong type as an unknown method, and lets a second request
//! with the id of one still running take over that id. A client waiting for any of
//! those replies hangs. [`start`] reads the lines itself: it answers what rmcp would
//! mishandle (-32700 parse error, -32600 invalid request, -32602 invalid params)
//! and hands every well-formed message, already parsed, to rmcp through
//! [`LineTransport`].
//!
//! Both rmcp's messages and those answers go through one writer task, a line at a
//! time, so lines never interleave. It deliberately does not interpret anything
//! rmcp handles correctly: it knows message shapes, not MCP semantics. The one thing
//! it adds to rmcp's answers is a SQL tool's `structuredContent`, which the server
//! leaves in an [`Outbox`] for it to serialize from the rows.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rmcp::RoleServer;
use rmcp::model::{
    CallToolResult, ClientJsonRpcMessage, ClientNotification, ClientRequest, ErrorCode,
    JsonRpcMessage, JsonRpcRequest, JsonRpcResponse, RequestId, ServerJsonRpcMessage, ServerResult,
};
use rmcp::transport::Transport;
use serde_json::{Value, json};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::echo;
use crate::engine::Structured;

/// The longest line read, as rmcp's own limit: a longer one is answered with -32600
/// and skipped, rather than buffered until memory runs out.
pub const MAX_LINE_BYTES: usize = 16 * 1024 * 1024;

/// The largest written line's buffer kept for the next answer (a few default-sized
/// results); one grown past it by a larger answer is let go.
const MAX_KEPT_BUFFER: usize = 1024 * 1024;

/// How many written lines' buffers are kept.
const KEPT_BUFFERS: usize = 2;

/// How many parsed messages wait for rmcp before the reader stops reading.
const QUEUE: usize = 64;

/// How many answers may wait to be written before the reader stops reading: a client that
/// stops reading stdout while it keeps writing requests gets its requests held in the
/// pipe (backpressure), not its answers piled up in the server's memory.
const MAX_QUEUED_LINES: usize = 64;

/// The ids of client requests in progress, and the id rmcp knows each one by.
///
/// rmcp keys a running request by its id. A request reusing the id of one still running
/// would take over its slot, and so would one reusing the id of a request the client just
/// cancelled but that has not finished yet: the old request's answer then goes out under
/// the new one's id, and the new one's is lost. So rmcp never sees a client's ids: each
/// request gets one of its own, mapped back on its answer.
#[derive(Default)]
struct Ids {
    last: i64,
    /// client id → rmcp's id
    running: HashMap<RequestId, RequestId>,
    /// rmcp's id → client id
    clients: HashMap<RequestId, RequestId>,
    /// rmcp's id → the structured result the server left for its answer ([`Outbox`]).
    /// Kept with the ids: rmcp never sends the answer of a request the client cancelled,
    /// so the cancel is where a result left for it goes.
    structured: HashMap<RequestId, Structured>,
}

impl Ids {
    /// rmcp's id for a new request; `None` while the client's id is in use.
    fn start(&mut self, client: &RequestId) -> Option<RequestId> {
        if self.running.contains_key(client) {
            return None;
        }
        self.last += 1;
        let ours = RequestId::Number(self.last);
        self.running.insert(client.clone(), ours.clone());
        self.clients.insert(ours.clone(), client.clone());
        Some(ours)
    }

    /// Forgets a cancelled request: its id is free for the client at once, a late answer
    /// to it goes nowhere, and a result left for that answer is given back, to be dropped.
    /// rmcp's id for it, if it was running.
    fn cancel(&mut self, client: &RequestId) -> Option<(RequestId, Option<Structured>)> {
        let ours = self.running.remove(client)?;
        self.clients.remove(&ours);
        let left = self.structured.remove(&ours);
        Some((ours, left))
    }

    /// The client's id for an answer, which frees it, and the result left for the answer;
    /// `None` for a cancelled request.
    fn finish(&mut self, ours: &RequestId) -> Option<(RequestId, Option<Structured>)> {
        let client = self.clients.remove(ours)?;
        self.running.remove(&client);
        Some((client, self.structured.remove(ours)))
    }
}

/// Where the server leaves a SQL tool's structured result for the stdio transport to
/// serialize from its rows, under the id rmcp answers the call by: rmcp's
/// `CallToolResult` holds `structuredContent` as a JSON value, and building one (a map per
/// row, every column name copied) to serialize it once and free it was a third of a
/// 1,000-row call's CPU (issue #8). The transport takes the result back when it writes
/// that answer; a cancel drops it (rmcp sends no answer then), and a result for a request
/// no longer running is not kept.
#[derive(Clone)]
pub struct Outbox(InFlight);

impl Outbox {
    /// Leaves `structured` for the answer rmcp will send as `id`.
    pub fn put(&self, id: RequestId, structured: Structured) {
        let mut ids = lock(&self.0);
        if ids.clients.contains_key(&id) {
            ids.structured.insert(id, structured);
        }
        // Otherwise it was cancelled meanwhile: `structured`, a parameter, is dropped
        // after the lock, a local.
    }
}

type InFlight = Arc<Mutex<Ids>>;

/// Starts reading `read` and writing `write`; returns the transport to serve rmcp on
/// and the tasks behind it.
pub fn start<R, W>(read: R, write: W) -> (LineTransport, Pumps)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (tx, lines) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared::default());
    let out = Out {
        tx,
        shared: shared.clone(),
    };
    let (to_rmcp, from_reader) = mpsc::channel(QUEUE);
    let in_flight = InFlight::default();
    let reader = tokio::spawn(read_loop(
        BufReader::new(read),
        to_rmcp,
        out.clone(),
        in_flight.clone(),
    ));
    let writer = tokio::spawn(write_loop(write, lines, shared));
    let transport = LineTransport {
        messages: from_reader,
        out: Some(out),
        in_flight,
    };
    (transport, Pumps { reader, writer })
}

/// The reader and writer tasks.
pub struct Pumps {
    reader: JoinHandle<()>,
    writer: JoinHandle<std::io::Result<()>>,
}

impl Pumps {
    /// Stops reading and waits until every queued line is written. Call it after
    /// the rmcp service has ended (and so closed its [`LineTransport`]).
    pub async fn finish(self) -> std::io::Result<()> {
        self.reader.abort();
        // The reader holds a sender of the writer's queue; once it and the transport
        // are gone, the writer drains the queue and ends.
        let _ = self.reader.await;
        match self.writer.await {
            Ok(result) => result,
            Err(e) => Err(std::io::Error::other(e)),
        }
    }
}

/// What rmcp serves on: parsed messages in, serialized lines out.
pub struct LineTransport {
    messages: mpsc::Receiver<ClientJsonRpcMessage>,
    /// None once closed.
    out: Option<Out>,
    in_flight: InFlight,
}

impl LineTransport {
    /// Where the server leaves the structured results this transport writes.
    pub fn outbox(&self) -> Outbox {
        Outbox(self.in_flight.clone())
    }
}

/// A tool call's result with the `structuredContent` the server left in the outbox:
/// rmcp's `CallToolResult` as rmcp writes it, and that key after its own.
#[derive(serde::Serialize)]
struct WithStructured<'a> {
    #[serde(flatten)]
    result: &'a CallToolResult,
    #[serde(rename = "structuredContent")]
    structured: &'a Structured,
}

impl Transport<RoleServer> for LineTransport {
    type Error = std::io::Error;

    fn send(
        &mut self,
        item: ServerJsonRpcMessage,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        let mut item = item;
        let id = match &mut item {
            JsonRpcMessage::Response(r) => Some(&mut r.id),
            JsonRpcMessage::Error(e) => e.id.as_mut(),
            _ => None,
        };
        let mut structured = None;
        if let Some(id) = id {
            let finished = lock(&self.in_flight).finish(id);
            match finished {
                Some((client, left)) => {
                    *id = client;
                    structured = left;
                }
                // The client cancelled it: MCP sends no answer then.
                None => return std::future::ready(Ok(())),
            }
        }
        let Some(out) = &self.out else {
            return std::future::ready(Err(closed("the transport is closed")));
        };
        // Serialized into a written line's buffer: a large result grows one buffer once,
        // not a new one on every answer. Queued now, not when the future runs, so lines
        // leave in the order rmcp sent them.
        let mut bytes = out.buffer();
        let written = match (&item, &structured) {
            (
                JsonRpcMessage::Response(JsonRpcResponse {
                    jsonrpc,
                    id,
                    result: ServerResult::CallToolResult(result),
                }),
                Some(structured),
            ) => {
                let answer = JsonRpcResponse {
                    jsonrpc: *jsonrpc,
                    id: id.clone(),
                    result: WithStructured { result, structured },
                };
                serde_json::to_writer(&mut bytes, &answer)
            }
            _ => serde_json::to_writer(&mut bytes, &item),
        };
        let result = match written {
            Ok(()) => {
                bytes.push(b'\n');
                // Freed after the write only when this line goes out next: behind other
                // lines it would wait with them, and many answers' values would pile up.
                let spent = out.idle().then_some((item, structured));
                if out.send(Line { bytes, spent }) {
                    Ok(())
                } else {
                    Err(closed("stdout is closed"))
                }
            }
            Err(e) => Err(std::io::Error::other(e)),
        };
        std::future::ready(result)
    }

    fn receive(&mut self) -> impl Future<Output = Option<ClientJsonRpcMessage>> + Send {
        // A channel receive is cancel-safe: rmcp polls this inside a select!.
        self.messages.recv()
    }

    async fn close(&mut self) -> Result<(), Self::Error> {
        self.out = None;
        self.messages.close();
        Ok(())
    }
}

fn closed(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::BrokenPipe, what.to_string())
}

fn lock(ids: &InFlight) -> std::sync::MutexGuard<'_, Ids> {
    // The maps stay consistent even if a holder panicked: every update is one call.
    ids.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The writer's queue.
#[derive(Clone)]
struct Out {
    tx: mpsc::UnboundedSender<Line>,
    shared: Arc<Shared>,
}

/// What the writer shares with those who queue lines for it.
#[derive(Default)]
struct Shared {
    /// Lines queued or being written.
    queued: AtomicUsize,
    /// Signalled when the queue falls below [`MAX_QUEUED_LINES`].
    drained: tokio::sync::Notify,
    /// Buffers of written lines, emptied, for the next answers.
    spare: Mutex<Vec<Vec<u8>>>,
}

impl Out {
    /// Queues `line`; false once the writer is gone.
    fn send(&self, line: Line) -> bool {
        self.shared.queued.fetch_add(1, Ordering::Relaxed);
        let sent = self.tx.send(line).is_ok();
        if !sent {
            self.shared.queued.fetch_sub(1, Ordering::Relaxed);
        }
        sent
    }

    /// Nothing waits to be written.
    fn idle(&self) -> bool {
        self.shared.queued.load(Ordering::Relaxed) == 0
    }

    /// Returns once fewer than [`MAX_QUEUED_LINES`] answers wait to be written, or once the
    /// writer is gone (stdout closed: nothing will drain, and the reader must go on to see
    /// stdin end).
    async fn room(&self) {
        loop {
            // Created before the check: a `Notified` hears `notify_waiters` from then on.
            let drained = self.shared.drained.notified();
            if self.shared.queued.load(Ordering::Relaxed) < MAX_QUEUED_LINES || self.tx.is_closed()
            {
                return;
            }
            drained.await;
        }
    }

    /// An empty buffer to serialize a line into: a written line's, if one is kept.
    fn buffer(&self) -> Vec<u8> {
        self.shared.spare().pop().unwrap_or_default()
    }
}

impl Shared {
    /// `bytes` were written: the buffer is kept for a next line, or let go.
    fn written(&self, mut bytes: Vec<u8>) {
        if self.queued.fetch_sub(1, Ordering::Relaxed) == MAX_QUEUED_LINES {
            self.drained.notify_waiters();
        }
        let mut spare = self.spare();
        if bytes.capacity() <= MAX_KEPT_BUFFER && spare.len() < KEPT_BUFFERS {
            bytes.clear();
            spare.push(bytes);
        }
    }

    fn spare(&self) -> std::sync::MutexGuard<'_, Vec<Vec<u8>>> {
        // A list of empty buffers stays consistent whoever panicked.
        self.spare
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A line for stdout, its newline included.
struct Line {
    bytes: Vec<u8>,
    /// The answer the line was made of, freed once the line is on its way: freeing a
    /// large result (its rows are many small allocations) takes as long as writing it,
    /// and the client need not wait for it.
    spent: Option<Spent>,
}

/// An answer and the structured result written with it.
type Spent = (ServerJsonRpcMessage, Option<Structured>);

impl From<String> for Line {
    fn from(text: String) -> Line {
        Line {
            bytes: text.into_bytes(),
            spent: None,
        }
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    write: W,
    mut lines: mpsc::UnboundedReceiver<Line>,
    shared: Arc<Shared>,
) -> std::io::Result<()> {
    let written = write_lines(write, &mut lines, &shared).await;
    // Whatever ended the writing, a reader waiting for room must not wait on.
    lines.close();
    shared.drained.notify_waiters();
    written
}

async fn write_lines<W: AsyncWrite + Unpin>(
    mut write: W,
    lines: &mut mpsc::UnboundedReceiver<Line>,
    shared: &Shared,
) -> std::io::Result<()> {
    while let Some(Line { bytes, spent }) = lines.recv().await {
        write.write_all(&bytes).await?;
        shared.written(bytes);
        drop(spent);
        // Flush once the queue is empty: no delay for a lone reply, fewer writes in a burst.
        if lines.is_empty() {
            write.flush().await?;
        }
    }
    write.flush().await
}

async fn read_loop<R: AsyncBufRead + Unpin>(
    mut read: R,
    to_rmcp: mpsc::Sender<ClientJsonRpcMessage>,
    out: Out,
    in_flight: InFlight,
) {
    let mut line = Vec::new();
    loop {
        out.room().await;
        let verdict = match read_line(&mut read, &mut line).await {
            LineRead::Line => classify(&line, &in_flight),
            LineRead::TooLong(bytes) => Verdict::Reply(error_line(
                None,
                ErrorCode::INVALID_REQUEST,
                format!("message too large: {bytes} bytes, the limit is {MAX_LINE_BYTES}"),
            )),
            LineRead::Eof => break,
            LineRead::Failed(e) => {
                tracing::error!("cannot read stdin: {e}");
                break;
            }
        };
        line.clear();
        match verdict {
            Verdict::Forward(message) => {
                if to_rmcp.send(message).await.is_err() {
                    break;
                }
            }
            Verdict::Reply(reply) => {
                if !out.send(reply.into()) {
                    break;
                }
            }
            Verdict::Ignore => {}
        }
    }
}

enum LineRead {
    /// A line is in the buffer (with its newline, unless the input ended without one).
    Line,
    /// A line longer than [`MAX_LINE_BYTES`] was skipped.
    TooLong(usize),
    Eof,
    Failed(std::io::Error),
}

/// Reads one line into `buf` without letting it grow past [`MAX_LINE_BYTES`].
async fn read_line<R: AsyncBufRead + Unpin>(read: &mut R, buf: &mut Vec<u8>) -> LineRead {
    let mut skipped = 0usize;
    loop {
        let available = match read.fill_buf().await {
            Ok(a) => a,
            Err(e) => return LineRead::Failed(e),
        };
        if available.is_empty() {
            // A last line without a newline is still a line.
            return match (skipped, buf.is_empty()) {
                (0, true) => LineRead::Eof,
                (0, false) => LineRead::Line,
                (n, _) => LineRead::TooLong(n),
            };
        }
        let newline = available.iter().position(|b| *b == b'\n');
        let take = newline.map_or(available.len(), |i| i + 1);
        if skipped > 0 || buf.len() + take > MAX_LINE_BYTES {
            skipped += buf.len() + take;
            buf.clear();
        } else {
            buf.extend_from_slice(&available[..take]);
        }
        read.consume(take);
        if newline.is_some() {
            return match skipped {
                0 => LineRead::Line,
                n => LineRead::TooLong(n),
            };
        }
    }
}

/// What to do with one line.
// One verdict exists at a time; boxing the message would only add an allocation per line.
#[allow(clippy::large_enum_variant)]
enum Verdict {
    Forward(ClientJsonRpcMessage),
    Reply(String),
    Ignore,
}

/// Parses one line and decides: hand it to rmcp, answer it here, or drop it (blank
/// lines, and notifications, which JSON-RPC never answers).
fn classify(line: &[u8], in_flight: &InFlight) -> Verdict {
    let line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.iter().all(u8::is_ascii_whitespace) {
        return Verdict::Ignore;
    }
    let v = match serde_json::from_slice::<Value>(line) {
        Ok(v) => v,
        // Not JSON at all, or nested deeper than serde_json reads: no id can be known.
        Err(e) => {
            return Verdict::Reply(error_line(
                None,
                ErrorCode::PARSE_ERROR,
                format!("parse error: {e}"),
            ));
        }
    };
    let v = match tool_call_request(v) {
        Ok((id, Ok(request))) => return start_request(JsonRpcRequest::new(id, request), in_flight),
        Ok((id, Err(problem))) => {
            return Verdict::Reply(error_line(Some(&id), ErrorCode::INVALID_PARAMS, problem));
        }
        Err(v) => v,
    };
    // The rest (notifications, responses, methods rmcp does not know, and what is not
    // JSON-RPC) is rmcp's reading to decide.
    match serde_json::from_slice::<ClientJsonRpcMessage>(line) {
        Ok(JsonRpcMessage::Request(req)) => match &req.request {
            ClientRequest::CustomRequest(c) if rmcp_knows(&c.method) => {
                unfit_params(&req.id, &c.method, c.params.as_ref())
            }
            _ => start_request(req, in_flight),
        },
        Ok(JsonRpcMessage::Notification(mut n)) => {
            // A cancel names the client's id; rmcp knows the request by its own. One that
            // names no request in progress (answered already, or never sent) has nothing
            // to cancel, and rmcp must not read it as one of its own ids.
            if let ClientNotification::CancelledNotification(c) = &mut n.notification
                && let Some(id) = &mut c.params.request_id
            {
                let cancelled = lock(in_flight).cancel(id);
                match cancelled {
                    // A result left for its answer is dropped here, after the lock.
                    Some((ours, _left)) => *id = ours,
                    None => return Verdict::Ignore,
                }
            }
            Verdict::Forward(JsonRpcMessage::Notification(n))
        }
        Ok(message) => Verdict::Forward(message),
        Err(e) => {
            let id = v.get("id").and_then(request_id);
            // Its client waits: answered with id null, as JSON-RPC says.
            if let Some(bad) = bad_request_id(&v) {
                let what = format!(
                    "invalid request: the id must be a string or an integer, not {}",
                    echo::cap(&bad.to_string())
                );
                return Verdict::Reply(error_line(None, ErrorCode::INVALID_REQUEST, what));
            }
            if id.is_none() && v.get("method").is_some_and(Value::is_string) {
                tracing::debug!(
                    "ignoring an unreadable notification: {}",
                    echo::cap(&e.to_string())
                );
                return Verdict::Ignore;
            }
            let method = v.get("method").and_then(Value::as_str);
            if let (Some(id), Some(method), Some("2.0")) =
                (&id, method, v.get("jsonrpc").and_then(Value::as_str))
                && rmcp_knows(method)
            {
                return unfit_params(id, method, v.get("params"));
            }
            // A response (to a request of the server's) that does not read: JSON-RPC never
            // answers a response.
            if method.is_none() && (v.get("result").is_some() || v.get("error").is_some()) {
                tracing::debug!(
                    "ignoring an unreadable response: {}",
                    echo::cap(&e.to_string())
                );
                return Verdict::Ignore;
            }
            let what = if v.is_array() {
                "batches are not supported; send one message per line".to_string()
            } else {
                format!("not a JSON-RPC 2.0 message: {e}")
            };
            Verdict::Reply(error_line(id.as_ref(), ErrorCode::INVALID_REQUEST, what))
        }
    }
}

/// The id of a request whose id is no id (an object, an array, a fraction, a number past
/// 64 bits, null), or `None`. A response is no request, and a notification that carries
/// `"id": null` is still a notification. Over HTTP too (`httpd`), where rmcp would answer
/// such a body with plain text.
pub(crate) fn bad_request_id(message: &Value) -> Option<&Value> {
    let method = message.get("method")?.as_str()?;
    let id = message.get("id")?;
    let readable = id.is_string() || id.is_i64();
    let notification = id.is_null() && method.starts_with("notifications/");
    (!readable && !notification).then_some(id)
}

/// Hands a request to rmcp under an id of rmcp's own, unless the client's id is taken.
fn start_request(mut req: JsonRpcRequest<ClientRequest>, in_flight: &InFlight) -> Verdict {
    let Some(ours) = lock(in_flight).start(&req.id) else {
        return Verdict::Reply(error_line(
            Some(&req.id),
            ErrorCode::INVALID_REQUEST,
            format!(
                "request id {} is already used by a request in progress; this request was not run (use a new id)",
                req.id
            ),
        ));
    };
    req.id = ours;
    Verdict::Forward(JsonRpcMessage::Request(req))
}

/// A JSON-RPC 2.0 `tools/call` request, read into its own type: its id, and the request or
/// why its params do not fit. `Err` gives back any other message, untouched, for rmcp's
/// reading.
///
/// rmcp's reading of a message (serde's `untagged`) buffers it and tries its twenty-odd
/// request types one by one, building an error message for each miss: a `tools/call`, the
/// one request a session sends over and over, went through 14 of them (issue #8). Its
/// params are also the ones a model writes, so a misfit is told precisely (-32602).
fn tool_call_request(v: Value) -> Result<(RequestId, Result<ClientRequest, String>), Value> {
    use rmcp::model::{CallToolRequest, CallToolRequestMethod, ConstString};
    let Value::Object(mut m) = v else {
        return Err(v);
    };
    let id = m.get("id").and_then(request_id);
    let method = m.get("method").and_then(Value::as_str);
    let version = m.get("jsonrpc").and_then(Value::as_str);
    let (Some(id), Some(CallToolRequestMethod::VALUE), Some("2.0")) = (id, method, version) else {
        return Err(Value::Object(m));
    };
    m.remove("jsonrpc");
    m.remove("id");
    let not_object = m.get("params").is_some_and(|p| !p.is_object());
    let read = serde_json::from_value::<CallToolRequest>(Value::Object(m));
    Ok((
        id,
        read.map(ClientRequest::from).map_err(|e| {
            // serde would say "expected struct WithMeta", which helps nobody.
            let problem = if not_object {
                "params must be a JSON object".to_string()
            } else {
                e.to_string()
            };
            format!(
                "invalid params for {}: {problem}",
                CallToolRequestMethod::VALUE
            )
        }),
    ))
}

/// The -32602 answer to a request for a method rmcp knows whose params do not fit it.
fn unfit_params(id: &RequestId, method: &str, params: Option<&Value>) -> Verdict {
    let why = if params.is_some_and(|p| !p.is_object()) {
        "params must be a JSON object"
    } else {
        "they do not fit the method (the MCP schema says what it takes)"
    };
    Verdict::Reply(error_line(
        Some(id),
        ErrorCode::INVALID_PARAMS,
        format!("invalid params for {method}: {why}"),
    ))
}

/// Whether rmcp knows `method` as a request: one it read as a custom request then had
/// params that do not fit it, which rmcp would answer as an unknown method (-32601).
#[allow(deprecated)] // logging and resources/subscribe are deprecated, but legacy clients still send them
fn rmcp_knows(method: &str) -> bool {
    use rmcp::model::*;
    macro_rules! any_of {
        ($($method:ty),* $(,)?) => { $(method == <$method as ConstString>::VALUE)||* };
    }
    any_of!(
        PingRequestMethod,
        InitializeResultMethod,
        DiscoverRequestMethod,
        CompleteRequestMethod,
        SetLevelRequestMethod,
        GetPromptRequestMethod,
        ListPromptsRequestMethod,
        ListResourcesRequestMethod,
        ListResourceTemplatesRequestMethod,
        ReadResourceRequestMethod,
        SubscriptionsListenRequestMethod,
        SubscribeRequestMethod,
        UnsubscribeRequestMethod,
        CallToolRequestMethod,
        ListToolsRequestMethod,
        GetTaskMethod,
        UpdateTaskMethod,
        CancelTaskMethod,
        ListSkillsRequestMethod,
        GetSkillRequestMethod,
        ReadResourceDirectoryRequestMethod,
    )
}

/// A JSON-RPC id, if `v` is one (a string or an integer).
fn request_id(v: &Value) -> Option<RequestId> {
    serde_json::from_value(v.clone()).ok()
}

/// One error reply, as a line. Written by hand rather than through rmcp's types so
/// that an unknown id is sent as `"id": null`, as JSON-RPC 2.0 requires.
fn error_line(id: Option<&RequestId>, code: ErrorCode, message: String) -> String {
    let message = echo::cap(&message);
    let mut line = json!({
        "jsonrpc": "2.0",
        "id": id,
        "error": {"code": code.0, "message": message},
    })
    .to_string();
    line.push('\n');
    line
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    use super::*;
    use crate::engine::{Engine, Settings};
    use crate::registry::{Registry, Sources};
    use crate::server::Server;

    /// A server without a database on one end of a pipe; the test is the client.
    struct Client {
        write: tokio::io::WriteHalf<tokio::io::DuplexStream>,
        lines: tokio::io::Lines<BufReader<tokio::io::ReadHalf<tokio::io::DuplexStream>>>,
        /// The server: rmcp's service, then the pumps' finish.
        served: tokio::task::JoinHandle<()>,
    }

    impl Client {
        async fn start() -> Client {
            let (client, server) = tokio::io::duplex(1 << 16);
            let (read, write) = tokio::io::split(server);
            let (transport, pumps) = start(read, write);
            let registry = Registry::build(&Sources::builtin(), None, &[], crate::plugins::NEEDS);
            let engine = Arc::new(
                Engine::new(registry, None, Settings::default())
                    .with_plugins(crate::plugins::all()),
            );
            let (changes, _) = tokio::sync::broadcast::channel(4);
            let served = tokio::spawn(async move {
                use rmcp::ServiceExt as _;
                let server = Server::new(engine, changes).with_outbox(transport.outbox());
                if let Ok(service) = server.serve(transport).await {
                    let _ = service.waiting().await;
                }
                let _ = pumps.finish().await;
            });
            let (read, write) = tokio::io::split(client);
            let mut c = Client {
                write,
                lines: BufReader::new(read).lines(),
                served,
            };
            let init = c
                .ask(r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"0"}}}"#)
                .await;
            assert!(init["result"].is_object(), "{init}");
            c.send(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#)
                .await;
            c
        }

        async fn send(&mut self, line: &str) {
            self.write.write_all(line.as_bytes()).await.unwrap();
            self.write.write_all(b"\n").await.unwrap();
        }

        /// Sends a line and returns the next line the server writes.
        async fn ask(&mut self, line: &str) -> Value {
            self.send(line).await;
            let reply = self.lines.next_line().await.unwrap().expect("a reply");
            serde_json::from_str(&reply).unwrap()
        }
    }

    fn assert_error(reply: &Value, id: Value, code: i32) {
        assert_eq!(reply["jsonrpc"], "2.0", "{reply}");
        assert_eq!(reply["id"], id, "{reply}");
        assert_eq!(reply["error"]["code"], code, "{reply}");
    }

    #[tokio::test]
    async fn every_line_gets_one_answer_and_the_server_keeps_serving() {
        let mut c = Client::start().await;
        let r = c.ask("{not json").await;
        assert_error(&r, Value::Null, -32700);
        let deep = format!(
            r#"{{"jsonrpc":"2.0","id":5,"method":"ping","params":{{"x":{}{}}}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        assert_error(&c.ask(&deep).await, Value::Null, -32700);
        let r = c
            .ask(r#"{"jsonrpc":"2.0","id":6,"method":"tools/call","params":5}"#)
            .await;
        assert_error(&r, json!(6), -32602);
        let r = c
            .ask(r#"{"jsonrpc":"2.0","id":"seven","method":"tools/call","params":{"name":7}}"#)
            .await;
        assert_error(&r, json!("seven"), -32602);
        assert!(
            r["error"]["message"]
                .as_str()
                .unwrap()
                .contains("tools/call"),
            "{r}"
        );
        assert_error(&c.ask("5").await, Value::Null, -32600);
        assert_error(
            &c.ask(r#"[{"jsonrpc":"2.0","id":8,"method":"ping"}]"#).await,
            Value::Null,
            -32600,
        );
        assert_error(
            &c.ask(r#"{"jsonrpc":"1.0","id":9,"method":"ping"}"#).await,
            json!(9),
            -32600,
        );
        // An unknown method is rmcp's to answer, and it does.
        assert_error(
            &c.ask(r#"{"jsonrpc":"2.0","id":10,"method":"no/such"}"#)
                .await,
            json!(10),
            -32601,
        );
        // Blank lines and unreadable notifications get no answer; the next request does.
        c.send("").await;
        c.send(r#"{"method":"notifications/whatever"}"#).await;
        let r = c
            .ask(r#"{"jsonrpc":"2.0","id":11,"method":"tools/call","params":{"name":"ping","arguments":{}}}"#)
            .await;
        assert_eq!(r["id"], 11, "{r}");
        assert_eq!(r["result"]["structuredContent"]["message"], "pong", "{r}");
    }

    /// A client that keeps writing requests but stops reading answers is held back: the
    /// server stops reading once answers pile up, so the requests wait in the pipe, not
    /// the answers in memory; once the client reads again, every request is answered.
    #[tokio::test]
    async fn a_client_that_stops_reading_is_held_back() {
        let c = Client::start().await;
        let Client {
            mut write,
            mut lines,
            ..
        } = c;
        const N: usize = 5000;
        let requests: String = (1..=N)
            .map(|i| format!("{{\"jsonrpc\":\"2.0\",\"id\":{i},\"method\":\"ping\"}}\n"))
            .collect();
        let writer = tokio::spawn(async move {
            write.write_all(requests.as_bytes()).await.unwrap();
            write
        });
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        assert!(
            !writer.is_finished(),
            "the server read every request while no answer was read"
        );
        for _ in 0..N {
            let line = lines.next_line().await.unwrap().expect("an answer");
            assert!(line.contains("\"result\""), "{line}");
        }
        let _write = writer.await.unwrap();
    }

    /// A client held back that then vanishes (both pipes closed) ends the server: the
    /// reader does not wait for room that a writer with nowhere to write will never make.
    #[tokio::test]
    async fn a_held_back_client_that_vanishes_ends_the_server() {
        let Client {
            mut write,
            lines,
            served,
        } = Client::start().await;
        let requests: String = (1..=5000)
            .map(|i| format!("{{\"jsonrpc\":\"2.0\",\"id\":{i},\"method\":\"ping\"}}\n"))
            .collect();
        let writer = tokio::spawn(async move {
            let _ = write.write_all(requests.as_bytes()).await;
            write
        });
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        assert!(
            !writer.is_finished(),
            "the server is holding the client back"
        );
        drop(lines);
        writer.abort();
        let _ = writer.await;
        tokio::time::timeout(std::time::Duration::from_secs(20), served)
            .await
            .expect("the server ended once its client was gone")
            .unwrap();
    }

    /// A request whose id is no id still waits for an answer: -32600 with id null.
    #[test]
    fn a_request_with_an_id_that_is_no_id_is_answered() {
        let in_flight = InFlight::default();
        for id in [r#"{"a":1}"#, "[1]", "1.5", "null", "18446744073709551616"] {
            for method in ["tools/call", "tools/list", "ping"] {
                let line = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"{method}"}}"#);
                let Verdict::Reply(reply) = classify(line.as_bytes(), &in_flight) else {
                    panic!("{line}: not answered");
                };
                let reply: Value = serde_json::from_str(&reply).unwrap();
                assert_error(&reply, Value::Null, -32600);
            }
        }
        // A notification (no id at all, or a null one) and a response are not answered.
        for line in [
            r#"{"jsonrpc":"2.0","method":"notifications/whatever","params":7}"#,
            r#"{"jsonrpc":"2.0","id":null,"method":"notifications/initialized"}"#,
            r#"{"jsonrpc":"2.0","id":null,"result":{}}"#,
            r#"{"jsonrpc":"2.0","id":{"a":1},"error":{"code":1,"message":"m"}}"#,
        ] {
            assert!(
                matches!(
                    classify(line.as_bytes(), &in_flight),
                    Verdict::Ignore | Verdict::Forward(_)
                ),
                "{line}"
            );
        }
    }

    #[test]
    fn a_reused_id_is_refused_while_its_request_runs() {
        let in_flight = InFlight::default();
        let call = br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;
        assert!(matches!(classify(call, &in_flight), Verdict::Forward(_)));
        let Verdict::Reply(reply) = classify(call, &in_flight) else {
            panic!("a duplicate id was forwarded");
        };
        let reply: Value = serde_json::from_str(&reply).unwrap();
        assert_error(&reply, json!(1), -32600);
        assert!(
            reply["error"]["message"]
                .as_str()
                .unwrap()
                .contains("already used"),
            "{reply}"
        );
        // Once cancelled (rmcp sends no reply then), the id is free again.
        let cancel =
            br#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":1}}"#;
        assert!(matches!(classify(cancel, &in_flight), Verdict::Forward(_)));
        assert!(matches!(classify(call, &in_flight), Verdict::Forward(_)));
    }

    /// A `tools/call` is read into its type here: it must come out as rmcp's own reading
    /// makes it (params, `_meta` and all); every other message, and a spelling that is
    /// not quite such a request, is left to rmcp's reading; a known method whose params
    /// do not fit gets -32602 either way.
    #[test]
    fn tool_calls_read_as_rmcp_reads_them() {
        for line in [
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":{"a":[1,{"b":null}]},"_meta":{"progressToken":"p"}}}"#,
            r#"{"jsonrpc":"2.0","id":-3,"method":"tools/call","params":{"name":"t"},"extra":true}"#,
            r#"{"jsonrpc":"2.0","id":"x","method":"tools/call","params":{"name":"t","arguments":{},"_meta":{"k":[1]}}}"#,
        ] {
            let theirs = match serde_json::from_str::<ClientJsonRpcMessage>(line) {
                Ok(JsonRpcMessage::Request(r)) => r,
                other => panic!("{line}: rmcp reads {other:?}"),
            };
            let ours = match tool_call_request(serde_json::from_str(line).unwrap()) {
                Ok((id, Ok(request))) => JsonRpcRequest::new(id, request),
                Ok((_, Err(e))) => panic!("{line}: {e}"),
                Err(_) => panic!("{line}: not read here"),
            };
            assert!(matches!(ours.request, ClientRequest::CallToolRequest(_)));
            assert_eq!(
                serde_json::to_value(&ours).unwrap(),
                serde_json::to_value(&theirs).unwrap(),
                "{line}"
            );
        }
        // Not a tools/call request: rmcp's reading decides.
        for line in [
            r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"Tools/Call","params":{"name":"t"}}"#,
            r#"{"jsonrpc":"1.0","id":1,"method":"tools/call","params":{"name":"t"}}"#,
            r#"{"id":1,"method":"tools/call","params":{"name":"t"}}"#,
            r#"{"jsonrpc":"2.0","id":1.5,"method":"tools/call","params":{"name":"t"}}"#,
            r#"{"jsonrpc":"2.0","id":null,"method":"tools/call","params":{"name":"t"}}"#,
            r#"{"jsonrpc":"2.0","method":"tools/call","params":{"name":"t"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"result":{}}"#,
            r#"[{"jsonrpc":"2.0","id":1,"method":"tools/call"}]"#,
        ] {
            assert!(
                tool_call_request(serde_json::from_str(line).unwrap()).is_err(),
                "{line}"
            );
        }
        // A known method whose params do not fit it: the client is told (-32602), with
        // serde's reason for a tools/call.
        let in_flight = InFlight::default();
        for (line, says) in [
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":[]}"#,
                "must be a JSON object",
            ),
            (
                r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"arguments":{}}}"#,
                "missing field `name`",
            ),
            (
                r#"{"jsonrpc":"2.0","id":3,"method":"tools/call"}"#,
                "params",
            ),
            (
                r#"{"jsonrpc":"2.0","id":4,"method":"resources/read","params":{"uri":5}}"#,
                "do not fit",
            ),
            (
                r#"{"jsonrpc":"2.0","id":5,"method":"prompts/get","params":"p"}"#,
                "must be a JSON object",
            ),
        ] {
            let Verdict::Reply(reply) = classify(line.as_bytes(), &in_flight) else {
                panic!("{line}: forwarded");
            };
            let reply: Value = serde_json::from_str(&reply).unwrap();
            assert_eq!(reply["error"]["code"], -32602, "{line}: {reply}");
            let message = reply["error"]["message"].as_str().unwrap();
            assert!(
                message.contains(says) && message.contains("invalid params for"),
                "{line}: {message}"
            );
        }
    }

    /// rmcp's id of a forwarded request.
    fn forwarded_id(verdict: Verdict) -> RequestId {
        match verdict {
            Verdict::Forward(JsonRpcMessage::Request(r)) => r.id,
            _ => panic!("not forwarded"),
        }
    }

    /// An answer's values are freed after its line is written only when nothing waits
    /// ahead of it; behind a queue they are freed at once, so answers do not pile up. A
    /// written line's buffer takes the next answer (a few of them are kept, none larger
    /// than `MAX_KEPT_BUFFER`).
    #[tokio::test]
    async fn lines_reuse_written_buffers_and_only_the_next_keeps_its_answer() {
        let (read, _keep) = tokio::io::duplex(64);
        let (mut transport, _pumps) = start(read, tokio::io::sink());
        let (tx, mut lines) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared::default());
        transport.out = Some(Out {
            tx,
            shared: shared.clone(),
        });
        let in_flight = transport.in_flight.clone();
        let answer = || {
            let call = br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;
            let id = forwarded_id(classify(call, &in_flight));
            ServerJsonRpcMessage::response(rmcp::model::ServerResult::empty(()), id)
        };
        transport.send(answer()).await.unwrap();
        let first = lines.try_recv().unwrap();
        assert!(first.spent.is_some(), "the writer was idle");
        // The writer has not written it yet: the next line queues behind it.
        transport.send(answer()).await.unwrap();
        let second = lines.try_recv().unwrap();
        assert!(second.spent.is_none(), "a queued line held its answer");
        assert_eq!(shared.queued.load(Ordering::Relaxed), 2);

        // Both written: their buffers take the next answers, as they are.
        let kept = [first.bytes.as_ptr(), second.bytes.as_ptr()];
        shared.written(first.bytes);
        shared.written(second.bytes);
        assert_eq!(shared.queued.load(Ordering::Relaxed), 0);
        for _ in 0..2 {
            transport.send(answer()).await.unwrap();
            let line = lines.try_recv().unwrap();
            assert!(kept.contains(&line.bytes.as_ptr()), "a new buffer was made");
            let v: Value = serde_json::from_slice(&line.bytes).unwrap();
            assert_eq!(v["id"], json!(1), "{v}");
            assert_eq!(line.bytes.last(), Some(&b'\n'));
            shared.written(line.bytes);
        }
        // Never more than KEPT_BUFFERS, and none past MAX_KEPT_BUFFER.
        for _ in 0..KEPT_BUFFERS + 2 {
            shared.queued.fetch_add(1, Ordering::Relaxed);
            shared.written(Vec::with_capacity(16));
        }
        shared.queued.fetch_add(1, Ordering::Relaxed);
        shared.written(Vec::with_capacity(MAX_KEPT_BUFFER + 1));
        let spare = shared.spare();
        assert_eq!(spare.len(), KEPT_BUFFERS);
        assert!(
            spare
                .iter()
                .all(|b| b.is_empty() && b.capacity() <= MAX_KEPT_BUFFER)
        );
    }

    /// A transport whose lines go to a queue the test reads instead of to the writer.
    struct Captured {
        transport: LineTransport,
        lines: mpsc::UnboundedReceiver<Line>,
        _stdin: tokio::io::DuplexStream,
        _pumps: Pumps,
    }

    impl Captured {
        fn start() -> Captured {
            let (read, stdin) = tokio::io::duplex(64);
            let (mut transport, pumps) = start(read, tokio::io::sink());
            let (tx, lines) = mpsc::unbounded_channel();
            transport.out = Some(Out {
                tx,
                shared: Arc::default(),
            });
            Captured {
                transport,
                lines,
                _stdin: stdin,
                _pumps: pumps,
            }
        }
    }

    /// A client that cancels a request and at once reuses its id gets the new request's
    /// answer under that id, never the cancelled one's (rmcp, keyed by id, sent the old
    /// answer in the new one's place and lost the new one).
    #[tokio::test]
    async fn a_cancelled_requests_late_answer_never_takes_its_ids_next_request() {
        let Captured {
            mut transport,
            mut lines,
            ..
        } = Captured::start();
        let in_flight = transport.in_flight.clone();
        let call = br#"{"jsonrpc":"2.0","id":7,"method":"tools/list"}"#;
        let old = forwarded_id(classify(call, &in_flight));
        let cancel =
            br#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":7}}"#;
        let Verdict::Forward(JsonRpcMessage::Notification(n)) = classify(cancel, &in_flight) else {
            panic!("the cancel was not forwarded");
        };
        let ClientNotification::CancelledNotification(c) = n.notification else {
            panic!("not a cancel");
        };
        assert_eq!(
            c.params.request_id,
            Some(old.clone()),
            "rmcp is told its own id"
        );
        let new = forwarded_id(classify(call, &in_flight));
        assert_ne!(old, new);
        let answer = |id| ServerJsonRpcMessage::response(rmcp::model::ServerResult::empty(()), id);
        // The cancelled request finishes late: its answer goes nowhere.
        transport.send(answer(old)).await.unwrap();
        assert!(
            lines.try_recv().is_err(),
            "a cancelled request was answered"
        );
        transport.send(answer(new)).await.unwrap();
        let line: Value = serde_json::from_slice(&lines.try_recv().unwrap().bytes).unwrap();
        assert_eq!(line["id"], json!(7), "{line}");
        // A cancel that names no request in progress cancels nothing, not even a
        // request whose id in rmcp happens to be the same number.
        let running = forwarded_id(classify(
            br#"{"jsonrpc":"2.0","id":"other","method":"tools/list"}"#,
            &in_flight,
        ));
        let RequestId::Number(n) = running else {
            panic!("rmcp's ids are numbers")
        };
        let stray = format!(
            r#"{{"jsonrpc":"2.0","method":"notifications/cancelled","params":{{"requestId":{n}}}}}"#
        );
        assert!(matches!(
            classify(stray.as_bytes(), &in_flight),
            Verdict::Ignore
        ));
    }

    /// A SQL tool's rows left in the outbox are written into the answer's result as the
    /// JSON value rmcp would have written; a cancelled call's are dropped, whether the
    /// cancel comes before or after they were left.
    #[tokio::test]
    async fn structured_results_from_the_outbox_are_written_as_rmcp_would() {
        use crate::db::{Column, Rows};
        use crate::engine::shape::{Page, Part};
        use crate::spec::Shape;

        let Captured {
            mut transport,
            mut lines,
            ..
        } = Captured::start();
        let in_flight = transport.in_flight.clone();
        let outbox = transport.outbox();
        let column = |name: &str| Column {
            name: name.into(),
            type_name: "text".into(),
        };
        let rows = Structured::Rows {
            parts: vec![Part {
                name: "rows".into(),
                shape: Shape::Many,
                rows: Rows {
                    columns: vec![column("g"), column("quote\"d")],
                    rows: vec![vec![json!(1), json!("a\n\"b")], vec![json!(2), Value::Null]],
                    more: true,
                },
            }],
            page: Page {
                truncated: true,
                next_offset: Some(2),
                ..Page::default()
            },
        };
        let call = |id: u32| {
            let line = format!(
                r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"t"}}}}"#
            );
            forwarded_id(classify(line.as_bytes(), &in_flight))
        };
        let answer = |id| {
            let result = CallToolResult::success(vec![rmcp::model::ContentBlock::text("rows")]);
            ServerJsonRpcMessage::response(ServerResult::CallToolResult(result), id)
        };

        let id = call(3);
        outbox.put(id.clone(), rows.clone());
        transport.send(answer(id.clone())).await.unwrap();
        let line = lines.try_recv().unwrap();
        let left = || lock(&in_flight).structured.len();
        assert_eq!(left(), 0, "left in the outbox");
        let mut result = CallToolResult::success(vec![rmcp::model::ContentBlock::text("rows")]);
        result.structured_content = Some(rows.clone().into_value());
        let expected = ServerJsonRpcMessage::response(
            ServerResult::CallToolResult(result),
            RequestId::Number(3),
        );
        let (got, expected): (Value, Value) = (
            serde_json::from_slice(&line.bytes).unwrap(),
            serde_json::to_value(&expected).unwrap(),
        );
        assert_eq!(got, expected);
        assert_eq!(
            got["result"]["structuredContent"]["rows"][0]["quote\"d"],
            "a\n\"b"
        );
        assert_eq!(line.bytes.last(), Some(&b'\n'));

        // Cancelled after its result was left: rmcp sends no answer, and the cancel
        // drops the result. Cancelled before: the result is not kept.
        let cancel = |id: u32| {
            let line = format!(
                r#"{{"jsonrpc":"2.0","method":"notifications/cancelled","params":{{"requestId":{id}}}}}"#
            );
            assert!(matches!(
                classify(line.as_bytes(), &in_flight),
                Verdict::Forward(_)
            ));
        };
        let id = call(4);
        outbox.put(id.clone(), rows.clone());
        assert_eq!(left(), 1);
        cancel(4);
        assert_eq!(left(), 0, "a cancelled call's rows stayed");
        let id5 = call(5);
        cancel(5);
        outbox.put(id5, rows);
        assert_eq!(left(), 0, "rows were kept for a cancelled call");
        // Should rmcp answer a cancelled call after all, nothing goes out.
        transport.send(answer(id)).await.unwrap();
        assert!(lines.try_recv().is_err(), "a cancelled call was answered");
    }

    #[tokio::test]
    async fn answered_ids_are_free_again_and_long_lines_are_refused() {
        let in_flight = InFlight::default();
        let (read, _keep) = tokio::io::duplex(64);
        let (transport, _pumps) = start(read, tokio::io::sink());
        let mut transport = LineTransport {
            in_flight: in_flight.clone(),
            ..transport
        };
        let call = br#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#;
        let reply = ServerJsonRpcMessage::response(
            rmcp::model::ServerResult::empty(()),
            forwarded_id(classify(call, &in_flight)),
        );
        transport.send(reply).await.unwrap();
        assert!(matches!(classify(call, &in_flight), Verdict::Forward(_)));

        let mut long = std::io::Cursor::new(vec![b'x'; MAX_LINE_BYTES + 10]);
        long.get_mut().extend_from_slice(b"\n{}\n");
        let mut buf = Vec::new();
        assert!(matches!(
            read_line(&mut long, &mut buf).await,
            LineRead::TooLong(n) if n == MAX_LINE_BYTES + 11
        ));
        assert!(matches!(
            read_line(&mut long, &mut buf).await,
            LineRead::Line
        ));
        assert_eq!(buf, b"{}\n");
    }
}
