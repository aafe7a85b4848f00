//! Counters of what the server did, rendered in Prometheus's text format (`/metrics`).
//!
//! It owns the numbers only: `server` records each tool call, `httpd` records refused
//! requests and renders the page. Label values are tool names the registry knows and
//! error codes (a name a caller made up is counted as `_unknown`), so a client cannot
//! grow the page. It also counts calls in flight, which a graceful shutdown waits for.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::Notify;

use crate::engine::Structured;

/// Upper bounds of the latency histogram, in seconds: from a cached answer to a
/// statement near the default 30 s timeout.
const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The label of a tool name the registry does not know.
pub const UNKNOWN_TOOL: &str = "_unknown";

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// Series are keyed by cluster first ("" when the server has no `clusters`), so a
/// cluster's series carry its name as a label.
#[derive(Default)]
struct Counts {
    calls: BTreeMap<(String, String, String), u64>,
    latency: BTreeMap<(String, String), Histogram>,
    rows: BTreeMap<(String, String), u64>,
    bytes: BTreeMap<(String, String), u64>,
    node_errors: BTreeMap<(String, String), u64>,
    refused: BTreeMap<&'static str, u64>,
}

/// The server's counters; shared by every session. [`Metrics::for_cluster`] gives a
/// handle onto the same counters that labels what it records with a cluster's name.
#[derive(Default)]
pub struct Metrics {
    counts: Arc<Mutex<Counts>>,
    calls: Arc<Running>,
    cluster: String,
}

/// How many of something are running, and a way to wait until none is.
#[derive(Default)]
pub struct Running {
    count: AtomicUsize,
    idle: Notify,
}

/// One running thing; dropping it ends it, however it ended.
pub struct Entered(Arc<Running>);

impl Drop for Entered {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Running {
    pub fn enter(self: &Arc<Self>) -> Entered {
        self.count.fetch_add(1, Ordering::AcqRel);
        Entered(self.clone())
    }

