//! The accept loop: every TCP connection the server takes goes through here, and here it gets
//! its bounds. A server-wide cap on open connections (a connection past it is answered 503 and
//! closed); the request headers within a deadline, which also bounds the WebSocket handshake and
//! the idle time of a kept-alive connection; the request body within a deadline (`BodyDeadline`);
//! an accept loop that survives running out of file descriptors and serves again by itself as
//! soon as connections close; and a graceful end of every connection at shutdown.

use std::error::Error as StdError;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use axum::http::Request;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// How long to wait before accepting again after an error such as `EMFILE`: the listener stays
/// readable while nothing can be accepted, so retrying at once would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// How often a persisting accept error is logged.
const ACCEPT_ERROR_LOG_INTERVAL: Duration = Duration::from_secs(5);
/// Refusals (503 answers) being written at once; past that a refused connection is just closed.
const MAX_REFUSALS_IN_FLIGHT: usize = 64;
/// How long a refused connection gets to take its 503.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(1);
/// How much of a refused connection's request is read (so that closing it does not reset the
/// connection before the client read the answer).
const REFUSAL_DRAIN_BYTES: usize = 16 * 1024;
/// How long a write to a client may stay pending before the connection is given up: a client
/// that stops reading cannot hold a response, an SSE stream or its place under the cap forever.
const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// The default cap on open connections, when the open-file limit allows it.
const DEFAULT_MAX_OPEN_CONNECTIONS: usize = 50_000;

/// The bounds of every connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnectionLimits {
    /// Open TCP connections, at most.
    pub(crate) max_open: usize,
    /// Deadline for a request's headers.
    pub(crate) header_timeout: Duration,
}

/// Held by a connection, and by the socket or stream it became, for as long as it is open: its
/// place under the server-wide cap.
#[derive(Debug, Clone)]
pub(crate) struct OpenConnection(#[expect(dead_code, reason = "held for its Drop")] Arc<OwnedSemaphorePermit>);

/// Raises the process's open-file limit to its hard limit (or, when that is unlimited, to the
/// kernel's `nr_open`) and returns the limit now in force (`None` when unlimited).
pub(crate) fn raise_file_limit() -> Option<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let current = limit.current?;
    let target = limit.maximum.or_else(|| {
        std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|text| text.trim().parse().ok())
    });
    let Some(target) = target.filter(|target| *target > current) else {
        return Some(current);
    };
    let raised = Rlimit {
        current: Some(target),
        maximum: limit.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => {
            tracing::info!(from = current, to = target, "raised the open-file limit");
            Some(target)
        }
        Err(error) => {
            tracing::warn!(%error, current, "cannot raise the open-file limit");
            Some(current)
        }
    }
}

/// The cap on open connections: the configured one, else 50 000 (about 700 MiB of idle sockets)
/// or three quarters of the open-file limit, whichever is lower (the rest of the descriptors is
/// left for the store, the logs and the accept loop itself).
pub(crate) fn max_open_connections(configured: Option<usize>, file_limit: Option<u64>) -> usize {
    if let Some(configured) = configured {
        if let Some(limit) = file_limit
            && configured as u64 >= limit
        {
            tracing::warn!(
                max_open_connections = configured,
                file_limit = limit,
                "max_open_connections is not below the open-file limit: connections may fail with EMFILE"
            );
        }
        return configured;
    }
    let by_files = file_limit.map_or(usize::MAX, |limit| (limit / 4 * 3).max(1) as usize);
    DEFAULT_MAX_OPEN_CONNECTIONS.min(by_files)
}

