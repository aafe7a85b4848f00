//! A request of a legacy (2025) session whose client goes away before its answer is
//! cancelled, as if the client had sent `notifications/cancelled`.
//!
//! rmcp cancels a stateless request whose response stream is dropped, but a session
//! keeps running the request: a client that disconnects mid-call would leave its
//! statement running on the cluster until its timeout, and many such clients would hold
//! the pool. Here the response body watches for that: dropped before its end, it pushes
//! the cancellation into the session, whose handler cancels the call (and the engine
//! cancels the statement on the server).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use http::Method;
use http_body::Body as _;
use rmcp::model::{
    CancelledNotification, CancelledNotificationParam, ClientJsonRpcMessage, ClientNotification,
    RequestId,
};
use rmcp::transport::streamable_http_server::SessionManager as _;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use serde_json::Value;

use super::Shared;

/// The session header a legacy client sends with every request after `initialize`.
const SESSION_HEADER: &str = "mcp-session-id";

/// Middleware on the MCP paths: a POST of a session's JSON-RPC request gets a response
/// body that cancels the request if it is dropped unfinished.
pub(super) async fn cancel_on_disconnect(
    State(s): State<Arc<Shared>>,
    req: Request,
    next: Next,
) -> Response {
    let session = req
        .headers()
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(Arc::<str>::from);
    let sessions = s.sessions_at(req.uri().path());
    let (Some(session), Some(sessions), true) = (session, sessions, req.method() == Method::POST)
    else {
        return next.run(req).await;
    };
    let (parts, body) = req.into_parts();
    let bytes = match s.read_body(body).await {
        Ok(b) => b,
        Err(refusal) => return *refusal,
    };
    let id = request_id(&bytes);
    let response = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    let Some(id) = id else {
        return response;
    };
    let (parts, body) = response.into_parts();
    Response::from_parts(
        parts,
        Body::new(Watched {
            inner: body,
            cancel: Some(Cancel {
                sessions,
                session,
                id,
            }),
        }),
    )
}

/// The id of a JSON-RPC request (not a notification or a response), if the body is one.
fn request_id(body: &Bytes) -> Option<RequestId> {
    #[derive(serde::Deserialize)]
    struct Head {
        id: Option<Value>,
        method: Option<String>,
    }
    let head: Head = serde_json::from_slice(body).ok()?;
    head.method?;
    serde_json::from_value(head.id?).ok()
}

/// What to cancel if the response is dropped unfinished.
struct Cancel {
    sessions: Arc<LocalSessionManager>,
    session: Arc<str>,
    id: RequestId,
}

impl Cancel {
    async fn send(self) {
        let cancelled =
            ClientJsonRpcMessage::notification(ClientNotification::CancelledNotification(
                CancelledNotification::new(CancelledNotificationParam::new(
                    Some(self.id),
                    Some("the client closed the connection".into()),
                )),
            ));
        // A session that ended meanwhile has nothing left to cancel.
        if let Err(e) = self.sessions.accept_message(&self.session, cancelled).await {
            tracing::debug!("cancelling a request whose client went away: {e}");
        }
    }
}

/// A response body that cancels its request when dropped before its end.
struct Watched {
    inner: Body,
    cancel: Option<Cancel>,
}

impl http_body::Body for Watched {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) {
            self.cancel = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        if self.inner.is_end_stream() {
            return;
        }
        if let Some(cancel) = self.cancel.take() {
            tokio::spawn(cancel.send());
        }
    }
}
