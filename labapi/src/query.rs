//! Query parameters of API requests, parsed once with their errors worded for clients.

use crate::status::ApiError;

/// The query parameters a request may carry; unknown ones are ignored, as kube-apiserver does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    /// `labelSelector`.
    pub label_selector: Option<String>,
    /// `fieldSelector`.
    pub field_selector: Option<String>,
    /// `limit` (0 = no limit).
    pub limit: usize,
    /// `continue` token of a paged list.
    pub continue_token: Option<String>,
    /// `resourceVersion`.
    pub resource_version: Option<String>,
    /// `watch=true` (or `1`).
    pub watch: bool,
    /// `allowWatchBookmarks=true`.
    pub allow_bookmarks: bool,
    /// `timeoutSeconds` of a watch.
    pub timeout_seconds: Option<u64>,
    /// `includeObject` of Table responses.
    pub include_object: Option<String>,
    /// `dryRun=All`.
    pub dry_run: bool,
    /// `fieldValidation`.
    pub field_validation: Option<String>,
    /// `fieldManager` (kept for logs; managedFields are not tracked).
    pub field_manager: Option<String>,
    /// `propagationPolicy` of a delete.
    pub propagation_policy: Option<String>,
    /// `gracePeriodSeconds` of a delete.
    pub grace_period_seconds: Option<i64>,
    /// `container` of a Pod's log or exec.
    pub container: Option<String>,
    /// `tailLines` of a Pod's log.
    pub tail_lines: Option<i64>,
    /// `limitBytes` of a Pod's log.
    pub limit_bytes: Option<i64>,
    /// `previous=true`: a Pod's log of its previous container.
    pub previous: bool,
    /// `follow=true`: a Pod's log, streamed as it grows.
    pub follow: bool,
    /// `command` of an exec, one parameter per argument, in order.
    pub command: Vec<String>,
    /// `stdin=true` of an exec.
    pub stdin: bool,
    /// `stdout=true` of an exec.
    pub stdout: bool,
    /// `stderr=true` of an exec.
    pub stderr: bool,
    /// `tty=true` of an exec.
    pub tty: bool,
}

fn flag(name: &str, v: &str) -> Result<bool, ApiError> {
    match v {
        "true" | "1" | "True" => Ok(true),
        "false" | "0" | "False" | "" => Ok(false),
        _ => Err(ApiError::bad_request(format!(
            "invalid value {v:?} for {name}: must be true or false"
        ))),
    }
}

fn number<T: std::str::FromStr>(name: &str, v: &str) -> Result<T, ApiError> {
    v.parse().map_err(|_| {
        ApiError::bad_request(format!(
            "invalid value {v:?} for {name}: must be an integer"
        ))
    })
}

impl Query {
    /// Parses a raw query string (`a=b&c=d`, percent-encoded).
    pub fn parse(raw: Option<&str>) -> Result<Query, ApiError> {
        let mut q = Query::default();
        let Some(raw) = raw else { return Ok(q) };
        for pair in raw.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = decode(v).ok_or_else(|| {
                ApiError::bad_request(format!("invalid percent-encoding in query parameter {k:?}"))
            })?;
            match k {
                "labelSelector" => q.label_selector = Some(v),
                "fieldSelector" => q.field_selector = Some(v),
                "limit" => q.limit = number("limit", &v)?,
                "continue" => q.continue_token = Some(v).filter(|s| !s.is_empty()),
                "resourceVersion" => q.resource_version = Some(v).filter(|s| !s.is_empty()),
                "watch" => q.watch = flag("watch", &v)?,
                "allowWatchBookmarks" => q.allow_bookmarks = flag("allowWatchBookmarks", &v)?,
                "timeoutSeconds" => q.timeout_seconds = Some(number("timeoutSeconds", &v)?),
                "includeObject" => q.include_object = Some(v),
                "dryRun" => match v.as_str() {
                    "All" => q.dry_run = true,
                    "" => {}
                    other => {
                        return Err(ApiError::bad_request(format!(
                            "Invalid dryRun value {other:?}: the only supported value is \"All\""
                        )));
                    }
                },
                "fieldValidation" => q.field_validation = Some(v),
                "fieldManager" => q.field_manager = Some(v),
                "propagationPolicy" => q.propagation_policy = Some(v),
                "gracePeriodSeconds" => {
                    q.grace_period_seconds = Some(number("gracePeriodSeconds", &v)?)
                }
                "container" => q.container = Some(v),
                "tailLines" => q.tail_lines = Some(number("tailLines", &v)?),
                "limitBytes" => q.limit_bytes = Some(number("limitBytes", &v)?),
                "previous" => q.previous = flag("previous", &v)?,
                "follow" => q.follow = flag("follow", &v)?,
                "command" => q.command.push(v),
                "stdin" => q.stdin = flag("stdin", &v)?,
                "stdout" => q.stdout = flag("stdout", &v)?,
                "stderr" => q.stderr = flag("stderr", &v)?,
                "tty" => q.tty = flag("tty", &v)?,
                _ => {}
            }
        }
        Ok(q)
    }
}

/// Percent-decoding with `+` as a space, as Go's `url.ParseQuery` does.
fn decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn informer_watch_query() {
        let q = Query::parse(Some(
            "allowWatchBookmarks=true&fieldSelector=metadata.name%3Dhello-world&resourceVersion=12&timeoutSeconds=377&watch=true",
        ))
        .unwrap();
        assert!(q.watch && q.allow_bookmarks);
        assert_eq!(
            q.field_selector.as_deref(),
            Some("metadata.name=hello-world")
        );
        assert_eq!(q.resource_version.as_deref(), Some("12"));
        assert_eq!(q.timeout_seconds, Some(377));
    }

    #[test]
    fn exec_query_keeps_the_command_in_order() {
        // What kubectl 1.32 sends for `kubectl exec -i p1 -- sh -c 'echo a b'`.
        let q = Query::parse(Some(
            "command=sh&command=-c&command=echo%20a%20b&container=p1&stdin=true&stdout=true&stderr=true",
        ))
        .unwrap();
        assert_eq!(q.command, ["sh", "-c", "echo a b"]);
        assert!(q.stdin && q.stdout && q.stderr && !q.tty);
        assert_eq!(q.container.as_deref(), Some("p1"));
        // Go's url.Values encodes spaces as '+'.
        let q = Query::parse(Some("command=echo+a%2Bb")).unwrap();
        assert_eq!(q.command, ["echo a+b"]);
    }

    #[test]
    fn bad_values_are_named() {
        let e = Query::parse(Some("limit=lots")).unwrap_err();
        assert_eq!(e.code, 400);
        assert!(e.message.contains("limit"), "{}", e.message);
        assert!(Query::parse(Some("dryRun=Some")).is_err());
        assert!(Query::parse(Some("labelSelector=%zz")).is_err());
    }
}
