SELECT n.nodeid, n.nodename, n.nodeport, n.groupid = 0 AS is_coordinator
  FROM pg_catalog.pg_dist_node n
 WHERE n.isactive AND n.noderole = 'primary' AND ($1 OR n.groupid <> 0)
 ORDER BY n.nodeid
