//! Golden tests of the rule language: every file in `test_data/err` has its diagnostics pinned
//! as an insta snapshot (`tests/it/snapshots/`); every example rule file loads cleanly and passes
//! its own tests. `INSTA_UPDATE=always cargo test -p sellable-dsl` rewrites the snapshots.

use std::path::{Path, PathBuf};

use sellable_dsl::{load, Schema, Severity, Source, Type};

fn schema() -> Schema {
    Schema::standard().with_attribute("fragile", Type::Bool)
}

fn rule_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "rules"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no rule files in {}", dir.display());
    files
}

fn source(path: &Path) -> Source {
    let name = format!("{}", path.file_name().unwrap().to_string_lossy());
    Source { name, text: std::fs::read_to_string(path).unwrap() }
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

#[test]
fn every_error_kind_has_pinned_wording() {
    for path in rule_files(&workspace().join("dsl/test_data/err")) {
        let loaded = load(&[source(&path)], &schema());
        assert!(!loaded.diagnostics.is_empty(), "{} should produce diagnostics", path.display());
        let rendered: Vec<String> = loaded.diagnostics.iter().map(ToString::to_string).collect();
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        insta::assert_snapshot!(name, rendered.join("\n\n"));
    }
}

#[test]
fn errors_keep_a_ruleset_from_loading_warnings_do_not() {
    let err = workspace().join("dsl/test_data/err");
    let warnings = load(&[source(&err.join("warnings.rules"))], &schema());
    assert!(warnings.diagnostics.iter().all(|d| d.severity == Severity::Warning));
    assert!(warnings.ruleset.is_some());
    let broken = load(&[source(&err.join("broken_rule_among_good.rules"))], &schema());
    assert_eq!(broken.errors().count(), 1, "one broken rule, one error: {:?}", broken.diagnostics);
    assert!(broken.ruleset.is_none());
}

#[test]
fn example_rule_files_check_cleanly_and_pass_their_tests() {
    for path in rule_files(&workspace().join("examples/rules")) {
        let loaded = load(&[source(&path)], &schema());
        let rendered: Vec<String> = loaded.diagnostics.iter().map(ToString::to_string).collect();
        assert!(rendered.is_empty(), "{}:\n{}", path.display(), rendered.join("\n"));
        let ruleset = loaded.ruleset.unwrap();
        let results = ruleset.run_tests();
        assert!(results.len() >= 3, "{} should carry its tests", path.display());
        for result in results {
            assert!(result.passed(), "{}: test \"{}\": {:?}", path.display(), result.name, result.failures);
        }
    }
}
