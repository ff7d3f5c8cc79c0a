//! From the parser's syntax tree to a plan of differential operators, with names resolved and
//! types checked. Anything outside the supported subset is an error naming the line and column,
//! what is not supported and what to write instead.

use std::collections::BTreeMap;
use std::fmt;

use sqlparser::ast::{
    self, BinaryOperator, CastKind, DataType, Expr as Ast, FunctionArg, FunctionArgExpr, FunctionArguments, GroupByExpr, JoinConstraint,
    JoinOperator, ObjectNamePart, SelectItem, SetExpr, SetOperator, SetQuantifier, Spanned, Statement, TableFactor, UnaryOperator,
};
use sqlparser::dialect::GenericDialect;
use sqlparser::parser::Parser;

use super::value::{Type, Value};

/// A query the compiler refuses: where, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SqlError {
    /// 1-based line (0: unknown)
    pub line: u64,
    /// 1-based column (0: unknown)
    pub column: u64,
    /// what is wrong, and what to write instead
    pub message: String,
}

impl fmt::Display for SqlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {}: {}", self.line, self.column, self.message)
    }
}

impl std::error::Error for SqlError {}

fn error_at(node: &impl Spanned, message: impl Into<String>) -> SqlError {
    let start = node.span().start;
    SqlError { line: start.line, column: start.column, message: message.into() }
}

/// A scalar expression over the columns of one row.
#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    /// the i-th column
    Column(usize),
    /// a constant
    Literal(Value),
    /// a binary operator
    Binary(BinOp, Box<Expr>, Box<Expr>),
    /// NOT
    Not(Box<Expr>),
    /// unary minus
    Neg(Box<Expr>),
    /// IS NULL (or, negated, IS NOT NULL)
    IsNull(Box<Expr>, bool),
    /// CASE WHEN … THEN … ELSE … END (a CASE with an operand is rewritten to this form)
    Case(Vec<(Expr, Expr)>, Box<Expr>),
    /// CAST(e AS type)
    Cast(Box<Expr>, Type),
    /// a function of the supported set
    Call(Func, Vec<Expr>),
    /// e [NOT] IN (list)
    InList(Box<Expr>, Vec<Expr>, bool),
}

/// Binary operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Concat,
    Eq,
    NotEq,
    Lt,
    LtEq,
    Gt,
    GtEq,
    And,
    Or,
}

/// Scalar functions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Func {
    Lower,
    Upper,
    Length,
    Trim,
    Abs,
    Round,
    Floor,
    Ceil,
    Coalesce,
    /// SUBSTRING(text, from [, for]), 1-based
    Substring,
    /// SPLIT_PART(text, delimiter, n), 1-based
    SplitPart,
    /// POSITION(needle IN text), STRPOS(text, needle): 1-based, 0 when absent
    Position,
    /// CONCAT(a, b, …): NULLs are skipped
    Concat,
    /// DATE_TRUNC('unit', timestamp)
    DateTrunc(TimeUnit),
    /// EXTRACT(unit FROM timestamp); `Epoch` gives seconds as a float
    Extract(TimeUnit),
    /// json -> field (text) or element (int): json, NULL when absent
    JsonGet,
    /// json ->> field or element: a string's text, any other value's JSON text; NULL when absent
    JsonGetText,
}

/// Units of DATE_TRUNC and EXTRACT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum TimeUnit {
    Year,
    Month,
    Day,
    Hour,
    Minute,
    Second,
    Epoch,
}

impl TimeUnit {
    fn parse(s: &str) -> Option<TimeUnit> {
        Some(match s.to_ascii_lowercase().as_str() {
            "year" => TimeUnit::Year,
            "month" => TimeUnit::Month,
            "day" => TimeUnit::Day,
            "hour" => TimeUnit::Hour,
            "minute" => TimeUnit::Minute,
            "second" => TimeUnit::Second,
            "epoch" => TimeUnit::Epoch,
            _ => return None,
        })
    }
}

/// Aggregate functions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum AggFunc {
    CountStar,
    Count,
    CountDistinct,
    Sum,
    Min,
    Max,
    Avg,
}

/// One aggregate of a reduce: its function and argument (over the input row).
#[derive(Clone, Debug, PartialEq)]
pub struct Aggregate {
    /// the function
    pub func: AggFunc,
    /// the argument (`Literal(Null)` for COUNT(*))
    pub arg: Expr,
    /// the argument's type
    pub arg_type: Type,
}

/// A plan: a tree of operators, each giving rows of a known arity.
#[derive(Clone, Debug, PartialEq)]
pub enum Plan {
    /// an input's rows
    Source(String),
    /// an earlier view's rows
    View(String),
    /// constant rows (`VALUES`), present from the first time on
    Constant(Vec<Vec<Value>>),
    /// rows for which the predicate is TRUE
    Filter(Box<Plan>, Expr),
    /// each row mapped to these expressions
    Map(Box<Plan>, Vec<Expr>),
    /// group by `keys`; each group gives `keys ++ aggregates`. With no keys, one row even of
    /// no input (SQL's global aggregate).
    Reduce {
        /// the input
        input: Box<Plan>,
        /// the grouping expressions
        keys: Vec<Expr>,
        /// the aggregates
        aggs: Vec<Aggregate>,
    },
    /// an equi-join: `left ++ right` for equal keys (a NULL key matches nothing); a left join
    /// also keeps unmatched left rows with NULLs for the right's `right_arity` columns
    Join {
        /// the left input
        left: Box<Plan>,
        /// the right input
        right: Box<Plan>,
        /// key expressions over the left's rows
        left_keys: Vec<Expr>,
        /// key expressions over the right's rows
        right_keys: Vec<Expr>,
        /// keep unmatched left rows
        outer: bool,
        /// columns of the right input
        right_arity: usize,
    },
    /// UNION ALL
    Union(Vec<Plan>),
    /// each row with its `ROW_NUMBER() OVER (PARTITION BY partition ORDER BY order)` appended
    /// (an int from 1; rows equal in `order` are numbered in the order of their columns)
    Rank {
        /// the input
        input: Box<Plan>,
        /// the partitioning expressions
        partition: Vec<Expr>,
        /// the ordering within a partition
        order: Vec<SortKey>,
    },
    /// each row once per event-time window holding its timestamp column `time` (a NULL time is
    /// in none), with `window_start` and `window_end` appended: windows of `size` ms every
    /// `slide` ms (TUMBLE: `slide == size`), aligned to the epoch
    Window {
        /// the input
        input: Box<Plan>,
        /// the timestamp column
        time: usize,
        /// window length, ms
        size: i64,
        /// distance between window starts, ms
        slide: i64,
    },
}

/// One `ORDER BY` term of a window function.
#[derive(Clone, Debug, PartialEq)]
pub struct SortKey {
    /// what to order by
    pub expr: Expr,
    /// DESC
    pub desc: bool,
    /// NULLs before the other values (SQL's default: after them ascending, before descending)
    pub nulls_first: bool,
}

/// A column of a source or view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    /// its name
    pub name: String,
    /// its type
    pub ty: Type,
}

/// A compiled view.
#[derive(Clone, Debug, PartialEq)]
pub struct View {
    /// its name
    pub name: String,
    /// its columns
    pub columns: Vec<Column>,
    /// the columns that key its rows (the GROUP BY columns; else every column)
    pub key: Vec<usize>,
    /// how its rows are computed
    pub plan: Plan,
}

/// The relations a query may read: inputs and the views compiled before it.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    relations: BTreeMap<String, (Vec<Column>, bool)>,
    /// columns known to be unique among a relation's rows at every time: an upsert input's
    /// primary key, a view's key where [`unique_key`] found one
    unique: BTreeMap<String, Vec<usize>>,
}

impl Catalog {
    /// Adds an input.
    pub fn add_source(&mut self, name: &str, columns: Vec<Column>) {
        self.relations.insert(name.to_ascii_lowercase(), (columns, true));
    }

    /// Says that input `name` keeps one row per value of its `columns` (an upsert input).
    pub fn primary_key(&mut self, name: &str, columns: &[usize]) {
        self.unique.insert(name.to_ascii_lowercase(), columns.to_vec());
    }

    fn arity(&self, p: &Plan) -> usize {
        p.arity(&|n| self.relations.get(n).map_or(0, |(c, _)| c.len()))
    }
}

