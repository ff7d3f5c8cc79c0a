//! Plans as differential operators: filters and maps stay on the worker that has the row;
//! a reduce exchanges and arranges by its group key, a join both sides by the join key. Rows
//! whose expressions fail leave as errors of their view (dead letters), the rest go on.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

use differential_dataflow::input::Input;
use timely::dataflow::Scope;

use super::compiled::{Compiled, Predicate};
use super::eval::{eval, eval_onto, holds};
use super::join::{concat_rows, inner_join, JoinSide, JoinedRow};
use super::plan::{AggFunc, Expr, Plan, View};
use super::reduce::{read_once, Aggregates, Arg, Chain, CurrentSqlRows, Grouping, Member, Reduced, Retire, Stepped};
use super::value::{hash_values, Key, SqlRow, Type, Value};
use crate::ops::new_output;
use crate::records::Millis;
use crate::watermark::MaximaStream;
use crate::{Coll, Time};

/// What the planner knows of an input's rows before any is read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shape {
    /// its columns
    pub arity: usize,
    /// its event-time column, if it has one
    pub event_time: Option<usize>,
    /// no row is ever retracted (not an upsert input)
    pub monotone: bool,
}

/// An input of the views: its rows, its shape and, with an event time, its maxima (broadcast)
/// and allowed lateness: a windowed reduce over its event time drops final windows.
pub struct Source<'s> {
    /// its rows (for an event-time input, the rows that were not late)
    pub rows: Rows<'s>,
    /// what the planner knows of them
    pub shape: Shape,
    /// with an event time: its maxima and allowed lateness
    pub watermark: Option<(MaximaStream<'s>, Millis)>,
}

/// An input's rows as the views get them.
pub enum Rows<'s> {
    /// every row as read
    All(Coll<'s, SqlRow>),
    /// an upsert input's records (insert-only) with their ranks (source positions), and its
    /// key columns: its rows are each key's record of the highest rank. A join on the key
    /// keeps the latest version itself ([`super::join`]); other readers get the rows of one
    /// [`crate::ops::upsert`], made when first read.
    Latest {
        /// the records, ranked
        ranked: Coll<'s, (u64, SqlRow)>,
        /// the key columns
        key: Vec<usize>,
        /// the input's name (of its state metrics)
        input: String,
        /// the upsert's rows, once made
        rows: RefCell<Option<Coll<'s, SqlRow>>>,
    },
}

impl<'s> Rows<'s> {
    /// An upsert input's rows: each key's latest version (`ranked` by source position).
    pub fn latest(ranked: Coll<'s, (u64, SqlRow)>, key: Vec<usize>, input: &str) -> Self {
        Rows::Latest { ranked, key, input: input.to_string(), rows: RefCell::new(None) }
    }

    /// The rows.
    fn all(&self) -> Coll<'s, SqlRow> {
        match self {
            Rows::All(rows) => rows.clone(),
            Rows::Latest { ranked, key, input, rows } => rows
                .borrow_mut()
                .get_or_insert_with(|| {
                    let key = key.clone();
                    let keyed = ranked.clone().map(move |(rank, row)| (Key::at(&key, &row), rank, row));
                    crate::ops::upsert(keyed, input)
                })
                .clone(),
        }
    }
}

/// A row an expression failed on: the view, the reason, the row.
pub type RowError = (String, String, SqlRow);

/// A rendered view: its rows, and the rows its expressions failed on.
#[derive(Clone)]
pub struct Rendered<'s> {
    /// the view's rows (none when rendered `counted`)
    pub rows: Coll<'s, SqlRow>,
    /// its row errors
    pub errors: Coll<'s, RowError>,
    /// when its rows are those of a GROUP BY that keeps every group or of an inner join, under
    /// filters and maps: its current rows, read from that operator once the run is over
    pub current: Option<CurrentSqlRows>,
    /// rendered counted (asked, read by no other view, and an inner join under maps that
    /// cannot fail): its changes without their rows, at the same times and multiplicities
    pub counted: Option<Coll<'s, ()>>,
}

/// Renders `views` in `scope`, in order, over the `sources`' rows (a view may read the ones
/// before it). The views named in `counted` whose changes can be counted without making their
/// rows are rendered so ([`Rendered::counted`]): a run that only writes a snapshot reads their
/// rows from [`Rendered::current`] at the end.
pub fn render<'s>(
    scope: Scope<'s, Time>,
    views: &[View],
    sources: &BTreeMap<String, Source<'s>>,
    counted: &BTreeSet<String>,
) -> BTreeMap<String, Rendered<'s>> {
    let shapes: BTreeMap<String, Shape> = sources.iter().map(|(n, s)| (n.clone(), s.shape.clone())).collect();
    let lineage = Lineage::new(&shapes, views);
    let read_by_views = read_by_views(views);
    // The readers of an input (GROUP BYs and chains of stateless steps) that more than one
    // view or step reads: one operator reads each row once for all of them.
    let fused: Fused<'s> = RefCell::new(BTreeMap::new());
    for (input, readers) in read_together(views, &lineage) {
        let (mut members, mut chains, mut nodes) = (Vec::new(), Vec::new(), (Vec::new(), Vec::new()));
        for (view, node) in readers {
            match node {
                Plan::Reduce { input, keys, aggs } => {
                    let mut member = reduce_member(input, keys, aggs, view, &lineage, sources).0;
                    member.count =
                        counts_beside_rows(&member, keys, counted.contains(view) && views.iter().any(|v| std::ptr::eq(&v.plan, node)));
                    members.push(member);
                    nodes.0.push(node);
                }
                _ => {
                    chains.push(chain(stateless_steps(node, &lineage).1));
                    nodes.1.push(node);
                }
            }
        }
        let rows = sources.get(input).unwrap_or_else(|| panic!("the input `{input}` was not given")).rows.all();
        let (reduced, chained) = read_once(rows, members, chains);
        let mut fused = fused.borrow_mut();
        for (node, r) in nodes.0.into_iter().zip(reduced) {
            fused.insert(node as *const Plan as usize, Reader::Reduce(r));
        }
        for (node, c) in nodes.1.into_iter().zip(chained) {
            fused.insert(node as *const Plan as usize, Reader::Chain(c));
        }
    }
    let mut done: BTreeMap<String, Rendered<'s>> = BTreeMap::new();
    for view in views {
        let mut errors = Vec::new();
        let asked = counted.contains(&view.name);
        let count = asked && !read_by_views.contains(view.name.as_str());
        let reads = (scope, sources, &done, &lineage, &fused);
        let (rows, current, counted) = view_plan(&view.plan, &view.name, reads, &mut errors, (count, asked));
        let errors = differential_dataflow::collection::concatenate(scope, errors);
        done.insert(view.name.clone(), Rendered { rows, errors, current, counted });
    }
    done
}

