//! Single-SKU reads of concurrent requests, gathered: while [`IN_FLIGHT`] reads are on their way
//! to the store, the SKUs asked meanwhile wait and then go together, in one call for their speed
//! states and the rows the epoch has not read yet ([`sellable_core::SpeedSource::sku_reads_having`], one
//! pipeline) and one for their holds
//! ([`HoldStore::held_many`]); a reservation's SKU is read after its count of confirmations
//! ([`HoldStore::confirms`]), in the same pipeline (the hold store is on the speed view's server:
//! [`Also::Confirms`]). Under load an answer costs a share of two round trips instead of
//! two of its own (and the catch-up mark and the store's clock are read once per call, not per
//! answer); an idle server sends each read at once.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use sellable_core::holds::{Held, HoldStore};
use sellable_core::lane;
use sellable_core::SkuRead;
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::{grading, Epoch};

/// Gathered reads on their way to the store at once, at most.
const IN_FLIGHT: usize = 2;

/// SKUs in one gathered read, at most.
const MOST: usize = 256;

/// Bounds of the histogram of requests per gathered read (`sellable_gathered_reads`).
pub(crate) const SIZE_BUCKETS: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// What a read asks of the hold store besides the SKU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Also {
    Nothing,
    /// The SKU's live holds (an availability answer subtracts them).
    Held,
    /// The SKU's count of confirmations, read before the SKU in the same round trip: a
    /// reservation's decision is taken only if no confirmation came after it
    /// ([`HoldStore::hold`]). Only where the hold store is on the speed view's one server
    /// ([`confirms_ahead`]); elsewhere the count is read before the SKU is asked for.
    Confirms,
}

/// What a gathered read gave one request: the SKU's read, its live holds (none unless asked
/// for) and its count of confirmations when asked for (or why not, for each).
pub(crate) struct Got {
    pub read: Result<SkuRead, String>,
    pub held: Result<Held, String>,
    pub confirms: Option<Result<u64, String>>,
}

struct Ask {
    epoch: Arc<Epoch>,
    sku: String,
    also: Also,
    reply: oneshot::Sender<Got>,
}

/// The gatherers of a server, one per lane ([`sellable_core::lane`]): a lane's task starts with
/// the lane's first read, in the lane's runtime, and ends with it.
pub(crate) struct Gather {
    asks: [OnceLock<mpsc::UnboundedSender<Ask>>; lane::MOST],
    /// Requests per gathered read.
    sizes: prometheus::Histogram,
}

impl Gather {
    pub(crate) fn new(sizes: prometheus::Histogram) -> Gather {
        Gather { asks: std::array::from_fn(|_| OnceLock::new()), sizes }
    }

    /// Reads `sku` from `epoch`'s store (and what `also` asks of `store`), gathered with the
    /// reads other requests ask for meanwhile, within `timeout` from now.
    pub(crate) async fn read(&self, store: Option<&Arc<dyn HoldStore>>, timeout: Duration, epoch: Arc<Epoch>, sku: &str, also: Also) -> Got {
        let asks = self.asks[lane::place()].get_or_init(|| {
            let (asks, asked) = mpsc::unbounded_channel();
            tokio::spawn(run(asked, store.cloned(), timeout, self.sizes.clone()));
            asks
        });
        let (reply, answer) = oneshot::channel();
        let failed = |why: String| Got { read: Err(why.clone()), held: Err(why.clone()), confirms: (also == Also::Confirms).then_some(Err(why)) };
        if asks.send(Ask { epoch, sku: sku.to_string(), also, reply }).is_err() {
            return failed("the server's reads have stopped".to_string());
        }
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(got)) => got,
            Ok(Err(_)) => failed("the read was dropped".to_string()),
            Err(_) => failed(format!("speed view did not answer within {} ms", timeout.as_millis())),
        }
    }
}

