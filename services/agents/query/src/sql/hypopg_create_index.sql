-- A hypothetical index (this session only) and HypoPG's estimate of its size.
SELECT h.indexrelid::int8, hypopg_relation_size(h.indexrelid)::int8 FROM hypopg_create_index($1) AS h
