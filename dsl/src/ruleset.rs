//! Checking and compiling: syntax tree + field schema → a [`RuleSet`] whose conditions refer to
//! field *slots*, so evaluating a request does no string lookups. Every mistake a merchandiser
//! can make is found here, at load time, with a diagnostic pointing at it.

use std::collections::HashMap;
use std::sync::Arc;

use crate::diagnostic::{suggest, Diagnostic, SourceText, Span};
use crate::syntax::{self, Action, Comparator, Expr, FieldRef, Literal, Operand, Outcome, RuleFile};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    Number,
    Text,
    Bool,
}

impl Type {
    fn article(self) -> &'static str {
        match self {
            Type::Number => "a number",
            Type::Text => "a text",
            Type::Bool => "true/false",
        }
    }
}

/// A value a field holds for one decision.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Number(f64),
    /// Shared, so that explanations keep the facts a rule saw without copying text.
    Text(Arc<str>),
    Bool(bool),
}

impl Value {
    fn of(literal: &Literal) -> Value {
        match literal {
            Literal::Number(number) => Value::Number(*number),
            Literal::Text(text) => Value::Text(text.as_str().into()),
            Literal::Bool(value) => Value::Bool(*value),
        }
    }

    fn type_of(&self) -> Type {
        match self {
            Value::Number(_) => Type::Number,
            Value::Text(_) => Type::Text,
            Value::Bool(_) => Type::Bool,
        }
    }
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Number(number) => write!(f, "{number}"),
            Value::Text(text) => write!(f, "{text:?}"),
            Value::Bool(value) => write!(f, "{value}"),
        }
    }
}

/// The fields rules may use, each with a type and a slot.
#[derive(Debug, Clone)]
pub struct Schema {
    fields: Vec<(Arc<str>, Type)>,
    slots: HashMap<String, usize>,
}

/// The built-in fields: catalog, request, merged view and model score. Documented in
/// `docs/rules.md`; serving fills them.
pub const STANDARD_FIELDS: [(&str, Type); 20] = [
    ("sku.id", Type::Text),
    ("sku.category", Type::Text),
    ("sku.seller", Type::Text),
    ("sku.hazmat", Type::Bool),
    ("sku.price", Type::Number),
    ("node.id", Type::Text),
    ("node.kind", Type::Text),
    ("node.region", Type::Text),
    ("node.country", Type::Text),
    ("node.seller", Type::Text),
    ("node.feed_lag_s", Type::Number),
    ("region", Type::Text),
    ("qty", Type::Number),
    ("atp", Type::Number),
    ("on_hand", Type::Number),
    ("reserved", Type::Number),
    ("held", Type::Number),
    ("p_fulfill", Type::Number),
    ("velocity_5m", Type::Number),
    ("velocity_1h", Type::Number),
];

impl Default for Schema {
    fn default() -> Schema {
        Schema::standard()
    }
}

impl Schema {
    pub fn standard() -> Schema {
        let mut schema = Schema { fields: Vec::new(), slots: HashMap::new() };
        for (name, ty) in STANDARD_FIELDS {
            schema.add(name, ty);
        }
        schema
    }

    /// Declares a free-form catalog attribute, usable as `sku.<name>`.
    pub fn with_attribute(mut self, name: &str, ty: Type) -> Schema {
        self.add(&format!("sku.{name}"), ty);
        self
    }

    fn add(&mut self, name: &str, ty: Type) {
        if !self.slots.contains_key(name) {
            self.slots.insert(name.to_string(), self.fields.len());
            self.fields.push((name.into(), ty));
        }
    }

    pub fn slot(&self, name: &str) -> Option<usize> {
        self.slots.get(name).copied()
    }

    pub fn len(&self) -> usize {
        self.fields.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    pub fn name(&self, slot: usize) -> &str {
        &self.fields[slot].0
    }

    fn ty(&self, slot: usize) -> Type {
        self.fields[slot].1
    }
}

/// The facts of one decision, by slot. Unknown facts are `None`: a comparison with an unknown
/// fact is unknown, and a rule fires only when its condition is known to be true.
#[derive(Debug, Clone)]
pub struct Facts {
    values: Vec<Option<Value>>,
}

impl Facts {
    pub fn new(schema: &Schema) -> Facts {
        Facts { values: vec![None; schema.len()] }
    }

