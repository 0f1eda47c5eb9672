//! `pods/<name>/exec`, what `kubectl exec` opens: the command runs where its Pod is
//! ([`crate::podexec`]), and its streams travel over a WebSocket in kube-apiserver's
//! `v5.channel.k8s.io` framing: every message starts with the number of its stream.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use labapi::ApiError;
use labapi::path::ResourcePath;
use labapi::query::Query;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};

use super::Api;
use crate::podexec::{ExecPlace, ExecSpec, SpawnError, Started};

/// The one subprotocol kubectl's WebSocket executor speaks (1.30 and later): v4's streams
/// plus a message that closes one of them, which is how the end of input is sent.
pub const PROTOCOL: &str = "v5.channel.k8s.io";

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE: u8 = 255;

/// How long output is still read after the command exits, from processes it left behind,
/// before they are killed.
const OUTPUT_GRACE: Duration = Duration::from_secs(2);

/// An exec checked against its Pod, ready to start.
#[derive(Debug)]
pub struct ExecRequest {
    command: Vec<String>,
    pod: String,
    pod_uid: String,
    env: Vec<(String, String)>,
    place: ExecPlace,
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
}

/// Checks an exec of the Pod at `p` (a `pods/<name>/exec` path) as kube-apiserver and the
/// kubelet do, and asks the runtime where it runs.
pub fn prepare(api: &Api, p: &ResourcePath, q: &Query) -> Result<ExecRequest, ApiError> {
    if q.command.is_empty() {
        return Err(ApiError::bad_request(
            "you must specify at least one command for the container",
        ));
    }
    if !(q.stdin || q.stdout || q.stderr) {
        return Err(ApiError::bad_request(
            "you must specify at least 1 of stdin, stdout, stderr",
        ));
    }
    let pod = api.get(&ResourcePath {
        subresource: None,
        ..p.clone()
    })?;
    let name = pod["metadata"]["name"].as_str().unwrap_or("").to_string();
    let container = super::logs::container_of(&pod, q.container.as_deref(), "runs no commands")?;
    if pod["spec"]["nodeName"].as_str().is_none_or(str::is_empty) {
        return Err(ApiError::bad_request(format!(
            "pod {name} does not have a host assigned"
        )));
    }
    let runtime = api.runtime()?;
    let place = runtime.exec_place(&pod).map_err(ApiError::bad_request)?;
    let env = container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| {
            Some((
                e["name"].as_str()?.to_string(),
                e["value"].as_str()?.to_string(),
            ))
        })
        .collect();
    Ok(ExecRequest {
        command: q.command.clone(),
        pod: name,
        pod_uid: pod["metadata"]["uid"].as_str().unwrap_or("").to_string(),
        env,
        place,
        stdin: q.stdin,
        stdout: q.stdout,
        // A terminal carries both outputs, as the kubelet's does.
        stderr: q.stderr && !q.tty,
        tty: q.tty,
    })
}

/// Answers the WebSocket handshake and runs the exec on the upgraded connection.
pub fn upgrade(
    req: Request<Incoming>,
    exec: ExecRequest,
) -> Result<Response<BoxBody<Bytes, Infallible>>, ApiError> {
    let headers = req.headers();
    let is_websocket = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if !is_websocket {
        return Err(ApiError::bad_request(format!(
            "the lab serves exec over WebSocket ({PROTOCOL}) only, as kubectl 1.30 and later use it, \
             and this request is no WebSocket upgrade (SPDY, which older kubectl or \
             KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false use, is not served)"
        )));
    }
    let offered: Vec<&str> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    if !offered.contains(&PROTOCOL) {
        return Err(ApiError::bad_request(format!(
            "the lab speaks the exec subprotocol {PROTOCOL}; the client offered {}",
            if offered.is_empty() {
                "none".to_string()
            } else {
                offered.join(", ")
            }
        )));
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or_else(|| ApiError::bad_request("the WebSocket handshake has no Sec-WebSocket-Key"))?;
    let accept = derive_accept_key(key.as_bytes());
    tokio::spawn(async move {
        match hyper::upgrade::on(req).await {
            Ok(upgraded) => {
                let ws =
                    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None)
                        .await;
                run(ws, exec).await;
            }
            Err(e) => tracing::debug!("exec: the connection was not upgraded: {e}"),
        }
    });
    let mut r = Response::new(super::http::empty());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(PROTOCOL),
    );
    h.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept).expect("base64 is a valid header value"),
    );
    Ok(r)
}

