-- The incremental nightly job: the tables of `features.sql` as of a cutoff ${asof}, folded from
-- the state an earlier night left as of a cutoff a whole number of days before, and the events
-- that arrived since. Its results equal those of `features.sql` over every event known at
-- ${asof}, row for row (batch/tests/it/incremental.rs).
--
-- Inputs (registered by batch/src/incremental.rs):
--   fresh      the events that arrived after the earlier cutoff, up to ${asof}, not too late, one
--              copy of each event_id, none of them known before (columns of `timely`)
--   tail       the events known at the earlier cutoff with `ts` after ${prev_tail}, the earlier
--              tail's start: a late event of today has `ts` after it, and so has a replayed copy
--              of an event (a copy carries its event's time), so this is all deduplication needs
--   running    the earlier night's state per sku×node: the sums and latest times of part 1 of
--              `features.sql`, its windowed sums over 24h / 7d / 30d, the count discrepancies
--              already final (of counts at or before ${prev_tail}) over 30d, the anchor, and the
--              level and whether there were on-hand events at ${prev_tail}
--   old_days   the sums per sku×node and per day of the days that leave a window tonight, as the
--              earlier nights wrote them (days are those of the cutoffs: day d holds the times
--              in (${origin} + d days, ${origin} + d + 1 days]; a window of n days at day k is
--              days k - n and later)
--   old_feeds  the earlier night's histogram of seller feed lags (whole seconds) over 30d per node
--   old_feed_days  the same per day, of the days that leave the 30d window tonight
--   old_deltas the earlier batch view's deltas
--   nodes      the node catalog
-- Placeholders: ${asof}, ${k} (its day number: ${asof} = ${origin} + ${k} days), ${prev_k} (the
-- earlier cutoff's), ${tail} (tonight's tail start: ${asof} minus the lateness, at least 1h),
-- ${prev_tail}, ${origin}.
-- A first night has an empty state, every known event fresh, and ${prev_k} = ${k}: it computes
-- the state from scratch (`sellable batch --full` does that after `features.sql`).
-- Then the last two statements of `features.sql` (`sku_totals` and the output) run over the
-- tables made here, which have the columns of the tables of the same names there.

-- The day's events per sku×node: sums, latest times, and the sums over the windows ...
CREATE OR REPLACE TABLE fresh_node AS
  SELECT sku, node,
    CAST(SUM(d_reserved) AS BIGINT) AS reserved,
    CAST(SUM(d_held) AS BIGINT) AS held,
    MAX(ts) AS last_event_ts,
    MAX(arrival) AS last_arrived,
    MAX(CASE WHEN kind = 'count' THEN ts END) AS last_count_ts,
    MAX(CASE WHEN kind = 'receipt' THEN ts END) AS last_receipt_ts,
    MAX(CASE WHEN absolute THEN ts END) AS last_reading_ts,
    CAST(SUM(CASE WHEN kind = 'reserve' AND ts > ${asof} - 86400000 THEN qty ELSE 0 END) AS BIGINT) AS reserve_units_24h,
    CAST(SUM(CASE WHEN kind = 'reserve' AND ts > ${asof} - 86400000 THEN 1 ELSE 0 END) AS BIGINT) AS reserve_count_24h,
    CAST(SUM(CASE WHEN kind = 'reserve' AND ts > ${asof} - 604800000 THEN qty ELSE 0 END) AS BIGINT) AS reserve_units_7d,
    CAST(SUM(CASE WHEN kind = 'reserve' AND ts > ${asof} - 604800000 THEN 1 ELSE 0 END) AS BIGINT) AS reserve_count_7d,
    CAST(SUM(CASE WHEN kind = 'release' AND ts > ${asof} - 604800000 THEN 1 ELSE 0 END) AS BIGINT) AS releases_7d,
    CAST(SUM(CASE WHEN kind = 'return' AND ts > ${asof} - 604800000 THEN qty ELSE 0 END) AS BIGINT) AS returned_7d,
    CAST(SUM(CASE WHEN kind = 'ship' AND ts > ${asof} - 604800000 THEN qty ELSE 0 END) AS BIGINT) AS shipped_7d,
    CAST(SUM(CASE WHEN kind = 'short' AND ts > ${asof} - 30 * 86400000 THEN 1 ELSE 0 END) AS BIGINT) AS shorts_30d,
    CAST(SUM(CASE WHEN kind = 'reserve' AND ts > ${asof} - 30 * 86400000 THEN 1 ELSE 0 END) AS BIGINT) AS reserves_30d
  FROM fresh GROUP BY sku, node;

-- ... and per day of the last 30 (what a later night takes off when the day leaves a window).
CREATE OR REPLACE TABLE fresh_days AS
  SELECT sku, node, CAST(FLOOR(CAST(ts - ${origin} - 1 AS DOUBLE) / 86400000.0) AS BIGINT) AS day,
    CAST(SUM(CASE WHEN kind = 'reserve' THEN qty ELSE 0 END) AS BIGINT) AS reserve_units,
    CAST(SUM(CASE WHEN kind = 'reserve' THEN 1 ELSE 0 END) AS BIGINT) AS reserve_count,
    CAST(SUM(CASE WHEN kind = 'release' THEN 1 ELSE 0 END) AS BIGINT) AS releases,
    CAST(SUM(CASE WHEN kind = 'return' THEN qty ELSE 0 END) AS BIGINT) AS returned,
    CAST(SUM(CASE WHEN kind = 'ship' THEN qty ELSE 0 END) AS BIGINT) AS shipped,
    CAST(SUM(CASE WHEN kind = 'short' THEN 1 ELSE 0 END) AS BIGINT) AS shorts
  FROM fresh WHERE ts > ${asof} - 30 * 86400000 GROUP BY 1, 2, 3;

-- What leaves each window tonight: the days in [earlier cutoff's day - n, tonight's day - n).
CREATE OR REPLACE TABLE leaving AS
  SELECT sku, node,
    SUM(CASE WHEN day >= ${prev_k} - 1 AND day < ${k} - 1 THEN reserve_units ELSE 0 END) AS reserve_units_24h,
    SUM(CASE WHEN day >= ${prev_k} - 1 AND day < ${k} - 1 THEN reserve_count ELSE 0 END) AS reserve_count_24h,
    SUM(CASE WHEN day >= ${prev_k} - 7 AND day < ${k} - 7 THEN reserve_units ELSE 0 END) AS reserve_units_7d,
    SUM(CASE WHEN day >= ${prev_k} - 7 AND day < ${k} - 7 THEN reserve_count ELSE 0 END) AS reserve_count_7d,
    SUM(CASE WHEN day >= ${prev_k} - 7 AND day < ${k} - 7 THEN releases ELSE 0 END) AS releases_7d,
    SUM(CASE WHEN day >= ${prev_k} - 7 AND day < ${k} - 7 THEN returned ELSE 0 END) AS returned_7d,
    SUM(CASE WHEN day >= ${prev_k} - 7 AND day < ${k} - 7 THEN shipped ELSE 0 END) AS shipped_7d,
    SUM(CASE WHEN day >= ${prev_k} - 30 AND day < ${k} - 30 THEN shorts ELSE 0 END) AS shorts_30d,
    SUM(CASE WHEN day >= ${prev_k} - 30 AND day < ${k} - 30 THEN reserve_count ELSE 0 END) AS reserves_30d,
    SUM(CASE WHEN day >= ${prev_k} - 30 AND day < ${k} - 30 THEN disc_sum ELSE 0 END) AS disc_sum,
    SUM(CASE WHEN day >= ${prev_k} - 30 AND day < ${k} - 30 THEN disc_abs ELSE 0 END) AS disc_abs,
    SUM(CASE WHEN day >= ${prev_k} - 30 AND day < ${k} - 30 THEN disc_n ELSE 0 END) AS disc_n
  FROM old_days GROUP BY sku, node;

-- Every event known tonight with `ts` after the earlier tail's start (the windows of 5m and 1h,
-- the counts whose discrepancy a late event can still change, tonight's tail) ...
CREATE OR REPLACE VIEW recent AS SELECT * FROM tail UNION ALL SELECT * FROM fresh;

-- ... the demand over 5m and 1h ...
CREATE OR REPLACE TABLE hour AS
  SELECT sku, node,
    CAST(SUM(CASE WHEN kind = 'reserve' AND ts > ${asof} - 300000 THEN qty ELSE 0 END) AS BIGINT) AS reserve_units_5m,
    CAST(SUM(CASE WHEN kind = 'reserve' AND ts > ${asof} - 300000 THEN 1 ELSE 0 END) AS BIGINT) AS reserve_count_5m,
    CAST(SUM(CASE WHEN kind = 'reserve' THEN qty ELSE 0 END) AS BIGINT) AS reserve_units_1h,
    CAST(SUM(CASE WHEN kind = 'reserve' THEN 1 ELSE 0 END) AS BIGINT) AS reserve_count_1h
  FROM recent WHERE ts > ${asof} - 3600000 GROUP BY sku, node;

-- ... and its on-hand events, after a first step per sku×node that stands for what came before
-- them: a reading of the level at the earlier tail's start ('start'), or nothing ('none', when no
-- on-hand event came before: the first count then has no discrepancy unless changes precede it).
CREATE OR REPLACE TABLE steps AS
  SELECT s.sku, s.node, CAST(${prev_tail} AS BIGINT) AS ts, '' AS event_id,
         CASE WHEN COALESCE(r.has_t, false) THEN 'start' ELSE 'none' END AS kind,
         CAST(COALESCE(r.level_t, 0) AS BIGINT) AS qty, true AS absolute, CAST(0 AS BIGINT) AS change
  FROM (SELECT DISTINCT sku, node FROM recent WHERE absolute OR d_on_hand <> 0) AS s
  LEFT JOIN running r ON r.sku = s.sku AND r.node = s.node
  UNION ALL
  SELECT sku, node, ts, event_id, kind, CAST(qty AS BIGINT) AS qty, absolute,
         CAST(CASE WHEN absolute THEN 0 ELSE d_on_hand END AS BIGINT) AS change
  FROM recent WHERE absolute OR d_on_hand <> 0;

