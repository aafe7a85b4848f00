//! One diagnostic model for everything that checks tool and prompt files.
//!
//! Loading (the registry), hot reload (the watcher) and `citus-mcp lint` all report
//! problems as [`Diagnostic`]s; only their renderers differ. Codes are stable and
//! never reused: a user may grep for them or suppress them in CI.

use std::fmt;

use serde::Serialize;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Error,
}

/// A stable diagnostic code, documented in `lint::CODES`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Code {
    /// The file is not valid YAML or does not have the shape of a tool file.
    E001,
    /// The file violates the tool-spec (or prompt-spec) meta-schema.
    E002,
    /// `input_schema` is not a valid JSON Schema of type object.
    E003,
    /// Two files declare the same name.
    E004,
    /// A SQL template, `when` expression or prompt message does not compile.
    E005,
    /// A bind placeholder lands inside a quoted literal, identifier or comment.
    E006,
    /// An example's arguments do not validate against `input_schema`.
    E007,
    /// An example does not render.
    E008,
    /// A read-only or plan tool contains a statement that writes.
    E009,
    /// An execute tool does not take an `approval_token`.
    E010,
    /// `lint --db`: the rendered statement does not prepare against the cluster.
    E011,
    /// The paging declaration is inconsistent with the queries or the input schema.
    E012,
    /// A fan-out query (target workers / all_nodes) takes bind parameters.
    E013,
    /// A rendered query is not exactly one statement PostgreSQL's grammar accepts.
    E014,
    /// `lint --db`: a query's `redact` names a column its statement does not return.
    E015,
    /// A plugin tool's file lacks a query its plugin runs, declares it for another place,
    /// or is not `safety: execute` while the plugin changes the cluster.
    E016,
    /// The file name does not match the declared name.
    W001,
    /// The tool has no examples.
    W002,
    /// `lint --db`: a result column has a type the engine cannot turn into JSON.
    W003,
    /// A query returns two columns of one name (statically where the SQL names them,
    /// and with `lint --db`); the result keeps one.
    W004,
    /// A plugin tool's file declares a query its plugin never runs.
    W005,
}

impl Code {
    /// The code as it is printed, e.g. `E006`.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::E001 => "E001",
            Code::E002 => "E002",
            Code::E003 => "E003",
            Code::E004 => "E004",
            Code::E005 => "E005",
            Code::E006 => "E006",
            Code::E007 => "E007",
            Code::E008 => "E008",
            Code::E009 => "E009",
            Code::E010 => "E010",
            Code::E011 => "E011",
            Code::E012 => "E012",
            Code::E013 => "E013",
            Code::E014 => "E014",
            Code::E015 => "E015",
            Code::E016 => "E016",
            Code::W001 => "W001",
            Code::W002 => "W002",
            Code::W003 => "W003",
            Code::W004 => "W004",
            Code::W005 => "W005",
        }
    }

    /// Warnings start with `W`; everything else is an error.
    pub fn severity(self) -> Severity {
        if self.as_str().starts_with('W') {
            Severity::Warning
        } else {
            Severity::Error
        }
    }
}

/// A 1-based position in a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

/// One finding about one file.
#[derive(Debug, Clone, Serialize)]
pub struct Diagnostic {
    pub code: Code,
    pub severity: Severity,
    /// The file as the user named it (or `builtin:tools.d/x.yaml`).
    pub file: String,
    pub position: Option<Position>,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn new(code: Code, file: impl Into<String>, message: impl Into<String>) -> Self {
        Diagnostic {
            code,
            severity: code.severity(),
            file: file.into(),
            position: None,
            message: message.into(),
            help: None,
        }
    }

    pub fn at(mut self, position: Option<Position>) -> Self {
        self.position = position;
        self
    }

    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

/// The concise one-line form: `file:line:col: error[E006]: message`.
impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(p) = self.position {
            write!(f, ":{}:{}", p.line, p.column)?;
        }
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, ": {sev}[{}]: {}", self.code.as_str(), self.message)
    }
}
