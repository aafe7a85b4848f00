//! Test database for integration tests: a throwaway PostgreSQL loaded with the Citus catalog
//! fixture (`tests/fixtures/citus/`), or a real Citus cluster when `CITUS_TEST_DSN` is set.
//!
//! ```ignore
//! let db = TestDatabase::start()?;          // fixture, or CITUS_TEST_DSN
//! let dsn = db.dsn();                       // "host=127.0.0.1 port=NNNN user=postgres dbname=citus"
//! db.psql("CREATE TABLE t (a int)")?;       // test setup through psql
//! ```
//!
//! Environment:
//! - `CITUS_TEST_DSN`: use this real cluster (kind `RealCitus`); nothing is started or loaded.
//! - `CITUS_TEST_PG_BINDIR`: directory with `initdb`, `pg_ctl`, `postgres` (default: the newest
//!   `/usr/lib/postgresql/*/bin` that has them, else `pg_config --bindir`).
//! - `CITUS_TEST_KEEP=1`: do not stop the server or delete its directory (for debugging).
//!
//! As root (CI), `initdb`/`pg_ctl` run as the `postgres` user through `runuser`, because
//! PostgreSQL refuses to run as root. Only std, anyhow and tempfile are used.

#![allow(dead_code)]

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};

/// Which kind of database a [`TestDatabase`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DbKind {
    /// Throwaway plain PostgreSQL with the Citus catalog fixture loaded.
    Fixture,
    /// A real Citus cluster given by `CITUS_TEST_DSN`.
    RealCitus,
}

/// A database for one test. Dropping it stops the throwaway server and removes its files.
pub struct TestDatabase {
    kind: DbKind,
    dsn: String,
    psql_bin: PathBuf,
    server: Option<Server>,
}

struct Server {
    bindir: PathBuf,
    as_postgres: bool,
    data_dir: PathBuf,
    /// The CA that signed the server's certificate (CN and SAN localhost, 127.0.0.1).
    ca_cert: PathBuf,
    // Held for its Drop (removes the directory); None when CITUS_TEST_KEEP is set.
    dir: Option<tempfile::TempDir>,
}

const DB_NAME: &str = "citus";
const INSTALL_HINT: &str = "install postgresql-15: apt-get install -y postgresql-15";

impl TestDatabase {
    /// `CITUS_TEST_DSN` set: use that real cluster (kind `RealCitus`, nothing started, nothing
    /// loaded). Otherwise start a throwaway PostgreSQL and load the fixture (kind `Fixture`).
    pub fn start() -> Result<TestDatabase> {
        if let Ok(dsn) = std::env::var("CITUS_TEST_DSN")
            && !dsn.trim().is_empty()
        {
            let psql_bin = find_psql(find_bindir().ok().as_deref());
            return Ok(TestDatabase {
                kind: DbKind::RealCitus,
                dsn,
                psql_bin,
                server: None,
            });
        }
        let bindir = find_bindir()?;
        let psql_bin = find_psql(Some(&bindir));
        let as_postgres = is_root();

        // A port taken between probing and binding makes the start fail: retry on a new port.
        let mut last_err = None;
        for _ in 0..3 {
            match start_server(&bindir, as_postgres) {
                Ok((server, port)) => {
                    let dsn = format!("host=127.0.0.1 port={port} user=postgres dbname={DB_NAME}");
                    let db = TestDatabase {
                        kind: DbKind::Fixture,
                        dsn,
                        psql_bin,
                        server: Some(server),
                    };
                    db.run_psql_admin(port, &format!("CREATE DATABASE {DB_NAME}"))?;
                    db.load_fixture()?;
                    return Ok(db);
                }
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow!("could not start PostgreSQL")))
    }

    /// A key=value DSN (fixture) or whatever `CITUS_TEST_DSN` holds; user postgres, db citus.
    pub fn dsn(&self) -> &str {
        &self.dsn
    }

    pub fn kind(&self) -> DbKind {
        self.kind
    }

    /// The CA certificate of the throwaway server (which runs with ssl=on); None for a real cluster.
    pub fn ca_cert(&self) -> Option<&Path> {
        self.server.as_ref().map(|s| s.ca_cert.as_path())
    }

    /// Runs SQL through `psql -X -q -A -t -v ON_ERROR_STOP=1` and returns its stdout
    /// (unaligned, tuples only: one row per line, columns separated by `|`).
    pub fn psql(&self, sql: &str) -> Result<String> {
        self.psql_on(&self.dsn, sql)
    }

