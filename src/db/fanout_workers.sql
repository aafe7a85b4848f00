SELECT n.nodeid, r.nodename, r.nodeport, coalesce(n.groupid = 0, false) AS is_coordinator, r.success, r.result
  FROM pg_catalog.run_command_on_workers($1) r
  LEFT JOIN pg_catalog.pg_dist_node n
         ON n.nodename = r.nodename AND n.nodeport = r.nodeport AND n.noderole = 'primary'
 ORDER BY n.nodeid
