-- Projections: read models kept in step with the event store.
--
-- A projection's read-model rows and its checkpoint are written in one
-- transaction, so its effect is exactly once. Each (re)build of a
-- projection is a generation with its own table; readers use the view
-- read_models.<name>, which points at the live generation and is swapped
-- atomically when a rebuilt generation has caught up (blue/green).

-- Read-model tables (<name>__g<generation>) and views (<name>) live apart
-- from dbswarm's own tables, so that a definition can never name one of them.
CREATE SCHEMA read_models;

CREATE TABLE projections (
    name            text        PRIMARY KEY,
    -- The generation the view read_models.<name> points at; NULL until the
    -- first generation has caught up.
    live_generation integer,
    -- Pause applies to every generation of the projection.
    paused          boolean     NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE projection_generations (
    projection      text        NOT NULL REFERENCES projections (name) ON DELETE CASCADE,
    generation      integer     NOT NULL CHECK (generation >= 1),
    -- building: catching up beside the live one; live: what the view shows;
    -- retired: replaced, its table dropped.
    status          text        NOT NULL CHECK (status IN ('building', 'live', 'retired')),
    -- The declarative definition this generation is built from (validated
    -- by the projections crate before it is stored).
    definition      jsonb       NOT NULL,
    -- Checkpoint: everything up to this $all position has been applied.
    transaction_id  xid8        NOT NULL DEFAULT '0'::xid8,
    global_position bigint      NOT NULL DEFAULT 0,
    events_applied  bigint      NOT NULL DEFAULT 0,
    -- created_at of the last applied event.
    last_event_at   timestamptz,
    -- Set when applying an event failed: the runner stops there until it
    -- is resumed, reset, or told to skip exactly this event.
    failed_event_id uuid,
    failed_position bigint,
    failed_transaction_id xid8,
    error           text,
    failed_at       timestamptz,
    started_at      timestamptz NOT NULL DEFAULT now(),
    caught_up_at    timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (projection, generation),
    CONSTRAINT projection_generations_failure CHECK ((error IS NULL) = (failed_event_id IS NULL))
);

-- At most one live and one building generation per projection.
CREATE UNIQUE INDEX projection_generations_one_live
    ON projection_generations (projection) WHERE status = 'live';
CREATE UNIQUE INDEX projection_generations_one_building
    ON projection_generations (projection) WHERE status = 'building';
