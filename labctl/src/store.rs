//! The lab cluster's object store: every object in memory for reads, each write committed to
//! SQLite before it is acknowledged, one global resourceVersion counter, and an event log that
//! watches resume from.
//!
//! Writes are serialised by one lock. That is what etcd gives kube-apiserver too (one revision
//! counter), and at the lab's scale one SQLite commit in WAL mode takes tens of microseconds.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use labapi::Kind;
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;
use tokio::sync::mpsc;

/// How many events the log keeps for watches that resume from an older resourceVersion.
const LOG_CAPACITY: usize = 200_000;

/// A failed store operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The object does not exist.
    #[error("not found")]
    NotFound,
    /// An object with that name exists.
    #[error("already exists")]
    AlreadyExists,
    /// The caller's resourceVersion is not the stored one.
    #[error("conflict: the object has been modified")]
    Conflict,
    /// The requested resourceVersion is older than the event log.
    #[error("resource version {requested} is older than the oldest kept ({oldest})")]
    Gone {
        /// What the client asked for.
        requested: u64,
        /// The oldest the log can serve from.
        oldest: u64,
    },
    /// SQLite failed; the write was not made.
    #[error("the store's database failed: {0}")]
    Database(#[from] rusqlite::Error),
    /// A stored object could not be read back.
    #[error("stored object {key} is not valid JSON: {source}")]
    Corrupt {
        /// Which object.
        key: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// Created.
    Added,
    /// Changed.
    Modified,
    /// Removed; the object is its last state.
    Deleted,
}

impl EventType {
    /// The watch event type string.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change, as watchers see it.
#[derive(Debug)]
pub struct Event {
    /// The resourceVersion the change got.
    pub rv: u64,
    /// The resource.
    pub kind: Kind,
    /// What happened.
    pub event_type: EventType,
    /// The object after the change (before it, for deletes).
    pub object: Arc<Value>,
    /// The object before the change, for updates and deletes (controllers need old labels).
    pub old: Option<Arc<Value>>,
}

type Key = (String, String);

struct Inner {
    objects: HashMap<Kind, BTreeMap<Key, Arc<Value>>>,
    rv: u64,
    log: VecDeque<Arc<Event>>,
    /// The resourceVersion the log starts after: a watch from an older one gets 410.
    log_floor: u64,
    subscribers: Vec<mpsc::UnboundedSender<Arc<Event>>>,
    db: Option<Connection>,
}

/// The store. Cheap to share behind an `Arc`.
pub struct Store {
    inner: Mutex<Inner>,
}

/// A watch subscription: the events after the requested version that were already logged,
/// then the live ones.
pub struct Subscription {
    /// Events already in the log, in order.
    pub backlog: Vec<Arc<Event>>,
    /// Events from now on.
    pub live: mpsc::UnboundedReceiver<Arc<Event>>,
}

fn kind_key(kind: Kind) -> &'static str {
    kind.info().plural
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> &'a str {
    obj["metadata"][field].as_str().unwrap_or("")
}

/// The resourceVersion of a stored object.
pub fn object_rv(obj: &Value) -> u64 {
    meta_str(obj, "resourceVersion").parse().unwrap_or(0)
}

impl Store {
    /// An in-memory store (tests, benchmarks).
    pub fn in_memory() -> Store {
        Store::with_db(None, HashMap::new(), 0)
    }

    /// Opens (or creates) the store at `path` and loads every object.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let db = Connection::open(path)?;
        // WAL with synchronous=NORMAL: a committed transaction survives the process being
        // killed (it is in the OS's page cache and the WAL), which is the promise made to
        // clients; only a power loss may drop the newest commits.
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.pragma_update(None, "synchronous", "NORMAL")?;
        db.execute_batch(
            "CREATE TABLE IF NOT EXISTS objects (
                 kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL, body TEXT NOT NULL,
                 PRIMARY KEY (kind, namespace, name));
             CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);",
        )?;
        let rv: u64 = db
            .query_row("SELECT value FROM meta WHERE key = 'rv'", [], |r| {
                r.get::<_, i64>(0)
            })
            .optional()?
            .unwrap_or(0) as u64;
        let mut objects: HashMap<Kind, BTreeMap<Key, Arc<Value>>> = HashMap::new();
        {
            let mut stmt = db.prepare("SELECT kind, namespace, name, body FROM objects")?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                ))
            })?;
            for row in rows {
                let (kind, ns, name, body) = row?;
                let Some(info) = Kind::all().iter().find(|i| i.plural == kind) else {
                    continue;
                };
                let obj: Value =
                    serde_json::from_str(&body).map_err(|source| StoreError::Corrupt {
                        key: format!("{kind}/{ns}/{name}"),
                        source,
                    })?;
                objects
                    .entry(info.kind)
                    .or_default()
                    .insert((ns, name), Arc::new(obj));
            }
        }
        Ok(Store::with_db(Some(db), objects, rv))
    }

    fn with_db(
        db: Option<Connection>,
        objects: HashMap<Kind, BTreeMap<Key, Arc<Value>>>,
        rv: u64,
    ) -> Store {
        Store {
            inner: Mutex::new(Inner {
                objects,
                rv,
                log: VecDeque::new(),
                log_floor: rv,
                subscribers: Vec::new(),
                db,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the maps consistent (every write replaces a
        // whole entry), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.lock().rv
    }

    /// One object.
    pub fn get(&self, kind: Kind, namespace: &str, name: &str) -> Option<Arc<Value>> {
        self.lock()
            .objects
            .get(&kind)
            .and_then(|m| m.get(&(namespace.to_string(), name.to_string())))
            .cloned()
    }

    /// Every object of a kind (in one namespace when given), sorted by namespace and name, and
    /// the resourceVersion they were read at.
    pub fn list(&self, kind: Kind, namespace: Option<&str>) -> (Vec<Arc<Value>>, u64) {
        let inner = self.lock();
        let items = match inner.objects.get(&kind) {
            None => Vec::new(),
            Some(m) => match namespace {
                None => m.values().cloned().collect(),
                Some(ns) => m
                    .range((ns.to_string(), String::new())..)
                    .take_while(|((n, _), _)| n == ns)
                    .map(|(_, v)| v.clone())
                    .collect(),
            },
        };
        (items, inner.rv)
    }

    /// Stores a new object. Its `metadata.resourceVersion` is set here.
    pub fn create(&self, kind: Kind, obj: Value) -> Result<Arc<Value>, StoreError> {
        let mut inner = self.lock();
        let key = key_of(&obj);
        if inner
            .objects
            .get(&kind)
            .is_some_and(|m| m.contains_key(&key))
        {
            return Err(StoreError::AlreadyExists);
        }
        inner.commit(kind, key, Some(obj), EventType::Added, None)
    }

    /// Replaces an object. With `expected_rv`, fails with `Conflict` unless it is the stored
    /// version (optimistic concurrency).
    pub fn update(
        &self,
        kind: Kind,
        obj: Value,
        expected_rv: Option<u64>,
    ) -> Result<Arc<Value>, StoreError> {
        let mut inner = self.lock();
        let key = key_of(&obj);
        let old = inner
            .objects
            .get(&kind)
            .and_then(|m| m.get(&key))
            .cloned()
            .ok_or(StoreError::NotFound)?;
        if expected_rv.is_some_and(|rv| rv != object_rv(&old)) {
            return Err(StoreError::Conflict);
        }
        if without_rv(&old) == without_rv(&obj) {
            return Ok(old);
        }
        inner.commit(kind, key, Some(obj), EventType::Modified, Some(old))
    }

    /// Reads, changes and writes an object under the store's lock, so that controllers never
    /// conflict with each other. `change` returns `false` to leave the object as it was.
    pub fn modify<E>(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        change: impl FnOnce(&mut Value) -> Result<bool, E>,
    ) -> Result<Option<Arc<Value>>, ModifyError<E>> {
        let mut inner = self.lock();
        let key = (namespace.to_string(), name.to_string());
        let Some(old) = inner.objects.get(&kind).and_then(|m| m.get(&key)).cloned() else {
            return Ok(None);
        };
        let mut obj = (*old).clone();
        if !change(&mut obj).map_err(ModifyError::Rejected)? || obj == *old {
            return Ok(Some(old));
        }
        inner
            .commit(kind, key, Some(obj), EventType::Modified, Some(old))
            .map(Some)
            .map_err(ModifyError::Store)
    }

    /// Removes an object. With `expected_uid`, only that incarnation is removed.
    pub fn delete(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        expected_uid: Option<&str>,
    ) -> Result<Arc<Value>, StoreError> {
        let mut inner = self.lock();
        let key = (namespace.to_string(), name.to_string());
        let old = inner
            .objects
            .get(&kind)
            .and_then(|m| m.get(&key))
            .cloned()
            .ok_or(StoreError::NotFound)?;
        if expected_uid.is_some_and(|uid| uid != meta_str(&old, "uid")) {
            return Err(StoreError::Conflict);
        }
        // Returns the last state, stamped with the deletion's resourceVersion.
        inner.commit(kind, key, None, EventType::Deleted, Some(old))
    }

    /// Events after `rv` (all kinds), then live ones. `None` when `rv` is older than the log.
    pub fn subscribe(&self, from_rv: u64) -> Result<Subscription, StoreError> {
        let mut inner = self.lock();
        if from_rv < inner.log_floor {
            return Err(StoreError::Gone {
                requested: from_rv,
                oldest: inner.log_floor,
            });
        }
        let start = inner.log.partition_point(|e| e.rv <= from_rv);
        let backlog = inner.log.iter().skip(start).cloned().collect();
        let (tx, live) = mpsc::unbounded_channel();
        inner.subscribers.push(tx);
        Ok(Subscription { backlog, live })
    }

    /// The objects of one kind now, and the events after them.
    pub fn list_and_subscribe(
        &self,
        kind: Kind,
    ) -> (Vec<Arc<Value>>, u64, mpsc::UnboundedReceiver<Arc<Event>>) {
        let mut inner = self.lock();
        let items = inner
            .objects
            .get(&kind)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        let (tx, live) = mpsc::unbounded_channel();
        inner.subscribers.push(tx);
        (items, inner.rv, live)
    }

    /// Live events only, with the state they apply to: every object of every kind now.
    pub fn subscribe_now(&self) -> (Snapshot, mpsc::UnboundedReceiver<Arc<Event>>) {
        let mut inner = self.lock();
        let snapshot = inner
            .objects
            .iter()
            .map(|(k, m)| (*k, m.values().cloned().collect()))
            .collect();
        let (tx, live) = mpsc::unbounded_channel();
        inner.subscribers.push(tx);
        (snapshot, live)
    }
}

/// Every object, by kind.
pub type Snapshot = HashMap<Kind, Vec<Arc<Value>>>;

/// A failed [`Store::modify`].
#[derive(Debug, thiserror::Error)]
pub enum ModifyError<E> {
    /// The change function refused.
    #[error("change rejected")]
    Rejected(E),
    /// The store failed.
    #[error(transparent)]
    Store(StoreError),
}

fn key_of(obj: &Value) -> Key {
    (
        meta_str(obj, "namespace").to_string(),
        meta_str(obj, "name").to_string(),
    )
}

fn without_rv(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o["metadata"].as_object_mut() {
        m.remove("resourceVersion");
    }
    o
}

impl Inner {
    /// Writes one change: database first (so an acknowledged write is durable), then memory,
    /// then the log and the subscribers.
    fn commit(
        &mut self,
        kind: Kind,
        key: Key,
        obj: Option<Value>,
        event_type: EventType,
        old: Option<Arc<Value>>,
    ) -> Result<Arc<Value>, StoreError> {
        let rv = self.rv + 1;
        let stored = match obj {
            Some(mut obj) => {
                obj["metadata"]["resourceVersion"] = Value::String(rv.to_string());
                Some(Arc::new(obj))
            }
            None => None,
        };
        if let Some(db) = &mut self.db {
            let tx = db.transaction()?;
            match &stored {
                Some(obj) => {
                    tx.prepare_cached("INSERT OR REPLACE INTO objects (kind, namespace, name, body) VALUES (?1, ?2, ?3, ?4)")?
                        .execute(params![kind_key(kind), key.0, key.1, obj.to_string()])?;
                }
                None => {
                    tx.prepare_cached(
                        "DELETE FROM objects WHERE kind = ?1 AND namespace = ?2 AND name = ?3",
                    )?
                    .execute(params![kind_key(kind), key.0, key.1])?;
                }
            }
            tx.prepare_cached("INSERT OR REPLACE INTO meta (key, value) VALUES ('rv', ?1)")?
                .execute(params![rv as i64])?;
            tx.commit()?;
        }
        self.rv = rv;
        let map = self.objects.entry(kind).or_default();
        let event_object = match &stored {
            Some(obj) => {
                map.insert(key, obj.clone());
                obj.clone()
            }
            None => {
                map.remove(&key);
                let mut last = old.as_deref().cloned().unwrap_or_default();
                last["metadata"]["resourceVersion"] = Value::String(rv.to_string());
                Arc::new(last)
            }
        };
        let event = Arc::new(Event {
            rv,
            kind,
            event_type,
            object: event_object.clone(),
            old,
        });
        if self.log.len() >= LOG_CAPACITY
            && let Some(dropped) = self.log.pop_front()
        {
            self.log_floor = dropped.rv;
        }
        self.log.push_back(event.clone());
        self.subscribers.retain(|s| s.send(event.clone()).is_ok());
        Ok(stored.unwrap_or(event_object))
    }
}

#[cfg(test)]
mod tests;
