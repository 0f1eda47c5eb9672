use serde_json::json;

use super::*;

fn svc(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}")}})
}

#[test]
fn writes_bump_one_counter_and_reach_subscribers() {
    let store = Store::in_memory();
    let mut sub = store.subscribe(0).unwrap();
    let a = store.create(Kind::Service, svc("a")).unwrap();
    assert_eq!(object_rv(&a), 1);
    assert!(matches!(
        store.create(Kind::Service, svc("a")),
        Err(StoreError::AlreadyExists)
    ));
    let mut changed = (*a).clone();
    changed["spec"] = json!({"type": "NodePort"});
    assert!(matches!(
        store.update(Kind::Service, changed.clone(), Some(7)),
        Err(StoreError::Conflict)
    ));
    let b = store.update(Kind::Service, changed, Some(1)).unwrap();
    assert_eq!(object_rv(&b), 2);
    let gone = store.delete(Kind::Service, "default", "a", None).unwrap();
    assert_eq!(object_rv(&gone), 3);
    let types: Vec<EventType> = std::iter::from_fn(|| sub.live.try_recv().ok())
        .map(|e| e.event_type)
        .collect();
    assert_eq!(
        types,
        [EventType::Added, EventType::Modified, EventType::Deleted]
    );
    let replay = store.subscribe(1).unwrap();
    assert_eq!(
        replay.backlog.iter().map(|e| e.rv).collect::<Vec<_>>(),
        [2, 3]
    );
}

#[test]
fn an_unchanged_update_writes_nothing() {
    let store = Store::in_memory();
    let a = store.create(Kind::Service, svc("a")).unwrap();
    let again = store.update(Kind::Service, (*a).clone(), None).unwrap();
    assert_eq!(object_rv(&again), 1);
    assert_eq!(store.resource_version(), 1);
}

#[test]
fn lists_are_sorted_and_scoped() {
    let store = Store::in_memory();
    for (ns, name) in [("b", "x"), ("a", "z"), ("a", "y"), ("c", "w")] {
        let mut o = svc(name);
        o["metadata"]["namespace"] = json!(ns);
        store.create(Kind::Service, o).unwrap();
    }
    let (all, rv) = store.list(Kind::Service, None);
    let names: Vec<&str> = all
        .iter()
        .map(|o| o["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!((names, rv), (vec!["y", "z", "x", "w"], 4));
    let (in_a, _) = store.list(Kind::Service, Some("a"));
    assert_eq!(in_a.len(), 2);
    assert!(store.list(Kind::Pod, None).0.is_empty());
}

#[test]
fn a_reopened_store_has_every_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.sqlite");
    {
        let store = Store::open(&path).unwrap();
        store.create(Kind::Service, svc("a")).unwrap();
        store.create(Kind::Service, svc("b")).unwrap();
        store.delete(Kind::Service, "default", "a", None).unwrap();
    }
    let store = Store::open(&path).unwrap();
    assert_eq!(store.resource_version(), 3);
    assert!(store.get(Kind::Service, "default", "a").is_none());
    assert_eq!(
        store.get(Kind::Service, "default", "b").unwrap()["metadata"]["uid"],
        "uid-b"
    );
    // The log starts empty after a restart: older versions are gone, newer ones resume.
    assert!(matches!(store.subscribe(2), Err(StoreError::Gone { .. })));
    assert!(store.subscribe(3).is_ok());
}
