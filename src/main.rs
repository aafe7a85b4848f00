//! The `citus-mcp` command line: `serve` (the default), `lint`, `approve` and `tools`.
//!
//! This is the only place that prints to stdout outside the MCP transport, the only
//! user of anyhow, and the one that maps failures to exit codes: 0 ok, 1 lint
//! findings or a failed tool call, 2 usage, configuration or I/O errors.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use rmcp::ServiceExt as _;
use tokio_util::sync::CancellationToken;

use citus_mcp::approval::{self, ApprovalSettings};
use citus_mcp::config::{self, Config, Flags, LedgerKind, LogFormat, Mode};
use citus_mcp::db::{Db, DbConfig, Dsn};
use citus_mcp::engine::{Engine, Settings};
use citus_mcp::lint;
use citus_mcp::registry::Registry;
use citus_mcp::server::{self, Server};
use citus_mcp::watch::Reloader;

/// An MCP server that lets AI assistants inspect and operate Citus clusters safely.
#[derive(Parser)]
#[command(name = "citus-mcp", version, about, long_about = None, subcommand_negates_reqs = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Connection string of the coordinator (same as --coordinator-dsn).
    dsn: Option<String>,
    #[command(flatten)]
    opts: Opts,
}

#[derive(Subcommand)]
enum Command {
    /// Serve MCP over stdio (the default), or over HTTP with --http.
    Serve {
        /// Connection string of the coordinator (same as --coordinator-dsn).
        dsn: Option<String>,
    },
    /// Check tool and prompt files; exit 1 when any error is found.
    Lint {
        /// Files or folders to check; the built-in tools and prompts when none.
        paths: Vec<PathBuf>,
        /// Also prepare every example's statements against this cluster.
        #[arg(long, value_name = "DSN")]
        db: Option<String>,
        /// How findings are printed: human (rustc-style) or json (for CI).
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
    },
    /// Approve one call of an execute tool: prints an approval token for it.
    ///
    /// Run it with the server's configuration (the same approval_secret); the token
    /// works for that tool with exactly these arguments, once, until it expires.
    Approve {
        /// The execute tool to approve.
        tool: String,
        /// Its arguments as a JSON object, without approval_token.
        #[arg(long, default_value = "{}")]
        args: String,
        /// Seconds the token stays valid (capped by approval_max_ttl_seconds).
        #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
        ttl: Option<u64>,
    },
    /// List, show or call tools without an MCP client.
    Tools {
        #[command(subcommand)]
        command: ToolsCommand,
    },
    /// Bearer tokens for `serve --http`.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Make a random token: prints it on stdout, and its configuration entry (with
    /// only its hash) on stderr.
    New {
        /// Who will hold it; shown in the log and the approval audit log.
        name: String,
        /// Comma-separated safety classes it may call: read_only, plan, execute.
        #[arg(long, default_value = "read_only,plan")]
        classes: String,
        /// Comma-separated clusters (names under `clusters`) where it holds; every one when
        /// left out.
        #[arg(long)]
        clusters: Option<String>,
    },
    /// Prints the SHA-256 of a token read from stdin, for http.tokens.
    Hash,
}