    /// The fixture's SQL files, in load order: `tests/fixtures/citus/NN_*.sql`.
    pub fn fixture_files() -> Result<Vec<PathBuf>> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/citus");
        let mut files: Vec<PathBuf> = fs::read_dir(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                name.len() > 3
                    && name.as_bytes()[0].is_ascii_digit()
                    && name.as_bytes()[1].is_ascii_digit()
                    && name.as_bytes()[2] == b'_'
                    && name.ends_with(".sql")
            })
            .collect();
        files.sort();
        if files.is_empty() {
            bail!("no fixture files NN_*.sql in {}", dir.display());
        }
        Ok(files)
    }

    /// A second database on the throwaway server, loaded with the fixture, for a test that
    /// changes the catalog (e.g. stops a worker) without disturbing the tests that share
    /// the first one. Returns its DSN. Fixture only: a real cluster has one database.
    pub fn fixture_database(&self, name: &str) -> Result<String> {
        let Some(port) = self.server.as_ref().and(self.port()) else {
            bail!("a second fixture database needs the throwaway server (not CITUS_TEST_DSN)");
        };
        if !name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
            bail!("database name {name:?}: lowercase letters and _ only");
        }
        self.run_psql_admin(port, &format!("DROP DATABASE IF EXISTS {name}"))?;
        self.run_psql_admin(port, &format!("CREATE DATABASE {name}"))?;
        let dsn = format!("host=127.0.0.1 port={port} user=postgres dbname={name}");
        self.load_fixture_into(&dsn)?;
        Ok(dsn)
    }

    /// Like [`TestDatabase::psql`], on another database (or cluster) `dsn`.
    pub fn psql_on(&self, dsn: &str, sql: &str) -> Result<String> {
        let out = Command::new(&self.psql_bin)
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                dsn,
                "-c",
                sql,
            ])
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {}", self.psql_bin.display()))?;
        if !out.status.success() {
            bail!(
                "psql failed ({}): {}\nSQL: {sql}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Restarts the throwaway server (fast shutdown: every session ends), on the same port
    /// and data, as an operator's restart would. Not for a real cluster.
    pub fn restart(&self) -> Result<()> {
        let server = self
            .server
            .as_ref()
            .ok_or_else(|| anyhow!("only a throwaway server can be restarted"))?;
        let data = server.data_dir.to_string_lossy().into_owned();
        let log = server
            .data_dir
            .parent()
            .unwrap_or(&server.data_dir)
            .join("server.log")
            .to_string_lossy()
            .into_owned();
        let out = run_pg(
            server.as_postgres,
            &server.bindir.join("pg_ctl"),
            &[
                "-D", &data, "-l", &log, "-m", "fast", "-w", "-t", "30", "restart",
            ],
            server.dir.as_ref().map(|d| d.path()),
        )?;
        if !out.status.success() {
            bail!(
                "pg_ctl restart failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// The throwaway server's port, from the DSN this harness wrote.
    fn port(&self) -> Option<u16> {
        self.dsn
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix("port="))
            .and_then(|p| p.parse().ok())
    }

    fn load_fixture(&self) -> Result<()> {
        self.load_fixture_into(&self.dsn)
    }

    fn load_fixture_into(&self, dsn: &str) -> Result<()> {
        let mut cmd = Command::new(&self.psql_bin);
        cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", dsn]);
        for f in Self::fixture_files()? {
            cmd.arg("-f").arg(f);
        }
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .context("running psql to load the fixture")?;
        if !out.status.success() {
            bail!(
                "loading the Citus fixture failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    fn run_psql_admin(&self, port: u16, sql: &str) -> Result<()> {
        let dsn = format!("host=127.0.0.1 port={port} user=postgres dbname=postgres");
        let out = Command::new(&self.psql_bin)
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &dsn, "-c", sql])
            .stdin(Stdio::null())
            .output()
            .context("running psql")?;
        if !out.status.success() {
            bail!(
                "psql failed: {}\nSQL: {sql}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let Some(server) = self.server.take() else {
            return;
        };
        if server.dir.is_none() {
            eprintln!(
                "CITUS_TEST_KEEP: leaving PostgreSQL running in {}",
                server.data_dir.display()
            );
            return;
        }
        let pg_ctl = server.bindir.join("pg_ctl");
        let data = server.data_dir.to_string_lossy().into_owned();
        let _ = run_pg(
            server.as_postgres,
            &pg_ctl,
            &["-D", &data, "-m", "immediate", "-w", "-t", "10", "stop"],
            server.dir.as_ref().map(|d| d.path()),
        );
        // server.dir drops here and removes the data directory.
    }
}

fn start_server(bindir: &Path, as_postgres: bool) -> Result<(Server, u16)> {
    let started = Instant::now();
    let dir = tempfile::Builder::new()
        .prefix("citus-mcp-pg-")
        .tempdir()
        .context("creating a temp dir")?;
    let root = dir.path().to_path_buf();
    if as_postgres {
        let st = Command::new("chown")
            .args(["postgres:postgres"])
            .arg(&root)
            .status()
            .context("chown of the temp dir to postgres")?;
        if !st.success() {
            bail!(
                "chown postgres:postgres {} failed (does the postgres user exist?)",
                root.display()
            );
        }
    }
    let data_dir = root.join("data");
    let data = data_dir.to_string_lossy().into_owned();
    let sock = root.to_string_lossy().into_owned();
    let log = root.join("server.log").to_string_lossy().into_owned();

    let out = run_pg(
        as_postgres,
        &bindir.join("initdb"),
        &[
            "-D",
            &data,
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
            "--no-instructions",
        ],
        Some(&root),
    )?;
    if !out.status.success() {
        bail!(
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let ca_cert = make_certificates(&root, as_postgres)?;
    let port = free_port()?;
    let tls = root.join("tls");
    let opts = format!(
        "-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off \
         -c synchronous_commit=off -c max_connections=100 -c max_prepared_transactions=10 -c ssl=on \
         -c ssl_cert_file={cert} -c ssl_key_file={key}",
        cert = tls.join("server.crt").display(),
        key = tls.join("server.key").display(),
    );
    let out = run_pg(
        as_postgres,
        &bindir.join("pg_ctl"),
        &[
            "-D", &data, "-l", &log, "-w", "-t", "30", "-o", &opts, "start",
        ],
        Some(&root),
    )?;
    if !out.status.success() {
        let server_log = fs::read_to_string(&log).unwrap_or_default();
        bail!(
            "pg_ctl start failed (port {port}): {}{}\nserver log:\n{server_log}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let keep = std::env::var("CITUS_TEST_KEEP")
        .map(|v| v == "1")
        .unwrap_or(false);
    let dir = if keep {
        let _ = dir.keep();
        None
    } else {
        Some(dir)
    };
    if std::env::var("CITUS_TEST_VERBOSE").is_ok() {
        eprintln!("PostgreSQL on port {port} in {:?}", started.elapsed());
    }
    Ok((
        Server {
            bindir: bindir.to_path_buf(),
            as_postgres,
            data_dir,
            ca_cert,
            dir,
        },
        port,
    ))
}

/// A throwaway CA and a server certificate it signed, valid for localhost and 127.0.0.1,
/// so the tests can exercise every sslmode. Returns the CA certificate's path.
fn make_certificates(root: &Path, as_postgres: bool) -> Result<PathBuf> {
    let tls = root.join("tls");
    fs::create_dir_all(&tls)?;
    let run = |args: &[&str]| -> Result<()> {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(&tls)
            .stdin(Stdio::null())
            .output()
            .context("running openssl (apt-get install -y openssl)")?;
        if !out.status.success() {
            bail!(
                "openssl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=citus-mcp test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    ])?;
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ])?;
    fs::write(
        tls.join("san.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )?;
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "san.ext",
        "-out",
        "server.crt",
    ])?;
    if as_postgres {
        let st = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&tls)
            .status()?;
        if !st.success() {
            bail!("chown of {} failed", tls.display());
        }
    }
    // PostgreSQL refuses a private key readable by others.
    let st = Command::new("chmod")
        .arg("600")
        .arg(tls.join("server.key"))
        .status()?;
    if !st.success() {
        bail!("chmod of the server key failed");
    }
    Ok(tls.join("ca.crt"))
}

/// Runs a server binary, as the postgres user (through runuser) when we are root.
fn run_pg(as_postgres: bool, bin: &Path, args: &[&str], cwd: Option<&Path>) -> Result<Output> {
    let mut cmd = if as_postgres {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin);
        c
    } else {
        Command::new(bin)
    };
    cmd.args(args).stdin(Stdio::null());
    if let Some(d) = cwd {
        cmd.current_dir(d);
    }
    // pg_ctl start leaves the postmaster running with our pipes unless its output is
    // redirected (-l); with -l, output() returns as soon as pg_ctl exits.
    cmd.output()
        .with_context(|| format!("running {}", bin.display()))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("binding a probe socket")?;
    Ok(l.local_addr()?.port())
}

fn has_server_bins(dir: &Path) -> bool {
    ["postgres", "initdb", "pg_ctl"]
        .iter()
        .all(|b| dir.join(b).is_file())
}

/// The newest `/usr/lib/postgresql/<v>/bin` with postgres, initdb and pg_ctl.
fn find_bindir() -> Result<PathBuf> {
    if let Ok(d) = std::env::var("CITUS_TEST_PG_BINDIR") {
        let p = PathBuf::from(d);
        if has_server_bins(&p) {
            return Ok(p);
        }
        bail!(
            "CITUS_TEST_PG_BINDIR={} has no postgres/initdb/pg_ctl; {INSTALL_HINT}",
            p.display()
        );
    }
    let mut best: Option<(u32, PathBuf)> = None;
    if let Ok(entries) = fs::read_dir("/usr/lib/postgresql") {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Ok(ver) = name.split('.').next().unwrap_or("").parse::<u32>() else {
                continue;
            };
            let bin = e.path().join("bin");
            if has_server_bins(&bin) && best.as_ref().is_none_or(|(v, _)| ver > *v) {
                best = Some((ver, bin));
            }
        }
    }
    if let Some((_, p)) = best {
        return Ok(p);
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has_server_bins(&p) {
            return Ok(p);
        }
    }
    bail!("PostgreSQL server binaries (postgres, initdb, pg_ctl) not found; {INSTALL_HINT}")
}

fn find_psql(bindir: Option<&Path>) -> PathBuf {
    if let Some(d) = bindir {
        let p = d.join("psql");
        if p.is_file() {
            return p;
        }
    }
    PathBuf::from("psql")
}