/// The names of the views `outputs` need: themselves and every view they read, directly or
/// through other views. (The others need not be rendered.)
pub fn needed_views(views: &[View], outputs: &[&str]) -> BTreeSet<String> {
    let mut wanted: BTreeSet<String> = outputs.iter().map(|o| o.to_string()).collect();
    // (a view reads only views before it)
    for v in views.iter().rev() {
        if !wanted.contains(&v.name) {
            continue;
        }
        each_node(&v.plan, &mut |n| {
            if let Plan::View(name) = n {
                wanted.insert(name.clone());
            }
        });
    }
    wanted
}

/// The views that other views read.
fn read_by_views(views: &[View]) -> BTreeSet<&str> {
    let mut out = BTreeSet::new();
    for v in views {
        each_node(&v.plan, &mut |n| {
            if let Plan::View(name) = n {
                out.insert(name.as_str());
            }
        });
    }
    out
}

/// A view's plan rendered as [`plan`] does, and when its stateless steps (if any) are over a
/// GROUP BY that keeps every group or an inner join, the reader of its current rows: the
/// operator's rows through the steps. `count`: an inner join under maps that cannot fail gives
/// its changes without rows (no row is built; `rows` is then empty).
#[allow(clippy::type_complexity)]
fn view_plan<'s>(
    p: &Plan,
    view: &str,
    reads: Reads<'_, 's>,
    errors: &mut Vec<Coll<'s, RowError>>,
    (count, asked): (bool, bool),
) -> (Coll<'s, SqlRow>, Option<CurrentSqlRows>, Option<Coll<'s, ()>>) {
    let (scope, _, _, lineage, _) = reads;
    let (under, steps) = stateless_steps(p, lineage);
    let through = |current: CurrentSqlRows| -> CurrentSqlRows {
        let (_, steps) = stateless_steps(p, lineage);
        if steps.is_empty() {
            return current;
        }
        let key = RefCell::new(SqlRow::new());
        std::rc::Rc::new(move |each: &mut dyn FnMut(SqlRow, isize)| {
            let mut key = key.borrow_mut();
            current(&mut |row, n| {
                run_steps(&steps, Cow::Owned(row), &mut key, &mut |s| {
                    if let Ok(row) = s {
                        each(row, n);
                    }
                })
            })
        })
    };
    match under {
        Plan::Join { left, right, left_keys, right_keys, outer: false, .. } => {
            let count = count && steps.iter().all(|s| matches!(s, Step::Map(es) if !es.iter().any(|e| can_fail(e.expr()))));
            let (l, r) = inner_sides((left, left_keys), (right, right_keys), view, reads, errors);
            // A projection of columns over the join: its current rows are made from each pair
            // of rows at once (not joined first, then projected into a second row).
            let picked: Option<Vec<usize>> = match steps.as_slice() {
                [Step::Map(es)] => es.iter().map(|e| if let Expr::Column(c) = e.expr() { Some(*c) } else { None }).collect(),
                _ => None,
            };
            let current_row: JoinedRow = match picked.clone() {
                Some(cols) => {
                    // (a column's last pick may take its value, if its row is not paired again)
                    let last: Vec<bool> = (0..cols.len()).map(|i| !cols[i + 1..].contains(&cols[i])).collect();
                    std::rc::Rc::new(move |a: &mut SqlRow, b: &mut SqlRow, [a_last, b_last]: [bool; 2]| {
                        let n = a.len();
                        let pick = |row: &mut SqlRow, c: usize, take: bool| {
                            if take {
                                std::mem::replace(&mut row[c], Value::Null)
                            } else {
                                row[c].clone()
                            }
                        };
                        cols.iter()
                            .zip(&last)
                            .map(|(&c, &l)| if c < n { pick(a, c, a_last && l) } else { pick(b, c - n, b_last && l) })
                            .collect()
                    })
                }
                None => concat_rows(),
            };
            let current = |c: CurrentSqlRows| if picked.is_some() { c } else { through(c) };
            if count {
                let (changes, c) = inner_join(view, l, r, |_, _| (), current_row);
                return (constant(scope, Vec::new()), Some(current(c)), Some(changes));
            }
            let (joined, c) = inner_join(view, l, r, |a, b| a.iter().chain(b).cloned().collect::<SqlRow>(), current_row);
            (over_steps(joined, steps, view, errors), Some(current(c)), None)
        }
        Plan::Reduce { input, keys, aggs } if !keys.is_empty() => {
            // (a GROUP BY that is the whole view gives its changes without rows when asked, even
            // when other views read its rows)
            let (grouped, current, counted) = grouped(under, (input, keys, aggs), view, reads, errors, asked && steps.is_empty());
            (over_steps(grouped, steps, view, errors), current.map(through), counted)
        }
        _ => (plan(p, view, reads, errors), None, None),
    }
}

/// Per input, the slides of the windows over its event time (TUMBLE and HOP whose time column
/// is the input's event-time column, through filters, projections and views): the input's
/// lateness rule keeps rows out of windows that are final.
pub fn window_slides(views: &[View], shapes: &BTreeMap<String, Shape>) -> BTreeMap<String, Vec<i64>> {
    let lineage = Lineage::new(shapes, views);
    let mut out = BTreeMap::new();
    for v in views {
        lineage.windows(&v.plan, &mut out);
    }
    out
}

/// Per event-time input whose rows a checkpoint may forget, the sizes of the tumbling windows
/// over its event time that its rows are grouped in (empty: none): a row is forgotten once the
/// watermark passes the end of its window (of the row itself, with no window), because no
/// state of the run will ever need it again. That holds when every view that reads the input
/// is read by no other view and is either stateless over it (filters, maps, windows, unions,
/// lookups in constant rows: an alert stream) or a GROUP BY on a tumbling window over its
/// event time of such rows (with filters and maps above): a final window is dropped and not
/// recomputed. Any other read (a running total, a join, a view over the view, a sliding window
/// whose row would recreate a final window in part) keeps every row.
pub fn forgettable_inputs(views: &[View], shapes: &BTreeMap<String, Shape>) -> BTreeMap<String, Vec<i64>> {
    let lineage = Lineage::new(shapes, views);
    let read_by_views = read_by_views(views);
    let mut out: BTreeMap<String, Vec<i64>> =
        shapes.iter().filter(|(_, s)| s.event_time.is_some()).map(|(n, _)| (n.clone(), Vec::new())).collect();
    let mut kept = std::collections::BTreeSet::new();
    for v in views {
        let mut sources = Vec::new();
        each_node(&v.plan, &mut |n| {
            if let Plan::Source(name) = n {
                sources.push(name.as_str());
            }
        });
        let leaf = !read_by_views.contains(v.name.as_str());
        let mut top = &v.plan;
        while let Plan::Filter(input, _) | Plan::Map(input, _) = top {
            top = input;
        }
        let windowed = match top {
            Plan::Reduce { input, keys, .. } if lineage.stateless(input) => keys.iter().find_map(|k| match k {
                Expr::Column(c) => lineage.window_bound(input, *c).map(|(source, _)| source),
                _ => None,
            }),
            _ => None,
        };
        for s in sources {
            let forgettable = leaf
                && match windowed {
                    Some(source) => {
                        source == s
                            && lineage.tumbling_sizes(top, s).is_some_and(|sizes| {
                                out.entry(s.to_string()).or_default().extend(sizes);
                                true
                            })
                    }
                    None => lineage.stateless(&v.plan),
                };
            if !forgettable {
                kept.insert(s.to_string());
            }
        }
    }
    out.retain(|n, _| !kept.contains(n));
    for sizes in out.values_mut() {
        sizes.sort_unstable();
        sizes.dedup();
    }
    out
}

