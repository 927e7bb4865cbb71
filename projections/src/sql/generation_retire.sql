UPDATE projection_generations SET status = 'retired', updated_at = now()
WHERE projection = $1 AND generation = $2
