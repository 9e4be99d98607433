//! The model registry: a directory of versions, each self-contained, and the promotion history
//! that says which one serves.
//!
//! ```text
//! models/
//!   v1/ model.json      XGBoost's JSON model
//!       manifest.json   ordered feature list, threshold, lineage, headline metrics, config
//!       metrics.json    the whole evaluation
//!       report.html     the evaluation with its plots
//!   v2/ …
//!   history.json        versions in promotion order; the last one is live
//! ```
//!
//! A version is written into a hidden directory and renamed into place, and `history.json` is
//! replaced by a rename, so a reader never sees half a version or half a history. Promotion
//! loads the version first: a corrupt or incompatible model is refused and the live one stays.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::evaluator::Evaluator;

const HISTORY: &str = "history.json";

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("unknown model version '{version}' (registered: {known})")]
    UnknownVersion { version: String, known: String },
    #[error("model {version} is corrupt: {reason}")]
    Corrupt { version: String, reason: String },
    #[error("model {version} is incompatible: {reason}")]
    Incompatible { version: String, reason: String },
    #[error("nothing to roll back to: {0}")]
    NothingToRollBack(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RegistryError + '_ {
    move |source| RegistryError::Io { path: path.display().to_string(), source }
}

/// Where a model came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelLineage {
    pub trainset_version: u64,
    pub lake_version: u64,
    pub features_version: u64,
    /// The code that built the training set (feature definitions fingerprint).
    pub trainset_code_version: String,
    /// The code that trained the model.
    pub code_version: String,
}

/// What the registry knows about a version without loading its model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// `v1`, `v2`, …: set by [`Registry::register`].
    #[serde(default)]
    pub version: String,
    /// RFC 3339.
    pub created: String,
    /// The feature vector, in order.
    pub features: Vec<String>,
    /// Promise iff `p_fulfill` ≥ this.
    pub threshold: f64,
    pub target_oversell_rate: f64,
    pub rounds: u32,
    pub lineage: ModelLineage,
    /// Headline figures on the held-out days, e.g. `pr_auc`, `oversells_vs_matched_safety_stock`.
    pub headline: std::collections::BTreeMap<String, f64>,
    /// The training configuration, as given.
    pub config: serde_json::Value,
    /// The thresholds oversell budgets ask for: (threshold, oversell rate on the validation
    /// days), thresholds rising ([`crate::evaluate::budgets`]). Empty for versions trained
    /// before budgets existed.
    #[serde(default)]
    pub budgets: Vec<[f64; 2]>,
    /// The map applied to the trees' short probabilities before anything reads them, fitted on
    /// the validation days; `None`: the raw probabilities.
    #[serde(default)]
    pub calibration: Option<crate::calibrate::Platt>,
}

/// A loaded, checked model: what serving and backtests score with.
#[derive(Debug)]
pub struct Model {
    pub manifest: Manifest,
    evaluator: Evaluator,
}

impl Model {
    pub fn version(&self) -> &str {
        &self.manifest.version
    }

    pub fn threshold(&self) -> f64 {
        self.manifest.threshold
    }

    /// The threshold that keeps the oversell rate among promised orders within `budget` on the
    /// validation days (the lowest that does, as training chooses its own); `None` when this
    /// version has no budgets.
    pub fn threshold_for(&self, budget: f64) -> Option<f64> {
        (!self.manifest.budgets.is_empty()).then(|| threshold_within(&self.manifest.budgets, budget))
    }

    /// The probability that an order with this feature vector is fulfilled: one minus the
    /// model's short probability. Features are rounded to `f32`, as XGBoost reads them.
    pub fn p_fulfill(&self, features: &[f64]) -> f64 {
        // on the stack for the vectors we compute (47 values); a longer one still scores
        let mut stack = [0f32; 64];
        let p_short = if features.len() <= stack.len() {
            stack.iter_mut().zip(features).for_each(|(slot, value)| *slot = *value as f32);
            self.evaluator.predict(&stack[..features.len()])
        } else {
            self.evaluator.predict(&features.iter().map(|value| *value as f32).collect::<Vec<_>>())
        } as f64;
        1.0 - self.manifest.calibration.map_or(p_short, |calibration| calibration.apply(p_short))
    }
}

