//! citus-mcp: a declarative MCP server for Citus clusters.
//!
//! Data flows one way: file → [`spec`] → [`compile`] → [`registry`] → [`engine`] →
//! [`db`] → shaped result → [`server`]. See ARCHITECTURE.md for the map.

// stdout belongs to the MCP transport: the library never prints to it.
#![deny(clippy::print_stdout, clippy::dbg_macro)]

pub mod approval;
pub mod branches;
pub mod checks;
pub mod compile;
pub mod config;
pub mod db;
pub mod diagnostic;
pub mod echo;
pub mod engine;
pub mod httpd;
pub mod lint;
pub mod manual;
pub mod metrics;
pub mod plugins;
pub mod redact;
pub mod registry;
pub mod server;
pub mod spec;
pub mod sql;
pub mod stdio;
pub mod template;
pub mod toolsets;
pub mod watch;
