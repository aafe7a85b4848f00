//! Which tools a server serves: the toolsets an operator selected (issue #8).
//!
//! Every built-in tool file names its built-in toolset (`toolset: inspect`, `monitor`,
//! `advise` or `operate`); the configuration adds named groups of its own
//! (`toolset_groups: {oncall: [monitor, citus_advisor]}`, whose members are built-in toolsets
//! or tool names) and selects what is served (`toolsets: [inspect, oncall]`). Nothing
//! selected, or `all`, serves every tool. A [`Toolsets`] is checked once, when the
//! configuration loads, and never changes; tool files come and go under it, so a group
//! member that names no tool is a warning of the snapshot, not an error.
//!
//! It knows tool specs and names only: it does not decide modes (execute tools) or
//! plugins, which the engine adds on top.

use std::collections::{BTreeMap, BTreeSet};

use crate::spec::{ToolSpec, Toolset};

/// The name that selects every tool.
pub const ALL: &str = "all";

/// The toolsets a server serves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Toolsets {
    /// `None` serves every tool (nothing selected, or `all`).
    selected: Option<Selection>,
    /// The operator's groups, selected or not, to check their members against the tools.
    groups: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Selection {
    /// The names as the operator selected them, for messages.
    names: Vec<String>,
    /// Built-in toolsets served whole, selected directly or through a group.
    builtin: BTreeSet<Toolset>,
    /// Tools named by a selected group, whatever their own toolset.
    tools: BTreeSet<String>,
}

/// A selection that cannot be served: the configuration key at fault and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct SelectionError {
    /// `toolsets` or `toolset_groups`.
    pub key: &'static str,
    pub message: String,
}

/// Why a tool is not served, for the error a call to it gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotServed {
    /// The tool's own toolset, if it declares one.
    pub toolset: Option<Toolset>,
    /// The toolsets this server serves, as selected.
    pub served: Vec<String>,
}

impl Toolsets {
    /// Every tool is served.
    pub fn all() -> Toolsets {
        Toolsets::default()
    }

    /// The selection `names` with the operator's `groups`. Every selected name must be
    /// `all`, a built-in toolset or a group; a group may not take a built-in's name, and
    /// its members are built-in toolsets or tool names.
    pub fn new(
        names: &[String],
        groups: &BTreeMap<String, Vec<String>>,
    ) -> Result<Toolsets, SelectionError> {
        for name in groups.keys() {
            if name == ALL || Toolset::parse(name).is_some() {
                return Err(SelectionError {
                    key: "toolset_groups",
                    message: format!(
                        "`{name}` is the name of a built-in toolset; give the group another name"
                    ),
                });
            }
        }
        let known = || {
            let mut k: Vec<String> = std::iter::once(ALL.to_string())
                .chain(Toolset::ALL.iter().map(|t| t.as_str().to_string()))
                .chain(groups.keys().cloned())
                .collect();
            k.dedup();
            k.join(", ")
        };
        let mut selection = Selection {
            names: Vec::new(),
            builtin: BTreeSet::new(),
            tools: BTreeSet::new(),
        };
        let mut everything = names.is_empty();
        for name in names {
            if !selection.names.contains(name) {
                selection.names.push(name.clone());
            }
            if name == ALL {
                everything = true;
            } else if let Some(t) = Toolset::parse(name) {
                selection.builtin.insert(t);
            } else if let Some(members) = groups.get(name) {
                for m in members {
                    match Toolset::parse(m) {
                        Some(t) => selection.builtin.insert(t),
                        None => selection.tools.insert(m.clone()),
                    };
                }
            } else {
                return Err(SelectionError {
                    key: "toolsets",
                    message: format!("no toolset is named `{name}`; known: {}", known()),
                });
            }
        }
        Ok(Toolsets {
            selected: (!everything).then_some(selection),
            groups: groups.clone(),
        })
    }

    /// Whether only some tools are served.
    pub fn is_selective(&self) -> bool {
        self.selected.is_some()
    }

    /// The selected names, or `all`.
    pub fn names(&self) -> Vec<String> {
        match &self.selected {
            None => vec![ALL.to_string()],
            Some(s) => s.names.clone(),
        }
    }

    /// Whether a tool is served: its built-in toolset is selected, or a selected group
    /// names it. A tool without a toolset (an operator's file) is served only when
    /// everything is, or a group names it.
    pub fn serves(&self, spec: &ToolSpec) -> bool {
        match &self.selected {
            None => true,
            Some(s) => {
                spec.toolset.is_some_and(|t| s.builtin.contains(&t)) || s.tools.contains(&spec.name)
            }
        }
    }

