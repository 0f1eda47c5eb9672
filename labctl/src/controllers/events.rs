//! Events, as controllers and kubelets record them (`kubectl describe` shows them).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use labapi::Kind;
use serde_json::{Value, json};

use crate::apiserver::Api;
use crate::apiserver::admission::now;

/// An event waiting to be written.
struct Pending {
    kind: Kind,
    involved: Value,
    event_type: String,
    reason: String,
    message: String,
    component: String,
    at: String,
}

/// Records Events, counting repeats of the same reason and message on one object.
pub struct Recorder {
    api: Arc<Api>,
    pending: Mutex<Vec<Pending>>,
    seen: Mutex<HashMap<(String, String, String), String>>,
}

impl Recorder {
    /// A recorder writing through `api`.
    pub fn new(api: Arc<Api>) -> Recorder {
        Recorder {
            pending: Mutex::new(Vec::new()),
            api,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Records a `Normal` or `Warning` event about `obj` from `component`. Events are written
    /// when the controllers are idle (as client-go's broadcaster writes them from its own
    /// queue), so that recording never delays the work it reports on.
    pub fn record(
        &self,
        kind: Kind,
        obj: &Value,
        event_type: &str,
        reason: &str,
        message: &str,
        component: &str,
    ) {
        let involved = json!({"metadata": {
            "uid": obj["metadata"]["uid"], "namespace": obj["metadata"]["namespace"],
            "name": obj["metadata"]["name"], "resourceVersion": obj["metadata"]["resourceVersion"],
        }});
        let pending = Pending {
            kind,
            involved,
            event_type: event_type.to_string(),
            reason: reason.to_string(),
            message: message.to_string(),
            component: component.to_string(),
            at: now(),
        };
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(pending);
    }

    /// Writes the events recorded since the last flush.
    pub fn flush(&self) {
        let pending = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        for p in pending {
            self.write(
                p.kind,
                &p.involved,
                &p.event_type,
                &p.reason,
                &p.message,
                &p.component,
                &p.at,
            );
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn write(
        &self,
        kind: Kind,
        obj: &Value,
        event_type: &str,
        reason: &str,
        message: &str,
        component: &str,
        ts: &str,
    ) {
        let uid = obj["metadata"]["uid"].as_str().unwrap_or("").to_string();
        let ns = obj["metadata"]["namespace"]
            .as_str()
            .filter(|n| !n.is_empty())
            .unwrap_or("default")
            .to_string();
        let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
        let key = (uid.clone(), reason.to_string(), message.to_string());
        let ts = ts.to_string();
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(event_name) = seen.get(&key) {
            let bumped =
                self.api
                    .store
                    .modify(Kind::Event, &ns, event_name, |e| -> Result<bool, ()> {
                        e["count"] = json!(e["count"].as_i64().unwrap_or(1) + 1);
                        e["lastTimestamp"] = json!(ts);
                        Ok(true)
                    });
            if matches!(bumped, Ok(Some(_))) {
                return;
            }
        }
        let info = kind.info();
        let event_name = format!("{name}.{:x}", jiff::Timestamp::now().as_nanosecond());
        let event = json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": event_name, "namespace": ns},
            "involvedObject": {
                "apiVersion": info.api_version(), "kind": info.kind_name, "name": name,
                "namespace": obj["metadata"]["namespace"], "uid": uid,
                "resourceVersion": obj["metadata"]["resourceVersion"],
            },
            "reason": reason,
            "message": message,
            "type": event_type,
            "count": 1,
            "firstTimestamp": ts,
            "lastTimestamp": ts,
            "source": {"component": component},
            "reportingComponent": component,
            "reportingInstance": "",
        });
        match self.api.create_value(Kind::Event, event) {
            Ok(_) => {
                seen.insert(key, event_name);
            }
            Err(e) => tracing::debug!("recording event {reason} failed: {}", e.message),
        }
    }
}
