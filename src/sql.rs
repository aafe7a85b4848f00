//! SQL read by PostgreSQL's own grammar (libpg_query through the `pg_query` crate).
//!
//! Everything here that says what a statement is, whether it writes, or what it can
//! reach is decided by the server's real parser and lexer, never by a word list or a
//! home-made tokenizer: quoting, `U&"..."` identifiers, `E'...'` escapes and dollar
//! quotes are read exactly as PostgreSQL reads them.
//!
//! It does no I/O. What a name means (is this function volatile? is this relation a
//! view?) is for the live catalog to say; [`Reach`] lists the names to ask it about.

use std::collections::BTreeSet;

use serde_json::Value;

/// Why text is not SQL this module accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SqlError(pub String);

/// A parsed statement list, as the parser's tree in libpg_query's JSON form: a node is
/// an object with one key, its type (`{"FuncCall": {...}}`), whose fields carry
/// PostgreSQL's own names (`targetList`, `funcname`); a field whose type is fixed
/// (`SelectStmt.larg`, `TypeCast.typeName`) holds the fields without the type key, and
/// fields at their default (false, 0, empty, NULL) are left out.
#[derive(Debug, Clone)]
pub struct Parsed {
    statements: Vec<Value>,
}

/// Parses SQL text with PostgreSQL's grammar.
pub fn parse(sql: &str) -> Result<Parsed, SqlError> {
    let json = libpg_query::parse(sql).map_err(|m| SqlError(format!("syntax error: {m}")))?;
    // serde_json stops at 128 levels of objects and arrays, two per expression; the
    // walkers below recurse as deep, so that limit is also what keeps their stack small.
    let tree: Value = serde_json::from_str(&json).map_err(|e| {
        SqlError(if e.to_string().starts_with("recursion limit exceeded") {
            format!(
                "the statement nests too deeply for citus-mcp to read: at most {MAX_CHAIN} \
                 operators in one chain (a + b + c ..., a || b || c ...), or about 16 subqueries \
                 one inside another; split the chain or the subqueries"
            )
        } else {
            format!("the parser's tree could not be read: {e}")
        })
    })?;
    let statements = match tree {
        Value::Object(mut m) => match m.remove("stmts") {
            Some(Value::Array(stmts)) => stmts,
            _ => Vec::new(),
        },
        _ => Vec::new(),
    };
    let statements = statements
        .into_iter()
        .filter_map(|s| match s {
            Value::Object(mut m) => m.remove("stmt"),
            _ => None,
        })
        .collect();
    Ok(Parsed { statements })
}

/// The longest chain of binary operators whose parse tree can be read (see
/// [`parse`]); a scalar subquery costs about three and a half times as much.
const MAX_CHAIN: usize = 57;

/// The kind of a top-level statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// SELECT, VALUES, TABLE, or WITH ... SELECT.
    Query,
    Insert,
    Update,
    Delete,
    Merge,
    /// Anything else: DDL, SET, CALL, DO, COPY, EXPLAIN, transaction control...
    Other,
}

impl Parsed {
    /// How many statements the text holds (empty statements between `;` do not count).
    pub fn len(&self) -> usize {
        self.statements.len()
    }

    pub fn is_empty(&self) -> bool {
        self.statements.is_empty()
    }

    /// The kind of the first statement, and its node name (e.g. `ExplainStmt`).
    pub fn kind(&self) -> (Kind, String) {
        self.statements
            .first()
            .map(kind_of)
            .unwrap_or((Kind::Other, String::new()))
    }

    /// What in the text writes or locks, if anything: a statement that is not a query,
    /// a data-modifying CTE, `SELECT INTO`, or a locking clause (`FOR UPDATE`...).
    /// Functions that write are not seen here; [`Parsed::reach`] lists them for the
    /// catalog to judge.
    pub fn writes(&self) -> Option<String> {
        for st in &self.statements {
            let (kind, name) = kind_of(st);
            if kind != Kind::Query {
                return Some(statement_name(kind, &name));
            }
            if let Some(found) = find_write(st) {
                return Some(found);
            }
        }
        None
    }

