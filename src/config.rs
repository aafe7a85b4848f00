//! Configuration: flags > environment > file > defaults, into one typed [`Config`].
//!
//! Every key has one name in three spellings: `max_rows` in a file,
//! `CITUS_MCP_MAX_ROWS` in the environment, `--max-rows` on the command line. The
//! merged object is checked against `schemas/config.schema.json`; an error names the
//! key and where its value came from.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::echo;

/// The JSON Schema of the configuration file.
pub const CONFIG_SCHEMA: &str = include_str!("../schemas/config.schema.json");

static SCHEMA: LazyLock<Value> =
    LazyLock::new(|| serde_json::from_str(CONFIG_SCHEMA).expect("the config schema is valid JSON"));

/// A value that must never be printed.
#[derive(Clone, Deserialize, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// read_only (the default) or admin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    ReadOnly,
    Admin,
}

/// Where the approval nonce ledger lives: a local file (one host), or a table on the
/// coordinator (several server replicas).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LedgerKind {
    #[default]
    File,
    Coordinator,
}

/// How log lines look on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// The effective configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Config {
    /// May hold a password, so it is a [`Secret`] too.
    pub coordinator_dsn: Option<Secret>,
    pub coordinator_user: Option<String>,
    pub coordinator_password: Option<Secret>,
    pub worker_dsns: Vec<Secret>,
    pub fanout: crate::db::fanout::FanOutMode,
    pub mode: Mode,
    pub allow_execute: bool,
    pub approval_secret: Option<Secret>,
    /// The longest an approval token lives, whatever its issuer asks.
    pub approval_max_ttl_seconds: u64,
    /// Where used approval nonces are remembered.
    pub approval_ledger: LedgerKind,
    /// The file of [`LedgerKind::File`]; a default under the state folder when unset.
    pub approval_ledger_path: Option<PathBuf>,
    /// The audit log of approvals (JSON lines); a default under the state folder when unset.
    pub approval_audit_log: Option<PathBuf>,
    /// Issue tokens to clients that cannot ask a person (no MCP elicitation).
    pub allow_self_issue: bool,
    pub cache_ttl_seconds: u64,
    pub enable_caching: bool,
    pub max_rows: u32,
    pub max_text_bytes: u32,
    pub connect_timeout_seconds: u64,
    /// Connections to the coordinator at most.
    pub pool_size: u32,
    pub statement_timeout_ms: u32,
    pub log_level: String,
    pub log_format: LogFormat,
    pub tools_dirs: Vec<PathBuf>,
    pub prompts_dirs: Vec<PathBuf>,
    pub disabled_tools: Vec<String>,
    /// The toolsets served (built-in or from `toolset_groups`); empty or `all` serves every tool.
    pub toolsets: Vec<String>,
    /// The operator's own toolsets: a name and its members (built-in toolsets or tool names).
    pub toolset_groups: BTreeMap<String, Vec<String>>,
    /// Serving over Streamable HTTP instead of stdio (`http.listen`), and how.
    pub http: crate::httpd::HttpConfig,
    /// Where each key that is not a default came from.
    #[serde(skip)]
    pub sources: BTreeMap<String, Source>,
    /// The configured clusters by name (`clusters`), each a whole configuration: its own
    /// keys over the top level's. Empty for the single-DSN configuration.
    #[serde(skip)]
    pub clusters: BTreeMap<String, Config>,
    /// The name of the cluster this configuration is for, when it is one of `clusters`.
    #[serde(skip)]
    pub cluster: Option<String>,
    /// Mistakes that do not stop the server: `CITUS_MCP_*` variables it does not read.
    #[serde(skip)]
    pub warnings: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            coordinator_dsn: None,
            coordinator_user: None,
            coordinator_password: None,
            worker_dsns: vec![],
            fanout: crate::db::fanout::FanOutMode::Coordinator,
            mode: Mode::ReadOnly,
            allow_execute: false,
            approval_secret: None,
            approval_max_ttl_seconds: 900,
            approval_ledger: LedgerKind::File,
            approval_ledger_path: None,
            approval_audit_log: None,
            allow_self_issue: false,
            cache_ttl_seconds: 5,
            enable_caching: true,
            max_rows: 1000,
            max_text_bytes: 50_000,
            connect_timeout_seconds: 10,
            pool_size: 8,
            statement_timeout_ms: 30_000,
            log_level: "info".into(),
            log_format: LogFormat::Text,
            tools_dirs: vec![],
            prompts_dirs: vec![],
            disabled_tools: vec![],
            toolsets: vec![],
            toolset_groups: BTreeMap::new(),
            http: Default::default(),
            sources: BTreeMap::new(),
            clusters: BTreeMap::new(),
            cluster: None,
            warnings: Vec::new(),
        }
    }
}