/// Columns of `p` whose values no two of its rows share, at every time, if the plan shows
/// some: a GROUP BY's keys, an upsert input's primary key, and through filters, projections
/// that keep them, and joins that match each row of one side with at most one row of the
/// other (the other side unique on columns the join equates). A view without a GROUP BY is
/// keyed by these (so that a changed row replaces its key's row in every sink, as an upsert),
/// else by all its columns.
fn unique_key(p: &Plan, catalog: &Catalog) -> Option<Vec<usize>> {
    // whether `keys`, plain columns, take in all of `unique`
    let covers = |keys: &[Expr], unique: &[usize]| unique.iter().all(|u| keys.contains(&Expr::Column(*u)));
    match p {
        Plan::Source(n) | Plan::View(n) => catalog.unique.get(n).cloned(),
        Plan::Filter(p, _) => unique_key(p, catalog),
        Plan::Map(p, exprs) => unique_key(p, catalog)?.iter().map(|u| exprs.iter().position(|e| *e == Expr::Column(*u))).collect(),
        Plan::Reduce { keys, .. } => Some((0..keys.len()).collect()),
        Plan::Join { left, right, left_keys, right_keys, outer, .. } => {
            // each left row meets at most one right row: the left's key keys the output (a left
            // join's unmatched rows once each, too)
            if unique_key(right, catalog).is_some_and(|u| covers(right_keys, &u)) {
                return unique_key(left, catalog);
            }
            // each right row meets at most one left row, and no left row goes unmatched
            let left_unique = unique_key(left, catalog).is_some_and(|u| covers(left_keys, &u));
            if !outer && left_unique {
                let shift = catalog.arity(left);
                return unique_key(right, catalog).map(|u| u.iter().map(|c| c + shift).collect());
            }
            None
        }
        Plan::Constant(_) | Plan::Union(_) | Plan::Rank { .. } | Plan::Window { .. } => None,
    }
}

/// The names of the views a text creates, in order; none when it does not parse (its
/// [`compile`] then says why).
pub fn view_names(text: &str) -> Vec<String> {
    let statements = Parser::parse_sql(&GenericDialect {}, text).unwrap_or_default();
    statements
        .iter()
        .filter_map(|s| match s {
            Statement::CreateView(cv) => object_name(&cv.name),
            _ => None,
        })
        .collect()
}

