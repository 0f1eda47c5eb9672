//! What the app answers: one pure function shared by the native server and the wasm guest.
//!
//! It reproduces what a client of the Go original (`gcr.io/google-samples/hello-app`) sees,
//! including the corners that Go's `net/http` and `ServeMux` add before the handler runs:
//! non-clean paths are redirected, `OPTIONS *` is answered by the server itself, and an
//! HTTP/1.1 request without `Host` is refused.

use std::fmt;
use std::str::FromStr;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};

/// The app's two releases; the tutorial uses 1.0, rolling-update labs switch to 2.0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AppVersion {
    /// `Version: 1.0.0`, as `hello-app:1.0`.
    #[default]
    V1,
    /// `Version: 2.0.0`, as `hello-app:2.0`.
    V2,
}

impl AppVersion {
    /// The text after `Version: ` in the response.
    pub fn as_str(self) -> &'static str {
        match self {
            AppVersion::V1 => "1.0.0",
            AppVersion::V2 => "2.0.0",
        }
    }

    /// The image tag that runs this version (`1.0` or `2.0`).
    pub fn tag(self) -> &'static str {
        match self {
            AppVersion::V1 => "1.0",
            AppVersion::V2 => "2.0",
        }
    }
}

impl fmt::Display for AppVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A version string that names neither release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownVersion(pub String);

impl fmt::Display for UnknownVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown app version {:?}: expected 1.0 or 2.0 (the image tags of hello-app)",
            self.0
        )
    }
}

impl std::error::Error for UnknownVersion {}

impl FromStr for AppVersion {
    type Err = UnknownVersion;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().trim_start_matches('v') {
            "1" | "1.0" | "1.0.0" => Ok(AppVersion::V1),
            "2" | "2.0" | "2.0.0" => Ok(AppVersion::V2),
            _ => Err(UnknownVersion(s.to_owned())),
        }
    }
}

/// The parts of a request that decide the answer.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    /// The method as sent (`GET`, `HEAD`, `BREW`, ...).
    pub method: &'a str,
    /// The request target: origin form (`/path?query`) or `*`.
    pub target: &'a str,
    /// True for HTTP/1.1 and later, where a `Host` header is mandatory.
    pub http11_or_later: bool,
    /// Whether the request carried a `Host` header.
    pub has_host: bool,
}

/// The answer, ready to be written by any HTTP layer.
///
/// `Date` and `Content-Length` are left to that layer; for `HEAD` it sends the headers of the
/// same answer without the body, as Go does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// HTTP status code.
    pub status: u16,
    /// Headers besides `Date` and `Content-Length`, lower-case names.
    pub headers: Vec<(&'static str, String)>,
    /// The body bytes.
    pub body: String,
    /// The message the original logs for this request, when its handler runs
    /// (`Serving request: /path`); prefix it with [`log_timestamp`].
    pub log: Option<String>,
    /// Whether the connection must close after this answer.
    pub close: bool,
}

/// The content type of every answer of the handler (what Go sniffs for plain text).
pub const TEXT_PLAIN: &str = "text/plain; charset=utf-8";

/// The body for one version and host name: `Hello, world!\nVersion: 1.0.0\nHostname: <host>\n`.
pub fn hello_body(version: AppVersion, hostname: &str) -> String {
    format!("Hello, world!\nVersion: {version}\nHostname: {hostname}\n")
}

/// Decides the answer to `req` for an app of `version` running on `hostname`.
pub fn respond(req: &RequestHead<'_>, version: AppVersion, hostname: &str) -> Reply {
    if req.http11_or_later && !req.has_host {
        return missing_host();
    }
    if req.target == "*" {
        // Go's server answers `OPTIONS *` itself; ServeMux refuses `*` for any other method.
        return if req.method == "OPTIONS" {
            empty(200, false)
        } else {
            empty(400, req.http11_or_later)
        };
    }
    let (raw_path, query) = match req.target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (req.target, None),
    };
    let Some(path) = decode_path(raw_path) else {
        return Reply {
            status: 400,
            headers: vec![("content-type", TEXT_PLAIN.to_owned())],
            body: "400 Bad Request".to_owned(),
            log: None,
            close: true,
        };
    };
    let clean = clean_path(&path);
    if clean != path {
        return redirect(req.method, &clean, query);
    }
    Reply {
        status: 200,
        headers: vec![("content-type", TEXT_PLAIN.to_owned())],
        body: hello_body(version, hostname),
        log: Some(format!("Serving request: {path}")),
        close: false,
    }
}