/// Accepts connections until `stopping` is cancelled, then tells open HTTP connections to finish
/// their requests and returns when they have (the caller bounds the wait; SSE streams end when
/// the app closes them). Sockets upgraded to WebSocket are not waited for here: they close with
/// the app.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    stopping: CancellationToken,
) {
    let open = Arc::new(Semaphore::new(limits.max_open));
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS_IN_FLIGHT));
    let connections = TaskTracker::new();
    let mut accept_errors = AcceptErrors::default();
    loop {
        let accepted = tokio::select! {
            () = stopping.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                accept_errors.wait_after(error).await;
                continue;
            }
        };
        accept_errors.recovered();
        // Events are many small frames: without TCP_NODELAY, Nagle's algorithm would hold each
        // one back until the client's delayed ACK (up to 40 ms).
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::warn!(%error, "cannot set TCP_NODELAY");
        }
        let Ok(permit) = Arc::clone(&open).try_acquire_owned() else {
            refuse(tcp, &refusals);
            continue;
        };
        let open_connection = OpenConnection(Arc::new(permit));
        connections.spawn(serve_connection(
            tcp,
            peer,
            router.clone(),
            limits,
            open_connection,
            stopping.clone(),
        ));
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

async fn serve_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    router: Router,
    limits: ConnectionLimits,
    open: OpenConnection,
    stopping: CancellationToken,
) {
    let per_request = open.clone();
    let service = router.map_request(move |mut request: Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        request.extensions_mut().insert(per_request.clone());
        request.map(Body::new)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let connection = builder
        .serve_connection(
            TokioIo::new(WriteDeadline::new(tcp, WRITE_STALL_TIMEOUT)),
            TowerToHyperService::new(service),
        )
        .with_upgrades();
    let mut connection = pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = stopping.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        // Timeouts, resets and malformed requests of one client: theirs, not the server's.
        tracing::debug!(%error, %peer, "connection ended with an error");
    }
    drop(open);
}

/// What a connection past the cap is answered.
const REFUSAL_BODY: &str = "{\"error\":{\"code\":\"server_busy\",\"message\":\"The server has as many open \
                            connections as it takes; try again shortly.\"}}";

/// Answers a connection past the cap with 503 and closes it, without holding the accept loop.
fn refuse(mut tcp: TcpStream, refusals: &Arc<Semaphore>) {
    let Ok(permit) = Arc::clone(refusals).try_acquire_owned() else {
        return; // too many refusals at once: just close it
    };
    tokio::spawn(async move {
        let _permit = permit;
        let response = format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             retry-after: 1\r\nconnection: close\r\n\r\n{REFUSAL_BODY}",
            REFUSAL_BODY.len()
        );
        let _ = tokio::time::timeout(REFUSAL_TIMEOUT, async {
            tcp.write_all(response.as_bytes()).await?;
            tcp.shutdown().await?;
            let mut buffer = [0u8; 1024];
            let mut read = 0;
            while read < REFUSAL_DRAIN_BYTES {
                match tcp.read(&mut buffer).await? {
                    0 => break,
                    n => read += n,
                }
            }
            Ok::<_, std::io::Error>(())
        })
        .await;
    });
}

/// Accept errors, logged at most every few seconds while they persist.
#[derive(Debug, Default)]
struct AcceptErrors {
    since_logged: u64,
    logged_at: Option<Instant>,
}

impl AcceptErrors {
    async fn wait_after(&mut self, error: std::io::Error) {
        use std::io::ErrorKind;
        // The peer gave up before we accepted: nothing to wait for.
        if matches!(
            error.kind(),
            ErrorKind::ConnectionAborted | ErrorKind::ConnectionRefused | ErrorKind::ConnectionReset
        ) {
            return;
        }
        self.since_logged += 1;
        let now = Instant::now();
        if self
            .logged_at
            .is_none_or(|at| now.duration_since(at) >= ACCEPT_ERROR_LOG_INTERVAL)
        {
            tracing::warn!(%error, times = self.since_logged, "accept error; retrying");
            self.since_logged = 0;
            self.logged_at = Some(now);
        }
        tokio::time::sleep(ACCEPT_BACKOFF).await;
    }

    fn recovered(&mut self) {
        if self.logged_at.take().is_some() {
            tracing::info!("accepting connections again");
        }
        self.since_logged = 0;
    }
}

