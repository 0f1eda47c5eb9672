//! HTTP for the API: authentication, routing, content negotiation (JSON or Table), body
//! limits, `metav1.Status` errors and streamed watches.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use labapi::discovery;
use labapi::path::{self, ResourcePath, Route};
use labapi::query::Query;
use labapi::table::IncludeObject;
use labapi::{ApiError, Kind};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::Api;
use super::watch::{self, Encoding};

/// Request bodies above this are refused with 413 (kube-apiserver's limit is 3 MiB too).
pub const MAX_BODY: usize = 3 * 1024 * 1024;

type Body = BoxBody<Bytes, Infallible>;

/// How the server is reached and who may use it.
pub struct ServeOptions {
    /// TLS configuration (the lab's CA-signed serving certificate).
    pub tls: Arc<rustls::ServerConfig>,
    /// The bearer token clients must present.
    pub token: String,
    /// `host:port` reported in legacy discovery.
    pub address: String,
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// An empty body (a 101's).
pub(super) fn empty() -> Body {
    full(Bytes::new())
}

fn json_response(code: StatusCode, value: &Value, content_type: &str) -> Response<Body> {
    let mut r = Response::new(full(value.to_string()));
    *r.status_mut() = code;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(content_type).unwrap_or(HeaderValue::from_static("application/json")),
    );
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, private"),
    );
    r
}

fn ok_json(value: &Value) -> Response<Body> {
    json_response(StatusCode::OK, value, "application/json")
}

fn error_response(e: &ApiError) -> Response<Body> {
    json_response(
        StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &e.to_status(),
        "application/json",
    )
}

/// What the client's `Accept` asks for.
fn table_request(accept: &str, q: &Query) -> Result<Option<IncludeObject>, ApiError> {
    if !accept.contains("as=Table") {
        return Ok(None);
    }
    IncludeObject::from_query(q.include_object.as_deref()).map(Some)
}

/// Constant-time comparison, so that the token cannot be guessed byte by byte from timings.
fn token_matches(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

fn authenticated(req: &Request<Incoming>, token: &str) -> bool {
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| token_matches(t.trim().as_bytes(), token.as_bytes()))
}

/// Reads the body up to [`MAX_BODY`]. A larger body is still read (and dropped) up to a
/// bound, so that the client, which is still sending, gets the 413 instead of a broken pipe.
async fn read_body(req: Request<Incoming>) -> Result<Bytes, ApiError> {
    const DRAIN_LIMIT: usize = 64 * 1024 * 1024;
    let mut body = req.into_body();
    let mut buf = bytes::BytesMut::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame
            .map_err(|e| ApiError::bad_request(format!("reading the request body failed: {e}")))?;
        if let Some(data) = frame.data_ref() {
            seen += data.len();
            if seen <= MAX_BODY {
                buf.extend_from_slice(data);
            } else if seen > DRAIN_LIMIT {
                break;
            }
        }
    }
    if seen > MAX_BODY {
        return Err(ApiError::too_large(MAX_BODY));
    }
    Ok(buf.freeze())
}

/// Serves one request.
pub async fn handle(
    api: Arc<Api>,
    opts: Arc<ServeOptions>,
    req: Request<Incoming>,
) -> Response<Body> {
    let started = Instant::now();
    let method = req.method().clone();
    let uri = req.uri().clone();
    let response = match route(&api, &opts, req).await {
        Ok(r) => r,
        Err(e) => error_response(&e),
    };
    tracing::debug!(%method, %uri, status = response.status().as_u16(), elapsed_us = started.elapsed().as_micros() as u64, "request");
    response
}

