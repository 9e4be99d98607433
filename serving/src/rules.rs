//! The live rule set: loaded from a directory of `*.rules` files, swapped atomically when a
//! reload succeeds, kept as it is when a reload fails (the errors are reported instead).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use sellable_dsl::{load, Diagnostic, RuleSet, Schema, Source};

/// What the last reload did, for `GET /v1/rules`.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct ReloadStatus {
    pub ok: bool,
    /// Milliseconds since the epoch.
    pub at: i64,
    /// The version that went live, or that stayed live after a failure.
    pub version: Option<String>,
    /// Rendered diagnostics of the failed files (errors and warnings), empty on success.
    pub diagnostics: Vec<String>,
}

pub struct RuleBook {
    dir: Option<PathBuf>,
    schema: Schema,
    live: RwLock<Option<Arc<RuleSet>>>,
    status: RwLock<Option<ReloadStatus>>,
    /// The files as the last reload read them.
    fingerprint: RwLock<Vec<(PathBuf, SystemTime, u64)>>,
    /// The files as the last poll saw them, when they differ from the last reload's: a change is
    /// reloaded only once a poll sees the same files again (they stopped changing).
    pending: RwLock<Option<Vec<(PathBuf, SystemTime, u64)>>>,
}

#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("reading rules from {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{} error(s) in the rules:\n{}", .0.len(), render(.0))]
    Invalid(Vec<Diagnostic>),
    /// The new files would drop a whole ruleset or most rules: not live unless forced.
    #[error("{0}")]
    Dropping(String),
}

/// Why going from `live` to `new` would drop what a half-saved or deleted file drops, if it
/// would: every rule of a file that had some, or more than half of all rules.
pub fn dropped(live: &RuleSet, new: &RuleSet) -> Option<String> {
    let before = live.rules_per_file();
    let after = new.rules_per_file();
    let gone: Vec<String> = before.iter().filter(|(file, _)| !after.contains_key(*file)).map(|(file, count)| format!("{file} ({count} rule(s))")).collect();
    if !gone.is_empty() {
        return Some(format!("refused: it would drop every rule of {}; reload with force to mean it", gone.join(", ")));
    }
    (new.len() * 2 < live.len()).then(|| format!("refused: it would drop {} of the {} live rules; reload with force to mean it", live.len() - new.len(), live.len()))
}

fn render(diagnostics: &[Diagnostic]) -> String {
    diagnostics.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n\n")
}

/// The `*.rules` files of `dir`, in name order, with what tells a change (modified time, size).
fn rule_files(dir: &Path) -> Result<Vec<(PathBuf, SystemTime, u64)>, RulesError> {
    let io = |source| RulesError::Io { path: dir.display().to_string(), source };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if path.extension().is_some_and(|e| e == "rules") {
            let metadata = std::fs::metadata(&path).map_err(io)?;
            files.push((path, metadata.modified().map_err(io)?, metadata.len()));
        }
    }
    files.sort();
    Ok(files)
}

/// Reads rule files for the DSL, each named in diagnostics by its path as given (a directory's
/// files as `DIR/NAME.rules`): the one loader of the server's directory and of the command line.
fn read_sources<P: AsRef<Path>>(paths: impl IntoIterator<Item = P>) -> Result<Vec<Source>, RulesError> {
    paths
        .into_iter()
        .map(|path| {
            let path = path.as_ref();
            let text = std::fs::read_to_string(path).map_err(|source| RulesError::Io { path: path.display().to_string(), source })?;
            Ok(Source { name: path.display().to_string(), text })
        })
        .collect()
}

/// Reads rule files and directories of them (their `*.rules` files, in name order).
pub fn read_paths(paths: &[PathBuf]) -> Result<Vec<Source>, RulesError> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            files.extend(rule_files(path)?.into_iter().map(|(file, _, _)| file));
        } else {
            files.push(path.clone());
        }
    }
    read_sources(files)
}

