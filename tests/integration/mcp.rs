//! A minimal MCP client over stdio for end-to-end tests: spawns the built binary,
//! speaks newline-delimited JSON-RPC, and records everything it sees.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// One line of the server's stdout.
enum Line {
    Json(Value),
    NotJson(String),
}

pub struct McpClient {
    child: Child,
    stdin: Option<ChildStdin>,
    rx: Receiver<Line>,
    next_id: u64,
    /// Notifications received so far, in order.
    pub notifications: Vec<Value>,
    /// Lines of stdout that were not JSON-RPC (must stay empty).
    pub garbage: Vec<String>,
    /// Everything the server wrote to stderr.
    pub stderr: Arc<Mutex<String>>,
    /// Replies that arrived while waiting for something else (a server request).
    replies: Vec<Value>,
}

pub const TIMEOUT: Duration = Duration::from_secs(30);

impl McpClient {
    /// Starts `citus-mcp` with the given arguments and environment (nothing inherited
    /// from CITUS_MCP_*), and initializes a legacy (2025-06-18) session.
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> McpClient {
        McpClient::start_with(args, env, json!({}))
    }

    /// [`McpClient::start`], declaring these client capabilities (e.g. elicitation).
    pub fn start_with(args: &[&str], env: &[(&str, &str)], capabilities: Value) -> McpClient {
        let mut c = McpClient::spawn(args, env);
        let init = c.request(
            "initialize",
            json!({"protocolVersion": "2025-06-18", "capabilities": capabilities, "clientInfo": {"name": "citus-mcp-tests", "version": "0"}}),
        );
        assert!(
            init.get("result").is_some(),
            "initialize failed: {init}\nstderr:\n{}",
            c.stderr_text()
        );
        c.send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
        c
    }

    /// Starts `citus-mcp` without any handshake (for the 2026-07-28 lifecycle, where every
    /// request carries its protocol version in `_meta`).
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> McpClient {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_citus-mcp"));
        cmd.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, _) in std::env::vars() {
            if k.starts_with("CITUS_MCP_") || k == "RUST_LOG" {
                cmd.env_remove(k);
            }
        }
        cmd.env("HOME", "/nonexistent")
            .env("XDG_CONFIG_HOME", "/nonexistent");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("the citus-mcp binary starts");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let stderr_pipe = child.stderr.take().expect("stderr");
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let parsed = match serde_json::from_str::<Value>(&line) {
                    Ok(v) if v.get("jsonrpc") == Some(&json!("2.0")) => Line::Json(v),
                    _ => Line::NotJson(line),
                };
                if tx.send(parsed).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr_pipe).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        McpClient {
            child,
            stdin: Some(stdin),
            rx,
            next_id: 1,
            notifications: vec![],
            garbage: vec![],
            stderr,
            replies: vec![],
        }
    }

    pub fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub fn send(&mut self, msg: Value) {
        let mut line = msg.to_string();
        line.push('\n');
        self.stdin
            .as_mut()
            .expect("stdin is open")
            .write_all(line.as_bytes())
            .expect("write to the server");
        self.stdin
            .as_mut()
            .expect("stdin is open")
            .flush()
            .expect("flush");
    }

    /// Sends a request and returns its id without waiting.
    pub fn send_request(&mut self, method: &str, params: Value) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.send(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        id
    }

    /// Sends a request and waits for its response (notifications are kept aside).
    pub fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.send_request(method, params);
        self.wait_response(id, TIMEOUT).unwrap_or_else(|| {
            panic!(
                "no response to {method} within {TIMEOUT:?}; stderr:\n{}",
                self.stderr_text()
            )
        })
    }

    /// Writes one raw line (it need not be JSON).
    pub fn send_line(&mut self, line: &str) {
        self.stdin
            .as_mut()
            .expect("stdin is open")
            .write_all(format!("{line}\n").as_bytes())
            .expect("write to the server");
        self.stdin
            .as_mut()
            .expect("stdin is open")
            .flush()
            .expect("flush");
    }

    pub fn wait_response(&mut self, id: u64, timeout: Duration) -> Option<Value> {
        self.wait_reply(&json!(id), timeout)
    }

    /// Waits for the reply with this id (`null` for replies to unreadable lines).
    pub fn wait_reply(&mut self, id: &Value, timeout: Duration) -> Option<Value> {
        if let Some(i) = self.replies.iter().position(|r| r.get("id") == Some(id)) {
            return Some(self.replies.remove(i));
        }
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.next(deadline)?;
            // A request from the server has an id of its own numbering: not a reply.
            if v.get("id") == Some(id) && v.get("method").is_none() {
                return Some(v);
            }
            if v.get("id").is_none() {
                self.notifications.push(v);
            }
        }
    }

    /// Waits for a request from the server (e.g. `elicitation/create`), keeping
    /// replies that arrive meanwhile for [`McpClient::wait_reply`].
    pub fn wait_server_request(&mut self, method: &str, timeout: Duration) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.next(deadline)?;
            match (v.get("method"), v.get("id")) {
                (Some(m), Some(_)) if m == method => return Some(v),
                (_, None) => self.notifications.push(v),
                _ => self.replies.push(v),
            }
        }
    }

    /// Answers a request from the server.
    pub fn respond(&mut self, request: &Value, result: Value) {
        self.send(json!({"jsonrpc": "2.0", "id": request["id"], "result": result}));
    }

    /// Waits for a notification with this method (or finds one already received).
    pub fn wait_notification(&mut self, method: &str, timeout: Duration) -> Option<Value> {
        if let Some(i) = self
            .notifications
            .iter()
            .position(|n| n["method"] == method)
        {
            return Some(self.notifications.remove(i));
        }
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.next(deadline)?;
            if v["method"] == method {
                return Some(v);
            }
            self.notifications.push(v);
        }
    }

    fn next(&mut self, deadline: Instant) -> Option<Value> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(Line::Json(v)) => return Some(v),
                Ok(Line::NotJson(s)) => self.garbage.push(s),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// Closes the server's stdin, as a client that goes away does.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Waits for the server process to exit; its status, or None past the timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `tools/call`, returning the result object.
    pub fn call(&mut self, tool: &str, args: Value) -> Value {
        let r = self.request("tools/call", json!({"name": tool, "arguments": args}));
        r.get("result")
            .cloned()
            .unwrap_or_else(|| panic!("tools/call {tool} got no result: {r}"))
    }
}

impl Drop for McpClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
