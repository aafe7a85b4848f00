-- Records one approval nonce as used; returns a row only the first time. Nonces long
-- past their token's expiry ($4 seconds after it) are forgotten on the way: such
-- tokens are refused as expired before the ledger is asked.
WITH forgotten AS (
    DELETE FROM citus_mcp.approval_nonce
     WHERE expires_at < pg_catalog.now() - pg_catalog.make_interval(secs => $4::int8::float8)
)
INSERT INTO citus_mcp.approval_nonce (nonce, tool, expires_at)
VALUES ($1::text, $2::text, pg_catalog.to_timestamp($3::int8::float8))
ON CONFLICT (nonce) DO NOTHING
RETURNING nonce
