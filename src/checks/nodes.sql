SELECT nodename, nodeport
  FROM pg_catalog.pg_dist_node
 ORDER BY nodeid
