-- The definition queries are answered with: the live generation's.
SELECT g.generation, g.definition::text AS definition
FROM projections p
JOIN projection_generations g ON g.projection = p.name AND g.generation = p.live_generation
WHERE p.name = $1