/// The readers (view, plan node) of each input that two or more read directly: a GROUP BY over
/// it (or over a window of it), a chain of stateless steps over it — as `plan` renders them.
fn read_together<'v>(views: &'v [View], lineage: &Lineage<'_>) -> BTreeMap<&'v str, Vec<(&'v str, &'v Plan)>> {
    fn walk<'v>(view: &'v str, p: &'v Plan, lineage: &Lineage<'_>, out: &mut BTreeMap<&'v str, Vec<(&'v str, &'v Plan)>>) {
        let (under, steps) = stateless_steps(p, lineage);
        if !steps.is_empty() {
            match under {
                Plan::Source(s) => out.entry(s.as_str()).or_default().push((view, p)),
                _ => walk(view, under, lineage, out),
            }
            return;
        }
        match p {
            Plan::Source(_) | Plan::View(_) | Plan::Constant(_) => {}
            Plan::Reduce { input, .. } => match under_window(input) {
                Plan::Source(s) => out.entry(s.as_str()).or_default().push((view, p)),
                under => walk(view, under, lineage, out),
            },
            Plan::Join { left, right, .. } => {
                walk(view, left, lineage, out);
                walk(view, right, lineage, out);
            }
            Plan::Union(parts) => parts.iter().for_each(|q| walk(view, q, lineage, out)),
            Plan::Rank { input, .. } => walk(view, input, lineage, out),
            Plan::Filter(..) | Plan::Map(..) | Plan::Window { .. } => unreachable!("stateless steps, above"),
        }
    }
    let mut by_input = BTreeMap::new();
    for v in views {
        walk(&v.name, &v.plan, lineage, &mut by_input);
    }
    by_input.retain(|_, readers| readers.len() > 1);
    by_input
}

/// Which of an input's rows an expression may fail on ([`inputs_of_row_errors`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failing {
    /// any row
    Any,
    /// only a row holding a number beyond the exact float sums' range
    /// ([`super::reduce::beyond_float_sums`]) in one of these columns: the only expressions that
    /// can fail on its rows are SUMs and AVGs of float columns
    LargeFloats(std::collections::BTreeSet<usize>),
}

/// The inputs whose rows an expression that can fail reads as they were read (in a filter or
/// map over the input, through filters only, or in a GROUP BY's keys and aggregates over it,
/// under a window or not), and which of their rows it may fail on: a row error there is the
/// input's row, and the runtime names it by its source position, so it keeps the positions of
/// those rows while their times are in flight. Other inputs need no positions kept.
pub fn inputs_of_row_errors(views: &[View]) -> BTreeMap<String, Failing> {
    fn source_under(mut p: &Plan, window: bool) -> Option<&str> {
        if window {
            p = under_window(p);
        }
        while let Plan::Filter(input, _) = p {
            p = input;
        }
        match p {
            Plan::Source(s) => Some(s.as_str()),
            _ => None,
        }
    }
    let mut out: BTreeMap<String, Failing> = BTreeMap::new();
    for v in views {
        each_node(&v.plan, &mut |n| {
            let read = match n {
                Plan::Filter(input, e) if can_fail(e) => source_under(input, false).map(|s| (s, Failing::Any)),
                Plan::Map(input, es) if es.iter().any(can_fail) => source_under(input, false).map(|s| (s, Failing::Any)),
                Plan::Reduce { input, keys, aggs } => {
                    let float_sum =
                        |a: &&super::plan::Aggregate| matches!(a.func, AggFunc::Sum | AggFunc::Avg) && a.arg_type == Type::Float;
                    let failing = if keys.iter().any(can_fail) || aggs.iter().any(|a| can_fail(&a.arg)) {
                        Some(Failing::Any)
                    } else {
                        // (a float sum of a column, under filters and a window, which keep the
                        // input's columns where they are, fails on that column's large values)
                        let columns: Option<std::collections::BTreeSet<usize>> =
                            aggs.iter().filter(float_sum).map(|a| if let Expr::Column(c) = a.arg { Some(c) } else { None }).collect();
                        match columns {
                            Some(c) if c.is_empty() => None,
                            Some(c) => Some(Failing::LargeFloats(c)),
                            None => Some(Failing::Any),
                        }
                    };
                    failing.and_then(|f| source_under(input, true).map(|s| (s, f)))
                }
                _ => None,
            };
            if let Some((s, f)) = read {
                let merged = match (out.remove(s), f) {
                    (Some(Failing::LargeFloats(mut a)), Failing::LargeFloats(b)) => {
                        a.extend(b);
                        Failing::LargeFloats(a)
                    }
                    (None, f) => f,
                    _ => Failing::Any,
                };
                out.insert(s.to_string(), merged);
            }
        });
    }
    out
}

/// Whether evaluating `e` can fail on a row of the planned types: arithmetic (overflow, division
/// by zero), casts and functions can; columns, constants, comparisons and logic cannot.
fn can_fail(e: &Expr) -> bool {
    use super::plan::BinOp;
    match e {
        Expr::Column(_) | Expr::Literal(_) => false,
        Expr::Binary(BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div | BinOp::Mod, ..) => true,
        Expr::Binary(_, a, b) => can_fail(a) || can_fail(b),
        Expr::Not(a) | Expr::IsNull(a, _) => can_fail(a),
        Expr::Case(arms, otherwise) => arms.iter().any(|(w, t)| can_fail(w) || can_fail(t)) || can_fail(otherwise),
        Expr::InList(a, list, _) => can_fail(a) || list.iter().any(can_fail),
        Expr::Neg(_) | Expr::Cast(..) | Expr::Call(..) => true,
    }
}

/// What a GROUP BY over `input` folds: the plan under a window it sets in place, else `input`.
fn under_window(input: &Plan) -> &Plan {
    match input {
        Plan::Window { input, .. } => input,
        other => other,
    }
}

/// Calls `f` on `p` and every plan under it, not through the views it reads.
fn each_node<'p>(p: &'p Plan, f: &mut impl FnMut(&'p Plan)) {
    f(p);
    match p {
        Plan::Source(_) | Plan::View(_) | Plan::Constant(_) => {}
        Plan::Filter(input, _)
        | Plan::Map(input, _)
        | Plan::Reduce { input, .. }
        | Plan::Rank { input, .. }
        | Plan::Window { input, .. } => each_node(input, f),
        Plan::Union(parts) => parts.iter().for_each(|q| each_node(q, f)),
        Plan::Join { left, right, .. } => {
            each_node(left, f);
            each_node(right, f);
        }
    }
}

