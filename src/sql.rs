//! Lexical facts about SQL text: where literals, quoted identifiers and comments are,
//! how many statements there are, and whether a statement writes.
//!
//! A tokenizer, not a parser: it splits text into code and non-code spans so that lint
//! and the EXPLAIN tool can reason about what the server will see as code.

/// What a span of SQL text is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    Code,
    /// `'...'`, `E'...'`, or a dollar-quoted body.
    Literal,
    /// `"..."`: still code to the server (a name), but never a keyword.
    QuotedIdent,
    Comment,
}

/// Splits SQL text into spans that cover it completely, in order.
pub fn spans(sql: &str) -> Vec<(SpanKind, &str)> {
    let bytes = sql.as_bytes();
    let mut out = Vec::new();
    let mut code_start = 0;
    let mut i = 0;
    while i < bytes.len() {
        let (kind, end) = match bytes[i] {
            b'\'' => (SpanKind::Literal, quoted_end(bytes, i, b'\'')),
            b'"' => (SpanKind::QuotedIdent, quoted_end(bytes, i, b'"')),
            b'-' if bytes.get(i + 1) == Some(&b'-') => (
                SpanKind::Comment,
                sql[i..].find('\n').map_or(bytes.len(), |n| i + n + 1),
            ),
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                (SpanKind::Comment, block_comment_end(sql, i))
            }
            b'$' => match dollar_tag(sql, i) {
                Some(tag) => (
                    SpanKind::Literal,
                    sql[i + tag.len()..]
                        .find(tag)
                        .map_or(bytes.len(), |n| i + tag.len() + n + tag.len()),
                ),
                None => {
                    i += 1;
                    continue;
                }
            },
            _ => {
                i += 1;
                continue;
            }
        };
        if code_start < i {
            out.push((SpanKind::Code, &sql[code_start..i]));
        }
        let end = end.min(bytes.len());
        out.push((kind, &sql[i..end]));
        i = end;
        code_start = end;
    }
    if code_start < bytes.len() {
        out.push((SpanKind::Code, &sql[code_start..]));
    }
    out
}

fn quoted_end(bytes: &[u8], start: usize, q: u8) -> usize {
    let mut j = start + 1;
    while j < bytes.len() {
        if bytes[j] == q {
            if bytes.get(j + 1) == Some(&q) {
                j += 2;
                continue;
            }
            return j + 1;
        }
        j += 1;
    }
    bytes.len()
}

fn block_comment_end(sql: &str, start: usize) -> usize {
    // Block comments nest in PostgreSQL.
    let bytes = sql.as_bytes();
    let mut depth = 0;
    let mut j = start;
    while j + 1 < bytes.len() {
        match (bytes[j], bytes[j + 1]) {
            (b'/', b'*') => {
                depth += 1;
                j += 2;
            }
            (b'*', b'/') => {
                depth -= 1;
                j += 2;
                if depth == 0 {
                    return j;
                }
            }
            _ => j += 1,
        }
    }
    bytes.len()
}

/// `$tag$` starting at `i`, if it is one (`$1` is a parameter, not a quote).
fn dollar_tag(sql: &str, i: usize) -> Option<&str> {
    let rest = &sql[i + 1..];
    if rest.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    let len = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))?;
    (rest.as_bytes()[len] == b'$').then(|| &sql[i..i + len + 2])
}

/// The code of `sql` with literals and comments replaced by a space; quoted
/// identifiers are kept with their quotes.
pub fn code_only(sql: &str) -> String {
    spans(sql)
        .into_iter()
        .map(|(k, s)| match k {
            SpanKind::Code | SpanKind::QuotedIdent => s,
            SpanKind::Literal | SpanKind::Comment => " ",
        })
        .collect()
}