/// The lowest threshold of `budgets` (a manifest's, thresholds rising) whose oversell rate is at
/// most `budget`; `1.0` when none is.
pub fn threshold_within(budgets: &[[f64; 2]], budget: f64) -> f64 {
    budgets.iter().find(|[_, rate]| *rate <= budget).map_or(1.0, |[threshold, _]| threshold.min(1.0))
}

pub struct Registry {
    root: PathBuf,
}

/// A hidden name no other writer uses: process id and a per-process count.
fn staging_name(what: &str) -> String {
    static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let count = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!(".{what}.{}.{count}.staging", std::process::id())
}

impl Registry {
    /// The registry at `root`. A missing directory is an empty registry (created by the first
    /// [`Registry::register`]), so reading a mistyped path creates nothing.
    pub fn open(root: &Path) -> Result<Registry, RegistryError> {
        if root.exists() && !root.is_dir() {
            return Err(RegistryError::Io { path: root.display().to_string(), source: std::io::Error::other("not a directory") });
        }
        Ok(Registry { root: root.to_path_buf() })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Every version, oldest first.
    pub fn versions(&self) -> Result<Vec<String>, RegistryError> {
        if !self.root.exists() {
            return Ok(Vec::new());
        }
        let mut versions: Vec<(u64, String)> = std::fs::read_dir(&self.root)
            .map_err(io(&self.root))?
            .filter_map(|entry| {
                let name = entry.ok()?.file_name().into_string().ok()?;
                Some((name.strip_prefix('v')?.parse().ok()?, name))
            })
            .collect();
        versions.sort();
        Ok(versions.into_iter().map(|(_, name)| name).collect())
    }

    fn dir(&self, version: &str) -> Result<PathBuf, RegistryError> {
        let dir = self.root.join(version);
        if version.strip_prefix('v').and_then(|n| n.parse::<u64>().ok()).is_none() || !dir.is_dir() {
            let known = self.versions()?;
            let known = if known.is_empty() { "none".to_string() } else { known.join(", ") };
            return Err(RegistryError::UnknownVersion { version: version.to_string(), known });
        }
        Ok(dir)
    }

    /// Stores a new version; returns its name.
    pub fn register(&self, model_json: &str, mut manifest: Manifest, metrics_json: &str, report_html: &str) -> Result<String, RegistryError> {
        std::fs::create_dir_all(&self.root).map_err(io(&self.root))?;
        // a staging directory of this call alone, so concurrent registrations never mix files
        let staging = self.root.join(staging_name("version"));
        std::fs::create_dir_all(&staging).map_err(io(&staging))?;
        let written = (|| {
            for (name, text) in [("model.json", model_json), ("metrics.json", metrics_json), ("report.html", report_html)] {
                let path = staging.join(name);
                std::fs::write(&path, text).map_err(io(&path))?;
            }
            loop {
                let next = self.versions()?.last().and_then(|v| v[1..].parse::<u64>().ok()).unwrap_or(0) + 1;
                manifest.version = format!("v{next}");
                let path = staging.join("manifest.json");
                let manifest_json = serde_json::to_string_pretty(&manifest).expect("a manifest serialises; this is a bug");
                std::fs::write(&path, manifest_json).map_err(io(&path))?;
                let target = self.root.join(&manifest.version);
                match std::fs::rename(&staging, &target) {
                    Ok(()) => return Ok(manifest.version.clone()),
                    // another registration took this number first: take the next one
                    Err(_) if target.is_dir() => continue,
                    Err(error) => return Err(io(&target)(error)),
                }
            }
        })();
        if written.is_err() {
            let _ = std::fs::remove_dir_all(&staging);
        }
        written
    }

    pub fn manifest(&self, version: &str) -> Result<Manifest, RegistryError> {
        let path = self.dir(version)?.join("manifest.json");
        let text = std::fs::read_to_string(&path).map_err(io(&path))?;
        let mut manifest: Manifest = serde_json::from_str(&text)
            .map_err(|error| RegistryError::Corrupt { version: version.to_string(), reason: format!("manifest.json: {error}") })?;
        manifest.version = version.to_string();
        Ok(manifest)
    }

    /// The path of one of a version's files (`report.html`, `metrics.json`, …).
    pub fn file(&self, version: &str, name: &str) -> Result<PathBuf, RegistryError> {
        Ok(self.dir(version)?.join(name))
    }

    /// Loads and checks a version against the feature vector the caller computes.
    pub fn load(&self, version: &str, features: &[&str]) -> Result<Model, RegistryError> {
        let manifest = self.manifest(version)?;
        if manifest.features != features {
            let differ = manifest.features.iter().zip(features).position(|(a, b)| a != b).unwrap_or(manifest.features.len().min(features.len()));
            return Err(RegistryError::Incompatible {
                version: version.to_string(),
                reason: format!(
                    "it was trained on {} features and this build computes {}; they first differ at position {differ} ({} vs {})",
                    manifest.features.len(),
                    features.len(),
                    manifest.features.get(differ).map_or("nothing", String::as_str),
                    features.get(differ).copied().unwrap_or("nothing"),
                ),
            });
        }
        if !(0.0..=1.0).contains(&manifest.threshold) {
            return Err(RegistryError::Corrupt { version: version.to_string(), reason: format!("threshold {} is not a probability", manifest.threshold) });
        }
        let path = self.dir(version)?.join("model.json");
        let text = std::fs::read_to_string(&path).map_err(io(&path))?;
        let evaluator = Evaluator::from_json(&text).map_err(|error| RegistryError::Corrupt { version: version.to_string(), reason: error.to_string() })?;
        if evaluator.features() != features.len() {
            return Err(RegistryError::Incompatible {
                version: version.to_string(),
                reason: format!("the model reads {} features, its manifest lists {}", evaluator.features(), features.len()),
            });
        }
        Ok(Model { manifest, evaluator })
    }

    /// Versions in promotion order; the last is live.
    pub fn history(&self) -> Result<Vec<String>, RegistryError> {
        let path = self.root.join(HISTORY);
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).map_err(|error| RegistryError::Corrupt { version: HISTORY.into(), reason: error.to_string() }),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(error) => Err(io(&path)(error)),
        }
    }

    /// The version serving now, if any was promoted.
    pub fn live(&self) -> Result<Option<String>, RegistryError> {
        Ok(self.history()?.pop())
    }

    fn write_history(&self, history: &[String]) -> Result<(), RegistryError> {
        let path = self.root.join(HISTORY);
        let staging = self.root.join(staging_name("history"));
        std::fs::write(&staging, serde_json::to_string(history).expect("strings serialise")).map_err(io(&staging))?;
        std::fs::rename(&staging, &path).map_err(io(&path))
    }

    /// Makes `version` live, after loading it: a model that does not load is refused.
    pub fn promote(&self, version: &str, features: &[&str]) -> Result<Model, RegistryError> {
        let model = self.load(version, features)?;
        let mut history = self.history()?;
        history.push(version.to_string());
        self.write_history(&history)?;
        Ok(model)
    }

    /// Goes back to the version live before the current one (which must still load).
    pub fn rollback(&self, features: &[&str]) -> Result<Model, RegistryError> {
        let mut history = self.history()?;
        if history.len() < 2 {
            return Err(RegistryError::NothingToRollBack(match history.first() {
                Some(only) => format!("{only} is the only version ever promoted"),
                None => "no version was ever promoted".into(),
            }));
        }
        history.pop();
        let model = self.load(history.last().expect("two or more"), features)?;
        self.write_history(&history)?;
        Ok(model)
    }
}

