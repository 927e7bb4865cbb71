UPDATE workflow_runs SET next_due_ms = $2 WHERE workflow_id = $1