/// The views whose rows are only ever inserted, never retracted: their outputs can be streamed
/// out as their times close rather than held.
pub fn append_only_views(views: &[View], shapes: &BTreeMap<String, Shape>) -> Vec<String> {
    let lineage = Lineage::new(shapes, views);
    views.iter().filter(|v| lineage.monotone(&v.plan)).map(|v| v.name.clone()).collect()
}

/// What the operators of each view do beyond its logical plan, for `explain`: joins with
/// constant rows looked up in place, windows dropped at an input's watermark, append-only
/// views.
pub fn physical_notes(views: &[View], shapes: &BTreeMap<String, Shape>) -> BTreeMap<String, Vec<String>> {
    fn walk(l: &Lineage<'_>, p: &Plan, out: &mut Vec<String>) {
        match p {
            Plan::Join { left, right, outer, .. } => {
                if l.constant_rows(right).is_some() {
                    let kind = if *outer { "LeftJoin" } else { "Join" };
                    out.push(format!("the {kind} reads constant rows: it looks each row up on its worker instead (no exchange, no state)"));
                }
                walk(l, left, out);
                walk(l, right, out);
            }
            Plan::Reduce { input, keys, .. } => {
                let bound = keys.iter().find_map(|k| match k {
                    Expr::Column(c) => l.window_bound(input, *c),
                    _ => None,
                });
                if let Some((source, _)) = bound {
                    out.push(format!("the Reduce groups by windows over the event time of `{source}`: a window's group is final and dropped once that watermark passes its end"));
                }
                walk(l, input, out);
            }
            Plan::Filter(input, _) | Plan::Map(input, _) | Plan::Window { input, .. } | Plan::Rank { input, .. } => walk(l, input, out),
            Plan::Union(parts) => parts.iter().for_each(|q| walk(l, q, out)),
            Plan::Source(_) | Plan::View(_) | Plan::Constant(_) => {}
        }
    }
    let lineage = Lineage::new(shapes, views);
    let mut notes = BTreeMap::new();
    let together = read_together(views, &lineage);
    for v in views {
        let mut out = Vec::new();
        walk(&lineage, &v.plan, &mut out);
        for (input, readers) in &together {
            if readers.iter().any(|(view, _)| *view == v.name) {
                let mut others: Vec<&str> = readers.iter().map(|(view, _)| *view).filter(|o| *o != v.name).collect();
                others.dedup();
                let others =
                    if others.is_empty() { "its other readers".to_string() } else { format!("the readers of {}", others.join(", ")) };
                out.push(format!("it reads `{input}` in one pass with {others}: one operator reads each row once"));
            }
        }
        if lineage.monotone(&v.plan) {
            out.push("append-only (no row is ever retracted): its rows stream out as their times close".to_string());
        }
        notes.insert(v.name.clone(), out);
    }
    notes
}

/// Where the columns of a plan's rows come from, looked up through views.
struct Lineage<'a> {
    sources: &'a BTreeMap<String, Shape>,
    views: BTreeMap<&'a str, &'a Plan>,
}

impl<'a> Lineage<'a> {
    fn new(sources: &'a BTreeMap<String, Shape>, views: &'a [View]) -> Self {
        Lineage { sources, views: views.iter().map(|v| (v.name.as_str(), &v.plan)).collect() }
    }

    fn view(&self, name: &str) -> &'a Plan {
        self.views.get(name).unwrap_or_else(|| panic!("the view `{name}` was not compiled"))
    }

    fn arity(&self, p: &Plan) -> usize {
        p.arity(&|n| match self.sources.get(n) {
            Some(source) => source.arity,
            None => self.arity(self.view(n)),
        })
    }

    /// The column of `p`'s input that its column `col` copies, for plans that copy columns.
    fn copied<'p>(&self, p: &'p Plan, col: usize) -> Option<(&'p Plan, usize)> {
        match p {
            Plan::Filter(input, _) => Some((input, col)),
            Plan::Map(input, exprs) | Plan::Reduce { input, keys: exprs, .. } => match exprs.get(col) {
                Some(Expr::Column(c)) => Some((input, *c)),
                _ => None,
            },
            Plan::Window { input, .. } | Plan::Rank { input, .. } => (col < self.arity(input)).then_some((input, col)),
            _ => None,
        }
    }

    /// The input whose event-time column `p`'s column `col` is, copied unchanged.
    fn event_time(&self, p: &Plan, col: usize) -> Option<&'a str> {
        match p {
            Plan::Source(n) => self.sources.get_key_value(n).filter(|(_, s)| s.event_time == Some(col)).map(|(n, _)| n.as_str()),
            Plan::View(n) => self.event_time(self.view(n), col),
            _ => self.copied(p, col).and_then(|(input, c)| self.event_time(input, c)),
        }
    }

    /// `(input, to end)` when `p`'s column `col` is the start or end of a window over an
    /// input's event time: adding `to end` to it gives the window's end.
    fn window_bound(&self, p: &Plan, col: usize) -> Option<(&'a str, i64)> {
        match p {
            Plan::Window { input, time, size, .. } if col >= self.arity(input) => {
                let source = self.event_time(input, *time)?;
                Some((source, if col == self.arity(input) { *size } else { 0 }))
            }
            Plan::View(n) => self.window_bound(self.view(n), col),
            _ => self.copied(p, col).and_then(|(input, c)| self.window_bound(input, c)),
        }
    }

    /// The rows of a plan that reads nothing but constants (`VALUES`, and filters and maps of
    /// them), computed now; `None` for any other plan, or when an expression fails.
    fn constant_rows(&self, p: &Plan) -> Option<Vec<SqlRow>> {
        match p {
            Plan::Constant(rows) => Some(rows.clone()),
            Plan::View(n) => self.constant_rows(self.view(n)),
            Plan::Filter(input, predicate) => {
                let mut out = Vec::new();
                for row in self.constant_rows(input)? {
                    if holds(predicate, &row).ok()?.unwrap_or(false) {
                        out.push(row);
                    }
                }
                Some(out)
            }
            Plan::Map(input, exprs) => self
                .constant_rows(input)?
                .iter()
                .map(|row| exprs.iter().map(|e| eval(e, row)).collect::<Result<SqlRow, String>>().ok())
                .collect(),
            _ => None,
        }
    }

    /// Whether no update of `p` is a retraction.
    fn monotone(&self, p: &Plan) -> bool {
        match p {
            Plan::Source(n) => self.sources[n].monotone,
            Plan::View(n) => self.monotone(self.view(n)),
            Plan::Constant(_) => true,
            Plan::Filter(input, _) | Plan::Map(input, _) | Plan::Window { input, .. } => self.monotone(input),
            Plan::Union(parts) => parts.iter().all(|q| self.monotone(q)),
            // (a join with constant rows looks each row up once: it only ever inserts)
            Plan::Join { left, right, .. } if self.constant_rows(right).is_some() => self.monotone(left),
            Plan::Join { left, right, outer: false, .. } => self.monotone(left) && self.monotone(right),
            Plan::Join { .. } | Plan::Reduce { .. } | Plan::Rank { .. } => false,
        }
    }

    /// `p` keeps no state: filters, maps, windows and unions of inputs, and lookups in constant rows.
    fn stateless(&self, p: &Plan) -> bool {
        match p {
            Plan::Source(_) | Plan::Constant(_) => true,
            Plan::Filter(input, _) | Plan::Map(input, _) | Plan::Window { input, .. } => self.stateless(input),
            Plan::Union(parts) => parts.iter().all(|q| self.stateless(q)),
            Plan::Join { left, right, .. } => self.constant_rows(right).is_some() && self.stateless(left),
            Plan::View(_) | Plan::Reduce { .. } | Plan::Rank { .. } => false,
        }
    }

    /// The sizes of the windows in `p` over `source`'s event time when they all tumble (`None`
    /// when one slides, or windows another column).
    fn tumbling_sizes(&self, p: &Plan, source: &str) -> Option<Vec<i64>> {
        let mut sizes = Vec::new();
        let mut ok = true;
        each_node(p, &mut |n| {
            if let Plan::Window { input, time, size, slide } = n {
                ok &= size == slide && self.event_time(input, *time) == Some(source);
                sizes.push(*size);
            }
        });
        ok.then_some(sizes)
    }

    /// Adds the slide of every window in `p` over an input's event time to `out`.
    fn windows(&self, p: &Plan, out: &mut BTreeMap<String, Vec<i64>>) {
        match p {
            Plan::Source(_) | Plan::View(_) | Plan::Constant(_) => {}
            Plan::Filter(input, _) | Plan::Map(input, _) | Plan::Reduce { input, .. } | Plan::Rank { input, .. } => {
                self.windows(input, out)
            }
            Plan::Window { input, time, slide, .. } => {
                if let Some(source) = self.event_time(input, *time) {
                    out.entry(source.to_string()).or_default().push(*slide);
                }
                self.windows(input, out);
            }
            Plan::Union(parts) => parts.iter().for_each(|q| self.windows(q, out)),
            Plan::Join { left, right, .. } => {
                self.windows(left, out);
                self.windows(right, out);
            }
        }
    }
}

