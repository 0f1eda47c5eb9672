//! Events, as controllers and kubelets record them (`kubectl describe` shows them).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use labapi::Kind;
use serde_json::{Value, json};

use crate::apiserver::Api;
use crate::apiserver::admission::now;

/// Records Events, counting repeats of the same reason and message on one object.
pub struct Recorder {
    api: Arc<Api>,
    seen: Mutex<HashMap<(String, String, String), String>>,
}

impl Recorder {
    /// A recorder writing through `api`.
    pub fn new(api: Arc<Api>) -> Recorder {
        Recorder {
            api,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Records a `Normal` or `Warning` event about `obj` from `component`.
    pub fn record(
        &self,
        kind: Kind,
        obj: &Value,
        event_type: &str,
        reason: &str,
        message: &str,
        component: &str,
    ) {
        let uid = obj["metadata"]["uid"].as_str().unwrap_or("").to_string();
        let ns = obj["metadata"]["namespace"]
            .as_str()
            .filter(|n| !n.is_empty())
            .unwrap_or("default")
            .to_string();
        let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
        let key = (uid.clone(), reason.to_string(), message.to_string());
        let ts = now();
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