/// Compiles every `CREATE VIEW` of `text` in order (a view may read the ones before it); each
/// compiled view is added to `catalog`.
pub fn compile(text: &str, catalog: &mut Catalog) -> Result<Vec<View>, SqlError> {
    let statements = Parser::parse_sql(&GenericDialect {}, text).map_err(|e| parse_error(&e.to_string()))?;
    let mut views = Vec::new();
    for statement in statements {
        let Statement::CreateView(cv) = &statement else {
            return Err(error_at(&statement, "only `CREATE VIEW name AS SELECT …;` statements are supported in a view file"));
        };
        let name = object_name(&cv.name).ok_or_else(|| error_at(&cv.name, "a view name is one plain identifier"))?;
        if catalog.relations.contains_key(&name) {
            return Err(error_at(&cv.name, format!("`{name}` is already an input or a view: give the view another name")));
        }
        let (plan, mut columns, key) = plan_query(&cv.query, catalog)?;
        if !cv.columns.is_empty() {
            if cv.columns.len() != columns.len() {
                return Err(error_at(&cv.name, format!("{} column names for {} columns", cv.columns.len(), columns.len())));
            }
            for (c, def) in columns.iter_mut().zip(&cv.columns) {
                c.name = def.name.value.to_ascii_lowercase();
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for c in &columns {
            if !seen.insert(c.name.clone()) {
                return Err(error_at(&*cv.query, format!("two columns are named `{}`: give one an alias with AS", c.name)));
            }
        }
        catalog.relations.insert(name.clone(), (columns.clone(), false));
        if let Some(u) = unique_key(&plan, catalog) {
            catalog.unique.insert(name.clone(), u);
        }
        views.push(View { name, columns, key, plan });
    }
    Ok(views)
}

/// sqlparser's messages end with "at Line: L, Column: C".
fn parse_error(message: &str) -> SqlError {
    let mut line = 0;
    let mut column = 0;
    if let Some((_, rest)) = message.rsplit_once("Line: ") {
        let mut parts = rest.split(", Column: ");
        line = parts.next().and_then(|l| l.trim().parse().ok()).unwrap_or(0);
        column = parts.next().and_then(|c| c.trim().parse().ok()).unwrap_or(0);
    }
    let text = message.split(" at Line: ").next().unwrap_or(message).trim_start_matches("sql parser error: ");
    SqlError { line, column, message: format!("syntax error: {text}") }
}

fn object_name(name: &ast::ObjectName) -> Option<String> {
    match &name.0[..] {
        [ObjectNamePart::Identifier(i)] => Some(i.value.to_ascii_lowercase()),
        _ => None,
    }
}

/// The columns in scope while planning one SELECT: qualifier (table or alias), name, type.
#[derive(Clone, Debug, Default)]
struct Scope {
    columns: Vec<(Option<String>, String, Type)>,
}

impl Scope {
    fn of(qualifier: &str, columns: &[Column]) -> Scope {
        Scope { columns: columns.iter().map(|c| (Some(qualifier.to_string()), c.name.clone(), c.ty)).collect() }
    }

    fn join(&self, other: &Scope) -> Scope {
        Scope { columns: self.columns.iter().chain(&other.columns).cloned().collect() }
    }

    fn resolve(&self, node: &Ast, qualifier: Option<&str>, name: &str) -> Result<(usize, Type), SqlError> {
        let found: Vec<usize> = (0..self.columns.len())
            .filter(|&i| {
                let (q, n, _) = &self.columns[i];
                n == name && qualifier.is_none_or(|want| q.as_deref() == Some(want))
            })
            .collect();
        match found[..] {
            [i] => Ok((i, self.columns[i].2)),
            [] => {
                let known: Vec<String> =
                    self.columns.iter().map(|(q, n, _)| q.as_ref().map_or(n.clone(), |q| format!("{q}.{n}"))).collect();
                let full = qualifier.map_or(name.to_string(), |q| format!("{q}.{name}"));
                Err(error_at(node, format!("unknown column `{full}`; the columns here are {}", known.join(", "))))
            }
            _ => Err(error_at(node, format!("column `{name}` is ambiguous: qualify it with its table, as t.{name}"))),
        }
    }
}

type Planned = (Plan, Vec<Column>, Vec<usize>);

fn plan_query(query: &ast::Query, catalog: &Catalog) -> Result<Planned, SqlError> {
    if query.with.is_some() {
        return Err(error_at(query, "WITH is not supported: write each step as a view of its own"));
    }
    if query.order_by.is_some() || query.limit_clause.is_some() || query.fetch.is_some() {
        return Err(error_at(
            query,
            "ORDER BY and LIMIT are not supported in a view (a view's rows have no order); for the top N rows of each group, \
             number them in a subquery, `ROW_NUMBER() OVER (PARTITION BY g ORDER BY x DESC) AS rank`, and keep `WHERE rank <= N`",
        ));
    }
    plan_set_expr(&query.body, catalog)
}

fn plan_set_expr(body: &SetExpr, catalog: &Catalog) -> Result<Planned, SqlError> {
    match body {
        SetExpr::Select(select) => plan_select(select, catalog),
        SetExpr::Query(q) => plan_query(q, catalog),
        SetExpr::SetOperation { op: SetOperator::Union, set_quantifier: SetQuantifier::All, left, right } => {
            let (lp, lc, _) = plan_set_expr(left, catalog)?;
            let (rp, rc, _) = plan_set_expr(right, catalog)?;
            if lc.len() != rc.len() || lc.iter().zip(&rc).any(|(a, b)| !a.ty.accepts(b.ty)) {
                let show = |c: &[Column]| c.iter().map(|c| c.ty.as_str()).collect::<Vec<_>>().join(", ");
                return Err(error_at(
                    &**right,
                    format!("UNION ALL of ({}) and ({}): both sides need the same column types", show(&lc), show(&rc)),
                ));
            }
            let key = (0..lc.len()).collect();
            let columns = lc
                .iter()
                .zip(&rc)
                .map(|(a, b)| Column { name: a.name.clone(), ty: if a.ty == Type::Null { b.ty } else { a.ty } })
                .collect();
            let plan = match lp {
                Plan::Union(mut parts) => {
                    parts.push(rp);
                    Plan::Union(parts)
                }
                lp => Plan::Union(vec![lp, rp]),
            };
            Ok((plan, columns, key))
        }
        SetExpr::Values(values) => {
            let empty = Scope::default();
            let mut rows = Vec::new();
            let mut types: Vec<Type> = Vec::new();
            for row in &values.rows {
                let mut out = Vec::new();
                for (j, e) in row.content.iter().enumerate() {
                    let (x, t) = plan_expr(e, &empty)?;
                    let v = super::eval::eval(&x, &[]).map_err(|m| error_at(e, format!("{m} in VALUES")))?;
                    match types.get_mut(j) {
                        Some(have) => {
                            *have = unify(*have, t).ok_or_else(|| error_at(e, format!("VALUES column {} mixes {have} and {t}", j + 1)))?
                        }
                        None => types.push(t),
                    }
                    out.push(v);
                }
                if rows.first().is_some_and(|r: &Vec<Value>| r.len() != out.len()) {
                    return Err(error_at(&row.content[0], "every VALUES row needs the same number of values"));
                }
                rows.push(out);
            }
            // an int column with a float in it: its ints are floats
            for row in &mut rows {
                for (v, t) in row.iter_mut().zip(&types) {
                    if let (Value::Int(i), Type::Float) = (&*v, t) {
                        *v = Value::Float(*i as f64);
                    }
                }
            }
            let columns: Vec<Column> = types.iter().enumerate().map(|(j, t)| Column { name: format!("column{}", j + 1), ty: *t }).collect();
            let key = (0..columns.len()).collect();
            Ok((Plan::Constant(rows), columns, key))
        }
        SetExpr::SetOperation { .. } => {
            Err(error_at(body, "only UNION ALL is supported (UNION, INTERSECT and EXCEPT are not): write UNION ALL"))
        }
        other => Err(error_at(other, "only SELECT queries are supported here")),
    }
}

fn plan_from(factor: &TableFactor, catalog: &Catalog) -> Result<(Plan, Scope), SqlError> {
    match factor {
        TableFactor::Table { name, alias, args: None, .. } => {
            let n = object_name(name).ok_or_else(|| error_at(name, "a table name is one plain identifier"))?;
            let (plan, columns) = relation(&n, name, catalog)?;
            let q = alias.as_ref().map_or(n.clone(), |a| a.name.value.to_ascii_lowercase());
            Ok((plan, Scope::of(&q, &columns)))
        }
        TableFactor::Table { name, alias, args: Some(args), .. } => {
            let function = object_name(name).unwrap_or_default();
            let hop = match function.as_str() {
                "tumble" => false,
                "hop" => true,
                _ => {
                    return Err(error_at(name, format!("`{function}(…)` is not supported in FROM; the table functions are TUMBLE and HOP")))
                }
            };
            let usage = if hop {
                "HOP(input, time_column, INTERVAL 'slide', INTERVAL 'size')"
            } else {
                "TUMBLE(input, time_column, INTERVAL 'size')"
            };
            let exprs: Vec<&Ast> = args
                .args
                .iter()
                .map(|a| match a {
                    FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Ok(e),
                    other => Err(error_at(other, format!("write {usage}"))),
                })
                .collect::<Result<_, _>>()?;
            if exprs.len() != if hop { 4 } else { 3 } {
                return Err(error_at(name, format!("write {usage}")));
            }
            let name_of = match exprs[0] {
                Ast::Identifier(i) => i.value.to_ascii_lowercase(),
                other => return Err(error_at(other, format!("the first argument is an input or a view: write {usage}"))),
            };
            let (input, columns) = relation(&name_of, exprs[0], catalog)?;
            let inner = Scope::of(&name_of, &columns);
            let (time, ty) = match plan_expr(exprs[1], &inner)? {
                (Expr::Column(c), ty) => (c, ty),
                _ => return Err(error_at(exprs[1], format!("the second argument is a timestamp column: write {usage}"))),
            };
            if ty != Type::Timestamp {
                return Err(error_at(exprs[1], format!("the window's time column is {ty}, not a timestamp: CAST it in a view first")));
            }
            let size = interval_ms(exprs[exprs.len() - 1])?;
            let slide = if hop { interval_ms(exprs[2])? } else { size };
            if hop && (slide > size || size % slide != 0) {
                return Err(error_at(exprs[2], "a HOP's slide must divide its size (e.g. slide 30 s, size 1 min)"));
            }
            let q = alias.as_ref().map_or(name_of, |a| a.name.value.to_ascii_lowercase());
            let mut scope = Scope { columns: inner.columns.into_iter().map(|(_, n, t)| (Some(q.clone()), n, t)).collect() };
            scope.columns.push((Some(q.clone()), "window_start".into(), Type::Timestamp));
            scope.columns.push((Some(q), "window_end".into(), Type::Timestamp));
            Ok((Plan::Window { input: Box::new(input), time, size, slide }, scope))
        }
        TableFactor::Derived { subquery, alias, lateral: false, .. } => {
            let (plan, mut columns, _) = plan_query(subquery, catalog)?;
            let q = alias.as_ref().map(|a| a.name.value.to_ascii_lowercase());
            // `AS t(a, b)` names the columns
            if let Some(a) = alias.as_ref().filter(|a| !a.columns.is_empty()) {
                if a.columns.len() != columns.len() {
                    return Err(error_at(&**subquery, format!("{} column names for {} columns", a.columns.len(), columns.len())));
                }
                for (c, def) in columns.iter_mut().zip(&a.columns) {
                    c.name = def.name.value.to_ascii_lowercase();
                }
            }
            let scope = Scope { columns: columns.iter().map(|c| (q.clone(), c.name.clone(), c.ty)).collect() };
            Ok((plan, scope))
        }
        other => Err(error_at(other, "only inputs, views and subqueries can be read in FROM")),
    }
}

/// An input or earlier view by name.
fn relation(n: &str, node: &impl Spanned, catalog: &Catalog) -> Result<(Plan, Vec<Column>), SqlError> {
    let (columns, source) = catalog.relations.get(n).ok_or_else(|| {
        let known: Vec<&str> = catalog.relations.keys().map(String::as_str).collect();
        error_at(node, format!("unknown input or view `{n}`; known: {}", known.join(", ")))
    })?;
    let plan = if *source { Plan::Source(n.to_string()) } else { Plan::View(n.to_string()) };
    Ok((plan, columns.clone()))
}

fn plan_select(select: &ast::Select, catalog: &Catalog) -> Result<Planned, SqlError> {
    if select.distinct.is_some() {
        return Err(error_at(select, "SELECT DISTINCT is not supported: write GROUP BY over the columns"));
    }
    let (mut plan, mut scope) =
        match &select.from[..] {
            [] => return Err(error_at(select, "a view reads FROM an input or a view")),
            [from] => {
                let (mut plan, mut scope) = plan_from(&from.relation, catalog)?;
                for join in &from.joins {
                    let (rplan, rscope) = plan_from(&join.relation, catalog)?;
                    let (constraint, outer) = match &join.join_operator {
                        JoinOperator::Join(c) | JoinOperator::Inner(c) => (c, false),
                        JoinOperator::Left(c) | JoinOperator::LeftOuter(c) => (c, true),
                        _ => return Err(error_at(&join.relation, "only [INNER] JOIN and LEFT JOIN … ON are supported")),
                    };
                    let JoinConstraint::On(on) = constraint else {
                        return Err(error_at(&join.relation, "a join needs ON a.x = b.y (USING and NATURAL are not supported)"));
                    };
                    let both = scope.join(&rscope);
                    let left_n = scope.columns.len();
                    let mut left_keys = Vec::new();
                    let mut right_keys = Vec::new();
                    let mut rest = Vec::new();
                    for conjunct in conjuncts(on) {
                        let eq = match conjunct {
                            Ast::BinaryOp { left, op: BinaryOperator::Eq, right } => {
                                let (l, lt) = plan_expr(left, &both)?;
                                let (r, rt) = plan_expr(right, &both)?;
                                let side = |e: &Expr| {
                                    let cols = columns_of(e);
                                    if cols.iter().all(|&c| c < left_n) && !cols.is_empty() {
                                        Some(false)
                                    } else if cols.iter().all(|&c| c >= left_n) && !cols.is_empty() {
                                        Some(true)
                                    } else {
                                        None
                                    }
                                };
                                match (side(&l), side(&r)) {
                                    (Some(false), Some(true)) => Some((l, r, lt, rt)),
                                    (Some(true), Some(false)) => Some((r, l, rt, lt)),
                                    _ => None,
                                }
                            }
                            _ => None,
                        };
                        match eq {
                            Some((l, r, lt, rt)) => {
                                if !(lt.accepts(rt) || lt.numeric() && rt.numeric()) {
                                    return Err(error_at(conjunct, format!("join keys of types {lt} and {rt} never match: CAST one side")));
                                }
                                left_keys.push(l);
                                right_keys.push(shift(&r, left_n));
                            }
                            None if outer => return Err(error_at(
                                conjunct,
                                "a LEFT JOIN's ON may only hold equalities of a left and a right column (filter in WHERE or a subquery)",
                            )),
                            None => rest.push(plan_predicate(conjunct, &both)?),
                        }
                    }
                    if left_keys.is_empty() {
                        return Err(error_at(
                            on,
                            "a join needs at least one equality of a left and a right column (cross joins are not supported)",
                        ));
                    }
                    plan = Plan::Join {
                        left: Box::new(plan),
                        right: Box::new(rplan),
                        left_keys,
                        right_keys,
                        outer,
                        right_arity: rscope.columns.len(),
                    };
                    for p in rest {
                        plan = Plan::Filter(Box::new(plan), p);
                    }
                    scope = both;
                }
                (plan, scope)
            }
            [_, second, ..] => return Err(error_at(&second.relation, "comma joins are not supported: write JOIN … ON")),
        };
    if let Some(w) = &select.selection {
        plan = Plan::Filter(Box::new(plan), plan_predicate(w, &scope)?);
    }
    let group_by: Vec<&Ast> = match &select.group_by {
        GroupByExpr::Expressions(e, m) if m.is_empty() => e.iter().collect(),
        other => return Err(error_at(other, "only GROUP BY of expressions is supported")),
    };
    let mut aggregates: Vec<&ast::Function> = Vec::new();
    for item in &select.projection {
        if let SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } = item {
            find_aggregates(e, &mut aggregates)?;
        }
    }
    if let Some(h) = &select.having {
        find_aggregates(h, &mut aggregates)?;
    }
    let aggregating = !group_by.is_empty() || !aggregates.is_empty();
    if let (Some(h), false) = (&select.having, aggregating) {
        return Err(error_at(h, "HAVING needs GROUP BY or an aggregate: write WHERE"));
    }
    // The projection's expressions, over `scope` or, when aggregating, over the reduce's rows.
    let mut exprs = Vec::new();
    let mut columns = Vec::new();
    let mut key = Vec::new();
    if aggregating {
        let mut keys = Vec::new();
        for g in &group_by {
            keys.push(plan_expr(g, &scope)?);
        }
        let mut aggs = Vec::new();
        for f in &aggregates {
            aggs.push(plan_aggregate(f, &scope)?);
        }
        let post = PostAggregate { group_by: &group_by, keys: &keys, aggregates: &aggregates, aggs: &aggs, scope: &scope };
        for item in &select.projection {
            let (e, name) = match item {
                SelectItem::UnnamedExpr(e) => (e, default_name(e)),
                SelectItem::ExprWithAlias { expr, alias } => (expr, alias.value.to_ascii_lowercase()),
                other => return Err(error_at(other, "SELECT * cannot be used with GROUP BY: name the grouped columns")),
            };
            let (expr, ty) = post.plan(e)?;
            if let Expr::Column(c) = expr {
                if c < keys.len() {
                    key.push(exprs.len());
                }
            }
            exprs.push(expr);
            columns.push(Column { name, ty });
        }
        if group_by.len() > key.len() {
            return Err(error_at(group_by[0], "every GROUP BY expression must be selected (it keys the view's rows)"));
        }
        plan = Plan::Reduce { input: Box::new(plan), keys: keys.iter().map(|(e, _)| e.clone()).collect(), aggs: aggs.clone() };
        if let Some(h) = &select.having {
            let (p, ty) = post.plan(h)?;
            if !Type::Bool.accepts(ty) {
                return Err(error_at(h, format!("HAVING needs a bool, not {ty}")));
            }
            plan = Plan::Filter(Box::new(plan), p);
        }
    } else {
        // ROW_NUMBER() OVER (…): the rows numbered first, the number a column of the scope
        let mut rank = None;
        for item in &select.projection {
            let (SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. }) = item else { continue };
            let Ast::Function(f) = e else { continue };
            if f.over.is_none() {
                continue;
            }
            if rank.is_some() {
                return Err(error_at(e, "one ROW_NUMBER() per SELECT: number the rows again in an outer query"));
            }
            let (partition, order) = plan_row_number(f, &scope)?;
            rank = Some(scope.columns.len());
            plan = Plan::Rank { input: Box::new(plan), partition, order };
            scope.columns.push((None, String::new(), Type::Int));
        }
        let planned = |e: &Ast| match (e, rank) {
            (Ast::Function(f), Some(r)) if f.over.is_some() => Ok((Expr::Column(r), Type::Int)),
            _ => plan_expr(e, &scope),
        };
        for item in &select.projection {
            match item {
                SelectItem::UnnamedExpr(e) => {
                    let (expr, ty) = planned(e)?;
                    exprs.push(expr);
                    columns.push(Column { name: default_name(e), ty });
                }
                SelectItem::ExprWithAlias { expr, alias } => {
                    let (expr, ty) = planned(expr)?;
                    exprs.push(expr);
                    columns.push(Column { name: alias.value.to_ascii_lowercase(), ty });
                }
                SelectItem::Wildcard(_) => {
                    for (i, (_, n, t)) in scope.columns.iter().enumerate().filter(|(i, _)| Some(*i) != rank) {
                        exprs.push(Expr::Column(i));
                        columns.push(Column { name: n.clone(), ty: *t });
                    }
                }
                SelectItem::QualifiedWildcard(kind, _) => {
                    let q = match kind {
                        ast::SelectItemQualifiedWildcardKind::ObjectName(n) => object_name(n),
                        _ => None,
                    }
                    .ok_or_else(|| error_at(item, "write t.* with a table name"))?;
                    for (i, (qq, n, t)) in scope.columns.iter().enumerate() {
                        if qq.as_deref() == Some(q.as_str()) && Some(i) != rank {
                            exprs.push(Expr::Column(i));
                            columns.push(Column { name: n.clone(), ty: *t });
                        }
                    }
                }
                other => return Err(error_at(other, "this SELECT item is not supported")),
            }
        }
        key = (0..exprs.len()).collect();
    }
    let identity = exprs.len() == columns_in(&plan, &scope) && exprs.iter().enumerate().all(|(i, e)| *e == Expr::Column(i));
    if !identity {
        plan = Plan::Map(Box::new(plan), exprs);
    }
    if !aggregating {
        if let Some(unique) = unique_key(&plan, catalog) {
            key = unique;
        }
    }
    Ok((plan, columns, key))
}

