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

/// Tasks in arrival order; a task already waiting is not queued again.
#[derive(Default)]
pub struct WorkQueue {
    order: VecDeque<Task>,
    waiting: HashSet<Task>,
}

impl WorkQueue {
    /// Queues a task unless it is already waiting.
    pub fn push(&mut self, task: Task) {
        if self.waiting.insert(task.clone()) {
            self.order.push_back(task);
        }
    }

    /// The oldest waiting task.
    pub fn pop(&mut self) -> Option<Task> {
        let t = self.order.pop_front()?;
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
        q.push(svc.clone());
        q.push(Task::Collect("u".into()));
        q.push(svc.clone());
        assert_eq!(q.pop(), Some(svc.clone()));
        q.push(svc.clone());
        assert_eq!(q.pop(), Some(Task::Collect("u".into())));
        assert_eq!(q.pop(), Some(svc));
        assert_eq!(q.pop(), None);
    }
}