/// Go's server refuses an HTTP/1.1 request without `Host` before any handler runs.
pub fn missing_host() -> Reply {
    Reply {
        status: 400,
        headers: vec![("content-type", TEXT_PLAIN.to_owned())],
        body: "400 Bad Request: missing required Host header".to_owned(),
        log: None,
        close: true,
    }
}

fn empty(status: u16, close: bool) -> Reply {
    Reply {
        status,
        headers: Vec::new(),
        body: String::new(),
        log: None,
        close,
    }
}

/// Go's `http.Redirect` with 301, as `ServeMux` sends it for a non-clean path.
fn redirect(method: &str, clean: &str, query: Option<&str>) -> Reply {
    let mut location = utf8_percent_encode(clean, PATH_ESCAPES).to_string();
    if let Some(q) = query {
        location.push('?');
        location.push_str(q);
    }
    let mut headers = Vec::new();
    let mut body = String::new();
    if method == "GET" || method == "HEAD" {
        headers.push(("content-type", "text/html; charset=utf-8".to_owned()));
    }
    if method == "GET" {
        // Go writes the anchor, then `Fprintln` adds a second newline.
        body = format!(
            "<a href=\"{}\">Moved Permanently</a>.\n\n",
            html_escape(&location)
        );
    }
    headers.push(("location", location));
    Reply {
        status: 301,
        headers,
        body,
        log: None,
        close: false,
    }
}

/// Characters Go's `url.PathEscape`-for-paths leaves alone: unreserved plus `$&+,/:;=@`.
const PATH_ESCAPES: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'$')
    .remove(b'&')
    .remove(b'+')
    .remove(b',')
    .remove(b'/')
    .remove(b':')
    .remove(b';')
    .remove(b'=')
    .remove(b'@');

fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '\'' => out.push_str("&#39;"),
            '"' => out.push_str("&#34;"),
            _ => out.push(c),
        }
    }
    out
}

/// Percent-decodes a request path as Go's `url.URL.Path`; `None` for a malformed escape,
/// which Go's server refuses with 400.
fn decode_path(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
        }
    }
    let decoded = percent_decode_str(raw).decode_utf8_lossy().into_owned();
    // An absolute-form target without a path (`http://h`) or an empty one means `/`.
    Some(if decoded.is_empty() {
        "/".to_owned()
    } else {
        decoded
    })
}

/// Go `ServeMux`'s `cleanPath`: `path.Clean` of the rooted path, keeping a trailing slash.
pub fn clean_path(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    let mut out = String::with_capacity(p.len() + 1);
    out.push('/');
    out.push_str(&parts.join("/"));
    if p.ends_with('/') && out != "/" {
        out.push('/');
    }
    out
}

/// The prefix Go's standard logger writes: `2026/11/25 02:00:00 ` (UTC, as in the image).
pub fn log_timestamp(now: time::OffsetDateTime) -> String {
    let fmt = time::macros::format_description!("[year]/[month]/[day] [hour]:[minute]:[second] ");
    let now = now.to_offset(time::UtcOffset::UTC);
    now.format(&fmt).unwrap_or_default()
}