    pub fn set(&mut self, slot: usize, value: Value) {
        self.values[slot] = Some(value);
    }

    pub fn get(&self, slot: usize) -> Option<&Value> {
        self.values.get(slot).and_then(Option::as_ref)
    }
}

#[derive(Debug, Clone)]
enum Cond {
    Or(Vec<Cond>),
    And(Vec<Cond>),
    Not(Box<Cond>),
    Compare { left: Term, op: Comparator, right: Term },
    /// The common shapes, compiled flat: a number field against a constant, and a text field
    /// equal (or not) to a constant.
    NumberConst { slot: usize, op: Comparator, value: f64 },
    TextEquals { slot: usize, value: String, equal: bool },
    In { slot: usize, list: Vec<Value>, negated: bool },
    StartsWith { slot: usize, prefix: String },
    Field(usize),
    Const(bool),
}

#[derive(Debug, Clone)]
enum Term {
    Slot(usize),
    Const(Value),
}

#[derive(Debug, Clone)]
enum Effect {
    Deny(String),
    Hold(i64),
    Cap(i64),
    Require { slot: usize, op: Comparator, threshold: f64 },
}

#[derive(Debug, Clone)]
struct CompiledRule {
    /// The file it came from: a file's `test` blocks run against that file's rules.
    file: String,
    name: Arc<str>,
    priority: i64,
    text: Arc<str>,
    condition: Cond,
    effect: Effect,
    /// Slots the rule reads, for explanations.
    reads: Vec<usize>,
}

/// A `test` block, checked and ready to run.
#[derive(Debug, Clone)]
pub struct RuleTest {
    pub name: String,
    pub file: String,
    pub line: usize,
    facts: Facts,
    expect: Vec<Outcome>,
}

/// A checked, compiled set of rules from one or more files.
#[derive(Debug, Clone)]
pub struct RuleSet {
    pub name: String,
    /// Changes whenever any source text changes.
    pub version: String,
    schema: Schema,
    /// Highest priority first.
    rules: Vec<CompiledRule>,
    /// One cheap necessary test per rule, in a flat array beside `rules`: most rules that
    /// cannot fire are dismissed without walking their condition.
    prefilters: Vec<Prefilter>,
    index: RuleIndex,
    pub tests: Vec<RuleTest>,
}

/// A leaf test a rule's condition cannot be true without: a conjunct of its top-level `and`
/// (not the index key, which the index has already checked), or the condition itself.
#[derive(Debug, Clone)]
enum Prefilter {
    Always,
    Number { slot: usize, op: Comparator, value: f64 },
    Text { slot: usize, value: Box<str>, equal: bool },
    Prefix { slot: usize, prefix: Box<str> },
}

impl Prefilter {
    fn of(condition: &Cond) -> Prefilter {
        let key = condition.required_text();
        let conjuncts = match condition {
            Cond::And(parts) => parts.as_slice(),
            single => std::slice::from_ref(single),
        };
        conjuncts
            .iter()
            .find_map(|part| match part {
                Cond::NumberConst { slot, op, value } => Some(Prefilter::Number { slot: *slot, op: *op, value: *value }),
                Cond::TextEquals { slot, value, equal } if key != Some((*slot, value.as_str())) || !*equal => {
                    Some(Prefilter::Text { slot: *slot, value: value.as_str().into(), equal: *equal })
                }
                Cond::StartsWith { slot, prefix } => Some(Prefilter::Prefix { slot: *slot, prefix: prefix.as_str().into() }),
                _ => None,
            })
            .unwrap_or(Prefilter::Always)
    }

