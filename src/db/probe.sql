SELECT current_setting('server_version') AS server_version,
       current_setting('server_version_num')::int AS server_version_num,
       (SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'citus') AS citus_extension,
       to_regprocedure('pg_catalog.citus_version()') IS NOT NULL AS has_citus
