//! The training configuration: hyper-parameters, the time split and the operating target, read
//! from a TOML file (`sellable train --config FILE`). Every key is optional; a missing key keeps
//! its default below, an unknown key is an error (a typo must not silently train the default).
//!
//! ```toml
//! # the time split: the last `test_days` days of the training set are held out for the
//! # evaluation, the `validation_days` before them pick the round count and the threshold
//! validation_days = 3
//! test_days = 5
//! # the operating target: the threshold promises as much as possible while the oversell rate
//! # among promised orders stays at or under this share of naive ATP's on the validation days
//! # (meaningful on any marketplace); `target_oversell_rate = R` sets an absolute rate instead
//! target_vs_naive_atp = 0.35
//! # train again without each group of features in turn, to show what each adds (the report's
//! # ablation table; about eight more trainings)
//! ablation = true
//! # map the scores with a Platt scaling fitted on the validation days (kept in the manifest and
//! # applied by serving), so their mean follows the observed short rate there
//! calibrate = true
//!
//! [xgboost]
//! rounds = 400                 # at most; early stopping usually ends sooner
//! early_stopping_rounds = 30   # stop when validation log loss has not improved for this many
//! max_depth = 6
//! eta = 0.1
//! min_child_weight = 1.0
//! subsample = 0.9
//! colsample_bytree = 0.9
//! lambda = 1.0
//! scale_pos_weight = "auto"    # "auto" = sqrt(negatives / positives), or a number
//! seed = 7
//! threads = 2
//! ```

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    pub validation_days: u32,
    pub test_days: u32,
    /// The target oversell rate as a share of naive ATP's on the validation days.
    pub target_vs_naive_atp: f64,
    /// An absolute target oversell rate, instead of [`TrainConfig::target_vs_naive_atp`].
    pub target_oversell_rate: Option<f64>,
    /// Train again without each group of features in turn ([`crate::evaluate::ABLATION_GROUPS`]).
    pub ablation: bool,
    /// Fit a Platt scaling of the scores on the validation days ([`crate::calibrate::Platt`]).
    pub calibrate: bool,
    pub xgboost: XgboostConfig,
}

/// The operating target of a configuration, resolved on the validation days by
/// [`crate::evaluate::evaluate`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    /// This share of naive ATP's oversell rate.
    VsNaiveAtp(f64),
    /// This oversell rate.
    Rate(f64),
}

