//! sellable-dsl: the merchandisers' rule language. Rule files are plain text
//! (`docs/rules.md` is the guide); [`load`] parses them with a pest grammar (`src/rules.pest`),
//! checks every field and type against a [`Schema`], and compiles them into a [`RuleSet`] whose
//! evaluation does no string lookups. Pure: no IO, no Redis (checked by `make test`).
//!
//! Invariants:
//! - parsing never fails: it returns the tree and a list of diagnostics;
//! - a rule set is produced only when there is no error, so a bad file never goes live;
//! - evaluation: any deny wins, holds add up, caps take the minimum, priority orders the trace.
//!
//! Tests: unit tests below and in each module; golden files in `test_data/{ok,err}` checked by
//! `tests/it/` (snapshots with insta: `INSTA_UPDATE=always cargo test -p sellable-dsl` rewrites them).

pub mod diagnostic;
pub mod ruleset;
pub mod syntax;

pub use diagnostic::{Diagnostic, Severity};
pub use ruleset::{load, Evaluation, Facts, Fired, Loaded, RuleSet, Schema, Seen, Source, TestResult, Type, Value};
pub use syntax::parse;

#[cfg(test)]
mod tests;
