//! Every branch of a SQL template, as SQL text, for lint.
//!
//! Rendering examples checks only the branches the examples take. Here the template's
//! control structure is read (`{% if %}` / `elif` / `else`, `{% for %}` run zero or one
//! times) and every combination of branches is written out, with each `{{ value }}` as a
//! bind placeholder and each `{{ name | ident }}` as a quoted identifier: the text the
//! server would parse for some arguments. An `if` chain whose conditions repeat takes the
//! same branch each time, so correlated branches are not mixed into text no call makes.
//!
//! This reads only the template's tags, never SQL: what the text means is for `sql`.

use std::collections::BTreeMap;

/// A piece of a template.
#[derive(Debug)]
enum Node {
    Text(String),
    /// `{{ ... }}`: true when it goes through the `ident` filter.
    Value(bool),
    /// `if` / `elif` branches with their conditions, then the `else` branch if any.
    If {
        key: String,
        branches: Vec<Vec<Node>>,
    },
    /// A `for` body, and its `else` branch (taken when the loop is empty).
    For {
        key: String,
        body: Vec<Node>,
        empty: Vec<Node>,
    },
}

/// A template tag or text, as the lexer below sees it.
enum Token<'a> {
    Text(&'a str),
    Value(&'a str),
    Tag(&'a str),
}

/// Every branch combination of `source`, at most `limit` of them; `None` when the
/// template uses a construct this module does not follow (macros, includes...).
pub fn variants(source: &str, limit: usize) -> Option<Vec<String>> {
    let tokens = lex(source)?;
    let mut pos = 0;
    let nodes = parse(&tokens, &mut pos, &[])?.0;
    if pos != tokens.len() {
        return None;
    }
    // Each distinct choice (an `if` chain by its conditions, a loop by its header)
    // and how many ways it can go.
    let mut choices = BTreeMap::new();
    collect_choices(&nodes, &mut choices);
    let keys: Vec<(&String, usize)> = choices.iter().map(|(k, n)| (k, *n)).collect();
    let mut out = Vec::new();
    let mut counter = vec![0usize; keys.len()];
    loop {
        let pick: BTreeMap<&str, usize> = keys
            .iter()
            .zip(&counter)
            .map(|((k, _), c)| (k.as_str(), *c))
            .collect();
        let mut text = String::new();
        write(&nodes, &pick, &mut text);
        out.push(text);
        if out.len() >= limit || !advance(&mut counter, &keys) {
            break;
        }
    }
    out.sort();
    out.dedup();
    Some(out)
}

/// The next combination in mixed radix; false after the last.
fn advance(counter: &mut [usize], keys: &[(&String, usize)]) -> bool {
    for (c, (_, n)) in counter.iter_mut().zip(keys) {
        *c += 1;
        if *c < *n {
            return true;
        }
        *c = 0;
    }
    false
}

fn lex(source: &str) -> Option<Vec<Token<'_>>> {
    let mut out = Vec::new();
    let mut rest = source;
    while !rest.is_empty() {
        let next = ["{{", "{%", "{#"]
            .iter()
            .filter_map(|open| rest.find(open).map(|i| (i, *open)))
            .min_by_key(|(i, _)| *i);
        let Some((i, open)) = next else {
            out.push(Token::Text(rest));
            break;
        };
        if i > 0 {
            out.push(Token::Text(&rest[..i]));
        }
        let close = match open {
            "{{" => "}}",
            "{%" => "%}",
            _ => "#}",
        };
        let body_start = i + 2;
        let end = rest[body_start..].find(close)? + body_start;
        let inner = rest[body_start..end]
            .trim_matches(|c: char| c == '-' || c == '+' || c == '~')
            .trim();
        match open {
            "{{" => out.push(Token::Value(inner)),
            "{%" => out.push(Token::Tag(inner)),
            _ => {}
        }
        rest = &rest[end + 2..];
    }
    Some(out)
}

/// Parses nodes up to one of the `until` tags; returns them and the tag that ended them.
fn parse<'a>(
    tokens: &[Token<'a>],
    pos: &mut usize,
    until: &[&str],
) -> Option<(Vec<Node>, Option<&'a str>)> {
    let mut nodes = Vec::new();
    while *pos < tokens.len() {
        let token = &tokens[*pos];
        *pos += 1;
        match token {
            Token::Text(t) => nodes.push(Node::Text((*t).to_string())),
            Token::Value(v) => nodes.push(Node::Value(is_ident(v))),
            Token::Tag(tag) => {
                let word = tag.split_whitespace().next().unwrap_or_default();
                if until.contains(&word) {
                    return Some((nodes, Some(tag)));
                }
                match word {
                    "if" => nodes.push(parse_if(tokens, pos, tag)?),
                    "for" => {
                        let (body, end) = parse(tokens, pos, &["else", "endfor"])?;
                        let empty = match end?.split_whitespace().next() {
                            Some("else") => parse(tokens, pos, &["endfor"])?.0,
                            _ => Vec::new(),
                        };
                        nodes.push(Node::For {
                            key: tag.to_string(),
                            body,
                            empty,
                        });
                    }
                    // Assignments print nothing.
                    "set" if tag.contains('=') => {}
                    _ => return None,
                }
            }
        }
    }
    until.is_empty().then_some((nodes, None))
}

fn parse_if(tokens: &[Token<'_>], pos: &mut usize, head: &str) -> Option<Node> {
    let mut key = head.to_string();
    let mut branches = Vec::new();
    let mut has_else = false;
    loop {
        let (body, end) = parse(tokens, pos, &["elif", "else", "endif"])?;
        branches.push(body);
        let end = end?;
        match end.split_whitespace().next() {
            Some("elif") => key.push_str(&format!(" | {end}")),
            Some("else") => {
                has_else = true;
                key.push_str(" | else");
            }
            _ => break,
        }
    }
    if !has_else {
        branches.push(Vec::new());
    }
    Some(Node::If { key, branches })
}

fn is_ident(value: &str) -> bool {
    value
        .split('|')
        .skip(1)
        .any(|f| f.trim().split(['(', ' ']).next() == Some("ident"))
}

fn collect_choices(nodes: &[Node], out: &mut BTreeMap<String, usize>) {
    for n in nodes {
        match n {
            Node::If { key, branches } => {
                out.insert(key.clone(), branches.len());
                branches.iter().for_each(|b| collect_choices(b, out));
            }
            Node::For { key, body, empty } => {
                out.insert(key.clone(), 2);
                collect_choices(body, out);
                collect_choices(empty, out);
            }
            Node::Text(_) | Node::Value(_) => {}
        }
    }
}

fn write(nodes: &[Node], pick: &BTreeMap<&str, usize>, out: &mut String) {
    for n in nodes {
        match n {
            Node::Text(t) => out.push_str(t),
            // A bind placeholder or a quoted name: what the template writes there.
            Node::Value(true) => out.push_str("\"name\""),
            Node::Value(false) => out.push_str("$1"),
            Node::If { key, branches } => {
                let i = pick.get(key.as_str()).copied().unwrap_or(0);
                write(&branches[i.min(branches.len() - 1)], pick, out);
            }
            Node::For { key, body, empty } => {
                if pick.get(key.as_str()).copied().unwrap_or(0) == 1 {
                    write(body, pick, out);
                } else {
                    write(empty, pick, out);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_branch_is_written_out() {
        let v = variants(
            "SELECT {{ a }} FROM {{ t | ident }}{% if x %} WHERE b = {{ b }}{% elif y %} WHERE c{% else %} WHERE d{% endif %}",
            100,
        )
        .unwrap();
        assert_eq!(
            v,
            vec![
                "SELECT $1 FROM \"name\" WHERE b = $1",
                "SELECT $1 FROM \"name\" WHERE c",
                "SELECT $1 FROM \"name\" WHERE d",
            ]
        );
    }

    #[test]
    fn repeated_conditions_take_the_same_branch_and_loops_run_zero_or_one_times() {
        let v = variants(
            "SELECT 1{% if x %}, a{% endif %}{% for c in cs %}, {{ c }}{% endfor %} FROM t{% if x %} JOIN u{% endif %}",
            100,
        )
        .unwrap();
        assert_eq!(
            v,
            vec![
                "SELECT 1 FROM t",
                "SELECT 1, $1 FROM t",
                "SELECT 1, a FROM t JOIN u",
                "SELECT 1, a, $1 FROM t JOIN u",
            ]
        );
    }

    #[test]
    fn nested_branches_and_unknown_constructs() {
        let v = variants("{% if a %}{% if b %}X{% endif %}Y{% endif %}", 100).unwrap();
        assert_eq!(v, vec!["", "XY", "Y"]);
        assert!(variants("{% macro m() %}x{% endmacro %}", 10).is_none());
        assert!(variants("{% if a %}x", 10).is_none());
        assert_eq!(
            variants("{# note #}SELECT 1", 10).unwrap(),
            vec!["SELECT 1"]
        );
    }
}
