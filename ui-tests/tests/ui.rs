//! Compile-fail and compile-pass cases of `#[qtasks::task]` and `#[qtasks::plugin]`.
//!
//! `fail/` holds errors our macros emit: their wording is ours and does not change with the
//! compiler. `fail-typeck/` holds errors rustc reports through our diagnostic attributes; rustc
//! upgrades change their layout, so they run only on the compiler their snapshots were made
//! with. To refresh snapshots: `TRYBUILD=overwrite cargo test -p qtasks-ui-tests`, then read the
//! diff.

#[test]
fn macro_errors() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/fail/*.rs");
    cases.pass("tests/pass/*.rs");
}

#[rustversion::attr(
    not(stable(1.95)),
    ignore = "stderr snapshots are pinned to rustc 1.95"
)]
#[test]
fn type_check_errors() {
    trybuild::TestCases::new().compile_fail("tests/fail-typeck/*.rs");
}
