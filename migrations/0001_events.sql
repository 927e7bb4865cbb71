-- The event store. Only the event-store crate writes these tables.

CREATE TABLE events (
    -- Assigned at insert, visible at commit: readers of the global order use
    -- (transaction_id, global_position), never global_position alone.
    global_position bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id        uuid        NOT NULL,
    stream_id       text        NOT NULL,
    aggregate_type  text        NOT NULL,
    aggregate_id    uuid,
    event_version   bigint      NOT NULL CHECK (event_version >= 1),
    event_type      text        NOT NULL,
    schema_version  integer     NOT NULL DEFAULT 1 CHECK (schema_version >= 1),
    -- Exactly one of event_data (content type JSON) and data_binary is set.
    event_data      jsonb,
    data_binary     bytea,
    metadata        jsonb       NOT NULL DEFAULT '{}'::jsonb,
    correlation_id  uuid,
    causation_id    uuid,
    transaction_id  xid8        NOT NULL DEFAULT pg_current_xact_id(),
    created_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT events_event_id_key UNIQUE (event_id),
    CONSTRAINT events_stream_version_key UNIQUE (stream_id, event_version),
    CONSTRAINT events_one_payload CHECK ((event_data IS NULL) <> (data_binary IS NULL))
);

-- The $all order.
CREATE INDEX events_commit_order ON events (transaction_id, global_position);