/// Takes what was asked since the last read went out, up to [`MOST`], whenever fewer than
/// [`IN_FLIGHT`] reads are out, and sends it as one read.
async fn run(mut asked: mpsc::UnboundedReceiver<Ask>, store: Option<Arc<dyn HoldStore>>, timeout: Duration, sizes: prometheus::Histogram) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let Some(first) = asked.recv().await else { return };
        let mut asks = vec![first];
        while asks.len() < MOST {
            match asked.try_recv() {
                Ok(ask) => asks.push(ask),
                Err(_) => break,
            }
        }
        sizes.observe(asks.len() as f64);
        let store = store.clone();
        tokio::spawn(async move {
            answer(asks, store.as_ref(), timeout).await;
            drop(slot);
        });
    }
}

/// Reads the SKUs of `asks` (per epoch: a cutover may fall between two requests) and answers
/// each.
async fn answer(mut asks: Vec<Ask>, store: Option<&Arc<dyn HoldStore>>, timeout: Duration) {
    while !asks.is_empty() {
        let epoch = asks[0].epoch.clone();
        let (these, others): (Vec<Ask>, Vec<Ask>) = asks.into_iter().partition(|ask| Arc::ptr_eq(&ask.epoch, &epoch));
        asks = others;
        let mut skus: Vec<&str> = these.iter().map(|ask| ask.sku.as_str()).collect();
        skus.sort_unstable();
        skus.dedup();
        let asking = |also: Also| {
            let mut skus: Vec<&str> = these.iter().filter(|ask| ask.also == also).map(|ask| ask.sku.as_str()).collect();
            skus.sort_unstable();
            skus.dedup();
            skus
        };
        let (held_skus, confirm_skus) = (asking(Also::Held), asking(Also::Confirms));
        let (reads, held, confirms) = read_together(&epoch, store, timeout, &skus, &held_skus, &confirm_skus).await;
        let indexes: Vec<usize> = these.iter().map(|ask| skus.binary_search(&ask.sku.as_str()).expect("every SKU asked is read")).collect();
        let reads = handed_out(reads, &indexes);
        let got: Vec<Got> = these
            .iter()
            .zip(reads)
            .map(|(ask, read)| {
                let of = |skus: &[&str]| skus.binary_search(&ask.sku.as_str()).expect("every SKU asked is read");
                let held = match (&held, ask.also) {
                    (Ok(held), Also::Held) => Ok(held.get(of(&held_skus)).cloned().unwrap_or_default()),
                    (Err(why), Also::Held) => Err(why.clone()),
                    _ => Ok(Vec::new()),
                };
                let confirms = (ask.also == Also::Confirms).then(|| confirms.as_ref().map(|counts| counts[of(&confirm_skus)]).map_err(Clone::clone));
                Got { read, held, confirms }
            })
            .collect();
        for (ask, got) in these.into_iter().zip(got) {
            // a request that stopped waiting has gone: nothing to answer
            let _ = ask.reply.send(got);
        }
    }
}

/// The value of `values` each of `uses` (indexes into it) asks for, in order, or the error
/// for each: a value is moved at its last use, cloned before it (a SKU asked more than once).
pub(crate) fn handed_out<T: Clone>(values: Result<Vec<T>, String>, uses: &[usize]) -> Vec<Result<T, String>> {
    let mut values: Vec<Option<T>> = match values {
        Ok(values) => values.into_iter().map(Some).collect(),
        Err(why) => return vec![Err(why); uses.len()],
    };
    let mut last = vec![usize::MAX; values.len()];
    for (at, index) in uses.iter().enumerate() {
        last[*index] = at;
    }
    uses.iter()
        .enumerate()
        .map(|(at, index)| {
            let value = if last[*index] == at { values[*index].take() } else { values[*index].clone() };
            Ok(value.expect("a value is moved only at its last use"))
        })
        .collect()
}

