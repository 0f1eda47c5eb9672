//! The least a `wasi:http/incoming-handler` component can do and still answer as hello-app
//! does: the same status, headers and body bytes, made once per instance, with no look at the
//! request and no log line.
//!
//! The serve bench runs it on the same host as hello-app's component. Its rate is what the
//! host stack (wasmtime's component calls, wasi:http's resources, hyper) allows before the
//! app does any work of its own: a ceiling for any component, whatever its code.

use std::sync::OnceLock;

use wasip2::exports::http::incoming_handler::Guest;
use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

struct Floor;

wasip2::http::proxy::export!(Floor);

impl Guest for Floor {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        drop(request);
        let body = body();
        let headers = [
            (
                "content-type".to_owned(),
                b"text/plain; charset=utf-8".to_vec(),
            ),
            (
                "content-length".to_owned(),
                body.len().to_string().into_bytes(),
            ),
        ];
        let response = OutgoingResponse::new(Fields::from_list(&headers).expect("valid headers"));
        let out = response.body().expect("a new response has a body");
        ResponseOutparam::set(response_out, Ok(response));
        let stream = out.write().expect("a new body has a stream");
        stream
            .blocking_write_and_flush(body)
            .expect("the host accepts the body");
        drop(stream);
        OutgoingBody::finish(out, None).expect("the body is complete");
    }
}

/// hello-app's body for this Pod, read from the environment once.
fn body() -> &'static [u8] {
    static BODY: OnceLock<Vec<u8>> = OnceLock::new();
    BODY.get_or_init(|| {
        let hostname = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".to_owned());
        let version = std::env::var("HELLO_APP_VERSION").unwrap_or_else(|_| "1.0".to_owned());
        format!("Hello, world!\nVersion: {version}.0\nHostname: {hostname}\n").into_bytes()
    })
}