/// `CITUS_MCP_*` variables that are no setting (a misspelt one would otherwise be ignored
/// without a word), each with the setting's variable it is nearest to, if one is close.
fn unknown_variables(env: &BTreeMap<String, String>) -> Vec<String> {
    /// Read elsewhere: the config file's path, and the test suite's and benchmark's own.
    const OTHERS: [&str; 2] = ["CITUS_MCP_TEST_", "CITUS_MCP_BENCH_"];
    let mut known: Vec<String> = settable_keys().iter().map(|k| env_var(k)).collect();
    known.push("CITUS_MCP_CONFIG".into());
    env.keys()
        .filter(|k| k.starts_with("CITUS_MCP_") && !known.contains(k))
        .filter(|k| !OTHERS.iter().any(|o| k.starts_with(o)))
        .map(|k| {
            let near = known
                .iter()
                .map(|v| (edits(k, v), v))
                .filter(|(d, _)| *d <= 2)
                .min();
            let k = crate::echo::cap(k);
            match near {
                Some((_, v)) => {
                    format!("environment variable {k} is not a setting: did you mean {v}?")
                }
                None => format!("environment variable {k} is not a setting citus-mcp reads"),
            }
        })
        .collect()
}

/// The variable that sets `key` (`http.listen` → `CITUS_MCP_HTTP_LISTEN`).
fn env_var(key: &str) -> String {
    format!("CITUS_MCP_{}", key.replace('.', "_").to_ascii_uppercase())
}

/// Levenshtein distance, for a suggestion.
fn edits(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

/// Keys whose values are never echoed: passwords, secrets, and connection strings (which
/// may carry a password).
fn is_secret(key: &str) -> bool {
    key.contains("password") || key.contains("secret") || key.contains("dsn") || key == "clusters"
}

/// Keys of a cluster that it never takes from the top level: its connection, and its
/// approval secret (a secret shared by two clusters would let a token approved for one
/// run on the other).
const NOT_INHERITED: [&str; 5] = [
    "coordinator_dsn",
    "coordinator_user",
    "coordinator_password",
    "worker_dsns",
    "approval_secret",
];

/// A cluster name is part of a URL (`/mcp/NAME`) and of metric labels.
pub fn valid_cluster_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.len() <= 63
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    File(PathBuf),
    Env(String),
    Flag(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::File(p) => write!(f, "config file {}", p.display()),
            Source::Env(v) => write!(f, "environment variable {v}"),
            Source::Flag(k) => write!(f, "flag --{k}"),
        }
    }
}

/// An invalid configuration: one message that names the key and its source.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

/// The keys of the configuration, in schema order.
pub fn keys() -> Vec<String> {
    SCHEMA["properties"]
        .as_object()
        .expect("schema has properties")
        .keys()
        .cloned()
        .collect()
}

/// Values given on the command line, by file key (`max_rows`), as typed.
pub type Flags = BTreeMap<String, String>;