async fn route(
    api: &Arc<Api>,
    opts: &ServeOptions,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let route = path::parse(req.uri().path()).map_err(|_| ApiError::no_route())?;
    let public = matches!(route, Route::Version | Route::Health);
    if !public && !authenticated(&req, &opts.token) {
        return Err(ApiError::unauthorized());
    }
    let accept = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    match route {
        Route::Version => Ok(ok_json(&discovery::version())),
        Route::Health => {
            let mut r = Response::new(full("ok"));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            Ok(r)
        }
        Route::Api | Route::Apis => {
            let core = route == Route::Api;
            if discovery::wants_aggregated(&accept) {
                Ok(json_response(
                    StatusCode::OK,
                    &discovery::aggregated(core),
                    discovery::AGGREGATED_CONTENT_TYPE,
                ))
            } else if core {
                Ok(ok_json(&discovery::legacy_api(&opts.address)))
            } else {
                Ok(ok_json(&discovery::legacy_apis()))
            }
        }
        Route::GroupVersion { group, version } => {
            Ok(ok_json(&discovery::legacy_resources(&group, &version)))
        }
        Route::OpenApiIndex => Ok(ok_json(&discovery::openapi_index())),
        Route::OpenApiDocument { group, version } => discovery::openapi_document(&group, &version)
            .map(|d| ok_json(&d))
            .ok_or_else(ApiError::no_route),
        Route::Resource(p) => resource(api, p, accept, req).await,
    }
}

async fn resource(
    api: &Arc<Api>,
    p: ResourcePath,
    accept: String,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let q = Query::parse(req.uri().query())?;
    if p.subresource.as_deref() == Some("exec") {
        // GET opens a WebSocket, POST (SPDY) is what older clients use; both are checked
        // first, so that either gets the Pod's or the options' error.
        if !matches!(*req.method(), Method::GET | Method::POST) {
            return Err(ApiError::method_not_allowed(format!(
                "pods/exec is a connection, opened with GET or POST: {} is not allowed",
                req.method()
            )));
        }
        let exec = super::exec::prepare(api, &p, &q)?;
        return super::exec::upgrade(req, exec);
    }
    if p.subresource.as_deref() == Some("log") {
        if req.method() != Method::GET {
            return Err(ApiError::method_not_allowed(format!(
                "pods/log is read-only: {} is not allowed",
                req.method()
            )));
        }
        let log = super::logs::read(api, &p, &q)?;
        let mut r = match log.follow {
            None => Response::new(full(log.now)),
            // `kubectl logs -f`: what is there, then each new line as it is written, until
            // the Pod stops or the client goes.
            Some(follow) => {
                let first = futures::stream::iter(
                    (!log.now.is_empty())
                        .then(|| Ok::<_, Infallible>(Frame::data(Bytes::from(log.now)))),
                );
                let rest = futures::stream::unfold(follow, |mut follow| async move {
                    let bytes = follow.next().await?;
                    Some((Ok(Frame::data(Bytes::from(bytes))), follow))
                });
                Response::new(StreamBody::new(futures::StreamExt::chain(first, rest)).boxed())
            }
        };
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        return Ok(r);
    }
    let method = req.method().clone();
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_string();
    let table = table_request(&accept, &q)?;
    if matches!(method, Method::POST | Method::PUT)
        && content_type.starts_with("application/vnd.kubernetes.protobuf")
    {
        return Err(ApiError {
            code: 415,
            reason: "UnsupportedMediaType",
            message: "the lab's API server reads JSON and YAML bodies, not protobuf (application/vnd.kubernetes.protobuf); write the object to a file and use `kubectl apply -f`".to_string(),
            details: None,
        });
    }
    let api = api.clone();
    match (&method, p.name.is_some()) {
        (&Method::GET, _) if q.watch => {
            let encoding = table.map(Encoding::Table).unwrap_or(Encoding::Object);
            let rx = watch::start(&api, &p, &q, encoding)?;
            let stream = futures::stream::unfold(rx, |mut rx| async move {
                rx.recv()
                    .await
                    .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
            });
            let mut r = Response::new(StreamBody::new(stream).boxed());
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            Ok(r)
        }
        (&Method::GET, false) => {
            let page = api.list(&p, &q)?;
            let body = match table {
                Some(include) => {
                    let items: Vec<&Value> = page.items.iter().map(|o| o.as_ref()).collect();
                    let mut t = labapi::table::table(
                        p.kind,
                        items,
                        &page.resource_version.to_string(),
                        include,
                        jiff::Timestamp::now(),
                    );
                    if let Some(c) = &page.continue_token {
                        t["metadata"]["continue"] = json!(c);
                        t["metadata"]["remainingItemCount"] = json!(page.remaining);
                    }
                    t
                }
                None => return Ok(list_response(p.kind, &page)),
            };
            Ok(ok_json(&body))
        }
        (&Method::GET, true) => {
            if p.subresource.as_deref() == Some("scale") {
                return Ok(ok_json(&api.scale(&p)?));
            }
            let obj = api.get(&p)?;
            let body = match table {
                Some(include) => {
                    labapi::table::object_table(p.kind, &obj, include, jiff::Timestamp::now())
                }
                None => (*obj).clone(),
            };
            Ok(ok_json(&body))
        }
        (&Method::POST, false) => {
            let body = read_body(req).await?;
            let w = api.create(&p, &q, &body)?;
            Ok(written(StatusCode::CREATED, &w.object, &w.warnings))
        }
        (&Method::PUT, true) => {
            let body = read_body(req).await?;
            let w = api.replace(&p, &q, &body)?;
            Ok(written(StatusCode::OK, &w.object, &w.warnings))
        }
        (&Method::PATCH, true) => {
            let body = read_body(req).await?;
            let w = api.patch(&p, &q, &content_type, &body)?;
            Ok(written(StatusCode::OK, &w.object, &w.warnings))
        }
        (&Method::DELETE, true) => {
            let body = read_body(req).await?;
            Ok(ok_json(&api.delete(&p, &q, &body)?))
        }
        (&Method::DELETE, false) => {
            let body = read_body(req).await?;
            let page = api.list(
                &p,
                &Query {
                    limit: 0,
                    continue_token: None,
                    ..q.clone()
                },
            )?;
            for obj in &page.items {
                let item = ResourcePath {
                    name: obj["metadata"]["name"].as_str().map(str::to_string),
                    namespace: obj["metadata"]["namespace"].as_str().map(str::to_string),
                    ..p.clone()
                };
                match api.delete(&item, &q, &body) {
                    Ok(_) => {}
                    Err(e) if e.code == 404 => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(ok_json(
                &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}),
            ))
        }
        _ => Err(ApiError::method_not_allowed(format!(
            "{method} is not supported on this path"
        ))),
    }
}

