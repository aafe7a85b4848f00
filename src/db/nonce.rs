//! The database layer's one read-write statement: recording an approval nonce as used
//! (`approval_ledger: coordinator`), so that server replicas on several hosts share
//! one ledger.
//!
//! It runs under the same per-call settings as [`Db::read_only_then`] (timeouts set
//! before anything is parsed), with bind parameters only, and its SQL is in
//! `nonce_setup.sql` and `nonce_claim.sql`. The table is created on first use: the
//! first claim that finds no table creates it and claims again.

use std::time::Duration;

use tokio_postgres::error::SqlState;
use tokio_util::sync::CancellationToken;

use super::{
    AfterCall, CALL_SETTINGS, CallGuard, Db, DbError, IDLE_GRACE_MS, node_connect_ms, race,
    sql_error,
};

/// One nonce to claim.
struct Claim<'a> {
    nonce: &'a str,
    tool: &'a str,
    expires_unix: i64,
    forget_after_s: i64,
}

impl Db {
    /// Records `nonce` as used in `citus_mcp.approval_nonce`: `true` the first time,
    /// `false` when it was there already. Nonces more than `forget_after_s` past their
    /// expiry are deleted on the way.
    pub async fn claim_nonce(
        &self,
        nonce: &str,
        tool: &str,
        expires_unix: i64,
        forget_after_s: i64,
        timeout: Duration,
        cancel: &CancellationToken,
    ) -> Result<bool, DbError> {
        let claim = Claim {
            nonce,
            tool,
            expires_unix,
            forget_after_s,
        };
        let missing = |s: &str| {
            s == SqlState::UNDEFINED_TABLE.code() || s == SqlState::INVALID_SCHEMA_NAME.code()
        };
        match self.nonce_call(&claim, false, timeout, cancel).await {
            Err(DbError::Sql { sqlstate, .. }) if missing(&sqlstate) => {
                match self.nonce_call(&claim, true, timeout, cancel).await {
                    // Another replica created it at the same moment (CREATE ... IF NOT
                    // EXISTS is not safe against a concurrent create): it exists now.
                    Err(DbError::Sql { sqlstate, .. })
                        if sqlstate == SqlState::UNIQUE_VIOLATION.code()
                            || sqlstate == SqlState::DUPLICATE_SCHEMA.code()
                            || sqlstate == SqlState::DUPLICATE_TABLE.code() =>
                    {
                        self.nonce_call(&claim, false, timeout, cancel).await
                    }
                    other => other,
                }
            }
            other => other,
        }
    }

    async fn nonce_call(
        &self,
        claim: &Claim<'_>,
        create: bool,
        timeout: Duration,
        cancel: &CancellationToken,
    ) -> Result<bool, DbError> {
        let client = self.client().await?;
        let mut guard = CallGuard::new(self, client);
        let timeout_ms = timeout.as_millis() as u64;
        let client = guard.client.as_mut().expect("set above");
        let work = async {
            // Pooled sessions default to read-only transactions; this one writes.
            let tx = client
                .build_transaction()
                .read_only(false)
                .start()
                .await
                .map_err(sql_error)?;
            let ms = timeout_ms.to_string();
            let idle = (u128::from(timeout_ms) + IDLE_GRACE_MS).to_string();
            let connect = node_connect_ms(timeout).to_string();
            tx.execute(CALL_SETTINGS, &[&ms, &idle, &Some("off"), &connect])
                .await
                .map_err(sql_error)?;
            if create {
                // Fixed DDL without values: the simple protocol runs the file as is.
                tx.batch_execute(include_str!("nonce_setup.sql"))
                    .await
                    .map_err(sql_error)?;
            }
            let rows = tx
                .query(
                    include_str!("nonce_claim.sql"),
                    &[
                        &claim.nonce,
                        &claim.tool,
                        &claim.expires_unix,
                        &claim.forget_after_s,
                    ],
                )
                .await
                .map_err(sql_error)?;
            tx.commit().await.map_err(sql_error)?;
            Ok(!rows.is_empty())
        };
        let result = race(work, timeout, cancel).await;
        guard.settle(result, timeout, AfterCall::Reuse)
    }
}