fn now_millis() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl RuleBook {
    /// No rules at all: every answer is the merged view's.
    pub fn empty(schema: Schema) -> RuleBook {
        RuleBook {
            dir: None,
            schema,
            live: RwLock::new(None),
            status: RwLock::new(None),
            fingerprint: RwLock::new(Vec::new()),
            pending: RwLock::new(None),
        }
    }

    /// A fixed rule set (no directory behind it), e.g. for `sellable rules explain`.
    pub fn with(ruleset: RuleSet, schema: Schema) -> RuleBook {
        let book = RuleBook::empty(schema);
        *book.live.write().expect("rules lock poisoned; this is a bug") = Some(Arc::new(ruleset));
        book
    }

    /// Loads every `*.rules` file of `dir`; fails if any has an error (nothing goes live).
    pub fn from_dir(dir: &Path, schema: Schema) -> Result<RuleBook, RulesError> {
        let book = RuleBook { dir: Some(dir.to_path_buf()), ..RuleBook::empty(schema) };
        book.reload(false)?;
        Ok(book)
    }

    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// The rule set serving now.
    pub fn current(&self) -> Option<Arc<RuleSet>> {
        self.live.read().expect("rules lock poisoned; this is a bug").clone()
    }

    pub fn status(&self) -> Option<ReloadStatus> {
        self.status.read().expect("rules lock poisoned; this is a bug").clone()
    }

    /// Reads the directory again. A valid rule set goes live atomically; an invalid one is
    /// rejected, reported in [`RuleBook::status`], and the last good one keeps serving. So is one
    /// that would drop a whole file's rules or most rules ([`dropped`]), unless `force`.
    pub fn reload(&self, force: bool) -> Result<String, RulesError> {
        let Some(dir) = &self.dir else { return Ok("none".to_string()) };
        let files = rule_files(dir)?;
        let sources = read_sources(files.iter().map(|(path, _, _)| path))?;
        *self.fingerprint.write().expect("rules lock poisoned; this is a bug") = files;
        let loaded = load(&sources, &self.schema);
        let kept = self.current().map(|r| format!("{}@{}", r.name, r.version));
        let refusal = match (&loaded.ruleset, self.current()) {
            (Some(new), Some(live)) if !force => dropped(&live, new),
            _ => None,
        };
        if let Some(reason) = refusal {
            self.set_status(ReloadStatus { ok: false, at: now_millis(), version: kept.clone(), diagnostics: vec![reason.clone()] });
            tracing::warn!(kept = ?kept, reason, "rules reload refused; the live rules keep serving");
            return Err(RulesError::Dropping(reason));
        }
        match loaded.ruleset {
            Some(ruleset) => {
                let version = format!("{}@{}", ruleset.name, ruleset.version);
                *self.live.write().expect("rules lock poisoned; this is a bug") = Some(Arc::new(ruleset));
                let diagnostics = loaded.diagnostics.iter().map(ToString::to_string).collect();
                self.set_status(ReloadStatus { ok: true, at: now_millis(), version: Some(version.clone()), diagnostics });
                tracing::info!(version, files = sources.len(), "rules live");
                Ok(version)
            }
            None => {
                let diagnostics: Vec<Diagnostic> = loaded.diagnostics;
                let rendered = diagnostics.iter().map(ToString::to_string).collect();
                self.set_status(ReloadStatus { ok: false, at: now_millis(), version: kept.clone(), diagnostics: rendered });
                tracing::warn!(kept = ?kept, errors = diagnostics.len(), "rules rejected; the last good rules keep serving");
                Err(RulesError::Invalid(diagnostics))
            }
        }
    }

    fn set_status(&self, status: ReloadStatus) {
        *self.status.write().expect("rules lock poisoned; this is a bug") = Some(status);
    }

    /// Whether the files of the directory changed since the last reload and then stopped
    /// changing: the last poll saw them as they are now. An editor that empties a file and then
    /// writes it is seen (at most) half-way once, and that state never goes live.
    fn changed(&self) -> bool {
        let Some(dir) = &self.dir else { return false };
        let Ok(files) = rule_files(dir) else { return false };
        let mut pending = self.pending.write().expect("rules lock poisoned; this is a bug");
        if *self.fingerprint.read().expect("rules lock poisoned; this is a bug") == files {
            *pending = None;
            return false;
        }
        let settled = pending.as_ref() == Some(&files);
        *pending = Some(files);
        settled
    }

    /// Polls the directory and reloads when a file appears, changes or goes and then stays so
    /// for one poll (errors and refusals are reported through the status).
    pub fn watch(self: Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        crate::poll(self, every, RuleBook::changed, |book| {
            let _ = book.reload(false);
        })
    }
}
