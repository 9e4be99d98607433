//! Scores an XGBoost model on the CPU without XGBoost. The model's JSON is loaded once into one
//! flat array of 16-byte nodes (all trees back to back). When no tree is deeper than
//! [`MAX_PERFECT_DEPTH`] (ours are 6), each tree is also laid out as a *perfect* tree of the
//! model's depth: 8-byte splits in level order (children of `i` at `2i + 1` and `2i + 2`, so no
//! child pointers) and the leaves after them; a leaf above the bottom is copied down both sides,
//! so every path has the same length. A prediction walks a fixed number of levels with no branch
//! (a missing value reads as -inf or +inf, whichever goes its default way), twelve trees at a
//! time so their independent loads overlap. Same arithmetic as XGBoost's CPU predictor: `f32` features and thresholds, `value <
//! threshold` goes left, a missing value (`NaN`) follows the node's default direction, leaf values
//! are summed onto the base margin in `f32`, and `binary:logistic` applies the sigmoid.

use serde_json::Value;

/// A model that cannot be used: corrupt, truncated, or not a binary tree ensemble we can score.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("model: {0}")]
pub struct ModelFormatError(pub String);

/// One node. A leaf has `feature == LEAF` and its value in `value`; a split sends
/// `x[feature] < value` to `left` and the others to `right` (missing: see [`DEFAULT_LEFT`]).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Node {
    feature: u32,
    value: f32,
    left: u32,
    right: u32,
}

const LEAF: u32 = u32::MAX;
/// The top bit of `feature` on a split: missing values go left.
const DEFAULT_LEFT: u32 = 1 << 31;

/// Deepest model scored through the perfect-tree layout (2^8 leaves per tree).
pub const MAX_PERFECT_DEPTH: usize = 8;

/// A split of the perfect layout: `x < threshold` goes left. `feature` indexes the row with
/// missing values as -inf (`< features`: missing goes left) or as +inf (`features + f`: right).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Split {
    feature: u32,
    threshold: f32,
}

/// Trees walked together in the perfect layout: their independent loads overlap.
const LANES: usize = 12;

/// Every tree as a perfect tree of `depth` levels: `2^depth - 1` splits, then `2^depth` leaves.
#[derive(Debug, Clone)]
struct Perfect {
    depth: usize,
    splits: Vec<Split>,
    leaves: Vec<f32>,
}

/// A binary-logistic tree ensemble in a compact layout.
#[derive(Debug, Clone)]
pub struct Evaluator {
    nodes: Vec<Node>,
    /// Index of each tree's root in `nodes`.
    roots: Vec<u32>,
    perfect: Option<Perfect>,
    base_margin: f32,
    features: usize,
}

fn field<'a>(value: &'a Value, path: &[&str]) -> Result<&'a Value, ModelFormatError> {
    path.iter().try_fold(value, |value, key| {
        value.get(key).ok_or_else(|| ModelFormatError(format!("missing `{}`", path.join("."))))
    })
}

/// XGBoost writes numbers in its parameters as strings, sometimes as a one-element list: "[5E-1]".
fn number_text(value: &Value, name: &str) -> Result<f64, ModelFormatError> {
    let text = value.as_str().map(|text| text.trim_matches(|c| c == '[' || c == ']').to_string()).or_else(|| value.as_f64().map(|n| n.to_string()));
    text.and_then(|text| text.parse::<f64>().ok()).ok_or_else(|| ModelFormatError(format!("`{name}` is not a number: {value}")))
}

fn array<'a>(tree: &'a Value, name: &str, index: usize) -> Result<&'a Vec<Value>, ModelFormatError> {
    tree.get(name).and_then(Value::as_array).ok_or_else(|| ModelFormatError(format!("tree {index}: `{name}` missing or not an array")))
}

