//! The connections: HTTP/1.1 served by hyper, with a read timeout.
//!
//! Without a timer, hyper keeps a connection that sends nothing, sends its
//! headers a byte at a time, or sits idle between requests would be kept for ever; enough
//! of them use up the process's file descriptors, and then no client can connect and no
//! pool can open a connection to PostgreSQL. Here a connection has `http.read_timeout_seconds`
//! to send a request's headers, whether it is new or idle after a response (hyper's header
//! timer runs whenever the connection waits for a request), and then as long again for its
//! body (`whole_body` in mod.rs). A response is never cut: a stream lasts as long as the
//! client reads it.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::App;

/// Where connections come from: a TCP listener, or the TLS one (tls.rs).
pub trait Accept: Send + 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// The next connection; failures (out of file descriptors and the like) are retried
    /// here, after a pause.
    fn accept(&mut self) -> impl Future<Output = (Self::Io, SocketAddr)> + Send;
}

impl Accept for TcpListener {
    type Io = TcpStream;

    async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        loop {
            match TcpListener::accept(self).await {
                Ok((tcp, peer)) => {
                    // An answer is written in several small pieces (headers, SSE event, last
                    // chunk): with Nagle's algorithm the later ones wait for the client's
                    // delayed ACK, 40 ms a call.
                    if let Err(e) = tcp.set_nodelay(true) {
                        tracing::debug!("cannot set TCP_NODELAY: {e}");
                    }
                    return (tcp, peer);
                }
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}

/// Serves `app` on every connection `listener` accepts until `stop`; then accepts no more,
/// lets each connection finish the response it is writing, and returns once all have
/// closed.
pub async fn serve<L: Accept>(
    mut listener: L,
    app: App,
    read_timeout: Duration,
    stop: CancellationToken,
) {
    let connections = TaskTracker::new();
    loop {
        let (io, _) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let app = app.clone();
        let service = hyper::service::service_fn(move |req| {
            let app = app.clone();
            async move { Ok::<_, std::convert::Infallible>(app.handle(req).await) }
        });
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
