-- The batch features of every sku×node as of a cutoff: the one place to read every feature.
--
-- Inputs (registered by batch/src/features.rs for each cutoff):
--   timely  the events known at the cutoff (arrived at or before it), not too late, one copy of
--           each event_id, with `arrival` and the effect columns `absolute`, `d_on_hand`
--   nodes   the node catalog (node, kind, region, feed_sla_ms)
-- Placeholders: ${asof} (the cutoff, ms since the epoch).
-- Output: sku, node, then exactly the columns of core::features::BATCH, in that order. Missing
-- values are NULL (NaN in the model's vector). Times are event times (`ts`) unless said otherwise.
-- Then the snapshot, the batch view's columns prefixed `view_` (integers and the anchor, exactly
-- the state core's fold gives; batch/src/lib.rs writes them as `batch_view`): the features and
-- the view come from one pass, so they cannot disagree.
-- Statements: each ends with a line ending in `;`. Parts 1 to 3 create in-memory tables that the
-- next parts read: one row per sku×node or per node (`per_node`, `node_totals`, `anchors`,
-- `counted`, `on_hand`, `feed`), and `deltas`, the on-hand changes after each anchor, which batch/src/lib.rs
-- also writes with the batch view (`batch_deltas`); part 4 creates `sku_totals`, the one table
-- that combines nodes, and then gives the output.
-- Shares: when the events known at the cutoff do not fit in memory, batch/src/features.rs splits
-- them by node into shares and runs parts 1 to 3 once per share, over that share's `timely`. So
-- every table parts 1 to 3 create must be computed from whole nodes (grouped, partitioned or
-- joined by node). `sku_totals` runs once, over the union of the shares' `per_node`; the last
-- statement runs once per share again, over that share's tables and `sku_totals`.
-- Memory: a hash join holds its left side in memory and cannot spill, so every join below has a
-- small side (per sku×node, per node, or filtered) on its left; the big inputs are aggregated or
-- windowed (which spill) first. In shares, the last statement's join and sort hold one share's
-- sku×nodes, so that memory too stays bounded as the lake grows.
-- Speed: DataFusion plans a CTE again wherever it is used, so what is read twice is a table, and
-- each statement reads `timely` once: an aggregation, or a hash join against a table of one row
-- per sku×node. Only the count discrepancies sort events, and only those of the sku×nodes with
-- counts. Each statement runs alone, so its sorts get the whole memory limit. A hash join copies
-- its left side whole: the narrow per-sku×node tables are joined into `on_hand` first, so that
-- part 4 joins the wide `per_node` once.

-- Part 1, materialised once in memory (one row per sku×node): everything that is a sum or a
-- latest time per sku×node, in one pass over the events: the snapshot's reserved and held and
-- last times, the sum of the on-hand changes and the number of events that set or change it ...
CREATE OR REPLACE TABLE per_node AS
  SELECT sku, node,
    SUM(d_reserved) AS reserved,
    SUM(d_held) AS held,
    MAX(ts) AS last_event_ts,
    MAX(arrival) AS last_arrived,
    SUM(CASE WHEN absolute THEN 0 ELSE d_on_hand END) AS changed,
    SUM(CASE WHEN absolute OR d_on_hand <> 0 THEN 1 ELSE 0 END) AS on_hand_events,
    MAX(CASE WHEN kind = 'count' THEN ts END) AS last_count_ts,
    MAX(CASE WHEN kind = 'receipt' THEN ts END) AS last_receipt_ts,
    MAX(CASE WHEN absolute THEN ts END) AS last_reading_ts,
    -- (whether part 2 computes its count discrepancies: it has a count in the last 30d)
    MAX(CASE WHEN kind = 'count' THEN ts END) > ${asof} - 30 * 86400000 AS counting,
    -- ... demand: reserve units and counts over 5m / 1h / 24h / 7d ...
    SUM(CASE WHEN kind = 'reserve' AND ts > ${asof} - 300000 THEN qty ELSE 0 END) AS reserve_units_5m,
    SUM(CASE WHEN kind = 'reserve' AND ts > ${asof} - 300000 THEN 1 ELSE 0 END) AS reserve_count_5m,
    SUM(CASE WHEN kind = 'reserve' AND ts > ${asof} - 3600000 THEN qty ELSE 0 END) AS reserve_units_1h,
    SUM(CASE WHEN kind = 'reserve' AND ts > ${asof} - 3600000 THEN 1 ELSE 0 END) AS reserve_count_1h,
    SUM(CASE WHEN kind = 'reserve' AND ts > ${asof} - 86400000 THEN qty ELSE 0 END) AS reserve_units_24h,
    SUM(CASE WHEN kind = 'reserve' AND ts > ${asof} - 86400000 THEN 1 ELSE 0 END) AS reserve_count_24h,
    SUM(CASE WHEN kind = 'reserve' AND ts > ${asof} - 604800000 THEN qty ELSE 0 END) AS reserve_units_7d,
    SUM(CASE WHEN kind = 'reserve' AND ts > ${asof} - 604800000 THEN 1 ELSE 0 END) AS reserve_count_7d,
    -- ... cancel and return rates over 7d: releases per reserve, returned units per shipped unit ...
    SUM(CASE WHEN kind = 'release' AND ts > ${asof} - 604800000 THEN 1 ELSE 0 END) AS releases_7d,
    SUM(CASE WHEN kind = 'return' AND ts > ${asof} - 604800000 THEN qty ELSE 0 END) AS returned_7d,
    SUM(CASE WHEN kind = 'ship' AND ts > ${asof} - 604800000 THEN qty ELSE 0 END) AS shipped_7d,
    -- ... past shorts (oversells) per reserve over 30d
    SUM(CASE WHEN kind = 'short' AND ts > ${asof} - 30 * 86400000 THEN 1 ELSE 0 END) AS shorts_30d,
    SUM(CASE WHEN kind = 'reserve' AND ts > ${asof} - 30 * 86400000 THEN 1 ELSE 0 END) AS reserves_30d
  FROM timely GROUP BY sku, node;

-- ... and its totals per node over all its SKUs: past shorts
CREATE OR REPLACE TABLE node_totals AS
  SELECT node, SUM(shorts_30d) AS node_shorts_30d, SUM(reserves_30d) AS node_reserves_30d
  FROM per_node GROUP BY node;

-- Part 2, materialised: on-hand, in four tables. The level of a sku×node is its anchor (its
-- latest reading) plus the changes after it; only the count discrepancies need the events in
-- order, and only for the sku×nodes with counts (most on-hand events are seller feeds, which
-- are readings without counts).
-- (a) The anchor, one row per sku×node with readings: the reading at its latest reading time
-- (part 1), the greatest event_id among several at that time.
CREATE OR REPLACE TABLE anchors AS
  SELECT t.sku, t.node, MAX(t.ts) AS anchor_ts, MAX(t.event_id) AS anchor_id,
         last_value(t.qty ORDER BY t.event_id) AS anchor_qty,
         last_value(t.kind ORDER BY t.event_id) AS anchor_kind
  FROM per_node p JOIN timely t ON t.sku = p.sku AND t.node = p.node AND t.ts = p.last_reading_ts
  WHERE t.absolute
  GROUP BY t.sku, t.node;

-- (b) The on-hand changes ordered after the anchor of their sku×node (all of them where it has
-- none): the batch view's deltas, whose sum per sku×node is the level's part after the anchor.
CREATE OR REPLACE TABLE deltas AS
  SELECT t.sku, t.node, t.ts, t.event_id, t.d_on_hand AS delta
  FROM anchors a RIGHT JOIN timely t ON t.sku = a.sku AND t.node = a.node
  WHERE NOT t.absolute AND t.d_on_hand <> 0
    AND (a.anchor_ts IS NULL OR t.ts > a.anchor_ts OR (t.ts = a.anchor_ts AND t.event_id > a.anchor_id));

-- (c) The count discrepancies, one row per sku×node with a count in the last 30d (`counting`,
-- the same condition as `starts` in (d)). Its windows run per node, over the node's on-hand
-- events in (sku, ts, event_id) order: a window per sku×node would cost DataFusion a partition
-- each, and there are millions. So the running sum and the positions go through all the counting
-- SKUs of a node, and (d) (`starts`) says where each sku×node starts in them.
CREATE OR REPLACE TABLE counted AS
WITH
-- the events that set on-hand (absolute readings) or change it, with the running sum of the
-- changes (readings add nothing to it) and their position ...
changes AS (
  SELECT t.sku, t.node, t.ts, t.event_id, t.kind, t.qty, t.absolute,
         SUM(CASE WHEN t.absolute THEN 0 ELSE t.d_on_hand END)
           OVER (PARTITION BY t.node ORDER BY t.sku, t.ts, t.event_id ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS changed,
         ROW_NUMBER() OVER (PARTITION BY t.node ORDER BY t.sku, t.ts, t.event_id) AS position
  FROM per_node p JOIN timely t ON t.sku = p.sku AND t.node = p.node
  WHERE p.counting AND (t.absolute OR t.d_on_hand <> 0)
),
-- ... each reading next to the one before: whether it is the first of its sku×node, and (but for
-- the first) what the events said was there just before it, the reading before plus the changes
-- since, and so the count discrepancy if it is a count of the last 30d ...
readings AS (
  SELECT *, CASE WHEN kind = 'count' AND ts > ${asof} - 30 * 86400000 THEN qty - level_before END AS discrepancy
  FROM (
    SELECT sku, node, ts, event_id, kind, qty, changed, position,
           LAG(sku) OVER (PARTITION BY node ORDER BY sku, ts, event_id) IS DISTINCT FROM sku AS first,
           CASE WHEN LAG(sku) OVER (PARTITION BY node ORDER BY sku, ts, event_id) = sku
                THEN LAG(qty) OVER (PARTITION BY node ORDER BY sku, ts, event_id) + changed
                     - LAG(changed) OVER (PARTITION BY node ORDER BY sku, ts, event_id) END AS level_before
    FROM changes
    WHERE absolute
  ) AS r
)
-- ... per sku×node: the first reading, and the other readings' discrepancies
SELECT sku, node,
       MAX(CASE WHEN first THEN changed END) AS first_changed,
       MAX(CASE WHEN first THEN position END) AS first_position,
       MAX(CASE WHEN first AND kind = 'count' AND ts > ${asof} - 30 * 86400000 THEN qty END) AS first_count,
       SUM(discrepancy) AS discrepancy_sum,
       SUM(ABS(discrepancy)) AS discrepancy_abs,
       COUNT(discrepancy) AS discrepancies
FROM readings WHERE first OR discrepancy IS NOT NULL GROUP BY sku, node;

-- (d) The on-hand part of every sku×node of part 1: the snapshot's on-hand, the anchor plus the
-- changes after it (all the changes without one), and the count discrepancies over 30d.
CREATE OR REPLACE TABLE on_hand AS
WITH
-- where each counting sku×node starts in (c)'s running sum and positions: the changes, and the
-- number of on-hand events, of the node's counting SKUs before it ...
starts AS (
  SELECT sku, node,
         SUM(changed) OVER (PARTITION BY node ORDER BY sku ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) - changed AS changed_before,
         SUM(on_hand_events) OVER (PARTITION BY node ORDER BY sku ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) - on_hand_events AS events_before
  FROM per_node WHERE counting
),
-- ... the changes after each anchor ...
after_anchor AS (
  SELECT sku, node, SUM(delta) AS changed_after FROM deltas GROUP BY sku, node
),
-- ... the level; the first reading's discrepancy: what it counted minus the changes before it,
-- if there were any, that is if it is not the sku×node's first event (else the events said
-- nothing about what was there) ...
levels AS (
  SELECT p.sku, p.node, a.anchor_ts, a.anchor_id, a.anchor_qty, a.anchor_kind,
         COALESCE(a.anchor_qty, 0) + COALESCE(d.changed_after, 0) AS level,
         c.discrepancy_sum, c.discrepancy_abs, COALESCE(c.discrepancies, 0) AS discrepancies,
         CASE WHEN c.first_position > b.events_before + 1 THEN c.first_count - (c.first_changed - b.changed_before) END AS first_discrepancy
  FROM per_node p
  LEFT JOIN anchors a ON a.sku = p.sku AND a.node = p.node
  LEFT JOIN after_anchor d ON d.sku = p.sku AND d.node = p.node
  LEFT JOIN starts b ON b.sku = p.sku AND b.node = p.node
  LEFT JOIN counted c ON c.sku = p.sku AND c.node = p.node
)
-- ... and the count discrepancy (phantom inventory) over 30d: for each count, what was counted
-- minus what the events said was there just before; number, mean (bias), mean absolute value
SELECT sku, node, anchor_ts, anchor_id, anchor_qty, anchor_kind, level, counts,
       CAST(COALESCE(discrepancy_sum, 0) + COALESCE(first_discrepancy, 0) AS DOUBLE) / NULLIF(counts, 0) AS bias,
       CAST(COALESCE(discrepancy_abs, 0) + COALESCE(ABS(first_discrepancy), 0) AS DOUBLE) / NULLIF(counts, 0) AS mae
FROM (SELECT *, discrepancies + CASE WHEN first_discrepancy IS NULL THEN 0 ELSE 1 END AS counts FROM levels) AS c;

-- Part 3, materialised (one row per node with feeds): seller feeds. Lag: arrival minus event
-- time of the node's feeds over 30d, in whole seconds (so that a night folded from the one before
-- keeps a histogram per node, not every lag), its exact percentiles by rank in the node's sorted
-- lags (the lag at a rank is the same whatever order equal lags take, so reruns agree);
-- reliability: the share of feeds that arrived within the node's SLA.
CREATE OR REPLACE TABLE feed AS
SELECT node,
  lags[CAST(CEIL(0.5 * cardinality(lags)) AS BIGINT)] AS lag_p50_s,
  lags[CAST(CEIL(0.95 * cardinality(lags)) AS BIGINT)] AS lag_p95_s,
  reliability