    /// Whether the statements have parameters (`$1`), which need values bound to them.
    pub fn has_params(&self) -> bool {
        fn any_param(v: &Value) -> bool {
            match v {
                Value::Object(m) => m.contains_key("ParamRef") || m.values().any(any_param),
                Value::Array(items) => items.iter().any(any_param),
                _ => false,
            }
        }
        self.statements.iter().any(any_param)
    }

    /// Whether a string literal of the statements could be read as an array, a row or a
    /// range: the input functions of those read only text with a `{`, `(` or `[` in it.
    /// Such a literal is read as the statement is parsed, by the input function of
    /// whatever type it meets there.
    pub fn has_container_literal(&self) -> bool {
        fn any(v: &Value) -> bool {
            match v {
                // An A_Const's string, wherever the constant sits (a name's `String` node
                // holds its `sval` as text, not as an object).
                Value::Object(m) => {
                    let literal = m
                        .get("sval")
                        .and_then(|v| v.get("sval"))
                        .and_then(Value::as_str)
                        .is_some_and(|s| s.contains(['{', '(', '[']));
                    literal || m.values().any(any)
                }
                Value::Array(items) => items.iter().any(any),
                _ => false,
            }
        }
        self.statements.iter().any(any)
    }

    /// The names of the first statement's result columns, as a SELECT (its first branch,
    /// for UNION and the like) names them: the alias, else a column reference's last part.
    /// A column named by neither (an expression) is `?column?`, as PostgreSQL names it.
    pub fn output_names(&self) -> Vec<String> {
        let mut select = self.statements.first().and_then(|s| s.get("SelectStmt"));
        while let Some(left) = select.and_then(|s| s.get("larg")).filter(|l| !l.is_null()) {
            select = Some(left);
        }
        let targets = select
            .and_then(|s| s.get("targetList"))
            .and_then(Value::as_array);
        targets
            .into_iter()
            .flatten()
            .filter_map(|t| t.get("ResTarget"))
            .map(|r| {
                let alias = r
                    .get("name")
                    .and_then(Value::as_str)
                    .filter(|n| !n.is_empty());
                let column = || {
                    r.pointer("/val/ColumnRef/fields")?
                        .as_array()?
                        .last()?
                        .pointer("/String/sval")?
                        .as_str()
                };
                alias.or_else(column).unwrap_or("?column?").to_string()
            })
            .collect()
    }

    /// Every name the statements can reach that the catalog must judge.
    ///
    /// A relation named like one of the statement's CTEs stays in: a CTE hides a relation
    /// only in its own scope (and a non-recursive one only from the CTEs after it), so
    /// the same name elsewhere in the text may be the catalog's. Asking about a relation
    /// the statement does not read costs nothing; missing one it reads would let its view,
    /// policy or default run unchecked.
    pub fn reach(&self) -> Reach {
        let mut r = Reach::default();
        for st in &self.statements {
            collect(st, &mut r);
        }
        r
    }
}

/// A statement node's kind and type name.
fn kind_of(statement: &Value) -> (Kind, String) {
    let name = statement
        .as_object()
        .and_then(|m| m.keys().next().cloned())
        .unwrap_or_default();
    let kind = match name.as_str() {
        "SelectStmt" => Kind::Query,
        "InsertStmt" => Kind::Insert,
        "UpdateStmt" => Kind::Update,
        "DeleteStmt" => Kind::Delete,
        "MergeStmt" => Kind::Merge,
        _ => Kind::Other,
    };
    (kind, name)
}

fn statement_name(kind: Kind, node: &str) -> String {
    match kind {
        Kind::Insert => "INSERT".into(),
        Kind::Update => "UPDATE".into(),
        Kind::Delete => "DELETE".into(),
        Kind::Merge => "MERGE".into(),
        Kind::Query => "SELECT".into(),
        Kind::Other => node.trim_end_matches("Stmt").to_string(),
    }
}