-- The count discrepancies of the counts after the earlier tail's start (as `counted` in
-- `features.sql`: what was counted minus the reading before plus the changes since; windows per
-- node, ordered by sku, as there), over the steps of the sku×nodes with such counts only.
CREATE OR REPLACE TABLE walked AS
  SELECT sku, node, ts, qty - (prev_qty + changed - prev_changed) AS discrepancy
  FROM (
    SELECT sku, node, ts, kind, qty, changed, position,
           LAG(qty) OVER (PARTITION BY node ORDER BY sku, ts, event_id) AS prev_qty,
           LAG(changed) OVER (PARTITION BY node ORDER BY sku, ts, event_id) AS prev_changed,
           LAG(kind) OVER (PARTITION BY node ORDER BY sku, ts, event_id) AS prev_kind,
           LAG(position) OVER (PARTITION BY node ORDER BY sku, ts, event_id) AS prev_position
    FROM (
      SELECT *,
             SUM(change) OVER (PARTITION BY node ORDER BY sku, ts, event_id ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS changed,
             ROW_NUMBER() OVER (PARTITION BY node ORDER BY sku, ts, event_id) AS position
      FROM (
        SELECT s.* FROM (SELECT DISTINCT sku, node FROM recent WHERE kind = 'count') AS c
        JOIN steps s ON s.sku = c.sku AND s.node = c.node
      ) AS counting
    ) AS ordered
    WHERE absolute
  ) AS readings
  WHERE kind = 'count' AND ts > ${asof} - 30 * 86400000 AND NOT (prev_kind = 'none' AND prev_position = position - 1);

-- Those of counts up to tonight's tail start are final (no event can come before them any more):
-- per day, and their sums per sku×node; the later ones' are computed again tomorrow.
CREATE OR REPLACE TABLE final_days AS
  SELECT sku, node, CAST(FLOOR(CAST(ts - ${origin} - 1 AS DOUBLE) / 86400000.0) AS BIGINT) AS day,
         CAST(SUM(discrepancy) AS BIGINT) AS disc_sum, CAST(SUM(ABS(discrepancy)) AS BIGINT) AS disc_abs, COUNT(*) AS disc_n
  FROM walked WHERE ts <= ${tail} GROUP BY 1, 2, 3;

CREATE OR REPLACE TABLE final_node AS
  SELECT sku, node, SUM(disc_sum) AS disc_sum, SUM(disc_abs) AS disc_abs, SUM(disc_n) AS disc_n FROM final_days GROUP BY sku, node;

CREATE OR REPLACE TABLE tail_counts AS
  SELECT sku, node, SUM(discrepancy) AS disc_sum, SUM(ABS(discrepancy)) AS disc_abs, COUNT(*) AS disc_n
  FROM walked WHERE ts > ${tail} GROUP BY sku, node;

-- The level at tonight's tail start, and whether on-hand events came before it, of the
-- sku×nodes with on-hand events since the earlier one (the others' are unchanged): the latest
-- reading (or first step) up to it plus the changes after that.
CREATE OR REPLACE TABLE restart AS
WITH upto AS (SELECT * FROM steps WHERE ts <= ${tail}),
latest AS (SELECT sku, node, MAX(ts) AS ts FROM upto WHERE absolute GROUP BY sku, node),
reading AS (
  SELECT u.sku, u.node, u.ts, MAX(u.event_id) AS event_id, last_value(u.qty ORDER BY u.event_id) AS qty
  FROM latest l JOIN upto u ON u.sku = l.sku AND u.node = l.node AND u.ts = l.ts
  WHERE u.absolute GROUP BY u.sku, u.node, u.ts
)
SELECT r.sku, r.node,
       CAST(MAX(r.qty) + SUM(CASE WHEN u.ts > r.ts OR (u.ts = r.ts AND u.event_id > r.event_id) THEN u.change ELSE 0 END) AS BIGINT) AS level_t,
       MAX(CASE WHEN u.kind <> 'none' THEN 1 ELSE 0 END) = 1 AS has_t
FROM reading r JOIN upto u ON u.sku = r.sku AND u.node = r.node
GROUP BY r.sku, r.node;

-- Part 1 of `features.sql` as of tonight: the earlier sums plus the day's, the windows' minus what
-- left them; with the final count discrepancies over 30d, the earlier anchor and tail start.
CREATE OR REPLACE TABLE per_node AS
  SELECT k.sku, k.node,
    COALESCE(r.reserved, 0) + COALESCE(f.reserved, 0) AS reserved,
    COALESCE(r.held, 0) + COALESCE(f.held, 0) AS held,
    greatest(r.last_event_ts, f.last_event_ts) AS last_event_ts,
    greatest(r.last_arrived, f.last_arrived) AS last_arrived,
    greatest(r.last_count_ts, f.last_count_ts) AS last_count_ts,
    greatest(r.last_receipt_ts, f.last_receipt_ts) AS last_receipt_ts,
    greatest(r.last_reading_ts, f.last_reading_ts) AS last_reading_ts,
    COALESCE(h.reserve_units_5m, 0) AS reserve_units_5m,
    COALESCE(h.reserve_count_5m, 0) AS reserve_count_5m,
    COALESCE(h.reserve_units_1h, 0) AS reserve_units_1h,
    COALESCE(h.reserve_count_1h, 0) AS reserve_count_1h,
    COALESCE(r.reserve_units_24h, 0) - COALESCE(l.reserve_units_24h, 0) + COALESCE(f.reserve_units_24h, 0) AS reserve_units_24h,
    COALESCE(r.reserve_count_24h, 0) - COALESCE(l.reserve_count_24h, 0) + COALESCE(f.reserve_count_24h, 0) AS reserve_count_24h,
    COALESCE(r.reserve_units_7d, 0) - COALESCE(l.reserve_units_7d, 0) + COALESCE(f.reserve_units_7d, 0) AS reserve_units_7d,
    COALESCE(r.reserve_count_7d, 0) - COALESCE(l.reserve_count_7d, 0) + COALESCE(f.reserve_count_7d, 0) AS reserve_count_7d,
    COALESCE(r.releases_7d, 0) - COALESCE(l.releases_7d, 0) + COALESCE(f.releases_7d, 0) AS releases_7d,
    COALESCE(r.returned_7d, 0) - COALESCE(l.returned_7d, 0) + COALESCE(f.returned_7d, 0) AS returned_7d,
    COALESCE(r.shipped_7d, 0) - COALESCE(l.shipped_7d, 0) + COALESCE(f.shipped_7d, 0) AS shipped_7d,
    COALESCE(r.shorts_30d, 0) - COALESCE(l.shorts_30d, 0) + COALESCE(f.shorts_30d, 0) AS shorts_30d,
    COALESCE(r.reserves_30d, 0) - COALESCE(l.reserves_30d, 0) + COALESCE(f.reserves_30d, 0) AS reserves_30d,
    COALESCE(r.disc_sum, 0) - COALESCE(l.disc_sum, 0) + COALESCE(d.disc_sum, 0) AS disc_sum,
    COALESCE(r.disc_abs, 0) - COALESCE(l.disc_abs, 0) + COALESCE(d.disc_abs, 0) AS disc_abs,
    COALESCE(r.disc_n, 0) - COALESCE(l.disc_n, 0) + COALESCE(d.disc_n, 0) AS disc_n,
    r.anchor_ts, r.anchor_id, r.anchor_qty, r.anchor_kind,
    COALESCE(s.level_t, r.level_t, 0) AS level_t,
    COALESCE(s.has_t, r.has_t, false) AS has_t
  FROM (SELECT sku, node FROM running UNION SELECT sku, node FROM fresh_node) AS k
  LEFT JOIN running r ON r.sku = k.sku AND r.node = k.node
  LEFT JOIN fresh_node f ON f.sku = k.sku AND f.node = k.node
  LEFT JOIN leaving l ON l.sku = k.sku AND l.node = k.node
  LEFT JOIN hour h ON h.sku = k.sku AND h.node = k.node
  LEFT JOIN final_node d ON d.sku = k.sku AND d.node = k.node
  LEFT JOIN restart s ON s.sku = k.sku AND s.node = k.node;

CREATE OR REPLACE TABLE node_totals AS
  SELECT node, SUM(shorts_30d) AS node_shorts_30d, SUM(reserves_30d) AS node_reserves_30d
  FROM per_node GROUP BY node;

-- The anchor: the day's latest reading if it comes after the earlier one (by time, then id) ...
CREATE OR REPLACE TABLE anchors AS
WITH day_anchors AS (
  SELECT t.sku, t.node, MAX(t.ts) AS anchor_ts, MAX(t.event_id) AS anchor_id,
         last_value(t.qty ORDER BY t.event_id) AS anchor_qty,
         last_value(t.kind ORDER BY t.event_id) AS anchor_kind
  FROM fresh_node p JOIN fresh t ON t.sku = p.sku AND t.node = p.node AND t.ts = p.last_reading_ts
  WHERE t.absolute
  GROUP BY t.sku, t.node
)
SELECT sku, node,
       CASE WHEN newer THEN day_ts ELSE anchor_ts END AS anchor_ts,
       CASE WHEN newer THEN day_id ELSE anchor_id END AS anchor_id,
       CASE WHEN newer THEN day_qty ELSE anchor_qty END AS anchor_qty,
       CASE WHEN newer THEN day_kind ELSE anchor_kind END AS anchor_kind
FROM (
  SELECT p.sku, p.node, p.anchor_ts, p.anchor_id, p.anchor_qty, p.anchor_kind,
         a.anchor_ts AS day_ts, a.anchor_id AS day_id, CAST(a.anchor_qty AS BIGINT) AS day_qty, a.anchor_kind AS day_kind,
         a.anchor_ts IS NOT NULL AND (p.anchor_ts IS NULL OR a.anchor_ts > p.anchor_ts
                                      OR (a.anchor_ts = p.anchor_ts AND a.anchor_id > p.anchor_id)) AS newer
  FROM per_node p LEFT JOIN day_anchors a ON a.sku = p.sku AND a.node = p.node
) AS candidates
WHERE anchor_ts IS NOT NULL OR day_ts IS NOT NULL;

-- ... the on-hand changes after it: the earlier deltas and the day's, those after the anchor ...
CREATE OR REPLACE TABLE deltas AS
  SELECT d.sku, d.node, d.ts, d.event_id, d.delta
  FROM anchors a RIGHT JOIN (
    SELECT sku, node, ts, event_id, CAST(delta AS BIGINT) AS delta FROM old_deltas
    UNION ALL
    SELECT sku, node, ts, event_id, CAST(d_on_hand AS BIGINT) AS delta FROM fresh WHERE NOT absolute AND d_on_hand <> 0
  ) AS d ON d.sku = a.sku AND d.node = a.node
  WHERE a.anchor_ts IS NULL OR d.ts > a.anchor_ts OR (d.ts = a.anchor_ts AND d.event_id > a.anchor_id);

-- ... and part 2 (d) of `features.sql`: the level, and the count discrepancies over 30d, the
-- final ones and those of the tail.
CREATE OR REPLACE TABLE on_hand AS
WITH after_anchor AS (SELECT sku, node, SUM(delta) AS changed_after FROM deltas GROUP BY sku, node),
levels AS (
  SELECT p.sku, p.node, a.anchor_ts, a.anchor_id, a.anchor_qty, a.anchor_kind,
         COALESCE(a.anchor_qty, 0) + COALESCE(d.changed_after, 0) AS level,
         p.disc_sum + COALESCE(t.disc_sum, 0) AS disc_sum,
         p.disc_abs + COALESCE(t.disc_abs, 0) AS disc_abs,
         p.disc_n + COALESCE(t.disc_n, 0) AS counts
  FROM per_node p
  LEFT JOIN anchors a ON a.sku = p.sku AND a.node = p.node
  LEFT JOIN after_anchor d ON d.sku = p.sku AND d.node = p.node
  LEFT JOIN tail_counts t ON t.sku = p.sku AND t.node = p.node
)
SELECT sku, node, anchor_ts, anchor_id, anchor_qty, anchor_kind, level, counts,
       CAST(disc_sum AS DOUBLE) / NULLIF(counts, 0) AS bias,
       CAST(disc_abs AS DOUBLE) / NULLIF(counts, 0) AS mae
FROM levels;

-- Part 3: seller feeds. The day's lags (whole seconds) per node, per day and lag ...
CREATE OR REPLACE TABLE fresh_feeds AS
  SELECT r.node, CAST(FLOOR(CAST(r.ts - ${origin} - 1 AS DOUBLE) / 86400000.0) AS BIGINT) AS day,
         CAST((r.arrival - r.ts) / 1000 AS BIGINT) AS lag_s, COUNT(*) AS feeds,
         CAST(SUM(CASE WHEN r.arrival - r.ts <= n.feed_sla_ms THEN 1 ELSE 0 END) AS BIGINT) AS within
  FROM nodes n JOIN fresh r ON r.node = n.node
  WHERE r.kind = 'feed' AND r.ts > ${asof} - 30 * 86400000
  GROUP BY 1, 2, 3;

-- ... the histogram over 30d: the earlier one, minus the days that left, plus the day's ...
CREATE OR REPLACE TABLE feeds AS
  SELECT node, lag_s, SUM(feeds) AS feeds, SUM(within) AS within
  FROM (
    SELECT node, lag_s, feeds, within FROM old_feeds
    UNION ALL
    SELECT node, lag_s, -feeds, -within FROM old_feed_days WHERE day >= ${prev_k} - 30 AND day < ${k} - 30
    UNION ALL
    SELECT node, lag_s, feeds, within FROM fresh_feeds
  ) AS changes
  GROUP BY node, lag_s HAVING SUM(feeds) > 0;

-- ... and its percentiles by rank (the lag at rank ceil(p × n), as `features.sql` takes them).
CREATE OR REPLACE TABLE feed AS
  SELECT node,
    CAST(MIN(CASE WHEN below >= CEIL(0.5 * total) THEN lag_s END) AS DOUBLE) AS lag_p50_s,
    CAST(MIN(CASE WHEN below >= CEIL(0.95 * total) THEN lag_s END) AS DOUBLE) AS lag_p95_s,
    CAST(SUM(within) AS DOUBLE) / CAST(SUM(feeds) AS DOUBLE) AS reliability
  FROM (
    SELECT node, lag_s, feeds, within,
           SUM(feeds) OVER (PARTITION BY node ORDER BY lag_s ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS below,
           SUM(feeds) OVER (PARTITION BY node) AS total
    FROM feeds
  ) AS ranked
  GROUP BY node;

-- What tonight leaves for the next night: the state per sku×node ...
CREATE OR REPLACE VIEW running_next AS
  SELECT p.sku, p.node, p.reserved, p.held, p.last_event_ts, p.last_arrived, p.last_count_ts, p.last_receipt_ts,
         p.last_reading_ts, p.reserve_units_24h, p.reserve_count_24h, p.reserve_units_7d, p.reserve_count_7d,
         p.releases_7d, p.returned_7d, p.shipped_7d, p.shorts_30d, p.reserves_30d, p.disc_sum, p.disc_abs, p.disc_n,
         a.anchor_ts, a.anchor_id, CAST(a.anchor_qty AS BIGINT) AS anchor_qty, a.anchor_kind, p.level_t, p.has_t
  FROM per_node p LEFT JOIN anchors a ON a.sku = p.sku AND a.node = p.node;

-- ... the tail: the events known tonight after tonight's tail start ...
CREATE OR REPLACE VIEW tail_next AS SELECT * FROM recent WHERE ts > ${tail};

-- ... and the day's sums per day (sku×node rows have a sku, feed rows a lag), of run ${run}.
CREATE OR REPLACE VIEW days_next AS
  SELECT CAST(${run} AS BIGINT) AS run, sku, node, day, reserve_units, reserve_count, releases, returned, shipped, shorts,
         CAST(0 AS BIGINT) AS disc_sum, CAST(0 AS BIGINT) AS disc_abs, CAST(0 AS BIGINT) AS disc_n,
         CAST(NULL AS BIGINT) AS lag_s, CAST(0 AS BIGINT) AS feeds, CAST(0 AS BIGINT) AS within
  FROM fresh_days
  UNION ALL
  SELECT CAST(${run} AS BIGINT), sku, node, day, 0, 0, 0, 0, 0, 0, disc_sum, disc_abs, disc_n, CAST(NULL AS BIGINT), 0, 0
  FROM final_days
  UNION ALL
  SELECT CAST(${run} AS BIGINT), CAST(NULL AS VARCHAR), node, day, 0, 0, 0, 0, 0, 0, 0, 0, 0, lag_s, feeds, within
  FROM fresh_feeds;
