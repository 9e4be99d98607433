//! The decision arithmetic: per-node ATP in a region → promise or deny, with ranked options.
//! Pure, so serving, backtests and tests all decide the same way.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Promise,
    Deny,
}

impl Verdict {
    /// As the API and the decision log write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Promise => "promise",
            Verdict::Deny => "deny",
        }
    }
}

/// One node that can fulfil (part of) the order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FulfillmentOption {
    pub node: String,
    /// Units this node can promise now (its ATP).
    pub units: i64,
    /// Probability that an order placed here now is fulfilled; `None` while no model scores.
    pub p_fulfill: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub verdict: Verdict,
    /// Units promised: the requested quantity, or 0 on deny.
    pub units: i64,
    /// Units available across all options.
    pub available: i64,
    /// Ranked by units, most first; ties by node id.
    pub options: Vec<FulfillmentOption>,
    pub reasons: Vec<String>,
}

/// Decides an order of `qty` units from the ATP of each candidate node.
pub fn decide(qty: i64, node_atp: impl IntoIterator<Item = (String, i64)>) -> Decision {
    let mut options: Vec<FulfillmentOption> = node_atp
        .into_iter()
        .filter(|(_, atp)| *atp > 0)
        .map(|(node, units)| FulfillmentOption { node, units, p_fulfill: None })
        .collect();
    options.sort_by(|a, b| b.units.cmp(&a.units).then_with(|| a.node.cmp(&b.node)));
    let available: i64 = options.iter().map(|option| option.units).sum();
    let (verdict, units, reason) = if available >= qty {
        (Verdict::Promise, qty, format!("{available} units available for {qty} requested"))
    } else {
        (Verdict::Deny, 0, format!("only {available} units available for {qty} requested"))
    };
    Decision { verdict, units, available, options, reasons: vec![reason] }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn promises_when_enough_and_ranks_options() {
        let decision = decide(3, [("B".to_string(), 2), ("A".to_string(), 2), ("C".to_string(), 0)]);
        assert_eq!(decision.verdict, Verdict::Promise);
        assert_eq!(decision.units, 3);
        let nodes: Vec<&str> = decision.options.iter().map(|o| o.node.as_str()).collect();
        assert_eq!(nodes, ["A", "B"]);
    }

    #[test]
    fn denies_when_short() {
        let decision = decide(5, [("A".to_string(), 4)]);
        assert_eq!((decision.verdict, decision.units, decision.available), (Verdict::Deny, 0, 4));
        assert_eq!(decision.reasons, ["only 4 units available for 5 requested"]);
    }
}
