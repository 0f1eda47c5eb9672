//! The HTTP side shared by the native server and the wasm host: the accept loop with graceful
//! drain, the translation between hyper and [`crate::respond`], and the original's log lines.

pub mod native;

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Incoming};
use hyper::server::conn::http1;
use hyper::service::Service;
use hyper::{Request, Response, Version};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::respond::{Reply, RequestHead, log_line};

/// The port the original listens on when `PORT` is unset or empty.
pub const DEFAULT_PORT: u16 = 8080;

/// How long in-flight requests may take to finish after SIGTERM before the server exits anyway
/// (Kubernetes' default grace period is 30 s, after which it sends SIGKILL).
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(25);

/// A `PORT` value that is not a port number.
#[derive(Debug, thiserror::Error)]
#[error("invalid PORT {value:?}: expected a TCP port number from 0 to 65535")]
pub struct InvalidPort {
    /// The value as given.
    pub value: String,
}

/// Reads the port as the original does: `PORT`, or 8080 when it is unset or empty.
pub fn port_from_env(value: Option<&str>) -> Result<u16, InvalidPort> {
    match value {
        None | Some("") => Ok(DEFAULT_PORT),
        Some(v) => v.parse().map_err(|_| InvalidPort {
            value: v.to_owned(),
        }),
    }
}

/// The request head [`crate::respond::respond`] needs, read from a hyper request.
pub fn request_head<B>(req: &Request<B>) -> RequestHead<'_> {
    RequestHead {
        method: req.method().as_str(),
        target: req
            .uri()
            .path_and_query()
            .map(|pq| pq.as_str())
            .unwrap_or("/"),
        http11_or_later: req.version() >= Version::HTTP_11,
        has_host: req.headers().contains_key(hyper::header::HOST),
    }
}

/// Turns a [`Reply`] into a hyper response (hyper adds `Date` and drops the body for `HEAD`).
pub fn to_response(reply: Reply) -> Response<Full<Bytes>> {
    let mut builder = Response::builder().status(reply.status);
    for (name, value) in &reply.headers {
        builder = builder.header(*name, value);
    }
    if reply.close {
        builder = builder.header(hyper::header::CONNECTION, "close");
    }
    builder
        .header(hyper::header::CONTENT_LENGTH, reply.body.len())
        .body(Full::new(Bytes::from(reply.body)))
        .expect("a Reply holds only valid statuses and header values")
}

/// Writes one of the original's log lines (`2026/11/25 02:00:00 <message>`) to stderr in a
/// single write, so that lines from concurrent requests never interleave.
pub fn log(message: &str) {
    let line = log_line(time::OffsetDateTime::now_utc(), message);
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// Whether an accept error passes (resources run short, a peer gave up) rather than meaning
/// the listener is dead (`EINVAL` once the socket is no longer listening).
fn accept_error_is_temporary(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | Interrupted | WouldBlock | OutOfMemory
    ) || matches!(
        e.raw_os_error(),
        // EMFILE, ENFILE, ENOBUFS, ENOMEM, EPROTO, EPERM (a firewall said no)
        Some(24 | 23 | 105 | 12 | 71 | 1)
    )
}

/// Serves HTTP/1.1 connections from `listener` until `shutdown` completes, then stops
/// accepting and waits up to `drain` for in-flight requests, as a Pod does on SIGTERM.
///
/// `service_for` makes the service for one connection from the peer's and the local address.
/// Returns an error when the listening socket stops working (as Go's `http.Serve` does).
pub async fn serve<F, S, B>(
    listener: TcpListener,
    service_for: F,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) -> std::io::Result<()>
where
    F: Fn(SocketAddr, SocketAddr) -> S,
    S: Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder.keep_alive(true);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) if accept_error_is_temporary(&e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                // The listening socket itself is gone (closed or destroyed under us): end,
                // as Go's http.Serve returns and hello-app's log.Fatal exits.
                Err(e) => return Err(e),
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().unwrap_or(peer);
        let conn = builder.serve_connection(TokioIo::new(stream), service_for(peer, local));
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(?drain, "requests still in flight after the drain timeout");
    }
    Ok(())
}

/// Completes on SIGTERM (what Kubernetes sends on Pod deletion) or SIGINT.
pub async fn termination_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_defaults_when_unset_or_empty() {
        assert_eq!(port_from_env(None).unwrap(), 8080);
        assert_eq!(port_from_env(Some("")).unwrap(), 8080);
        assert_eq!(port_from_env(Some("9090")).unwrap(), 9090);
    }

    #[test]
    fn bad_port_names_the_value() {
        for bad in ["abc", "70000", "-1", " 80"] {
            let err = port_from_env(Some(bad)).unwrap_err();
            assert!(
                err.to_string().contains(&format!("{bad:?}")),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn replies_become_responses_with_length() {
        let r = to_response(crate::respond::respond(
            &RequestHead {
                method: "GET",
                target: "/",
                http11_or_later: true,
                has_host: false,
            },
            crate::respond::AppVersion::V1,
            "h",
        ));
        assert_eq!(r.status(), 400);
        assert_eq!(r.headers()["connection"], "close");
        assert_eq!(r.headers()["content-length"], "45");
    }
}
