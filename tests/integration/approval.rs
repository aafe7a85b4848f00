//! The coordinator nonce ledger on a real server: the table is created on first use,
//! a nonce is claimed once, and replicas racing to create it both succeed.

use std::sync::Arc;
use std::time::Duration;

use citus_mcp::db::{Db, DbError};
use libtest_mimic::Trial;
use tokio_util::sync::CancellationToken;

use crate::{Ctx, trial};

pub fn trials(ctx: &Arc<Ctx>) -> Vec<Trial> {
    vec![trial(
        ctx,
        "approval::coordinator_ledger_creates_its_table_and_refuses_replays",
        coordinator_ledger,
    )]
}

async fn claim(db: &Db, nonce: &str, expires: i64) -> Result<bool, DbError> {
    db.claim_nonce(
        nonce,
        "dangerous",
        expires,
        3600,
        Duration::from_secs(10),
        &CancellationToken::new(),
    )
    .await
}

fn coordinator_ledger(ctx: &Ctx) {
    ctx.db()
        .psql("DROP SCHEMA IF EXISTS citus_mcp CASCADE")
        .unwrap();
    let a = ctx.pool(&ctx.dsn());
    let b = ctx.pool(&ctx.dsn());
    let now = chrono::Utc::now().timestamp();
    ctx.rt.block_on(async {
        // Two replicas, no table yet: both create it (or find it) and claim.
        let (x, y) = tokio::join!(claim(&a, "n-a", now + 60), claim(&b, "n-b", now + 60));
        assert!(x.unwrap() && y.unwrap());
        assert!(
            !claim(&b, "n-a", now + 60).await.unwrap(),
            "a replay on another replica"
        );
        // Long-expired nonces are forgotten on the way; a fresh one is kept.
        assert!(claim(&a, "n-old", now - 7200).await.unwrap());
        assert!(claim(&a, "n-c", now + 60).await.unwrap());
    });
    let left = ctx
        .db()
        .psql("SELECT string_agg(nonce, ',' ORDER BY nonce) FROM citus_mcp.approval_nonce")
        .unwrap();
    assert_eq!(left.trim(), "n-a,n-b,n-c");
    ctx.db()
        .psql("DROP SCHEMA IF EXISTS citus_mcp CASCADE")
        .unwrap();
}
