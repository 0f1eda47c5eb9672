//! Watches: a stream of `{"type":..,"object":..}` lines from a resourceVersion on, filtered by
//! the request's selectors, as plain objects or as one-row Tables.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use labapi::path::ResourcePath;
use labapi::query::Query;
use labapi::table::IncludeObject;
use labapi::{ApiError, Kind};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::Api;
use super::select::Selection;
use crate::store::{Event, EventType, StoreError};

/// How often a watch that allows bookmarks gets one.
const BOOKMARK_EVERY: Duration = Duration::from_secs(30);

/// How objects are written into events.
#[derive(Debug, Clone, Copy)]
pub enum Encoding {
    /// The object itself.
    Object,
    /// A one-row `meta.k8s.io/v1` Table (kubectl `get -w`).
    Table(IncludeObject),
}

fn line(event_type: &str, object: Value) -> Bytes {
    let mut s = json!({"type": event_type, "object": object}).to_string();
    s.push('\n');
    Bytes::from(s)
}

fn encode(kind: Kind, obj: &Value, encoding: Encoding) -> Value {
    match encoding {
        Encoding::Object => obj.clone(),
        Encoding::Table(include) => {
            labapi::table::object_table(kind, obj, include, jiff::Timestamp::now())
        }
    }
}

/// What a changed object means to a watcher whose selection it may have entered or left.
fn visible(event: &Event, selection: &Selection) -> Option<EventType> {
    let now = selection.matches(&event.object);
    let before = event.old.as_deref().is_some_and(|o| selection.matches(o));
    match event.event_type {
        EventType::Added => now.then_some(EventType::Added),
        EventType::Deleted => (before || now).then_some(EventType::Deleted),
        EventType::Modified => match (before, now) {
            (true, true) => Some(EventType::Modified),
            (false, true) => Some(EventType::Added),
            (true, false) => Some(EventType::Deleted),
            (false, false) => None,
        },
    }
}

/// Starts a watch; the returned channel yields the body's chunks and ends with the watch.
pub fn start(
    api: &Arc<Api>,
    p: &ResourcePath,
    q: &Query,
    encoding: Encoding,
) -> Result<mpsc::Receiver<Bytes>, ApiError> {
    let kind = p.kind;
    let mut selection = Selection::from_query(kind, q)?
        .in_namespace(p.namespace.as_deref().filter(|_| kind.info().namespaced));
    if let Some(name) = &p.name {
        selection = selection.with_name(name);
    }
    let from: Option<u64> = match q.resource_version.as_deref() {
        None | Some("0") => None,
        Some(v) => Some(v.parse().map_err(|_| {
            ApiError::bad_request(format!("invalid resourceVersion {v:?}: must be an integer"))
        })?),
    };
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let (initial, backlog, mut live, mut last_rv) = match from {
        None => {
            let (items, rv, live) = api.store.list_and_subscribe(kind);
            (items, Vec::new(), live, rv)
        }
        Some(rv) => match api.store.subscribe(rv) {
            Ok(sub) => (Vec::new(), sub.backlog, sub.live, rv),
            Err(StoreError::Gone { requested, oldest }) => {
                // A too-old version is answered inside the stream, as kube-apiserver does, so
                // that informers relist.
                let status = ApiError::gone(requested, oldest).to_status();
                let _ = tx.try_send(line("ERROR", status));
                return Ok(rx);
            }
            Err(e) => return Err(ApiError::internal(e.to_string())),
        },
    };
    let deadline = q
        .timeout_seconds
        .map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
    let bookmarks = q.allow_bookmarks;
    tokio::spawn(async move {
        for obj in initial.iter().filter(|o| selection.matches(o)) {
            if tx
                .send(line("ADDED", encode(kind, obj, encoding)))
                .await
                .is_err()
            {
                return;
            }
        }
        let mut pending: std::collections::VecDeque<Arc<Event>> = backlog.into();
        let mut bookmark = tokio::time::interval(BOOKMARK_EVERY);
        bookmark.tick().await;
        loop {
            let event = match pending.pop_front() {
                Some(e) => e,
                None => {
                    let sleep_until = deadline.unwrap_or_else(|| {
                        tokio::time::Instant::now() + Duration::from_secs(86_400 * 365)
                    });
                    tokio::select! {
                        e = live.recv() => match e { Some(e) => e, None => return },
                        _ = tokio::time::sleep_until(sleep_until) => return,
                        _ = bookmark.tick(), if bookmarks => {
                            let info = kind.info();
                            let obj = json!({"kind": info.kind_name, "apiVersion": info.api_version(), "metadata": {"resourceVersion": last_rv.to_string()}});
                            if tx.send(line("BOOKMARK", obj)).await.is_err() { return; }
                            continue;
                        }
                        _ = tx.closed() => return,
                    }
                }
            };
            last_rv = last_rv.max(event.rv);
            if event.kind != kind {
                continue;
            }
            let Some(event_type) = visible(&event, &selection) else {
                continue;
            };
            if tx
                .send(line(
                    event_type.as_str(),
                    encode(kind, &event.object, encoding),
                ))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    Ok(rx)
}