/// A List body, serialised straight from the stored objects: building it as a `Value` first
/// would deep-copy every item.
#[derive(serde::Serialize)]
struct ListBody<'a> {
    kind: String,
    #[serde(rename = "apiVersion")]
    api_version: String,
    metadata: Value,
    items: Vec<&'a Value>,
}

fn list_response(kind: Kind, page: &super::verbs::ListPage) -> Response<Body> {
    let info = kind.info();
    let mut metadata = json!({"resourceVersion": page.resource_version.to_string()});
    if let Some(c) = &page.continue_token {
        metadata["continue"] = json!(c);
        metadata["remainingItemCount"] = json!(page.remaining);
    }
    let body = ListBody {
        kind: format!("{}List", info.kind_name),
        api_version: info.api_version(),
        metadata,
        items: page.items.iter().map(|o| o.as_ref()).collect(),
    };
    let bytes = serde_json::to_vec(&body).expect("JSON values always serialise");
    let mut r = Response::new(full(bytes));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn written(code: StatusCode, obj: &Value, warnings: &[String]) -> Response<Body> {
    let mut r = json_response(code, obj, "application/json");
    for w in warnings {
        let text = format!("299 - {:?}", w);
        if let Ok(v) = HeaderValue::from_str(&text) {
            r.headers_mut().append(header::WARNING, v);
        }
    }
    r
}

/// Accepts TLS connections on `listener` and serves the API until `shutdown` resolves.
pub async fn serve(
    api: Arc<Api>,
    listener: TcpListener,
    opts: ServeOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let acceptor = TlsAcceptor::from(opts.tls.clone());
    let opts = Arc::new(opts);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => accepted?,
            _ = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let (api, opts) = (api.clone(), opts.clone());
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::debug!(%peer, "TLS handshake failed: {e}");
                    return;
                }
            };
            let service = hyper::service::service_fn(move |req| {
                let (api, opts) = (api.clone(), opts.clone());
                async move { Ok::<_, Infallible>(handle(api, opts, req).await) }
            });
            // HTTP/1.1 only, as kubectl's streams need; upgrades carry `kubectl exec`'s
            // WebSocket.
            let builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .http1_only();
            let conn =
                builder.serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(tls), service);
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(%peer, "connection ended: {e}");
            }
        });
    }
    // Watches never end by themselves; give in-flight requests a moment, then stop.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), graceful.shutdown()).await;
    Ok(())
}
