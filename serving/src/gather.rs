//! Single-SKU reads of concurrent requests, gathered: while [`IN_FLIGHT`] reads are on their way
//! to the store, the SKUs asked meanwhile wait and then go together, in one call for their speed
//! states and the rows the epoch has not read yet ([`sellable_core::SpeedSource::sku_reads_having`], one
//! pipeline) and one for their holds
//! ([`HoldStore::held_many`]). Under load an answer costs a share of two round trips instead of
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

/// What a gathered read gave one request: the SKU's read, and its live holds when asked for (or
/// why not, for either).
pub(crate) struct Got {
    pub read: Result<SkuRead, String>,
    pub held: Result<Held, String>,
}

struct Ask {
    epoch: Arc<Epoch>,
    sku: String,
    holds: bool,
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

    /// Reads `sku` from `epoch`'s store (and its holds from `store`, when `holds`), gathered
    /// with the reads other requests ask for meanwhile, within `timeout` from now.
    pub(crate) async fn read(&self, store: Option<&Arc<dyn HoldStore>>, timeout: Duration, epoch: Arc<Epoch>, sku: &str, holds: bool) -> Got {
        let asks = self.asks[lane::place()].get_or_init(|| {
            let (asks, asked) = mpsc::unbounded_channel();
            tokio::spawn(run(asked, store.cloned(), timeout, self.sizes.clone()));
            asks
        });
        let (reply, answer) = oneshot::channel();
        let failed = |why: String| Got { read: Err(why.clone()), held: Err(why) };
        if asks.send(Ask { epoch, sku: sku.to_string(), holds, reply }).is_err() {
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
        let mut held_skus: Vec<&str> = these.iter().filter(|ask| ask.holds).map(|ask| ask.sku.as_str()).collect();
        held_skus.sort_unstable();
        held_skus.dedup();
        let (reads, held) = read_together(&epoch, store, timeout, &skus, &held_skus).await;
        let indexes: Vec<usize> = these.iter().map(|ask| skus.binary_search(&ask.sku.as_str()).expect("every SKU asked is read")).collect();
        let reads = handed_out(reads, &indexes);
        let got: Vec<Got> = these
            .iter()
            .zip(reads)
            .map(|(ask, read)| {
                let held = match (&held, ask.holds) {
                    (_, false) => Ok(Vec::new()),
                    (Ok(held), true) => Ok(held_skus.binary_search(&ask.sku.as_str()).map(|index| held[index].clone()).unwrap_or_default()),
                    (Err(why), true) => Err(why.clone()),
                };
                Got { read, held }
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
/// them before) and the live holds of `held_skus` from `store` in another, at the same time,
/// each within `timeout` (no holds without a store or SKUs to ask for).
pub(crate) async fn read_together(
    epoch: &Epoch,
    store: Option<&Arc<dyn HoldStore>>,
    timeout: Duration,
    skus: &[&str],
    held_skus: &[&str],
) -> (Result<Vec<SkuRead>, String>, Result<Vec<Held>, String>) {
    let known = epoch.rows_of(skus);
    let have: Vec<bool> = known.iter().map(Option::is_some).collect();
    let holds = async {
        match store {
            Some(store) if !held_skus.is_empty() => grading::within(timeout, store.held_many(held_skus)).await,
            _ => Ok(Vec::new()),
        }
    };
    let (reads, held) = tokio::join!(grading::within(timeout, epoch.speed.sku_reads_having(skus, &have)), holds);
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
    (reads, held)
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
