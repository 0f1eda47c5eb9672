//! `GET pods/<name>/log`, what `kubectl logs` reads: the lines the Pod's component wrote to
//! stderr, as the runtime keeps them, with kube-apiserver's options and errors.

use std::sync::Arc;
use std::time::Duration;

use hello_app::wasm_host::LogBuffer;
use labapi::ApiError;
use labapi::path::ResourcePath;
use labapi::query::Query;
use serde_json::Value;

use super::Api;
use crate::controllers::PodRuntime;

/// How often a followed log is looked at for new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

/// The options of kube-apiserver's log endpoint that the lab acts on; the others
/// (`timestamps`, `sinceSeconds`, ...) are accepted and ignored.
#[derive(Debug, Default, PartialEq, Eq)]
struct LogOptions {
    container: Option<String>,
    tail_lines: Option<usize>,
    limit_bytes: Option<usize>,
    previous: bool,
    follow: bool,
}

impl LogOptions {
    /// The log options of a parsed query, with kube-apiserver's checks of their ranges.
    fn from_query(q: &Query) -> Result<LogOptions, ApiError> {
        let tail_lines = match q.tail_lines.map(usize::try_from) {
            Some(Err(_)) => {
                return Err(ApiError::bad_request(format!(
                    "tailLines: Invalid value: {}: must be greater than or equal to 0",
                    q.tail_lines.unwrap_or_default()
                )));
            }
            n => n.and_then(Result::ok),
        };
        let limit_bytes = match q.limit_bytes {
            Some(n) if n <= 0 => {
                return Err(ApiError::bad_request(format!(
                    "limitBytes: Invalid value: {n}: must be greater than 0"
                )));
            }
            n => n.and_then(|n| usize::try_from(n).ok()),
        };
        Ok(LogOptions {
            container: q.container.clone(),
            tail_lines,
            limit_bytes,
            previous: q.previous,
            follow: q.follow,
        })
    }
}

/// A log as read: what it holds now, and with `follow=true` where to go on reading.
pub struct LogRead {
    /// What the log holds, after the query's options.
    pub now: Vec<u8>,
    /// With `follow=true`: the log to follow from what `now` ended with.
    pub follow: Option<Follow>,
}

/// A log being followed (`kubectl logs -f`) until its Pod stops, or `limitBytes` have been
/// sent.
pub struct Follow {
    log: LogBuffer,
    at: u64,
    pod: Value,
    runtime: Arc<dyn PodRuntime>,
    /// Bytes still to send under `limitBytes`.
    left: Option<usize>,
}

impl Follow {
    /// The next lines written, once there are any; `None` once the Pod has stopped (its
    /// log is gone with it).
    pub async fn next(&mut self) -> Option<Vec<u8>> {
        loop {
            if self.left == Some(0) {
                return None;
            }
            let (mut bytes, at) = self.log.since(self.at);
            self.at = at;
            if !bytes.is_empty() {
                if let Some(left) = &mut self.left {
                    bytes.truncate(*left);
                    *left -= bytes.len();
                }
                return Some(bytes);
            }
            self.runtime.logs(&self.pod).ok()?;
            tokio::time::sleep(FOLLOW_POLL).await;
        }
    }
}

/// The log of the Pod at `p` (a `pods/<name>/log` path), after the query's options.
pub fn read(api: &Api, p: &ResourcePath, q: &Query) -> Result<LogRead, ApiError> {
    let options = LogOptions::from_query(q)?;
    let pod = api.get(&ResourcePath {
        subresource: None,
        ..p.clone()
    })?;
    let name = pod["metadata"]["name"].as_str().unwrap_or("");
    let container = container_of(&pod, options.container.as_deref(), "has no log")?["name"]
        .as_str()
        .unwrap_or("");
    if options.previous {
        // The lab's runtime keeps one log per Pod, across its container's restarts.
        return Err(ApiError::bad_request(format!(
            "previous terminated container \"{container}\" in pod \"{name}\" not found"
        )));
    }
    let runtime = api.runtime()?;
    let log = runtime.logs(&pod).map_err(ApiError::bad_request)?;
    let (now, at) = log.since(0);
    let now = trim(now, options.tail_lines, options.limit_bytes);
    let follow = options.follow.then(|| Follow {
        log,
        at,
        pod: (*pod).clone(),
        runtime: runtime.clone(),
        left: options.limit_bytes.map(|n| n - now.len()),
    });
    Ok(LogRead { now, follow })
}