    /// False only when the condition cannot be known true.
    fn may_hold(&self, facts: &Facts) -> bool {
        match self {
            Prefilter::Always => true,
            Prefilter::Number { slot, op, value } => {
                matches!(facts.get(*slot), Some(Value::Number(number)) if number.partial_cmp(value).is_some_and(|o| apply(*op, o)))
            }
            Prefilter::Text { slot, value, equal } => {
                matches!(facts.get(*slot), Some(Value::Text(text)) if (**text == **value) == *equal)
            }
            Prefilter::Prefix { slot, prefix } => {
                matches!(facts.get(*slot), Some(Value::Text(text)) if text.starts_with(&**prefix))
            }
        }
    }
}

/// Which rules a request can fire, by the text facts their conditions require.
#[derive(Debug, Clone, Default)]
struct RuleIndex {
    /// slot → required text → rules (positions in `rules`).
    keyed: Vec<(usize, HashMap<String, Vec<usize>>)>,
    /// Rules that cannot be filed, as a bit set over positions.
    unkeyed: Vec<u64>,
}

impl RuleIndex {
    fn build(rules: &[CompiledRule]) -> RuleIndex {
        let mut index = RuleIndex { keyed: Vec::new(), unkeyed: vec![0; rules.len().div_ceil(64)] };
        for (position, rule) in rules.iter().enumerate() {
            match rule.condition.required_text() {
                Some((slot, text)) => {
                    let by_text = match index.keyed.iter().position(|(s, _)| *s == slot) {
                        Some(existing) => &mut index.keyed[existing].1,
                        None => {
                            index.keyed.push((slot, HashMap::new()));
                            &mut index.keyed.last_mut().expect("just pushed").1
                        }
                    };
                    by_text.entry(text.to_string()).or_default().push(position);
                }
                None => index.unkeyed[position / 64] |= 1 << (position % 64),
            }
        }
        index
    }
}

/// One rule file to load.
#[derive(Debug, Clone)]
pub struct Source {
    pub name: String,
    pub text: String,
}

/// Loading always yields every diagnostic; a rule set only when there is no error.
#[derive(Debug)]
pub struct Loaded {
    pub ruleset: Option<RuleSet>,
    pub diagnostics: Vec<Diagnostic>,
}

impl Loaded {
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics.iter().filter(|d| d.severity == crate::diagnostic::Severity::Error)
    }
}

/// Parses, checks and compiles rule files together.
pub fn load(sources: &[Source], schema: &Schema) -> Loaded {
    let mut diagnostics = Vec::new();
    let mut rules = Vec::new();
    let mut tests = Vec::new();
    let mut names = Vec::new();
    let mut seen_rules: HashMap<String, (String, usize)> = HashMap::new();
    for source in sources {
        let (tree, syntax_diagnostics) = syntax::parse(&source.name, &source.text);
        diagnostics.extend(syntax_diagnostics);
        let text = SourceText::new(&source.name, &source.text);
        let mut checker = Checker { file: &source.name, source: &text, schema, diagnostics: &mut diagnostics };
        names.extend(tree.name.clone());
        for rule in &tree.rules {
            let line = text.line_of(rule.span.start);
            if let Some((file, first)) = seen_rules.get(&rule.name) {
                let message = format!("another rule is named \"{}\" ({file}:{first}); explanations would be ambiguous", rule.name);
                checker.warn(rule.span, message);
            } else {
                seen_rules.insert(rule.name.clone(), (source.name.clone(), line));
            }
            if let Some(compiled) = checker.rule(rule) {
                rules.push(compiled);
            }
        }
        for test in &tree.tests {
            if let Some(compiled) = checker.test(test) {
                tests.push(compiled);
            }
        }
        warn_unreachable(&tree, &mut checker);
    }
    let failed = diagnostics.iter().any(|d| d.severity == crate::diagnostic::Severity::Error);
    // Highest priority first; ties keep file order, so the trace reads like the files.
    rules.sort_by_key(|rule: &CompiledRule| std::cmp::Reverse(rule.priority));
    let ruleset = (!failed).then(|| RuleSet {
        name: if names.is_empty() { "rules".to_string() } else { names.join(" + ") },
        version: version_of(sources),
        schema: schema.clone(),
        index: RuleIndex::build(&rules),
        prefilters: rules.iter().map(|rule| Prefilter::of(&rule.condition)).collect(),
        rules,
        tests,
    });
    Loaded { ruleset, diagnostics }
}