/// `ROW_NUMBER() OVER (PARTITION BY … ORDER BY …)`: its partitioning and ordering.
fn plan_row_number(f: &ast::Function, scope: &Scope) -> Result<(Vec<Expr>, Vec<SortKey>), SqlError> {
    let name = f.name.to_string().to_ascii_lowercase();
    if name != "row_number" {
        return Err(error_at(f, format!("{name}() OVER is not supported: the window function is ROW_NUMBER()")));
    }
    let (args, star, _) = function_args(f)?;
    if star || !args.is_empty() || f.filter.is_some() || !f.within_group.is_empty() {
        return Err(error_at(f, "write ROW_NUMBER() OVER (PARTITION BY … ORDER BY …)"));
    }
    let Some(ast::WindowType::WindowSpec(spec)) = &f.over else {
        return Err(error_at(f, "named windows are not supported: write OVER (PARTITION BY … ORDER BY …)"));
    };
    if spec.window_frame.is_some() {
        return Err(error_at(f, "a window frame (ROWS/RANGE …) is not supported with ROW_NUMBER(): remove it"));
    }
    if spec.order_by.is_empty() {
        return Err(error_at(f, "ROW_NUMBER() needs ORDER BY in its OVER (…): the numbering would depend on arrival order"));
    }
    let partition = spec.partition_by.iter().map(|e| plan_expr(e, scope).map(|(x, _)| x)).collect::<Result<_, _>>()?;
    let mut order = Vec::new();
    for o in &spec.order_by {
        let desc = match &o.options.sort {
            None | Some(ast::OrderBySort::Asc) => false,
            Some(ast::OrderBySort::Desc) => true,
            Some(ast::OrderBySort::Using(_)) => return Err(error_at(&o.expr, "ORDER BY … USING is not supported: write ASC or DESC")),
        };
        let (expr, _) = plan_expr(&o.expr, scope)?;
        order.push(SortKey { expr, desc, nulls_first: o.options.nulls_first.unwrap_or(desc) });
    }
    Ok((partition, order))
}

