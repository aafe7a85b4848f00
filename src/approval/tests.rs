//! The gate as the engine and the token tool use it: every refusal reason, the TTL
//! cap, single use across restarts, the person's answer, and what the audit log holds.

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::json;

use super::*;
use crate::config::Secret;
use crate::engine::CallerFuture;

const SECRET: &str = "test-secret-0123456789-never-print";
const NOW: u64 = 1_800_000_000;

/// A caller whose person answers `answer` (None: nobody can be asked).
struct Person(Option<bool>);

impl Caller for Person {
    fn progress<'a>(&'a self, _: f64, _: Option<f64>, _: &'a str) -> CallerFuture<'a, ()> {
        Box::pin(async {})
    }

    fn confirm<'a>(&'a self, _: &'a str) -> CallerFuture<'a, Option<bool>> {
        let a = self.0;
        Box::pin(async move { a })
    }

    fn identity(&self) -> Option<String> {
        Some("alice".into())
    }
}

struct Setup {
    dir: tempfile::TempDir,
    clock: Arc<AtomicU64>,
}

impl Setup {
    fn new() -> Setup {
        Setup {
            dir: tempfile::tempdir().unwrap(),
            clock: Arc::new(AtomicU64::new(NOW)),
        }
    }

    fn settings(&self, secret: &str, max_ttl: u64, self_issue: bool) -> ApprovalSettings {
        let config = Config {
            approval_secret: Some(Secret::new(secret)),
            approval_max_ttl_seconds: max_ttl,
            approval_ledger_path: Some(self.dir.path().join("nonces")),
            approval_audit_log: Some(self.dir.path().join("audit.jsonl")),
            allow_self_issue: self_issue,
            ..Config::default()
        };
        ApprovalSettings::from_config(&config, &BTreeMap::new()).unwrap()
    }

    fn clock(&self) -> Clock {
        let c = self.clock.clone();
        Arc::new(move || c.load(Ordering::SeqCst))
    }

    /// A gate as a (re)started server opens it.
    fn gate(&self) -> Gate {
        self.gate_with(SECRET, 900, false)
    }

    fn gate_with(&self, secret: &str, max_ttl: u64, self_issue: bool) -> Gate {
        Gate::open(
            &self.settings(secret, max_ttl, self_issue),
            None,
            self.clock(),
        )
        .unwrap()
    }

    fn issue(&self, tool: &str, args: &Map<String, Value>) -> String {
        Issuer::open(&self.settings(SECRET, 900, false), self.clock())
            .unwrap()
            .issue(tool, args, None, "cli", "cli", None)
            .unwrap()
            .token
    }

    fn audit(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("audit.jsonl")).unwrap_or_default()
    }
}

fn args(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

fn with_token(a: &Map<String, Value>, token: &str) -> Map<String, Value> {
    let mut a = a.clone();
    a.insert(TOKEN_KEY.into(), Value::from(token));
    a
}

async fn verify(gate: &Gate, tool: &str, a: &Map<String, Value>) -> Result<Approved, ToolError> {
    gate.verify(tool, a, &Person(None)).await
}

fn reason(e: &ToolError) -> String {
    e.problems.first().cloned().unwrap_or_default()
}

#[tokio::test]
async fn a_valid_token_runs_once() {
    let s = Setup::new();
    let gate = s.gate();
    let a = args(json!({"table": "orders", "shards": 4}));
    let t = s.issue("split", &a);
    verify(&gate, "split", &with_token(&a, &t)).await.unwrap();
    let e = verify(&gate, "split", &with_token(&a, &t))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::ApprovalInvalid);
    assert_eq!(reason(&e), "reason: replayed");
}

#[tokio::test]
async fn key_order_does_not_matter_but_values_do() {
    let s = Setup::new();
    let gate = s.gate();
    let t = s.issue("split", &args(json!({"a": 1, "b": {"y": 2, "x": 1}})));
    let e = verify(
        &gate,
        "split",
        &with_token(&args(json!({"a": 1, "b": {"x": 1, "y": 3}})), &t),
    )
    .await
    .unwrap_err();
    assert_eq!(reason(&e), "reason: other_arguments");
    // The refused call did not use the token up.
    let reordered = args(json!({"b": {"x": 1, "y": 2}, "a": 1}));
    verify(&gate, "split", &with_token(&reordered, &t))
        .await
        .unwrap();
}

