//! The live model and its shadow, swapped atomically.
//!
//! Each answer takes an `Arc` of the live model once and scores every node with it, so a swap
//! in the middle of a request changes nothing for that request and no request waits or fails.
//! The live version is the registry's (its `history.json`): [`ModelBook::watch`] polls it and
//! loads a newly promoted or rolled-back version; a version that does not load is refused, the
//! error is kept for `GET /v1/model`, and the model already live keeps serving. With no model at
//! all, answers fall back to the static safety stock of the last evaluation (the registry's newest
//! manifest; none at all when nothing was ever evaluated: naive ATP) and the rules, with the
//! reason in `degraded_reasons`.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use sellable_models::{Model, Registry, RegistryError};

/// Why a model could not be made live.
#[derive(Debug, thiserror::Error)]
pub enum ModelBookError {
    #[error("shadow model: {0}")]
    Shadow(#[source] RegistryError),
    #[error("reading the registry: {0}")]
    Registry(#[source] RegistryError),
    #[error("{source}; {kept} keeps serving")]
    Refused { source: RegistryError, kept: String },
}

/// What `GET /v1/model` shows.
#[derive(Debug, Clone, Default, serde::Serialize, utoipa::ToSchema)]
pub struct ModelStatus {
    pub live: Option<String>,
    pub threshold: Option<f64>,
    pub shadow: Option<String>,
    /// The last load that failed, if the registry still points at it.
    pub error: Option<String>,
    /// Units each node holds back while no model is live: the static safety stock of the last
    /// evaluation.
    pub fallback_safety_stock: i64,
}

#[derive(Default)]
pub struct ModelBook {
    registry: Option<Registry>,
    live: RwLock<Option<Arc<Model>>>,
    shadow: RwLock<Option<Arc<Model>>>,
    /// The registry version whose load failed, and why (not retried until the registry changes).
    failed: RwLock<Option<(String, String)>>,
    /// The static safety stock of the last evaluation seen (0: none was ever seen).
    safety_stock: RwLock<i64>,
}

fn read<T: Clone>(lock: &RwLock<T>) -> T {
    lock.read().expect("model lock poisoned; this is a bug").clone()
}

fn write<T>(lock: &RwLock<T>, value: T) {
    *lock.write().expect("model lock poisoned; this is a bug") = value;
}

impl ModelBook {
    /// No model: every answer is degraded to rules on naive ATP.
    pub fn none() -> ModelBook {
        ModelBook::default()
    }

    /// A fixed model (tests, backtests).
    pub fn with(model: Model) -> ModelBook {
        let book = ModelBook::none();
        write(&book.live, Some(Arc::new(model)));
        book
    }

    /// The registry's live version, loaded now (a failure is kept in the status; answers are
    /// degraded until a version loads), and `shadow`, a candidate scored beside it.
    pub fn from_registry(registry: Registry, shadow: Option<&str>) -> Result<ModelBook, ModelBookError> {
        let book = ModelBook { registry: Some(registry), ..ModelBook::default() };
        write(&book.safety_stock, book.newest_safety_stock());
        if let Some(version) = shadow {
            let registry = book.registry.as_ref().expect("just set");
            let model = registry.load(version, &sellable_core::features::names()).map_err(ModelBookError::Shadow)?;
            write(&book.shadow, Some(Arc::new(model)));
        }
        // a failure is kept for the status; answers are degraded until a version loads
        let _ = book.reload();
        Ok(book)
    }

    pub fn current(&self) -> Option<Arc<Model>> {
        read(&self.live)
    }

    pub fn shadow(&self) -> Option<Arc<Model>> {
        read(&self.shadow)
    }

    pub fn status(&self) -> ModelStatus {
        let live = self.current();
        ModelStatus {
            live: live.as_ref().map(|model| model.version().to_string()),
            threshold: live.as_ref().map(|model| model.threshold()),
            shadow: self.shadow().map(|model| model.version().to_string()),
            error: read(&self.failed).map(|(_, error)| error),
            fallback_safety_stock: self.fallback_safety_stock(),
        }
    }

    /// What each node holds back while no model is live: the safety stock the last evaluation
    /// chose (the live model's, else the registry's newest manifest's), 0 if none was ever made.
    pub fn fallback_safety_stock(&self) -> i64 {
        read(&self.safety_stock)
    }

    fn newest_safety_stock(&self) -> i64 {
        let Some(registry) = &self.registry else { return 0 };
        let versions = registry.versions().unwrap_or_default();
        versions.iter().rev().find_map(|version| registry.manifest(version).ok()?.headline.get("safety_stock").map(|k| *k as i64)).unwrap_or(0)
    }

    /// Loads the registry's live version if it is not the one serving. Returns the version
    /// serving afterwards; a failure keeps the current model and is reported.
    pub fn reload(&self) -> Result<Option<String>, ModelBookError> {
        let Some(registry) = &self.registry else { return Ok(self.current().map(|m| m.version().to_string())) };
        let wanted = registry.live().map_err(ModelBookError::Registry)?;
        let serving = self.current().map(|model| model.version().to_string());
        let Some(wanted) = wanted else {
            // nothing promoted (or everything rolled back): keep what serves, if anything
            return Ok(serving);
        };
        if serving.as_deref() == Some(wanted.as_str()) {
            write(&self.failed, None);
            return Ok(serving);
        }
        match registry.load(&wanted, &sellable_core::features::names()) {
            Ok(model) => {
                tracing::info!(version = wanted, threshold = model.threshold(), "model live");
                if let Some(k) = model.manifest.headline.get("safety_stock") {
                    write(&self.safety_stock, *k as i64);
                }
                write(&self.live, Some(Arc::new(model)));
                write(&self.failed, None);
                Ok(Some(wanted))
            }
            Err(source) => {
                tracing::warn!(version = wanted, error = %source, "model refused");
                let error = ModelBookError::Refused { source, kept: serving.unwrap_or_else(|| "no model".to_string()) };
                write(&self.failed, Some((wanted, error.to_string())));
                Err(error)
            }
        }
    }

    fn changed(&self) -> bool {
        let Some(registry) = &self.registry else { return false };
        let Ok(Some(wanted)) = registry.live() else { return false };
        let serving = self.current().map(|model| model.version().to_string());
        let failed = read(&self.failed).map(|(version, _)| version);
        serving.as_deref() != Some(wanted.as_str()) && failed.as_deref() != Some(wanted.as_str())
    }

    /// Polls the registry and swaps in a newly promoted or rolled-back version (failures are in
    /// the status; the live model keeps serving).
    pub fn watch(self: Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        crate::poll(self, every, ModelBook::changed, |book| {
            let _ = book.reload();
        })
    }
}
