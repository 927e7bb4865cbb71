-- Every generation a runner should be working on.
SELECT g.projection, g.generation, g.status, g.definition::text AS definition
FROM projection_generations g
WHERE g.status <> 'retired'
ORDER BY g.projection, g.generation
