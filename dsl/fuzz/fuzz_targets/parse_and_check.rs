//! Any bytes, as a rule file: parsing, checking, compiling, running the file's tests and
//! printing diagnostics must never panic, whatever the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sellable_dsl::{load, Schema, Source, Type};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data).into_owned();
    let schema = Schema::standard().with_attribute("fragile", Type::Bool);
    let loaded = load(&[Source { name: "fuzz.rules".into(), text }], &schema);
    for diagnostic in &loaded.diagnostics {
        let _ = diagnostic.to_string();
    }
    if let Some(ruleset) = loaded.ruleset {
        let _ = ruleset.run_tests();
        let _ = ruleset.evaluate(&ruleset.facts());
    }
});
