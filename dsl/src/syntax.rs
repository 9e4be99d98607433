//! Rule files → syntax tree. Parsing never fails: it returns the tree of every item that parsed
//! and a diagnostic for every item that did not. Items (`ruleset`, `rule`, `test`) start at a line
//! whose first word is their keyword; each is parsed on its own, so one mistake hides nothing else.

use std::fmt;

use pest::Parser as _;

use crate::diagnostic::{Diagnostic, SourceText, Span};

mod grammar {
    #[derive(pest_derive::Parser)]
    #[grammar = "rules.pest"]
    pub struct Grammar;
}

use grammar::{Grammar, Rule as G};

/// Deepest nesting of parentheses and `not`s a condition may have: deeper input is rejected with
/// a diagnostic before the parser (which recurses) sees it.
pub const MAX_NESTING: usize = 32;

/// Parser steps allowed per byte of an item. The grammar needs far fewer (see the property
/// test `token_soups_parse_in_linear_steps`); the bound turns any super-linear blow-up into a
/// diagnostic instead of a hung server.
pub const STEPS_PER_BYTE: usize = 400;

/// pest's step limit is process-wide: parses take turns so each runs under its own bound.
static PARSER: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn parse_item(text: &str) -> Result<pest::iterators::Pairs<'_, G>, pest::error::Error<G>> {
    parse_item_within(text, STEPS_PER_BYTE)
}

/// Parses one item in at most `steps_per_byte` parser steps per byte (plus a small constant).
pub(crate) fn parse_item_within(text: &str, steps_per_byte: usize) -> Result<pest::iterators::Pairs<'_, G>, pest::error::Error<G>> {
    let _turn = PARSER.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    pest::set_call_limit(std::num::NonZeroUsize::new(steps_per_byte * (text.len() + 16)));
    let parsed = Grammar::parse(G::item, text);
    pest::set_call_limit(None);
    parsed
}

/// Longest rule file accepted, in bytes.
pub const MAX_FILE_BYTES: usize = 4 << 20;

#[derive(Debug, Clone, PartialEq, Default)]
pub struct RuleFile {
    pub name: Option<String>,
    pub rules: Vec<Rule>,
    pub tests: Vec<Test>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub name: String,
    pub priority: i64,
    pub condition: Expr,
    pub action: Action,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Or(Vec<Expr>),
    And(Vec<Expr>),
    Not(Box<Expr>),
    Compare { left: Operand, op: Comparator, right: Operand },
    In { field: FieldRef, list: Vec<Literal>, negated: bool },
    StartsWith { field: FieldRef, prefix: String },
    Field(FieldRef),
    Bool(bool),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    Field(FieldRef),
    Literal(Literal),
}

