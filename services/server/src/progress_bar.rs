//! The progress bar of the CLI's long commands (`migrate apply`, `backup
//! create`, restores): one line on stderr per report, so that stdout stays
//! the result (`--json` included).

use std::future::Future;
use std::pin::Pin;

use agents::ProgressSink;

/// Width of the bar in characters: 5% each.
const BAR_CHARS: usize = 20;

pub struct StderrProgress;

impl ProgressSink for StderrProgress {
    fn report<'a>(&'a self, percent: f64, message: String) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            let filled = ((percent / 5.0).round() as usize).min(BAR_CHARS);
            eprintln!(
                "[{}{}] {percent:5.1}% {message}",
                "#".repeat(filled),
                " ".repeat(BAR_CHARS - filled)
            );
        })
    }
}
