-- Schedules, for the workflow driver: when each fires next. The truth is
-- the schedule's stream (schedule-<id>); a row is only an index into it,
-- written before ScheduleCreated is appended and brought up to date after
-- every decision (and by the driver, which re-reads every schedule
-- regularly), so no schedule is ever missing from it.
CREATE TABLE schedule_runs (
    schedule_id text PRIMARY KEY,
    -- ms since the epoch; NULL: paused or deleted.
    next_due_ms bigint,
    -- The stream version the row was last updated from: an update from an
    -- older version never overwrites a newer one.
    version bigint NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX schedule_runs_due ON schedule_runs (next_due_ms) WHERE next_due_ms IS NOT NULL;