/// `INTERVAL '1' MINUTE` or `INTERVAL '90 seconds'`, in milliseconds.
fn interval_ms(e: &Ast) -> Result<i64, SqlError> {
    let fail = || error_at(e, "write a positive interval such as INTERVAL '1' MINUTE or INTERVAL '30 seconds'");
    let Ast::Interval(i) = e else { return Err(fail()) };
    let text = match &*i.value {
        Ast::Value(v) => match &v.value {
            ast::Value::SingleQuotedString(s) => s.clone(),
            ast::Value::Number(n, _) => n.clone(),
            _ => return Err(fail()),
        },
        _ => return Err(fail()),
    };
    let mut words = text.split_whitespace();
    let n: f64 = words.next().and_then(|w| w.parse().ok()).ok_or_else(fail)?;
    let unit = match (&i.leading_field, words.next()) {
        (Some(f), None) => f.to_string().to_ascii_lowercase(),
        (None, Some(u)) => u.to_ascii_lowercase(),
        _ => return Err(fail()),
    };
    let ms = match unit.trim_end_matches('s') {
        "millisecond" => 1.0,
        "second" => 1000.0,
        "minute" => 60_000.0,
        "hour" => 3_600_000.0,
        "day" => 86_400_000.0,
        _ => return Err(fail()),
    };
    let total = n * ms;
    if !(total >= 1.0 && total.fract() == 0.0) {
        return Err(fail());
    }
    Ok(total as i64)
}

/// The arity of a plan's rows, where the scope does not say it (after a reduce).
fn columns_in(plan: &Plan, scope: &Scope) -> usize {
    match plan {
        Plan::Reduce { keys, aggs, .. } => keys.len() + aggs.len(),
        Plan::Filter(p, _) => columns_in(p, scope),
        _ => scope.columns.len(),
    }
}

fn default_name(e: &Ast) -> String {
    match e {
        Ast::Identifier(i) => i.value.to_ascii_lowercase(),
        Ast::CompoundIdentifier(parts) => parts.last().map_or_else(String::new, |i| i.value.to_ascii_lowercase()),
        Ast::Function(f) => f.name.to_string().to_ascii_lowercase(),
        other => other.to_string().to_ascii_lowercase(),
    }
}

fn conjuncts(e: &Ast) -> Vec<&Ast> {
    match e {
        Ast::BinaryOp { left, op: BinaryOperator::And, right } => {
            let mut v = conjuncts(left);
            v.extend(conjuncts(right));
            v
        }
        Ast::Nested(inner) => conjuncts(inner),
        other => vec![other],
    }
}

fn columns_of(e: &Expr) -> Vec<usize> {
    let mut out = Vec::new();
    visit(e, &mut |x| {
        if let Expr::Column(c) = x {
            out.push(*c);
        }
    });
    out
}

fn visit(e: &Expr, f: &mut impl FnMut(&Expr)) {
    f(e);
    match e {
        Expr::Column(_) | Expr::Literal(_) => {}
        Expr::Binary(_, a, b) => {
            visit(a, f);
            visit(b, f);
        }
        Expr::Not(a) | Expr::Neg(a) | Expr::IsNull(a, _) | Expr::Cast(a, _) => visit(a, f),
        Expr::Case(arms, other) => {
            for (c, r) in arms {
                visit(c, f);
                visit(r, f);
            }
            visit(other, f);
        }
        Expr::Call(_, args) => args.iter().for_each(|a| visit(a, f)),
        Expr::InList(a, list, _) => {
            visit(a, f);
            list.iter().for_each(|x| visit(x, f));
        }
    }
}

/// `e` over the right input's own columns, given it was planned over `left ++ right`.
fn shift(e: &Expr, by: usize) -> Expr {
    match e {
        Expr::Column(c) => Expr::Column(c - by),
        Expr::Literal(v) => Expr::Literal(v.clone()),
        Expr::Binary(op, a, b) => Expr::Binary(*op, Box::new(shift(a, by)), Box::new(shift(b, by))),
        Expr::Not(a) => Expr::Not(Box::new(shift(a, by))),
        Expr::Neg(a) => Expr::Neg(Box::new(shift(a, by))),
        Expr::IsNull(a, n) => Expr::IsNull(Box::new(shift(a, by)), *n),
        Expr::Cast(a, t) => Expr::Cast(Box::new(shift(a, by)), *t),
        Expr::Case(arms, o) => Expr::Case(arms.iter().map(|(c, r)| (shift(c, by), shift(r, by))).collect(), Box::new(shift(o, by))),
        Expr::Call(f, args) => Expr::Call(*f, args.iter().map(|a| shift(a, by)).collect()),
        Expr::InList(a, l, n) => Expr::InList(Box::new(shift(a, by)), l.iter().map(|x| shift(x, by)).collect(), *n),
    }
}

fn aggregate_func(f: &ast::Function) -> Option<&'static str> {
    let name = f.name.to_string().to_ascii_lowercase();
    ["count", "sum", "min", "max", "avg"].into_iter().find(|n| *n == name)
}

fn find_aggregates<'a>(e: &'a Ast, out: &mut Vec<&'a ast::Function>) -> Result<(), SqlError> {
    let mut stack = vec![e];
    while let Some(e) = stack.pop() {
        match e {
            Ast::Function(f) if aggregate_func(f).is_some() => {
                let text = f.to_string();
                if !out.iter().any(|g| g.to_string() == text) {
                    out.push(f);
                }
            }
            Ast::Function(f) => {
                if let FunctionArguments::List(list) = &f.args {
                    for a in &list.args {
                        if let FunctionArg::Unnamed(FunctionArgExpr::Expr(x)) = a {
                            stack.push(x);
                        }
                    }
                }
            }
            Ast::BinaryOp { left, right, .. } => {
                stack.push(left);
                stack.push(right);
            }
            Ast::UnaryOp { expr, .. } | Ast::Nested(expr) | Ast::IsNull(expr) | Ast::IsNotNull(expr) | Ast::Cast { expr, .. } => {
                stack.push(expr)
            }
            Ast::Case { operand, conditions, else_result, .. } => {
                stack.extend(operand.as_deref());
                for c in conditions {
                    stack.push(&c.condition);
                    stack.push(&c.result);
                }
                stack.extend(else_result.as_deref());
            }
            _ => {}
        }
    }
    Ok(())
}

fn function_args(f: &ast::Function) -> Result<(Vec<&Ast>, bool, bool), SqlError> {
    match &f.args {
        FunctionArguments::List(list) => {
            let distinct = matches!(list.duplicate_treatment, Some(ast::DuplicateTreatment::Distinct));
            let mut args = Vec::new();
            let mut star = false;
            for a in &list.args {
                match a {
                    FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => args.push(e),
                    FunctionArg::Unnamed(FunctionArgExpr::Wildcard) => star = true,
                    other => return Err(error_at(other, "only plain arguments are supported")),
                }
            }
            Ok((args, star, distinct))
        }
        FunctionArguments::None => Ok((Vec::new(), false, false)),
        FunctionArguments::Subquery(_) => Err(error_at(f, "subqueries as arguments are not supported")),
    }
}

fn plan_aggregate(f: &ast::Function, scope: &Scope) -> Result<Aggregate, SqlError> {
    let name = aggregate_func(f).expect("an aggregate");
    if f.filter.is_some() || f.over.is_some() || !f.within_group.is_empty() {
        return Err(error_at(f, "FILTER, OVER and WITHIN GROUP are not supported: filter in WHERE or a subquery"));
    }
    let (args, star, distinct) = function_args(f)?;
    if star {
        if name != "count" || !args.is_empty() {
            return Err(error_at(f, "only COUNT takes *"));
        }
        return Ok(Aggregate { func: AggFunc::CountStar, arg: Expr::Literal(Value::Null), arg_type: Type::Null });
    }
    let [arg] = args[..] else { return Err(error_at(f, format!("{name} takes one argument"))) };
    let (arg, ty) = plan_expr(arg, scope)?;
    let func = match (name, distinct) {
        ("count", false) => AggFunc::Count,
        ("count", true) => AggFunc::CountDistinct,
        (_, true) => return Err(error_at(f, "DISTINCT is supported in COUNT only")),
        ("sum", _) => AggFunc::Sum,
        ("min", _) => AggFunc::Min,
        ("max", _) => AggFunc::Max,
        _ => AggFunc::Avg,
    };
    if matches!(func, AggFunc::Sum | AggFunc::Avg) && !ty.numeric() {
        return Err(error_at(f, format!("{name} needs a number, not {ty}")));
    }
    Ok(Aggregate { func, arg, arg_type: ty })
}

/// The type an aggregate gives.
pub fn aggregate_type(a: &Aggregate) -> Type {
    match a.func {
        AggFunc::CountStar | AggFunc::Count | AggFunc::CountDistinct => Type::Int,
        AggFunc::Avg => Type::Float,
        AggFunc::Sum | AggFunc::Min | AggFunc::Max => a.arg_type,
    }
}