impl Evaluator {
    /// Loads XGBoost's JSON model format (`Booster::save_model` / `save_buffer`).
    pub fn from_json(text: &str) -> Result<Evaluator, ModelFormatError> {
        let json: Value = serde_json::from_str(text).map_err(|error| ModelFormatError(format!("not JSON: {error}")))?;
        let learner = field(&json, &["learner"])?;
        let objective = field(learner, &["objective", "name"])?.as_str().unwrap_or_default();
        if objective != "binary:logistic" {
            return Err(ModelFormatError(format!("objective `{objective}`: only binary:logistic models can be scored")));
        }
        let booster = field(learner, &["gradient_booster", "name"])?.as_str().unwrap_or_default();
        if booster != "gbtree" {
            return Err(ModelFormatError(format!("booster `{booster}`: only gbtree models can be scored")));
        }
        let params = field(learner, &["learner_model_param"])?;
        let features = number_text(field(params, &["num_feature"])?, "num_feature")? as usize;
        let base_score = number_text(field(params, &["base_score"])?, "base_score")? as f32;
        if !(base_score > 0.0 && base_score < 1.0) {
            return Err(ModelFormatError(format!("base_score {base_score} is not a probability")));
        }
        let trees = field(learner, &["gradient_booster", "model", "trees"])?
            .as_array()
            .ok_or_else(|| ModelFormatError("`trees` is not an array".into()))?;
        let mut evaluator =
            Evaluator { nodes: Vec::new(), roots: Vec::with_capacity(trees.len()), perfect: None, base_margin: -(1.0 / base_score - 1.0).ln(), features };
        for (index, tree) in trees.iter().enumerate() {
            evaluator.add_tree(tree, index)?;
        }
        evaluator.perfect = evaluator.perfect_layout();
        Ok(evaluator)
    }

    fn depth(&self, index: usize) -> usize {
        let node = self.nodes[index];
        if node.feature == LEAF {
            0
        } else {
            1 + self.depth(node.left as usize).max(self.depth(node.right as usize))
        }
    }

    /// The perfect-tree layout of every tree, if none is deeper than [`MAX_PERFECT_DEPTH`].
    fn perfect_layout(&self) -> Option<Perfect> {
        let depth = self.roots.iter().map(|&root| self.depth(root as usize)).max()?;
        // thresholds must be finite for the ±inf stand-ins of missing values to go their way
        let finite = self.nodes.iter().all(|node| node.feature == LEAF || node.value.is_finite());
        if depth > MAX_PERFECT_DEPTH || !finite {
            return None;
        }
        let (internal, width) = ((1usize << depth) - 1, 1usize << depth);
        let mut perfect = Perfect {
            depth,
            splits: vec![Split { feature: 0, threshold: 0.0 }; internal * self.roots.len()],
            leaves: vec![0.0; width * self.roots.len()],
        };
        for (tree, &root) in self.roots.iter().enumerate() {
            let splits = &mut perfect.splits[tree * internal..(tree + 1) * internal];
            let leaves = &mut perfect.leaves[tree * width..(tree + 1) * width];
            self.fill(root as usize, 0, 0, depth, splits, leaves);
        }
        Some(perfect)
    }

    /// Copies the subtree at `node` to level-order `position` of a perfect tree.
    fn fill(&self, node: usize, position: usize, level: usize, depth: usize, splits: &mut [Split], leaves: &mut [f32]) {
        let source = self.nodes[node];
        if level == depth {
            leaves[position - splits.len()] = source.value;
            return;
        }
        let (left, right) = if source.feature == LEAF {
            // a leaf above the bottom: both sides lead to it, whatever the split says
            splits[position] = Split { feature: 0, threshold: 0.0 };
            (node, node)
        } else {
            let feature = (source.feature & !DEFAULT_LEFT) as usize;
            let missing_left = source.feature & DEFAULT_LEFT != 0;
            let feature = if missing_left { feature } else { self.features + feature };
            splits[position] = Split { feature: feature as u32, threshold: source.value };
            (source.left as usize, source.right as usize)
        };
        self.fill(left, 2 * position + 1, level + 1, depth, splits, leaves);
        self.fill(right, 2 * position + 2, level + 1, depth, splits, leaves);
    }