#[tokio::test]
async fn every_refusal_names_its_reason() {
    let s = Setup::new();
    let gate = s.gate();
    let a = args(json!({"table": "orders"}));
    let good = s.issue("split", &a);

    let e = verify(&gate, "split", &a).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::ApprovalRequired);
    assert_eq!(reason(&e), "reason: missing");
    let hint = e.hint.clone().unwrap();
    assert!(
        hint.contains("citus_request_approval_token") && hint.contains("citus-mcp approve split"),
        "{hint}"
    );

    let mut bad_type = a.clone();
    bad_type.insert(TOKEN_KEY.into(), json!(42));
    let cases: Vec<(Map<String, Value>, &str, &str)> = vec![
        (bad_type, "split", "malformed"),
        (with_token(&a, "not a token"), "split", "malformed"),
        (with_token(&a, &good), "merge", "other_tool"),
        (
            with_token(&args(json!({"table": "events"})), &good),
            "split",
            "other_arguments",
        ),
        (
            with_token(&a, &{
                let other = Setup::new();
                Issuer::open(
                    &other.settings("another-secret-of-16+", 900, false),
                    s.clock(),
                )
                .unwrap()
                .issue("split", &a, None, "cli", "cli", None)
                .unwrap()
                .token
            }),
            "split",
            "other_secret",
        ),
        (with_token(&a, &forge(&good)), "split", "forged"),
    ];
    for (call, tool, want) in cases {
        let e = verify(&gate, tool, &call).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::ApprovalInvalid, "{want}: {}", e.text());
        assert_eq!(reason(&e), format!("reason: {want}"), "{}", e.text());
        assert!(e.hint.is_some(), "{want} has a hint");
    }
    assert!(
        verify(&gate, "merge", &with_token(&a, &good))
            .await
            .unwrap_err()
            .message
            .contains("`split`"),
        "other_tool names the approved tool"
    );

    s.clock
        .store(NOW + DEFAULT_TTL_SECONDS + 1, Ordering::SeqCst);
    let e = verify(&gate, "split", &with_token(&a, &good))
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "reason: expired");
}

/// The same token with one byte of its tool name changed (and so its tag wrong).
fn forge(token: &str) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut raw = b64.decode(token).unwrap();
    let i = raw.len() - 33;
    raw[i] ^= 0x20;
    b64.encode(raw)
}

#[tokio::test]
async fn the_ttl_is_capped_by_configuration() {
    let s = Setup::new();
    let issuer = Issuer::open(&s.settings(SECRET, 60, false), s.clock()).unwrap();
    let a = args(json!({}));
    let long = issuer
        .issue("split", &a, Some(86_400), "cli", "cli", None)
        .unwrap();
    assert_eq!(long.ttl_seconds, 60);
    assert_eq!(long.expires_at, NOW + 60);
    assert_eq!(
        issuer
            .issue("split", &a, None, "cli", "cli", None)
            .unwrap()
            .ttl_seconds,
        60
    );
    assert_eq!(
        issuer
            .issue("split", &a, Some(5), "cli", "cli", None)
            .unwrap()
            .ttl_seconds,
        5
    );
    assert_eq!(
        issuer
            .issue("split", &a, Some(0), "cli", "cli", None)
            .unwrap()
            .ttl_seconds,
        1
    );
    // The cap holds when the token is checked, not only when it is made.
    let gate = s.gate_with(SECRET, 60, false);
    s.clock.store(NOW + 61, Ordering::SeqCst);
    let e = verify(&gate, "split", &with_token(&a, &long.token))
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "reason: expired");
    // A token from an issuer with a larger cap (the same secret) is refused here.
    let lax = Issuer::open(&s.settings(SECRET, 900, false), s.clock()).unwrap();
    s.clock.store(NOW, Ordering::SeqCst);
    let t = lax
        .issue("split", &a, Some(600), "cli", "cli", None)
        .unwrap()
        .token;
    let e = verify(&gate, "split", &with_token(&a, &t))
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "reason: over_cap");
    // Through the tool, too.
    let gate = s.gate_with(SECRET, 60, false);
    let issued = gate
        .request("split", &a, Some(10_000), &Person(Some(true)))
        .await
        .unwrap();
    assert_eq!(issued.ttl_seconds, 60);
}

#[tokio::test]
async fn a_replay_is_refused_after_a_restart() {
    let s = Setup::new();
    let a = args(json!({"x": 1}));
    let t = s.issue("split", &a);
    verify(&s.gate(), "split", &with_token(&a, &t))
        .await
        .unwrap();
    // A new server process: new gate, new ledger object, same file.
    let restarted = s.gate();
    let e = verify(&restarted, "split", &with_token(&a, &t))
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "reason: replayed");
}

/// A person who approves and keeps what they were asked.
struct Asked(std::sync::Mutex<String>);

impl Caller for Asked {
    fn progress<'a>(&'a self, _: f64, _: Option<f64>, _: &'a str) -> CallerFuture<'a, ()> {
        Box::pin(async {})
    }

    fn confirm<'a>(&'a self, message: &'a str) -> CallerFuture<'a, Option<bool>> {
        *self.0.lock().unwrap() = message.to_string();
        Box::pin(async { Some(true) })
    }

