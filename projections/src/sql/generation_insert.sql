-- The next generation of a projection, building (or live when it is the
-- first: there is nothing older to serve meanwhile).
INSERT INTO projection_generations (projection, generation, status, definition)
SELECT $1, coalesce(max(generation), 0) + 1, $2, $3::jsonb
FROM projection_generations
WHERE projection = $1
RETURNING generation
