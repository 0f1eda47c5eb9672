//! hello-app as a `wasi:http/incoming-handler` component.
//!
//! The answer comes from [`hello_app::respond`], the same function the native server calls;
//! this file only translates between wasi:http resources and that function. The Pod's name
//! arrives as `HOSTNAME` and the release as `HELLO_APP_VERSION` in the component's
//! environment, which the host sets per Pod.

use std::sync::OnceLock;

use hello_app::respond::{AppVersion, RequestHead, log_line, respond};
use wasip2::exports::http::incoming_handler::Guest;
use wasip2::io::streams::OutputStream;
use wasip2::http::types::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

struct HelloApp;

wasip2::http::proxy::export!(HelloApp);

impl Guest for HelloApp {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let method = method_name(&request.method());
        let target = request.path_with_query().unwrap_or_else(|| "/".to_owned());
        // The host refuses HTTP/1.1 without Host before calling us (wasi:http has no protocol
        // version), and fills in an authority for HTTP/1.0, so every request here is valid.
        let head = RequestHead {
            method: &method,
            target: &target,
            http11_or_later: false,
            has_host: true,
        };
        let (version, hostname) = pod();
        let reply = respond(&head, *version, hostname);

        if let Some(message) = &reply.log {
            log(&log_line(time::OffsetDateTime::now_utc(), message));
        }

        let mut headers: Vec<(String, Vec<u8>)> = reply
            .headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec()))
            .collect();
        headers.push((
            "content-length".to_owned(),
            reply.body.len().to_string().into_bytes(),
        ));
        let fields = Fields::from_list(&headers).expect("the reply's headers are valid");
        let response = OutgoingResponse::new(fields);
        // A new response is already 200: one host call fewer on every ordinary request.
        if reply.status != 200 {
            response
                .set_status_code(reply.status)
                .expect("the reply's status is valid");
        }
        let body = response.body().expect("a new response has a body");
        ResponseOutparam::set(response_out, Ok(response));
        if !reply.body.is_empty() {
            let stream = body.write().expect("a new body has a stream");
            stream
                .blocking_write_and_flush(reply.body.as_bytes())
                .expect("the host accepts the body");
        }
        OutgoingBody::finish(body, None).expect("the body is complete");
    }
}

/// Writes a log line to stderr in one write per 4 KiB (the most one wasi:io write takes), so
/// lines up to 4 KiB from the Pod's instances do not interleave. The stream is opened once per instance:
/// std's stderr costs a few more host calls a line.
fn log(line: &str) {
    thread_local! {
        static STDERR: OutputStream = wasip2::cli::stderr::get_stderr();
    }
    STDERR.with(|stderr| {
        for chunk in line.as_bytes().chunks(4096) {
            if stderr.blocking_write_and_flush(chunk).is_err() {
                return;
            }
        }
    });
}

/// The Pod's release and name. The host reuses an instance for many requests of the same Pod,
/// whose environment never changes, so they are read once.
fn pod() -> &'static (AppVersion, String) {
    static POD: OnceLock<(AppVersion, String)> = OnceLock::new();
    POD.get_or_init(|| {
        let version = std::env::var("HELLO_APP_VERSION")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(AppVersion::V1);
        let hostname = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".to_owned());
        (version, hostname)
    })
}

fn method_name(m: &Method) -> String {
    match m {
        Method::Get => "GET",
        Method::Head => "HEAD",
        Method::Post => "POST",
        Method::Put => "PUT",
        Method::Delete => "DELETE",
        Method::Connect => "CONNECT",
        Method::Options => "OPTIONS",
        Method::Trace => "TRACE",
        Method::Patch => "PATCH",
        Method::Other(s) => return s.clone(),
    }
    .to_owned()
}