/// A connection's IO whose writes must make progress: a write, flush or shutdown that stays
/// pending for `stall` fails with `TimedOut`, which ends the connection (and the socket it was
/// upgraded to).
pub(crate) struct WriteDeadline<T> {
    inner: T,
    stall: Duration,
    /// Running while a write is pending.
    sleep: Option<Pin<Box<Sleep>>>,
}

impl<T> WriteDeadline<T> {
    pub(crate) fn new(inner: T, stall: Duration) -> Self {
        Self {
            inner,
            stall,
            sleep: None,
        }
    }

    fn progress<R>(&mut self, result: Poll<std::io::Result<R>>, cx: &mut Context<'_>) -> Poll<std::io::Result<R>> {
        if result.is_ready() {
            self.sleep = None;
            return result;
        }
        let stall = self.stall;
        let sleep = self.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the client read nothing for {} s", stall.as_secs_f64()),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteDeadline<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.progress(result, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.progress(result, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_flush(cx);
        self.progress(result, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.progress(result, cx)
    }
}

/// The request body did not arrive within its deadline.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {} s", .0.as_secs_f64())]
pub(crate) struct BodyTimedOut(Duration);

impl BodyTimedOut {
    /// The deadline that passed, when `error` (or one of its causes) is a body that timed out.
    pub(crate) fn find(error: &(dyn StdError + 'static)) -> Option<Duration> {
        let mut cause = Some(error);
        while let Some(error) = cause {
            if let Some(timed_out) = error.downcast_ref::<BodyTimedOut>() {
                return Some(timed_out.0);
            }
            cause = error.source();
        }
        None
    }
}

/// A request body that fails with `BodyTimedOut` once its deadline (counted from the request's
/// arrival, for the whole body) has passed.
pub(crate) struct BodyDeadline {
    inner: Body,
    sleep: Pin<Box<Sleep>>,
    timeout: Duration,
}

impl BodyDeadline {
    /// Wraps `inner` with a deadline `timeout` from now.
    pub(crate) fn new(inner: Body, timeout: Duration) -> Self {
        Self {
            inner,
            sleep: Box::pin(tokio::time::sleep(timeout)),
            timeout,
        }
    }
}

impl http_body::Body for BodyDeadline {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        if self.sleep.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(axum::Error::new(BodyTimedOut(self.timeout)))));
        }
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Middleware: every request's body under the configured deadline.
pub(crate) async fn limit_body_time(
    axum::extract::State(timeout): axum::extract::State<Duration>,
    request: Request<Body>,
) -> Request<Body> {
    request.map(|body| Body::new(BodyDeadline::new(body, timeout)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_write_the_client_does_not_read_fails_after_the_stall_timeout() {
        let (server, _client) = tokio::io::duplex(64);
        let mut guarded = WriteDeadline::new(server, Duration::from_secs(30));
        let started = Instant::now();
        let error = guarded.write_all(&[7; 1024]).await.unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_reads_slowly_but_steadily_gets_the_whole_write() {
        let (server, mut client) = tokio::io::duplex(64);
        let reader = tokio::spawn(async move {
            let mut buffer = [0u8; 64];
            let mut read = 0;
            while read < 1024 {
                tokio::time::sleep(Duration::from_secs(10)).await;
                read += client.read(&mut buffer).await.unwrap();
            }
            read
        });
        let mut guarded = WriteDeadline::new(server, Duration::from_secs(30));
        guarded.write_all(&[7; 1024]).await.unwrap();
        assert_eq!(reader.await.unwrap(), 1024);
    }

    #[test]
    fn the_connection_cap_stays_below_the_file_limit_unless_set() {
        for (configured, file_limit, cap) in [
            (None, Some(1_048_576), 50_000),
            (None, Some(20_000), 15_000),
            (None, Some(1_024), 768),
            (None, Some(1), 1),
            (None, None, 50_000),
            (Some(300), Some(1_024), 300),
            (Some(5_000), Some(1_024), 5_000),
        ] {
            assert_eq!(
                max_open_connections(configured, file_limit),
                cap,
                "{configured:?} {file_limit:?}"
            );
        }
    }
}