/// Loads the configuration from the layers. `explicit_file` is `--config`; `env` is
/// the process environment (a parameter so tests can pass their own).
pub fn load(
    explicit_file: Option<&Path>,
    env: &BTreeMap<String, String>,
    flags: &Flags,
) -> Result<Config, ConfigError> {
    let mut merged = Map::new();
    let mut sources = BTreeMap::new();

    if let Some(path) = find_file(explicit_file, env) {
        let file = read_file(&path)?;
        for (k, v) in file {
            sources.insert(k.clone(), Source::File(path.clone()));
            merged.insert(k, v);
        }
    }
    for key in settable_keys() {
        let var = env_var(&key);
        if let Some(raw) = env.get(&var) {
            let source = Source::Env(var);
            set(&mut merged, &key, typed(&key, raw, &source)?);
            sources.insert(key, source);
        }
    }
    for (key, raw) in flags {
        let source = Source::Flag(key.replace(['_', '.'], "-"));
        set(&mut merged, key, typed(key, raw, &source)?);
        sources.insert(key.clone(), source);
    }

    if let Some(Value::Object(clusters)) = merged.get("clusters")
        && let Some(bad) = clusters.keys().find(|n| !valid_cluster_name(n))
    {
        return Err(ConfigError(format!(
            "`clusters`{}: the cluster name `{}` must be 1 to 63 lowercase letters, digits, - \
             and _, starting with a letter or digit (it is part of the URL /mcp/NAME)",
            from(&sources, "clusters"),
            echo::cap(bad)
        )));
    }
    let merged = Value::Object(merged);
    let validator = jsonschema::validator_for(&SCHEMA).expect("the config schema compiles");
    if let Some(e) = validator.iter_errors(&merged).next() {
        let path = e.instance_path().to_string();
        let mut key = path
            .trim_start_matches('/')
            .split('/')
            .next()
            .unwrap_or("")
            .to_string();
        // Inside a cluster, the message names the cluster's key (`clusters.prod.max_rows`);
        // a whole cluster, or the whole map, may hold DSNs and secrets.
        let mut secret = is_secret(&key);
        if key == "clusters" {
            let parts: Vec<&str> = path.trim_start_matches('/').splitn(3, '/').collect();
            match parts[..] {
                [_, name, sub] => {
                    let sub = sub.split('/').next().unwrap_or("");
                    secret = is_secret(sub);
                    key = format!("clusters.{name}.{sub}");
                }
                [_, name] => key = format!("clusters.{name}"),
                _ => {}
            }
        } else if path.matches('/').count() > 1 {
            // A key inside a section (`http.tokens.0.sha256`) is named whole.
            key = path.trim_start_matches('/').replace('/', ".");
        }
        // Deeper down, a token's entry (`http.tokens[0].sha256`, where a raw bearer token
        // pasted by mistake would otherwise be echoed) is as secret as a password.
        secret = secret
            || path
                .split('/')
                .any(|part| is_secret(part) || part.contains("token"));
        // A section's key set by a flag or variable (`http.listen`) names its own source.
        let nested = path.trim_start_matches('/').replacen('/', ".", 1);
        let nested: String = nested.split('/').next().unwrap_or("").to_string();
        let from = sources
            .get(&nested)
            .or_else(|| sources.get(&key))
            .or_else(|| sources.get(key.split('.').next().unwrap_or("")))
            .map_or_else(String::new, |s| format!(" (from {s})"));
        // Secrets must not be echoed back in the message.
        let message = if secret {
            e.masked().to_string()
        } else {
            e.to_string()
        };
        return Err(ConfigError(if key.is_empty() {
            message.to_string()
        } else {
            format!("`{key}`{from}: {message}")
        }));
    }
    let Value::Object(mut merged) = merged else {
        unreachable!("built as an object above")
    };
    let clusters = merged.remove("clusters");
    let mut config: Config = serde_json::from_value(Value::Object(merged.clone()))
        .map_err(|e| ConfigError(e.to_string()))?;
    config.sources = sources;
    config.warnings = unknown_variables(env);
    if let Some(Value::Object(clusters)) = clusters {
        config.clusters = clusters_of(&config, &merged, clusters)?;
    }
    // A toolset name that does not exist would serve nothing from it, silently: stop here,
    // where the message can say where the name came from.
    if let Err(e) = config.toolsets() {
        let from = config
            .sources
            .get(e.key)
            .map_or_else(String::new, |s| format!(" (from {s})"));
        return Err(ConfigError(format!("`{}`{from}: {}", e.key, e.message)));
    }
    Ok(config)
}

