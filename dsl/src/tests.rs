//! Evaluation case tables and property tests of the parser and checker.

use proptest::prelude::*;

use crate::syntax::{Action, Comparator, Expr, FieldRef, Literal, Operand, Rule, RuleFile};
use crate::{load, parse, Evaluation, Schema, Source, Value};

fn ruleset(text: &str) -> crate::RuleSet {
    let loaded = load(&[Source { name: "t.rules".into(), text: text.into() }], &Schema::standard());
    let errors: Vec<String> = loaded.diagnostics.iter().map(ToString::to_string).collect();
    loaded.ruleset.unwrap_or_else(|| panic!("{}", errors.join("\n")))
}

/// Evaluates `rules` with `facts` (`field = value` pairs).
fn check(rules: &str, facts: &[(&str, Value)], expect: (Option<&str>, i64, Option<i64>, &[&str])) {
    let ruleset = ruleset(rules);
    let mut input = ruleset.facts();
    for (field, value) in facts {
        input.set(ruleset.schema().slot(field).unwrap(), value.clone());
    }
    let Evaluation { denied, hold, cap, fired } = ruleset.evaluate(&input);
    let fired: Vec<&str> = fired.iter().map(|f| f.rule.as_ref()).collect();
    assert_eq!((denied.as_deref(), hold, cap, fired.as_slice()), expect, "{rules}");
}

const RULES: &str = r#"
rule "buffer" when node.kind == "seller" then hold 2
rule "buffer more" when node.seller == "S-1" then hold 3
rule "cap low" when qty > 1 then cap 2
rule "cap high" priority 5 when qty > 0 then cap 4
rule "deny hazmat" priority 100 when sku.hazmat then deny "hazmat"
rule "deny DE" when region == "DE" then deny "not in DE"
"#;

#[test]
fn any_deny_wins_holds_add_caps_take_the_minimum_priority_orders_the_trace() {
    use Value::*;
    let seller = [("node.kind", Text("seller".into())), ("node.seller", Text("S-1".into()))];
    check(RULES, &seller, (None, 5, None, &["buffer", "buffer more"]));
    let both_caps = [("qty", Number(3.0))];
    check(RULES, &both_caps, (None, 0, Some(2), &["cap high", "cap low"]));
    let denied_twice = [("sku.hazmat", Bool(true)), ("region", Text("DE".into()))];
    check(RULES, &denied_twice, (Some("hazmat"), 0, None, &["deny hazmat", "deny DE"]));
    // unknown facts never fire a rule
    check(RULES, &[], (None, 0, None, &[]));
}

#[test]
fn unknown_facts_are_neither_true_nor_false() {
    use Value::*;
    let rules = r#"rule "not hazmat" when not sku.hazmat then hold 1
rule "or" when sku.hazmat or qty > 1 then hold 10
rule "guard" when region == "DE" then require p_fulfill >= 0.8"#;
    check(rules, &[], (None, 0, None, &[]));
    check(rules, &[("qty", Number(2.0))], (None, 10, None, &["or"]));
    // `require` with an unknown score denies: overselling is the costly error
    let de = [("region", Text("DE".into()))];
    check(rules, &de, (Some("p_fulfill >= 0.8 is required"), 0, None, &["guard"]));
    let confident = [("region", Text("DE".into())), ("p_fulfill", Number(0.9))];
    check(rules, &confident, (None, 0, None, &[]));
}

