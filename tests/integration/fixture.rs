//! The database under test has the Citus 13.2 catalog: every relation and column of
//! `tests/fixtures/citus/catalog-relations.tsv` with the same types. On the fixture
//! this proves it mirrors real Citus; on a real cluster, that the reference is right.

use std::collections::BTreeSet;
use std::sync::Arc;

use libtest_mimic::Trial;

use crate::{Ctx, trial};

pub fn trials(ctx: &Arc<Ctx>) -> Vec<Trial> {
    vec![trial(
        ctx,
        "fixture::catalog_matches_citus_13_2",
        catalog_matches,
    )]
}

/// Schema, relation, kind, position, name and type; owner_extension is informational
/// (the fixture is not an extension).
fn rows<'a>(lines: impl Iterator<Item = &'a str>, sep: char) -> BTreeSet<String> {
    lines
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split(sep).take(6).collect::<Vec<_>>().join("\t"))
        .collect()
}

fn catalog_matches(ctx: &Ctx) {
    let expected = rows(
        include_str!("../fixtures/citus/catalog-relations.tsv")
            .lines()
            .skip(1),
        '\t',
    );
    let query = include_str!("../fixtures/citus/check_catalog.sql");
    let out = ctx.db().psql(query).unwrap();
    let actual = rows(out.lines(), '|');
    let missing: Vec<_> = expected.difference(&actual).take(20).collect();
    let extra: Vec<_> = actual.difference(&expected).take(20).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "catalog differs from Citus 13.2\nmissing: {missing:#?}\nextra: {extra:#?}"
    );
}
