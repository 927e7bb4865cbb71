UPDATE projections SET live_generation = $2, updated_at = now() WHERE name = $1
