//! MLflow's search syntax: filters such as
//! `metrics.accuracy > 0.9 and params.lr = '0.01' and attributes.status = 'FINISHED'`, and
//! `order_by` clauses such as `metrics.accuracy DESC`.
//!
//! Parsing happens in two steps. [`parse_filter`] and [`parse_order`] read the syntax every
//! search shares (`entity.key comparator value`, joined by `AND`). Then each search
//! ([`runs`], [`experiments`], [`models`], [`versions`]) checks which keys and comparators
//! it allows and maps them onto SQL expressions, and [`push_where`] and [`push_order`] write
//! them into a query with every value bound, never spliced. Every mistake is a
//! [`SearchError`] that says what to fix, which the API answers as `INVALID_PARAMETER_VALUE`.

use sqlx::{Postgres, QueryBuilder};

use super::MlflowError;

/// A filter or `order_by` clause that cannot be used; the message says why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchError(pub String);

impl From<SearchError> for MlflowError {
    fn from(e: SearchError) -> Self {
        MlflowError::invalid(e.0)
    }
}

type Result<T> = std::result::Result<T, SearchError>;

fn err<T>(msg: impl Into<String>) -> Result<T> {
    Err(SearchError(msg.into()))
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
    Like,
    ILike,
    In,
    NotIn,
    IsNull,
    IsNotNull,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Eq => "=",
            Op::Ne => "!=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Like => "LIKE",
            Op::ILike => "ILIKE",
            Op::In => "IN",
            Op::NotIn => "NOT IN",
            Op::IsNull => "IS NULL",
            Op::IsNotNull => "IS NOT NULL",
        }
    }

    fn sql(self) -> &'static str {
        match self {
            Op::Ne => "<>",
            other => other.as_str(),
        }
    }
}

const NUMBER_OPS: &[Op] = &[Op::Eq, Op::Ne, Op::Gt, Op::Ge, Op::Lt, Op::Le];
const TEXT_OPS: &[Op] = &[Op::Eq, Op::Ne, Op::Like, Op::ILike];
const KEYED_OPS: &[Op] = &[
    Op::Eq,
    Op::Ne,
    Op::Like,
    Op::ILike,
    Op::IsNull,
    Op::IsNotNull,
];
const ID_OPS: &[Op] = &[Op::Eq, Op::Ne, Op::Like, Op::ILike, Op::In, Op::NotIn];

/// A literal on the right of a comparison.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Number(f64),
    Text(String),
    List(Vec<String>),
    /// After `IS NULL` / `IS NOT NULL`.
    None,
}

/// One `entity.key comparator value` clause, before a search gives it a meaning.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    /// The part before the first `.`, if any (`metrics` in `metrics.acc`).
    pub entity: Option<String>,
    pub key: String,
    pub op: Op,
    pub value: Literal,
}

/// One `order_by` clause.
#[derive(Debug, Clone, PartialEq)]
pub struct OrderClause {
    pub entity: Option<String>,
    pub key: String,
    pub ascending: bool,
}

/// A character cursor over a filter.
struct Cursor<'a> {
    text: &'a str,
    pos: usize,
}

fn is_word_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_word(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Characters an unquoted key may hold (`tags.mlflow.source.name`, `metrics.val-loss`);
/// other keys must be quoted with backticks or double quotes.
fn is_key(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | ':' | '/')
}

impl<'a> Cursor<'a> {
    fn new(text: &'a str) -> Self {
        Self { text, pos: 0 }
    }

