//! Reservations as the store keeps them: per SKU, the units each live reservation holds at each
//! node, taken atomically against what serving would promise. Serving decides what is
//! promisable; the store ([`HoldStore`], Redis in `sellable-speed`) takes a SKU's lines of a cart
//! all or none, against its live holds, and forgets a hold when it expires, by the store's own
//! clock, without a sweeper.

use crate::event::Millis;
use crate::view::{Ahead, BoxFuture, ViewError};

/// One line of a cart as the store takes it: `qty` units of the SKU from the nodes of `options`
/// (in preference order, each with the units serving would promise there now, live holds not
/// subtracted), from one node, or split over several when `split`.
#[derive(Debug, Clone, PartialEq)]
pub struct HoldLine {
    /// The line's index in the cart.
    pub line: usize,
    pub qty: i64,
    pub split: bool,
    pub options: Vec<(String, i64)>,
}

/// Units of a line taken at one node.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Taken {
    pub node: String,
    pub units: i64,
}

/// What taking a SKU's lines did: per line (in the order given) where its units were taken, or,
/// when any line could not be met, per line that could not, the units it could have had (and
/// nothing was taken).
#[derive(Debug, Clone, PartialEq)]
pub enum HoldOutcome {
    /// Every line taken, held until `expires` (store clock).
    Held { expires: Millis, lines: Vec<(usize, Vec<Taken>)> },
    Short(Vec<(usize, i64)>),
    /// A confirmation released holds of the SKU since the decision was made: nothing was taken;
    /// decide again.
    Stale,
}

/// What `begin` found under a reservation id.
#[derive(Debug, Clone, PartialEq)]
pub enum Begun {
    /// Nothing: the caller owns the id now (the record says `pending`).
    Owner,
    /// A record: the answer given before, or a pending one (another request on it, or one that
    /// died before answering), with its age.
    Found { record: String, pending_ms: Option<Millis> },
}

/// Until when a hold counts, on the store's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// That long from the store's clock when the hold is taken (the first SKU of a cart: no
    /// separate read of the clock).
    After(Millis),
    /// That instant (the cart's other SKUs, to expire with the first).
    At(Millis),
}

/// Per node, the units live holds take of one SKU.
pub type Held = Vec<(String, i64)>;

/// The reservations' store.
pub trait HoldStore: Send + Sync {
    /// The store's clock (every expiry is on it, whichever server asks).
    fn now(&self) -> BoxFuture<'_, Result<Millis, ViewError>>;

    /// Claims the id with a pending record kept `keep_ms`, unless a record is there.
    fn begin<'a>(&'a self, id: &'a str, keep_ms: Millis) -> BoxFuture<'a, Result<Begun, ViewError>>;

    /// Writes the record of the id (its answer), kept `keep_ms`.
    fn record<'a>(&'a self, id: &'a str, record: &'a str, keep_ms: Millis) -> BoxFuture<'a, Result<(), ViewError>>;

    /// The record of the id, if any.
    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<String>, ViewError>>;

    /// Forgets the id's record (a request that could not be answered, to be retried).
    fn forget<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), ViewError>>;

    /// How many confirmations have turned holds of `sku` into events so far: read before a
    /// decision, and given to [`HoldStore::hold`] with it.
    fn confirms<'a>(&'a self, sku: &'a str) -> BoxFuture<'a, Result<u64, ViewError>>;

    /// The one Redis server it is on (its URL), if it is on one server: a speed view on the same
    /// server can read its counts of confirmations ahead of SKUs ([`HoldStore::confirms_ahead`]).
    fn server(&self) -> Option<&str> {
        None
    }

    /// Where the [`HoldStore::confirms`] counts of `skus` can be read by another client in the
    /// same round trip as the SKUs' speed states (on [`HoldStore::server`]): `None` when they
    /// cannot (read them with [`HoldStore::confirms`], before the states). A value read there
    /// is the count as a number; none is 0.
    fn confirms_ahead(&self, skus: &[&str]) -> Option<Ahead> {
        let _ = skus;
        None
    }

    /// Takes the lines of one SKU for reservation `id` `until` then, all or none, if no
    /// confirmation of the SKU came after `confirms` (else [`HoldOutcome::Stale`]). Idempotent:
    /// lines the id holds already are answered as they were taken, with their expiry.
    fn hold<'a>(&'a self, id: &'a str, sku: &'a str, lines: &'a [HoldLine], until: Until, confirms: u64) -> BoxFuture<'a, Result<HoldOutcome, ViewError>>;

    /// Sets the expiry of every live hold of `id` on `sku` to `expires`; how many there were.
    fn extend<'a>(&'a self, id: &'a str, sku: &'a str, expires: Millis) -> BoxFuture<'a, Result<u64, ViewError>>;

    /// Drops every hold of `id` on `sku`; `confirmed`: their units are events now (counted in
    /// [`HoldStore::confirms`]).
    fn release<'a>(&'a self, id: &'a str, sku: &'a str, confirmed: bool) -> BoxFuture<'a, Result<(), ViewError>>;

    /// Per node, the units live holds take of `sku` now.
    fn held<'a>(&'a self, sku: &'a str) -> BoxFuture<'a, Result<Held, ViewError>> {
        Box::pin(async move { Ok(self.held_many(&[sku]).await?.pop().unwrap_or_default()) })
    }

    /// [`HoldStore::held`] of several SKUs at once, in order.
    fn held_many<'a>(&'a self, skus: &'a [&'a str]) -> BoxFuture<'a, Result<Vec<Held>, ViewError>>;
}