/// One log line as the original writes it, newline included, so it goes out in one write.
pub fn log_line(now: time::OffsetDateTime, message: &str) -> String {
    let mut line = log_timestamp(now);
    line.push_str(message);
    line.push('\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(target: &str) -> RequestHead<'_> {
        RequestHead {
            method: "GET",
            target,
            http11_or_later: true,
            has_host: true,
        }
    }

    #[test]
    fn every_path_gets_the_hello_text() {
        for target in ["/", "/healthz", "/a/b?x=1", "/index.html"] {
            let r = respond(&get(target), AppVersion::V1, "hello-world-1");
            assert_eq!(r.status, 200, "{target}");
            assert_eq!(
                r.body,
                "Hello, world!\nVersion: 1.0.0\nHostname: hello-world-1\n"
            );
            assert_eq!(r.headers, vec![("content-type", TEXT_PLAIN.to_owned())]);
            assert!(!r.close);
        }
    }

    #[test]
    fn version_two_changes_only_the_version_line() {
        let r = respond(&get("/"), AppVersion::V2, "vm");
        assert_eq!(r.body, "Hello, world!\nVersion: 2.0.0\nHostname: vm\n");
        assert_eq!(r.body.len(), 42, "the original's length for host `vm`");
    }

    #[test]
    fn log_names_the_decoded_path_without_query() {
        let r = respond(&get("/a/%20b?x=1"), AppVersion::V1, "h");
        assert_eq!(r.log.as_deref(), Some("Serving request: /a/ b"));
    }

    #[test]
    fn non_clean_paths_redirect_like_servemux() {
        let r = respond(&get("/a/../b?q=1"), AppVersion::V1, "h");
        assert_eq!(r.status, 301);
        assert_eq!(
            r.headers,
            vec![
                ("content-type", "text/html; charset=utf-8".to_owned()),
                ("location", "/b?q=1".to_owned())
            ]
        );
        assert_eq!(r.body, "<a href=\"/b?q=1\">Moved Permanently</a>.\n\n");
        assert_eq!(r.log, None);

        let r = respond(&get("//x"), AppVersion::V1, "h");
        assert_eq!(r.headers[1], ("location", "/x".to_owned()));

        let post = RequestHead {
            method: "POST",
            ..get("/./p/")
        };
        let r = respond(&post, AppVersion::V1, "h");
        assert_eq!(r.status, 301);
        assert_eq!(r.headers, vec![("location", "/p/".to_owned())]);
        assert_eq!(r.body, "");
    }

    #[test]
    fn options_star_and_other_star_requests() {
        let opt = RequestHead {
            method: "OPTIONS",
            ..get("*")
        };
        let r = respond(&opt, AppVersion::V1, "h");
        assert_eq!((r.status, r.body.as_str(), r.close), (200, "", false));
        let r = respond(&get("*"), AppVersion::V1, "h");
        assert_eq!((r.status, r.close), (400, true));
    }

    #[test]
    fn missing_host_is_refused_only_from_http11() {
        let mut req = get("/");
        req.has_host = false;
        let r = respond(&req, AppVersion::V1, "h");
        assert_eq!(r.status, 400);
        assert_eq!(r.body, "400 Bad Request: missing required Host header");
        assert!(r.close);
        req.http11_or_later = false;
        assert_eq!(respond(&req, AppVersion::V1, "h").status, 200);
    }

    #[test]
    fn malformed_escapes_are_bad_requests() {
        assert_eq!(respond(&get("/%zz"), AppVersion::V1, "h").status, 400);
        assert_eq!(respond(&get("/%4"), AppVersion::V1, "h").status, 400);
    }

    #[test]
    fn clean_path_follows_go() {
        for (input, want) in [
            ("/", "/"),
            ("/a/b/", "/a/b/"),
            ("/a//b", "/a/b"),
            ("/a/./b/..", "/a"),
            ("/../..", "/"),
            ("/a/../", "/"),
        ] {
            assert_eq!(clean_path(input), want, "{input}");
        }
    }

    #[test]
    fn versions_parse_from_tags_and_full_versions() {
        for s in ["1", "1.0", "1.0.0", "v1.0"] {
            assert_eq!(s.parse::<AppVersion>(), Ok(AppVersion::V1));
        }
        assert_eq!("2.0".parse::<AppVersion>(), Ok(AppVersion::V2));
        let err = "3.0".parse::<AppVersion>().unwrap_err();
        assert!(err.to_string().contains("\"3.0\""), "{err}");
    }

    #[test]
    fn log_lines_use_gos_standard_format() {
        let t = time::macros::datetime!(2026-11-24 22:56:48 UTC);
        assert_eq!(
            log_line(t, "Server listening on port 8080"),
            "2026/11/24 22:56:48 Server listening on port 8080\n"
        );
    }
}