/// The first writing or locking construct inside a query tree.
fn find_write(v: &Value) -> Option<String> {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                match k.as_str() {
                    "InsertStmt" => return Some("INSERT".into()),
                    "UpdateStmt" => return Some("UPDATE".into()),
                    "DeleteStmt" => return Some("DELETE".into()),
                    "MergeStmt" => return Some("MERGE".into()),
                    "intoClause" if !child.is_null() => return Some("SELECT INTO".into()),
                    "lockingClause" if child.as_array().is_some_and(|a| !a.is_empty()) => {
                        return Some("a locking clause (FOR UPDATE/SHARE)".into());
                    }
                    _ => {}
                }
                if let Some(found) = find_write(child) {
                    return Some(found);
                }
            }
            None
        }
        Value::Array(items) => items.iter().find_map(find_write),
        _ => None,
    }
}

/// A name as written: its schema (empty when unqualified) and the name itself.
pub type QualName = (String, String);

/// Names a statement can reach, as written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reach {
    /// Functions called, including names that attribute notation (`x.f`) may call.
    pub functions: BTreeSet<QualName>,
    /// Operators used, plus the comparisons sorting, grouping and joins use implicitly.
    pub operators: BTreeSet<QualName>,
    /// Types named in casts and type names (their input and cast functions run), and the
    /// names of calls that may be casts: `t(x)` and `x.t` cast x to t when t is a type.
    pub types: BTreeSet<QualName>,
    /// Types named as arrays (`t[]`): also in `types`, since each element is read as a `t`.
    pub array_types: BTreeSet<QualName>,
    /// Relations read (views, tables...), and names a CTE may also have.
    pub relations: BTreeSet<QualName>,
}

impl Reach {
    pub fn is_empty(&self) -> bool {
        self.functions.is_empty()
            && self.operators.is_empty()
            && self.types.is_empty()
            && self.array_types.is_empty()
            && self.relations.is_empty()
    }

    /// What this reaches that `seen` does not.
    pub fn minus(&self, seen: &Reach) -> Reach {
        let diff =
            |a: &BTreeSet<QualName>, b: &BTreeSet<QualName>| a.difference(b).cloned().collect();
        Reach {
            functions: diff(&self.functions, &seen.functions),
            operators: diff(&self.operators, &seen.operators),
            types: diff(&self.types, &seen.types),
            array_types: diff(&self.array_types, &seen.array_types),
            relations: diff(&self.relations, &seen.relations),
        }
    }

    /// Adds everything `other` reaches.
    pub fn extend(&mut self, other: Reach) {
        self.functions.extend(other.functions);
        self.operators.extend(other.operators);
        self.types.extend(other.types);
        self.array_types.extend(other.array_types);
        self.relations.extend(other.relations);
    }
}

/// Comparisons PostgreSQL applies without naming them: ORDER BY, GROUP BY, DISTINCT,
/// IN, BETWEEN, joins with USING, GREATEST/LEAST, CASE x WHEN ...
const IMPLICIT_OPERATORS: &[&str] = &["=", "<>", "<", ">", "<=", ">="];

/// The name a list of `String` nodes spells: its last part, and the one before it
/// as the schema (a catalog name before that is the current database's).
fn qualified(list: &Value) -> Option<QualName> {
    let parts: Vec<&str> = list
        .as_array()?
        .iter()
        .filter_map(|n| n.get("String"))
        .filter_map(|s| s.get("sval").and_then(Value::as_str))
        .collect();
    let (name, rest) = parts.split_last()?;
    Some((
        rest.last().copied().unwrap_or_default().to_string(),
        name.to_string(),
    ))
}

fn bare(name: &str) -> QualName {
    (String::new(), name.to_string())
}

