-- Workflows that are not finished, for the orchestrator: what to resume
-- after a crash and when each is next due (a deadline or a retry). The
-- truth is the workflow's stream; a row is only an index into it, written
-- before WorkflowStarted is appended and deleted once a final event is
-- seen, so no unfinished workflow is ever missing from it.
CREATE TABLE workflow_runs (
    workflow_id uuid PRIMARY KEY,
    priority smallint NOT NULL,
    -- ms since the epoch; NULL: only an outcome moves the workflow on.
    next_due_ms bigint,
    -- The stream version the row was last updated from: an update from an
    -- older version (a slower writer) never overwrites a newer one.
    version bigint NOT NULL DEFAULT 0,
    -- A task command could not be sent: resend the outstanding commands.
    resend boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX workflow_runs_due ON workflow_runs (next_due_ms) WHERE next_due_ms IS NOT NULL;
