INSERT INTO workflow_runs (workflow_id, priority)
VALUES ($1, $2)
ON CONFLICT (workflow_id) DO NOTHING
