UPDATE projection_generations SET caught_up_at = coalesce(caught_up_at, now())
WHERE projection = $1 AND generation = $2
