//! The configuration of the `sellable` binary: one serde struct, in four layers, each over the
//! one before it:
//!
//! 1. embedded defaults (the `Default` impls below; what runs with no setup);
//! 2. a TOML file: `sellable --config FILE <command>` (or the file named by `SELLABLE_CONFIG`),
//!    with the sections and keys of [`Config`] (see `examples/sellable.toml`);
//! 3. environment variables `SELLABLE__<SECTION>__<KEY>`, e.g. `SELLABLE__LAKE__PATH=/data/lake`
//!    (`REDIS_URL` is read as `SELLABLE__REDIS__URL`, below it);
//! 4. command-line flags (`--lake`, `--redis`, …), which win.
//!
//! Layers 1–3 are merged and validated once into a typed [`Config`]; every problem is printed
//! with the file or variable it came from, and the binary exits 1 before doing anything. The
//! result then becomes the default of each flag (see [`Config::flag_defaults`]), so a flag given
//! on the command line overrides it and clap parses and checks every value the same way.
//! `sellable demo` ignores layers 2 and 3: it runs on the embedded defaults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sellable_core::{FoldConfig, Millis};
use sellable_analytics::AnalyticsConfig;
use sellable_serving::decisions::DecisionLogConfig;
use sellable_serving::door::{DoorConfig, KeyEntry, Limits};

/// Everything the commands read that an operator may want to set once instead of per command.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub lake: LakeConfig,
    pub redis: RedisConfig,
    pub models: ModelsConfig,
    pub serve: ServeConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LakeConfig {
    /// The lake: a directory of Lance datasets.
    pub path: PathBuf,
    /// Events arriving more than this many milliseconds after they happened are rejected.
    pub lateness_ms: Millis,
    /// How long folded event ids are remembered per SKU (milliseconds of arrival time); none:
    /// until the next batch cutoff.
    pub dedup_window_ms: Option<Millis>,
    /// Memory one DataFusion query of the batch layer may hold before it spills to disk.
    pub memory_mb: usize,
}