#[derive(Debug, Clone, PartialEq)]
pub struct FieldRef {
    pub name: String,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Number(f64),
    Text(String),
    Bool(bool),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparator {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Deny(String),
    Hold(i64),
    Cap(i64),
    Require { field: FieldRef, op: Comparator, threshold: f64 },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Test {
    pub name: String,
    pub given: Vec<(FieldRef, Literal)>,
    pub expect: Vec<Outcome>,
    pub span: Span,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Deny,
    Allow,
    Hold(i64),
    Cap(i64),
    Units(i64),
}

/// Parses a whole file. `file` names it in diagnostics.
pub fn parse(file: &str, source: &str) -> (RuleFile, Vec<Diagnostic>) {
    let text_index = SourceText::new(file, source);
    let mut tree = RuleFile::default();
    let mut diagnostics = Vec::new();
    if source.len() > MAX_FILE_BYTES {
        let span = Span::new(0, 0);
        let message = format!("the file is {} bytes; rule files may have at most {MAX_FILE_BYTES}", source.len());
        diagnostics.push(Diagnostic::error(&text_index, span, message));
        return (tree, diagnostics);
    }
    for (start, end) in items(source) {
        let text = &source[start..end];
        if let Some(offset) = too_deep(text) {
            let span = Span::new(start + offset, start + offset + 1);
            let message = format!("conditions may nest at most {MAX_NESTING} levels deep; split this rule");
            diagnostics.push(Diagnostic::error(&text_index, span, message));
            continue;
        }
        match parse_item(text) {
            Ok(mut pairs) => {
                let item = pairs.next().expect("item").into_inner().next().expect("item content");
                match item.as_rule() {
                    G::header => {
                        let name = unquote(item.into_inner().nth(1).expect("header name"));
                        if tree.name.replace(name).is_some() {
                            let span = Span::new(start, start + "ruleset".len());
                            diagnostics.push(Diagnostic::error(&text_index, span, "a file has at most one `ruleset` header"));
                        }
                    }
                    G::rule => tree.rules.push(build_rule(item, start)),
                    G::test => tree.tests.push(build_test(item, start)),
                    other => unreachable!("item content {other:?}; this is a bug"),
                }
            }
            Err(error) => diagnostics.push(syntax_error(&text_index, start, text, error)),
        }
    }
    (tree, diagnostics)
}

/// Byte ranges of the items of a file: each starts at a line whose first word is an item
/// keyword (or at the first non-blank, non-comment text) and ends where the next starts.
fn items(source: &str) -> Vec<(usize, usize)> {
    let mut starts = Vec::new();
    let mut offset = 0;
    for line in source.split_inclusive('\n') {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        let first_word: String = trimmed.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        let is_item = matches!(first_word.as_str(), "rule" | "test" | "ruleset");
        let is_text = !trimmed.trim().is_empty() && !trimmed.starts_with('#') && !trimmed.starts_with("//");
        if is_item || (starts.is_empty() && is_text) {
            starts.push(offset + indent);
        }
        offset += line.len();
    }
    let mut ranges: Vec<(usize, usize)> = starts.windows(2).map(|pair| (pair[0], pair[1])).collect();
    if let Some(&last) = starts.last() {
        ranges.push((last, source.len()));
    }
    ranges
}

/// Where nesting first goes past [`MAX_NESTING`], if it does.
fn too_deep(text: &str) -> Option<usize> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut previous_word_end = 0;
    let bytes = text.as_bytes();
    for (index, &byte) in bytes.iter().enumerate() {
        match byte {
            b'"' if index == 0 || bytes[index - 1] != b'\\' => in_string = !in_string,
            b'(' if !in_string => depth += 1,
            b')' if !in_string => depth = depth.saturating_sub(1),
            b'n' if !in_string && text[index..].starts_with("not") && index >= previous_word_end => {
                // `not not not …` nests as deeply as parentheses do
                let before = index.checked_sub(1).map(|i| bytes[i]);
                let after = bytes.get(index + 3);
                let word = before.is_none_or(|b| !b.is_ascii_alphanumeric() && b != b'_')
                    && after.is_none_or(|b| !b.is_ascii_alphanumeric() && *b != b'_');
                if word {
                    depth += 1;
                    previous_word_end = index + 3;
                }
            }
            b'\n' if !in_string => {}
            _ => {}
        }
        if depth > MAX_NESTING {
            return Some(index);
        }
    }
    None
}

type Pair<'a> = pest::iterators::Pair<'a, G>;

fn span(pair: &Pair, offset: usize) -> Span {
    let span = pair.as_span();
    Span::new(offset + span.start(), offset + span.end())
}

fn unquote(pair: Pair) -> String {
    let text = pair.into_inner().next().map(|text| text.as_str()).unwrap_or("");
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some(other) => out.push(other),
                None => {}
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn integer(pair: Pair) -> i64 {
    // The grammar admits only digits; an overflowing number saturates and the checker reports it.
    pair.as_str().parse().unwrap_or(if pair.as_str().starts_with('-') { i64::MIN } else { i64::MAX })
}

fn field(pair: Pair, offset: usize) -> FieldRef {
    FieldRef { name: pair.as_str().to_string(), span: span(&pair, offset) }
}

fn literal(pair: Pair) -> Literal {
    match pair.as_rule() {
        G::number => Literal::Number(pair.as_str().parse().unwrap_or(f64::NAN)),
        G::string => Literal::Text(unquote(pair)),
        G::boolean => Literal::Bool(pair.as_str().starts_with("true")),
        other => unreachable!("literal {other:?}; this is a bug"),
    }
}

fn comparator(pair: Pair) -> Comparator {
    match pair.as_str() {
        "==" => Comparator::Eq,
        "!=" => Comparator::Ne,
        "<" => Comparator::Lt,
        "<=" => Comparator::Le,
        ">" => Comparator::Gt,
        ">=" => Comparator::Ge,
        other => unreachable!("comparator {other}; this is a bug"),
    }
}

fn build_rule(pair: Pair, offset: usize) -> Rule {
    let rule_span = span(&pair, offset);
    let mut name = String::new();
    let mut priority = 0;
    let mut condition = Expr::Bool(true);
    let mut action = Action::Hold(0);
    for part in pair.into_inner() {
        match part.as_rule() {
            G::string => name = unquote(part),
            G::priority => priority = integer(part.into_inner().nth(1).expect("priority value")),
            G::condition => condition = build_expr(part.into_inner().next().expect("disjunction"), offset),
            G::deny => action = Action::Deny(unquote(part.into_inner().nth(1).expect("reason"))),
            G::hold => action = Action::Hold(integer(part.into_inner().nth(1).expect("units"))),
            G::cap => action = Action::Cap(integer(part.into_inner().nth(1).expect("units"))),
            G::require => {
                let mut inner = part.into_inner().skip(1);
                let field = field(inner.next().expect("field"), offset);
                let op = comparator(inner.next().expect("comparator"));
                let threshold = inner.next().expect("threshold").as_str().parse().unwrap_or(f64::NAN);
                action = Action::Require { field, op, threshold };
            }
            _ => {}
        }
    }
    Rule { name, priority, condition, action, span: rule_span }
}

fn build_expr(pair: Pair, offset: usize) -> Expr {
    match pair.as_rule() {
        G::disjunction | G::conjunction => {
            let is_or = pair.as_rule() == G::disjunction;
            let mut parts: Vec<Expr> = pair
                .into_inner()
                .filter(|p| !matches!(p.as_rule(), G::kw_or | G::kw_and))
                .map(|p| build_expr(p, offset))
                .collect();
            if parts.len() == 1 {
                parts.pop().expect("one part")
            } else if is_or {
                Expr::Or(parts)
            } else {
                Expr::And(parts)
            }
        }
        G::negation => {
            let inner: Vec<Pair> = pair.into_inner().collect();
            let (nots, primary) = inner.split_at(inner.len() - 1);
            let mut expr = build_expr(primary[0].clone(), offset);
            for _ in nots {
                expr = Expr::Not(Box::new(expr));
            }
            expr
        }
        G::group => build_expr(pair.into_inner().next().expect("group content"), offset),
        G::membership => {
            let mut inner = pair.into_inner();
            let field = field(inner.next().expect("field"), offset);
            let negated = inner.next().expect("in").into_inner().count() == 2;
            let list = inner.next().expect("list").into_inner().map(literal).collect();
            Expr::In { field, list, negated }
        }
        G::prefix => {
            let mut inner = pair.into_inner();
            let field = field(inner.next().expect("field"), offset);
            let prefix = unquote(inner.nth(2).expect("prefix"));
            Expr::StartsWith { field, prefix }
        }
        G::comparison => {
            let mut inner = pair.into_inner();
            let operand = |p: Pair| match p.as_rule() {
                G::field => Operand::Field(field(p, offset)),
                _ => Operand::Literal(literal(p)),
            };
            let left = operand(inner.next().expect("left"));
            let op = comparator(inner.next().expect("comparator"));
            let right = operand(inner.next().expect("right"));
            Expr::Compare { left, op, right }
        }
        G::boolean_field => Expr::Field(field(pair.into_inner().next().expect("field"), offset)),
        G::boolean => Expr::Bool(pair.as_str().starts_with("true")),
        other => unreachable!("expression {other:?}; this is a bug"),
    }
}

fn build_test(pair: Pair, offset: usize) -> Test {
    let test_span = span(&pair, offset);
    let mut name = String::new();
    let mut given = Vec::new();
    let mut expect = Vec::new();
    for part in pair.into_inner() {
        match part.as_rule() {
            G::string => name = unquote(part),
            G::assignment => {
                let mut inner = part.into_inner();
                let field = field(inner.next().expect("field"), offset);
                given.push((field, literal(inner.next().expect("value"))));
            }
            G::expect_deny => expect.push(Outcome::Deny),
            G::expect_allow => expect.push(Outcome::Allow),
            G::expect_hold => expect.push(Outcome::Hold(integer(part.into_inner().nth(1).expect("units")))),
            G::expect_cap => expect.push(Outcome::Cap(integer(part.into_inner().nth(1).expect("units")))),
            G::expect_units => expect.push(Outcome::Units(integer(part.into_inner().nth(1).expect("units")))),
            _ => {}
        }
    }
    Test { name, given, expect, span: test_span }
}

/// What the parser expected, in words a merchandiser knows.
fn describe(expected: &G) -> Option<&'static str> {
    Some(match expected {
        G::string | G::text => "a quoted text like \"EU embargo\"",
        G::integer => "a whole number",
        G::number => "a number",
        G::field | G::boolean_field | G::ident => "a field like `sku.hazmat`",
        G::comparator => "a comparison (== != < <= > >=)",
        G::list => "a list like [\"DE\", \"FR\"]",
        G::kw_when => "`when` and a condition",
        G::kw_then => "`then` and an action",
        G::kw_and => "`and`",
        G::kw_or => "`or`",
        G::kw_in | G::negated_in => "`in`",
        G::kw_priority | G::priority => "`priority`",
        G::deny | G::hold | G::cap | G::require | G::kw_deny | G::kw_hold | G::kw_cap | G::kw_require => {
            "an action: deny \"reason\", hold N, cap N or require p_fulfill >= X"
        }
        G::kw_given => "`given` and the facts of the test",
        G::kw_expect => "`expect` and an outcome",
        G::expect_deny | G::expect_allow | G::expect_hold | G::expect_cap | G::expect_units => {
            "an outcome: deny, allow, hold N, cap N or units N"
        }
        G::assignment => "a fact like `region = \"DE\"`",
        G::boolean | G::kw_true | G::kw_false => "true or false",
        G::kw_rule | G::kw_test | G::kw_ruleset | G::header | G::rule | G::test => {
            "`rule`, `test` or `ruleset`"
        }
        G::EOI => "the end of the rule",
        G::group | G::negation | G::not | G::kw_not | G::condition | G::disjunction | G::conjunction => {
            "a condition"
        }
        _ => return None,
    })
}

fn syntax_error(source: &SourceText, offset: usize, text: &str, error: pest::error::Error<G>) -> Diagnostic {
    let position = match error.location {
        pest::error::InputLocation::Pos(position) => position,
        pest::error::InputLocation::Span((start, _)) => start,
    };
    let message = match &error.variant {
        pest::error::ErrorVariant::ParsingError { positives, .. } => {
            // `deny`, `hold` and `cap` are actions after `then` but outcomes after `expect`
            let after_expect = positives.contains(&G::kw_allow) || positives.contains(&G::kw_units);
            let mut wanted: Vec<&str> = if after_expect {
                vec!["an outcome: deny, allow, hold N, cap N or units N"]
            } else {
                positives.iter().filter_map(describe).collect()
            };
            wanted.sort();
            wanted.dedup();
            let found = found_at(text, position);
            match wanted.len() {
                0 => format!("this is not understood here: {found}"),
                1 => format!("expected {}, found {found}", wanted[0]),
                _ => {
                    let last = wanted.pop().expect("several");
                    format!("expected {} or {last}, found {found}", wanted.join(", "))
                }
            }
        }
        pest::error::ErrorVariant::CustomError { message } if message.contains("call limit") => {
            format!("this rule is too complicated to read (over {STEPS_PER_BYTE} parser steps per character); split it")
        }
        pest::error::ErrorVariant::CustomError { message } => message.clone(),
    };
    // underline the word that was not understood
    let skipped = text[position.min(text.len())..].len() - text[position.min(text.len())..].trim_start().len();
    let start = position + skipped;
    let word = text[start.min(text.len())..].find(char::is_whitespace).unwrap_or(text.len() - start.min(text.len()));
    Diagnostic::error(source, Span::new(offset + start, offset + start + word.max(1)), message)
}

fn found_at(text: &str, position: usize) -> String {
    let rest = &text[position.min(text.len())..];
    let word: String = rest.trim_start().chars().take_while(|c| !c.is_whitespace()).take(20).collect();
    if word.is_empty() {
        "the end of the rule".to_string()
    } else {
        format!("`{word}`")
    }
}

// ---------------------------------------------------------------------------------------------
// Printing: the canonical text of a tree; `parse(print(tree)) == tree` (property-tested).

impl fmt::Display for RuleFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(name) = &self.name {
            writeln!(f, "ruleset {}\n", quote(name))?;
        }
        for rule in &self.rules {
            writeln!(f, "{rule}\n")?;
        }
        for test in &self.tests {
            writeln!(f, "{test}\n")?;
        }
        Ok(())
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rule {}", quote(&self.name))?;
        if self.priority != 0 {
            write!(f, " priority {}", self.priority)?;
        }
        write!(f, "\nwhen {}\nthen {}", self.condition, self.action)
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let join = |f: &mut fmt::Formatter<'_>, parts: &[Expr], word: &str| -> fmt::Result {
            for (index, part) in parts.iter().enumerate() {
                if index > 0 {
                    write!(f, " {word} ")?;
                }
                write!(f, "({part})")?;
            }
            Ok(())
        };
        match self {
            Expr::Or(parts) => join(f, parts, "or"),
            Expr::And(parts) => join(f, parts, "and"),
            Expr::Not(inner) => write!(f, "not ({inner})"),
            Expr::Compare { left, op, right } => write!(f, "{left} {op} {right}"),
            Expr::In { field, list, negated } => {
                let items: Vec<String> = list.iter().map(ToString::to_string).collect();
                write!(f, "{} {}in [{}]", field.name, if *negated { "not " } else { "" }, items.join(", "))
            }
            Expr::StartsWith { field, prefix } => write!(f, "{} starts with {}", field.name, quote(prefix)),
            Expr::Field(field) => f.write_str(&field.name),
            Expr::Bool(value) => write!(f, "{value}"),
        }
    }
}