    /// The margin of a row through the perfect layout of `DEPTH` levels.
    fn perfect_margin<const DEPTH: usize>(&self, perfect: &Perfect, row: &[f32]) -> f32 {
        assert_eq!(row.len(), self.features, "a row has {} values, the model reads {}", row.len(), self.features);
        // The row twice: missing values as -inf (read by splits whose missing values go left:
        // -inf < threshold) and as +inf (the others). A split's `feature` indexes this pair, so
        // the walk needs no NaN test.
        let mut stack = [0f32; 128];
        let mut heap = Vec::new();
        let both: &mut [f32] = if 2 * row.len() <= stack.len() {
            &mut stack[..2 * row.len()]
        } else {
            heap.resize(2 * row.len(), 0.0);
            &mut heap
        };
        let (low, high) = both.split_at_mut(row.len());
        for ((low, high), &x) in low.iter_mut().zip(high.iter_mut()).zip(row) {
            (*low, *high) = if x.is_nan() { (f32::NEG_INFINITY, f32::INFINITY) } else { (x, x) };
        }
        let (internal, width) = ((1usize << DEPTH) - 1, 1usize << DEPTH);
        // One step down: `at` is a position in the tree whose splits start at `base`.
        // SAFETY: after k < DEPTH levels `at` < 2^(k+1) - 1 <= internal, so `base + at` is inside
        // the tree's splits; `add_tree` checked every feature < features, so `fill` made every
        // split's index < 2 × features = both.len() (the row's length is asserted above).
        let step = |base: usize, at: usize| {
            let split = unsafe { *perfect.splits.get_unchecked(base + at) };
            let x = unsafe { *both.get_unchecked(split.feature as usize) };
            // no NaN reaches here (missing values are ±inf), so not `x < threshold` is `x >= threshold`
            2 * at + 1 + usize::from(x >= split.threshold)
        };
        let trees = self.roots.len();
        let mut margin = self.base_margin;
        let mut first = 0;
        // LANES trees at a time; the lanes' offsets are constants, so the positions stay in
        // registers
        while first + LANES <= trees {
            let base = first * internal;
            let mut at = [0usize; LANES];
            for _ in 0..DEPTH {
                for (lane, at) in at.iter_mut().enumerate() {
                    *at = step(base + lane * internal, *at);
                }
            }
            for (lane, position) in at.iter().enumerate() {
                margin += perfect.leaves[(first + lane) * width + position - internal];
            }
            first += LANES;
        }
        for tree in first..trees {
            let at = (0..DEPTH).fold(0, |at, _| step(tree * internal, at));
            margin += perfect.leaves[tree * width + at - internal];
        }
        margin
    }

    fn add_tree(&mut self, tree: &Value, index: usize) -> Result<(), ModelFormatError> {
        let left = array(tree, "left_children", index)?;
        let right = array(tree, "right_children", index)?;
        let split = array(tree, "split_indices", index)?;
        let condition = array(tree, "split_conditions", index)?;
        let default_left = array(tree, "default_left", index)?;
        let count = left.len();
        if count == 0 || [right.len(), split.len(), condition.len(), default_left.len()].iter().any(|len| *len != count) {
            return Err(ModelFormatError(format!("tree {index}: node arrays of different lengths")));
        }
        if tree.get("split_type").and_then(Value::as_array).is_some_and(|types| types.iter().any(|t| t.as_i64() != Some(0))) {
            return Err(ModelFormatError(format!("tree {index}: categorical splits are not supported")));
        }
        let offset = self.nodes.len() as u32;
        let bad = |what: &str, node: usize| ModelFormatError(format!("tree {index}, node {node}: {what}"));
        for node in 0..count {
            let child = |children: &Vec<Value>| children[node].as_i64().ok_or_else(|| bad("child is not an integer", node));
            let (l, r) = (child(left)?, child(right)?);
            let value = condition[node].as_f64().ok_or_else(|| bad("split condition is not a number", node))? as f32;
            if l == -1 {
                self.nodes.push(Node { feature: LEAF, value, left: 0, right: 0 });
                continue;
            }
            let in_tree = |child: i64| child > node as i64 && (child as usize) < count;
            if !in_tree(l) || !in_tree(r) {
                return Err(bad("child out of range", node));
            }
            let feature = split[node].as_u64().filter(|f| (*f as usize) < self.features).ok_or_else(|| bad("split on an unknown feature", node))?;
            let goes_left = default_left[node].as_i64().or_else(|| default_left[node].as_bool().map(i64::from)) == Some(1);
            self.nodes.push(Node {
                feature: feature as u32 | if goes_left { DEFAULT_LEFT } else { 0 },
                value,
                left: offset + l as u32,
                right: offset + r as u32,
            });
        }
        self.roots.push(offset);
        Ok(())
    }