FROM (
  SELECT r.node,
         array_sort(array_agg(CAST((r.arrival - r.ts) / 1000 AS DOUBLE))) AS lags,
         AVG(CASE WHEN r.arrival - r.ts <= n.feed_sla_ms THEN 1.0 ELSE 0.0 END) AS reliability
  FROM nodes n
  JOIN timely r ON r.node = n.node
  WHERE r.kind = 'feed' AND r.ts > ${asof} - 30 * 86400000
  GROUP BY r.node
) AS feed_lags;

-- Part 4, the features and the snapshot. First the demand per sku over all its nodes (over
-- every share's per_node) ...
CREATE OR REPLACE TABLE sku_totals AS
SELECT sku,
  SUM(reserve_units_5m) AS sku_units_5m, SUM(reserve_count_5m) AS sku_count_5m,
  SUM(reserve_units_1h) AS sku_units_1h, SUM(reserve_count_1h) AS sku_count_1h,
  SUM(reserve_units_24h) AS sku_units_24h, SUM(reserve_count_24h) AS sku_count_24h,
  SUM(reserve_units_7d) AS sku_units_7d, SUM(reserve_count_7d) AS sku_count_7d
FROM per_node GROUP BY sku;

-- ... then the output (per share, when in shares).
WITH
regions AS (
  SELECT region, CAST(DENSE_RANK() OVER (ORDER BY region) AS DOUBLE) AS code FROM (SELECT DISTINCT region FROM nodes) AS r
),
-- per node: past shorts over all its SKUs, its feeds, kind and region
node_features AS (
  SELECT t.node, t.node_shorts_30d, t.node_reserves_30d, f.lag_p50_s, f.lag_p95_s, f.reliability, n.kind, g.code
  FROM node_totals t
  LEFT JOIN feed f ON f.node = t.node
  LEFT JOIN nodes n ON n.node = t.node
  LEFT JOIN regions g ON g.region = n.region
)
SELECT
  s.sku, s.node,
  CAST(l.level AS DOUBLE) AS on_hand,
  CAST(s.reserved AS DOUBLE) AS reserved,
  CAST(s.held AS DOUBLE) AS held,
  CAST(s.reserve_units_5m AS DOUBLE) AS reserve_units_5m,
  CAST(s.reserve_count_5m AS DOUBLE) AS reserve_count_5m,
  CAST(s.reserve_units_1h AS DOUBLE) AS reserve_units_1h,
  CAST(s.reserve_count_1h AS DOUBLE) AS reserve_count_1h,
  CAST(s.reserve_units_24h AS DOUBLE) AS reserve_units_24h,
  CAST(s.reserve_count_24h AS DOUBLE) AS reserve_count_24h,
  CAST(s.reserve_units_7d AS DOUBLE) AS reserve_units_7d,
  CAST(s.reserve_count_7d AS DOUBLE) AS reserve_count_7d,
  CAST(t.sku_units_5m AS DOUBLE) AS sku_reserve_units_5m,
  CAST(t.sku_count_5m AS DOUBLE) AS sku_reserve_count_5m,
  CAST(t.sku_units_1h AS DOUBLE) AS sku_reserve_units_1h,
  CAST(t.sku_count_1h AS DOUBLE) AS sku_reserve_count_1h,
  CAST(t.sku_units_24h AS DOUBLE) AS sku_reserve_units_24h,
  CAST(t.sku_count_24h AS DOUBLE) AS sku_reserve_count_24h,
  CAST(t.sku_units_7d AS DOUBLE) AS sku_reserve_units_7d,
  CAST(t.sku_count_7d AS DOUBLE) AS sku_reserve_count_7d,
  CAST(s.releases_7d AS DOUBLE) / NULLIF(CAST(s.reserve_count_7d AS DOUBLE), 0) AS cancel_rate_7d,
  CAST(s.returned_7d AS DOUBLE) / NULLIF(CAST(s.shipped_7d AS DOUBLE), 0) AS return_rate_7d,
  CAST(${asof} - s.last_count_ts AS DOUBLE) / 3600000.0 AS hours_since_count,
  CAST(${asof} - s.last_receipt_ts AS DOUBLE) / 3600000.0 AS hours_since_receipt,
  CAST(${asof} - s.last_event_ts AS DOUBLE) / 3600000.0 AS hours_since_event,
  l.bias AS count_bias_30d,
  l.mae AS count_mae_30d,
  CAST(l.counts AS DOUBLE) AS counts_30d,
  CAST(s.shorts_30d AS DOUBLE) / NULLIF(CAST(s.reserves_30d AS DOUBLE), 0) AS short_rate_30d,
  CAST(n.node_shorts_30d AS DOUBLE) / NULLIF(CAST(n.node_reserves_30d AS DOUBLE), 0) AS node_short_rate_30d,
  n.lag_p50_s AS feed_lag_p50_s,
  n.lag_p95_s AS feed_lag_p95_s,
  n.reliability AS feed_reliability_30d,
  CASE WHEN n.kind = 'store' THEN 1.0 WHEN n.kind IS NULL THEN NULL ELSE 0.0 END AS node_is_store,
  CASE WHEN n.kind = 'seller' THEN 1.0 WHEN n.kind IS NULL THEN NULL ELSE 0.0 END AS node_is_seller,
  n.code AS region_code,
  -- the snapshot (batch view): what core's fold holds per sku×node
  s.reserved AS view_reserved,
  s.held AS view_held,
  s.last_event_ts AS view_last_ts,
  s.last_arrived AS view_last_arrived,
  l.anchor_ts AS view_anchor_ts,
  l.anchor_id AS view_anchor_id,
  l.anchor_qty AS view_anchor_qty,
  l.anchor_kind AS view_anchor_kind,
  l.level AS view_on_hand
FROM per_node s
JOIN on_hand l ON l.sku = s.sku AND l.node = s.node
JOIN sku_totals t ON t.sku = s.sku
JOIN node_features n ON n.node = s.node
ORDER BY s.sku, s.node
