-- Serialises writers of the same streams on the careful path until commit.
-- Keys in ascending order, so two batches cannot wait on each other.
SELECT count(pg_advisory_xact_lock(key))
FROM (SELECT DISTINCT hashtextextended(stream_id, 0) AS key
      FROM unnest($1::text[]) AS s(stream_id)
      ORDER BY 1) AS keys