#[cfg(all(test, feature = "train"))]
mod tests {
    use super::*;
    use crate::config::TrainConfig;
    use crate::train::{tests::marketplace, train};

    fn manifest(features: &[&str]) -> Manifest {
        Manifest {
            version: String::new(),
            created: "2026-11-23T00:00:00Z".into(),
            features: features.iter().map(ToString::to_string).collect(),
            threshold: 0.9,
            target_oversell_rate: 0.02,
            rounds: 3,
            lineage: ModelLineage { trainset_version: 1, lake_version: 2, features_version: 3, trainset_code_version: "t".into(), code_version: "c".into() },
            headline: Default::default(),
            config: serde_json::Value::Null,
            budgets: Vec::new(),
            calibration: None,
        }
    }

    #[test]
    fn register_promote_rollback_and_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("typo");
        let empty = Registry::open(&missing).unwrap();
        assert_eq!(empty.promote("v1", &["a"]).unwrap_err().to_string(), "unknown model version 'v1' (registered: none)");
        assert!(empty.versions().unwrap().is_empty() && empty.live().unwrap().is_none() && !missing.exists(), "reading creates nothing");
        let registry = Registry::open(&dir.path().join("models")).unwrap();
        let orders = marketplace(3, 300, 9);
        let split = orders.split(1, 1).unwrap();
        let mut config = TrainConfig::default();
        config.xgboost.rounds = 5;
        let model = train(&split.train, &split.validation, &config, |_| {}).unwrap();
        let names: Vec<&str> = orders.names.iter().map(String::as_str).collect();
        let register = |json: &str| registry.register(json, manifest(&names), "{}", "<html></html>").unwrap();
        assert_eq!((register(model.json()), register(model.json())), ("v1".to_string(), "v2".to_string()));
        assert_eq!(registry.live().unwrap(), None);
        assert!(matches!(registry.rollback(&names), Err(RegistryError::NothingToRollBack(_))));