/// Each cluster's whole configuration: the top level's keys (those a cluster may set,
/// less [`NOT_INHERITED`]) under the cluster's own.
fn clusters_of(
    top: &Config,
    merged: &Map<String, Value>,
    clusters: Map<String, Value>,
) -> Result<BTreeMap<String, Config>, ConfigError> {
    if top.coordinator_dsn.is_some() {
        return Err(ConfigError(format!(
            "`coordinator_dsn`{} and `clusters`{} are both set: give each cluster its DSN as \
             clusters.NAME.dsn, or use coordinator_dsn alone for one cluster",
            from(&top.sources, "coordinator_dsn"),
            from(&top.sources, "clusters")
        )));
    }
    let mut out = BTreeMap::new();
    for (name, entry) in clusters {
        let Value::Object(entry) = entry else {
            unreachable!("the schema makes every cluster an object")
        };
        let mut own: Map<String, Value> = merged
            .iter()
            .filter(|(k, _)| !NOT_INHERITED.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (k, v) in entry {
            let k = if k == "dsn" {
                "coordinator_dsn".into()
            } else {
                k
            };
            own.insert(k, v);
        }
        let mut config: Config = serde_json::from_value(Value::Object(own))
            .map_err(|e| ConfigError(format!("`clusters.{name}`: {e}")))?;
        if let Err(e) = config.toolsets() {
            return Err(ConfigError(format!(
                "`clusters.{name}.{}`{}: {}",
                e.key,
                from(&top.sources, "clusters"),
                e.message
            )));
        }
        config.sources = top.sources.clone();
        config.cluster = Some(name.clone());
        out.insert(name, config);
    }
    // A token is bound to a tool and its arguments, not to a cluster: only the secret
    // keeps one approved for staging from running on production.
    let with_secret: Vec<(&String, &Secret)> = out
        .iter()
        .filter_map(|(n, c)| Some((n, c.approval_secret.as_ref()?)))
        .collect();
    for (i, (a, sa)) in with_secret.iter().enumerate() {
        if let Some((b, _)) = with_secret[i + 1..].iter().find(|(_, sb)| sb == sa) {
            return Err(ConfigError(format!(
                "`clusters`: clusters `{a}` and `{b}` have the same approval_secret, so a token \
                 approved for one would run on the other: give each its own"
            )));
        }
    }
    Ok(out)
}

/// ` (from SOURCE)` for a key that has one.
fn from(sources: &BTreeMap<String, Source>, key: &str) -> String {
    sources
        .get(key)
        .map_or_else(String::new, |s| format!(" (from {s})"))
}

impl Config {
    /// The configurations to serve: every cluster, or the one `chosen` (`--cluster`);
    /// the single-DSN configuration itself when there are no clusters.
    pub fn served(&self, chosen: Option<&str>) -> Result<Vec<Config>, ConfigError> {
        match (chosen, self.clusters.is_empty()) {
            (None, true) => Ok(vec![self.clone()]),
            (Some(name), true) => Err(ConfigError(format!(
                "--cluster `{}`: no clusters are configured (see `clusters` in the configuration)",
                echo::cap(name)
            ))),
            (None, false) => Ok(self.clusters.values().cloned().collect()),
            (Some(name), false) => match self.clusters.get(name) {
                Some(c) => Ok(vec![c.clone()]),
                None => Err(ConfigError(format!(
                    "--cluster `{}`: no such cluster; configured: {}",
                    echo::cap(name),
                    self.cluster_names()
                ))),
            },
        }
    }

    /// The one configuration a command runs with: the single-DSN one, the only cluster,
    /// or the one `chosen`; several clusters and no choice is an error naming them.
    pub fn one(&self, chosen: Option<&str>) -> Result<Config, ConfigError> {
        let mut served = self.served(chosen)?;
        if served.len() > 1 {
            return Err(ConfigError(format!(
                "several clusters are configured ({}): choose one with --cluster NAME",
                self.cluster_names()
            )));
        }
        Ok(served.remove(0))
    }

    fn cluster_names(&self) -> String {
        self.clusters
            .keys()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The toolsets this configuration serves.
    pub fn toolsets(&self) -> Result<crate::toolsets::Toolsets, crate::toolsets::SelectionError> {
        crate::toolsets::Toolsets::new(&self.toolsets, &self.toolset_groups)
    }
}

/// `--config`, `CITUS_MCP_CONFIG`, then the usual places; the first that exists.
fn find_file(explicit: Option<&Path>, env: &BTreeMap<String, String>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_path_buf());
    }
    if let Some(p) = env.get("CITUS_MCP_CONFIG") {
        return Some(PathBuf::from(p));
    }
    let mut candidates = Vec::new();
    if let Some(x) = env.get("XDG_CONFIG_HOME").filter(|x| !x.is_empty()) {
        candidates.push(Path::new(x).join("citus-mcp/config.yaml"));
    }
    if let Some(h) = env.get("HOME").filter(|h| !h.is_empty()) {
        candidates.push(Path::new(h).join(".config/citus-mcp/config.yaml"));
    }
    candidates.push(PathBuf::from("citus-mcp.yaml"));
    candidates.into_iter().find(|p| p.is_file())
}

fn read_file(path: &Path) -> Result<Map<String, Value>, ConfigError> {
    // A FIFO would block the start until something writes to it, a device never ends.
    if std::fs::metadata(path).is_ok_and(|m| !m.is_file()) {
        return Err(ConfigError(format!(
            "config file {} is not a regular file",
            path.display()
        )));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("cannot read config file {}: {e}", path.display())))?;
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("yaml");
    let value: Value = match ext {
        "json" => serde_json::from_str(&text).map_err(|e| e.to_string()),
        "toml" => toml::from_str(&text).map_err(|e| toml_error(&e, &text)),
        _ => serde_yaml::from_str(&text).map_err(|e| e.to_string()),
    }
    .map(|Unique(v)| v)
    .map_err(|e| {
        ConfigError(format!(
            "config file {} does not parse: {e}",
            path.display()
        ))
    })?;
    match value {
        Value::Object(m) => Ok(m),
        Value::Null => Ok(Map::new()),
        _ => Err(ConfigError(format!(
            "config file {} must be a mapping of keys to values",
            path.display()
        ))),
    }
}

/// A TOML error without the quoted source line that `toml` adds: that line may hold a
/// password. A duplicate key is named, since its span is the key.
fn toml_error(e: &toml::de::Error, text: &str) -> String {
    let Some(span) = e.span() else {
        return e.message().to_string();
    };
    let before = &text[..span.start.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    let key = text
        .get(span)
        .filter(|k| e.message().starts_with("duplicate key") && k.len() <= 100)
        .map(|k| format!(" `{}`", k.trim()))
        .unwrap_or_default();
    format!("{}{key} at line {line} column {column}", e.message())
}

/// A JSON value whose mappings have no duplicate keys. serde_json and YAML hand every
/// key to the visitor and `serde_json::Value` keeps the last one, so a file with
/// `max_rows` twice would silently use the second; this makes it an error naming the key.
struct Unique(Value);

impl<'de> Deserialize<'de> for Unique {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UniqueVisitor).map(Unique)
    }
}

