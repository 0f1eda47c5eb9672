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
    /// Dependents of a deleted owner (by uid).
    Collect(String),
    /// A terminating Namespace.
    Namespace(String),
}

impl Task {
    /// Lower runs first. Pods start before their owners count them, and Services recompute
    /// their slices once the Pods of a burst are settled: the batching the EndpointSlice
    /// controller gets from its batch period, without a timer.
    fn tier(&self) -> usize {
        match self {
            Task::Pod(..) => 0,
            Task::ReplicaSet(..) | Task::Collect(_) => 1,
            Task::Deployment(..) => 2,
            Task::Service(..) | Task::Namespace(_) => 3,
        }
    }
}

const TIERS: usize = 4;

/// Tasks in arrival order within their tier; a task already waiting is not queued again.
#[derive(Default)]
pub struct WorkQueue {
    tiers: [VecDeque<Task>; TIERS],
    waiting: HashSet<Task>,
}

impl WorkQueue {
    /// Queues a task unless it is already waiting.
    pub fn push(&mut self, task: Task) {
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
}