/// Plans expressions after a GROUP BY: group expressions and aggregates are the reduce's columns;
/// any other column is an error.
struct PostAggregate<'a> {
    group_by: &'a [&'a Ast],
    keys: &'a [(Expr, Type)],
    aggregates: &'a [&'a ast::Function],
    aggs: &'a [Aggregate],
    scope: &'a Scope,
}

impl PostAggregate<'_> {
    fn plan(&self, e: &Ast) -> Result<(Expr, Type), SqlError> {
        let text = e.to_string();
        if let Some(i) = self.group_by.iter().position(|g| g.to_string() == text) {
            return Ok((Expr::Column(i), self.keys[i].1));
        }
        // a column that is a GROUP BY column under another spelling (t.x vs x)
        if let Ast::Identifier(_) | Ast::CompoundIdentifier(_) = e {
            let (planned, ty) = plan_expr(e, self.scope)?;
            if let Some(i) = self.keys.iter().position(|(k, _)| *k == planned) {
                return Ok((Expr::Column(i), ty));
            }
            return Err(error_at(e, format!("column `{text}` must appear in GROUP BY or be used in an aggregate")));
        }
        if let Ast::Function(f) = e {
            if let Some(j) = self.aggregates.iter().position(|g| g.to_string() == f.to_string()) {
                return Ok((Expr::Column(self.keys.len() + j), aggregate_type(&self.aggs[j])));
            }
        }
        plan_expr_with(e, self.scope, &|x| self.plan(x))
    }
}

fn plan_predicate(e: &Ast, scope: &Scope) -> Result<Expr, SqlError> {
    let (p, ty) = plan_expr(e, scope)?;
    if !Type::Bool.accepts(ty) {
        return Err(error_at(e, format!("a condition needs a bool, not {ty}")));
    }
    Ok(p)
}

fn plan_expr(e: &Ast, scope: &Scope) -> Result<(Expr, Type), SqlError> {
    plan_expr_with(e, scope, &|x| plan_expr(x, scope))
}

/// Plans `e`, its subexpressions through `sub` (the post-aggregate planner resolves them
/// against the reduce's columns).
type Typed = Result<(Expr, Type), SqlError>;

