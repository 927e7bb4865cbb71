-- Events a consumer gave up on after `max_deliver` deliveries, with the
-- handler's last error. Replay is requested over gRPC and carried out by
-- the consumer itself (it loads the event from the store).
CREATE TABLE dead_letters (
    id                  bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    consumer            text        NOT NULL,
    event_id            uuid        NOT NULL,
    stream_id           text        NOT NULL,
    event_version       bigint      NOT NULL,
    error               text        NOT NULL,
    deliveries          integer     NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    replay_requested_at timestamptz,
    replayed_at         timestamptz,
    CONSTRAINT dead_letters_consumer_event_key UNIQUE (consumer, event_id)
);
