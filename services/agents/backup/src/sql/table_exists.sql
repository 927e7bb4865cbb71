-- The table a recorded name (`schema.table`, quoted) names, if it exists.
SELECT to_regclass($1)::text