struct UniqueVisitor;

impl<'de> serde::de::Visitor<'de> for UniqueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a configuration value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    // Past 64 bits: a number still, so that the schema (which masks secrets) says it is
    // not what the key takes, rather than serde quoting it whole.
    fn visit_i128<E>(self, v: i128) -> Result<Value, E> {
        Ok(Value::from(v as f64))
    }

    fn visit_u128<E>(self, v: u128) -> Result<Value, E> {
        Ok(Value::from(v as f64))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Unique::deserialize(d).map(|Unique(v)| v)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Unique(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(serde::de::Error::custom(format!("duplicate key `{key}`")));
            }
            let Unique(v) = map.next_value()?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

/// The keys a variable or flag can set: every key, and for a section (an object of
/// keys, like `http`) each of its keys as `section.key`.
fn settable_keys() -> Vec<String> {
    let mut out = Vec::new();
    for key in keys() {
        match SCHEMA["properties"][&key]["properties"].as_object() {
            Some(section) => out.extend(section.keys().map(|k| format!("{key}.{k}"))),
            None => out.push(key),
        }
    }
    out
}

/// The schema of a key, `section.key` included.
fn property(key: &str) -> Option<&'static Value> {
    match key.split_once('.') {
        Some((section, k)) => SCHEMA["properties"].get(section)?["properties"].get(k),
        None => SCHEMA["properties"].get(key),
    }
}

/// Sets a key, `section.key` inside its section, over what lower layers gave.
fn set(merged: &mut Map<String, Value>, key: &str, value: Value) {
    match key.split_once('.') {
        Some((section, k)) => {
            let entry = merged
                .entry(section.to_string())
                .or_insert_with(|| Value::Object(Map::new()));
            if !entry.is_object() {
                *entry = Value::Object(Map::new());
            }
            if let Value::Object(m) = entry {
                m.insert(k.to_string(), value);
            }
        }
        None => {
            merged.insert(key.to_string(), value);
        }
    }
}

