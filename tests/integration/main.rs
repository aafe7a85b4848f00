//! Integration and end-to-end tests, in one binary with one throwaway database.
//!
//! Without `CITUS_TEST_DSN` the harness starts a PostgreSQL from the system's server
//! binaries and loads the Citus catalog fixture (`tests/fixtures/citus`). With it, the
//! same tests run against that real Citus cluster. Trials are generated: one per
//! example of every built-in tool file, plus the hand-written ones below.

#[path = "../support/pg.rs"]
mod pg;

mod advisors;
mod analysis;
mod approval;
mod clients;
mod dead_node;
mod docs;
mod e2e;
mod engine;
mod examples;
mod fixture;
mod httpd;
mod lint;
mod mcp;
mod monitoring;
mod oauth;
mod operations;
mod security;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use citus_mcp::db::{Db, DbConfig, Dsn};
use libtest_mimic::{Arguments, Trial};

pub use pg::{DbKind, TestDatabase};

/// What every trial shares: the database (started once) and a runtime.
pub struct Ctx {
    db: OnceLock<Result<TestDatabase, String>>,
    reader: OnceLock<()>,
    pub rt: tokio::runtime::Runtime,
}

impl Ctx {
    /// The test database; started on first use, shared afterwards.
    pub fn db(&self) -> &TestDatabase {
        match self
            .db
            .get_or_init(|| TestDatabase::start().map_err(|e| format!("{e:#}")))
        {
            Ok(db) => db,
            Err(e) => panic!("the test database did not start: {e}"),
        }
    }

    pub fn dsn(&self) -> String {
        self.db().dsn().to_string()
    }

    pub fn is_fixture(&self) -> bool {
        matches!(self.db().kind(), DbKind::Fixture)
    }

    /// A DSN for an empty database `name` on the test server, dropped and created anew
    /// (on the coordinator, for a real cluster). `CITUS_TEST_DSN` must name its database
    /// in the keyword form (`dbname=...`).
    pub fn scratch_database(&self, name: &str) -> String {
        let dsn = self.dsn();
        let parsed = Dsn::parse(&dsn).expect("test DSN parses");
        let db = parsed.config.get_dbname().unwrap_or("postgres").to_string();
        for sql in [
            format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            format!("CREATE DATABASE {name}"),
        ] {
            self.db()
                .psql(&sql)
                .unwrap_or_else(|e| panic!("{sql}: {e:#}"));
        }
        dsn.replace(&format!("dbname={db}"), &format!("dbname={name}"))
    }

    /// How many backends run a statement whose text holds `marker` (this count aside).
    pub fn running(&self, marker: &str) -> u64 {
        self.db()
            .psql(&format!(
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%{marker}%' \
                 AND query NOT LIKE '%pg_stat_activity%' AND state = 'active'"
            ))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// Waits until `done` holds for [`Ctx::running`]`(marker)`; fails saying `what` if it
    /// does not within `within` (a bound, not a timing assertion).
    pub fn wait_running(
        &self,
        marker: &str,
        done: impl Fn(u64) -> bool,
        within: Duration,
        what: &str,
    ) {
        let deadline = std::time::Instant::now() + within;
        while !done(self.running(marker)) {
            assert!(std::time::Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A connection pool to the test database, as the server would build it.
    pub fn pool(&self, dsn: &str) -> Db {
        self.pool_named(dsn, "citus-mcp-tests")
    }

    /// A pool that connects as the least-privilege role of README's recipe
    /// ([`READER_ROLE`]): every read-only tool must work with it.
    pub fn reader_pool(&self) -> Db {
        self.reader.get_or_init(|| {
            self.db()
                .psql(READER_RECIPE)
                .expect("the reader role is created");
        });
        let mut dsn = Dsn::parse(&self.dsn()).expect("test DSN parses");
        dsn.config.user(READER_ROLE);
        Db::new(DbConfig {
            dsn,
            worker_dsns: vec![],
            connect_timeout: Duration::from_secs(10),
            pool_size: 4,
            application_name: "citus-mcp-reader".into(),
            timeout_ceiling: Duration::from_secs(60),
        })
        .expect("pool builds")
    }

    /// A pool whose connections carry `application_name`, so a test can find them.
    pub fn pool_named(&self, dsn: &str, application_name: &str) -> Db {
        pool_sized(dsn, application_name, 4, Duration::from_secs(10))
    }
}

/// A pool of at most `pool_size` connections to `dsn`, carrying `application_name`, that
/// waits `connect_timeout` for a connection (twice that for a busy pool).
pub fn pool_sized(
    dsn: &str,
    application_name: &str,
    pool_size: usize,
    connect_timeout: Duration,
) -> Db {
    let mut dsn = Dsn::parse(dsn).expect("test DSN parses");
    dsn.config.application_name(application_name);
    Db::new(DbConfig {
        dsn,
        worker_dsns: vec![],
        connect_timeout,
        pool_size,
        application_name: application_name.into(),
        timeout_ceiling: Duration::from_secs(60),
    })
    .expect("pool builds")
}

/// The login role README's "Least privilege" recipe creates.
pub const READER_ROLE: &str = "citus_mcp_reader";

/// README's recipe, as the tests apply it (idempotent; no password: the test servers
/// trust local connections).
const READER_RECIPE: &str = "DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'citus_mcp_reader') THEN
    CREATE ROLE citus_mcp_reader LOGIN;
  END IF;
END $$;
GRANT pg_monitor, pg_read_all_data TO citus_mcp_reader;
ALTER ROLE citus_mcp_reader SET default_transaction_read_only = on;";

/// A trial that needs the shared context.
pub fn trial(ctx: &Arc<Ctx>, name: impl Into<String>, f: fn(&Ctx)) -> Trial {
    let ctx = ctx.clone();
    Trial::test(name, move || {
        f(&ctx);
        Ok(())
    })
}

fn main() {
    let args = Arguments::from_args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let ctx = Arc::new(Ctx {
        db: OnceLock::new(),
        reader: OnceLock::new(),
        rt,
    });
    let mut trials = Vec::new();
    trials.extend(examples::trials(&ctx));
    trials.extend(engine::trials(&ctx));
    trials.extend(e2e::trials(&ctx));
    trials.extend(fixture::trials(&ctx));
    trials.extend(monitoring::trials(&ctx));
    trials.extend(analysis::trials(&ctx));
    trials.extend(dead_node::trials(&ctx));
    trials.extend(advisors::trials(&ctx));
    trials.extend(lint::trials(&ctx));
    trials.extend(security::trials(&ctx));
    trials.extend(approval::trials(&ctx));
    trials.extend(operations::trials(&ctx));
    trials.extend(httpd::trials(&ctx));
    trials.extend(oauth::trials(&ctx));
    trials.extend(clients::trials(&ctx));
    trials.extend(docs::trials(&ctx));
    let conclusion = libtest_mimic::run(&args, trials);
    // Stop the database before exiting (statics are not dropped).
    if let Ok(ctx) = Arc::try_unwrap(ctx) {
        drop(ctx);
    }
    conclusion.exit();
}

/// A tool that answers the backend its call ran on: a connection kept or replaced shows.
pub const BACKEND_PID: &str = r#"
name: backend_pid
description: The backend this call ran on.
safety: read_only
queries:
  - name: pid
    shape: value
    sql: SELECT pg_catalog.pg_backend_pid()
examples:
  - args: {}
"#;