fn collect(v: &Value, r: &mut Reach) {
    match v {
        Value::Object(m) => {
            if let Some(name) = m.get("funcname").and_then(qualified) {
                // PostgreSQL reads `t(x)`, one argument, as a cast to t when no function
                // t fits and t is a type: a domain's (or, for `_t('{..}')`, its
                // elements') CHECK runs then.
                if m.get("args").and_then(Value::as_array).map(Vec::len) == Some(1) {
                    r.types.insert(name.clone());
                }
                r.functions.insert(name);
            }
            // A_Expr (infix or prefix): an operator by name; BETWEEN and friends use
            // comparisons.
            if let Some(e) = m.get("A_Expr") {
                match e.get("name").and_then(qualified) {
                    Some(op) if !op.1.to_ascii_uppercase().contains("BETWEEN") => {
                        r.operators.insert(op);
                    }
                    _ => {}
                }
                r.operators
                    .extend(IMPLICIT_OPERATORS.iter().map(|s| bare(s)));
            }
            // `x op ANY (subquery)` and `ORDER BY x USING op`.
            for key in ["operName", "useOp"] {
                if let Some(op) = m.get(key).and_then(qualified) {
                    r.operators.insert(op);
                }
            }
            // TypeName (the only node with `names`): `x::t`, CAST(x AS t), typed
            // literals, column definition lists.
            if let Some(t) = m.get("names").and_then(qualified) {
                if m.get("arrayBounds").is_some_and(|b| !b.is_null()) {
                    r.array_types.insert(t.clone());
                }
                r.types.insert(t);
            }
            // RangeVar (the only node of a raw parse tree with `relname`).
            if m.contains_key("relname") {
                let rel = m.get("relname").and_then(Value::as_str).unwrap_or_default();
                let schema = m
                    .get("schemaname")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if !rel.is_empty() {
                    r.relations.insert((schema.to_string(), rel.to_string()));
                }
            }
            // `x.f` may call f(x), or cast x to the type f: every field after the first
            // is a possible function and type.
            let fields = m
                .get("ColumnRef")
                .and_then(|c| c.get("fields"))
                .and_then(Value::as_array)
                .into_iter()
                .flat_map(|f| f.iter().skip(1));
            let indirection = m
                .get("A_Indirection")
                .and_then(|c| c.get("indirection"))
                .and_then(Value::as_array)
                .into_iter()
                .flatten();
            for f in fields.chain(indirection) {
                if let Some(s) = f.pointer("/String/sval").and_then(Value::as_str) {
                    r.functions.insert(bare(s));
                    r.types.insert(bare(s));
                }
            }
            if let Some(f) = m
                .get("RangeTableSample")
                .and_then(|s| s.get("method"))
                .and_then(qualified)
            {
                r.functions.insert(f);
            }
            if m.contains_key("SelectStmt") || m.contains_key("JoinExpr") {
                r.operators
                    .extend(IMPLICIT_OPERATORS.iter().map(|s| bare(s)));
            }
            for child in m.values() {
                collect(child, r);
            }
        }
        Value::Array(items) => items.iter().for_each(|i| collect(i, r)),
        _ => {}
    }
}

/// `$n` placeholders that the lexer does not see as parameters: inside a literal, a
/// quoted identifier or a comment, where a bind would never arrive.
pub fn placeholders_outside_code(sql: &str) -> Vec<String> {
    use pg_query::protobuf::Token;
    let Ok(tokens) = pg_query::scan_tokens(sql) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for t in &tokens {
        let code = Token::try_from(t.token).unwrap_or(Token::Nul);
        if code == Token::Param {
            continue;
        }
        let text = sql
            .get(t.start as usize..t.end as usize)
            .unwrap_or_default();
        let b = text.as_bytes();
        for i in 0..b.len() {
            if b[i] == b'$' && b.get(i + 1).is_some_and(u8::is_ascii_digit) {
                let digits: String = text[i + 1..]
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect();
                out.push(format!("${digits}"));
            }
        }
    }
    out.dedup();
    out
}

/// The parser's C entry point that answers in JSON. The `pg_query` crate reads the tree
/// only as protobuf, whose decoder and node types weigh about 0.9 MB in the binary (issue #8);
/// its library (linked by that crate) also writes the same tree as JSON, which is what
/// this module reads.
mod libpg_query {
    use std::ffi::{CStr, CString, c_char, c_int};

    // The layouts of pg_query.h (libpg_query 18, vendored by pg_query 18.1).
    #[repr(C)]
    struct PgQueryError {
        message: *mut c_char,
        funcname: *mut c_char,
        filename: *mut c_char,
        lineno: c_int,
        cursorpos: c_int,
        context: *mut c_char,
    }

