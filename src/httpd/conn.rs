//! The connections under axum: HTTP/1.1 served by hyper, with a read timeout.
//!
//! `axum::serve` gives hyper no timer, so a connection that sends nothing, sends its
//! headers a byte at a time, or sits idle between requests would be kept for ever; enough
//! of them use up the process's file descriptors, and then no client can connect and no
//! pool can open a connection to PostgreSQL. Here a connection has `http.read_timeout_seconds`
//! to send a request's headers, whether it is new or idle after a response (hyper's header
//! timer runs whenever the connection waits for a request), and then as long again for its
//! body (`read_body` in mod.rs). A response is never cut: a stream lasts as long as the
//! client reads it.

use std::time::Duration;

use axum::Router;
use axum::serve::Listener;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Serves `app` on every connection `listener` accepts until `stop`; then accepts no more,
/// lets each connection finish the response it is writing, and returns once all have
/// closed.
pub async fn serve<L: Listener>(
    mut listener: L,
    app: Router,
    read_timeout: Duration,
    stop: CancellationToken,
) {
    let connections = TaskTracker::new();
    loop {
        // The listener retries failed accepts itself (out of file descriptors and the like).
        let (io, _) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let service = TowerToHyperService::new(app.clone());
        let stop = stop.clone();
        connections.spawn(async move {
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(read_timeout);
            let mut conn = std::pin::pin!(http.serve_connection(TokioIo::new(io), service));
            let ended = tokio::select! {
                ended = conn.as_mut() => ended,
                () = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = ended {
                tracing::debug!("HTTP connection closed: {e}");
            }
        });
    }
    connections.close();
    connections.wait().await;
}
