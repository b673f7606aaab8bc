//! Operations: one change of the machine at a time (an update, a rollback,
//! a reboot), each with an id, its progress events and its result. The
//! agent keeps the last [`KEEP`] in memory; a restarted agent knows none.

use std::collections::VecDeque;
use std::sync::Mutex;

use abkit_update::{Event, Reporter};
use serde::Serialize;
use serde_json::Value;
use serde_with::skip_serializing_none;

/// Finished operations kept for `GET /v1/operations/<id>`.
pub const KEEP: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OpState {
    Running,
    Succeeded,
    Failed,
}

/// A failure as the API reports it.
#[derive(Debug, Clone, Serialize)]
pub struct OpError {
    pub code: String,
    pub message: String,
}

#[skip_serializing_none]
#[derive(Debug, Clone, Serialize)]
pub struct Operation {
    pub id: String,
    /// `update`, `rollback` or `reboot`.
    pub kind: &'static str,
    pub state: OpState,
    pub source: Option<String>,
    /// Seconds since the Unix epoch.
    pub started_at: u64,
    pub finished_at: Option<u64>,
    /// The engine's progress events (consecutive `progress` events of one
    /// step are kept as the latest).
    pub events: Vec<Value>,
    pub result: Option<Value>,
    pub error: Option<OpError>,
}

#[derive(Default)]
pub struct Operations {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    running: Option<String>,
    list: VecDeque<Operation>,
}

impl Operations {
    /// Starts an operation, or returns the id of the one still running.
    pub fn start(&self, kind: &'static str, source: Option<String>) -> Result<String, String> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(id) = &inner.running {
            return Err(id.clone());
        }
        let id = uuid::Uuid::new_v4().simple().to_string();
        inner.running = Some(id.clone());
        inner.list.push_back(Operation {
            id: id.clone(),
            kind,
            state: OpState::Running,
            source,
            started_at: abkit_update::record::now(),
            finished_at: None,
            events: Vec::new(),
            result: None,
            error: None,
        });
        while inner.list.len() > KEEP {
            inner.list.pop_front();
        }
        Ok(id)
    }

    fn with(&self, id: &str, f: impl FnOnce(&mut Operation)) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(op) = inner.list.iter_mut().find(|o| o.id == id) {
            f(op);
        }
    }

    /// Records an engine event of operation `id`.
    pub fn event(&self, id: &str, event: &Event) {
        let Ok(value) = serde_json::to_value(event) else {
            return;
        };
        self.with(id, |op| {
            if let Some(last) = op.events.last_mut()
                && last["event"] == "progress"
                && value["event"] == "progress"
                && last["step"] == value["step"]
            {
                *last = value;
                return;
            }
            op.events.push(value);
        });
    }

    /// Ends operation `id`.
    pub fn finish(&self, id: &str, outcome: Result<Value, OpError>) {
        self.with(id, |op| {
            op.finished_at = Some(abkit_update::record::now());
            match outcome {
                Ok(v) => {
                    op.state = OpState::Succeeded;
                    op.result = Some(v);
                }
                Err(e) => {
                    op.state = OpState::Failed;
                    op.error = Some(e);
                }
            }
        });
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.running.as_deref() == Some(id) {
            inner.running = None;
        }
    }

    pub fn get(&self, id: &str) -> Option<Operation> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.list.iter().find(|o| o.id == id).cloned()
    }

    /// The running operation, else the last one.
    pub fn current(&self) -> Option<Operation> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.list.back().cloned()
    }
}

/// The engine's [`Reporter`] for one operation.
pub struct OpReporter<'a> {
    pub ops: &'a Operations,
    pub id: &'a str,
}

impl Reporter for OpReporter<'_> {
    fn event(&mut self, event: Event) {
        self.ops.event(self.id, &event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use abkit_update::Step;

    #[test]
    fn one_at_a_time_and_progress_is_compacted() {
        let ops = Operations::default();
        let id = ops.start("update", Some("/b.abb".into())).unwrap();
        assert_eq!(ops.start("rollback", None), Err(id.clone()));
        let mut rep = OpReporter { ops: &ops, id: &id };
        rep.event(Event::Step {
            step: Step::WriteSystem,
            message: "w".into(),
        });
        for done in [1, 2, 3] {
            rep.event(Event::Progress {
                step: Step::WriteSystem,
                done,
                total: 3,
            });
        }
        rep.event(Event::Step {
            step: Step::CheckSystem,
            message: "c".into(),
        });
        let op = ops.get(&id).unwrap();
        assert_eq!(op.state, OpState::Running);
        assert_eq!(op.events.len(), 3);
        assert_eq!(op.events[1]["done"], 3);
        ops.finish(
            &id,
            Err(OpError {
                code: "x".into(),
                message: "y".into(),
            }),
        );
        assert_eq!(ops.get(&id).unwrap().state, OpState::Failed);
        let next = ops.start("reboot", None).unwrap();
        assert_ne!(next, id);
        assert_eq!(ops.current().unwrap().id, next);
    }
}