    /// How many features a row must have.
    pub fn features(&self) -> usize {
        self.features
    }

    pub fn trees(&self) -> usize {
        self.roots.len()
    }

    /// The leaf value one tree gives a row.
    #[inline]
    fn leaf(&self, root: u32, row: &[f32]) -> f32 {
        let mut index = root as usize;
        loop {
            let node = self.nodes[index];
            if node.feature == LEAF {
                return node.value;
            }
            let x = row[(node.feature & !DEFAULT_LEFT) as usize];
            // without a branch (the direction is unpredictable): `x < value` is false for NaN
            let left = (x < node.value) | (x.is_nan() & (node.feature & DEFAULT_LEFT != 0));
            index = [node.right, node.left][left as usize] as usize;
        }
    }

    /// The probability of the positive class for one row (`NaN` = missing).
    pub fn predict(&self, row: &[f32]) -> f32 {
        debug_assert_eq!(row.len(), self.features);
        let margin = match &self.perfect {
            Some(perfect) => match perfect.depth {
                0 => self.perfect_margin::<0>(perfect, row),
                1 => self.perfect_margin::<1>(perfect, row),
                2 => self.perfect_margin::<2>(perfect, row),
                3 => self.perfect_margin::<3>(perfect, row),
                4 => self.perfect_margin::<4>(perfect, row),
                5 => self.perfect_margin::<5>(perfect, row),
                6 => self.perfect_margin::<6>(perfect, row),
                7 => self.perfect_margin::<7>(perfect, row),
                _ => self.perfect_margin::<8>(perfect, row),
            },
            None => self.walk_margin(row),
        };
        sigmoid(margin)
    }

    /// The margin of a row by walking each tree's nodes.
    fn walk_margin(&self, row: &[f32]) -> f32 {
        self.roots.iter().fold(self.base_margin, |margin, &root| margin + self.leaf(root, row))
    }

    /// Scores row-major `rows` (each [`Evaluator::features`] long) into `out`. In the perfect
    /// layout, row by row (the whole model stays in cache); otherwise tree by tree over all rows,
    /// so each tree stays in cache. Either way the sums are added in the same order as
    /// [`Evaluator::predict`], so the scores are the same to the bit.
    pub fn predict_batch(&self, rows: &[f32], out: &mut Vec<f32>) {
        out.clear();
        if self.perfect.is_some() {
            out.extend(rows.chunks_exact(self.features).map(|row| self.predict(row)));
            return;
        }
        out.resize(rows.len() / self.features, self.base_margin);
        for &root in &self.roots {
            for (margin, row) in out.iter_mut().zip(rows.chunks_exact(self.features)) {
                *margin += self.leaf(root, row);
            }
        }
        out.iter_mut().for_each(|margin| *margin = sigmoid(*margin));
    }
}

fn sigmoid(margin: f32) -> f32 {
    1.0 / (1.0 + (-margin).exp())
}

#[cfg(all(test, feature = "train"))]
mod tests {
    use super::*;
    use crate::train_fixed;