    #[repr(C)]
    struct PgQueryParseResult {
        parse_tree: *mut c_char,
        stderr_buffer: *mut c_char,
        error: *mut PgQueryError,
    }

    unsafe extern "C" {
        fn pg_query_parse(input: *const c_char) -> PgQueryParseResult;
        fn pg_query_free_parse_result(result: PgQueryParseResult);
    }

    /// The parse tree of `sql` as JSON text, or the parser's error message.
    pub fn parse(sql: &str) -> Result<String, String> {
        let input = CString::new(sql)
            .map_err(|e| format!("the text holds a NUL byte at {}", e.nul_position()))?;
        // SAFETY: `input` is a NUL-terminated string that outlives the call; the result's
        // pointers are either NULL or NUL-terminated strings that libpg_query allocated,
        // read here before the one call that frees them. libpg_query keeps its state per
        // thread, so calls from several threads at once are safe.
        unsafe {
            let result = pg_query_parse(input.as_ptr());
            let text = |p: *const c_char| {
                (!p.is_null()).then(|| CStr::from_ptr(p).to_string_lossy().into_owned())
            };
            let out = if result.error.is_null() {
                text(result.parse_tree).ok_or_else(|| "the parser ran out of memory".into())
            } else {
                Err(text((*result.error).message).unwrap_or_default())
            };
            pg_query_free_parse_result(result);
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_names_are_what_a_select_names_its_columns() {
        let names = |sql: &str| parse(sql).unwrap().output_names();
        assert_eq!(
            names("SELECT a.query, left(b.statement, 9) AS blocked, 1 FROM a, b"),
            ["query", "blocked", "?column?"]
        );
        assert_eq!(
            names("WITH w AS (SELECT 1 AS x) SELECT w.x AS y FROM w UNION ALL SELECT 2"),
            ["y"]
        );
        assert!(names("EXPLAIN SELECT 1").is_empty());
    }

    fn writes(sql: &str) -> Option<String> {
        parse(sql).unwrap().writes()
    }

    #[test]
    fn counts_statements_as_the_server_does() {
        assert_eq!(parse("SELECT 1").unwrap().len(), 1);
        assert_eq!(parse("SELECT 1; SELECT 2").unwrap().len(), 2);
        assert_eq!(parse("SELECT 'a;b' -- ; x").unwrap().len(), 1);
        assert_eq!(parse("SELECT $q$;$q$").unwrap().len(), 1);
        // A `$` inside an identifier does not start a dollar quote.
        assert_eq!(parse("SELECT 1 AS a$b; DELETE FROM t").unwrap().len(), 2);
        // Backslash escapes in E'' strings.
        assert_eq!(parse("SELECT E'\\''; DELETE FROM t").unwrap().len(), 2);
        assert!(parse("SELEC 1").is_err());
        // A NUL byte would end the text at the parser's door while the rest went on to
        // the server: refused whole.
        let e = parse("SELECT 1\0; DELETE FROM t").unwrap_err();
        assert!(e.0.contains("NUL byte at 8"), "{e}");
    }

    #[test]
    fn sees_writes_by_every_spelling() {
        assert_eq!(writes("SELECT 1"), None);
        assert_eq!(writes("VALUES (1)"), None);
        assert_eq!(writes("TABLE pg_class"), None);
        assert_eq!(writes("WITH x AS (SELECT 1) SELECT * FROM x"), None);
        assert_eq!(writes("DELETE FROM t").as_deref(), Some("DELETE"));
        assert_eq!(
            writes("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d").as_deref(),
            Some("DELETE")
        );
        assert_eq!(
            writes("SELECT * INTO t2 FROM t").as_deref(),
            Some("SELECT INTO")
        );
        assert!(writes("SELECT * FROM t FOR UPDATE").is_some());
        assert!(writes("SELECT 1 UNION SELECT a FROM t FOR SHARE").is_some());
        assert!(writes("(SELECT a FROM t FOR UPDATE) UNION SELECT 1").is_some());
        // Unicode-escaped keywords are identifiers, but U&"..." names still parse.
        assert_eq!(writes(r#"SELECT * FROM U&"\0070g_class""#), None);
        assert!(writes("CREATE TABLE x (a int)").is_some());
        assert!(writes("SET transaction_read_only = off").is_some());
        assert!(writes("COPY t TO STDOUT").is_some());
        assert!(writes("DO $$ BEGIN END $$").is_some());
        assert!(writes("CALL p()").is_some());
        assert!(writes("EXPLAIN ANALYZE DELETE FROM t").is_some());
    }

    #[test]
    fn reaches_functions_operators_types_and_relations() {
        let r = parse(
            "WITH c AS (SELECT 1 a) SELECT pg_catalog.lower(x.b), x.a OPERATOR(pg_catalog.+) 1, '1'::int4, \
             (x).f, y.g, '{}'::s.d[], CAST(NULL AS s.e ARRAY) \
             FROM public.v x JOIN c y USING (a) WHERE x.b ~~ 'a%' ORDER BY 1 USING <",
        )
        .unwrap()
        .reach();
        let q = |s: &str, n: &str| (s.to_string(), n.to_string());
        assert!(r.functions.contains(&q("pg_catalog", "lower")));
        assert!(r.functions.contains(&bare("g")), "{r:?}");
        assert!(r.functions.contains(&bare("f")), "{r:?}");
        assert!(r.operators.contains(&q("pg_catalog", "+")));
        assert!(r.operators.contains(&bare("~~")));
        assert!(r.operators.contains(&bare("<")));
        assert!(r.types.contains(&bare("int4")), "{r:?}");
        assert!(!r.array_types.contains(&bare("int4")), "{r:?}");
        // An array's elements are read as its element type.
        for t in [q("s", "d"), q("s", "e")] {
            assert!(r.types.contains(&t), "{r:?}");
            assert!(r.array_types.contains(&t), "{r:?}");
        }
        assert!(r.relations.contains(&q("public", "v")));
        // `f(x)` and `x.f` may be casts to a type f.
        assert!(r.types.contains(&q("pg_catalog", "lower")), "{r:?}");
        assert!(
            r.types.contains(&bare("f")) && r.types.contains(&bare("g")),
            "{r:?}"
        );
        let r = parse("SELECT * FROM t TABLESAMPLE system (1), generate_series(1, 2) g")
            .unwrap()
            .reach();
        assert!(r.functions.contains(&bare("system")));
        assert!(r.functions.contains(&bare("generate_series")));
        assert!(r.relations.contains(&bare("t")));
    }

    /// A CTE hides a relation of its name only in its own scope: the same name elsewhere
    /// in the text may be the catalog's relation, so it is always asked about.
    #[test]
    fn reaches_relations_a_cte_shares_a_name_with() {
        for sql in [
            "WITH v AS (SELECT 1) SELECT * FROM v",
            "SELECT * FROM (WITH v AS (SELECT 1) SELECT * FROM v) a, v b",
            "WITH a AS (SELECT * FROM v), v AS (SELECT 1) SELECT * FROM a",
            "WITH v AS (SELECT 1) INSERT INTO v (x) VALUES (1)",
        ] {
            let r = parse(sql).unwrap().reach();
            assert!(r.relations.contains(&bare("v")), "{sql}: {r:?}");
        }
    }

    /// The tree leaves out fields at their default (no `inh` for ONLY, no `lexpr` for a
    /// prefix operator, no `typmods` for a plain type), and a field of a fixed type holds
    /// its node without the type's name: none of these may hide a name.
    #[test]
    fn reaches_names_the_tree_writes_sparsely() {
        let r = parse(
            "SELECT OPERATOR(public.###) 5, - x.a, '1'::public.mood, \
             1 OPERATOR(public.===) ANY (SELECT 1), CAST(2 AS s.t2) \
             FROM ONLY public.t x, LATERAL s.f() AS g(c s.t3) ORDER BY 1 USING OPERATOR(public.<<<)",
        )
        .unwrap()
        .reach();
        let q = |s: &str, n: &str| (s.to_string(), n.to_string());
        assert!(r.operators.contains(&q("public", "###")), "{r:?}");
        assert!(r.operators.contains(&bare("-")), "{r:?}");
        assert!(r.operators.contains(&q("public", "===")), "{r:?}");
        assert!(r.operators.contains(&q("public", "<<<")), "{r:?}");
        assert!(r.types.contains(&q("public", "mood")), "{r:?}");
        assert!(r.types.contains(&q("s", "t2")), "{r:?}");
        assert!(r.types.contains(&q("s", "t3")), "{r:?}");
        assert!(r.relations.contains(&q("public", "t")), "{r:?}");
        assert!(r.functions.contains(&q("s", "f")), "{r:?}");
        // Every spelling of a write: the statement kinds, INTO and a locking clause
        // inside a set operation's branch (a field of fixed type).
        assert!(writes("SELECT 1 UNION (SELECT 2 INTO t)").is_some());
        assert!(writes("SELECT 1 UNION ALL (SELECT a FROM t FOR KEY SHARE)").is_some());
        assert_eq!(writes("CALL s.p()").as_deref(), Some("Call"));
        assert_eq!(
            parse("CALL s.p()").unwrap().reach().functions,
            [q("s", "p")].into()
        );
    }

    #[test]
    fn sees_literals_an_array_row_or_range_could_be_read_from() {
        let has = |sql: &str| parse(sql).unwrap().has_container_literal();
        for sql in [
            "SELECT '{7}'::d[]",
            "SELECT * FROM t WHERE a @> ' {7}'",
            "SELECT '(x)'::t",
            "SELECT E'\\x5b1,2)'::r",
            "SELECT $q$[1:1]={7}$q$",
            "SELECT f(g('(1)'))",
            "SELECT 1 FROM t WHERE x IN (SELECT '[1,2)')",
        ] {
            assert!(has(sql), "{sql}");
        }
        for sql in [
            "SELECT * FROM t WHERE c = 'paid' AND n = 7",
            "SELECT ARRAY[1, 2], ROW(1, 'a'), (1)",
            "SELECT \"{weird}\" FROM t",
            "SELECT 1 -- '{7}'",
        ] {
            assert!(!has(sql), "{sql}");
        }
    }

    #[test]
    fn sees_parameters_only_where_the_lexer_does() {
        assert!(parse("SELECT $1").unwrap().has_params());
        assert!(
            parse("SELECT * FROM t WHERE a IN (SELECT $2)")
                .unwrap()
                .has_params()
        );
        assert!(!parse("SELECT '$1', $q$ $1 $q$ -- $1").unwrap().has_params());
    }

    #[test]
    fn deep_nesting_is_refused_with_its_reason() {
        let chain = |n: usize| format!("SELECT {}", vec!["x"; n].join(" || "));
        assert!(parse(&chain(MAX_CHAIN + 1)).is_ok());
        let e = parse(&chain(MAX_CHAIN + 2)).unwrap_err();
        assert!(e.0.contains("at most 57 operators in one chain"), "{e}");
        let subqueries = |n: usize| format!("SELECT {}1{}", "(SELECT ".repeat(n), ")".repeat(n));
        assert!(parse(&subqueries(16)).is_ok());
        assert!(parse(&subqueries(17)).is_err());
        assert!(e.0.len() < 300, "{e}");
        // Far deeper, PostgreSQL's grammar itself stops; nothing overflows a stack.
        let deep = format!("SELECT {}1{}", "(SELECT ".repeat(5000), ")".repeat(5000));
        assert!(parse(&deep).is_err());
    }

    #[test]
    fn finds_placeholders_inside_literals_and_comments() {
        assert!(placeholders_outside_code("SELECT $1, '$2' -- $3").len() == 2);
        assert!(placeholders_outside_code("SELECT $1 FROM t WHERE a = $2").is_empty());
        assert_eq!(
            placeholders_outside_code("SELECT \"a$1\", $$ $4 $$"),
            vec!["$1", "$4"]
        );
    }
}
