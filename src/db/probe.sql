SELECT current_setting('server_version') AS server_version,
       current_setting('server_version_num')::int AS server_version_num,
       (SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'citus') AS citus_extension,
       to_regprocedure('pg_catalog.citus_version()') IS NOT NULL AS has_citus,
       current_user::text AS role,
       coalesce((SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user), false) AS superuser,
       -- One user table this role may change, if any: a read-only deployment has none.
       (SELECT c.oid::pg_catalog.regclass::text
          FROM pg_catalog.pg_class c
          JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind IN ('r', 'p')
           AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'citus', 'citus_internal', 'columnar', 'columnar_internal')
           AND n.nspname !~ '^pg_(toast|temp)'
           AND (pg_catalog.has_table_privilege(c.oid, 'INSERT') OR pg_catalog.has_table_privilege(c.oid, 'UPDATE')
                OR pg_catalog.has_table_privilege(c.oid, 'DELETE') OR pg_catalog.has_table_privilege(c.oid, 'TRUNCATE'))
         ORDER BY c.oid
         LIMIT 1) AS writable_table