/// FNV-1a of every file name and text: stable across builds and platforms.
fn version_of(sources: &[Source]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for source in sources {
        for byte in source.name.bytes().chain([0]).chain(source.text.bytes()).chain([0]) {
            hash ^= byte as u64;
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{:012x}", hash >> 16)
}

struct Checker<'a> {
    file: &'a str,
    source: &'a SourceText<'a>,
    schema: &'a Schema,
    diagnostics: &'a mut Vec<Diagnostic>,
}

impl Checker<'_> {
    fn error(&mut self, span: Span, message: impl Into<String>) {
        self.diagnostics.push(Diagnostic::error(self.source, span, message));
    }

    fn warn(&mut self, span: Span, message: impl Into<String>) {
        self.diagnostics.push(Diagnostic::warning(self.source, span, message));
    }

    fn field(&mut self, field: &FieldRef) -> Option<(usize, Type)> {
        match self.schema.slot(&field.name) {
            Some(slot) => Some((slot, self.schema.ty(slot))),
            None => {
                let names = self.schema.fields.iter().map(|(name, _)| name.as_ref());
                let diagnostic = Diagnostic::error(self.source, field.span, format!("unknown field `{}`", field.name));
                let diagnostic = match suggest(&field.name, names) {
                    Some(known) => diagnostic.with_hint(format!("did you mean `{known}`?")),
                    None => diagnostic.with_hint("see the list of fields in docs/rules.md"),
                };
                self.diagnostics.push(diagnostic);
                None
            }
        }
    }

    fn rule(&mut self, rule: &syntax::Rule) -> Option<CompiledRule> {
        let mut reads = Vec::new();
        let condition = self.condition(&rule.condition, rule.span, &mut reads);
        let effect = match &rule.action {
            Action::Deny(reason) => Some(Effect::Deny(reason.clone())),
            Action::Hold(units) | Action::Cap(units) if *units < 0 => {
                self.error(rule.span, format!("`{}` needs a number of units of 0 or more, not {units}", rule.action));
                None
            }
            Action::Hold(units) => Some(Effect::Hold(*units)),
            Action::Cap(units) => Some(Effect::Cap(*units)),
            Action::Require { field, op, threshold } => match self.field(field) {
                Some((slot, Type::Number)) => {
                    reads.push(slot);
                    Some(Effect::Require { slot, op: *op, threshold: *threshold })
                }
                Some((_, ty)) => {
                    self.error(field.span, format!("`require` needs a number field; `{}` is {}", field.name, ty.article()));
                    None
                }
                None => None,
            },
        };
        reads.sort();
        reads.dedup();
        Some(CompiledRule {
            file: self.file.to_string(),
            name: rule.name.as_str().into(),
            priority: rule.priority,
            text: rule.action.to_string().into(),
            condition: condition?,
            effect: effect?,
            reads,
        })
    }

    fn condition(&mut self, expr: &Expr, rule_span: Span, reads: &mut Vec<usize>) -> Option<Cond> {
        match expr {
            Expr::Or(parts) | Expr::And(parts) => {
                let compiled: Vec<Option<Cond>> = parts.iter().map(|p| self.condition(p, rule_span, reads)).collect();
                let compiled: Option<Vec<Cond>> = compiled.into_iter().collect();
                Some(if matches!(expr, Expr::Or(_)) { Cond::Or(compiled?) } else { Cond::And(compiled?) })
            }
            Expr::Not(inner) => Some(Cond::Not(Box::new(self.condition(inner, rule_span, reads)?))),
            Expr::Bool(value) => Some(Cond::Const(*value)),
            Expr::Field(field) => {
                let (slot, ty) = self.field(field)?;
                reads.push(slot);
                if ty != Type::Bool {
                    let message = format!("`{}` is {}, not true/false: compare it, e.g. `{} == …`", field.name, ty.article(), field.name);
                    self.error(field.span, message);
                    return None;
                }
                Some(Cond::Field(slot))
            }
            Expr::StartsWith { field, prefix } => {
                let (slot, ty) = self.field(field)?;
                reads.push(slot);
                if ty != Type::Text {
                    self.error(field.span, format!("`starts with` needs a text field; `{}` is {}", field.name, ty.article()));
                    return None;
                }
                Some(Cond::StartsWith { slot, prefix: prefix.clone() })
            }
            Expr::In { field, list, negated } => {
                let (slot, ty) = self.field(field)?;
                reads.push(slot);
                let mut ok = true;
                for literal in list {
                    let value = Value::of(literal);
                    if value.type_of() != ty {
                        let message = format!("`{}` is {}, but the list holds {value}, which is {}", field.name, ty.article(), value.type_of().article());
                        self.error(field.span, message);
                        ok = false;
                        break;
                    }
                }
                if list.is_empty() {
                    self.warn(field.span, format!("`{} in []` is never true", field.name));
                }
                ok.then(|| Cond::In { slot, list: list.iter().map(Value::of).collect(), negated: *negated })
            }
            Expr::Compare { left, op, right } => {
                let left_term = self.term(left, reads);
                let right_term = self.term(right, reads);
                let ((left_term, left_ty), (right_term, right_ty)) = (left_term?, right_term?);
                let span = match (left, right) {
                    (Operand::Field(field), _) | (_, Operand::Field(field)) => field.span,
                    _ => rule_span,
                };
                if matches!((&left_term, &right_term), (Term::Const(_), Term::Const(_))) {
                    self.error(span, format!("`{left} {op} {right}` compares two constants: use a field"));
                    return None;
                }
                if left_ty != right_ty {
                    let message = format!("`{left} {op} {right}` compares {} with {}", left_ty.article(), right_ty.article());
                    self.error(span, message);
                    return None;
                }
                if left_ty != Type::Number && !matches!(op, Comparator::Eq | Comparator::Ne) {
                    self.error(span, format!("{} can only be compared with == or !=, not {op}", left_ty.article()));
                    return None;
                }
                Some(match (left_term, *op, right_term) {
                    (Term::Slot(slot), op, Term::Const(Value::Number(value))) => Cond::NumberConst { slot, op, value },
                    (Term::Slot(slot), Comparator::Eq | Comparator::Ne, Term::Const(Value::Text(value))) => {
                        Cond::TextEquals { slot, value: value.to_string(), equal: *op == Comparator::Eq }
                    }
                    (left, op, right) => Cond::Compare { left, op, right },
                })
            }
        }
    }

    fn term(&mut self, operand: &Operand, reads: &mut Vec<usize>) -> Option<(Term, Type)> {
        match operand {
            Operand::Literal(literal) => {
                let value = Value::of(literal);
                let ty = value.type_of();
                Some((Term::Const(value), ty))
            }
            Operand::Field(field) => {
                let (slot, ty) = self.field(field)?;
                reads.push(slot);
                Some((Term::Slot(slot), ty))
            }
        }
    }

    fn test(&mut self, test: &syntax::Test) -> Option<RuleTest> {
        let mut facts = Facts::new(self.schema);
        let mut ok = true;
        for (field, literal) in &test.given {
            let Some((slot, ty)) = self.field(field) else {
                ok = false;
                continue;
            };
            let value = Value::of(literal);
            if value.type_of() != ty {
                self.error(field.span, format!("`{}` is {}, but the test gives it {value}", field.name, ty.article()));
                ok = false;
            }
            facts.set(slot, value);
        }
        // A test states what it needs; the request quantity defaults to one unit.
        if let Some(slot) = self.schema.slot("qty") {
            if facts.get(slot).is_none() {
                facts.set(slot, Value::Number(1.0));
            }
        }
        ok.then(|| RuleTest {
            name: test.name.clone(),
            file: self.file.to_string(),
            line: self.source.line_of(test.span.start),
            facts,
            expect: test.expect.clone(),
        })
    }
}