/// The inputs a plan reads: the scope, the sources, the views rendered before, the lineage.
type Reads<'a, 's> =
    (Scope<'s, Time>, &'a BTreeMap<String, Source<'s>>, &'a BTreeMap<String, Rendered<'s>>, &'a Lineage<'a>, &'a Fused<'s>);

/// The readers of an input that read it together with others, by the address of their plan
/// node: what each gives.
type Fused<'s> = RefCell<BTreeMap<usize, Reader<'s>>>;

/// What a reader of an input gives: a GROUP BY's rows and errors, a chain's rows.
enum Reader<'s> {
    Reduce(Reduced<'s>),
    Chain(Coll<'s, Stepped>),
}

/// One GROUP BY of a view (`input`, `keys`, `aggs` of a `Plan::Reduce`) as a member of a fold,
/// and the plan whose rows it folds (under a window the fold sets in place).
fn reduce_member<'s, 'p>(
    input: &'p Plan,
    keys: &[Expr],
    aggs: &[super::plan::Aggregate],
    view: &str,
    lineage: &Lineage<'_>,
    sources: &BTreeMap<String, Source<'s>>,
) -> (Member<'s>, &'p Plan) {
    let spec = Aggregates::new(aggs.to_vec(), lineage.monotone(input));
    // A key that bounds a window over an input's event time: final windows are dropped.
    let retire = keys.iter().enumerate().find_map(|(i, k)| {
        let Expr::Column(c) = k else { return None };
        let (source, to_end) = lineage.window_bound(input, *c)?;
        let (maxima, lateness_ms) = sources[source].watermark.clone()?;
        Some(Retire { column: i, to_end, maxima, lateness_ms })
    });
    // (COUNT(*) takes no argument: it is the group's row count)
    let stored = spec.with_arguments();
    let float_sums: Vec<bool> = stored.iter().map(|a| matches!(a.func, AggFunc::Sum | AggFunc::Avg) && a.arg_type == Type::Float).collect();
    // An argument that is a column is read where the row holds it; the others are evaluated
    // into the arguments' buffer, in order.
    let mut computed = Vec::new();
    let arg_sources: Vec<Arg> = stored
        .iter()
        .map(|a| match a.arg {
            Expr::Column(c) => Arg::Column(c),
            ref e => {
                computed.push(Compiled::new(e));
                Arg::Computed(computed.len() - 1)
            }
        })
        .collect();
    // A key of columns is looked up where the row holds them (nothing copied).
    let columns: Option<Vec<usize>> = keys.iter().map(|k| if let Expr::Column(c) = k { Some(*c) } else { None }).collect();
    let keys: Vec<Compiled> = keys.iter().map(Compiled::new).collect();
    let sources_of_args = arg_sources.clone();
    let fill = move |row: &SqlRow, k: Option<&mut SqlRow>, a: &mut SqlRow| -> Result<(), String> {
        if let Some(k) = k {
            for e in &keys {
                e.eval_onto(row, k)?;
            }
        }
        for e in &computed {
            e.eval_onto(row, a)?;
        }
        let arg = |s: &Arg| match *s {
            Arg::Column(c) => &row[c],
            Arg::Computed(j) => &a[j],
        };
        match sources_of_args.iter().zip(&float_sums).map(|(s, f)| (arg(s), f)).find(|(v, f)| **f && super::reduce::beyond_float_sums(v)) {
            Some((v, _)) => Err(format!("SUM or AVG of {v}: floats are summed exactly below 1e18 in magnitude; filter or scale it first")),
            None => Ok(()),
        }
    };
    // A reduce over a window groups each row once per window, its window_start and window_end
    // set in place (the windowed rows are never built).
    let (under, window) = match input {
        Plan::Window { input, time, size, slide } => (&**input, Some((*time, *size, *slide))),
        input => (input, None),
    };
    (
        Member {
            view: view.to_string(),
            grouping: Grouping { fill: Box::new(fill), columns, args: arg_sources, window },
            spec,
            retire,
            count: false,
        },
        under,
    )
}

/// `rows`, inserted once (by the first worker) at the first time.
fn constant<'s, D: differential_dataflow::Data>(scope: Scope<'s, Time>, rows: Vec<D>) -> Coll<'s, D> {
    scope.new_collection_from(if scope.index() == 0 { rows } else { Vec::new() }).1
}

/// Splits `rows`: `Ok` rows go on, `Err` reasons become errors of `view`. (One consumer of
/// `rows`: two would make timely clone every container.)
fn split<'s, D: differential_dataflow::Data>(
    rows: Coll<'s, Result<D, (String, SqlRow)>>,
    view: &str,
    errors: &mut Vec<Coll<'s, RowError>>,
) -> Coll<'s, D> {
    split_map(rows, view, errors, |r| r)
}

/// Each of `rows` mapped by `f` and split as [`split`] does, in one operator (not a map and
/// then a split: a second pass over every update).
fn split_map<'s, A: differential_dataflow::Data, D: differential_dataflow::Data>(
    rows: Coll<'s, A>,
    view: &str,
    errors: &mut Vec<Coll<'s, RowError>>,
    f: impl Fn(A) -> Result<D, (String, SqlRow)> + 'static,
) -> Coll<'s, D> {
    split_filter_map(rows, view, errors, move |a| f(a).map(Some))
}