/// One stream's bytes as a message: its number, then the bytes.
fn frame(stream: u8, bytes: &[u8]) -> Message {
    let mut v = Vec::with_capacity(bytes.len() + 1);
    v.push(stream);
    v.extend_from_slice(bytes);
    Message::Binary(v.into())
}

/// What the error stream carries at the end, as the kubelet words it: success, or the exit
/// code that kubectl exits with (`command terminated with exit code 3`).
fn exit_status(command: &[String], code: i32) -> Value {
    if code == 0 {
        return json!({"metadata": {}, "status": "Success"});
    }
    json!({
        "metadata": {},
        "status": "Failure",
        "message": format!(
            "command terminated with non-zero exit code: error executing command [{}], exit code {code}",
            command.join(" ")
        ),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
    })
}

/// A command that could not start, in the container runtime's words.
fn start_failure(e: &SpawnError) -> Value {
    let why = match e {
        SpawnError::NotFound(_) | SpawnError::Exec { .. } => {
            format!("{e} (commands run from this machine's filesystem)")
        }
        SpawnError::Setup { .. } => format!("setting the command up in the Pod: {e}"),
    };
    json!({
        "metadata": {},
        "status": "Failure",
        "message": format!("error executing command in container: {why}"),
        "reason": "InternalError",
        "code": 500,
    })
}

/// The exit code as a container runtime reports it: 128 + the signal for a killed process.
fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

/// Copies one of the command's outputs to the client, as messages of `stream`, or to
/// nowhere.
fn pump(
    mut from: Box<dyn AsyncRead + Send + Unpin>,
    stream: u8,
    to: Option<mpsc::Sender<Message>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        // A terminal's reads fail (EIO) once the command's side is closed: that is its end.
        while let Ok(n @ 1..) = from.read(&mut buf).await {
            if let Some(to) = &to
                && to.send(frame(stream, &buf[..n])).await.is_err()
            {
                break;
            }
        }
    })
}

/// How often the server pings an idle client: a write to a client that has gone fails, so
/// the command is ended even while the client's input is held up.
const PING_EVERY: Duration = Duration::from_secs(5);

/// Sends what the command writes to the client, pinging it when idle; ends (dropping its
/// `gone` sender) once the client cannot be written to, or after the last message.
fn writer<S>(
    mut sink: futures::stream::SplitSink<WebSocketStream<S>, Message>,
    mut out: mpsc::Receiver<Message>,
    gone: tokio::sync::oneshot::Sender<()>,
) -> tokio::task::JoinHandle<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            let message = match tokio::time::timeout(PING_EVERY, out.recv()).await {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(_) => Message::Ping(Bytes::new()),
            };
            if sink.send(message).await.is_err() {
                let _ = gone.send(());
                return;
            }
        }
        // kubectl reads a normal closure as the end of every stream; any other is an error.
        let _ = sink
            .send(Message::Close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            })))
            .await;
        let _ = sink.close().await;
    })
}

