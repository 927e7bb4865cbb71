//! The agents' work-queue stream: where the orchestrator sends task
//! commands (`<prefix>.task.<agent>.<operation>`, see
//! `event_store::relay::publish_task`) and each agent's durable consumer
//! takes them from. The workflow side owns it; its name and limits are
//! those of the [`RelayConfig`].

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use event_store::relay::{RelayConfig, RelayError};

/// The tasks stream as configured: work-queue retention, file storage.
fn tasks_stream_config(config: &RelayConfig) -> stream::Config {
    stream::Config {
        name: config.tasks_stream_name.clone(),
        subjects: vec![format!("{}.task.>", config.subject_prefix)],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::WorkQueue,
        num_replicas: config.stream_replicas,
        duplicate_window: Duration::from_secs(config.duplicate_window_s),
        ..Default::default()
    }
}

/// Creates the agents' work-queue stream, or checks an existing one: its
/// retention and subjects cannot change in place, so a difference is refused.
pub async fn ensure_tasks_stream(js: &jetstream::Context, config: &RelayConfig) -> Result<(), RelayError> {
    let jetstream_error = |e: &dyn std::fmt::Display| RelayError::JetStream(e.to_string());
    let wanted = tasks_stream_config(config);
    let mut stream = js
        .get_or_create_stream(wanted.clone())
        .await
        .map_err(|e| jetstream_error(&e))?;
    let actual = stream
        .info()
        .await
        .map_err(|e| jetstream_error(&e))?
        .config
        .clone();
    if actual.retention != wanted.retention || actual.subjects != wanted.subjects {
        return Err(RelayError::StreamMismatch {
            stream: config.tasks_stream_name.clone(),
            field: "retention/subjects",
            actual: format!("{:?} {:?}", actual.retention, actual.subjects),
            wanted: format!("{:?} {:?}", wanted.retention, wanted.subjects),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tasks_stream_config_captures_its_subjects() {
        let config = RelayConfig {
            subject_prefix: "p".into(),
            ..RelayConfig::default()
        };
        let tasks = tasks_stream_config(&config);
        assert_eq!(
            (tasks.name.as_str(), tasks.subjects.as_slice()),
            ("DBSWARM_TASKS", &["p.task.>".to_owned()][..])
        );
        assert_eq!(tasks.retention, stream::RetentionPolicy::WorkQueue);
        assert_eq!(tasks.storage, stream::StorageType::File);
        assert_eq!(tasks.duplicate_window, Duration::from_secs(120));
    }
}