/// [`split_map`] where `f` may also drop a row (`Ok(None)`): the map, the filter and the split
/// in one operator.
fn split_filter_map<'s, A: differential_dataflow::Data, D: differential_dataflow::Data>(
    rows: Coll<'s, A>,
    view: &str,
    errors: &mut Vec<Coll<'s, RowError>>,
    f: impl Fn(A) -> Result<Option<D>, (String, SqlRow)> + 'static,
) -> Coll<'s, D> {
    use differential_dataflow::AsCollection;
    use timely::dataflow::channels::pact::Pipeline;
    use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
    let view = view.to_string();
    let mut builder = OperatorBuilder::new("Split".to_string(), rows.inner.scope());
    let mut input = builder.new_input(rows.inner, Pipeline);
    builder.set_notify_for(0, timely::progress::operate::FrontierInterest::Never);
    let (mut ok_out, ok) = new_output::<D>(&mut builder);
    let (mut err_out, err) = new_output::<RowError>(&mut builder);
    builder.build(move |_capabilities| {
        move |_frontiers| {
            let (mut ok_out, mut err_out) = (ok_out.activate(), err_out.activate());
            input.for_each_stamp(|cap, data| {
                let (mut ok, mut err) = (ok_out.session(&cap), err_out.session(&cap));
                for (a, t, d) in data.flat_map(|batch| batch.drain(..)) {
                    match f(a) {
                        Ok(Some(row)) => ok.give((row, t, d)),
                        Ok(None) => {}
                        Err((reason, row)) => err.give(((view.clone(), reason, row), t, d)),
                    }
                }
            });
        }
    });
    errors.push(err.as_collection());
    ok.as_collection()
}

/// One stateless step of a chain that runs in one operator.
enum Step {
    /// rows for which the predicate is TRUE
    Filter(Predicate),
    /// each row mapped to these expressions
    Map(Vec<Compiled>),
    /// each row once per window holding its timestamp column
    Window { time: usize, size: i64, slide: i64 },
    /// each row joined with the constant rows of its key (a left join keeps it with NULLs)
    Lookup { keys: Vec<Expr>, table: LookupTable, outer: bool, arity: usize },
}

/// The stateless steps at the top of `p` (filters, maps, windows, lookups in constant rows),
/// first step first, and the plan under them.
fn stateless_steps<'p>(mut p: &'p Plan, lineage: &Lineage<'_>) -> (&'p Plan, Vec<Step>) {
    let mut steps = Vec::new();
    loop {
        match p {
            Plan::Filter(input, predicate) => {
                steps.push(Step::Filter(Predicate::new(predicate)));
                p = input;
            }
            Plan::Map(input, exprs) => {
                steps.push(Step::Map(exprs.iter().map(Compiled::new).collect()));
                p = input;
            }
            Plan::Window { input, time, size, slide } => {
                steps.push(Step::Window { time: *time, size: *size, slide: *slide });
                p = input;
            }
            Plan::Join { left, right, left_keys, right_keys, outer, right_arity } => {
                let Some(table) = lineage.constant_rows(right).and_then(|rows| lookup_table(rows, right_keys)) else { break };
                steps.push(Step::Lookup { keys: left_keys.clone(), table, outer: *outer, arity: *right_arity });
                p = left;
            }
            _ => break,
        }
    }
    steps.reverse();
    (p, steps)
}

/// Runs `row` through `steps`, handing every row that comes out (or fails) to `emit`. `key` is
/// a reused buffer for a lookup's key. A filter right after a lookup judges the row and what
/// it found where they are, before the joined row is built (most rows of an alert stream are
/// not kept).
fn run_steps(steps: &[Step], row: Cow<'_, SqlRow>, key: &mut SqlRow, emit: &mut impl FnMut(Stepped)) {
    let Some((step, rest)) = steps.split_first() else { return emit(Ok(row.into_owned())) };
    match step {
        Step::Filter(predicate) => match predicate.holds(&row) {
            Ok(Some(true)) => run_steps(rest, row, key, emit),
            Ok(_) => {}
            Err(e) => emit(Err((e, row.into_owned()))),
        },
        Step::Map(exprs) => {
            let mut out = SqlRow::with_capacity(exprs.len());
            match exprs.iter().try_for_each(|e| e.eval_onto(&row, &mut out)) {
                Ok(()) => run_steps(rest, Cow::Owned(out), key, emit),
                Err(e) => emit(Err((e, row.into_owned()))),
            }
        }
        Step::Window { time, size, slide } => {
            for s in window_starts(&row[*time], *size, *slide) {
                let windowed = row.iter().cloned().chain([Value::Timestamp(s), Value::Timestamp(s + size)]).collect();
                run_steps(rest, Cow::Owned(windowed), key, emit);
            }
        }
        Step::Lookup { keys, table, outer, arity } => {
            // (a key that is one column is looked up where the row holds it)
            let wanted: &[Value] = match keys.as_slice() {
                [Expr::Column(c)] => std::slice::from_ref(&row[*c]),
                _ => {
                    key.clear();
                    for k in keys {
                        if let Err(e) = eval_onto(k, &row, key) {
                            return emit(Err((e, row.into_owned())));
                        }
                    }
                    key
                }
            };
            // (a NULL key matches nothing; a left join keeps an unmatched row with NULLs)
            let found = if wanted.iter().any(Value::is_null) { None } else { table.get(wanted) };
            let unmatched = (found.is_none() && *outer).then_some(None);
            for r in found.into_iter().flatten().map(Some).chain(unmatched) {
                let r = r.map(Vec::as_slice);
                let join = || -> SqlRow {
                    let nulls = std::iter::repeat_n(Value::Null, if r.is_some() { 0 } else { *arity });
                    row.iter().chain(r.unwrap_or_default()).cloned().chain(nulls).collect()
                };
                // a filter right after judges the row and what it found where they are
                let (rest, judged) = match rest.split_first() {
                    Some((Step::Filter(predicate), after)) => (after, predicate.holds_joined(&row, r)),
                    _ => (rest, Ok(Some(true))),
                };
                match judged {
                    Ok(Some(true)) => run_steps(rest, Cow::Owned(join()), key, emit),
                    Ok(_) => {}
                    Err(e) => emit(Err((e, join()))),
                }
            }
        }
    }
}

/// `steps` as a chain that reads a row where it is.
fn chain(steps: Vec<Step>) -> Chain {
    let mut key = SqlRow::new();
    Box::new(move |row: &SqlRow, emit: &mut dyn FnMut(Stepped)| run_steps(&steps, Cow::Borrowed(row), &mut key, &mut |s| emit(s)))
}

