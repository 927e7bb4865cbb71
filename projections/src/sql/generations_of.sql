-- A projection's generations that are not retired (under its lock).
SELECT generation, status, definition
FROM projection_generations
WHERE projection = $1 AND status <> 'retired'
ORDER BY generation