    pub fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Returns once nothing is running.
    pub async fn idle(&self) {
        loop {
            // Registered before the check, so an end in between still wakes us.
            let notified = self.idle.notified();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// What one finished tool call returned.
pub struct CallRecord<'a> {
    pub tool: &'a str,
    /// `ok`, or the error code.
    pub outcome: &'a str,
    pub elapsed: Duration,
    /// The structured result (`None` for a failed call).
    pub result: Option<&'a Structured>,
}

impl Metrics {
    /// The same counters, recording calls as the cluster `name`'s (a configured name:
    /// label values stay bounded).
    pub fn for_cluster(&self, name: &str) -> Metrics {
        Metrics {
            counts: self.counts.clone(),
            calls: self.calls.clone(),
            cluster: name.to_string(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        // Counters stay usable after a panic elsewhere: they are plain numbers.
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks a tool call as running until the guard is dropped.
    pub fn start_call(&self) -> Entered {
        self.calls.enter()
    }

    /// Tool calls running now.
    pub fn in_flight(&self) -> usize {
        self.calls.count()
    }

    /// Counts one finished tool call.
    pub fn record_call(&self, call: &CallRecord<'_>) {
        let (rows, bytes, node_errors) = match call.result {
            Some(v) => measure(v),
            None => (0, 0, vec![]),
        };
        let mut c = self.lock();
        let key = (self.cluster.clone(), call.tool.to_string());
        *c.calls
            .entry((key.0.clone(), key.1.clone(), call.outcome.to_string()))
            .or_default() += 1;
        let h = c.latency.entry(key.clone()).or_default();
        let secs = call.elapsed.as_secs_f64();
        for (i, le) in BUCKETS.iter().enumerate() {
            if secs <= *le {
                h.counts[i] += 1;
            }
        }
        h.count += 1;
        h.sum += secs;
        *c.rows.entry(key.clone()).or_default() += rows;
        *c.bytes.entry(key).or_default() += bytes;
        for code in node_errors {
            *c.node_errors
                .entry((self.cluster.clone(), code))
                .or_default() += 1;
        }
    }

    /// Counts a request refused before it reached MCP (`unauthenticated`, `forbidden`, ...).
    pub fn record_refusal(&self, reason: &'static str) {
        *self.lock().refused.entry(reason).or_default() += 1;
    }

    /// The page `/metrics` serves. `reloads` comes from the engine's registry swaps.
    pub fn render(&self, reloads: u64, pools: &[PoolGauge]) -> String {
        let c = self.lock();
        let mut s = String::new();
        let head = |s: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        head(
            &mut s,
            "citus_mcp_tool_calls_total",
            "counter",
            "Tool calls by tool and outcome (ok or the error code).",
        );
        for ((cluster, tool, outcome), n) in &c.calls {
            let _ = writeln!(
                s,
                "citus_mcp_tool_calls_total{{{}tool=\"{}\",outcome=\"{}\"}} {n}",
                cluster_label(cluster),
                escape(tool),
                escape(outcome)
            );
        }
        head(
            &mut s,
            "citus_mcp_tool_call_duration_seconds",
            "histogram",
            "How long tool calls took.",
        );
        for ((cluster, tool), h) in &c.latency {
            let tool = format!("{}tool=\"{}\"", cluster_label(cluster), escape(tool));
            for (le, n) in BUCKETS.iter().zip(h.counts) {
                let _ = writeln!(
                    s,
                    "citus_mcp_tool_call_duration_seconds_bucket{{{tool},le=\"{le}\"}} {n}"
                );
            }
            let _ = writeln!(
                s,
                "citus_mcp_tool_call_duration_seconds_bucket{{{tool},le=\"+Inf\"}} {}\n\
                 citus_mcp_tool_call_duration_seconds_sum{{{tool}}} {}\n\
                 citus_mcp_tool_call_duration_seconds_count{{{tool}}} {}",
                h.count, h.sum, h.count
            );
        }
        for (name, help, map) in [
            (
                "citus_mcp_tool_rows_returned_total",
                "Rows returned by tool calls.",
                &c.rows,
            ),
            (
                "citus_mcp_tool_bytes_returned_total",
                "Bytes of structured JSON returned by tool calls.",
                &c.bytes,
            ),
        ] {
            head(&mut s, name, "counter", help);
            for ((cluster, tool), n) in map {
                let _ = writeln!(
                    s,
                    "{name}{{{}tool=\"{}\"}} {n}",
                    cluster_label(cluster),
                    escape(tool)
                );
            }
        }
        head(
            &mut s,
            "citus_mcp_node_errors_total",
            "counter",
            "Nodes a tool call could not hear from, by error code.",
        );
        for ((cluster, code), n) in &c.node_errors {
            let _ = writeln!(
                s,
                "citus_mcp_node_errors_total{{{}code=\"{}\"}} {n}",
                cluster_label(cluster),
                escape(code)
            );
        }
        head(
            &mut s,
            "citus_mcp_http_refused_total",
            "counter",
            "HTTP requests refused before MCP, by reason.",
        );
        for (reason, n) in &c.refused {
            let _ = writeln!(s, "citus_mcp_http_refused_total{{reason=\"{reason}\"}} {n}");
        }
        head(
            &mut s,
            "citus_mcp_reloads_total",
            "counter",
            "Registry snapshots swapped in by hot reload.",
        );
        let _ = writeln!(s, "citus_mcp_reloads_total {reloads}");
        head(
            &mut s,
            "citus_mcp_tool_calls_in_flight",
            "gauge",
            "Tool calls running now.",
        );
        let _ = writeln!(s, "citus_mcp_tool_calls_in_flight {}", self.in_flight());
        head(
            &mut s,
            "citus_mcp_db_connections",
            "gauge",
            "Pooled coordinator connections: open, idle (open and free) and max.",
        );
        for p in pools {
            for (state, n) in [("open", p.open), ("idle", p.idle), ("max", p.max)] {
                let _ = writeln!(
                    s,
                    "citus_mcp_db_connections{{{}state=\"{state}\"}} {n}",
                    cluster_label(&p.cluster)
                );
            }
        }
        head(
            &mut s,
            "citus_mcp_db_waiting",
            "gauge",
            "Calls waiting for a pooled connection.",
        );
        for p in pools {
            let labels = cluster_label(&p.cluster);
            let labels = labels.trim_end_matches(',');
            if labels.is_empty() {
                let _ = writeln!(s, "citus_mcp_db_waiting {}", p.waiting);
            } else {
                let _ = writeln!(s, "citus_mcp_db_waiting{{{labels}}} {}", p.waiting);
            }
        }
        s
    }
}

/// One coordinator pool's use, as `/metrics` shows it; `cluster` is "" without `clusters`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolGauge {
    pub cluster: String,
    pub open: usize,
    pub idle: usize,
    pub max: usize,
    pub waiting: usize,
}

/// Rows (the lengths of the result's lists), bytes of JSON, and node error codes.
fn measure(result: &Structured) -> (u64, u64, Vec<String>) {
    let codes = result
        .node_errors()
        .iter()
        .map(|e| {
            e.get("code")
                .and_then(Value::as_str)
                .unwrap_or("UNKNOWN")
                .to_string()
        })
        .collect();
    (result.rows(), crate::engine::json_len(result) as u64, codes)
}

/// `cluster="NAME",` before a series' other labels; nothing without clusters.
fn cluster_label(cluster: &str) -> String {
    if cluster.is_empty() {
        String::new()
    } else {
        format!("cluster=\"{}\",", escape(cluster))
    }
}

/// A label value as the text format wants it: backslash, quote and newline escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_call_is_counted_with_rows_bytes_latency_and_node_errors() {
        let m = Metrics::default();
        let result = json!({"nodes": [{"a": 1}, {"a": 2}], "truncated": false,
            "node_errors": [{"node": "w1:5432", "code": "NODE_UNREACHABLE"}]});
        m.record_call(&CallRecord {
            tool: "list_nodes",
            outcome: "ok",
            elapsed: Duration::from_millis(30),
            result: Some(&Structured::Value(result.clone())),
        });
        m.record_refusal("unauthenticated");
        let page = m.render(
            3,
            &[PoolGauge {
                cluster: "east".into(),
                open: 2,
                idle: 1,
                max: 8,
                waiting: 0,
            }],
        );
        assert!(page.contains("citus_mcp_tool_calls_total{tool=\"list_nodes\",outcome=\"ok\"} 1"));
        assert!(page.contains("citus_mcp_tool_rows_returned_total{tool=\"list_nodes\"} 2"));
        assert!(page.contains(
            "citus_mcp_tool_call_duration_seconds_bucket{tool=\"list_nodes\",le=\"0.05\"} 1"
        ));
        assert!(page.contains(
            "citus_mcp_tool_call_duration_seconds_bucket{tool=\"list_nodes\",le=\"0.025\"} 0"
        ));
        assert!(page.contains("citus_mcp_node_errors_total{code=\"NODE_UNREACHABLE\"} 1"));
        assert!(page.contains("citus_mcp_http_refused_total{reason=\"unauthenticated\"} 1"));
        assert!(page.contains("citus_mcp_reloads_total 3"));
        let bytes = serde_json::to_vec(&result).unwrap().len();
        assert!(page.contains(&format!(
            "citus_mcp_tool_bytes_returned_total{{tool=\"list_nodes\"}} {bytes}"
        )));
        assert!(page.contains("citus_mcp_db_connections{cluster=\"east\",state=\"open\"} 2"));
        assert!(page.contains("citus_mcp_db_connections{cluster=\"east\",state=\"idle\"} 1"));
        assert!(page.contains("citus_mcp_db_connections{cluster=\"east\",state=\"max\"} 8"));
        assert!(page.contains("citus_mcp_db_waiting{cluster=\"east\"} 0"));
        let single = Metrics::default().render(
            0,
            &[PoolGauge {
                max: 8,
                ..PoolGauge::default()
            }],
        );
        assert!(single.contains("citus_mcp_db_connections{state=\"max\"} 8"));
        assert!(single.contains("citus_mcp_db_waiting 0"));
    }

    #[test]
    fn a_clusters_calls_carry_its_name_as_a_label() {
        let m = Metrics::default();
        let (prod, staging) = (m.for_cluster("prod"), m.for_cluster("staging"));
        let result = json!({"nodes": [{"a": 1}],
            "node_errors": [{"node": "w1:5432", "code": "NODE_UNREACHABLE"}]});
        for (handle, n) in [(&prod, 2), (&staging, 1)] {
            for _ in 0..n {
                handle.record_call(&CallRecord {
                    tool: "list_nodes",
                    outcome: "ok",
                    elapsed: Duration::from_millis(3),
                    result: Some(&Structured::Value(result.clone())),
                });
            }
        }
        let page = m.render(0, &[]);
        for line in [
            "citus_mcp_tool_calls_total{cluster=\"prod\",tool=\"list_nodes\",outcome=\"ok\"} 2",
            "citus_mcp_tool_calls_total{cluster=\"staging\",tool=\"list_nodes\",outcome=\"ok\"} 1",
            "citus_mcp_tool_call_duration_seconds_count{cluster=\"prod\",tool=\"list_nodes\"} 2",
            "citus_mcp_tool_rows_returned_total{cluster=\"staging\",tool=\"list_nodes\"} 1",
            "citus_mcp_node_errors_total{cluster=\"prod\",code=\"NODE_UNREACHABLE\"} 2",
        ] {
            assert!(page.contains(line), "{line} missing from:\n{page}");
        }
        // One HELP and TYPE per family, however many clusters.
        assert_eq!(page.matches("# TYPE citus_mcp_tool_calls_total").count(), 1);
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[tokio::test]
    async fn idle_returns_when_the_last_one_ends() {
        let r = Arc::new(Running::default());
        r.idle().await;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let entered = r.enter();
        let running = tokio::spawn(async move {
            let _entered = entered;
            let _ = rx.await;
        });
        assert_eq!(r.count(), 1);
        let _ = tx.send(());
        r.idle().await;
        running.await.unwrap();
        assert_eq!(r.count(), 0);
    }
}
