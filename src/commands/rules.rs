//! `sellable rules check | test | explain`: rule files for merchandisers.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Result};
use sellable_dsl::{RuleSet, Schema};
use sellable_serving::RuleBook;

use crate::cli::{PublishRulesArgs, RulesCommand};
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
    if let RulesCommand::Publish(args) = &command {
        return publish(args);
    }
    let (files, schema) = match &command {
        RulesCommand::Check(args) | RulesCommand::Test(args) => (&args.files, args.schema.schema()),
        RulesCommand::Explain(args) => (&args.files.files, args.files.schema.schema()),
        RulesCommand::Publish(_) => unreachable!("published above"),
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
        RulesCommand::Publish(_) => unreachable!("published above"),
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

/// `sellable rules publish DIR --to LIVE`: the server reading LIVE sees the old files or the new
/// ones, never a mix or a half-written file.
fn publish(args: &PublishRulesArgs) -> Result<()> {
    let schema = args.schema.schema();
    let Loaded { ruleset, files, errors, warnings } = load(std::slice::from_ref(&args.dir), &schema)?;
    let Some(ruleset) = ruleset else { bail!("{errors} error(s), {warnings} warning(s) in {files} file(s): nothing published") };
    let failed: Vec<String> = ruleset.run_tests().into_iter().filter(|t| !t.passed()).map(|t| format!("{}:{} {}: {}", t.file, t.line, t.name, t.failures.join("; "))).collect();
    if !failed.is_empty() {
        bail!("{} rule test(s) failed, nothing published:\n{}", failed.len(), failed.join("\n"));
    }
    let live = &args.to;
    let releases = PathBuf::from(format!("{}.releases", live.display()));
    // what serves now, named as the server names its files (LIVE/NAME.rules)
    if live.exists() && !args.force {
        let current = sellable_serving::rules::read_paths(std::slice::from_ref(live))?;
        let renamed: Vec<sellable_dsl::Source> = sellable_serving::rules::read_paths(std::slice::from_ref(&args.dir))?
            .into_iter()
            .map(|source| sellable_dsl::Source { name: live.join(Path::new(&source.name).file_name().unwrap_or_default()).display().to_string(), ..source })
            .collect();
        if let (Some(current), Some(new)) = (sellable_dsl::load(&current, &schema).ruleset, sellable_dsl::load(&renamed, &schema).ruleset) {
            if let Some(reason) = sellable_serving::rules::dropped(&current, &new) {
                bail!("{reason} (publish --force)");
            }
        }
    }
    std::fs::create_dir_all(&releases)?;
    let release = releases.join(format!("{}-{}", chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ"), ruleset.version.replace(['/', ' '], "_")));
    std::fs::create_dir(&release)?;
    for entry in std::fs::read_dir(&args.dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "rules") {
            std::fs::copy(&path, release.join(path.file_name().expect("a file has a name")))?;
        }
    }
    if live.exists() && !live.is_symlink() {
        // the first publish: the directory served so far becomes a release, the link takes its place
        let first = releases.join("initial");
        std::fs::rename(live, &first).map_err(|error| anyhow::anyhow!("moving {} to {}: {error}", live.display(), first.display()))?;
    }
    // a new link beside the old one, renamed over it: one atomic step
    let target = std::fs::canonicalize(&release)?;
    let temporary = PathBuf::from(format!("{}.new-link", live.display()));
    let _ = std::fs::remove_file(&temporary);
    std::os::unix::fs::symlink(&target, &temporary)?;
    std::fs::rename(&temporary, live)?;
    println!("published {} rule(s) of {files} file(s) ({}) to {} -> {}", ruleset.len(), ruleset.version, live.display(), target.display());
    Ok(())
}
