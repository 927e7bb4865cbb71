//! Read models built from the event store (issue 4). The crate holds the
//! place in the workspace's layout; it has no code yet.