/// Placeholders `$n` that sit inside literals, quoted identifiers or comments, where the
/// server would not see them as parameters.
pub fn placeholders_outside_code(sql: &str) -> Vec<String> {
    let mut bad = Vec::new();
    for (kind, text) in spans(sql) {
        if kind == SpanKind::Code {
            continue;
        }
        let mut rest = text;
        while let Some(p) = rest.find('$') {
            let digits: String = rest[p + 1..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            if !digits.is_empty() {
                bad.push(format!("${digits}"));
            }
            rest = &rest[p + 1..];
        }
    }
    bad
}

/// The number of statements: text separated by `;` outside literals and comments,
/// ignoring empty ones.
pub fn statement_count(sql: &str) -> usize {
    let code = code_only(sql);
    code.split(';').filter(|s| !s.trim().is_empty()).count()
}

/// The first keyword of the statement, lowercased (`select`, `with`, `delete`, ...).
pub fn first_keyword(sql: &str) -> Option<String> {
    let code = code_only(sql);
    let word: String = code
        .trim_start_matches(|c: char| c.is_whitespace() || c == '(')
        .chars()
        .take_while(|c| c.is_ascii_alphabetic())
        .collect();
    (!word.is_empty()).then(|| word.to_ascii_lowercase())
}

/// Words that write (or may write), sorted for binary search: SQL commands, and the
/// functions of PostgreSQL and Citus that change state.
const WRITE_WORDS: &[&str] = &[
    "alter",
    "alter_distributed_table",
    "call",
    "citus_activate_node",
    "citus_add_node",
    "citus_copy_shard_placement",
    "citus_disable_node",
    "citus_drain_node",
    "citus_job_cancel",
    "citus_move_shard_placement",
    "citus_rebalance_start",
    "citus_rebalance_stop",
    "citus_remove_node",
    "citus_set_node_property",
    "citus_update_node",
    "cluster",
    "comment",
    "copy",
    "create",
    "create_distributed_table",
    "create_reference_table",
    "delete",
    "do",
    "drop",
    "grant",
    "insert",
    "into",
    "lock",
    "master_move_shard_placement",
    "merge",
    "nextval",
    "pg_cancel_backend",
    "pg_terminate_backend",
    "rebalance_table_shards",
    "refresh",
    "reindex",
    "revoke",
    "security",
    "setval",
    "truncate",
    "undistribute_table",
    "update",
    "vacuum",
];

/// The first word of `sql`'s code that writes (or may write), if any.
///
/// Read-only work runs in READ ONLY transactions anyway; this catches the mistake
/// before the database does, and lets EXPLAIN ANALYZE refuse such statements.
/// `into` covers `SELECT ... INTO new_table`; `FOR UPDATE` counts as `update`.
pub fn writes(sql: &str) -> Option<String> {
    let code = code_only(sql);
    code.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '$'))
        .filter(|w| w.len() >= 2 && w.as_bytes()[0].is_ascii_alphabetic())
        .map(str::to_ascii_lowercase)
        .find(|w| {
            WRITE_WORDS.binary_search(&w.as_str()).is_ok() || w.starts_with("run_command_on_")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_cover_the_text() {
        let sql = "SELECT 'a;b', \"x\"\"y\", $q$ ; $q$ -- c;\n/* d /* e */ ; */ 1";
        let joined: String = spans(sql).iter().map(|(_, s)| *s).collect();
        assert_eq!(joined, sql);
        assert_eq!(statement_count(sql), 1);
    }

    #[test]
    fn statements_and_keywords() {
        assert_eq!(statement_count("SELECT 1;"), 1);
        assert_eq!(statement_count("SELECT 1; SELECT 2"), 2);
        assert_eq!(statement_count(" ; ;"), 0);
        assert_eq!(
            first_keyword("  -- hi\n (SELECT 1)").as_deref(),
            Some("select")
        );
        assert_eq!(
            first_keyword("/* x */ delete from t").as_deref(),
            Some("delete")
        );
    }

    #[test]
    fn write_words_are_sorted() {
        assert!(WRITE_WORDS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn writes_are_found_in_code_only() {
        assert_eq!(
            writes("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d").as_deref(),
            Some("delete")
        );
        assert_eq!(writes("SELECT * INTO t2 FROM t").as_deref(), Some("into"));
        assert_eq!(
            writes("SELECT * FROM t FOR UPDATE").as_deref(),
            Some("update")
        );
        assert_eq!(
            writes("SELECT \"nextval\"('s')").as_deref(),
            Some("nextval")
        );
        assert_eq!(writes("SELECT 'delete', updated_at FROM t -- drop"), None);
    }

    #[test]
    fn placeholders_in_literals_are_found() {
        assert!(placeholders_outside_code("SELECT $1, '$$' , $2::int").is_empty());
        assert_eq!(placeholders_outside_code("SELECT '$1'"), vec!["$1"]);
        assert_eq!(
            placeholders_outside_code("SELECT 1 -- $2\n, \"$3\""),
            vec!["$2", "$3"]
        );
        assert_eq!(
            placeholders_outside_code("SELECT $q$ $4 $q$, $5"),
            vec!["$4"]
        );
    }
}
