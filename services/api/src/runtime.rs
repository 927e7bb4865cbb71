//! The Tokio runtime gRPC peers of dbswarm run on: the `dbswarm` binary
//! and the benchmark's clients.

/// A multi-threaded runtime without Tokio's LIFO slot when built with
/// `--cfg tokio_unstable` (set in .cargo/config.toml; without the flag it
/// is Tokio's default runtime).
///
/// Why: the LIFO slot runs the task that the running task woke next. When
/// a group-commit batch answers its requests, each request's HTTP/2 stream
/// task wakes its connection's task, which then ran at once and wrote that
/// one response: one `writev` per answer. Without the slot the woken
/// connection tasks queue behind the other answered streams, and each
/// writes all the answers of its connection at once (a quarter of the
/// `writev` calls). Clients gain the same way: requests sent by tasks woken
/// together leave together. Measured with `make bench
/// BENCH=append_throughput`: server CPU per appended event 31-37 µs with
/// the slot, 20.5-26 µs without.
pub fn multi_thread() -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    #[cfg(tokio_unstable)]
    builder.disable_lifo_slot();
    builder.enable_all().build()
}
