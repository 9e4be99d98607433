//! `sellable rules check | test | explain`: rule files for merchandisers.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Result};
use sellable_dsl::{RuleSet, Schema};
use sellable_serving::RuleBook;

use crate::cli::RulesCommand;
use crate::commands::serve;

/// Rule files as loaded, with what their diagnostics counted.
pub struct Loaded {
    /// `None` if a file has an error.
    pub ruleset: Option<RuleSet>,
    pub files: usize,
    pub errors: usize,
    pub warnings: usize,
}

/// Reads rule files and directories with serving's loader and prints every diagnostic.
pub fn load(paths: &[PathBuf], schema: &Schema) -> Result<Loaded> {
    let sources = sellable_serving::rules::read_paths(paths)?;
    let loaded = sellable_dsl::load(&sources, schema);
    for diagnostic in &loaded.diagnostics {
        eprintln!("{diagnostic}\n");
    }
    let errors = loaded.errors().count();
    Ok(Loaded { files: sources.len(), errors, warnings: loaded.diagnostics.len() - errors, ruleset: loaded.ruleset })
}

pub async fn run(command: RulesCommand) -> Result<()> {
    let (files, schema) = match &command {
        RulesCommand::Check(args) | RulesCommand::Test(args) => (&args.files, args.schema.schema()),
        RulesCommand::Explain(args) => (&args.files.files, args.files.schema.schema()),
    };
    let Loaded { ruleset, files, errors, warnings } = load(files, &schema)?;
    let Some(ruleset) = ruleset else { bail!("{errors} error(s), {warnings} warning(s) in {files} file(s): nothing loaded") };
    match command {
        RulesCommand::Check(_) => {
            println!("ok: {} rule(s), {} test(s) in {files} file(s), {warnings} warning(s)", ruleset.len(), ruleset.tests.len());
            Ok(())
        }
        RulesCommand::Test(_) => {
            let results = ruleset.run_tests();
            let failed = results.iter().filter(|r| !r.passed()).count();
            for result in &results {
                if result.passed() {
                    println!("PASS {}:{} {}", result.file, result.line, result.name);
                } else {
                    println!("FAIL {}:{} {}: {}", result.file, result.line, result.name, result.failures.join("; "));
                }
            }
            println!("{} passed, {failed} failed", results.len() - failed);
            if failed > 0 {
                bail!("{failed} rule test(s) failed");
            }
            Ok(())
        }
        RulesCommand::Explain(args) => {
            let lake = Arc::new(args.lake.open()?);
            let speed = serve::open_speed(&lake, &args.redis, args.lake.fold_config()).await?;
            let models = serve::model_book(&args.models.models, None)?;
            let serving = serve::load_serving(&lake, speed, Arc::new(RuleBook::with(ruleset, schema)), models, serve::Writes::default()).await?;
            let now = chrono::Utc::now().timestamp_millis();
            let answer = serving.availability(&args.sku, &args.region, args.qty, now).await?;
            println!("{}", serde_json::to_string_pretty(&answer)?);
            Ok(())
        }
    }
}