        let loaded = registry.promote("v1", &names).unwrap();
        let expected = 1.0 - model.predict(&orders.features[..4], 1).unwrap()[0] as f64;
        let row: Vec<f64> = orders.features[..4].iter().map(|v| *v as f64).collect();
        assert_eq!(loaded.p_fulfill(&row), expected);
        registry.promote("v2", &names).unwrap();
        assert_eq!(registry.live().unwrap().as_deref(), Some("v2"));
        assert_eq!(registry.rollback(&names).unwrap().version(), "v1");
        assert_eq!(registry.history().unwrap(), ["v1"]);

        // refused: unknown, corrupt, incompatible; the live version stays
        let unknown = registry.promote("v9", &names).unwrap_err().to_string();
        assert_eq!(unknown, "unknown model version 'v9' (registered: v1, v2)");
        let corrupt = register(&model.json()[..100]);
        assert!(registry.promote(&corrupt, &names).unwrap_err().to_string().starts_with("model v3 is corrupt: model: not JSON"));
        let incompatible = registry.promote("v2", &["order_qty", "atp_now", "noise", "phantom"]).unwrap_err().to_string();
        assert_eq!(
            incompatible,
            "model v2 is incompatible: it was trained on 4 features and this build computes 4; they first differ at position 2 (phantom vs noise)"
        );
        assert_eq!(registry.live().unwrap().as_deref(), Some("v1"));
        let leftovers = std::fs::read_dir(dir.path().join("models")).unwrap().filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".staging")).count();
        assert_eq!(leftovers, 0, "no staging directory is left behind");

        // registrations from several threads at once each get their own version, whole
        let json = model.json().to_string();
        let versions: Vec<String> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4).map(|_| scope.spawn(|| registry.register(&json, manifest(&names), "{}", "<html></html>").unwrap())).collect();
            handles.into_iter().map(|handle| handle.join().unwrap()).collect()
        });
        let mut sorted = versions.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 4, "{versions:?}");
        for version in versions {
            assert_eq!(registry.load(&version, &names).unwrap().version(), version);
        }
    }
}