/// `skus` read from `epoch`'s store in one call (their rows only where the epoch has not read
/// them before, after the counts of confirmations of `confirm_skus`: [`reads_after_confirms`])
/// and the live holds of `held_skus` from `store` in another, at the same time, each within
/// `timeout` (no holds without a store or SKUs to ask for).
pub(crate) async fn read_together(
    epoch: &Epoch,
    store: Option<&Arc<dyn HoldStore>>,
    timeout: Duration,
    skus: &[&str],
    held_skus: &[&str],
    confirm_skus: &[&str],
) -> (Result<Vec<SkuRead>, String>, Result<Vec<Held>, String>, Result<Vec<u64>, String>) {
    let known = epoch.rows_of(skus);
    let have: Vec<bool> = known.iter().map(Option::is_some).collect();
    let holds = async {
        match store {
            Some(store) if !held_skus.is_empty() => grading::within(timeout, store.held_many(held_skus)).await,
            _ => Ok(Vec::new()),
        }
    };
    let ((reads, confirms), held) = tokio::join!(reads_after_confirms(epoch, store, timeout, skus, &have, confirm_skus), holds);
    let reads = reads.map(|reads| {
        // the rows not read before in this epoch are kept for the next reads, where the store
        // says it holds this epoch (caught up from its cutoff): a row of another batch view
        // answers once, conservatively, and is not kept
        let this_epoch = |read: &SkuRead| grading::distrust(read.caught_up, epoch.batch.asof).is_none();
        epoch.remember(
            skus.iter().zip(&reads).zip(&known).filter(|((_, read), known)| known.is_none() && this_epoch(read)).filter_map(|((sku, read), _)| Some((*sku, read.row.as_ref()?))),
        );
        reads
            .into_iter()
            .zip(known)
            .map(|(read, known)| SkuRead { row: known.or(read.row), ..read })
            .collect()
    });
    (reads, held, confirms)
}

/// Whether the counts of confirmations in `store` can be read ahead of SKUs in `speed`, in one
/// round trip: both are on the same single Redis server.
pub(crate) fn confirms_ahead(store: &dyn HoldStore, speed: &dyn sellable_core::SpeedSource) -> bool {
    store.server().is_some_and(|server| speed.server() == Some(server))
}

/// `skus` read from `epoch`'s store, after the counts of confirmations of `confirm_skus` were
/// read from `store` in the same round trip (one Redis server runs a connection's commands in
/// order); where that cannot be (another epoch's store came in meanwhile), the counts are an
/// error and the SKUs are read alone.
async fn reads_after_confirms(
    epoch: &Epoch,
    store: Option<&Arc<dyn HoldStore>>,
    timeout: Duration,
    skus: &[&str],
    have: &[bool],
    confirm_skus: &[&str],
) -> (Result<Vec<SkuRead>, String>, Result<Vec<u64>, String>) {
    let read = || grading::within(timeout, epoch.speed.sku_reads_having(skus, have));
    if confirm_skus.is_empty() {
        return (read().await, Ok(Vec::new()));
    }
    let apart = "the count of confirmations cannot be read with the SKU: the speed view is not on the hold store's server";
    let Some(ahead) = store.and_then(|store| store.confirms_ahead(confirm_skus)) else { return (read().await, Err(apart.to_string())) };
    match grading::within(timeout, epoch.speed.sku_reads_after(&ahead, skus, have)).await {
        Ok(Some((values, reads))) => (Ok(reads), counts(values)),
        Ok(None) => (read().await, Err(apart.to_string())),
        Err(why) => (Err(why.clone()), Err(why)),
    }
}

/// Counts of confirmations as read from the store's fields (none: 0).
fn counts(values: Vec<Option<String>>) -> Result<Vec<u64>, String> {
    values
        .into_iter()
        .map(|value| value.map_or(Ok(0), |text| text.parse().map_err(|_| format!("a count of confirmations that is not a number: {text:?}"))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::handed_out;

    #[test]
    fn each_use_gets_its_value_in_order_and_an_error_reaches_every_use() {
        let values = Ok(vec!["a".to_string(), "b".to_string(), "c".to_string()]);
        assert_eq!(handed_out(values, &[2, 0, 2, 1, 2]), ["c", "a", "c", "b", "c"].map(|v| Ok(v.to_string())));
        assert_eq!(handed_out(Ok(vec![1, 2]), &[]), Vec::<Result<i32, String>>::new());
        assert_eq!(handed_out::<i32>(Err("away".to_string()), &[0, 0]), vec![Err("away".to_string()); 2]);
    }
}
