INSERT INTO target_databases (name, connection_url, url_masked, description, server_version)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (name) DO NOTHING
