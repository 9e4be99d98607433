-- The batch features of every sku×node as of a cutoff: the one place to read every feature.
--
-- Inputs (registered by batch/src/features.rs for each cutoff):
--   timely  the events known at the cutoff (arrived at or before it), not too late, one copy of
--           each event_id, with `arrival` and the effect columns `absolute`, `d_on_hand`
--   nodes   the node catalog (node, kind, region, feed_sla_ms)
-- Placeholders: ${asof} (the cutoff, ms since the epoch).
-- Output: sku, node, then exactly the columns of core::features::BATCH, in that order. Missing
-- values are NULL (NaN in the model's vector). Times are event times (`ts`) unless said otherwise.
-- Memory: a hash join holds its left side in memory and cannot spill, so every join below has a
-- small side (per sku×node, per node, or filtered) on its left; the big inputs are aggregated or
-- windowed (which spill) first.
WITH
-- the snapshot: on-hand from the latest absolute reading plus the changes after it (the same
-- state as the batch view), reserved and held
segments AS (
  SELECT sku, node, ts, event_id, kind, qty, absolute, d_on_hand,
         SUM(CASE WHEN absolute THEN 1 ELSE 0 END)
           OVER (PARTITION BY sku, node ORDER BY ts, event_id ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS segment
  FROM timely
  WHERE absolute OR d_on_hand <> 0
),
segment_levels AS (
  SELECT sku, node, segment, SUM(CASE WHEN absolute THEN qty ELSE d_on_hand END) AS level
  FROM segments GROUP BY sku, node, segment
),
last_level AS (
  SELECT l.sku, l.node, l.level
  FROM (SELECT sku, node, MAX(segment) AS segment FROM segments GROUP BY sku, node) s
  JOIN segment_levels l ON l.sku = s.sku AND l.node = s.node AND l.segment = s.segment
),
sums AS (
  SELECT sku, node,
         SUM(d_reserved) AS reserved,
         SUM(d_held) AS held,
         MAX(ts) AS last_event_ts,
         MAX(CASE WHEN kind = 'count' THEN ts END) AS last_count_ts,
         MAX(CASE WHEN kind = 'receipt' THEN ts END) AS last_receipt_ts
  FROM timely GROUP BY sku, node
),
snapshot AS (
  SELECT s.*, COALESCE(l.level, 0) AS on_hand
  FROM sums s LEFT JOIN last_level l ON l.sku = s.sku AND l.node = s.node
),
-- demand: reserve units and counts over 5m / 1h / 24h / 7d, per sku×node ...
recent AS (
  SELECT * FROM timely WHERE ts > ${asof} - 30 * 86400000
),
demand AS (
  SELECT sku, node,
    SUM(CASE WHEN kind = 'reserve' AND ts > ${asof} - 300000 THEN qty ELSE 0 END) AS reserve_units_5m,
    SUM(CASE WHEN kind = 'reserve' AND ts > ${asof} - 300000 THEN 1 ELSE 0 END) AS reserve_count_5m,
    SUM(CASE WHEN kind = 'reserve' AND ts > ${asof} - 3600000 THEN qty ELSE 0 END) AS reserve_units_1h,
    SUM(CASE WHEN kind = 'reserve' AND ts > ${asof} - 3600000 THEN 1 ELSE 0 END) AS reserve_count_1h,
    SUM(CASE WHEN kind = 'reserve' AND ts > ${asof} - 86400000 THEN qty ELSE 0 END) AS reserve_units_24h,
    SUM(CASE WHEN kind = 'reserve' AND ts > ${asof} - 86400000 THEN 1 ELSE 0 END) AS reserve_count_24h,
    SUM(CASE WHEN kind = 'reserve' AND ts > ${asof} - 604800000 THEN qty ELSE 0 END) AS reserve_units_7d,
    SUM(CASE WHEN kind = 'reserve' AND ts > ${asof} - 604800000 THEN 1 ELSE 0 END) AS reserve_count_7d,
    -- cancel and return rates over 7d: releases per reserve, returned units per shipped unit
    SUM(CASE WHEN kind = 'release' AND ts > ${asof} - 604800000 THEN 1 ELSE 0 END) AS releases_7d,
    SUM(CASE WHEN kind = 'return' AND ts > ${asof} - 604800000 THEN qty ELSE 0 END) AS returned_7d,
    SUM(CASE WHEN kind = 'ship' AND ts > ${asof} - 604800000 THEN qty ELSE 0 END) AS shipped_7d,
    -- past shorts (oversells) per reserve over 30d
    SUM(CASE WHEN kind = 'short' THEN 1 ELSE 0 END) AS shorts_30d,
    SUM(CASE WHEN kind = 'reserve' THEN 1 ELSE 0 END) AS reserves_30d
  FROM recent GROUP BY sku, node
),
-- ... and per sku, over all its nodes
sku_demand AS (
  SELECT sku,
    SUM(reserve_units_5m) AS units_5m, SUM(reserve_count_5m) AS count_5m,
    SUM(reserve_units_1h) AS units_1h, SUM(reserve_count_1h) AS count_1h,
    SUM(reserve_units_24h) AS units_24h, SUM(reserve_count_24h) AS count_24h,
    SUM(reserve_units_7d) AS units_7d, SUM(reserve_count_7d) AS count_7d
  FROM demand GROUP BY sku
),
node_shorts AS (
  SELECT node, SUM(shorts_30d) AS shorts, SUM(reserves_30d) AS reserves FROM demand GROUP BY node
),
-- count discrepancy (phantom inventory): for each count of the last 30d, what was counted minus
-- what the events said was there just before (the level at the end of the previous segment)
recent_counts AS (
  SELECT sku, node, qty, segment FROM segments WHERE kind = 'count' AND ts > ${asof} - 30 * 86400000
),
discrepancies AS (
  SELECT c.sku, c.node, CAST(c.qty - p.level AS DOUBLE) AS diff
  FROM recent_counts c
  JOIN segment_levels p ON p.sku = c.sku AND p.node = c.node AND p.segment = c.segment - 1
),
discrepancy AS (
  SELECT sku, node, AVG(diff) AS bias, AVG(ABS(diff)) AS mae, COUNT(*) AS counts
  FROM discrepancies GROUP BY sku, node
),
-- seller feed lag: arrival minus event time of the node's feeds over 30d (exact percentiles by
-- rank, so reruns agree), and reliability: the share of feeds that arrived within the SLA
feed_lags AS (
  SELECT r.node, CAST(r.arrival - r.ts AS DOUBLE) AS lag, n.feed_sla_ms,
         ROW_NUMBER() OVER (PARTITION BY r.node ORDER BY r.arrival - r.ts, r.event_id) AS rank,
         COUNT(*) OVER (PARTITION BY r.node) AS feeds
  FROM nodes n JOIN recent r ON r.node = n.node
  WHERE r.kind = 'feed'
),
feed AS (
  SELECT node,
    MAX(CASE WHEN rank = CAST(CEIL(0.5 * feeds) AS BIGINT) THEN lag END) / 1000.0 AS lag_p50_s,
    MAX(CASE WHEN rank = CAST(CEIL(0.95 * feeds) AS BIGINT) THEN lag END) / 1000.0 AS lag_p95_s,
    AVG(CASE WHEN lag <= feed_sla_ms THEN 1.0 ELSE 0.0 END) AS reliability
  FROM feed_lags GROUP BY node
),
regions AS (
  SELECT region, CAST(DENSE_RANK() OVER (ORDER BY region) AS DOUBLE) AS code FROM (SELECT DISTINCT region FROM nodes) AS r
)
SELECT
  s.sku, s.node,
  CAST(s.on_hand AS DOUBLE) AS on_hand,
  CAST(s.reserved AS DOUBLE) AS reserved,
  CAST(s.held AS DOUBLE) AS held,
  CAST(COALESCE(d.reserve_units_5m, 0) AS DOUBLE) AS reserve_units_5m,
  CAST(COALESCE(d.reserve_count_5m, 0) AS DOUBLE) AS reserve_count_5m,
  CAST(COALESCE(d.reserve_units_1h, 0) AS DOUBLE) AS reserve_units_1h,
  CAST(COALESCE(d.reserve_count_1h, 0) AS DOUBLE) AS reserve_count_1h,
  CAST(COALESCE(d.reserve_units_24h, 0) AS DOUBLE) AS reserve_units_24h,
  CAST(COALESCE(d.reserve_count_24h, 0) AS DOUBLE) AS reserve_count_24h,
  CAST(COALESCE(d.reserve_units_7d, 0) AS DOUBLE) AS reserve_units_7d,
  CAST(COALESCE(d.reserve_count_7d, 0) AS DOUBLE) AS reserve_count_7d,
  CAST(COALESCE(k.units_5m, 0) AS DOUBLE) AS sku_reserve_units_5m,
  CAST(COALESCE(k.count_5m, 0) AS DOUBLE) AS sku_reserve_count_5m,
  CAST(COALESCE(k.units_1h, 0) AS DOUBLE) AS sku_reserve_units_1h,
  CAST(COALESCE(k.count_1h, 0) AS DOUBLE) AS sku_reserve_count_1h,
  CAST(COALESCE(k.units_24h, 0) AS DOUBLE) AS sku_reserve_units_24h,
  CAST(COALESCE(k.count_24h, 0) AS DOUBLE) AS sku_reserve_count_24h,
  CAST(COALESCE(k.units_7d, 0) AS DOUBLE) AS sku_reserve_units_7d,
  CAST(COALESCE(k.count_7d, 0) AS DOUBLE) AS sku_reserve_count_7d,
  CAST(d.releases_7d AS DOUBLE) / NULLIF(CAST(d.reserve_count_7d AS DOUBLE), 0) AS cancel_rate_7d,
  CAST(d.returned_7d AS DOUBLE) / NULLIF(CAST(d.shipped_7d AS DOUBLE), 0) AS return_rate_7d,
  CAST(${asof} - s.last_count_ts AS DOUBLE) / 3600000.0 AS hours_since_count,
  CAST(${asof} - s.last_receipt_ts AS DOUBLE) / 3600000.0 AS hours_since_receipt,
  CAST(${asof} - s.last_event_ts AS DOUBLE) / 3600000.0 AS hours_since_event,
  x.bias AS count_bias_30d,
  x.mae AS count_mae_30d,
  CAST(COALESCE(x.counts, 0) AS DOUBLE) AS counts_30d,
  CAST(d.shorts_30d AS DOUBLE) / NULLIF(CAST(d.reserves_30d AS DOUBLE), 0) AS short_rate_30d,
  CAST(ns.shorts AS DOUBLE) / NULLIF(CAST(ns.reserves AS DOUBLE), 0) AS node_short_rate_30d,
  f.lag_p50_s AS feed_lag_p50_s,
  f.lag_p95_s AS feed_lag_p95_s,
  f.reliability AS feed_reliability_30d,
  CASE WHEN n.kind = 'store' THEN 1.0 WHEN n.kind IS NULL THEN NULL ELSE 0.0 END AS node_is_store,
  CASE WHEN n.kind = 'seller' THEN 1.0 WHEN n.kind IS NULL THEN NULL ELSE 0.0 END AS node_is_seller,
  g.code AS region_code
FROM snapshot s
LEFT JOIN demand d ON d.sku = s.sku AND d.node = s.node
LEFT JOIN sku_demand k ON k.sku = s.sku
LEFT JOIN node_shorts ns ON ns.node = s.node
LEFT JOIN discrepancy x ON x.sku = s.sku AND x.node = s.node
LEFT JOIN feed f ON f.node = s.node
LEFT JOIN nodes n ON n.node = s.node
LEFT JOIN regions g ON g.region = n.region
ORDER BY s.sku, s.node