/// Runs the exec on an upgraded connection until the command ends or the client goes.
async fn run<S>(ws: WebSocketStream<S>, exec: ExecRequest)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sink, mut incoming) = ws.split();
    let (out_tx, out_rx) = mpsc::channel::<Message>(16);
    let (gone_tx, mut gone) = tokio::sync::oneshot::channel();
    let writer = writer(sink, out_rx, gone_tx);
    // The kubelet's first message: an empty one on the lowest stream the server writes, so
    // that the client knows the command is set up.
    let first = if exec.stdout {
        STDOUT
    } else if exec.stderr {
        STDERR
    } else {
        ERROR
    };
    let _ = out_tx.send(frame(first, &[])).await;
    let spec = ExecSpec {
        command: &exec.command,
        pod: &exec.pod,
        pod_uid: &exec.pod_uid,
        env: exec.env.clone(),
        place: &exec.place,
        stdin: exec.stdin,
        tty: exec.tty,
    };
    let started = match crate::podexec::spawn(&spec) {
        Ok(s) => s,
        Err(e) => {
            let status = start_failure(&e);
            let _ = out_tx
                .send(frame(ERROR, status.to_string().as_bytes()))
                .await;
            drop(out_tx);
            let _ = writer.await;
            return;
        }
    };
    let Started {
        mut child,
        mut session,
        stdin,
        stdout,
        stderr,
        terminal,
    } = started;
    // An output the client did not ask for is read and dropped, so that the command never
    // blocks on it.
    let to = |wanted: bool| wanted.then(|| out_tx.clone());
    let mut outputs = vec![pump(stdout, STDOUT, to(exec.stdout))];
    if let Some(stderr) = stderr {
        outputs.push(pump(stderr, STDERR, to(exec.stderr)));
    }
    let (in_tx, mut in_rx) = mpsc::channel::<Bytes>(16);
    let input = stdin.map(|mut stdin| {
        tokio::spawn(async move {
            while let Some(bytes) = in_rx.recv().await {
                if stdin.write_all(&bytes).await.is_err() || stdin.flush().await.is_err() {
                    break;
                }
            }
            // Dropping it is the end of the command's input.
        })
    });
    let mut in_tx = input.is_some().then_some(in_tx);
    // Input the command has not taken yet: while there is some, the client's next messages
    // wait, and the command's exit and the client's going are still watched.
    let mut pending: Option<Bytes> = None;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            _ = &mut gone => {
                session.kill();
                let _ = child.wait().await;
                return;
            }
            permit = reserve(in_tx.clone()), if pending.is_some() => match permit {
                Some(permit) => {
                    permit.send(pending.take().unwrap_or_default());
                }
                // The command's input is closed: what the client sends is dropped.
                None => {
                    pending = None;
                    in_tx = None;
                }
            },
            message = incoming.next(), if pending.is_none() => match message {
                Some(Ok(Message::Binary(data))) => match client_message(&data) {
                    ClientMessage::Input(bytes) if in_tx.is_some() => pending = Some(bytes),
                    ClientMessage::Input(_) => {}
                    ClientMessage::EndOfInput => in_tx = None,
                    ClientMessage::Resize { width, height } => {
                        if let Some(Err(e)) = terminal.as_ref().map(|t| t.resize(width, height)) {
                            tracing::debug!("exec: resizing the terminal failed: {e}");
                        }
                    }
                    ClientMessage::Other => {}
                },
                Some(Ok(_)) => {}
                // The client went (kubectl ended, or the connection broke): so does the command.
                Some(Err(_)) | None => {
                    session.kill();
                    let _ = child.wait().await;
                    writer.abort();
                    return;
                }
            },
        }
    };
    drop(in_tx);
    if let Some(input) = input {
        input.abort();
    }
    let aborts: Vec<_> = outputs.iter().map(|o| o.abort_handle()).collect();
    let drained = tokio::time::timeout(OUTPUT_GRACE, futures::future::join_all(outputs)).await;
    if drained.is_err() {
        tracing::debug!(
            pod = exec.pod,
            "exec: output still open after the command exited"
        );
    }
    // What the command left running ends with it, rather than live on in the Pod; so do the
    // readers of outputs it held open, so that the client gets its answer.
    session.kill();
    aborts.iter().for_each(|a| a.abort());
    let code = match status {
        Ok(s) => exit_code(s),
        Err(e) => {
            tracing::warn!(pod = exec.pod, "exec: waiting for the command failed: {e}");
            1
        }
    };
    let status = exit_status(&exec.command, code);
    let _ = out_tx
        .send(frame(ERROR, status.to_string().as_bytes()))
        .await;
    drop(out_tx);
    let _ = writer.await;
}