    /// Rows with a signal in features 0 and 1, noise in 2, and missing values everywhere.
    fn data(rows: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
        let mut state = seed;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % 10_000) as f32 / 10_000.0
        };
        let mut features = Vec::with_capacity(rows * 4);
        let mut labels = Vec::with_capacity(rows);
        for _ in 0..rows {
            let row = [next(), next() * 10.0, next(), next()];
            labels.push(if row[0] * 2.0 + row[1] / 10.0 + next() * 0.8 > 1.6 { 1.0 } else { 0.0 });
            features.extend(row.iter().map(|&value| if next() < 0.1 { f32::NAN } else { value }));
        }
        (features, labels)
    }

    #[test]
    fn scores_equal_xgboosts_own_predictions() {
        let (train, labels) = data(3_000, 7);
        let model = train_fixed(&train, 3_000, &labels, 60, 6, 0.3).unwrap();
        let evaluator = Evaluator::from_json(model.json()).unwrap();
        assert_eq!((evaluator.trees(), evaluator.features()), (60, 4));
        let (validation, _) = data(2_000, 99);
        let expected = model.predict(&validation, 2_000).unwrap();
        let mut scores = Vec::new();
        evaluator.predict_batch(&validation, &mut scores);
        let one_by_one: Vec<f32> = validation.chunks_exact(4).map(|row| evaluator.predict(row)).collect();
        assert_eq!(scores, one_by_one, "batch and single-row scoring agree to the bit");
        let worst = scores.iter().zip(&expected).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(worst <= 1e-6, "largest difference {worst}");
        assert!(expected.iter().any(|p| *p < 0.2) && expected.iter().any(|p| *p > 0.8), "the model should separate");
    }

    #[test]
    fn trees_too_deep_for_the_perfect_layout_are_walked_with_the_same_scores() {
        let (train, labels) = data(3_000, 11);
        let model = train_fixed(&train, 3_000, &labels, 20, 12, 0.3).unwrap();
        let evaluator = Evaluator::from_json(model.json()).unwrap();
        let depth = evaluator.roots.iter().map(|&root| evaluator.depth(root as usize)).max().unwrap();
        assert!(depth > MAX_PERFECT_DEPTH && evaluator.perfect.is_none(), "depth {depth}");
        let (validation, _) = data(500, 5);
        let expected = model.predict(&validation, 500).unwrap();
        let mut scores = Vec::new();
        evaluator.predict_batch(&validation, &mut scores);
        let worst = scores.iter().zip(&expected).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(worst <= 1e-6, "largest difference {worst}");
        // and the perfect layout of a shallow model walks to the same leaves as the nodes
        let shallow = Evaluator::from_json(train_fixed(&train, 3_000, &labels, 13, 4, 0.3).unwrap().json()).unwrap();
        assert!(shallow.perfect.is_some());
        for row in validation.chunks_exact(4) {
            assert_eq!(shallow.predict(row), sigmoid(shallow.walk_margin(row)));
        }
    }

    #[test]
    fn corrupt_or_incompatible_models_are_refused_with_the_reason() {
        let (train, labels) = data(300, 3);
        let json = train_fixed(&train, 300, &labels, 3, 6, 0.3).unwrap().json().to_string();
        let error = |text: &str| Evaluator::from_json(text).unwrap_err().to_string();
        assert!(error(&json[..json.len() / 2]).starts_with("model: not JSON"));
        assert!(error(&json.replace("binary:logistic", "reg:squarederror")).contains("only binary:logistic"));
        let mut value: Value = serde_json::from_str(&json).unwrap();
        value["learner"]["gradient_booster"]["model"]["trees"][1]["left_children"][0] = Value::from(10_000);
        assert_eq!(error(&value.to_string()), "model: tree 1, node 0: child out of range");
        let mut value: Value = serde_json::from_str(&json).unwrap();
        value["learner"]["learner_model_param"]["num_feature"] = Value::from("1");
        assert!(error(&value.to_string()).contains("split on an unknown feature"));
    }
}
