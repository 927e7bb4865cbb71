UPDATE schedule_runs
SET next_due_ms = $2, version = $3
WHERE schedule_id = $1 AND version <= $3
