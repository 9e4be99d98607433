//! How current an answer's inputs are, and what that lets it promise ([`sellable_core::Grade`]).
//!
//! - The speed view is read with a timeout; a view that fails, times out, or is not known to be
//!   complete for the batch view's cutoff (it was never caught up, or Redis came back empty) makes
//!   the answer `conservative`: the batch view minus what may have left since the cutoff
//!   ([`sellable_core::grade::conservative_atp`]), never more than the fresh answer would give.
//! - A batch view older than its expected age (a missed nightly run) makes it `bounded_stale`,
//!   with one unit held back per node; with the speed view unusable as well, `unavailable`:
//!   nothing is promised.
//! - A node whose feed is beyond its SLA promises nothing (`bounded_stale`).

use std::time::Duration;

use sellable_core::{Grade, Millis, ViewError};

/// The bounds serving answers within.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// How long a request waits for the speed view before answering without it.
    pub speed_timeout: Duration,
    /// How old the batch view may be before answers hold back a margin.
    pub batch_max_age_ms: Millis,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { speed_timeout: Duration::from_millis(50), batch_max_age_ms: 36 * 3_600_000 }
    }
}

/// Units each node holds back while the batch view is older than its expected age.
pub const STALE_BATCH_MARGIN: i64 = 1;

/// The grade of an answer so far and its reasons; only ever gets worse.
#[derive(Debug, Default)]
pub struct Grading {
    pub grade: Grade,
    pub reasons: Vec<String>,
}

impl Grading {
    pub fn lower(&mut self, grade: Grade, reason: String) {
        self.grade = self.grade.max(grade);
        self.reasons.push(reason);
    }

    /// A reason that does not change the grade (no model: the safety stock stands in).
    pub fn note(&mut self, reason: String) {
        self.reasons.push(reason);
    }
}

/// Whether a speed view caught up from `caught_up` may be merged with a batch view as of
/// `cutoff`; the reason when not.
pub fn distrust(caught_up: Option<Millis>, cutoff: Millis) -> Option<String> {
    match caught_up {
        Some(mark) if mark == cutoff => None,
        Some(mark) => Some(format!("speed view was caught up from cutoff {mark}, not the batch view's {cutoff}")),
        None => Some("speed view is not known to be complete (never caught up, or its store lost what it held)".to_string()),
    }
}

/// Reads the speed view within `timeout`; a failure or a timeout becomes the reason an answer
/// gives for going without it.
pub async fn within<T>(timeout: Duration, read: impl std::future::Future<Output = Result<T, ViewError>>) -> Result<T, String> {
    match tokio::time::timeout(timeout, read).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(format!("speed view unavailable ({error})")),
        Err(_) => Err(format!("speed view did not answer within {} ms", timeout.as_millis())),
    }
}