impl TrainConfig {
    pub fn target(&self) -> Target {
        match self.target_oversell_rate {
            Some(rate) => Target::Rate(rate),
            None => Target::VsNaiveAtp(self.target_vs_naive_atp),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct XgboostConfig {
    pub rounds: u32,
    pub early_stopping_rounds: u32,
    pub max_depth: u32,
    pub eta: f64,
    pub min_child_weight: f64,
    pub subsample: f64,
    pub colsample_bytree: f64,
    pub lambda: f64,
    pub scale_pos_weight: PositiveWeight,
    pub seed: u64,
    pub threads: u32,
}

/// How much more a positive (oversold) order weighs than a negative one in training.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PositiveWeight {
    Fixed(f64),
    /// `"auto"`: the square root of negatives / positives in the training rows.
    Auto(AutoWeight),
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AutoWeight {
    Auto,
}

impl PositiveWeight {
    pub fn resolve(self, positives: usize, negatives: usize) -> f64 {
        match self {
            PositiveWeight::Fixed(weight) => weight,
            PositiveWeight::Auto(_) => (negatives.max(1) as f64 / positives.max(1) as f64).sqrt().max(1.0),
        }
    }
}

impl Default for TrainConfig {
    fn default() -> TrainConfig {
        TrainConfig { validation_days: 3, test_days: 5, target_vs_naive_atp: 0.35, target_oversell_rate: None, ablation: true, calibrate: true, xgboost: XgboostConfig::default() }
    }
}

impl Default for XgboostConfig {
    fn default() -> XgboostConfig {
        XgboostConfig {
            rounds: 400,
            early_stopping_rounds: 30,
            max_depth: 6,
            eta: 0.1,
            min_child_weight: 1.0,
            subsample: 0.9,
            colsample_bytree: 0.9,
            lambda: 1.0,
            scale_pos_weight: PositiveWeight::Auto(AutoWeight::Auto),
            seed: 7,
            threads: 2,
        }
    }
}

/// A training configuration that cannot be used, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{origin}: {source}")]
    Syntax { origin: String, source: toml::de::Error },
    #[error("{origin}: {}", .problems.join("; "))]
    Invalid { origin: String, problems: Vec<String> },
}

impl TrainConfig {
    /// Parses a TOML file's text and checks every value; `origin` names the file in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<TrainConfig, ConfigError> {
        let config: TrainConfig = toml::from_str(text).map_err(|source| ConfigError::Syntax { origin: origin.to_string(), source })?;
        config.validate().map_err(|problems| ConfigError::Invalid { origin: origin.to_string(), problems })?;
        Ok(config)
    }

    /// Every problem of the configuration at once.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let x = &self.xgboost;
        let mut problems = Vec::new();
        let mut check = |ok: bool, problem: String| {
            if !ok {
                problems.push(problem);
            }
        };
        check(self.validation_days >= 1, format!("validation_days must be at least 1, got {}", self.validation_days));
        check(self.test_days >= 1, format!("test_days must be at least 1, got {}", self.test_days));
        if let Some(target) = self.target_oversell_rate {
            check(target > 0.0 && target < 1.0, format!("target_oversell_rate must be between 0 and 1, got {target}"));
        }
        let share = self.target_vs_naive_atp;
        check(share > 0.0 && share < 1.0, format!("target_vs_naive_atp must be between 0 and 1 (naive ATP itself meets 1), got {share}"));
        check(x.rounds >= 1, format!("xgboost.rounds must be at least 1, got {}", x.rounds));
        check(x.early_stopping_rounds >= 1, format!("xgboost.early_stopping_rounds must be at least 1, got {}", x.early_stopping_rounds));
        check((1..=16).contains(&x.max_depth), format!("xgboost.max_depth must be from 1 to 16, got {}", x.max_depth));
        check(x.eta > 0.0 && x.eta <= 1.0, format!("xgboost.eta must be in (0, 1], got {}", x.eta));
        check(x.min_child_weight >= 0.0, format!("xgboost.min_child_weight must not be negative, got {}", x.min_child_weight));
        check(x.subsample > 0.0 && x.subsample <= 1.0, format!("xgboost.subsample must be in (0, 1], got {}", x.subsample));
        check(x.colsample_bytree > 0.0 && x.colsample_bytree <= 1.0, format!("xgboost.colsample_bytree must be in (0, 1], got {}", x.colsample_bytree));
        check(x.lambda >= 0.0, format!("xgboost.lambda must not be negative, got {}", x.lambda));
        if let PositiveWeight::Fixed(weight) = x.scale_pos_weight {
            check(weight > 0.0, format!("xgboost.scale_pos_weight must be positive or \"auto\", got {weight}"));
        }
        check(x.threads >= 1, format!("xgboost.threads must be at least 1, got {}", x.threads));
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_is_the_default_and_keys_are_optional() {
        let documented = include_str!("config.rs")
            .lines()
            .skip_while(|line| !line.starts_with("//! ```toml"))
            .skip(1)
            .take_while(|line| !line.starts_with("//! ```"))
            .map(|line| line.trim_start_matches("//!").trim_start())
            .collect::<Vec<_>>()
            .join("\n");
        assert_eq!(TrainConfig::from_toml(&documented, "doc").unwrap(), TrainConfig::default());
        assert_eq!(TrainConfig::from_toml("", "empty").unwrap(), TrainConfig::default());
        let custom = TrainConfig::from_toml("[xgboost]\nscale_pos_weight = 3\neta = 0.3", "custom").unwrap();
        assert_eq!((custom.xgboost.scale_pos_weight, custom.xgboost.eta), (PositiveWeight::Fixed(3.0), 0.3));
    }

    #[test]
    fn the_example_file_parses() {
        let example = TrainConfig::from_toml(include_str!("../../examples/train.toml"), "examples/train.toml").unwrap();
        assert_eq!((example.target(), example.xgboost.eta), (Target::VsNaiveAtp(0.25), 0.05));
        assert_eq!(TrainConfig { target_vs_naive_atp: 0.35, xgboost: XgboostConfig { eta: 0.1, ..example.xgboost.clone() }, ..example }, TrainConfig::default());
    }

    #[test]
    fn bad_configs_name_every_problem() {
        let error = TrainConfig::from_toml("target_oversell_rate = 2\ntarget_vs_naive_atp = 1\n[xgboost]\neta = 0\nmax_depth = 40", "train.toml").unwrap_err().to_string();
        assert_eq!(
            error,
            "train.toml: target_oversell_rate must be between 0 and 1, got 2; target_vs_naive_atp must be between 0 and 1 (naive ATP itself meets 1), got 1; xgboost.max_depth must be from 1 to 16, got 40; \
             xgboost.eta must be in (0, 1], got 0"
        );
        let typo = TrainConfig::from_toml("[xgboost]\nmax_dept = 4", "train.toml").unwrap_err().to_string();
        assert!(typo.starts_with("train.toml: ") && typo.contains("unknown field `max_dept`"), "{typo}");
        assert!(TrainConfig::from_toml("[xgboost]\nscale_pos_weight = \"often\"", "t").is_err());
    }
}
