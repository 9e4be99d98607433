//! Catching up: how a speed view starts at a batch cutoff. Every process that builds a speed
//! view from the lake (`sellable serve` with the embedded store, `sellable fold`, `sellable
//! reconcile`, the demo, the tests) goes through [`catch_up`], so they agree on the boundary.
//!
//! The contract: after `catch_up(log, speed, cutoff, …)` the speed view holds exactly the events
//! that arrived after `cutoff` (the batch view holds the rest, [`sellable_core::known_at`]), and
//! an event of the batch view redelivered after the cutoff, within the allowed lateness, is a
//! duplicate rather than a second count.

use std::path::Path;

use sellable_core::view::{BoxFuture, Rows};
use sellable_core::{known_at, BatchMeta, Event, EventLog, Millis, ViewError};

use crate::{FoldReport, SpeedError, SpeedView};

/// Where the events after the cutoff come from.
#[derive(Debug, Clone, Copy)]
pub enum CatchUpSource<'a> {
    /// The event log itself (the lake).
    Log,
    /// A Parquet or JSON Lines file of events, folded instead of the log's.
    File(&'a Path),
}

/// What a catch-up did.
#[derive(Debug)]
pub struct CatchUp {
    /// Where the events came from, for messages: `the lake` or the file's path.
    pub source: String,
    /// Events read from the source (malformed ones included), held-back ones left out.
    pub read: usize,
    pub report: FoldReport,
    /// Events that had not arrived yet at `until`: not folded, in the source's order.
    pub held_back: Vec<Event>,
}

/// Folds the events that arrived after `cutoff` into `speed`, first remembering the ids of the
/// log's events that arrived within the allowed lateness before it (a redelivered copy of one of
/// them is a duplicate; anything older would be refused as too late). With `until`, only the
/// events known at `until` are folded; the later ones are returned, not folded. Last, the view is
/// marked as caught up from `cutoff` ([`SpeedView::mark_caught_up`]).
pub async fn catch_up(
    log: &dyn EventLog,
    speed: &SpeedView,
    cutoff: Millis,
    from: CatchUpSource<'_>,
    until: Option<Millis>,
) -> Result<CatchUp, SpeedError> {
    let lateness = speed.config().lateness_ms;
    let ids = log.ids_arrived(cutoff - lateness, cutoff).await.map_err(SpeedError::EventLog)?;
    speed.remember(&ids, cutoff).await?;
    let (source, label, mut decoded): (String, String, Vec<_>) = match from {
        CatchUpSource::Log => ("the lake".into(), "lake".into(), log.events_after(cutoff).await.map_err(SpeedError::EventLog)?),
        CatchUpSource::File(path) => {
            let file = |source| SpeedError::File { path: path.display().to_string(), source };
            let events = sellable_core::event::read_event_file(path).map_err(file)?.collect();
            (path.display().to_string(), format!("file:{}", path.display()), events)
        }
    };
    let mut held_back = Vec::new();
    if let Some(until) = until {
        decoded.retain(|event| match event {
            Ok(event) if !known_at(event, until) => {
                held_back.push(event.clone());
                false
            }
            _ => true,
        });
    }
    let read = decoded.len();
    let report = speed.fold_decoded(decoded, Some(cutoff), &label).await?;
    speed.mark_caught_up(cutoff).await?;
    Ok(CatchUp { source, read, report, held_back })
}

/// Loads the batch view a speed view continues (its metadata and its rows), to publish it again
/// into a store that lost it.
pub type BatchRows = std::sync::Arc<dyn Fn() -> BoxFuture<'static, Result<(BatchMeta, Rows), ViewError>> + Send + Sync>;

/// Keeps `speed` caught up from `cutoff` for as long as the task runs: every `every`, if the view
/// does not carry the mark of that cutoff (it was never caught up, or its store came back empty),
/// the batch view of `cutoff` is published into it again if it is not there ([`BatchRows`]) and
/// it is caught up again from `log`. Serving, which reads the same mark, answers conservatively
/// meanwhile. Failures (the store still away) are logged and tried again at the next tick.
pub fn keep_caught_up(
    log: std::sync::Arc<dyn EventLog>,
    speed: std::sync::Arc<SpeedView>,
    cutoff: Millis,
    rows: BatchRows,
    every: std::time::Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        loop {
            ticks.tick().await;
            match speed.caught_up_to().await {
                Ok(Some(mark)) if mark == cutoff => continue,
                Ok(mark) => tracing::warn!(?mark, cutoff, "the speed view is not caught up from the batch view's cutoff: catching up from the lake"),
                Err(error) => {
                    tracing::warn!(%error, "cannot read the speed view's catch-up mark");
                    continue;
                }
            }
            let restored = async {
                if speed.batch_meta().await?.is_none_or(|meta| meta.asof != cutoff) {
                    let (meta, rows) = rows().await.map_err(SpeedError::EventLog)?;
                    speed.publish(&meta, rows).await?;
                }
                catch_up(log.as_ref(), &speed, cutoff, CatchUpSource::Log, None).await
            };
            match restored.await {
                Ok(caught) => tracing::info!(events = caught.read, applied = caught.report.stats.applied, "the speed view is caught up again"),
                Err(error) => tracing::warn!(%error, "catching up failed; trying again"),
            }
        }
    })
}