/// Turns a string from the environment or a flag into the JSON type the schema wants.
fn typed(key: &str, raw: &str, source: &Source) -> Result<Value, ConfigError> {
    let Some(prop) = property(key) else {
        return Err(ConfigError(format!("unknown key `{key}` (from {source})")));
    };
    let secret = is_secret(key);
    let shown = if secret {
        "<redacted>".to_string()
    } else {
        format!("`{raw}`")
    };
    let err = |want: &str| {
        ConfigError(format!(
            "`{key}` (from {source}): expected {want}, got {shown}"
        ))
    };
    Ok(match prop.get("type").and_then(Value::as_str) {
        Some("integer") => Value::from(raw.trim().parse::<i64>().map_err(|_| err("an integer"))?),
        Some("boolean") => Value::Bool(match raw.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => true,
            "false" | "0" | "no" | "off" => false,
            _ => return Err(err("true or false")),
        }),
        // A mapping (toolset_groups) is JSON in the environment and on the command line.
        Some("object") => serde_json::from_str(raw).map_err(|_| err("a JSON object"))?,
        Some("array") => Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(Value::from)
                .collect(),
        ),
        _ => Value::from(raw.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn flags_beat_env_beat_file_beat_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.yaml");
        std::fs::write(
            &file,
            "max_rows: 10\nstatement_timeout_ms: 111\ncache_ttl_seconds: 7\n",
        )
        .unwrap();
        let e = env(&[
            ("CITUS_MCP_MAX_ROWS", "20"),
            ("CITUS_MCP_STATEMENT_TIMEOUT_MS", "222"),
        ]);
        let flags = Flags::from([("max_rows".to_string(), "30".to_string())]);
        let c = load(Some(&file), &e, &flags).unwrap();
        assert_eq!(c.max_rows, 30);
        assert_eq!(c.statement_timeout_ms, 222);
        assert_eq!(c.cache_ttl_seconds, 7);
        assert_eq!(c.connect_timeout_seconds, 10);
        assert_eq!(c.sources["max_rows"], Source::Flag("max-rows".into()));
        assert_eq!(c.pool_size, 8);
        let c = load(None, &env(&[("CITUS_MCP_POOL_SIZE", "32")]), &Flags::new()).unwrap();
        assert_eq!(c.pool_size, 32);
        let e = load(None, &env(&[("CITUS_MCP_POOL_SIZE", "0")]), &Flags::new()).unwrap_err();
        assert!(e.to_string().contains("`pool_size`"), "{e}");
    }

    #[test]
    fn errors_name_the_key_and_the_source() {
        let e = load(None, &env(&[("CITUS_MCP_MAX_ROWS", "lots")]), &Flags::new()).unwrap_err();
        assert!(
            e.to_string()
                .contains("`max_rows` (from environment variable CITUS_MCP_MAX_ROWS)"),
            "{e}"
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "mode = \"superuser\"\n").unwrap();
        let e = load(Some(&file), &env(&[]), &Flags::new()).unwrap_err();
        assert!(e.to_string().contains("`mode` (from config file"), "{e}");
        std::fs::write(&file, "max_rowz = 3\n").unwrap();
        let e = load(Some(&file), &env(&[]), &Flags::new()).unwrap_err();
        assert!(e.to_string().contains("max_rowz"), "{e}");
    }

    #[test]
    fn secrets_are_never_echoed() {
        let e = load(
            None,
            &env(&[("CITUS_MCP_APPROVAL_SECRET", "tiny-s3cret")]),
            &Flags::new(),
        )
        .unwrap_err();
        assert!(!e.to_string().contains("tiny-s3cret"), "{e}");
        let c = load(
            None,
            &env(&[("CITUS_MCP_COORDINATOR_PASSWORD", "hunter2")]),
            &Flags::new(),
        )
        .unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
        // A raw bearer token pasted where its hash goes, and a numeric secret past 64 bits
        // (which serde would quote whole), in YAML and TOML.
        let dir = tempfile::tempdir().unwrap();
        for (name, text, secret) in [
            (
                "t.yaml",
                "http:\n  tokens: [{name: a, sha256: cmcp_RawBearerToken0}]\n",
                "RawBearerToken0",
            ),
            (
                "p.yaml",
                "coordinator_password: 98765432109876543210987654\n",
                "98765432109876543210987654",
            ),
            (
                "s.toml",
                "approval_secret = 98765432109876543210987654\n",
                "98765432109876543210987654",
            ),
        ] {
            let file = dir.path().join(name);
            std::fs::write(&file, text).unwrap();
            let e = load(Some(&file), &env(&[]), &Flags::new()).unwrap_err();
            assert!(!e.to_string().contains(secret), "{name}: {e}");
        }
    }

    /// A misspelt variable is named, with the setting it is nearest to; the config file's
    /// own variable and the test suite's are not settings and not warned about.
    #[test]
    fn unknown_variables_are_warnings() {
        let c = load(
            None,
            &env(&[
                ("CITUS_MCP_APROVAL_SECRET", "x"),
                ("CITUS_MCP_CONFIG_FILE", "/etc/c.yaml"),
                ("CITUS_MCP_FOO", "1"),
                ("CITUS_MCP_MAX_ROWS", "5"),
                ("CITUS_MCP_TEST_PYTHON", "python3"),
                ("OTHER", "1"),
            ]),
            &Flags::new(),
        )
        .unwrap();
        assert_eq!(
            c.warnings,
            [
                "environment variable CITUS_MCP_APROVAL_SECRET is not a setting: did you mean CITUS_MCP_APPROVAL_SECRET?",
                "environment variable CITUS_MCP_CONFIG_FILE is not a setting citus-mcp reads",
                "environment variable CITUS_MCP_FOO is not a setting citus-mcp reads",
            ]
        );
        assert_eq!(edits("kitten", "sitting"), 3);
        // A FIFO named as the config file is refused, not read forever.
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("c.yaml");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(made.is_ok_and(|s| s.success()), "mkfifo");
        let e = load(Some(&fifo), &env(&[]), &Flags::new()).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
    }

    /// Issue #6: a key given twice silently took the last value.
    #[test]
    fn duplicate_keys_are_errors_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in [
            ("c.yaml", "max_rows: 10\nmode: admin\nmax_rows: 20\n"),
            (
                "c.json",
                r#"{"max_rows": 10, "mode": "admin", "max_rows": 20}"#,
            ),
            ("c.toml", "max_rows = 10\nmode = \"admin\"\nmax_rows = 20\n"),
        ] {
            let file = dir.path().join(name);
            std::fs::write(&file, text).unwrap();
            let e = load(Some(&file), &env(&[]), &Flags::new()).unwrap_err();
            let e = e.to_string();
            assert!(e.contains("max_rows") && e.contains(name), "{name}: {e}");
            assert!(e.contains("duplicate"), "{name}: {e}");
        }
        let file = dir.path().join("secret.toml");
        std::fs::write(
            &file,
            "approval_secret = \"s3cr3t-value\"\napproval_secret = \"s3cr3t-value\"\n",
        )
        .unwrap();
        let e = load(Some(&file), &env(&[]), &Flags::new())
            .unwrap_err()
            .to_string();
        assert!(!e.contains("s3cr3t-value"), "{e}");
        assert!(
            e.contains("duplicate key `approval_secret` at line 2"),
            "{e}"
        );
        let file = dir.path().join("nested.yaml");
        std::fs::write(&file, "disabled_tools: [a, a]\nmax_rows: 5\n").unwrap();
        let c = load(Some(&file), &env(&[]), &Flags::new()).unwrap();
        assert_eq!(c.max_rows, 5, "a repeated list item is not a duplicate key");
    }

    #[test]
    fn toolsets_come_from_every_layer_and_unknown_names_stop_the_server() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.yaml");
        std::fs::write(
            &file,
            "toolsets: [inspect, oncall]\ntoolset_groups:\n  oncall: [monitor, citus_advisor]\n",
        )
        .unwrap();
        let c = load(Some(&file), &env(&[]), &Flags::new()).unwrap();
        assert_eq!(c.toolsets, vec!["inspect", "oncall"]);
        assert!(c.toolsets().unwrap().is_selective());
        let c = load(
            Some(&file),
            &env(&[("CITUS_MCP_TOOLSETS", "all")]),
            &Flags::new(),
        )
        .unwrap();
        assert!(!c.toolsets().unwrap().is_selective());
        let c = load(
            None,
            &env(&[(
                "CITUS_MCP_TOOLSET_GROUPS",
                r#"{"dba": ["inspect", "citus_activity"]}"#,
            )]),
            &Flags::from([("toolsets".to_string(), "dba".to_string())]),
        )
        .unwrap();
        assert_eq!(c.toolset_groups["dba"], vec!["inspect", "citus_activity"]);
        let e = load(
            Some(&file),
            &env(&[]),
            &Flags::from([("toolsets".to_string(), "inspect,monitr".to_string())]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("`toolsets` (from flag --toolsets)") && e.contains("`monitr`"),
            "{e}"
        );
        let e = load(
            None,
            &env(&[("CITUS_MCP_TOOLSET_GROUPS", "oncall=monitor")]),
            &Flags::new(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("toolset_groups") && e.contains("JSON object"),
            "{e}"
        );
    }

    #[test]
    fn section_keys_layer_one_by_one() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.yaml");
        std::fs::write(
            &file,
            "http:\n  listen: 127.0.0.1:1\n  allowed_hosts: [a.example]\n",
        )
        .unwrap();
        let flags = Flags::from([("http.listen".to_string(), "127.0.0.1:2".to_string())]);
        let c = load(
            Some(&file),
            &env(&[("CITUS_MCP_HTTP_STATELESS", "true")]),
            &flags,
        )
        .unwrap();
        assert_eq!(c.http.listen.as_deref(), Some("127.0.0.1:2"));
        assert!(c.http.stateless);
        assert_eq!(c.http.allowed_hosts, vec!["a.example"]);
        let e = load(
            None,
            &env(&[("CITUS_MCP_HTTP_MAX_BODY_BYTES", "-1")]),
            &Flags::new(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("(from environment variable CITUS_MCP_HTTP_MAX_BODY_BYTES)"),
            "{e}"
        );
    }

    const CLUSTERS: &str = "max_rows: 50\nmode: admin\napproval_secret: top-level-secret-0123\n\
        clusters:\n  prod:\n    dsn: postgres://u:prod-pw-hidden@db1/citus\n    \
        approval_secret: prod-secret-0123456789\n  staging-2:\n    dsn: host=db2\n    \
        mode: read_only\n    max_rows: 5\n    toolsets: [inspect]\n";

    #[test]
    fn each_cluster_takes_the_top_level_under_its_own_keys() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.yaml");
        std::fs::write(&file, CLUSTERS).unwrap();
        let c = load(Some(&file), &env(&[]), &Flags::new()).unwrap();
        let prod = &c.clusters["prod"];
        assert_eq!(prod.cluster.as_deref(), Some("prod"));
        assert_eq!((prod.mode, prod.max_rows), (Mode::Admin, 50));
        assert_eq!(
            prod.approval_secret.as_ref().unwrap().expose(),
            "prod-secret-0123456789"
        );
        let staging = &c.clusters["staging-2"];
        assert_eq!((staging.mode, staging.max_rows), (Mode::ReadOnly, 5));
        // Never inherited: a secret shared by two clusters would approve for both.
        assert!(staging.approval_secret.is_none());
        assert!(staging.toolsets().unwrap().is_selective());
        assert!(!prod.toolsets().unwrap().is_selective());
        assert_eq!(
            staging.coordinator_dsn.as_ref().unwrap().expose(),
            "host=db2"
        );
        assert!(!format!("{c:?}").contains("prod-pw-hidden"));

        let all = c.served(None).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(
            c.one(Some("prod")).unwrap().cluster.as_deref(),
            Some("prod")
        );
        let e = c.one(None).unwrap_err().to_string();
        assert!(
            e.contains("prod, staging-2") && e.contains("--cluster"),
            "{e}"
        );
        let e = c.one(Some("dev")).unwrap_err().to_string();
        assert!(e.contains("`dev`") && e.contains("prod, staging-2"), "{e}");
        // The single-DSN configuration is itself, and knows no cluster names.
        let single = load(
            None,
            &env(&[("CITUS_MCP_COORDINATOR_DSN", "host=x")]),
            &Flags::new(),
        )
        .unwrap();
        assert!(single.one(None).unwrap().cluster.is_none());
        assert!(single.one(Some("prod")).is_err());
    }

    #[test]
    fn cluster_mistakes_stop_the_server_without_echoing_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.yaml");
        let cases = [
            // Not URL-safe.
            ("clusters:\n  Prod/1:\n    dsn: host=a\n", "`Prod/1`"),
            // Two clusters, one secret.
            (
                "clusters:\n  a:\n    dsn: host=a\n    approval_secret: same-secret-0123456\n  \
                 b:\n    dsn: host=b\n    approval_secret: same-secret-0123456\n",
                "clusters `a` and `b` have the same approval_secret",
            ),
            // A value of the wrong type names the cluster's key.
            (
                "clusters:\n  a:\n    dsn: host=a\n    max_rows: many\n",
                "clusters.a.max_rows",
            ),
            // A secret too short is named, not shown.
            (
                "clusters:\n  a:\n    dsn: host=a\n    approval_secret: short-pw\n",
                "clusters.a.approval_secret",
            ),
            ("clusters:\n  a:\n    max_rows: 3\n", "clusters.a"),
            // A toolset no one defined.
            (
                "clusters:\n  a:\n    dsn: host=a\n    toolsets: [inspekt]\n",
                "clusters.a.toolsets",
            ),
        ];
        for (text, want) in cases {
            std::fs::write(&file, text).unwrap();
            let e = load(Some(&file), &env(&[]), &Flags::new())
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{text}: {e}");
            assert!(!e.contains("same-secret") && !e.contains("short-pw"), "{e}");
        }
        // coordinator_dsn beside clusters: which one would serve?
        std::fs::write(&file, CLUSTERS).unwrap();
        let e = load(
            Some(&file),
            &env(&[("CITUS_MCP_COORDINATOR_DSN", "host=x password=env-pw-hidden")]),
            &Flags::new(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("coordinator_dsn") && e.contains("clusters.NAME.dsn"),
            "{e}"
        );
        assert!(!e.contains("env-pw-hidden"), "{e}");
        // JSON in the environment that does not parse is not shown either.
        let e = load(
            None,
            &env(&[("CITUS_MCP_CLUSTERS", "{prod: postgres://u:env-pw-hidden@h}")]),
            &Flags::new(),
        )
        .unwrap_err()
        .to_string();
        assert!(!e.contains("env-pw-hidden"), "{e}");
    }

    /// README's table and `--help` state the schema's defaults; the schema's defaults
    /// are the code's.
    #[test]
    fn schema_defaults_are_the_code_defaults() {
        let mut defaults = Map::new();
        for key in settable_keys() {
            if let Some(d) = property(&key).and_then(|p| p.get("default")) {
                set(&mut defaults, &key, d.clone());
            }
        }
        assert!(defaults.len() > 10, "{defaults:?}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.json");
        std::fs::write(&file, Value::Object(defaults).to_string()).unwrap();
        let mut from_schema = load(Some(&file), &env(&[]), &Flags::new()).unwrap();
        from_schema.sources.clear();
        assert_eq!(
            format!("{from_schema:?}"),
            format!("{:?}", Config::default())
        );
    }

    #[test]
    fn json_logs_are_asked_for_by_name() {
        let c = load(
            None,
            &env(&[("CITUS_MCP_LOG_FORMAT", "json")]),
            &Flags::new(),
        )
        .unwrap();
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(Config::default().log_format, LogFormat::Text);
        let e = load(
            None,
            &env(&[("CITUS_MCP_LOG_FORMAT", "xml")]),
            &Flags::new(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("log_format"), "{e}");
    }

    #[test]
    fn lists_split_on_commas_and_json_files_load() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.json");
        std::fs::write(&file, r#"{"disabled_tools": ["a"], "mode": "admin"}"#).unwrap();
        let c = load(
            Some(&file),
            &env(&[("CITUS_MCP_TOOLS_DIRS", "/a, /b")]),
            &Flags::new(),
        )
        .unwrap();
        assert_eq!(c.tools_dirs, vec![PathBuf::from("/a"), PathBuf::from("/b")]);
        assert_eq!(c.disabled_tools, vec!["a"]);
        assert_eq!(c.mode, Mode::Admin);
    }
}