impl Default for LakeConfig {
    fn default() -> LakeConfig {
        LakeConfig { path: "lake".into(), lateness_ms: FoldConfig::default().lateness_ms, dedup_window_ms: None, memory_mb: sellable_batch::DEFAULT_MEMORY_LIMIT >> 20 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// The Redis of the speed view; none: `serve` keeps an embedded speed view in memory, and the
    /// commands that need a Redis (`reconcile`, `publish`, `deadletters`) use the local one.
    pub url: Option<String>,
    /// Prefix of every key.
    pub namespace: String,
}

impl Default for RedisConfig {
    fn default() -> RedisConfig {
        RedisConfig { url: None, namespace: "sellable".into() }
    }
}

/// The Redis the commands that need one use when none is configured.
pub const LOCAL_REDIS: &str = "redis://127.0.0.1:6379";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelsConfig {
    /// The model registry directory.
    pub path: PathBuf,
}

impl Default for ModelsConfig {
    fn default() -> ModelsConfig {
        ModelsConfig { path: "models".into() }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServeConfig {
    /// Address of the REST API.
    pub listen: SocketAddr,
    /// A directory of `*.rules` files, applied to every answer; none: no rules.
    pub rules: Option<PathBuf>,
    /// API keys (`sellable keys new`); none: the server makes one for itself at start and prints
    /// it once.
    pub keys: Vec<KeyEntry>,
    /// Paths answered without a key.
    pub open: Vec<String>,
    /// Names the `Host` header may carry; `*` takes any.
    pub hosts: Vec<String>,
    /// Timeouts, sizes and rates (docs/operations.md).
    pub limits: Limits,
    /// The decision log (docs/analytics.md).
    pub decisions: DecisionLogConfig,
    /// The Flight SQL server of `sellable serve` (docs/analytics.md).
    pub analytics: AnalyticsConfig,
    /// Oversell budgets by SKU category (docs/models.md): answers for a SKU of the category
    /// decide within it unless the request names its own budget.
    pub budgets: std::collections::BTreeMap<String, f64>,
}

impl Default for ServeConfig {
    fn default() -> ServeConfig {
        let door = DoorConfig::default();
        ServeConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            rules: None,
            keys: door.keys,
            open: door.open,
            hosts: door.hosts,
            limits: door.limits,
            decisions: DecisionLogConfig::default(),
            analytics: AnalyticsConfig::default(),
            budgets: std::collections::BTreeMap::new(),
        }
    }
}

impl ServeConfig {
    /// What the server's door lets through.
    pub fn door(&self) -> DoorConfig {
        DoorConfig { keys: self.keys.clone(), open: self.open.clone(), hosts: self.hosts.clone(), limits: self.limits.clone() }
    }
}

/// The configuration `main` loaded, for the commands that read more of it than their flags.
static LOADED: std::sync::OnceLock<Config> = std::sync::OnceLock::new();

/// Keeps `config` as the one [`loaded`] returns (the first kept stays).
pub fn keep(config: Config) {
    let _ = LOADED.set(config);
}

/// The configuration `main` loaded; the embedded defaults before (and in `demo`).
pub fn loaded() -> Config {
    LOADED.get().cloned().unwrap_or_default()
}

/// Whether a value of `section` deserialises (keys known, types right), as the section's error.
fn check_section(section: &str, value: toml::Value) -> Result<(), String> {
    let result = match section {
        "lake" => LakeConfig::deserialize(value).map(drop),
        "redis" => RedisConfig::deserialize(value).map(drop),
        "models" => ModelsConfig::deserialize(value).map(drop),
        "serve" => ServeConfig::deserialize(value).map(drop),
        other => return Err(format!("unknown section `{other}` (known: lake, redis, models, serve)")),
    };
    result.map_err(|error| error.to_string().trim().replace('\n', " "))
}

/// Puts `key = value` of `section` into `merged`, over what an earlier layer put there.
fn set(merged: &mut toml::Table, section: &str, key: String, value: toml::Value) {
    let table = merged.entry(section.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
    if let toml::Value::Table(table) = table {
        table.insert(key, value);
    }
}

impl Config {
    /// Merges the file (if any) and the environment over the embedded defaults. `Err` holds
    /// every problem found, each naming where it came from.
    pub fn load(file: Option<&Path>, environment: impl IntoIterator<Item = (String, String)>) -> Result<Config, Vec<String>> {
        let mut problems = Vec::new();
        let mut merged = toml::Table::new();
        if let Some(path) = file {
            let name = path.display();
            match std::fs::read_to_string(path).map_err(|e| e.to_string()).and_then(|text| text.parse::<toml::Table>().map_err(|e| e.to_string())) {
                Err(error) => problems.push(format!("{name}: {}", error.trim().replace('\n', " "))),
                Ok(table) => {
                    for (section, value) in table {
                        match (check_section(&section, value.clone()), value) {
                            (Err(error), _) => problems.push(format!("{name}: [{section}]: {error}")),
                            (Ok(()), toml::Value::Table(keys)) => keys.into_iter().for_each(|(key, value)| set(&mut merged, &section, key, value)),
                            (Ok(()), _) => problems.push(format!("{name}: `{section}` must be a section ([{section}])")),
                        }
                    }
                }
            }
        }
        // REDIS_URL first, so that SELLABLE__REDIS__URL wins over it; then in name order
        let mut variables: Vec<(String, String)> = environment
            .into_iter()
            .filter_map(|(name, value)| match name.as_str() {
                "REDIS_URL" => Some(("SELLABLE__REDIS__URL".to_string(), value, 0)),
                _ if name.starts_with("SELLABLE__") => Some((name, value, 1)),
                _ => None,
            })
            .map(|(name, value, rank)| (format!("{rank}{name}"), value))
            .collect();
        variables.sort();
        for (ranked, text) in variables {
            let name = &ranked[1..];
            let Some((section, key)) = name["SELLABLE__".len()..].split_once("__") else {
                problems.push(format!("{name}: expected SELLABLE__<SECTION>__<KEY>, e.g. SELLABLE__LAKE__PATH"));
                continue;
            };
            let (section, key) = (section.to_lowercase(), key.to_lowercase());
            // a number or a boolean as such, anything else (paths, URLs, addresses) as a string
            let typed = toml::from_str::<toml::Table>(&format!("v = {text}")).ok().and_then(|mut table| table.remove("v"));
            let candidates = typed.into_iter().chain([toml::Value::String(text.clone())]);
            let mut last_error = String::new();
            let accepted = candidates.into_iter().find(|value| {
                let mut one = toml::Table::new();
                one.insert(key.clone(), value.clone());
                check_section(&section, toml::Value::Table(one)).map_err(|error| last_error = error).is_ok()
            });
            match accepted {
                Some(value) => set(&mut merged, &section, key, value),
                None => problems.push(format!("{name}={text}: {last_error}")),
            }
        }
        let config = match Config::deserialize(toml::Value::Table(merged)) {
            Ok(config) => config,
            Err(error) => {
                problems.push(format!("this is a bug: the checked layers do not merge: {error}"));
                return Err(problems);
            }
        };
        problems.extend(config.problems());
        if problems.is_empty() { Ok(config) } else { Err(problems) }
    }

    /// What no type can say: ranges, empty names.
    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.lake.lateness_ms < 0 {
            problems.push(format!("lake.lateness_ms = {}: must be 0 or more", self.lake.lateness_ms));
        }
        if let Some(window) = self.lake.dedup_window_ms.filter(|window| *window <= 0) {
            problems.push(format!("lake.dedup_window_ms = {window}: must be more than 0 (leave it out to keep ids until the next cutoff)"));
        }
        if (self.lake.memory_mb as u64) < sellable_batch::MIN_MEMORY_MB {
            problems.push(format!("lake.memory_mb = {}: DataFusion needs at least {}", self.lake.memory_mb, sellable_batch::MIN_MEMORY_MB));
        }
        if self.redis.namespace.is_empty() || self.redis.namespace.contains(|c: char| c.is_whitespace() || c == '{' || c == '}') {
            problems.push(format!("redis.namespace = {:?}: must be non-empty, without spaces or braces", self.redis.namespace));
        }
        problems.extend(self.serve.door().problems());
        for (category, budget) in &self.serve.budgets {
            if !sellable_serving::OVERSELL_BUDGETS.contains(budget) {
                problems.push(format!("serve.budgets.{category} = {budget}: an oversell budget is a rate from 0.0001 to 1"));
            }
        }
        problems.extend(self.serve.decisions.problems());
        problems.extend(self.serve.analytics.problems());
        if let Some(url) = self.redis.url.as_deref().filter(|url| !url.split(',').all(|url| url.trim().starts_with("redis://") || url.trim().starts_with("rediss://"))) {
            problems.push(format!("redis.url = {url:?}: expected redis://HOST:PORT (commas between the nodes of a cluster)"));
        }
        problems
    }

    /// The value each flag takes when it is not on the command line, by clap argument id.
    pub fn flag_defaults(&self) -> Vec<(&'static str, String)> {
        let mut defaults = vec![
            ("lake", self.lake.path.display().to_string()),
            ("lateness_ms", self.lake.lateness_ms.to_string()),
            ("memory_mb", self.lake.memory_mb.to_string()),
            ("namespace", self.redis.namespace.clone()),
            ("models", self.models.path.display().to_string()),
            ("listen", self.serve.listen.to_string()),
        ];
        defaults.extend(self.lake.dedup_window_ms.map(|window| ("dedup_window_ms", window.to_string())));
        defaults.extend(self.redis.url.clone().map(|url| ("redis", url)));
        defaults.extend(self.serve.rules.as_ref().map(|rules| ("rules", rules.display().to_string())));
        defaults.extend(self.serve.analytics.listen.map(|flight| ("flight", flight.to_string())));
        defaults
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn environment(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(name, value)| (name.to_string(), value.to_string())).collect()
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        file
    }

    #[test]
    fn each_layer_overrides_the_one_before() {
        assert_eq!(Config::load(None, environment(&[("HOME", "/root")])).unwrap(), Config::default());
        let toml = file("[lake]\npath = \"/data/lake\"\nlateness_ms = 1000\n[redis]\nurl = \"redis://file:6379\"\n[serve]\nlisten = \"0.0.0.0:9000\"\n");
        let config = Config::load(Some(toml.path()), environment(&[])).unwrap();
        assert_eq!((config.lake.path.to_str(), config.lake.lateness_ms), (Some("/data/lake"), 1000));
        assert_eq!((config.redis.url.as_deref(), config.serve.listen.port()), (Some("redis://file:6379"), 9000));
        assert_eq!(config.models, ModelsConfig::default(), "what the file leaves out stays at its default");
        let config = Config::load(
            Some(toml.path()),
            environment(&[
                ("SELLABLE__LAKE__LATENESS_MS", "5000"),
                ("SELLABLE__REDIS__URL", "redis://env:6379"),
                ("REDIS_URL", "redis://plain:6379"),
                ("SELLABLE__REDIS__NAMESPACE", "123"),
                ("SELLABLE__LAKE__DEDUP_WINDOW_MS", "60000"),
            ]),
        )
        .unwrap();
        assert_eq!((config.lake.path.to_str(), config.lake.lateness_ms, config.lake.dedup_window_ms), (Some("/data/lake"), 5000, Some(60000)));
        assert_eq!(config.redis.url.as_deref(), Some("redis://env:6379"), "SELLABLE__REDIS__URL wins over REDIS_URL");
        assert_eq!(config.redis.namespace, "123", "a value that reads as a number is still a string where a string is wanted");
        let config = Config::load(None, environment(&[("REDIS_URL", "redis://plain:6379")])).unwrap();
        assert_eq!(config.redis.url.as_deref(), Some("redis://plain:6379"));
        // and the flags take these values as their defaults
        let defaults = config.flag_defaults();
        assert!(defaults.contains(&("redis", "redis://plain:6379".to_string())) && defaults.contains(&("lake", "lake".to_string())));
    }

    #[test]
    fn every_problem_is_reported_with_where_it_came_from() {
        let toml = file("[lake]\nlateness_ms = \"soon\"\n[serve]\nlisten = \"nowhere\"\n[sever]\nlisten = \"0.0.0.0:1\"\n");
        let problems = Config::load(
            Some(toml.path()),
            environment(&[("SELLABLE__LAKE__MEMORY_MB", "lots"), ("SELLABLE__MODELS__DIR", "x"), ("SELLABLE__LAKE", "y"), ("SELLABLE__REDIS__NAMESPACE", "a b")]),
        )
        .unwrap_err();
        let name = toml.path().display().to_string();
        let has = |needles: &[&str]| problems.iter().any(|problem| needles.iter().all(|needle| problem.contains(needle)));
        assert!(has(&[&name, "[lake]", "lateness_ms"]), "{problems:#?}");
        assert!(has(&[&name, "[serve]", "invalid socket address"]), "{problems:#?}");
        assert!(has(&[&name, "unknown section `sever`"]), "{problems:#?}");
        assert!(has(&["SELLABLE__LAKE__MEMORY_MB=lots", "invalid type"]), "{problems:#?}");
        assert!(has(&["SELLABLE__MODELS__DIR=x", "unknown field `dir`"]), "{problems:#?}");
        assert!(has(&["SELLABLE__LAKE: expected SELLABLE__<SECTION>__<KEY>"]), "{problems:#?}");
        assert!(has(&["redis.namespace = \"a b\""]), "{problems:#?}");
        assert_eq!(problems.len(), 7, "{problems:#?}");
        let missing = Config::load(Some(Path::new("/nonexistent/sellable.toml")), environment(&[])).unwrap_err();
        assert!(missing[0].starts_with("/nonexistent/sellable.toml: "), "{missing:?}");
        let broken = file("[lake\npath = 1");
        assert!(Config::load(Some(broken.path()), environment(&[])).unwrap_err()[0].contains("TOML parse error"));
        let ranges = Config::load(None, environment(&[("SELLABLE__LAKE__LATENESS_MS", "-1"), ("SELLABLE__LAKE__DEDUP_WINDOW_MS", "0"), ("SELLABLE__REDIS__URL", "localhost")]));
        assert_eq!(ranges.unwrap_err().len(), 3);
    }

    #[test]
    fn category_budgets_are_rates() {
        let bad = file("[serve.budgets]\nelectronics = 0.005\ntoys = 2.0\n");
        let problems = Config::load(Some(bad.path()), environment(&[])).unwrap_err();
        assert_eq!(problems, ["serve.budgets.toys = 2: an oversell budget is a rate from 0.0001 to 1"]);
        let good = file("[serve.budgets]\nelectronics = 0.005\n");
        let budgets = Config::load(Some(good.path()), environment(&[])).unwrap().serve.budgets;
        assert_eq!(budgets, std::collections::BTreeMap::from([("electronics".to_string(), 0.005)]));
    }

    #[test]
    fn the_example_file_is_valid_and_says_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/sellable.toml");
        let config = Config::load(Some(&path), environment(&[])).unwrap();
        assert_eq!(config, Config::default(), "examples/sellable.toml spells out the embedded defaults");
    }
}
