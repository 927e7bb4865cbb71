//! Progress of long work (a backup, a backfill), reported by the engine
//! doing it to whoever watches: a task's `TaskProgressed` events, a CLI's
//! progress bar, or nobody.

use std::future::Future;
use std::pin::Pin;

use crate::TaskContext;

/// Reports progress of long work.
pub trait ProgressSink: Send + Sync {
    fn report<'a>(&'a self, percent: f64, message: String) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>>;
}

/// Progress nobody watches.
pub struct NoProgress;

impl ProgressSink for NoProgress {
    fn report<'a>(&'a self, _: f64, _: String) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(async {})
    }
}

/// A task's progress, as its `TaskProgressed` events (throttled by the
/// runtime's `progress_interval_ms`).
impl ProgressSink for TaskContext {
    fn report<'a>(&'a self, percent: f64, message: String) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(self.progress(percent, message))
    }
}
