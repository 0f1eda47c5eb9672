//! A de-duplicating FIFO of reconcile tasks.

use std::collections::{HashSet, VecDeque};

/// One reconcile.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Task {
    /// A Deployment (namespace, name).
    Deployment(String, String),
    /// A ReplicaSet.
    ReplicaSet(String, String),
    /// A Pod: scheduling and the node agent.
    Pod(String, String),
    /// A Service: its EndpointSlices, Endpoints and LoadBalancer address.
    Service(String, String),
    /// The same, ahead of everything else: one of its endpoints stopped serving.
    ServiceNow(String, String),
    /// A Service's Endpoints, from its slices.
    Endpoints(String, String),
    /// Dependents of a deleted owner (by uid).
    Collect(String),
    /// A terminating Namespace.
    Namespace(String),
}

impl Task {
    /// Lower runs first. A Service that lost an endpoint goes before all else, so clients
    /// stop being sent to it; Pods start before their owners count them, and Services
    /// recompute their slices once the Pods of a burst are settled: the batching the
    /// EndpointSlice controller gets from its batch period, without a timer. Endpoints, for
    /// readers only, follow the slices last.
    fn tier(&self) -> usize {
        match self {
            Task::ServiceNow(..) => 0,
            Task::Pod(..) => 1,
            Task::ReplicaSet(..) | Task::Collect(_) => 2,
            Task::Deployment(..) => 3,
            Task::Service(..) | Task::Namespace(_) => 4,
            Task::Endpoints(..) => 5,
        }
    }
}

const TIERS: usize = 6;

/// Tasks in arrival order within their tier; a task already waiting is not queued again.
#[derive(Default)]
pub struct WorkQueue {
    tiers: [VecDeque<Task>; TIERS],
    waiting: HashSet<Task>,
}

impl WorkQueue {
    /// Queues a task unless it is already waiting (an urgent Service task takes the place of
    /// the same Service's ordinary one).
    pub fn push(&mut self, task: Task) {
        match &task {
            Task::ServiceNow(ns, name) => {
                let ordinary = Task::Service(ns.clone(), name.clone());
                if self.waiting.remove(&ordinary) {
                    self.tiers[ordinary.tier()].retain(|t| *t != ordinary);
                }
            }
            Task::Service(ns, name)
                if self
                    .waiting
                    .contains(&Task::ServiceNow(ns.clone(), name.clone())) =>
            {
                return;
            }
            _ => {}
        }
        if self.waiting.insert(task.clone()) {
            self.tiers[task.tier()].push_back(task);
        }
    }

    /// The oldest waiting task of the lowest tier.
    pub fn pop(&mut self) -> Option<Task> {
        let t = self.tiers.iter_mut().find_map(|q| q.pop_front())?;
        self.waiting.remove(&t);
        Some(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_tasks_are_not_repeated() {
        let mut q = WorkQueue::default();
        let svc = Task::Service("default".into(), "hello-world".into());
        let pod = |n: &str| Task::Pod("default".into(), n.into());
        q.push(svc.clone());
        q.push(pod("a"));
        q.push(svc.clone());
        q.push(pod("b"));
        q.push(pod("a"));
        assert_eq!(q.pop(), Some(pod("a")));
        assert_eq!(q.pop(), Some(pod("b")));
        assert_eq!(q.pop(), Some(svc.clone()));
        q.push(svc.clone());
        assert_eq!(q.pop(), Some(svc));
        assert_eq!(q.pop(), None);
    }

    #[test]
    fn an_urgent_service_task_goes_first_and_replaces_the_ordinary_one() {
        let mut q = WorkQueue::default();
        let svc = Task::Service("default".into(), "hello-world".into());
        let now = Task::ServiceNow("default".into(), "hello-world".into());
        let pod = Task::Pod("default".into(), "a".into());
        let rs = Task::ReplicaSet("default".into(), "rs".into());
        q.push(svc.clone());
        q.push(rs.clone());
        q.push(pod.clone());
        q.push(now.clone());
        q.push(svc.clone());
        assert_eq!(q.pop(), Some(now));
        assert_eq!(q.pop(), Some(pod));
        assert_eq!(q.pop(), Some(rs));
        assert_eq!(
            q.pop(),
            None,
            "the ordinary task was folded into the urgent one"
        );
    }

    #[test]
    fn the_endpoints_mirror_waits_for_every_other_task() {
        let mut q = WorkQueue::default();
        let mirror = Task::Endpoints("default".into(), "hello-world".into());
        let svc = Task::Service("default".into(), "hello-world".into());
        let ns = Task::Namespace("gone".into());
        q.push(mirror.clone());
        q.push(svc.clone());
        q.push(ns.clone());
        q.push(mirror.clone());
        assert_eq!(q.pop(), Some(svc));
        assert_eq!(q.pop(), Some(ns));
        assert_eq!(q.pop(), Some(mirror));
        assert_eq!(q.pop(), None, "queued twice, run once");
    }
}
