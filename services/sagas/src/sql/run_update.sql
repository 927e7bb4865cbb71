UPDATE workflow_runs
SET next_due_ms = $2, version = $3, resend = $4
WHERE workflow_id = $1 AND version <= $3
