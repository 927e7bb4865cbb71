DELETE FROM workflow_runs WHERE workflow_id = $1