/// Warns about rules that can never fire (their condition contradicts itself) or never change an
/// answer (an earlier deny fires whenever they do).
fn warn_unreachable(tree: &RuleFile, checker: &mut Checker) {
    // condition text → the first rule that denies whenever it holds
    let mut denied_when: HashMap<String, String> = HashMap::new();
    for rule in &tree.rules {
        if let Some(reason) = contradiction(&rule.condition) {
            checker.warn(rule.span, format!("rule \"{}\" can never fire: {reason}", rule.name));
            continue;
        }
        let condition = rule.condition.to_string();
        if let Some(denier) = denied_when.get("true").or_else(|| denied_when.get(&condition)) {
            let message = format!("rule \"{}\" never changes an answer: rule \"{denier}\" denies whenever it fires", rule.name);
            checker.warn(rule.span, message);
        }
        if matches!(rule.action, Action::Deny(_)) {
            denied_when.entry(condition).or_insert_with(|| rule.name.clone());
        }
    }
}

/// Why a conjunction can never hold, if it cannot: two bounds on one number field that leave no
/// value, or one text field required to equal two different texts.
fn contradiction(expr: &Expr) -> Option<String> {
    let parts: Vec<&Expr> = match expr {
        Expr::And(parts) => parts.iter().collect(),
        Expr::Bool(false) => return Some("its condition is `false`".to_string()),
        other => vec![other],
    };
    let mut bounds: HashMap<&str, (f64, bool, f64, bool)> = HashMap::new(); // low, inclusive, high, inclusive
    let mut equal_texts: HashMap<&str, &str> = HashMap::new();
    for part in &parts {
        let Expr::Compare { left: Operand::Field(field), op, right: Operand::Literal(literal) } = part else { continue };
        match literal {
            Literal::Number(value) => {
                let bound = bounds.entry(field.name.as_str()).or_insert((f64::NEG_INFINITY, false, f64::INFINITY, false));
                let value = *value;
                match op {
                    Comparator::Gt if value >= bound.0 => (bound.0, bound.1) = (value, false),
                    Comparator::Ge if value > bound.0 => (bound.0, bound.1) = (value, true),
                    Comparator::Lt if value <= bound.2 => (bound.2, bound.3) = (value, false),
                    Comparator::Le if value < bound.2 => (bound.2, bound.3) = (value, true),
                    Comparator::Eq => {
                        if value > bound.0 || (value == bound.0 && bound.1) {
                            (bound.0, bound.1) = (value, true);
                        }
                        if value < bound.2 || (value == bound.2 && bound.3) {
                            (bound.2, bound.3) = (value, true);
                        }
                        if value < bound.0 || value > bound.2 {
                            (bound.0, bound.2) = (f64::INFINITY, f64::NEG_INFINITY);
                        }
                    }
                    _ => {}
                }
                let (low, low_inclusive, high, high_inclusive) = *bound;
                if low > high || (low == high && !(low_inclusive && high_inclusive)) {
                    return Some(format!("no value of `{}` satisfies all its comparisons", field.name));
                }
            }
            Literal::Text(text) if *op == Comparator::Eq => {
                if let Some(previous) = equal_texts.insert(field.name.as_str(), text.as_str()) {
                    if previous != text {
                        return Some(format!("`{}` cannot be both {previous:?} and {text:?}", field.name));
                    }
                }
            }
            _ => {}
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------
// Evaluation

/// A rule that fired, and the facts it saw.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Fired {
    pub rule: Arc<str>,
    pub priority: i64,
    pub action: Arc<str>,
    /// `field = value` for every fact the rule read (`unknown` when missing).
    pub saw: Vec<Seen>,
}

/// A fact a rule read, shown as `field = value` (`unknown` when missing). Kept as data and
/// formatted only when an answer is rendered.
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    pub field: Arc<str>,
    pub value: Option<Value>,
}

impl std::fmt::Display for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.value {
            Some(value) => write!(f, "{} = {value}", self.field),
            None => write!(f, "{} = unknown", self.field),
        }
    }
}