    /// Why `spec` is not served, or `None` when it is.
    pub fn refusal(&self, spec: &ToolSpec) -> Option<NotServed> {
        (!self.serves(spec)).then(|| NotServed {
            toolset: spec.toolset,
            served: self.names(),
        })
    }

    /// Warnings about this selection against the tools of a snapshot: group members that
    /// name no tool (a misspelt name serves nothing, silently otherwise).
    pub fn warnings<'a>(&self, tools: impl Iterator<Item = &'a str>) -> Vec<String> {
        let tools: BTreeSet<&str> = tools.collect();
        self.groups
            .iter()
            .flat_map(|(group, members)| {
                let tools = &tools;
                members
                    .iter()
                    .filter(|m| Toolset::parse(m).is_none() && !tools.contains(m.as_str()))
                    .map(move |m| {
                        format!(
                            "toolset_groups: `{group}` names `{m}`, which is neither a tool nor a built-in toolset"
                        )
                    })
            })
            .collect()
    }
}

/// The names a prompt's text sets in backticks that could be tool names (`` `list_nodes` ``);
/// which of them are tools, the registry says.
pub fn names_in_code_spans(text: &str) -> impl Iterator<Item = &str> {
    text.split('`').skip(1).step_by(2).filter(|w| {
        let mut chars = w.chars();
        chars.next().is_some_and(|c| c.is_ascii_lowercase())
            && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool(name: &str, toolset: Option<&str>) -> ToolSpec {
        let line = toolset.map_or(String::new(), |t| format!("toolset: {t}\n"));
        crate::spec::parse_tool(
            "t.yaml",
            &format!(
                "name: {name}\ndescription: d\n{line}safety: read_only\nqueries:\n  - name: q\n    sql: SELECT 1\nexamples:\n  - args: {{}}\n"
            ),
        )
        .unwrap()
    }

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn nothing_selected_or_all_serves_everything() {
        let groups = BTreeMap::new();
        for selected in [names(&[]), names(&["all"]), names(&["inspect", "all"])] {
            let t = Toolsets::new(&selected, &groups).unwrap();
            assert!(!t.is_selective());
            assert!(t.serves(&tool("a", Some("monitor"))));
            assert!(t.serves(&tool("b", None)));
        }
    }

    #[test]
    fn built_in_toolsets_and_groups_select_tools() {
        let groups = BTreeMap::from([(
            "oncall".to_string(),
            names(&["monitor", "citus_advisor", "mine"]),
        )]);
        let t = Toolsets::new(&names(&["inspect", "oncall"]), &groups).unwrap();
        assert!(t.serves(&tool("list_nodes", Some("inspect"))));
        assert!(t.serves(&tool("citus_activity", Some("monitor"))));
        assert!(t.serves(&tool("citus_advisor", Some("advise"))));
        assert!(t.serves(&tool("mine", None)));
        assert!(!t.serves(&tool("citus_shard_heatmap", Some("advise"))));
        assert!(!t.serves(&tool("theirs", None)));
        let refusal = t
            .refusal(&tool("citus_shard_heatmap", Some("advise")))
            .unwrap();
        assert_eq!(refusal.toolset, Some(Toolset::Advise));
        assert_eq!(refusal.served, names(&["inspect", "oncall"]));
        assert!(t.refusal(&tool("list_nodes", Some("inspect"))).is_none());
    }

    #[test]
    fn unknown_names_and_shadowing_groups_are_errors() {
        let groups = BTreeMap::from([("oncall".to_string(), names(&["monitor"]))]);
        let e = Toolsets::new(&names(&["inspekt"]), &groups).unwrap_err();
        assert_eq!(e.key, "toolsets");
        let m = &e.message;
        assert!(
            m.contains("`inspekt`") && m.contains("oncall") && m.contains("inspect"),
            "{m}"
        );
        let shadow = BTreeMap::from([("inspect".to_string(), names(&["ping"]))]);
        let e = Toolsets::new(&[], &shadow).unwrap_err();
        assert_eq!(e.key, "toolset_groups");
        assert!(e.message.contains("`inspect`"), "{e}");
    }

    #[test]
    fn code_spans_give_candidate_tool_names() {
        let text =
            "1. `server_info` then `citus_advisor` with `focus: all`, then `SELECT 1` or `x`.";
        let names: Vec<&str> = names_in_code_spans(text).collect();
        assert_eq!(names, vec!["server_info", "citus_advisor", "x"]);
    }

    #[test]
    fn group_members_that_name_nothing_are_warnings() {
        let groups = BTreeMap::from([(
            "oncall".to_string(),
            names(&["monitor", "citus_activity", "citus_actvity"]),
        )]);
        let t = Toolsets::new(&names(&["oncall"]), &groups).unwrap();
        let w = t.warnings(["citus_activity", "ping"].into_iter());
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("`citus_actvity`"), "{w:?}");
    }
}