/// The container a log or an exec is for: the one `asked` for, or the first. The lab runs
/// only a Pod's first container, so another one `has_no` log or runs no command.
pub(super) fn container_of<'p>(
    pod: &'p Value,
    asked: Option<&str>,
    has_no: &str,
) -> Result<&'p Value, ApiError> {
    let name = pod["metadata"]["name"].as_str().unwrap_or("");
    let containers = pod["spec"]["containers"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let named = |c: &Value| c["name"].as_str().unwrap_or("").to_string();
    let Some(first) = containers.first() else {
        return Err(ApiError::bad_request(format!(
            "pod {name} has no containers"
        )));
    };
    match asked {
        Some(c) if !containers.iter().any(|x| x["name"] == c) => Err(ApiError::bad_request(
            format!("container {c} is not valid for pod {name}"),
        )),
        Some(c) if named(first) != c => Err(ApiError::bad_request(format!(
            "the lab runs only the first container of a Pod ({}); container {c} of pod {name} {has_no}",
            named(first)
        ))),
        _ => Ok(first),
    }
}

/// The last `tail_lines` lines of `log`, then its first `limit_bytes` bytes, as kubelet
/// applies them.
fn trim(mut log: Vec<u8>, tail_lines: Option<usize>, limit_bytes: Option<usize>) -> Vec<u8> {
    if let Some(n) = tail_lines {
        let body = log.strip_suffix(b"\n").unwrap_or(&log);
        let start = if n == 0 {
            log.len()
        } else {
            body.iter()
                .enumerate()
                .rev()
                .filter(|(_, b)| **b == b'\n')
                .nth(n - 1)
                .map_or(0, |(i, _)| i + 1)
        };
        log.drain(..start);
    }
    if let Some(n) = limit_bytes {
        log.truncate(n);
    }
    log
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(query: &str) -> Result<LogOptions, ApiError> {
        LogOptions::from_query(&Query::parse(Some(query))?)
    }

    #[test]
    fn options_are_read_from_the_query() {
        assert_eq!(
            parse("container=hello-world&tailLines=2&limitBytes=10").unwrap(),
            LogOptions {
                container: Some("hello-world".into()),
                tail_lines: Some(2),
                limit_bytes: Some(10),
                previous: false,
                follow: false,
            }
        );
        assert_eq!(
            parse("timestamps=true&sinceSeconds=10").unwrap(),
            LogOptions::default()
        );
        assert_eq!(parse("tailLines=-1").unwrap_err().code, 400);
        let err = parse("tailLines=x").unwrap_err();
        assert_eq!(err.code, 400);
        assert!(err.message.contains("tailLines"), "{}", err.message);
        assert_eq!(parse("limitBytes=0").unwrap_err().code, 400);
    }

    #[test]
    fn tail_lines_then_limit_bytes() {
        let log = b"a\nbb\nccc\n".to_vec();
        assert_eq!(trim(log.clone(), None, None), log);
        assert_eq!(trim(log.clone(), Some(2), None), b"bb\nccc\n");
        assert_eq!(trim(log.clone(), Some(5), None), log);
        assert_eq!(trim(log.clone(), Some(0), None), b"");
        assert_eq!(trim(log.clone(), Some(1), Some(2)), b"cc");
        // A last line without its newline yet counts as a line.
        assert_eq!(trim(b"a\nb".to_vec(), Some(1), None), b"b");
    }
}
