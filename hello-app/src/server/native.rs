//! The native server: hyper answering with [`crate::respond::respond`].

use std::convert::Infallible;
use std::future::Ready;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};

use crate::respond::{AppVersion, respond};
use crate::server::{log, request_head, to_response};

/// Where the `Hostname:` line comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hostname {
    /// The kernel's host name, read on every request as the original does (in a Pod it is the
    /// Pod's name).
    Kernel,
    /// A fixed name.
    Fixed(String),
}

impl Hostname {
    fn current(&self) -> String {
        match self {
            Hostname::Kernel => rustix::system::uname()
                .nodename()
                .to_string_lossy()
                .into_owned(),
            Hostname::Fixed(name) => name.clone(),
        }
    }
}

/// The native app: its version and where its host name comes from.
#[derive(Debug, Clone)]
pub struct NativeApp {
    inner: Arc<(AppVersion, Hostname)>,
}

impl NativeApp {
    /// An app answering with `version` and host name `hostname`.
    pub fn new(version: AppVersion, hostname: Hostname) -> Self {
        Self {
            inner: Arc::new((version, hostname)),
        }
    }

    /// Answers one request and logs it as the original does.
    pub fn answer<B>(&self, req: &Request<B>) -> Response<Full<Bytes>> {
        let (version, hostname) = &*self.inner;
        let reply = respond(&request_head(req), *version, &hostname.current());
        if let Some(message) = &reply.log {
            log(message);
        }
        to_response(reply)
    }
}

impl hyper::service::Service<Request<Incoming>> for NativeApp {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        std::future::ready(Ok(self.answer(&req)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_hostname_is_used_verbatim() {
        let app = NativeApp::new(AppVersion::V2, Hostname::Fixed("pod-a".into()));
        let req = Request::get("/x").header("host", "h").body(()).unwrap();
        let resp = app.answer(&req);
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "text/plain; charset=utf-8");
        assert_eq!(resp.headers()["content-length"], "45");
    }

    #[test]
    fn kernel_hostname_matches_uname() {
        let want = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
        assert_eq!(Hostname::Kernel.current(), want.trim_end());
    }
}
