//! Every lint code has a fixture in `tests/lint/` named after it, and linting that file
//! (with the test database, for the `--db` codes) reports exactly that code.

use std::collections::BTreeSet;
use std::sync::Arc;

use citus_mcp::compile::SourceFile;
use citus_mcp::lint;
use libtest_mimic::Trial;

use crate::{Ctx, trial};

pub fn trials(ctx: &Arc<Ctx>) -> Vec<Trial> {
    vec![trial(
        ctx,
        "lint::every_code_has_a_fixture_that_reports_it",
        every_code_has_a_fixture,
    )]
}

fn every_code_has_a_fixture(ctx: &Ctx) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/lint");
    let mut covered = BTreeSet::new();
    let db = ctx.pool(&ctx.dsn());
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let expected = name.split('_').next().unwrap().to_ascii_uppercase();
        let file = SourceFile {
            origin: name.clone(),
            text: std::fs::read_to_string(&path).unwrap().into(),
        };
        let diags = ctx
            .rt
            .block_on(lint::run(std::slice::from_ref(&file), Some(&db)));
        let codes: BTreeSet<&str> = diags.iter().map(|d| d.code.as_str()).collect();
        assert_eq!(
            codes,
            BTreeSet::from([expected.as_str()]),
            "{name}: {diags:#?}"
        );
        assert!(
            diags.iter().all(|d| d.position.is_some()),
            "{name}: every finding points at a line: {diags:#?}"
        );
        covered.insert(expected);
    }
    let all: BTreeSet<String> = lint::CODES
        .iter()
        .map(|(c, _)| c.as_str().to_string())
        .collect();
    let missing: Vec<_> = all.difference(&covered).collect();
    assert!(
        missing.is_empty(),
        "codes without a fixture in tests/lint: {missing:?}"
    );
}
