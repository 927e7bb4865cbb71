-- A projection's registry row; a second definition under the same name
-- keeps the row (its generations change).
INSERT INTO projections (name) VALUES ($1)
ON CONFLICT (name) DO NOTHING