fn plan_expr_with(e: &Ast, scope: &Scope, sub: &dyn Fn(&Ast) -> Typed) -> Typed {
    Ok(match e {
        Ast::Identifier(i) => {
            let (c, t) = scope.resolve(e, None, &i.value.to_ascii_lowercase())?;
            (Expr::Column(c), t)
        }
        Ast::CompoundIdentifier(parts) => match &parts[..] {
            [q, n] => {
                let (c, t) = scope.resolve(e, Some(&q.value.to_ascii_lowercase()), &n.value.to_ascii_lowercase())?;
                (Expr::Column(c), t)
            }
            _ => return Err(error_at(e, "write a column as name or table.name")),
        },
        Ast::Nested(inner) => sub(inner)?,
        Ast::Value(v) => {
            let value = match &v.value {
                ast::Value::Number(n, _) => match n.parse::<i64>() {
                    Ok(i) => Value::Int(i),
                    Err(_) => Value::Float(n.parse().map_err(|_| error_at(e, format!("`{n}` is not a number")))?),
                },
                ast::Value::SingleQuotedString(s) => Value::Text(s.as_str().into()),
                ast::Value::Boolean(b) => Value::Bool(*b),
                ast::Value::Null => Value::Null,
                _ => return Err(error_at(e, "only numbers, 'text', TRUE, FALSE and NULL are supported as literals")),
            };
            let ty = value_type(&value);
            (Expr::Literal(value), ty)
        }
        Ast::TypedString(ts) if matches!(ts.data_type, DataType::Timestamp(..)) => {
            let text = match &ts.value.value {
                ast::Value::SingleQuotedString(s) => s.clone(),
                _ => return Err(error_at(e, "write TIMESTAMP '2026-01-01 00:00:00'")),
            };
            let ms = super::eval::parse_timestamp(&text)
                .ok_or_else(|| error_at(e, format!("`{text}` is not a timestamp: write '2026-01-01 00:00:00'")))?;
            (Expr::Literal(Value::Timestamp(ms)), Type::Timestamp)
        }
        Ast::UnaryOp { op, expr } => {
            let (a, t) = sub(expr)?;
            match op {
                UnaryOperator::Not if Type::Bool.accepts(t) => (Expr::Not(Box::new(a)), Type::Bool),
                UnaryOperator::Minus if t.numeric() => (Expr::Neg(Box::new(a)), t),
                UnaryOperator::Plus if t.numeric() => (a, t),
                _ => return Err(error_at(e, format!("{op} does not apply to {t}"))),
            }
        }
        Ast::BinaryOp { left, op: op @ (BinaryOperator::Arrow | BinaryOperator::LongArrow), right } => {
            let (a, at) = sub(left)?;
            let (b, bt) = sub(right)?;
            if !Type::Json.accepts(at) {
                return Err(error_at(&**left, format!("{op} reads a json value, not {at} (declare the column `json`, or CAST it AS json)")));
            }
            if !(Type::Text.accepts(bt) || Type::Int.accepts(bt)) {
                return Err(error_at(&**right, format!("{op} takes a field name (text) or an array index (int), not {bt}")));
            }
            match op {
                BinaryOperator::Arrow => (Expr::Call(Func::JsonGet, vec![a, b]), Type::Json),
                _ => (Expr::Call(Func::JsonGetText, vec![a, b]), Type::Text),
            }
        }
        Ast::BinaryOp { left, op, right } => {
            let (a, at) = sub(left)?;
            let (b, bt) = sub(right)?;
            let bin = match op {
                BinaryOperator::Plus => BinOp::Add,
                BinaryOperator::Minus => BinOp::Sub,
                BinaryOperator::Multiply => BinOp::Mul,
                BinaryOperator::Divide => BinOp::Div,
                BinaryOperator::Modulo => BinOp::Mod,
                BinaryOperator::StringConcat => BinOp::Concat,
                BinaryOperator::Eq => BinOp::Eq,
                BinaryOperator::NotEq => BinOp::NotEq,
                BinaryOperator::Lt => BinOp::Lt,
                BinaryOperator::LtEq => BinOp::LtEq,
                BinaryOperator::Gt => BinOp::Gt,
                BinaryOperator::GtEq => BinOp::GtEq,
                BinaryOperator::And => BinOp::And,
                BinaryOperator::Or => BinOp::Or,
                other => return Err(error_at(e, format!("the operator {other} is not supported"))),
            };
            let ty = binary_type(bin, at, bt).ok_or_else(|| match (at, bt) {
                (Type::Json, Type::Json) => error_at(e, format!("json values are compared with = and <> only, not {op}: compare a field (`col ->> 'name'`), CAST to a number")),
                (Type::Json, _) | (_, Type::Json) => error_at(
                    e,
                    format!("type mismatch: {at} {op} {bt}: read a field of the json value (`col ->> 'name'` is text), or CAST the other side AS json"),
                ),
                _ => error_at(e, format!("type mismatch: {at} {op} {bt} (CAST one side)")),
            })?;
            (Expr::Binary(bin, Box::new(a), Box::new(b)), ty)
        }
        Ast::IsNull(a) => (Expr::IsNull(Box::new(sub(a)?.0), false), Type::Bool),
        Ast::IsNotNull(a) => (Expr::IsNull(Box::new(sub(a)?.0), true), Type::Bool),
        Ast::In { expr, target: ast::InTarget::List(list), negated, .. } => {
            let (a, at) = sub(expr)?;
            let mut items = Vec::new();
            for x in list {
                let (b, bt) = sub(x)?;
                if binary_type(BinOp::Eq, at, bt).is_none() {
                    return Err(error_at(x, format!("type mismatch: {at} IN (… {bt} …)")));
                }
                items.push(b);
            }
            (Expr::InList(Box::new(a), items, *negated), Type::Bool)
        }
        Ast::Case { operand, conditions, else_result, .. } => {
            let operand = operand.as_deref().map(sub).transpose()?;
            let mut arms = Vec::new();
            let mut ty = Type::Null;
            for c in conditions {
                let (cond, ct) = sub(&c.condition)?;
                let cond = match &operand {
                    Some((o, ot)) => {
                        binary_type(BinOp::Eq, *ot, ct)
                            .ok_or_else(|| error_at(&c.condition, format!("type mismatch: CASE {ot} WHEN {ct}")))?;
                        Expr::Binary(BinOp::Eq, Box::new(o.clone()), Box::new(cond))
                    }
                    None if Type::Bool.accepts(ct) => cond,
                    None => return Err(error_at(&c.condition, format!("WHEN needs a bool, not {ct}"))),
                };
                let (r, rt) = sub(&c.result)?;
                ty = unify(ty, rt).ok_or_else(|| error_at(&c.result, format!("CASE results of types {ty} and {rt}: CAST one")))?;
                arms.push((cond, (r, rt)));
            }
            let other = match else_result {
                Some(x) => {
                    let (r, rt) = sub(x)?;
                    ty = unify(ty, rt).ok_or_else(|| error_at(&**x, format!("CASE results of types {ty} and {rt}: CAST one")))?;
                    (r, rt)
                }
                None => (Expr::Literal(Value::Null), Type::Null),
            };
            let arms = arms.into_iter().map(|(c, (r, rt))| (c, coerce(r, rt, ty))).collect();
            let other = coerce(other.0, other.1, ty);
            (Expr::Case(arms, Box::new(other)), ty)
        }
        Ast::Cast { kind: CastKind::Cast | CastKind::DoubleColon, expr, data_type, format: None, .. } => {
            let to = cast_type(data_type)
                .ok_or_else(|| error_at(e, format!("CAST to {data_type} is not supported: int, float, text, bool, timestamp or json")))?;
            (Expr::Cast(Box::new(sub(expr)?.0), to), to)
        }
        Ast::Floor { expr, .. } => {
            let (a, t) = sub(expr)?;
            numeric_arg(e, t)?;
            (Expr::Call(Func::Floor, vec![a]), t)
        }
        Ast::Ceil { expr, .. } => {
            let (a, t) = sub(expr)?;
            numeric_arg(e, t)?;
            (Expr::Call(Func::Ceil, vec![a]), t)
        }
        Ast::Trim { expr, trim_where: None, trim_what: None, trim_characters: None } => {
            let (a, t) = sub(expr)?;
            text_arg(e, t)?;
            (Expr::Call(Func::Trim, vec![a]), Type::Text)
        }
        Ast::Substring { expr, substring_from, substring_for, .. } => {
            let (a, t) = sub(expr)?;
            text_arg(e, t)?;
            let mut args = vec![a];
            for x in [substring_from, substring_for].into_iter().flatten() {
                let (b, bt) = sub(x)?;
                if !Type::Int.accepts(bt) {
                    return Err(error_at(&**x, format!("SUBSTRING's positions are ints, not {bt}")));
                }
                args.push(b);
            }
            if args.len() < 2 {
                return Err(error_at(e, "write SUBSTRING(text FROM start [FOR length])"));
            }
            (Expr::Call(Func::Substring, args), Type::Text)
        }
        Ast::Position { expr, r#in } => {
            let (needle, nt) = sub(expr)?;
            let (hay, ht) = sub(r#in)?;
            text_arg(e, nt)?;
            text_arg(e, ht)?;
            (Expr::Call(Func::Position, vec![needle, hay]), Type::Int)
        }
        Ast::Extract { field, expr, .. } => {
            let unit = TimeUnit::parse(&field.to_string()).ok_or_else(|| {
                error_at(e, format!("EXTRACT of {field} is not supported: year, month, day, hour, minute, second or epoch"))
            })?;
            let (a, t) = sub(expr)?;
            if !Type::Timestamp.accepts(t) {
                return Err(error_at(e, format!("EXTRACT needs a timestamp, not {t}")));
            }
            (Expr::Call(Func::Extract(unit), vec![a]), if unit == TimeUnit::Epoch { Type::Float } else { Type::Int })
        }
        Ast::Function(f) if f.over.is_some() => {
            return Err(error_at(
                e,
                "a window function (OVER …) can only be a SELECT item of its own, in a SELECT without GROUP BY: number the rows of a grouped view or subquery",
            ))
        }
        Ast::Function(f) if aggregate_func(f).is_some() => {
            return Err(error_at(e, "an aggregate is not allowed here (in WHERE, GROUP BY or a join's ON): filter after it with HAVING"))
        }
        Ast::Function(f) => {
            let (args, star, _) = function_args(f)?;
            if star {
                return Err(error_at(e, "only COUNT takes *"));
            }
            let planned: Vec<(Expr, Type)> = args.iter().map(|a| sub(a)).collect::<Result<_, _>>()?;
            let name = f.name.to_string().to_ascii_lowercase();
            let one = |want: &str| -> Result<Type, SqlError> {
                match &planned[..] {
                    [(_, t)] => Ok(*t),
                    _ => Err(error_at(e, format!("{name} takes one {want}"))),
                }
            };
            let (func, ty) = match name.as_str() {
                "lower" | "upper" | "trim" => {
                    text_arg(e, one("text")?)?;
                    (if name == "lower" { Func::Lower } else if name == "upper" { Func::Upper } else { Func::Trim }, Type::Text)
                }
                "length" | "char_length" => {
                    text_arg(e, one("text")?)?;
                    (Func::Length, Type::Int)
                }
                "abs" | "floor" | "ceil" | "ceiling" => {
                    let t = one("number")?;
                    numeric_arg(e, t)?;
                    (
                        match name.as_str() {
                            "abs" => Func::Abs,
                            "floor" => Func::Floor,
                            _ => Func::Ceil,
                        },
                        t,
                    )
                }
                "round" => {
                    let t = one("number")?;
                    numeric_arg(e, t)?;
                    (Func::Round, t)
                }
                "substring" | "substr" => {
                    let ok = matches!(&planned[..], [(_, t), (_, f), ..] if Type::Text.accepts(*t) && Type::Int.accepts(*f))
                        && planned.len() <= 3
                        && planned.get(2).is_none_or(|(_, l)| Type::Int.accepts(*l));
                    if !ok {
                        return Err(error_at(e, "write SUBSTRING(text, start [, length]) with int positions"));
                    }
                    (Func::Substring, Type::Text)
                }
                "split_part" => {
                    let ok = matches!(&planned[..], [(_, t), (_, d), (_, n)] if Type::Text.accepts(*t) && Type::Text.accepts(*d) && Type::Int.accepts(*n));
                    if !ok {
                        return Err(error_at(e, "write SPLIT_PART(text, delimiter, n) with an int n"));
                    }
                    (Func::SplitPart, Type::Text)
                }
                "strpos" => {
                    let ok = matches!(&planned[..], [(_, t), (_, n)] if Type::Text.accepts(*t) && Type::Text.accepts(*n));
                    if !ok {
                        return Err(error_at(e, "write STRPOS(text, needle)"));
                    }
                    let mut planned = planned;
                    planned.swap(0, 1);
                    return Ok((Expr::Call(Func::Position, planned.into_iter().map(|(x, _)| x).collect()), Type::Int));
                }
                "concat" => (Func::Concat, Type::Text),
                "date_trunc" => {
                    let unit = match args.first() {
                        Some(Ast::Value(v)) => match &v.value {
                            ast::Value::SingleQuotedString(u) => TimeUnit::parse(u).filter(|u| *u != TimeUnit::Epoch),
                            _ => None,
                        },
                        _ => None,
                    }
                    .ok_or_else(|| error_at(e, "write DATE_TRUNC('year' | 'month' | 'day' | 'hour' | 'minute' | 'second', timestamp)"))?;
                    match &planned[..] {
                        [_, (x, t)] if Type::Timestamp.accepts(*t) => return Ok((Expr::Call(Func::DateTrunc(unit), vec![x.clone()]), Type::Timestamp)),
                        _ => return Err(error_at(e, "DATE_TRUNC's second argument is a timestamp")),
                    }
                }
                "coalesce" => {
                    let mut ty = Type::Null;
                    for (i, (_, t)) in planned.iter().enumerate() {
                        ty = unify(ty, *t).ok_or_else(|| error_at(args[i], format!("COALESCE of {ty} and {t}: CAST one")))?;
                    }
                    if planned.is_empty() {
                        return Err(error_at(e, "COALESCE takes at least one argument"));
                    }
                    let args = planned.into_iter().map(|(x, t)| coerce(x, t, ty)).collect();
                    return Ok((Expr::Call(Func::Coalesce, args), ty));
                }
                _ => {
                    return Err(error_at(
                        e,
                        format!(
                            "the function {name} is not supported; supported: lower, upper, length, trim, substring, split_part, position, strpos, \
                             concat, abs, round, floor, ceil, coalesce, date_trunc, extract, and the aggregates count, sum, min, max, avg"
                        ),
                    ))
                }
            };
            (Expr::Call(func, planned.into_iter().map(|(x, _)| x).collect()), ty)
        }
        other => return Err(error_at(other, format!("`{other}` is not supported in a view"))),
    })
}

fn numeric_arg(e: &Ast, t: Type) -> Result<(), SqlError> {
    if t.numeric() {
        Ok(())
    } else {
        Err(error_at(e, format!("needs a number, not {t}")))
    }
}

fn text_arg(e: &Ast, t: Type) -> Result<(), SqlError> {
    if Type::Text.accepts(t) {
        Ok(())
    } else {
        Err(error_at(e, format!("needs text, not {t} (CAST it AS text)")))
    }
}

fn value_type(v: &Value) -> Type {
    match v {
        Value::Null => Type::Null,
        Value::Bool(_) => Type::Bool,
        Value::Int(_) => Type::Int,
        Value::Float(_) => Type::Float,
        Value::Text(_) => Type::Text,
        Value::Timestamp(_) => Type::Timestamp,
    }
}

fn cast_type(t: &DataType) -> Option<Type> {
    Type::parse(&t.to_string().split('(').next().unwrap_or("").trim().to_ascii_lowercase())
}

/// `e` of type `from` as a value of `to` (an int where a float is expected is cast).
fn coerce(e: Expr, from: Type, to: Type) -> Expr {
    if from == Type::Int && to == Type::Float {
        Expr::Cast(Box::new(e), Type::Float)
    } else {
        e
    }
}

/// The common type of two branches (int widens to float).
fn unify(a: Type, b: Type) -> Option<Type> {
    match (a, b) {
        (Type::Null, t) | (t, Type::Null) => Some(t),
        (a, b) if a == b => Some(a),
        (Type::Int, Type::Float) | (Type::Float, Type::Int) => Some(Type::Float),
        _ => None,
    }
}

/// The type of `a op b`, if they fit.
pub fn binary_type(op: BinOp, a: Type, b: Type) -> Option<Type> {
    use BinOp::*;
    match op {
        Add | Sub | Mul | Div | Mod if a.numeric() && b.numeric() => unify(a, b).map(|t| if t == Type::Null { Type::Int } else { t }),
        Concat if Type::Text.accepts(a) && Type::Text.accepts(b) => Some(Type::Text),
        // (json values are equal or not; their order would be their text's)
        Lt | LtEq | Gt | GtEq if a == Type::Json || b == Type::Json => None,
        Eq | NotEq | Lt | LtEq | Gt | GtEq if unify(a, b).is_some() => Some(Type::Bool),
        And | Or if Type::Bool.accepts(a) && Type::Bool.accepts(b) => Some(Type::Bool),
        _ => None,
    }
}

impl fmt::Display for Expr {
    /// SQL-like, columns as `#i` (the i-th column of the operator's input).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |xs: &[Expr]| xs.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
        match self {
            Expr::Column(c) => write!(f, "#{c}"),
            Expr::Literal(v) => write!(f, "{v}"),
            Expr::Binary(op, a, b) => {
                let op = match op {
                    BinOp::Add => "+",
                    BinOp::Sub => "-",
                    BinOp::Mul => "*",
                    BinOp::Div => "/",
                    BinOp::Mod => "%",
                    BinOp::Concat => "||",
                    BinOp::Eq => "=",
                    BinOp::NotEq => "<>",
                    BinOp::Lt => "<",
                    BinOp::LtEq => "<=",
                    BinOp::Gt => ">",
                    BinOp::GtEq => ">=",
                    BinOp::And => "AND",
                    BinOp::Or => "OR",
                };
                write!(f, "({a} {op} {b})")
            }
            Expr::Not(a) => write!(f, "NOT {a}"),
            Expr::Neg(a) => write!(f, "-{a}"),
            Expr::IsNull(a, false) => write!(f, "{a} IS NULL"),
            Expr::IsNull(a, true) => write!(f, "{a} IS NOT NULL"),
            Expr::Case(arms, other) => {
                write!(f, "CASE")?;
                for (c, r) in arms {
                    write!(f, " WHEN {c} THEN {r}")?;
                }
                write!(f, " ELSE {other} END")
            }
            Expr::Cast(a, t) => write!(f, "CAST({a} AS {t})"),
            Expr::Call(func, args) => {
                let name = match func {
                    Func::SplitPart => "split_part".to_string(),
                    Func::JsonGet => return write!(f, "({} -> {})", args[0], args[1]),
                    Func::JsonGetText => return write!(f, "({} ->> {})", args[0], args[1]),
                    Func::DateTrunc(u) => format!("date_trunc:{}", format!("{u:?}").to_lowercase()),
                    Func::Extract(u) => format!("extract:{}", format!("{u:?}").to_lowercase()),
                    other => format!("{other:?}").to_lowercase(),
                };
                write!(f, "{name}({})", list(args))
            }
            Expr::InList(a, xs, negated) => write!(f, "{a} {}IN ({})", if *negated { "NOT " } else { "" }, list(xs)),
        }
    }
}