    fn rest(&self) -> &'a str {
        &self.text[self.pos..]
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.bump();
        }
    }

    fn at_end(&self) -> bool {
        self.rest().is_empty()
    }

    /// What comes next, for messages.
    fn near(&self) -> String {
        let rest = self.rest();
        if rest.is_empty() {
            return "the end".to_owned();
        }
        let cut: String = rest.chars().take(20).collect();
        if cut.len() < rest.len() {
            format!("'{cut}...'")
        } else {
            format!("'{cut}'")
        }
    }

    /// Consumes `kw` (case-insensitively) if it is the next whole word.
    fn keyword(&mut self, kw: &str) -> bool {
        let rest = self.rest();
        let Some(head) = rest.get(..kw.len()) else {
            return false;
        };
        if !head.eq_ignore_ascii_case(kw) || rest[kw.len()..].chars().next().is_some_and(is_word) {
            return false;
        }
        self.pos += kw.len();
        true
    }

    fn take_while(&mut self, f: impl Fn(char) -> bool) -> &'a str {
        let start = self.pos;
        while self.peek().is_some_and(&f) {
            self.bump();
        }
        &self.text[start..self.pos]
    }

    /// A quoted string whose opening quote is next. A doubled or backslash-escaped quote
    /// stands for itself.
    fn quoted(&mut self) -> Result<String> {
        let start = self.pos;
        let quote = self.bump().unwrap_or('\'');
        let mut out = String::new();
        loop {
            match self.bump() {
                None => {
                    return err(format!(
                        "the string starting at position {start} has no closing {quote}"
                    ));
                }
                Some('\\') if self.peek() == Some(quote) => {
                    self.bump();
                    out.push(quote);
                }
                Some(c) if c == quote => {
                    if self.peek() == Some(quote) {
                        self.bump();
                        out.push(quote);
                    } else {
                        return Ok(out);
                    }
                }
                Some(c) => out.push(c),
            }
        }
    }

    /// `entity.key`, `key`, `` entity.`quoted key` `` or `entity."quoted key"`.
    fn identifier(&mut self) -> Result<(Option<String>, String)> {
        let first = match self.peek() {
            Some('`' | '"') => self.quoted()?,
            Some(c) if is_word_start(c) => self.take_while(is_word).to_owned(),
            _ => {
                return err(format!(
                    "expected an identifier such as metrics.accuracy, params.lr, tags.x or \
                     attributes.status at position {}, found {}",
                    self.pos,
                    self.near()
                ));
            }
        };
        if self.peek() != Some('.') {
            return Ok((None, first));
        }
        self.bump();
        let key = match self.peek() {
            Some('`' | '"') => self.quoted()?,
            Some(c) if is_key(c) => self.take_while(is_key).to_owned(),
            _ => {
                return err(format!(
                    "expected a key after '{first}.' at position {}; quote keys with spaces or \
                     other characters in backticks (`my key`)",
                    self.pos
                ));
            }
        };
        if key.is_empty() {
            return err(format!("'{first}.' needs a key"));
        }
        Ok((Some(first), key))
    }

    fn op(&mut self, after: &str) -> Result<Op> {
        let rest = self.rest();
        for (sym, op) in [
            ("!=", Op::Ne),
            (">=", Op::Ge),
            ("<=", Op::Le),
            ("==", Op::Eq),
            ("<>", Op::Ne),
            ("=", Op::Eq),
            (">", Op::Gt),
            ("<", Op::Lt),
        ] {
            if rest.starts_with(sym) {
                if matches!(sym, "==" | "<>") {
                    return err(format!(
                        "'{sym}' is not a comparator; use {}",
                        if sym == "==" { "'='" } else { "'!='" }
                    ));
                }
                self.pos += sym.len();
                return Ok(op);
            }
        }
        if self.keyword("LIKE") {
            return Ok(Op::Like);
        }
        if self.keyword("ILIKE") {
            return Ok(Op::ILike);
        }
        if self.keyword("IN") {
            return Ok(Op::In);
        }
        if self.keyword("NOT") {
            self.skip_ws();
            if self.keyword("IN") {
                return Ok(Op::NotIn);
            }
            return err(format!(
                "expected IN after NOT following '{after}', found {}",
                self.near()
            ));
        }
        if self.keyword("IS") {
            self.skip_ws();
            let negated = self.keyword("NOT");
            self.skip_ws();
            if self.keyword("NULL") {
                return Ok(if negated { Op::IsNotNull } else { Op::IsNull });
            }
            return err(format!(
                "expected NULL or NOT NULL after IS following '{after}', found {}",
                self.near()
            ));
        }
        err(format!(
            "expected a comparator (=, !=, >, >=, <, <=, LIKE, ILIKE, IN, NOT IN, IS NULL, \
             IS NOT NULL) after '{after}', found {}",
            self.near()
        ))
    }

    fn number(&mut self) -> Result<f64> {
        let start = self.pos;
        if matches!(self.peek(), Some('+' | '-')) {
            self.bump();
        }
        self.take_while(|c| c.is_ascii_digit() || c == '.');
        if matches!(self.peek(), Some('e' | 'E')) {
            self.bump();
            if matches!(self.peek(), Some('+' | '-')) {
                self.bump();
            }
            self.take_while(|c| c.is_ascii_digit());
        }
        let text = &self.text[start..self.pos];
        match text.parse::<f64>() {
            Ok(n) if n.is_finite() && !self.peek().is_some_and(is_word) => Ok(n),
            _ => err(format!(
                "{text}{} is not a number",
                self.take_while(is_word)
            )),
        }
    }

    fn value(&mut self, after: &str, op: Op) -> Result<Literal> {
        if matches!(op, Op::In | Op::NotIn) && self.peek() != Some('(') {
            return err(format!(
                "{} needs a parenthesised list of quoted strings, such as ('a', 'b'), after \
                 '{after}'",
                op.as_str()
            ));
        }
        match self.peek() {
            Some('\'' | '"') => Ok(Literal::Text(self.quoted()?)),
            Some(c) if c.is_ascii_digit() || matches!(c, '-' | '+' | '.') => {
                Ok(Literal::Number(self.number()?))
            }
            Some('(') if matches!(op, Op::In | Op::NotIn) => {
                self.bump();
                let mut items = Vec::new();
                loop {
                    self.skip_ws();
                    match self.peek() {
                        Some('\'' | '"') => items.push(self.quoted()?),
                        _ => {
                            return err(format!(
                                "expected a quoted string in the list after '{after} {}', found {}",
                                op.as_str(),
                                self.near()
                            ));
                        }
                    }
                    self.skip_ws();
                    match self.bump() {
                        Some(',') => continue,
                        Some(')') => return Ok(Literal::List(items)),
                        _ => {
                            return err(format!(
                                "expected ',' or ')' in the list after '{after} {}'",
                                op.as_str()
                            ));
                        }
                    }
                }
            }
            _ => err(format!(
                "expected a value (a quoted string or a number) after '{after} {}', found {}",
                op.as_str(),
                self.near()
            )),
        }
    }
}

fn display(entity: &Option<String>, key: &str) -> String {
    match entity {
        Some(e) => format!("{e}.{key}"),
        None => key.to_owned(),
    }
}

/// Parses a filter: comparisons joined by `AND` (an empty filter has none).
pub fn parse_filter(filter: &str) -> Result<Vec<Comparison>> {
    let wrap = |e: SearchError| SearchError(format!("Invalid filter {filter:?}: {}", e.0));
    let mut c = Cursor::new(filter);
    let mut out = Vec::new();
    c.skip_ws();
    if c.at_end() {
        return Ok(out);
    }
    loop {
        c.skip_ws();
        let (entity, key) = c.identifier().map_err(wrap)?;
        let shown = display(&entity, &key);
        c.skip_ws();
        let op = c.op(&shown).map_err(wrap)?;
        c.skip_ws();
        let value = if matches!(op, Op::IsNull | Op::IsNotNull) {
            Literal::None
        } else {
            c.value(&shown, op).map_err(wrap)?
        };
        out.push(Comparison {
            entity,
            key,
            op,
            value,
        });
        c.skip_ws();
        if c.at_end() {
            return Ok(out);
        }
        if c.keyword("AND") {
            continue;
        }
        if c.keyword("OR") {
            return Err(wrap(SearchError(
                "OR is not supported; MLflow filters combine clauses with AND only".to_owned(),
            )));
        }
        return Err(wrap(SearchError(format!(
            "expected AND or the end of the filter after the clause on '{shown}', found {}",
            c.near()
        ))));
    }
}