impl serde::Serialize for Seen {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// What the rules decided for one request at one node.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Evaluation {
    /// The reason of the first deny, by priority.
    pub denied: Option<String>,
    /// Units held back: every hold adds up.
    pub hold: i64,
    /// Most units that may be promised: the smallest cap.
    pub cap: Option<i64>,
    /// Rules that fired, by priority.
    pub fired: Vec<Fired>,
}

impl Evaluation {
    /// Units that may be promised out of `atp`.
    pub fn units(&self, atp: i64) -> i64 {
        if self.denied.is_some() {
            return 0;
        }
        let units = (atp - self.hold).max(0);
        self.cap.map_or(units, |cap| units.min(cap))
    }
}

impl RuleSet {
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// How many rules each source file holds (files without rules are not listed).
    pub fn rules_per_file(&self) -> std::collections::BTreeMap<String, usize> {
        let mut counts = std::collections::BTreeMap::new();
        for rule in &self.rules {
            *counts.entry(rule.file.clone()).or_insert(0) += 1;
        }
        counts
    }

    pub fn facts(&self) -> Facts {
        Facts::new(&self.schema)
    }

    /// Applies every rule: any deny wins, holds add up, caps take the minimum.
    ///
    /// Only rules that can fire are looked at: a rule whose condition requires a text field to
    /// equal a constant is filed under that constant, so a request visits just the rules filed
    /// under its own facts (plus the rules that cannot be filed), in priority order.
    pub fn evaluate(&self, facts: &Facts) -> Evaluation {
        let mut candidates = self.index.unkeyed.clone();
        for (slot, by_text) in &self.index.keyed {
            if let Some(Value::Text(text)) = facts.get(*slot) {
                for &rule in by_text.get(&**text).into_iter().flatten() {
                    candidates[rule / 64] |= 1 << (rule % 64);
                }
            }
        }
        let mut evaluation = Evaluation::default();
        for (word_index, mut word) in candidates.into_iter().enumerate() {
            while word != 0 {
                let rule = word_index * 64 + word.trailing_zeros() as usize;
                word &= word - 1;
                if self.prefilters[rule].may_hold(facts) {
                    self.apply(&self.rules[rule], facts, &mut evaluation);
                }
            }
        }
        evaluation
    }

