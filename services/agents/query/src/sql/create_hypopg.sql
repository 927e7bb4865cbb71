-- HypoPG: hypothetical indexes the planner considers in this session only.
CREATE EXTENSION IF NOT EXISTS hypopg