/// Parses one `order_by` clause: an identifier, then optionally `ASC` or `DESC`.
pub fn parse_order(clause: &str) -> Result<OrderClause> {
    let wrap = |e: SearchError| SearchError(format!("Invalid order_by clause {clause:?}: {}", e.0));
    let mut c = Cursor::new(clause);
    c.skip_ws();
    let (entity, key) = c.identifier().map_err(wrap)?;
    c.skip_ws();
    let ascending = if c.keyword("DESC") {
        false
    } else {
        c.keyword("ASC");
        true
    };
    c.skip_ws();
    if !c.at_end() {
        return Err(wrap(SearchError(format!(
            "expected ASC, DESC or the end after '{}', found {}",
            display(&entity, &key),
            c.near()
        ))));
    }
    Ok(OrderClause {
        entity,
        key,
        ascending,
    })
}

/// A comparable SQL expression of the searched row.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// A column or an expression of the row's own columns (with its table alias).
    Column(&'static str),
    /// A run's latest value of a metric: the highest step, then the latest timestamp.
    LatestMetric(String),
    /// A run's parameter.
    Param(String),
    /// A run's tag.
    Tag(String),
    /// An experiment's tag.
    ExperimentTag(String),
    /// A column of one of the run's dataset inputs (aliased `di`): the clause holds when any
    /// input matches.
    Dataset(&'static str),
    /// A registered model's tag.
    ModelTag(String),
    /// A model version's tag.
    VersionTag(String),
}

/// What a value is compared with.
#[derive(Debug, Clone, PartialEq)]
pub enum Bound {
    Number(f64),
    Text(String),
    List(Vec<String>),
    None,
}

/// A checked clause, ready for SQL.
#[derive(Debug, Clone, PartialEq)]
pub struct Clause {
    pub expr: Expr,
    pub op: Op,
    pub value: Bound,
}

/// A checked `order_by` clause.
#[derive(Debug, Clone, PartialEq)]
pub struct Order {
    pub expr: Expr,
    pub ascending: bool,
}

/// How a field compares: which comparators it takes and what literal.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Number,
    Text,
    /// A key-value entry (param, tag): text, or absent.
    Keyed,
    /// An id: text, or a list with IN / NOT IN.
    Id,
}

fn check(what: &str, kind: Kind, op: Op, value: Literal) -> Result<Bound> {
    let allowed = match kind {
        Kind::Number => NUMBER_OPS,
        Kind::Text => TEXT_OPS,
        Kind::Keyed => KEYED_OPS,
        Kind::Id => ID_OPS,
    };
    if !allowed.contains(&op) {
        let names: Vec<&str> = allowed.iter().map(|o| o.as_str()).collect();
        return err(format!(
            "'{}' cannot compare {what}; use one of {}",
            op.as_str(),
            names.join(", ")
        ));
    }
    match (kind, value) {
        (Kind::Number, Literal::Number(n)) => Ok(Bound::Number(n)),
        (Kind::Number, _) => err(format!("{what} is compared with a number, such as 0.9")),
        (_, Literal::None) => Ok(Bound::None),
        (_, Literal::Text(s)) if !matches!(op, Op::In | Op::NotIn) => Ok(Bound::Text(s)),
        (_, Literal::List(items)) => Ok(Bound::List(items)),
        _ => err(format!(
            "{what} is compared with a quoted string, such as '0.01'"
        )),
    }
}

fn wrap_filter(filter: &str) -> impl Fn(SearchError) -> SearchError + '_ {
    move |e| SearchError(format!("Invalid filter {filter:?}: {}", e.0))
}

/// MLflow's names for a kind of entity, folded to one.
fn entity_kind(entity: Option<&str>) -> Option<&'static str> {
    let e = entity?.to_ascii_lowercase();
    Some(match e.as_str() {
        "attribute" | "attributes" | "attr" | "run" => "attribute",
        "metric" | "metrics" => "metric",
        "param" | "params" | "parameter" | "parameters" => "param",
        "tag" | "tags" => "tag",
        "dataset" | "datasets" => "dataset",
        _ => "unknown",
    })
}