#[test]
fn explanations_show_the_facts_a_rule_saw() {
    let ruleset = ruleset(r#"rule "hot" when p_fulfill < 0.9 and velocity_5m >= 20 then cap 1"#);
    let mut facts = ruleset.facts();
    facts.set(ruleset.schema().slot("p_fulfill").unwrap(), Value::Number(0.5));
    facts.set(ruleset.schema().slot("velocity_5m").unwrap(), Value::Number(30.0));
    let evaluation = ruleset.evaluate(&facts);
    let saw: Vec<String> = evaluation.fired[0].saw.iter().map(ToString::to_string).collect();
    assert_eq!(saw, ["p_fulfill = 0.5", "velocity_5m = 30"]);
    assert_eq!(evaluation.units(10), 1);
}

#[test]
fn failing_rule_tests_say_what_they_got() {
    let ruleset = ruleset(
        r#"rule "buffer" when node.kind == "seller" then hold 2
test "wrong" given node.kind = "seller", atp = 5 expect hold 1, units 3, deny"#,
    );
    let results = ruleset.run_tests();
    assert_eq!(results[0].failures, ["expected hold 1, got hold 2", "expected deny, got allowed"]);
}

#[test]
fn pathological_nesting_is_an_error_not_a_stack_overflow() {
    let deep = format!("rule \"deep\" when {}qty > 1{} then cap 1", "(".repeat(100_000), ")".repeat(100_000));
    let (_, diagnostics) = parse("deep.rules", &deep);
    assert_eq!(diagnostics.len(), 1);
    assert!(diagnostics[0].message.contains("nest at most"), "{}", diagnostics[0].message);
    let nots = format!("rule \"nots\" when {} qty > 1 then cap 1", "not ".repeat(100_000));
    let (_, diagnostics) = parse("nots.rules", &nots);
    assert!(diagnostics[0].message.contains("nest at most"), "{}", diagnostics[0].message);
}

// ---------------------------------------------------------------------------------------------
// Properties

const FIELDS: [&str; 6] = ["sku.hazmat", "qty", "region", "node.kind", "p_fulfill", "sku.price"];

fn arb_field() -> impl Strategy<Value = FieldRef> {
    prop::sample::select(FIELDS.to_vec()).prop_map(|name| FieldRef { name: name.to_string(), span: Default::default() })
}

fn arb_literal() -> impl Strategy<Value = Literal> {
    prop_oneof![
        (-1000i32..1000, 0u8..4).prop_map(|(n, d)| Literal::Number(n as f64 / 10f64.powi(d as i32))),
        "[a-zA-Z0-9 \\-\"\\\\]{0,8}".prop_map(Literal::Text),
        any::<bool>().prop_map(Literal::Bool),
    ]
}

fn arb_comparator() -> impl Strategy<Value = Comparator> {
    prop::sample::select(vec![Comparator::Eq, Comparator::Ne, Comparator::Lt, Comparator::Le, Comparator::Gt, Comparator::Ge])
}

fn arb_expr() -> impl Strategy<Value = Expr> {
    let leaf = prop_oneof![
        (arb_field(), arb_comparator(), arb_literal())
            .prop_map(|(f, op, l)| Expr::Compare { left: Operand::Field(f), op, right: Operand::Literal(l) }),
        (arb_field(), prop::collection::vec(arb_literal(), 0..3), any::<bool>())
            .prop_map(|(field, list, negated)| Expr::In { field, list, negated }),
        (arb_field(), "[a-z]{0,5}").prop_map(|(field, prefix)| Expr::StartsWith { field, prefix }),
        arb_field().prop_map(Expr::Field),
        any::<bool>().prop_map(Expr::Bool),
    ];
    leaf.prop_recursive(4, 24, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 2..4).prop_map(Expr::Or),
            prop::collection::vec(inner.clone(), 2..4).prop_map(Expr::And),
            inner.prop_map(|e| Expr::Not(Box::new(e))),
        ]
    })
}

fn arb_action() -> impl Strategy<Value = Action> {
    prop_oneof![
        "[a-z ]{0,10}".prop_map(Action::Deny),
        (0i64..100).prop_map(Action::Hold),
        (0i64..100).prop_map(Action::Cap),
        (arb_field(), arb_comparator(), 0u8..100)
            .prop_map(|(field, op, t)| Action::Require { field, op, threshold: t as f64 / 100.0 }),
    ]
}

fn arb_file() -> impl Strategy<Value = RuleFile> {
    let rule = ("[a-z ]{1,12}", -5i64..5, arb_expr(), arb_action()).prop_map(|(name, priority, condition, action)| Rule {
        name,
        priority,
        condition,
        action,
        span: Default::default(),
    });
    (prop::option::of("[a-z]{1,8}"), prop::collection::vec(rule, 0..4))
        .prop_map(|(name, rules)| RuleFile { name, rules, tests: Vec::new() })
}