fn plan<'s>(p: &Plan, view: &str, reads: Reads<'_, 's>, errors: &mut Vec<Coll<'s, RowError>>) -> Coll<'s, SqlRow> {
    let (scope, sources, views, lineage, fused) = reads;
    // A run of stateless steps is one operator: no container, exchange or row between steps
    // (with the input's other readers, when it reads an input with others).
    let (under, steps) = stateless_steps(p, lineage);
    if !steps.is_empty() {
        let read_with_others = fused.borrow_mut().remove(&(p as *const Plan as usize));
        let stepped = match read_with_others {
            Some(Reader::Chain(c)) => c,
            Some(Reader::Reduce(_)) => unreachable!("a chain's node"),
            None => {
                let rows = plan(under, view, reads, errors);
                let (_, mut chained) = read_once(rows, Vec::new(), vec![chain(steps)]);
                chained.pop().expect("one chain, one result")
            }
        };
        return split(stepped, view, errors);
    }
    match p {
        Plan::Source(n) => sources.get(n).unwrap_or_else(|| panic!("the input `{n}` was not given")).rows.all(),
        Plan::View(n) => views[n].rows.clone(),
        Plan::Constant(rows) => constant(scope, rows.clone()),
        Plan::Filter(..) | Plan::Map(..) | Plan::Window { .. } => unreachable!("stateless steps, above"),
        Plan::Union(parts) => {
            let parts: Vec<Coll<'s, SqlRow>> = parts.iter().map(|q| plan(q, view, reads, errors)).collect();
            differential_dataflow::collection::concatenate(scope, parts)
        }
        Plan::Rank { input, partition, order } => {
            let (partition, sort_by) = (partition.clone(), order.iter().map(|o| o.expr.clone()).collect::<Vec<_>>());
            let keyed = plan(input, view, reads, errors).map(move |row| {
                let key: Result<SqlRow, String> = partition.iter().map(|e| eval(e, &row)).collect();
                let sort: Result<SqlRow, String> = sort_by.iter().map(|e| eval(e, &row)).collect();
                match (key, sort) {
                    (Ok(k), Ok(s)) => Ok((k, (s, row))),
                    (Err(e), _) | (_, Err(e)) => Err((e, row)),
                }
            });
            let keyed = count_held(split(keyed, view, errors), view, "RowNumber");
            let order: Vec<(bool, bool)> = order.iter().map(|o| (o.desc, o.nulls_first)).collect();
            // Each changed partition is numbered again from its current rows; differential emits
            // only the numbered rows that changed.
            keyed
                .reduce(move |_, rows: &[(&(SqlRow, SqlRow), isize)], out: &mut Vec<(SqlRow, isize)>| {
                    let mut all: Vec<&(SqlRow, SqlRow)> = Vec::new();
                    for (r, n) in rows {
                        all.extend(std::iter::repeat_n(*r, (*n).max(0) as usize));
                    }
                    all.sort_by(|a, b| sort_order(&a.0, &b.0, &order).then_with(|| a.1.cmp(&b.1)));
                    for (i, (_, row)) in all.into_iter().enumerate() {
                        out.push((row.iter().cloned().chain([Value::Int(i as i64 + 1)]).collect(), 1));
                    }
                })
                .map(|(_, row)| row)
        }
        Plan::Join { left, right, left_keys, right_keys, outer, right_arity } => {
            // (a join with constant rows is a lookup: a stateless step, above)
            if !*outer {
                let (l, r) = inner_sides((left, left_keys), (right, right_keys), view, reads, errors);
                return inner_join(view, l, r, |a, b| a.iter().chain(b).cloned().collect::<SqlRow>(), concat_rows()).0;
            }
            let (l, r) = join_sides((left, left_keys), (right, right_keys), view, reads, errors);
            // (differential arranges both sides by key: their rows are what the join keeps,
            // counted once per side though the left one is arranged for the matches and again
            // for the unmatched)
            let (l, r) = (count_held(l, view, "LeftJoin"), count_held(r, view, "LeftJoin"));
            let matched = l.clone().filter(no_null).join_map(r.clone(), |_, a, b| a.iter().chain(b).cloned().collect::<SqlRow>());
            let n = *right_arity;
            let right_keys = r.map(|(k, _)| k).distinct();
            let unmatched = l.clone().filter(no_null).antijoin(right_keys).concat(l.filter(move |kv| !no_null(kv)));
            matched.concat(unmatched.map(move |(_, a)| a.into_iter().chain(std::iter::repeat_n(Value::Null, n)).collect()))
        }
        Plan::Reduce { input, keys, aggs } => grouped(p, (input, keys, aggs), view, reads, errors, false).0,
    }
}

/// A NULL key matches nothing.
fn no_null((k, _): &(Key, SqlRow)) -> bool {
    !k.values().iter().any(Value::is_null)
}

/// The two sides of a join, each row keyed by its side's key expressions (a row whose key
/// fails is an error of `view`); the right side without its NULL keys (they match nothing),
/// the left with them (a left join keeps them, unmatched).
#[allow(clippy::type_complexity)]
fn join_sides<'s>(
    (left, left_keys): (&Plan, &[Expr]),
    (right, right_keys): (&Plan, &[Expr]),
    view: &str,
    reads: Reads<'_, 's>,
    errors: &mut Vec<Coll<'s, RowError>>,
) -> (Coll<'s, (Key, SqlRow)>, Coll<'s, (Key, SqlRow)>) {
    let l = keyed(plan(left, view, reads, errors), left_keys, false, view, errors);
    let r = keyed(plan(right, view, reads, errors), right_keys, true, view, errors);
    (l, r)
}

/// The two sides of an inner join, without their NULL keys (they match nothing). A side that
/// is an upsert input joined on its key is its ranked records: the join keeps each key's
/// latest version itself.
fn inner_sides<'s>(
    (left, left_keys): (&Plan, &[Expr]),
    (right, right_keys): (&Plan, &[Expr]),
    view: &str,
    reads: Reads<'_, 's>,
    errors: &mut Vec<Coll<'s, RowError>>,
) -> (JoinSide<'s>, JoinSide<'s>) {
    let mut side = |p: &Plan, keys: &[Expr]| match latest_on_key(p, keys, reads.1) {
        Some(ranked) => JoinSide::Latest(ranked),
        None => JoinSide::Rows(keyed(plan(p, view, reads, errors), keys, true, view, errors)),
    };
    let l = side(left, left_keys);
    (l, side(right, right_keys))
}

/// When `p` is an upsert input and `keys` its key columns, in order: its ranked records keyed
/// by them, without NULL keys.
fn latest_on_key<'s>(p: &Plan, keys: &[Expr], sources: &BTreeMap<String, Source<'s>>) -> Option<Coll<'s, (Key, (u64, SqlRow))>> {
    let Plan::Source(n) = p else { return None };
    let Rows::Latest { ranked, key, .. } = &sources.get(n)?.rows else { return None };
    let on_key = keys.len() == key.len() && keys.iter().zip(key).all(|(e, k)| matches!(e, Expr::Column(c) if c == k));
    if !on_key {
        return None;
    }
    let key = key.clone();
    Some(ranked.clone().flat_map(move |(rank, row)| {
        let k = Key::at(&key, &row);
        (!k.values().iter().any(Value::is_null)).then_some((k, (rank, row)))
    }))
}