/// Room for one message of input, once the command has taken the last; `None` once its
/// input is closed.
async fn reserve(tx: Option<mpsc::Sender<Bytes>>) -> Option<mpsc::OwnedPermit<Bytes>> {
    tx?.reserve_owned().await.ok()
}

/// A message from the client, by its stream.
#[derive(Debug, PartialEq)]
enum ClientMessage {
    /// Bytes of input.
    Input(Bytes),
    /// The end of input (v5's close of stream 0).
    EndOfInput,
    /// The client's terminal has this size.
    Resize { width: u16, height: u16 },
    /// Anything else (closes of other streams, unknown streams, a malformed size).
    Other,
}

fn client_message(data: &[u8]) -> ClientMessage {
    match data {
        [STDIN, bytes @ ..] => ClientMessage::Input(Bytes::copy_from_slice(bytes)),
        [CLOSE, STDIN] => ClientMessage::EndOfInput,
        [RESIZE, size @ ..] => {
            #[derive(serde::Deserialize)]
            #[serde(rename_all = "PascalCase")]
            struct Size {
                width: u16,
                height: u16,
            }
            match serde_json::from_slice::<Size>(size) {
                Ok(Size { width, height }) => ClientMessage::Resize { width, height },
                Err(_) => ClientMessage::Other,
            }
        }
        _ => ClientMessage::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_reported_as_the_kubelet_does() {
        let cmd = ["sh".to_string(), "-c".to_string(), "exit 3".to_string()];
        assert_eq!(exit_status(&cmd, 0)["status"], "Success");
        let failed = exit_status(&cmd, 3);
        assert_eq!(failed["reason"], "NonZeroExitCode");
        assert_eq!(failed["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(failed["details"]["causes"][0]["message"], "3");
        assert!(
            failed["message"]
                .as_str()
                .unwrap()
                .ends_with("error executing command [sh -c exit 3], exit code 3")
        );
    }

    #[test]
    fn a_killed_command_exits_with_128_plus_its_signal() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(exit_code(std::process::ExitStatus::from_raw(9)), 137);
        assert_eq!(exit_code(std::process::ExitStatus::from_raw(2 << 8)), 2);
    }

    #[test]
    fn a_missing_program_is_named() {
        let status = start_failure(&SpawnError::NotFound("nope".into()));
        assert_eq!(status["status"], "Failure");
        assert!(
            status["message"]
                .as_str()
                .unwrap()
                .contains("exec: \"nope\": executable file not found in $PATH"),
            "{status}"
        );
        let setup = start_failure(&SpawnError::Setup {
            what: "opening the Pod's network namespace /run/netns/x".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        });
        let message = setup["message"].as_str().unwrap();
        assert!(
            message
                .contains("setting the command up in the Pod: opening the Pod's network namespace")
                && !message.contains("executable file not found"),
            "{message}"
        );
    }

    #[test]
    fn client_messages_are_read_by_stream() {
        assert_eq!(
            client_message(b"\x00ls\n"),
            ClientMessage::Input(Bytes::from_static(b"ls\n"))
        );
        assert_eq!(client_message(&[CLOSE, STDIN]), ClientMessage::EndOfInput);
        assert_eq!(
            client_message(b"\x04{\"Width\":91,\"Height\":27}"),
            ClientMessage::Resize {
                width: 91,
                height: 27
            }
        );
        assert_eq!(client_message(b"\x04{\"width\":1}"), ClientMessage::Other);
        assert_eq!(client_message(&[CLOSE, STDOUT]), ClientMessage::Other);
        assert_eq!(client_message(&[]), ClientMessage::Other);
    }

    #[test]
    fn frames_start_with_their_stream() {
        let Message::Binary(b) = frame(STDERR, b"oops") else {
            unreachable!()
        };
        assert_eq!(&b[..], b"\x02oops");
    }
}