impl Plan {
    /// How many columns its rows have, given how many those of an input or view have.
    pub fn arity(&self, relation: &dyn Fn(&str) -> usize) -> usize {
        match self {
            Plan::Source(n) | Plan::View(n) => relation(n),
            Plan::Constant(rows) => rows.first().map_or(0, Vec::len),
            Plan::Filter(p, _) => p.arity(relation),
            Plan::Map(_, exprs) => exprs.len(),
            Plan::Reduce { keys, aggs, .. } => keys.len() + aggs.len(),
            Plan::Join { left, right_arity, .. } => left.arity(relation) + right_arity,
            Plan::Union(parts) => parts.first().map_or(0, |p| p.arity(relation)),
            Plan::Rank { input, .. } => input.arity(relation) + 1,
            Plan::Window { input, .. } => input.arity(relation) + 2,
        }
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn go(p: &Plan, depth: usize, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            let pad = "  ".repeat(depth);
            let list = |xs: &[Expr]| xs.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
            match p {
                Plan::Source(n) => writeln!(f, "{pad}Source {n}"),
                Plan::View(n) => writeln!(f, "{pad}View {n}"),
                Plan::Constant(rows) => writeln!(f, "{pad}Constant ({} rows)", rows.len()),
                Plan::Filter(i, e) => {
                    writeln!(f, "{pad}Filter {e}")?;
                    go(i, depth + 1, f)
                }
                Plan::Map(i, es) => {
                    writeln!(f, "{pad}Map {}", list(es))?;
                    go(i, depth + 1, f)
                }
                Plan::Reduce { input, keys, aggs } => {
                    let a: Vec<String> = aggs
                        .iter()
                        .map(|a| match a.func {
                            AggFunc::CountStar => "count(*)".to_string(),
                            AggFunc::CountDistinct => format!("count(DISTINCT {})", a.arg),
                            func => format!("{}({})", format!("{func:?}").to_lowercase(), a.arg),
                        })
                        .collect();
                    writeln!(
                        f,
                        "{pad}Reduce: pre-aggregate on each worker, exchange by ({}), groups in a hash map; {}",
                        list(keys),
                        a.join(", ")
                    )?;
                    go(input, depth + 1, f)
                }
                Plan::Join { left, right, left_keys, right_keys, outer, .. } => {
                    let (kind, state) = if *outer { ("LeftJoin", "arrange") } else { ("Join", "hash the current rows of") };
                    writeln!(f, "{pad}{kind}: exchange and {state} both sides by ({}) = ({})", list(left_keys), list(right_keys))?;
                    go(left, depth + 1, f)?;
                    go(right, depth + 1, f)
                }
                Plan::Window { input, time, size, slide } => {
                    let kind = if size == slide { format!("Tumble {size} ms") } else { format!("Hop {slide} ms / {size} ms") };
                    writeln!(f, "{pad}{kind} on #{time} (adds window_start, window_end)")?;
                    go(input, depth + 1, f)
                }
                Plan::Union(parts) => {
                    writeln!(f, "{pad}UnionAll")?;
                    parts.iter().try_for_each(|p| go(p, depth + 1, f))
                }
                Plan::Rank { input, partition, order } => {
                    let order: Vec<String> = order.iter().map(|o| format!("{}{}", o.expr, if o.desc { " DESC" } else { "" })).collect();
                    writeln!(
                        f,
                        "{pad}RowNumber: exchange and arrange by ({}); a changed partition is numbered again by ({}) (adds the number)",
                        list(partition),
                        order.join(", ")
                    )?;
                    go(input, depth + 1, f)
                }
            }
        }
        go(self, 0, f)
    }
}