/// Words and symbols of the language, shuffled into soups.
const TOKENS: [&str; 30] = [
    "rule", "\"x\"", "when", "then", "and", "or", "not", "(", ")", "[", "]", ",", "==", "<", ">=", "in", "starts",
    "with", "deny", "hold", "cap", "require", "test", "given", "expect", "qty", "sku.hazmat", "1", "0.5", "=",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn print_then_parse_gives_the_same_tree(file in arb_file()) {
        let text = file.to_string();
        let (parsed, diagnostics) = parse("p.rules", &text);
        prop_assert!(diagnostics.is_empty(), "{}\n{:?}", text, diagnostics);
        prop_assert_eq!(parsed, file);
    }

    /// The rule index only skips rules that cannot fire.
    #[test]
    fn indexed_evaluation_equals_evaluating_every_rule(
        kind in prop::sample::select(vec!["seller", "store", "warehouse"]),
        seller in prop::sample::select(vec!["S-1", "S-2", "S-3"]),
        region in prop::option::of(prop::sample::select(vec!["DE", "FR", "US"])),
        qty in 0i32..5,
        hazmat in prop::option::of(any::<bool>()),
    ) {
        let rules = format!("{RULES}\n{}", r#"
rule "de sellers" when region == "DE" and node.kind == "seller" then hold 1
rule "S-2 or FR" when node.seller == "S-2" or region == "FR" then cap 1
rule "not S-3" priority 7 when not (node.seller == "S-3") then hold 1
rule "prefix" when node.kind == "seller" and node.seller starts with "S-1" then cap 2
rule "mixed" when qty >= 2 and node.seller != "S-2" and region in ["DE"] then hold 2
"#);
        let ruleset = ruleset(&rules);
        let schema = ruleset.schema();
        let mut facts = ruleset.facts();
        facts.set(schema.slot("node.kind").unwrap(), Value::Text(kind.into()));
        facts.set(schema.slot("node.seller").unwrap(), Value::Text(seller.into()));
        facts.set(schema.slot("qty").unwrap(), Value::Number(qty as f64));
        if let Some(region) = region {
            facts.set(schema.slot("region").unwrap(), Value::Text(region.into()));
        }
        if let Some(hazmat) = hazmat {
            facts.set(schema.slot("sku.hazmat").unwrap(), Value::Bool(hazmat));
        }
        prop_assert_eq!(ruleset.evaluate(&facts), ruleset.evaluate_every_rule(&facts));
    }

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let text = String::from_utf8_lossy(&bytes);
        load(&[Source { name: "r.rules".into(), text: text.to_string() }], &Schema::standard());
    }

    /// Parsing work grows linearly: any soup of tokens, including unclosed nesting as deep as
    /// allowed, parses (or fails) within a fixed number of parser steps per byte. Examples
    /// measured 4-5 steps per byte and the deepest unclosed nesting about 40.
    #[test]
    fn token_soups_parse_in_linear_steps(
        tokens in prop::collection::vec(prop::sample::select(TOKENS.to_vec()), 0..200),
        depth in 0usize..=crate::syntax::MAX_NESTING,
    ) {
        for text in [tokens.join(" "), format!("rule \"x\" when {}{} then cap 1", "(".repeat(depth), tokens.join(" "))] {
            let parsed = crate::syntax::parse_item_within(&text, 64);
            let exhausted = matches!(&parsed, Err(error) if error.to_string().contains("call limit"));
            prop_assert!(!exhausted, "more than 64 steps per byte: {}", text);
        }
    }

    #[test]
    fn token_soups_never_panic(tokens in prop::collection::vec(prop::sample::select(TOKENS.to_vec()), 0..80)) {
        let text = tokens.join(" ");
        let loaded = load(&[Source { name: "s.rules".into(), text }], &Schema::standard());
        // whatever the soup, diagnostics point inside the file
        for diagnostic in &loaded.diagnostics {
            prop_assert!(diagnostic.line == 1 && diagnostic.column >= 1);
        }
    }
}