    /// Every rule, without the index: what [`RuleSet::evaluate`] must agree with.
    #[cfg(test)]
    pub(crate) fn evaluate_every_rule(&self, facts: &Facts) -> Evaluation {
        self.evaluate_rules(facts, self.rules.iter())
    }

    fn evaluate_rules<'a>(&'a self, facts: &Facts, rules: impl Iterator<Item = &'a CompiledRule>) -> Evaluation {
        let mut evaluation = Evaluation::default();
        for rule in rules {
            self.apply(rule, facts, &mut evaluation);
        }
        evaluation
    }

    fn apply(&self, rule: &CompiledRule, facts: &Facts, evaluation: &mut Evaluation) {
        {
            let fires = match &rule.effect {
                Effect::Require { slot, op, threshold } => {
                    rule.condition.eval(facts) == Some(true)
                        && compare_numbers(facts.get(*slot), *op, *threshold) != Some(true)
                }
                _ => rule.condition.eval(facts) == Some(true),
            };
            if !fires {
                return;
            }
            match &rule.effect {
                Effect::Deny(reason) => {
                    evaluation.denied.get_or_insert_with(|| reason.clone());
                }
                Effect::Require { slot, op, threshold } => {
                    let reason = format!("{} {op} {threshold} is required", self.schema.name(*slot));
                    evaluation.denied.get_or_insert(reason);
                }
                Effect::Hold(units) => evaluation.hold = evaluation.hold.saturating_add(*units),
                Effect::Cap(units) => evaluation.cap = Some(evaluation.cap.map_or(*units, |cap| cap.min(*units))),
            }
            evaluation.fired.push(Fired {
                rule: rule.name.clone(),
                priority: rule.priority,
                action: rule.text.clone(),
                saw: rule
                    .reads
                    .iter()
                    .map(|slot| Seen { field: self.schema.fields[*slot].0.clone(), value: facts.get(*slot).cloned() })
                    .collect(),
            });
        }
    }

    /// Runs the `test` blocks, each against the rules of its own file (so a file's tests say
    /// what that file does, whatever else is loaded beside it).
    pub fn run_tests(&self) -> Vec<TestResult> {
        self.tests
            .iter()
            .map(|test| {
                let evaluation = self.evaluate_rules(&test.facts, self.rules.iter().filter(|rule| rule.file == test.file));
                let atp = self.schema.slot("atp").and_then(|slot| match test.facts.get(slot) {
                    Some(Value::Number(atp)) => Some(*atp as i64),
                    _ => None,
                });
                let failures = test
                    .expect
                    .iter()
                    .filter_map(|outcome| {
                        let (holds, got) = match outcome {
                            Outcome::Deny => (evaluation.denied.is_some(), "allowed".to_string()),
                            Outcome::Allow => (evaluation.denied.is_none(), format!("denied: {}", evaluation.denied.clone().unwrap_or_default())),
                            Outcome::Hold(units) => (evaluation.hold == *units, format!("hold {}", evaluation.hold)),
                            Outcome::Cap(units) => (
                                evaluation.cap == Some(*units),
                                evaluation.cap.map_or("no cap".to_string(), |cap| format!("cap {cap}")),
                            ),
                            Outcome::Units(units) => {
                                let got = evaluation.units(atp.unwrap_or(0));
                                (got == *units, format!("units {got}"))
                            }
                        };
                        (!holds).then(|| format!("expected {outcome}, got {got}"))
                    })
                    .collect();
                TestResult { name: test.name.clone(), file: test.file.clone(), line: test.line, failures, fired: evaluation.fired }
            })
            .collect()
    }
}

