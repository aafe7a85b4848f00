-- The approval nonce ledger of citus-mcp (approval_ledger: coordinator), created on first
-- use. A plain table on the coordinator: it is never distributed, and only citus-mcp
-- writes it.
CREATE SCHEMA IF NOT EXISTS citus_mcp;
CREATE TABLE IF NOT EXISTS citus_mcp.approval_nonce (
    nonce text PRIMARY KEY,
    tool text NOT NULL,
    expires_at timestamptz NOT NULL,
    used_at timestamptz NOT NULL DEFAULT pg_catalog.now()
);