/// `rows` keyed by `keys` (a row whose key fails is an error of `view`; with `drop_null`, a
/// row whose key holds a NULL is dropped), in one operator.
fn keyed<'s>(
    rows: Coll<'s, SqlRow>,
    keys: &[Expr],
    drop_null: bool,
    view: &str,
    errors: &mut Vec<Coll<'s, RowError>>,
) -> Coll<'s, (Key, SqlRow)> {
    let keys = keys.to_vec();
    split_filter_map(rows, view, errors, move |row| {
        let key = match &keys[..] {
            [k] => eval(k, &row).map(Key::One),
            keys => keys.iter().map(|k| eval(k, &row)).collect::<Result<Box<[Value]>, String>>().map(Key::Many),
        };
        match key {
            Ok(k) if drop_null && k.values().iter().any(Value::is_null) => Ok(None),
            Ok(k) => Ok(Some((k, row))),
            Err(e) => Err((e, row)),
        }
    })
}

/// `rows` through stateless `steps` (none: `rows`), in one operator; rows they fail on are
/// errors of `view`.
fn over_steps<'s>(rows: Coll<'s, SqlRow>, steps: Vec<Step>, view: &str, errors: &mut Vec<Coll<'s, RowError>>) -> Coll<'s, SqlRow> {
    if steps.is_empty() {
        return rows;
    }
    let (_, mut chained) = read_once(rows, Vec::new(), vec![chain(steps)]);
    split(chained.pop().expect("one chain, one result"), view, errors)
}

/// A GROUP BY (`node`, a `Plan::Reduce` of these parts): its rows `keys ++ aggregates` and,
/// when it keeps every group (no window dropped, some key), the reader of its current rows.
#[allow(clippy::type_complexity)]
fn grouped<'s>(
    node: &Plan,
    (input, keys, aggs): (&Plan, &[Expr], &[super::plan::Aggregate]),
    view: &str,
    reads: Reads<'_, 's>,
    errors: &mut Vec<Coll<'s, RowError>>,
    count: bool,
) -> (Coll<'s, SqlRow>, Option<CurrentSqlRows>, Option<Coll<'s, ()>>) {
    let (scope, sources, _, lineage, fused) = reads;
    // SQL's global aggregate has a row even over no input: the empty group's, while no
    // group exists.
    let empty = keys.is_empty().then(|| Aggregates::new(aggs.to_vec(), true).empty_row());
    let read_with_others = fused.borrow_mut().remove(&(node as *const Plan as usize));
    let (grouped, failed, current, counted) = match read_with_others {
        Some(Reader::Reduce(reduced)) => reduced,
        Some(Reader::Chain(_)) => unreachable!("a GROUP BY's node"),
        None => {
            let (mut member, under) = reduce_member(input, keys, aggs, view, lineage, sources);
            member.count = counts_beside_rows(&member, keys, count);
            let rows = plan(under, view, reads, errors);
            read_once(rows, vec![member], Vec::new()).0.pop().expect("one member, one result")
        }
    };
    let name = view.to_string();
    errors.push(failed.map(move |(e, row)| (name.clone(), e, row)));
    let folded = grouped;
    let Some(empty) = empty else { return (folded, current, counted) };
    let missing = constant(scope, vec![()]).concat(folded.clone().map(|_| ()).negate());
    (folded.concat(missing.map(move |()| empty.clone())), None, None)
}

/// Whether a GROUP BY asked for its view's changes without rows (`asked`: the view is this
/// GROUP BY and a snapshot-only run counts it) gives them: not a global aggregate (its view adds
/// the empty group's row) nor a windowed one (it has no current rows to give at the end, so the
/// run takes its rows).
fn counts_beside_rows(member: &Member<'_>, keys: &[Expr], asked: bool) -> bool {
    asked && !keys.is_empty() && member.retire.is_none()
}

/// `rows`, counted on their way into an arrangement: the net of their diffs is what it holds,
/// reported to the state metrics as `operator` of `view` (one gauge per call and worker; calls
/// with the same names add up).
fn count_held<'s, D: differential_dataflow::Data>(rows: Coll<'s, D>, view: &str, operator: &'static str) -> Coll<'s, D> {
    let size = crate::state::StateSize::new(view, operator);
    let mut net: isize = 0;
    rows.inspect_batch(move |_, updates| {
        net += updates.iter().map(|(_, _, r)| *r).sum::<isize>();
        size.set(net.max(0) as usize);
    })
}

/// SQL's order of two sort keys: each term ascending or descending (`desc`), NULLs first or
/// last (`nulls_first`) either way.
fn sort_order(a: &SqlRow, b: &SqlRow, order: &[(bool, bool)]) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    for ((x, y), &(desc, nulls_first)) in a.iter().zip(b).zip(order) {
        let o = match (x.is_null(), y.is_null()) {
            (true, true) => Ordering::Equal,
            (true, false) if nulls_first => Ordering::Less,
            (true, false) => Ordering::Greater,
            (false, true) if nulls_first => Ordering::Greater,
            (false, true) => Ordering::Less,
            (false, false) if desc => y.cmp(x),
            (false, false) => x.cmp(y),
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    Ordering::Equal
}

/// The starts of the windows `[s, s + size)` holding timestamp `t` (`s` a multiple of
/// `slide`), latest first; none for a NULL time.
pub(super) fn window_starts(t: &Value, size: i64, slide: i64) -> impl Iterator<Item = i64> {
    let last = match t {
        Value::Timestamp(t) => Some(t.div_euclid(slide) * slide),
        _ => None,
    };
    last.into_iter().flat_map(move |last| (0..size / slide).map(move |i| last - i * slide))
}

/// Constant rows by their join key (a NULL key matches nothing); `None` when a key expression
/// fails on one of them (the join then runs as any other, and reports it).
fn lookup_table(rows: Vec<SqlRow>, keys: &[Expr]) -> Option<LookupTable> {
    let mut table = hashbrown::HashTable::new();
    for row in rows {
        let k = keys.iter().map(|k| eval(k, &row)).collect::<Result<SqlRow, String>>().ok()?;
        if !k.iter().any(Value::is_null) {
            let hash = hash_values(k.iter());
            match table.find_mut(hash, |(key, _): &(SqlRow, Vec<SqlRow>)| *key == k) {
                Some((_, rows)) => rows.push(row),
                None => {
                    table.insert_unique(hash, (k, vec![row]), |(key, _)| hash_values(key.iter()));
                }
            }
        }
    }
    Some(LookupTable(table))
}

/// Constant rows by their key, looked up once per row of a stream: keys are hashed by
/// [`hash_values`] (through `Hash`, a key's hash cost more than the rest of the lookup).
struct LookupTable(hashbrown::HashTable<(SqlRow, Vec<SqlRow>)>);

impl LookupTable {
    /// The rows of `key`.
    fn get(&self, key: &[Value]) -> Option<&Vec<SqlRow>> {
        self.0.find(hash_values(key.iter()), |(k, _)| k.as_slice() == key).map(|(_, rows)| rows)
    }
}