#[derive(Debug, Clone)]
pub struct TestResult {
    pub name: String,
    pub file: String,
    pub line: usize,
    pub failures: Vec<String>,
    pub fired: Vec<Fired>,
}

impl TestResult {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

fn compare_numbers(value: Option<&Value>, op: Comparator, threshold: f64) -> Option<bool> {
    match value {
        Some(Value::Number(number)) => Some(apply(op, number.partial_cmp(&threshold)?)),
        _ => None,
    }
}

fn apply(op: Comparator, ordering: std::cmp::Ordering) -> bool {
    use std::cmp::Ordering::*;
    match op {
        Comparator::Eq => ordering == Equal,
        Comparator::Ne => ordering != Equal,
        Comparator::Lt => ordering == Less,
        Comparator::Le => ordering != Greater,
        Comparator::Gt => ordering == Greater,
        Comparator::Ge => ordering != Less,
    }
}

impl Term {
    fn value<'a>(&'a self, facts: &'a Facts) -> Option<&'a Value> {
        match self {
            Term::Slot(slot) => facts.get(*slot),
            Term::Const(value) => Some(value),
        }
    }
}

impl Cond {
    /// A text field the condition requires to equal a constant, if any: the condition can only
    /// be true when that fact is that text.
    fn required_text(&self) -> Option<(usize, &str)> {
        match self {
            Cond::TextEquals { slot, value, equal: true } => Some((*slot, value.as_str())),
            Cond::Compare { left: Term::Const(Value::Text(text)), op: Comparator::Eq, right: Term::Slot(slot) } => {
                Some((*slot, &**text))
            }
            Cond::And(parts) => parts.iter().find_map(Cond::required_text),
            _ => None,
        }
    }

    /// Kleene `and` (`decisive` = false) or `or` (true): the first part with the decisive value
    /// settles it; otherwise it is unknown if any part is.
    fn kleene(parts: &[Cond], facts: &Facts, decisive: bool) -> Option<bool> {
        let mut result = Some(!decisive);
        for part in parts {
            match part.eval(facts) {
                Some(value) if value == decisive => return Some(decisive),
                None => result = None,
                Some(_) => {}
            }
        }
        result
    }

    /// Three-valued: `None` when a fact it needs is unknown.
    fn eval(&self, facts: &Facts) -> Option<bool> {
        match self {
            Cond::Const(value) => Some(*value),
            Cond::Field(slot) => match facts.get(*slot) {
                Some(Value::Bool(value)) => Some(*value),
                _ => None,
            },
            Cond::Not(inner) => inner.eval(facts).map(|value| !value),
            Cond::And(parts) => Cond::kleene(parts, facts, false),
            Cond::Or(parts) => Cond::kleene(parts, facts, true),
            Cond::NumberConst { slot, op, value } => match facts.get(*slot)? {
                Value::Number(number) => Some(apply(*op, number.partial_cmp(value)?)),
                _ => None,
            },
            Cond::TextEquals { slot, value, equal } => match facts.get(*slot)? {
                Value::Text(text) => Some((**text == **value) == *equal),
                _ => None,
            },
            Cond::Compare { left, op, right } => {
                let ordering = match (left.value(facts)?, right.value(facts)?) {
                    (Value::Number(a), Value::Number(b)) => a.partial_cmp(b)?,
                    (Value::Text(a), Value::Text(b)) => a.cmp(b),
                    (Value::Bool(a), Value::Bool(b)) => a.cmp(b),
                    _ => return None,
                };
                Some(apply(*op, ordering))
            }
            Cond::In { slot, list, negated } => {
                let value = facts.get(*slot)?;
                Some(list.contains(value) != *negated)
            }
            Cond::StartsWith { slot, prefix } => match facts.get(*slot)? {
                Value::Text(text) => Some(text.starts_with(prefix.as_str())),
                _ => None,
            },
        }
    }
}