fn quoted_list(keys: &[&str]) -> String {
    keys.iter()
        .map(|k| format!("'{k}'"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Run searches: `metrics.*`, `params.*`, `tags.*` and the attributes `run_id`, `run_name`,
/// `user_id`, `status`, `start_time`, `end_time`, `artifact_uri` (on runs aliased `r`).
pub mod runs {
    use super::*;

    /// A run's artifact URI, stored or derived from its experiment's location.
    pub const ARTIFACT_URI: &str = "COALESCE(r.artifact_uri, COALESCE(e.artifact_location, \
         'mlflow-artifacts:/' || e.mlflow_id) || '/' || replace(r.id::text, '-', '') || '/artifacts')";
    pub const RUN_ID: &str = "replace(r.id::text, '-', '')";
    pub const START_TIME: &str = "r.start_time";
    const START_MS: &str = "floor(extract(epoch from r.start_time) * 1000)";
    const END_MS: &str = "floor(extract(epoch from r.end_time) * 1000)";

    const ATTRIBUTES: &[&str] = &[
        "run_id",
        "run_name",
        "user_id",
        "status",
        "start_time",
        "end_time",
        "artifact_uri",
    ];

    /// The field an identifier names, its kind, and for ordering, the column to sort by.
    fn field(entity: Option<&str>, key: &str) -> Result<(Expr, Kind, &'static str)> {
        let what = match entity {
            Some(e) => format!("{e}.{key}"),
            None => key.to_owned(),
        };
        match entity_kind(entity) {
            Some("metric") => Ok((Expr::LatestMetric(key.to_owned()), Kind::Number, "")),
            Some("param") => Ok((Expr::Param(key.to_owned()), Kind::Keyed, "")),
            Some("tag") => Ok((Expr::Tag(key.to_owned()), Kind::Keyed, "")),
            Some("dataset") => match key {
                "name" => Ok((Expr::Dataset("di.name"), Kind::Text, "")),
                "digest" => Ok((Expr::Dataset("di.digest"), Kind::Text, "")),
                "context" => Ok((
                    Expr::Dataset("(di.tags ->> 'mlflow.data.context')"),
                    Kind::Text,
                    "",
                )),
                _ => err(format!(
                    "invalid dataset key '{what}'; valid keys are 'name', 'digest' and 'context'"
                )),
            },
            Some("unknown") => err(format!(
                "invalid entity type '{}' in '{what}'; use attributes, metrics, params or tags",
                entity.unwrap_or_default()
            )),
            _ => {
                let (expr, kind, order) = match key {
                    "run_id" => (RUN_ID, Kind::Id, "r.id"),
                    "run_name" | "run name" | "Run name" | "Run Name" => {
                        ("r.name", Kind::Text, "r.name")
                    }
                    "user_id" => ("r.user_id", Kind::Text, "r.user_id"),
                    "status" => ("upper(r.status)", Kind::Text, "upper(r.status)"),
                    "start_time" | "created" | "Created" => (START_MS, Kind::Number, START_TIME),
                    "end_time" => (END_MS, Kind::Number, "r.end_time"),
                    "artifact_uri" => (ARTIFACT_URI, Kind::Text, ARTIFACT_URI),
                    _ => {
                        return err(format!(
                            "invalid attribute key '{key}'; valid keys are {}",
                            quoted_list(ATTRIBUTES)
                        ));
                    }
                };
                Ok((Expr::Column(expr), kind, order))
            }
        }
    }

    /// The normalised form of a run id literal, to compare with [`RUN_ID`].
    fn run_id_text(s: &str) -> String {
        match uuid::Uuid::try_parse(s.trim()) {
            Ok(id) => id.simple().to_string(),
            Err(_) => s.to_owned(),
        }
    }

    pub fn filter(filter: &str) -> Result<Vec<Clause>> {
        let wrap = wrap_filter(filter);
        parse_filter(filter)?
            .into_iter()
            .map(|c| {
                let what = display(&c.entity, &c.key);
                let (expr, kind, _) = field(c.entity.as_deref(), &c.key).map_err(&wrap)?;
                if matches!(c.op, Op::In | Op::NotIn) && kind != Kind::Id {
                    return Err(wrap(SearchError(format!(
                        "'{what}' cannot be compared with a list; only attributes.run_id can"
                    ))));
                }
                let mut value = check(&format!("'{what}'"), kind, c.op, c.value).map_err(&wrap)?;
                if kind == Kind::Id && matches!(c.op, Op::Eq | Op::Ne | Op::In | Op::NotIn) {
                    value = match value {
                        Bound::Text(s) => Bound::Text(run_id_text(&s)),
                        Bound::List(items) => {
                            Bound::List(items.iter().map(|s| run_id_text(s)).collect())
                        }
                        other => other,
                    };
                }
                Ok(Clause {
                    expr,
                    op: c.op,
                    value,
                })
            })
            .collect()
    }

    /// The `order_by` clauses; a run search always ends with start time (newest first) and
    /// run id, so pages are stable.
    pub fn order(clauses: &[String]) -> Result<Vec<Order>> {
        let mut seen = Vec::new();
        let mut out = Vec::new();
        for raw in clauses {
            let o = parse_order(raw)?;
            let (expr, _, sort) = field(o.entity.as_deref(), &o.key)
                .map_err(|e| SearchError(format!("Invalid order_by clause {raw:?}: {}", e.0)))?;
            let expr = match expr {
                Expr::Column(_) => Expr::Column(sort),
                Expr::Dataset(_) => {
                    return err(format!(
                        "Invalid order_by clause {raw:?}: runs cannot be ordered by a dataset"
                    ));
                }
                other => other,
            };
            if seen.contains(&expr) {
                return err(format!("order_by names {raw:?} twice: {clauses:?}"));
            }
            seen.push(expr.clone());
            out.push(Order {
                expr,
                ascending: o.ascending,
            });
        }
        if !seen.contains(&Expr::Column(START_TIME)) {
            out.push(Order {
                expr: Expr::Column(START_TIME),
                ascending: false,
            });
        }
        out.push(Order {
            expr: Expr::Column("r.id"),
            ascending: true,
        });
        Ok(out)
    }
}

/// Experiment searches: `name`, `creation_time`, `last_update_time` and `tags.*` (on
/// experiments aliased `e`).
pub mod experiments {
    use super::*;

    fn field(entity: Option<&str>, key: &str, ordering: bool) -> Result<(Expr, Kind)> {
        match entity_kind(entity) {
            Some("tag") if !ordering => Ok((Expr::ExperimentTag(key.to_owned()), Kind::Text)),
            None | Some("attribute") => match key {
                "name" => Ok((Expr::Column("e.name"), Kind::Text)),
                "creation_time" => Ok((
                    Expr::Column(if ordering {
                        "e.created_at"
                    } else {
                        "floor(extract(epoch from e.created_at) * 1000)"
                    }),
                    Kind::Number,
                )),
                "last_update_time" => Ok((
                    Expr::Column(if ordering {
                        "e.last_update_time"
                    } else {
                        "floor(extract(epoch from e.last_update_time) * 1000)"
                    }),
                    Kind::Number,
                )),
                "experiment_id" if ordering => Ok((Expr::Column("e.mlflow_id"), Kind::Number)),
                _ => err(format!(
                    "invalid attribute key '{key}'; valid keys are {}",
                    if ordering {
                        quoted_list(&["name", "experiment_id", "creation_time", "last_update_time"])
                    } else {
                        quoted_list(&["name", "creation_time", "last_update_time"])
                    }
                )),
            },
            _ => err(format!(
                "invalid entity type '{}'; experiments are searched by attributes{}",
                entity.unwrap_or_default(),
                if ordering { "" } else { " and tags" }
            )),
        }
    }

    pub fn filter(filter: &str) -> Result<Vec<Clause>> {
        let wrap = wrap_filter(filter);
        parse_filter(filter)?
            .into_iter()
            .map(|c| {
                let what = display(&c.entity, &c.key);
                let (expr, kind) = field(c.entity.as_deref(), &c.key, false).map_err(&wrap)?;
                let value = check(&format!("'{what}'"), kind, c.op, c.value).map_err(&wrap)?;
                Ok(Clause {
                    expr,
                    op: c.op,
                    value,
                })
            })
            .collect()
    }

    /// The `order_by` clauses, then MLflow's default: newest first, then by id.
    pub fn order(clauses: &[String]) -> Result<Vec<Order>> {
        let mut out = Vec::new();
        for raw in clauses {
            let o = parse_order(raw)?;
            let (expr, _) = field(o.entity.as_deref(), &o.key, true)
                .map_err(|e| SearchError(format!("Invalid order_by clause {raw:?}: {}", e.0)))?;
            out.push(Order {
                expr,
                ascending: o.ascending,
            });
        }
        out.push(Order {
            expr: Expr::Column("e.created_at"),
            ascending: false,
        });
        out.push(Order {
            expr: Expr::Column("e.mlflow_id"),
            ascending: true,
        });
        Ok(out)
    }
}

/// A tag clause on registered models (`ModelTag`) or versions (`VersionTag`).
fn tag_clause(what: &str, c: &Comparison, expr: fn(String) -> Expr) -> Result<Clause> {
    let value = check(&format!("'{what}'"), Kind::Keyed, c.op, c.value.clone())?;
    Ok(Clause {
        expr: expr(c.key.clone()),
        op: c.op,
        value,
    })
}

/// Registered model searches: `name` (on registered models aliased `m`) and tags.
pub mod models {
    use super::*;

    pub const UPDATED: &str = "GREATEST(m.created_at, \
         (SELECT MAX(created_at) FROM model_versions WHERE model_name = m.name), \
         (SELECT MAX(updated_at) FROM model_aliases WHERE model_name = m.name))";

    pub fn filter(filter: &str) -> Result<Vec<Clause>> {
        let wrap = wrap_filter(filter);
        parse_filter(filter)?
            .into_iter()
            .map(|c| {
                let what = display(&c.entity, &c.key);
                match (entity_kind(c.entity.as_deref()), c.key.as_str()) {
                    (None | Some("attribute"), "name") => {}
                    (Some("tag"), _) => return tag_clause(&what, &c, Expr::ModelTag).map_err(&wrap),
                    _ => {
                        return Err(wrap(SearchError(format!(
                            "invalid search key '{what}'; registered models are searched by 'name' and tags"
                        ))));
                    }
                }
                let value =
                    check(&format!("'{what}'"), Kind::Text, c.op, c.value).map_err(&wrap)?;
                Ok(Clause {
                    expr: Expr::Column("m.name"),
                    op: c.op,
                    value,
                })
            })
            .collect()
    }

    pub fn order(clauses: &[String]) -> Result<Vec<Order>> {
        let mut out = Vec::new();
        for raw in clauses {
            let o = parse_order(raw)?;
            let expr = match (entity_kind(o.entity.as_deref()), o.key.as_str()) {
                (None | Some("attribute"), "name") => "m.name",
                (None | Some("attribute"), "timestamp" | "creation_timestamp") => "m.created_at",
                (None | Some("attribute"), "last_updated_timestamp") => UPDATED,
                _ => {
                    return err(format!(
                        "Invalid order_by clause {raw:?}: order by 'name', 'timestamp' or \
                         'last_updated_timestamp'"
                    ));
                }
            };
            out.push(Order {
                expr: Expr::Column(expr),
                ascending: o.ascending,
            });
        }
        out.push(Order {
            expr: Expr::Column("m.name"),
            ascending: true,
        });
        Ok(out)
    }
}

/// Model version searches: `name`, `version_number`, `run_id` and `source_path` (on model
/// versions aliased `v`) and tags.
pub mod versions {
    use super::*;

    pub fn filter(filter: &str) -> Result<Vec<Clause>> {
        let wrap = wrap_filter(filter);
        parse_filter(filter)?
            .into_iter()
            .map(|c| {
                let what = display(&c.entity, &c.key);
                let (expr, kind) = match (entity_kind(c.entity.as_deref()), c.key.as_str()) {
                    (None | Some("attribute"), "name") => ("v.model_name", Kind::Text),
                    (None | Some("attribute"), "version_number") => ("v.version", Kind::Number),
                    (None | Some("attribute"), "run_id") => {
                        ("replace(v.run_id::text, '-', '')", Kind::Id)
                    }
                    (None | Some("attribute"), "source_path") => ("v.artifact_uri", Kind::Text),
                    (Some("tag"), _) => {
                        return tag_clause(&what, &c, Expr::VersionTag).map_err(&wrap);
                    }
                    _ => {
                        return Err(wrap(SearchError(format!(
                            "invalid search key '{what}'; valid keys are {} and tags",
                            quoted_list(&["name", "version_number", "run_id", "source_path"])
                        ))));
                    }
                };
                if matches!(c.op, Op::In | Op::NotIn) && kind != Kind::Id {
                    return Err(wrap(SearchError(format!(
                        "'{what}' cannot be compared with a list; only run_id can"
                    ))));
                }
                let mut value = check(&format!("'{what}'"), kind, c.op, c.value).map_err(&wrap)?;
                if kind == Kind::Id {
                    let norm = |s: &String| match uuid::Uuid::try_parse(s.trim()) {
                        Ok(id) => id.simple().to_string(),
                        Err(_) => s.clone(),
                    };
                    value = match value {
                        Bound::Text(s) if matches!(c.op, Op::Eq | Op::Ne) => Bound::Text(norm(&s)),
                        Bound::List(items) => Bound::List(items.iter().map(norm).collect()),
                        other => other,
                    };
                }
                Ok(Clause {
                    expr: Expr::Column(expr),
                    op: c.op,
                    value,
                })
            })
            .collect()
    }

    /// The `order_by` clauses, then by name and newest version first.
    pub fn order(clauses: &[String]) -> Result<Vec<Order>> {
        let mut out = Vec::new();
        for raw in clauses {
            let o = parse_order(raw)?;
            let expr = match (entity_kind(o.entity.as_deref()), o.key.as_str()) {
                (None | Some("attribute"), "name") => "v.model_name",
                (None | Some("attribute"), "version_number") => "v.version",
                (
                    None | Some("attribute"),
                    "timestamp" | "creation_timestamp" | "last_updated_timestamp",
                ) => "v.created_at",
                (None | Some("attribute"), "run_id") => "v.run_id",
                _ => {
                    return err(format!(
                        "Invalid order_by clause {raw:?}: order by 'name', 'version_number', \
                         'creation_timestamp', 'last_updated_timestamp' or 'run_id'"
                    ));
                }
            };
            out.push(Order {
                expr: Expr::Column(expr),
                ascending: o.ascending,
            });
        }
        out.push(Order {
            expr: Expr::Column("v.model_name"),
            ascending: true,
        });
        out.push(Order {
            expr: Expr::Column("v.version"),
            ascending: false,
        });
        Ok(out)
    }
}

/// The metric keys a run search filters or orders on, each joined once to its run's latest
/// value (`run_latest_metrics`, kept by a trigger on every metric insert), so that the filter
/// and the order read one indexed row per run instead of ranking each run's history per row
/// and per mention.
#[derive(Debug, Default)]
pub struct MetricJoins(Vec<String>);

impl MetricJoins {
    /// The distinct metric keys of `clauses` and `orders`, in order of appearance.
    #[must_use]
    pub fn new(clauses: &[Clause], orders: &[Order]) -> Self {
        let mut keys: Vec<String> = Vec::new();
        let exprs = clauses
            .iter()
            .map(|c| &c.expr)
            .chain(orders.iter().map(|o| &o.expr));
        for e in exprs {
            if let Expr::LatestMetric(k) = e
                && !keys.contains(k)
            {
                keys.push(k.clone());
            }
        }
        Self(keys)
    }

    /// Appends one ` LEFT JOIN` per key, on the run aliased `r`.
    pub fn push(&self, qb: &mut QueryBuilder<'_, Postgres>) {
        for (i, key) in self.0.iter().enumerate() {
            qb.push(format!(
                " LEFT JOIN run_latest_metrics lm{i} ON lm{i}.run_id = r.id AND lm{i}.key = "
            ))
            .push_bind(key.clone());
        }
    }
}

fn push_latest_metric(qb: &mut QueryBuilder<'_, Postgres>, joins: &MetricJoins, key: &str) {
    match joins.0.iter().position(|k| k == key) {
        Some(i) => {
            qb.push(format!("lm{i}.value"));
        }
        None => {
            qb.push("(SELECT m.value FROM run_latest_metrics m WHERE m.run_id = r.id AND m.key = ")
                .push_bind(key.to_owned())
                .push(")");
        }
    }
}

/// A key-value expression's table, the condition joining a row of it to the searched row,
/// its key, and whether a missing key counts as "not equal" (model and version tags: MLflow 3
/// clients add `tags.`mlflow.prompt.is_prompt` != 'true'` to every model search and expect
/// untagged models back).
fn keyed(expr: &Expr) -> Option<(&'static str, &'static str, &str, bool)> {
    match expr {
        Expr::Param(k) => Some(("run_params", "kv.run_id = r.id", k, false)),
        Expr::Tag(k) => Some(("run_tags", "kv.run_id = r.id", k, false)),
        Expr::ExperimentTag(k) => Some(("experiment_tags", "kv.experiment_id = e.id", k, false)),
        Expr::ModelTag(k) => Some(("registered_model_tags", "kv.model_name = m.name", k, true)),
        Expr::VersionTag(k) => Some((
            "model_version_tags",
            "kv.model_name = v.model_name AND kv.version = v.version",
            k,
            true,
        )),
        _ => None,
    }
}

fn push_value(qb: &mut QueryBuilder<'_, Postgres>, value: &Bound) {
    match value {
        Bound::Number(n) => {
            qb.push_bind(*n);
        }
        Bound::Text(s) => {
            qb.push_bind(s.clone());
        }
        Bound::List(items) => {
            qb.push_bind(items.clone());
        }
        Bound::None => {
            qb.push("NULL");
        }
    }
}

fn push_comparison(qb: &mut QueryBuilder<'_, Postgres>, op: Op, value: &Bound) {
    match op {
        Op::In => {
            qb.push(" = ANY(");
            push_value(qb, value);
            qb.push(")");
        }
        Op::NotIn => {
            qb.push(" <> ALL(");
            push_value(qb, value);
            qb.push(")");
        }
        _ => {
            qb.push(" ").push(op.sql()).push(" ");
            push_value(qb, value);
        }
    }
}

/// Appends ` AND <clause>` for each clause.
pub fn push_where(qb: &mut QueryBuilder<'_, Postgres>, clauses: &[Clause], joins: &MetricJoins) {
    for c in clauses {
        qb.push(" AND ");
        if let Some((table, on, key, missing_differs)) = keyed(&c.expr) {
            let negated = missing_differs && c.op == Op::Ne;
            let exists = if c.op == Op::IsNull || negated {
                "NOT EXISTS"
            } else {
                "EXISTS"
            };
            qb.push(format!(
                "{exists} (SELECT 1 FROM {table} kv WHERE {on} AND kv.key = "
            ))
            .push_bind(key.to_owned());
            if negated {
                qb.push(" AND kv.value = ");
                push_value(qb, &c.value);
            } else if !matches!(c.op, Op::IsNull | Op::IsNotNull) {
                qb.push(" AND kv.value");
                push_comparison(qb, c.op, &c.value);
            }
            qb.push(")");
            continue;
        }
        if let Expr::Dataset(column) = &c.expr {
            qb.push(format!(
                "EXISTS (SELECT 1 FROM run_inputs di WHERE di.run_id = r.id AND {column}"
            ));
            push_comparison(qb, c.op, &c.value);
            qb.push(")");
            continue;
        }
        match &c.expr {
            Expr::LatestMetric(key) => push_latest_metric(qb, joins, key),
            Expr::Column(sql) => {
                qb.push(format!("({sql})"));
            }
            _ => unreachable!("key-value expressions are handled above"),
        }
        push_comparison(qb, c.op, &c.value);
    }
}

/// Appends ` ORDER BY ...`: missing values last in either direction, and NaN metrics after
/// numbers, as MLflow sorts.
pub fn push_order(qb: &mut QueryBuilder<'_, Postgres>, orders: &[Order], joins: &MetricJoins) {
    qb.push(" ORDER BY ");
    for (i, o) in orders.iter().enumerate() {
        if i > 0 {
            qb.push(", ");
        }
        let dir = if o.ascending { " ASC" } else { " DESC" };
        match &o.expr {
            Expr::Column(sql) => {
                qb.push(format!("{sql}{dir} NULLS LAST"));
            }
            Expr::LatestMetric(key) => {
                qb.push("CASE WHEN ");
                push_latest_metric(qb, joins, key);
                qb.push(" IS NULL THEN 2 WHEN ");
                push_latest_metric(qb, joins, key);
                qb.push(" = 'NaN'::float8 THEN 1 ELSE 0 END, ");
                push_latest_metric(qb, joins, key);
                qb.push(dir);
            }
            other => {
                let (table, on, key, _) = keyed(other).expect("a key-value expression");
                qb.push(format!(
                    "(SELECT kv.value FROM {table} kv WHERE {on} AND kv.key = "
                ))
                .push_bind(key.to_owned())
                .push(format!("){dir} NULLS LAST"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmp(entity: Option<&str>, key: &str, op: Op, value: Literal) -> Comparison {
        Comparison {
            entity: entity.map(str::to_owned),
            key: key.to_owned(),
            op,
            value,
        }
    }

    #[test]
    fn parses_the_documented_example() {
        let got = parse_filter(
            "metrics.accuracy > 0.9 and params.lr = '0.01' and tags.x = 'y' \
             and attributes.status = 'FINISHED'",
        )
        .unwrap();
        assert_eq!(
            got,
            vec![
                cmp(Some("metrics"), "accuracy", Op::Gt, Literal::Number(0.9)),
                cmp(Some("params"), "lr", Op::Eq, Literal::Text("0.01".into())),
                cmp(Some("tags"), "x", Op::Eq, Literal::Text("y".into())),
                cmp(
                    Some("attributes"),
                    "status",
                    Op::Eq,
                    Literal::Text("FINISHED".into())
                ),
            ]
        );
    }

    #[test]
    fn parses_every_comparator_quote_and_literal() {
        assert!(parse_filter("").unwrap().is_empty());
        assert!(parse_filter("   ").unwrap().is_empty());
        let got = parse_filter(
            "metrics.a>=1 AND metrics.b<=-2.5e3 AND metrics.c < .5 AND metrics.d != 3 \
             AND params.p LIKE 'x%' AND tags.t ILIKE \"%Y\" AND run_id IN ('a', \"b\") \
             AND attr.run_id NOT IN ('c') AND tags.`my tag` IS NULL \
             AND params.\"odd key\" is not null AND tags.mlflow.source.name = 'it''s' \
             AND metrics.val-loss < 1",
        )
        .unwrap();
        let ops: Vec<Op> = got.iter().map(|c| c.op).collect();
        assert_eq!(
            ops,
            vec![
                Op::Ge,
                Op::Le,
                Op::Lt,
                Op::Ne,
                Op::Like,
                Op::ILike,
                Op::In,
                Op::NotIn,
                Op::IsNull,
                Op::IsNotNull,
                Op::Eq,
                Op::Lt
            ]
        );
        assert_eq!(got[1].value, Literal::Number(-2500.0));
        assert_eq!(got[2].value, Literal::Number(0.5));
        assert_eq!(got[5].value, Literal::Text("%Y".into()));
        assert_eq!(got[6].entity, None);
        assert_eq!(got[6].value, Literal::List(vec!["a".into(), "b".into()]));
        assert_eq!(got[8].key, "my tag");
        assert_eq!(got[8].value, Literal::None);
        assert_eq!(got[9].key, "odd key");
        assert_eq!(got[10].key, "mlflow.source.name");
        assert_eq!(got[10].value, Literal::Text("it's".into()));
        assert_eq!(got[11].key, "val-loss");
    }

    #[test]
    fn malformed_filters_say_what_is_wrong() {
        for (filter, needle) in [
            ("metrics.acc", "expected a comparator"),
            ("metrics.acc >", "expected a value"),
            ("metrics.acc > 0.9 or params.a = 'b'", "OR is not supported"),
            ("metrics.acc > 0.9 params.a = 'b'", "expected AND"),
            ("params.a = 'unterminated", "no closing '"),
            ("metrics.acc == 1", "'==' is not a comparator"),
            ("metrics.acc <> 1", "use '!='"),
            ("> 1", "expected an identifier"),
            ("metrics. > 1", "expected a key"),
            ("(metrics.a > 1)", "expected an identifier"),
            ("metrics.a > 1x", "is not a number"),
            ("run_id IN 'a'", "parenthesised list"),
            ("run_id IN ('a' 'b')", "expected ',' or ')'"),
            ("run_id IN (1)", "expected a quoted string"),
            ("tags.a IS 'x'", "expected NULL"),
            ("tags.a NOT 'x'", "expected IN after NOT"),
        ] {
            let e = parse_filter(filter).unwrap_err();
            assert!(e.0.contains(needle), "{filter:?}: {}", e.0);
            assert!(e.0.starts_with("Invalid filter"), "{}", e.0);
        }
    }

    #[test]
    fn run_filters_check_keys_comparators_and_types() {
        let ok = runs::filter(
            "metrics.accuracy > 0.9 and params.lr = '0.01' and tags.x = 'y' and \
             attributes.status = 'FINISHED' and start_time >= 0 and run_name LIKE 'a%' and \
             params.p ILIKE 'x' and tags.t != 'z' and created < 5",
        )
        .unwrap();
        assert_eq!(ok.len(), 9);
        assert_eq!(ok[0].expr, Expr::LatestMetric("accuracy".into()));
        assert_eq!(ok[0].value, Bound::Number(0.9));
        assert_eq!(ok[3].expr, Expr::Column("upper(r.status)"));

        let id = uuid::Uuid::now_v7();
        let by_id = runs::filter(&format!("attributes.run_id IN ('{id}', 'x')")).unwrap();
        assert_eq!(
            by_id[0].value,
            Bound::List(vec![id.simple().to_string(), "x".into()])
        );

        for (filter, needle) in [
            ("metrics.acc > '0.9'", "compared with a number"),
            ("metrics.acc LIKE 1", "cannot compare"),
            ("params.lr > '0.01'", "cannot compare"),
            ("params.lr = 0.01", "quoted string"),
            ("tags.x IN ('a')", "cannot be compared with a list"),
            ("attributes.nope = 'x'", "invalid attribute key 'nope'"),
            ("things.x = 'y'", "invalid entity type 'things'"),
            ("datasets.size = 'd'", "invalid dataset key"),
            ("status > 'A'", "cannot compare"),
            ("start_time = 'yesterday'", "compared with a number"),
            ("metrics.acc IS NULL", "cannot compare"),
            ("run_id IN 'x'", "parenthesised list"),
        ] {
            let e = runs::filter(filter).unwrap_err();
            assert!(e.0.contains(needle), "{filter:?}: {}", e.0);
            let api: MlflowError = e.into();
            assert_eq!(api.code, "INVALID_PARAMETER_VALUE");
            assert_eq!(api.status, axum::http::StatusCode::BAD_REQUEST);
        }
    }

    #[test]
    fn order_by_clauses() {
        assert_eq!(
            parse_order("metrics.accuracy DESC").unwrap(),
            OrderClause {
                entity: Some("metrics".into()),
                key: "accuracy".into(),
                ascending: false
            }
        );
        assert!(parse_order("attributes.start_time").unwrap().ascending);
        assert!(parse_order("`metrics`.`my acc` asc").unwrap().ascending);
        assert!(parse_order("metrics.a DESC x").is_err());
        assert!(parse_order("").is_err());

        let o = runs::order(&["metrics.accuracy DESC".into(), "params.lr".into()]).unwrap();
        assert_eq!(o.len(), 4, "two clauses, then start time and id");
        assert_eq!(o[2].expr, Expr::Column(runs::START_TIME));
        let o = runs::order(&["attributes.start_time".into()]).unwrap();
        assert_eq!(o.len(), 2, "start time is not repeated");
        assert!(o[0].ascending);
        let e = runs::order(&["metrics.a".into(), "metrics.a DESC".into()]).unwrap_err();
        assert!(e.0.contains("twice"), "{}", e.0);
        assert!(runs::order(&["attributes.nope".into()]).is_err());
        assert!(models::order(&["name DESC".into(), "timestamp".into()]).is_ok());
        assert!(models::order(&["version".into()]).is_err());
        assert!(versions::order(&["version_number DESC".into()]).is_ok());
        assert!(experiments::order(&["experiment_id".into()]).is_ok());
        assert!(experiments::order(&["tags.x".into()]).is_err());
    }

    #[test]
    fn dataset_filters() {
        let c =
            runs::filter("datasets.name = 'penguins' and dataset.context = 'training'").unwrap();
        assert_eq!(c[0].expr, Expr::Dataset("di.name"));
        assert!(runs::filter("datasets.size = 3").is_err());
        assert!(runs::order(&["datasets.name".into()]).is_err());
        let mut qb = QueryBuilder::<Postgres>::new("SELECT r.id FROM runs r WHERE TRUE");
        push_where(&mut qb, &c, &MetricJoins::default());
        assert!(
            qb.sql().contains(
                "EXISTS (SELECT 1 FROM run_inputs di WHERE di.run_id = r.id AND di.name = $1)"
            ),
            "{}",
            qb.sql()
        );
    }

    #[test]
    fn registry_filters() {
        assert_eq!(models::filter("name = 'x'").unwrap().len(), 1);
        assert!(models::filter("name LIKE '%pen%'").is_ok());
        let prompt = models::filter("name LIKE 'm%' AND tag.`mlflow.prompt.is_prompt` != 'true'");
        assert_eq!(
            prompt.unwrap()[1].expr,
            Expr::ModelTag("mlflow.prompt.is_prompt".into())
        );
        assert_eq!(
            models::filter("tags.a = 'b'").unwrap()[0].expr,
            Expr::ModelTag("a".into())
        );
        let untagged = versions::filter("tags.a IS NULL").unwrap();
        assert_eq!(untagged[0].expr, Expr::VersionTag("a".into()));
        // A missing model or version tag is "not equal", so MLflow's prompt filter keeps
        // untagged models.
        let mut qb =
            QueryBuilder::<Postgres>::new("SELECT m.name FROM registered_models m WHERE TRUE");
        let clauses = models::filter("tags.`mlflow.prompt.is_prompt` != 'true'").unwrap();
        push_where(&mut qb, &clauses, &MetricJoins::default());
        assert!(
            qb.sql().contains("NOT EXISTS (SELECT 1 FROM registered_model_tags kv WHERE kv.model_name = m.name AND kv.key = $1 AND kv.value = $2)"),
            "{}",
            qb.sql()
        );
        assert!(models::filter("tags.a > 'b'").is_err());
        assert!(models::filter("name > 'a'").is_err());
        let id = uuid::Uuid::now_v7();
        let v = versions::filter(&format!("name='x' and run_id='{id}'")).unwrap();
        assert_eq!(v[1].value, Bound::Text(id.simple().to_string()));
        assert!(versions::filter("version_number > 2").is_ok());
        assert!(versions::filter("run_id IN ('a', 'b')").is_ok());
        assert!(versions::filter("source_path LIKE 'mlflow-artifacts:%'").is_ok());
        assert!(versions::filter("name IN ('a')").is_err());
        assert!(versions::filter("stage = 'x'").is_err());
        assert!(experiments::filter("name = 'Default' and tags.team = 'a'").is_ok());
        assert!(experiments::filter("creation_time > 5").is_ok());
        assert!(experiments::filter("metrics.a > 5").is_err());
    }

    #[test]
    fn sql_binds_every_value() {
        let clauses =
            runs::filter("metrics.acc > 0.9 and params.lr = 'x''; DROP TABLE runs; --'").unwrap();
        let orders = runs::order(&["metrics.acc DESC".into()]).unwrap();
        let joins = MetricJoins::new(&clauses, &orders);
        let mut qb = QueryBuilder::<Postgres>::new("SELECT r.id FROM runs r");
        joins.push(&mut qb);
        qb.push(" WHERE TRUE");
        push_where(&mut qb, &clauses, &joins);
        push_order(&mut qb, &orders, &joins);
        let sql = qb.sql();
        assert!(!sql.contains("DROP"), "{sql}");
        // One join for `acc`, named in the filter and the order alike.
        assert_eq!(
            sql.matches("LEFT JOIN run_latest_metrics").count(),
            1,
            "{sql}"
        );
        assert!(sql.contains("AND lm0.value > $"), "{sql}");
        assert!(sql.contains("EXISTS (SELECT 1 FROM run_params kv"), "{sql}");
        assert!(sql.contains("ORDER BY CASE WHEN"), "{sql}");
        assert!(
            sql.ends_with("r.start_time DESC NULLS LAST, r.id ASC NULLS LAST"),
            "{sql}"
        );
    }
}