#[derive(Subcommand)]
enum ToolsCommand {
    /// The tools this configuration serves: name, safety, toolset, bytes in tools/list, title.
    List {
        /// Connection string of the coordinator (same as --coordinator-dsn).
        dsn: Option<String>,
    },
    /// One tool's manual (as the resource citus://tools/NAME serves it).
    Show {
        /// The tool's name.
        name: String,
        /// Print the tool's tools/list entry as JSON instead.
        #[arg(long)]
        json: bool,
    },
    /// Call a tool and print its result as JSON.
    Call {
        /// The tool's name.
        name: String,
        /// The arguments as a JSON object.
        #[arg(long, default_value = "{}")]
        args: String,
        /// Connection string of the coordinator (same as --coordinator-dsn).
        dsn: Option<String>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    /// rustc-style findings with file, line and column.
    Human,
    /// one JSON document, for CI.
    Json,
}

/// Configuration flags; each also reads CITUS_MCP_<KEY> and the config file. Each has
/// a one-line help under its heading; README's configuration table lists the same keys
/// and flags (a test keeps them in step).
#[derive(Args)]
struct Opts {
    /// Configuration file (YAML, JSON or TOML by extension).
    #[arg(short = 'c', long, global = true, value_name = "FILE", help_heading = CONNECTION)]
    config: Option<PathBuf>,
    /// The cluster to use, by its name under `clusters` (needed when there are several).
    #[arg(long, global = true, value_name = "NAME", help_heading = CONNECTION)]
    cluster: Option<String>,
    /// Connection string of the coordinator: a URL or key=value (the positional DSN).
    #[arg(long, global = true, value_name = "DSN", help_heading = CONNECTION)]
    coordinator_dsn: Option<String>,
    /// User to connect as, overriding the DSN's.
    #[arg(long, global = true, value_name = "USER", help_heading = CONNECTION)]
    coordinator_user: Option<String>,
    /// Password, overriding the DSN's; prefer CITUS_MCP_COORDINATOR_PASSWORD (flags show in process lists).
    #[arg(long, global = true, hide_env_values = true, value_name = "PASSWORD", help_heading = CONNECTION)]
    coordinator_password: Option<String>,
    /// Comma-separated worker connection strings (for --fanout direct).
    #[arg(long, global = true, value_name = "DSNS", help_heading = CONNECTION)]
    worker_dsns: Option<String>,
    /// How fan-out tools reach the nodes: coordinator (run_command_on_workers) or direct.
    #[arg(long, global = true, value_name = "HOW", help_heading = CONNECTION)]
    fanout: Option<String>,
    /// read_only or admin.
    #[arg(long, global = true, value_name = "MODE", help_heading = SAFETY)]
    mode: Option<String>,
    /// In admin mode, offer execute tools (they still need an approval token).
    #[arg(long, global = true, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL", help_heading = SAFETY)]
    allow_execute: Option<String>,
    /// HMAC key for approval tokens; prefer CITUS_MCP_APPROVAL_SECRET (flags show in process lists).
    #[arg(long, global = true, hide_env_values = true, value_name = "SECRET", help_heading = SAFETY)]
    approval_secret: Option<String>,
    /// The longest an approval token lives, whatever its issuer asks.
    #[arg(long, global = true, value_name = "SECONDS", help_heading = SAFETY)]
    approval_max_ttl_seconds: Option<String>,
    /// Where used approval nonces are kept: file or coordinator.
    #[arg(long, global = true, value_name = "WHERE", help_heading = SAFETY)]
    approval_ledger: Option<String>,
    /// The nonce ledger file (approval_ledger: file).
    #[arg(long, global = true, value_name = "FILE", help_heading = SAFETY)]
    approval_ledger_path: Option<String>,
    /// The approval audit log (JSON lines).
    #[arg(long, global = true, value_name = "FILE", help_heading = SAFETY)]
    approval_audit_log: Option<String>,
    /// Let clients without MCP elicitation get tokens without a person.
    #[arg(long, global = true, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL", help_heading = SAFETY)]
    allow_self_issue: Option<String>,
    /// Result cache lifetime for tools that do not set cache_ttl_s.
    #[arg(long, global = true, value_name = "SECONDS", help_heading = LIMITS)]
    cache_ttl_seconds: Option<String>,
    /// Cache results of read-only tools.
    #[arg(long, global = true, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL", help_heading = LIMITS)]
    enable_caching: Option<String>,
    /// Rows per query at most.
    #[arg(long, global = true, value_name = "N", help_heading = LIMITS)]
    max_rows: Option<String>,
    /// Bytes of JSON per result at most; a cut result says how to get the rest.
    #[arg(long, global = true, value_name = "BYTES", help_heading = LIMITS)]
    max_text_bytes: Option<String>,
    /// How long to wait for a connection to a node.
    #[arg(long, global = true, value_name = "SECONDS", help_heading = LIMITS)]
    connect_timeout_seconds: Option<String>,
    /// Connections to the coordinator at most, shared by all calls.
    #[arg(long, global = true, value_name = "N", help_heading = LIMITS)]
    pool_size: Option<String>,
    /// Per statement at most (also each connection's session ceiling).
    #[arg(long, global = true, value_name = "MS", help_heading = LIMITS)]
    statement_timeout_ms: Option<String>,
    /// Comma-separated folders of extra tool files (watched).
    #[arg(long, global = true, value_name = "DIRS", help_heading = TOOLS)]
    tools_dirs: Option<String>,
    /// Comma-separated folders of extra prompt files (watched).
    #[arg(long, global = true, value_name = "DIRS", help_heading = TOOLS)]
    prompts_dirs: Option<String>,
    /// Comma-separated tool or prompt names not to serve.
    #[arg(long, global = true, value_name = "NAMES", help_heading = TOOLS)]
    disabled_tools: Option<String>,
    /// Comma-separated toolsets to serve: inspect, monitor, advise, operate, your own, or all.
    #[arg(long, global = true, value_name = "NAMES", help_heading = TOOLS)]
    toolsets: Option<String>,
    /// Your own toolsets as JSON, e.g. '{"oncall": ["monitor", "citus_advisor"]}'.
    #[arg(long, global = true, value_name = "JSON", help_heading = TOOLS)]
    toolset_groups: Option<String>,
    /// Serve MCP over Streamable HTTP at http://ADDR/mcp instead of stdio (http.listen).
    #[arg(long, global = true, value_name = "ADDR", help_heading = HTTP)]
    http: Option<String>,
    /// Keep no HTTP sessions, for replicas behind a round-robin balancer (http.stateless).
    #[arg(long, global = true, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL", help_heading = HTTP)]
    http_stateless: Option<String>,
    /// error, warn, info, debug or trace (RUST_LOG overrides).
    #[arg(long, global = true, value_name = "LEVEL", help_heading = LOGGING)]
    log_level: Option<String>,
    /// text, or json for one JSON object per line (logs go to stderr).
    #[arg(long, global = true, value_name = "FORMAT", help_heading = LOGGING)]
    log_format: Option<String>,
}

/// The headings `--help` groups the options under.
const CONNECTION: &str = "Connection";
const SAFETY: &str = "Safety";
const LIMITS: &str = "Limits";
const TOOLS: &str = "Tools";
const HTTP: &str = "HTTP";
const LOGGING: &str = "Logging";

impl Opts {
    fn flags(&self, dsn: Option<&String>) -> Flags {
        let pairs = [
            ("coordinator_dsn", self.coordinator_dsn.as_ref().or(dsn)),
            ("coordinator_user", self.coordinator_user.as_ref()),
            ("coordinator_password", self.coordinator_password.as_ref()),
            ("worker_dsns", self.worker_dsns.as_ref()),
            ("fanout", self.fanout.as_ref()),
            ("mode", self.mode.as_ref()),
            ("allow_execute", self.allow_execute.as_ref()),
            ("approval_secret", self.approval_secret.as_ref()),
            (
                "approval_max_ttl_seconds",
                self.approval_max_ttl_seconds.as_ref(),
            ),
            ("approval_ledger", self.approval_ledger.as_ref()),
            ("approval_ledger_path", self.approval_ledger_path.as_ref()),
            ("approval_audit_log", self.approval_audit_log.as_ref()),
            ("allow_self_issue", self.allow_self_issue.as_ref()),
            ("cache_ttl_seconds", self.cache_ttl_seconds.as_ref()),
            ("enable_caching", self.enable_caching.as_ref()),
            ("max_rows", self.max_rows.as_ref()),
            ("max_text_bytes", self.max_text_bytes.as_ref()),
            (
                "connect_timeout_seconds",
                self.connect_timeout_seconds.as_ref(),
            ),
            ("pool_size", self.pool_size.as_ref()),
            ("statement_timeout_ms", self.statement_timeout_ms.as_ref()),
            ("log_level", self.log_level.as_ref()),
            ("log_format", self.log_format.as_ref()),
            ("tools_dirs", self.tools_dirs.as_ref()),
            ("prompts_dirs", self.prompts_dirs.as_ref()),
            ("disabled_tools", self.disabled_tools.as_ref()),
            ("toolsets", self.toolsets.as_ref()),
            ("toolset_groups", self.toolset_groups.as_ref()),
            ("http.listen", self.http.as_ref()),
            ("http.stateless", self.http_stateless.as_ref()),
        ];
        pairs
            .into_iter()
            .filter_map(|(k, v)| Some((k.to_string(), v?.clone())))
            .collect()
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let dsn = match &cli.command {
        // The DSN is accepted wherever a user puts it: before the subcommand or after.
        Some(Command::Serve { dsn })
        | Some(Command::Tools {
            command: ToolsCommand::List { dsn } | ToolsCommand::Call { dsn, .. },
        }) => dsn.clone().or(cli.dsn.clone()),
        _ => cli.dsn.clone(),
    };
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let config = match config::load(
        cli.opts.config.as_deref(),
        &env,
        &cli.opts.flags(dsn.as_ref()),
    ) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("citus-mcp: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(&config.log_level, config.log_format);
    // stdio serves one client, and one thread serves it best: the MCP loop, the calls and
    // the pipes (non-blocking, on the reactor) share it, so a `ping` costs one wake-up
    // instead of three or four, and a 1,000-row call's decoding still overlaps with the
    // database's work on the other core (issue #8, README: Performance). HTTP serves a
    // team: a worker per core. The one-shot CLI commands need no workers either.
    let http =
        matches!(cli.command, None | Some(Command::Serve { .. })) && config.http.listen.is_some();
    let mut builder = if http {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("citus-mcp: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli.command, config, env, cli.opts.cluster)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("citus-mcp: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn init_logging(level: &str, format: LogFormat) {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    // `RUST_LOG` takes `target=level` directives and a bare default level, e.g.
    // `citus_mcp=debug,tokio_postgres=info,warn`; one it cannot read is ignored.
    // The configuration's level is one of the five (its schema says so).
    let filter: tracing_subscriber::filter::Targets = std::env::var("RUST_LOG")
        .ok()
        .and_then(|directives| directives.parse().ok())
        .or_else(|| format!("citus_mcp={level},rmcp=warn,warn").parse().ok())
        .unwrap_or_default();
    // rmcp's debug and trace lines carry whole messages (approval tokens, results), and
    // tokio-postgres's the values bound to statements: whatever RUST_LOG says, neither
    // logs below info. A filter on each event, since a directive for a module of theirs
    // (`rmcp::service=trace`) would outrank one for the crate.
    let quiet = tracing_subscriber::filter::filter_fn(|meta| {
        let chatty = ["rmcp", "tokio_postgres"].iter().any(|c| {
            meta.target()
                .strip_prefix(c)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
        });
        !chatty || *meta.level() <= tracing::Level::INFO
    });
    // stdout belongs to the MCP protocol: logs go to stderr only.
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(false);
    let subscriber = tracing_subscriber::registry().with(filter).with(quiet);
    match format {
        LogFormat::Text => subscriber.with(logs).init(),
        // One object per line: timestamp, level, target, the message and its fields.
        LogFormat::Json => subscriber.with(logs.json().flatten_event(true)).init(),
    }
}

async fn run(
    command: Option<Command>,
    config: Config,
    env: BTreeMap<String, String>,
    cluster: Option<String>,
) -> anyhow::Result<ExitCode> {
    match command {
        None | Some(Command::Serve { .. }) => serve(config, &env, cluster.as_deref()).await,
        Some(Command::Approve { tool, args, ttl }) => {
            // The token is sealed with the chosen cluster's secret.
            let config = config.one(cluster.as_deref())?;
            approve(&config, &env, &tool, &args, ttl)
        }
        Some(Command::Token { command }) => token(command),
        Some(Command::Lint { paths, db, format }) => {
            if let Some(missing) = paths.iter().find(|p| !p.exists()) {
                anyhow::bail!("lint: {} does not exist", missing.display());
            }
            let db = match db {
                Some(dsn) => Some(
                    connect(&Config {
                        coordinator_dsn: Some(config::Secret::new(dsn)),
                        ..config.clone()
                    })?
                    .context("--db needs a connection string")?,
                ),
                None => None,
            };
            let (files, mut diags) = lint::gather(&paths);
            diags.extend(lint::run(&files, db.as_ref()).await);
            let out = match format {
                Format::Human => lint::render_human(&diags, &files),
                Format::Json => lint::render_json(&diags, &files),
            };
            print_out(out.trim_end());
            Ok(ExitCode::from(lint::exit_code(&diags) as u8))
        }
        Some(Command::Tools { command }) => {
            let engine = engine(&config.one(cluster.as_deref())?, &env)?;
            match command {
                ToolsCommand::List { .. } => {
                    let tools = engine.visible_tools();
                    let mut total = 0;
                    for t in &tools {
                        let safety = serde_json::to_value(t.spec.safety)?;
                        let bytes = server::list_entry_bytes(t);
                        total += bytes;
                        print_out(&format!(
                            "{}\t{}\t{}\t{bytes}\t{}",
                            t.spec.name,
                            safety.as_str().unwrap_or(""),
                            t.spec.toolset.map_or("-", |s| s.as_str()),
                            t.spec.title.as_deref().unwrap_or("")
                        ));
                    }
                    // The budget of issue #8, on stderr so that stdout stays one tool a line.
                    eprintln!(
                        "citus-mcp: {} tools, {total} bytes in tools/list ({} per tool)",
                        tools.len(),
                        total.checked_div(tools.len()).unwrap_or(0)
                    );
                    Ok(ExitCode::SUCCESS)
                }
                ToolsCommand::Show { name, json } => {
                    let registry = engine.registry();
                    let tool = registry
                        .tools
                        .get(&name)
                        .with_context(|| format!("no tool named `{name}`"))?;
                    if json {
                        print_out(&serde_json::to_string_pretty(&server::mcp_tool(tool))?);
                    } else {
                        print_out(citus_mcp::manual::markdown(tool).trim_end());
                    }
                    Ok(ExitCode::SUCCESS)
                }
                ToolsCommand::Call { name, args, .. } => {
                    let args: serde_json::Value =
                        serde_json::from_str(&args).context("--args must be a JSON object")?;
                    match engine
                        .call(&name, args, &CancellationToken::new())
                        .await
                        .map_err(citus_mcp::engine::ToolError::capped)
                    {
                        Ok(out) => {
                            print_out(&out.structured.to_string());
                            Ok(ExitCode::SUCCESS)
                        }
                        Err(e) => {
                            print_out(&serde_json::json!({"error": e}).to_string());
                            eprintln!("{}", e.text());
                            Ok(ExitCode::from(1))
                        }
                    }
                }
            }
        }
    }
}

/// Prints a line to stdout; a closed pipe (`| head`) is not an error worth a panic.
fn print_out(line: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
}

/// The coordinator pool, if a DSN is configured.
fn connect(config: &Config) -> anyhow::Result<Option<Db>> {
    let Some(text) = &config.coordinator_dsn else {
        return Ok(None);
    };
    let mut dsn = Dsn::parse(text.expose()).context("coordinator_dsn")?;
    if let Some(user) = &config.coordinator_user {
        dsn.config.user(user);
    }
    if let Some(pw) = &config.coordinator_password {
        dsn.config.password(pw.expose());
    }
    let worker_dsns = config
        .worker_dsns
        .iter()
        .map(|w| Dsn::parse(w.expose()))
        .collect::<Result<Vec<_>, _>>()
        .context("worker_dsns")?;
    let db = Db::new(DbConfig {
        dsn,
        worker_dsns,
        connect_timeout: Duration::from_secs(config.connect_timeout_seconds),
        pool_size: config.pool_size as usize,
        application_name: format!("citus-mcp {}", env!("CARGO_PKG_VERSION")),
        timeout_ceiling: Duration::from_millis(config.statement_timeout_ms.into()),
    })
    .context("coordinator_dsn")?;
    Ok(Some(db))
}

/// Issues a token for one call, as a person at a terminal approves it.
fn approve(
    config: &Config,
    env: &BTreeMap<String, String>,
    tool: &str,
    args: &str,
    ttl: Option<u64>,
) -> anyhow::Result<ExitCode> {
    let settings = ApprovalSettings::from_config(config, env)?;
    let args: serde_json::Value =
        serde_json::from_str(args).context("--args must be a JSON object")?;
    let serde_json::Value::Object(args) = args else {
        anyhow::bail!("--args must be a JSON object");
    };
    // Only the tool files are needed to check what is approved; no database.
    let registry = Reloader::initial(
        &config.tools_dirs,
        &config.prompts_dirs,
        &config.disabled_tools,
        &config.toolsets()?,
        &config.warnings,
    );
    let engine = Engine::new(registry, None, Settings::default());
    if let Err(e) = approval::check_action(&engine, tool, &args) {
        anyhow::bail!("{}", e.capped().text());
    }
    let issuer = approval::Issuer::open(&settings, approval::system_clock())?;
    let user = env.get("USER").or_else(|| env.get("LOGNAME")).cloned();
    let issued = issuer
        .issue(tool, &args, ttl, "cli", "cli", user)
        .map_err(|e| anyhow::anyhow!("{}", e.text()))?;
    print_out(&issued.token);
    eprintln!(
        "citus-mcp: approves one call of `{tool}` with these arguments until {} ({} s); approval id {}:\n{}",
        approval::audit::timestamp(issued.expires_at),
        issued.ttl_seconds,
        issued.approval_id,
        approval::token::shown_args(&args),
    );
    if approval::token::shown_args(&args) != approval::token::canonical_args(&args) {
        eprintln!(
            "citus-mcp: note: the arguments hold characters that do not show, written \\u{{...}} above: make sure they are what you meant to approve"
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `token new` and `token hash`: the token goes to stdout only, never to a log.
fn token(command: TokenCommand) -> anyhow::Result<ExitCode> {
    use citus_mcp::httpd::auth;
    match command {
        TokenCommand::New {
            name,
            classes,
            clusters,
        } => {
            let classes: Vec<&str> = classes.split(',').map(str::trim).collect();
            if let Some(bad) = classes
                .iter()
                .find(|c| !["read_only", "plan", "execute"].contains(c))
            {
                anyhow::bail!("--classes: `{bad}` is not read_only, plan or execute");
            }
            let clusters: Vec<&str> = clusters
                .iter()
                .flat_map(|c| c.split(','))
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect();
            let token = auth::new_token()?;
            print_out(&token);
            let only = if clusters.is_empty() {
                String::new()
            } else {
                format!("\n    clusters: [{}]", clusters.join(", "))
            };
            eprintln!(
                "citus-mcp: add this to http.tokens (or to the list in http.tokens_file):\n  \
                 - name: {name}\n    sha256: {}\n    classes: [{}]{only}",
                auth::hash_hex(&token),
                classes.join(", ")
            );
        }
        TokenCommand::Hash => {
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .context("cannot read the token from stdin")?;
            print_out(&auth::hash_hex(line.trim_end_matches(['\r', '\n'])));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The engine of one configuration, over a snapshot of its own.
fn engine(config: &Config, env: &BTreeMap<String, String>) -> anyhow::Result<Arc<Engine>> {
    engine_over(Arc::new(initial_registry(config)?), config, env)
}

/// The first snapshot of the configured tool and prompt files.
fn initial_registry(config: &Config) -> anyhow::Result<Registry> {
    Ok(Reloader::initial(
        &config.tools_dirs,
        &config.prompts_dirs,
        &config.disabled_tools,
        &config.toolsets()?,
        &config.warnings,
    ))
}

/// The engine of one configuration (one cluster) over a snapshot it may share.
fn engine_over(
    registry: Arc<Registry>,
    config: &Config,
    env: &BTreeMap<String, String>,
) -> anyhow::Result<Arc<Engine>> {
    let toolsets = config.toolsets()?;
    let settings = Settings {
        admin: config.mode == Mode::Admin,
        allow_execute: config.allow_execute,
        max_rows: config.max_rows,
        max_bytes: config.max_text_bytes,
        statement_timeout_ms: config.statement_timeout_ms,
        cache_ttl_s: config.cache_ttl_seconds,
        enable_caching: config.enable_caching,
        fanout: config.fanout,
        toolsets,
        cluster: config.cluster.clone(),
    };
    let mut engine = Engine::sharing(registry, connect(config)?, settings)
        .with_plugins(citus_mcp::plugins::all());
    // Admin mode checks approval tokens, so it cannot start without what they need.
    if config.mode == Mode::Admin {
        let approvals = ApprovalSettings::from_config(config, env)?;
        let ledger_db = match approvals.ledger {
            LedgerKind::Coordinator => connect(config)?,
            LedgerKind::File => None,
        };
        let gate = approval::Gate::open(&approvals, ledger_db, approval::system_clock())?;
        engine = engine.with_approvals(Arc::new(gate));
    }
    Ok(Arc::new(engine))
}

/// Warns, in the background, about worker DSNs that match no node of the cluster.
fn check_worker_dsns(config: &Config, engine: Arc<Engine>, reloader: Reloader) {
    let cluster = config.cluster.clone();
    // connect() has parsed these already; one that did not parse stopped the server.
    let workers: Vec<Dsn> = config
        .worker_dsns
        .iter()
        .filter_map(|w| Dsn::parse(w.expose()).ok())
        .collect();
    let timeout = Duration::from_secs(config.connect_timeout_seconds);
    tokio::spawn(async move {
        let Some(db) = engine.db() else { return };
        let mut warnings = citus_mcp::checks::worker_dsns(db, &workers, timeout).await;
        // Every cluster's server_info shows every warning: each says whose it is.
        if let Some(name) = cluster {
            for w in &mut warnings {
                *w = format!("cluster `{name}`: {w}");
            }
        }
        if !warnings.is_empty() {
            // add_warnings logs them and rebuilds the snapshot: blocking file I/O.
            let _ = tokio::task::spawn_blocking(move || reloader.add_warnings(warnings)).await;
        }
    });
}

/// Logs, once the coordinator answers, whether the role citus-mcp connects as can do
/// more than a read-only server needs (also in `server_info`).
fn warn_about_role(engine: Arc<Engine>, cluster: Option<String>) {
    tokio::spawn(async move {
        let Some(db) = engine.db() else { return };
        match db.facts().await {
            Ok(facts) => {
                for w in facts.role_warnings() {
                    tracing::warn!(cluster, "{w}");
                }
            }
            Err(e) => tracing::debug!(
                cluster,
                "role not checked: {}",
                citus_mcp::redact::shown(&e)
            ),
        }
    });
}

async fn serve(
    config: Config,
    env: &BTreeMap<String, String>,
    cluster: Option<&str>,
) -> anyhow::Result<ExitCode> {
    // An HTTP configuration that cannot be served safely stops here, before any I/O.
    let http = match &config.http.listen {
        Some(_) => Some(citus_mcp::httpd::Prepared::new(&config.http)?),
        None => None,
    };
    // HTTP serves every cluster (or the one chosen), each at /mcp/NAME; stdio serves one.
    let served = match http {
        Some(_) => config.served(cluster)?,
        None => vec![config.one(cluster)?],
    };
    // One set of tool files, one snapshot: each cluster's engine serves it.
    let registry = Arc::new(initial_registry(&config)?);
    let mut engines = Vec::new();
    for c in &served {
        let engine = engine_over(registry.clone(), c, env).with_context(|| match &c.cluster {
            Some(name) => format!("cluster `{name}`"),
            None => "the coordinator".into(),
        })?;
        engines.push(engine);
    }
    let engine = engines[0].clone();
    let (changes, _) = tokio::sync::broadcast::channel(16);
    let reloader = Reloader {
        engine: engine.clone(),
        followers: engines[1..].to_vec(),
        tool_dirs: config.tools_dirs.clone(),
        prompt_dirs: config.prompts_dirs.clone(),
        disabled: config.disabled_tools.clone(),
        changes: changes.clone(),
        warnings: std::sync::Arc::new(std::sync::Mutex::new(config.warnings.clone())),
    };
    let checker = reloader.clone();
    let _watcher = reloader
        .watch()
        .context("cannot start watching the tool folders")?;
    for (c, e) in served.iter().zip(&engines) {
        check_worker_dsns(c, e.clone(), checker.clone());
        warn_about_role(e.clone(), c.cluster.clone());
        if e.db().is_none() {
            tracing::warn!(
                "no coordinator_dsn configured: only tools that need no database will work"
            );
        }
    }
    if let Some(http) = http {
        let served = served
            .iter()
            .zip(engines)
            .map(|(c, engine)| citus_mcp::httpd::Served {
                name: c.cluster.clone(),
                engine,
            })
            .collect();
        citus_mcp::httpd::serve(http, served, changes).await?;
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(db) = engine.db() {
        tracing::info!(coordinator = %db.target(), cluster = served[0].cluster, tools = engine.visible_tools().len(), "serving MCP on stdio");
    }
    // Our own line reader in front of rmcp: it answers every line, malformed ones
    // included, and owns stdout (see citus_mcp::stdio).
    let (read, write) = rmcp::transport::stdio_pipes();
    let (transport, pumps) = citus_mcp::stdio::start(read, write);
    let service = Server::new(engine.clone(), changes)
        .with_outbox(transport.outbox())
        .serve(transport)
        .await
        .context("MCP initialization failed")?;
    let ended = service.waiting().await;
    // The client is gone: calls still in flight will never be answered, so their
    // statements are cancelled on every node before the process exits.
    if let Some(db) = engine.db() {
        let cancel = db.cancel_running();
        if tokio::time::timeout(std::time::Duration::from_secs(3), cancel)
            .await
            .is_err()
        {
            tracing::warn!("could not cancel the statements in flight within 3 s");
        }
    }
    ended.context("MCP session ended with an error")?;
    pumps.finish().await.context("cannot write to stdout")?;
    Ok(ExitCode::SUCCESS)
}
