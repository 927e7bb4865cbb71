//! Named upper bounds on what one request may carry.

/// The bounds every append is validated against. The server's `Config`
/// fills these in; the defaults are what `dbswarm serve --help` documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest stream id, in bytes.
    pub stream_id_bytes_max: usize,
    /// Longest event type, in bytes.
    pub event_type_bytes_max: usize,
    /// Largest event (data + metadata), in bytes.
    pub event_bytes_max: usize,
    /// Most events in one append request (all streams together).
    pub append_events_max: usize,
    /// Largest append request (all events' data + metadata), in bytes.
    pub append_bytes_max: usize,
    /// Most streams in one `AppendMulti`.
    pub append_streams_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            stream_id_bytes_max: 256,
            event_type_bytes_max: 128,
            event_bytes_max: 1024 * 1024,
            append_events_max: 1000,
            append_bytes_max: 4 * 1024 * 1024,
            append_streams_max: 100,
        }
    }
}
