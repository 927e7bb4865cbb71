-- Snapshots of aggregate state, per stream (event-store/src/snapshot.rs).
--
-- A snapshot is a cache, never the truth: the state can always be rebuilt
-- from the stream's events, so a snapshot that looks wrong (an older
-- schema_version, a state that no longer deserializes, a version the stream
-- does not have) is ignored and rebuilt, never trusted.
--
-- Only the newest snapshot of a stream is kept: saving one deletes the
-- stream's older ones in the same statement (snapshot_save.sql). A load
-- only ever reads the newest snapshot of its schema version; an older one
-- of the same schema is never read again, and one of an older schema is
-- ignored anyway. Keeping more would buy nothing but table size: one row
-- per snapshotted stream is the bound. (During a rolling deploy, two
-- schema versions loading the same stream replace each other's snapshot
-- and replay more: slower for a while, never wrong.)
CREATE TABLE snapshots (
    stream_id      text        NOT NULL,
    -- The version of the last event folded into `state`. Checked against
    -- the stream when saved, so a snapshot is never ahead of its stream.
    stream_version bigint      NOT NULL CHECK (stream_version >= 1),
    -- The aggregate's own schema version (Aggregate::SNAPSHOT_SCHEMA_VERSION),
    -- not the events'. A load asks for exactly one; any other is ignored.
    schema_version integer     NOT NULL CHECK (schema_version >= 1),
    state          jsonb       NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    -- Also the index of "the newest snapshot of a stream" (backwards scan).
    PRIMARY KEY (stream_id, stream_version)
);
