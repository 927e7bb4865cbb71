UPDATE projections SET paused = $2, updated_at = now() WHERE name = $1