    fn identity(&self) -> Option<String> {
        None
    }
}

/// With several clusters, the person is told which one the call changes.
#[tokio::test]
async fn the_person_is_told_which_cluster() {
    let s = Setup::new();
    let mut settings = s.settings(SECRET, 900, false);
    settings.cluster = Some("production".into());
    let gate = Gate::open(&settings, None, s.clock()).unwrap();
    let asked = Asked(std::sync::Mutex::new(String::new()));
    gate.request("split", &args(json!({"table": "orders"})), None, &asked)
        .await
        .unwrap();
    let message = asked.0.lock().unwrap().clone();
    assert!(
        message.contains("changes the cluster `production`"),
        "{message}"
    );
}

#[tokio::test]
async fn a_token_is_issued_only_when_the_person_confirms() {
    let s = Setup::new();
    let gate = s.gate();
    let a = args(json!({"table": "orders"}));
    let issued = gate
        .request("split", &a, None, &Person(Some(true)))
        .await
        .unwrap();
    verify(&gate, "split", &with_token(&a, &issued.token))
        .await
        .unwrap();

    let e = gate
        .request("split", &a, None, &Person(Some(false)))
        .await
        .err()
        .unwrap();
    assert_eq!(e.code, ErrorCode::ApprovalRequired);
    assert!(e.message.contains("declined"), "{}", e.text());

    let e = gate
        .request("split", &a, None, &Person(None))
        .await
        .err()
        .unwrap();
    assert!(
        e.hint
            .unwrap()
            .contains("citus-mcp approve split --args '{\"table\":\"orders\"}'")
    );

    let lenient = s.gate_with(SECRET, 900, true);
    let t = lenient
        .request("split", &a, None, &Person(None))
        .await
        .unwrap();
    verify(&lenient, "split", &with_token(&a, &t.token))
        .await
        .unwrap();
    // A person who declines is still heard when self-issue is on.
    assert!(
        lenient
            .request("split", &a, None, &Person(Some(false)))
            .await
            .is_err()
    );

    let audit = s.audit();
    for reason in [
        "\"confirmed\"",
        "\"declined\"",
        "\"no_elicitation\"",
        "\"self_issued\"",
    ] {
        assert!(audit.contains(reason), "{reason} missing from\n{audit}");
    }
}

#[tokio::test]
async fn audit_lines_hold_no_token_and_no_secret() {
    let s = Setup::new();
    let gate = s.gate();
    let a = args(json!({"table": "orders"}));
    let mut tokens = vec![];
    let t = gate
        .request("split", &a, None, &Person(Some(true)))
        .await
        .unwrap()
        .token;
    tokens.push(t.clone());
    verify(&gate, "split", &with_token(&a, &t)).await.unwrap();
    let _ = verify(&gate, "split", &with_token(&a, &t)).await;
    let _ = verify(&gate, "split", &with_token(&a, &forge(&t))).await;
    tokens.push(forge(&t));
    let _ = verify(&gate, "split", &a).await;
    let audit = s.audit();
    let lines: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5, "{audit}");
    for l in &lines {
        for key in [
            "time",
            "event",
            "tool",
            "args_digest",
            "outcome",
            "reason",
            "caller",
        ] {
            assert!(l.get(key).is_some(), "{key} missing in {l}");
        }
        assert_eq!(l["caller"], "alice");
    }
    assert_eq!(lines[1]["outcome"], "accepted");
    assert_eq!(lines[0]["approval_id"], lines[1]["approval_id"]);
    assert!(!audit.contains(SECRET));
    for t in &tokens {
        assert!(!audit.contains(t.as_str()));
        // Not even a good part of one.
        assert!(!audit.contains(&t[..24]));
    }
    assert!(
        !audit.contains("orders"),
        "argument values stay out of the log"
    );
}

#[test]
fn admin_settings_need_a_long_secret_and_somewhere_to_write() {
    let short = Config {
        approval_secret: Some(Secret::new("short")),
        ..Config::default()
    };
    let env = BTreeMap::from([("HOME".to_string(), "/home/x".to_string())]);
    let e = ApprovalSettings::from_config(&short, &env)
        .unwrap_err()
        .to_string();
    assert!(e.contains("16 bytes") && !e.contains("short"), "{e}");
    assert!(ApprovalSettings::from_config(&Config::default(), &env).is_err());
    let ok = Config {
        approval_secret: Some(Secret::new(SECRET)),
        ..Config::default()
    };
    let s = ApprovalSettings::from_config(&ok, &env).unwrap();
    assert_eq!(
        s.ledger_path,
        PathBuf::from("/home/x/.local/state/citus-mcp/approval-nonces")
    );
    assert!(!format!("{s:?}").contains(SECRET));
    assert!(ApprovalSettings::from_config(&ok, &BTreeMap::new()).is_err());
}