impl fmt::Display for Operand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Operand::Field(field) => f.write_str(&field.name),
            Operand::Literal(literal) => write!(f, "{literal}"),
        }
    }
}

impl fmt::Display for Literal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // whole numbers print without a fraction; everything else round-trips through Debug
            Literal::Number(number) if number.fract() == 0.0 && number.abs() < 1e15 => write!(f, "{}", *number as i64),
            Literal::Number(number) => write!(f, "{number:?}"),
            Literal::Text(text) => f.write_str(&quote(text)),
            Literal::Bool(value) => write!(f, "{value}"),
        }
    }
}

impl fmt::Display for Comparator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Comparator::Eq => "==",
            Comparator::Ne => "!=",
            Comparator::Lt => "<",
            Comparator::Le => "<=",
            Comparator::Gt => ">",
            Comparator::Ge => ">=",
        })
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Deny(reason) => write!(f, "deny {}", quote(reason)),
            Action::Hold(units) => write!(f, "hold {units}"),
            Action::Cap(units) => write!(f, "cap {units}"),
            Action::Require { field, op, threshold } => write!(f, "require {} {op} {threshold:?}", field.name),
        }
    }
}

impl fmt::Display for Test {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let given: Vec<String> = self.given.iter().map(|(field, value)| format!("{} = {value}", field.name)).collect();
        let expect: Vec<String> = self.expect.iter().map(ToString::to_string).collect();
        write!(f, "test {}\ngiven {}\nexpect {}", quote(&self.name), given.join(", "), expect.join(", "))
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Deny => f.write_str("deny"),
            Outcome::Allow => f.write_str("allow"),
            Outcome::Hold(units) => write!(f, "hold {units}"),
            Outcome::Cap(units) => write!(f, "cap {units}"),
            Outcome::Units(units) => write!(f, "units {units}"),
        }
    }
}

fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            other => out.push(other),
        }
    }
    out.push('"');
    out
}
