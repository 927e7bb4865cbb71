-- How far each relay has released events to JetStream, in the $all order.
-- Advanced only past events JetStream has acknowledged.
CREATE TABLE relay_checkpoints (
    relay           text        PRIMARY KEY,
    transaction_id  xid8        NOT NULL,
    global_position bigint      NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- Wakes the relay (LISTEN dbswarm_events) when events commit: once per
-- statement, delivered at commit, coalesced within a transaction.
CREATE FUNCTION dbswarm_notify_events() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('dbswarm_events', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER events_notify
AFTER INSERT ON events
FOR EACH STATEMENT EXECUTE FUNCTION dbswarm_notify_events();
