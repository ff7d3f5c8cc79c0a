//! Plans as differential operators: filters and maps stay on the worker that has the row;
//! a reduce exchanges and arranges by its group key, a join both sides by the join key. Rows
//! whose expressions fail leave as errors of their view (dead letters), the rest go on.

use std::collections::BTreeMap;

use differential_dataflow::input::Input;
use timely::dataflow::Scope;

use super::eval::{cast, eval, truth};
use super::plan::{AggFunc, Aggregate, Expr, Plan, View};
use super::value::{SqlRow, Type, Value};
use crate::{Coll, Time};

/// A row an expression failed on: the view, the reason, the row.
pub type RowError = (String, String, SqlRow);

/// A rendered view: its rows, and the rows its expressions failed on.
#[derive(Clone)]
pub struct Rendered<'s> {
    /// the view's rows
    pub rows: Coll<'s, SqlRow>,
    /// its row errors
    pub errors: Coll<'s, RowError>,
}

/// Renders `views` in `scope`, in order, over the `sources`' rows (a view may read the ones
/// before it).
pub fn render<'s>(scope: Scope<'s, Time>, views: &[View], sources: &BTreeMap<String, Coll<'s, SqlRow>>) -> BTreeMap<String, Rendered<'s>> {
    let mut done: BTreeMap<String, Rendered<'s>> = BTreeMap::new();
    for view in views {
        let mut errors = Vec::new();
        let rows = plan(&view.plan, &view.name, (scope, sources, &done), &mut errors);
        let errors = differential_dataflow::collection::concatenate(scope, errors);
        done.insert(view.name.clone(), Rendered { rows, errors });
    }
    done
}

/// The inputs a plan reads: the scope, the sources, the views rendered before.
type Reads<'a, 's> = (Scope<'s, Time>, &'a BTreeMap<String, Coll<'s, SqlRow>>, &'a BTreeMap<String, Rendered<'s>>);

/// `rows`, inserted once (by the first worker) at the first time.
fn constant<'s, D: differential_dataflow::Data>(scope: Scope<'s, Time>, rows: Vec<D>) -> Coll<'s, D> {
    scope.new_collection_from(if scope.index() == 0 { rows } else { Vec::new() }).1
}

/// Splits `rows` by `f`: `Ok` rows go on, `Err` reasons become errors of `view`.
fn split<'s, D: differential_dataflow::Data>(
    rows: Coll<'s, Result<D, (String, SqlRow)>>,
    view: &str,
    errors: &mut Vec<Coll<'s, RowError>>,
) -> Coll<'s, D> {
    let view = view.to_string();
    errors.push(rows.clone().flat_map(move |r| r.err().map(|(reason, row)| (view.clone(), reason, row))));
    rows.flat_map(Result::ok)
}

fn plan<'s>(p: &Plan, view: &str, reads: Reads<'_, 's>, errors: &mut Vec<Coll<'s, RowError>>) -> Coll<'s, SqlRow> {
    let (scope, sources, views) = reads;
    match p {
        Plan::Source(n) => sources.get(n).unwrap_or_else(|| panic!("the input `{n}` was not given")).clone(),
        Plan::View(n) => views[n].rows.clone(),
        Plan::Constant(rows) => constant(scope, rows.clone()),
        Plan::Filter(input, predicate) => {
            let predicate = predicate.clone();
            let rows = plan(input, view, reads, errors).flat_map(move |row| match eval(&predicate, &row).and_then(truth) {
                Ok(Some(true)) => Some(Ok(row)),
                Ok(_) => None,
                Err(e) => Some(Err((e, row))),
            });
            split(rows, view, errors)
        }
        Plan::Map(input, exprs) => {
            let exprs = exprs.clone();
            let rows = plan(input, view, reads, errors).map(move |row| match exprs.iter().map(|e| eval(e, &row)).collect() {
                Ok(out) => Ok(out),
                Err(e) => Err((e, row)),
            });
            split(rows, view, errors)
        }
        Plan::Window { input, time, size, slide } => {
            let (time, size, slide) = (*time, *size, *slide);
            plan(input, view, reads, errors).flat_map(move |row| {
                let t = match row[time] {
                    Value::Timestamp(t) => Some(t),
                    _ => None,
                };
                // the windows [s, s + size) holding t, s a multiple of slide
                let last = t.map(|t| t.div_euclid(slide) * slide);
                let starts = last.into_iter().flat_map(move |last| (0..size / slide).map(move |i| last - i * slide));
                starts
                    .map(move |s| row.iter().cloned().chain([Value::Timestamp(s), Value::Timestamp(s + size)]).collect::<SqlRow>())
                    .collect::<Vec<_>>()
            })
        }
        Plan::Union(parts) => {
            let parts: Vec<Coll<'s, SqlRow>> = parts.iter().map(|q| plan(q, view, reads, errors)).collect();
            differential_dataflow::collection::concatenate(scope, parts)
        }
        Plan::Join { left, right, left_keys, right_keys, outer, right_arity } => {
            let keyed = |rows: Coll<'s, SqlRow>, keys: &[Expr], errors: &mut Vec<Coll<'s, RowError>>| {
                let keys = keys.to_vec();
                let rows = rows.map(move |row| match keys.iter().map(|k| eval(k, &row)).collect::<Result<SqlRow, String>>() {
                    Ok(k) => Ok((k, row)),
                    Err(e) => Err((e, row)),
                });
                split(rows, view, errors)
            };
            let l = keyed(plan(left, view, reads, errors), left_keys, errors);
            let r = keyed(plan(right, view, reads, errors), right_keys, errors);
            // A NULL key matches nothing.
            let no_null = |(k, _): &(SqlRow, SqlRow)| !k.iter().any(Value::is_null);
            let r = r.filter(no_null);
            if !*outer {
                return hash_join(l.filter(no_null), r);
            }
            let matched = l.clone().filter(no_null).join_map(r.clone(), |_, a, b| a.iter().chain(b).cloned().collect::<SqlRow>());
            let n = *right_arity;
            let right_keys = r.map(|(k, _)| k).distinct();
            let unmatched = l.clone().filter(no_null).antijoin(right_keys).concat(l.filter(move |kv| !no_null(kv)));
            matched.concat(unmatched.map(move |(_, a)| a.into_iter().chain(std::iter::repeat_n(Value::Null, n)).collect()))
        }
        Plan::Reduce { input, keys, aggs } => {
            let global = keys.is_empty();
            // SQL's global aggregate has a row even over no input: the empty group's, while no
            // group exists.
            let empty = global.then(|| aggregate(aggs, &[]).expect("the empty group's aggregates"));
            let (keys, args): (Vec<Expr>, Vec<Expr>) = (keys.clone(), aggs.iter().map(|a| a.arg.clone()).collect());
            let rows = plan(input, view, reads, errors).map(move |row| {
                let k: Result<SqlRow, String> = keys.iter().map(|k| eval(k, &row)).collect();
                let a: Result<SqlRow, String> = args.iter().map(|k| eval(k, &row)).collect();
                match (k, a) {
                    (Ok(k), Ok(a)) => Ok((k, a)),
                    (Err(e), _) | (_, Err(e)) => Err((e, row)),
                }
            });
            let grouped = split(rows, view, errors);
            let aggs = aggs.clone();
            let folded = if aggs.iter().all(accumulable) {
                accumulate(grouped, aggs)
            } else {
                grouped.reduce(move |_key, group: &[(&SqlRow, isize)], out: &mut Vec<(Result<SqlRow, String>, isize)>| {
                    out.push((aggregate(&aggs, group), 1));
                })
            };
            let folded = split(
                folded.map(|(k, r)| match r {
                    Ok(a) => Ok(k.into_iter().chain(a).collect::<SqlRow>()),
                    Err(e) => Err((e, k)),
                }),
                view,
                errors,
            );
            let Some(empty) = empty else { return folded };
            let missing = constant(scope, vec![()]).concat(folded.clone().map(|_| ()).negate());
            folded.concat(missing.map(move |()| empty.clone()))
        }
    }
}

/// Whether an aggregate is a sum of per-row numbers (exact, in any order): counts, and SUM and
/// AVG of ints. Those need no group's rows, only running sums.
fn accumulable(a: &Aggregate) -> bool {
    match a.func {
        AggFunc::CountStar | AggFunc::Count => true,
        AggFunc::Sum | AggFunc::Avg => a.arg_type == Type::Int,
        AggFunc::CountDistinct | AggFunc::Min | AggFunc::Max => false,
    }
}

/// Per group, the running sums of accumulable aggregates: slot 0 counts the group's rows, then
/// COUNT(x) one slot (non-NULL xs), SUM and AVG two (the sum, the non-NULL count).
fn deltas(aggs: &[Aggregate], args: &SqlRow, r: isize, acc: &mut [i128]) {
    let r = r as i128;
    acc[0] += r;
    let mut slot = 1;
    for (a, v) in aggs.iter().zip(args) {
        match (a.func, v) {
            (AggFunc::CountStar, _) => {}
            (AggFunc::Count, v) => {
                acc[slot] += if v.is_null() { 0 } else { r };
                slot += 1;
            }
            (_, v) => {
                if let Value::Int(i) = v {
                    acc[slot] += *i as i128 * r;
                    acc[slot + 1] += r;
                }
                slot += 2;
            }
        }
    }
}

fn slots(aggs: &[Aggregate]) -> usize {
    1 + aggs
        .iter()
        .map(|a| usize::from(a.func == AggFunc::Count) + 2 * usize::from(matches!(a.func, AggFunc::Sum | AggFunc::Avg)))
        .sum::<usize>()
}

/// The aggregates' values from a group's sums.
fn finish(aggs: &[Aggregate], acc: &[i128]) -> Result<SqlRow, String> {
    let mut out = Vec::with_capacity(aggs.len());
    let mut slot = 1;
    for a in aggs {
        out.push(match a.func {
            AggFunc::CountStar => Value::Int(acc[0] as i64),
            AggFunc::Count => {
                slot += 1;
                Value::Int(acc[slot - 1] as i64)
            }
            func => {
                let (sum, n) = (acc[slot], acc[slot + 1]);
                slot += 2;
                match (func, n) {
                    (_, 0) => Value::Null,
                    (AggFunc::Sum, _) => Value::Int(i64::try_from(sum).map_err(|_| "integer overflow in SUM")?),
                    _ => Value::Float(sum as f64 / n as f64),
                }
            }
        });
    }
    Ok(out)
}

/// A reduce of accumulable aggregates without arrangements: each worker adds up its updates'
/// sums per group and time, the partial sums are exchanged by group, and each completed time, in
/// order, updates every touched group's sums and emits `-old +new` for its row. Holds one set
/// of sums per group, not the group's rows.
fn accumulate<'s>(grouped: Coll<'s, (SqlRow, SqlRow)>, aggs: Vec<Aggregate>) -> Coll<'s, (SqlRow, Result<SqlRow, String>)> {
    use crate::ops::{stash_by_time, FastMap, Stash};
    use differential_dataflow::AsCollection;
    use timely::dataflow::channels::pact::{Exchange, Pipeline};
    use timely::dataflow::operators::generic::operator::Operator;
    let n = slots(&aggs);
    let local_aggs = aggs.clone();
    let mut sums: FastMap<(SqlRow, Time), Vec<i128>> = FastMap::default();
    let partial = grouped
        .inner
        .unary(Pipeline, "AccumulateLocal", move |_cap, _info| {
            move |input, output| {
                input.for_each_stamp(|cap, data| {
                    for batch in data {
                        for ((k, args), t, r) in batch.drain(..) {
                            deltas(&local_aggs, &args, r, sums.entry((k, t)).or_insert_with(|| vec![0; n]));
                        }
                    }
                    let mut session = output.session(&cap);
                    for ((k, t), acc) in sums.drain() {
                        session.give(((k, acc), t, 1isize));
                    }
                });
            }
        })
        .container::<Vec<_>>();
    let exchange = Exchange::new(|((k, _), _, _): &((SqlRow, Vec<i128>), Time, isize)| differential_dataflow::Hashable::hashed(k));
    partial
        .unary_frontier(exchange, "Accumulate", move |_cap, _info| {
            let mut pending: Stash<(SqlRow, Vec<i128>)> = Default::default();
            let mut state: FastMap<SqlRow, Vec<i128>> = FastMap::default();
            move |(input, frontier), output| {
                stash_by_time(input, &mut pending, output.output_index());
                while pending.first_key_value().is_some_and(|(t, _)| !frontier.less_equal(t)) {
                    let (t, (cap, partials)) = pending.pop_first().expect("checked");
                    let mut delta: FastMap<SqlRow, Vec<i128>> = FastMap::default();
                    for ((k, acc), r) in partials {
                        let d = delta.entry(k).or_insert_with(|| vec![0; n]);
                        for (x, y) in d.iter_mut().zip(acc) {
                            *x += y * r as i128;
                        }
                    }
                    let mut session = output.session(&cap);
                    for (k, d) in delta.into_iter().filter(|(_, d)| d.iter().any(|x| *x != 0)) {
                        let old = state.remove(&k);
                        if let Some(old) = &old {
                            session.give(((k.clone(), finish(&aggs, old)), t, -1));
                        }
                        let mut new = old.unwrap_or_else(|| vec![0; n]);
                        for (x, y) in new.iter_mut().zip(d) {
                            *x += y;
                        }
                        if new[0] > 0 {
                            session.give(((k.clone(), finish(&aggs, &new)), t, 1));
                            state.insert(k, new);
                        }
                    }
                }
            }
        })
        .container::<Vec<_>>()
        .as_collection()
}

/// An inner equi-join in hash maps: both sides exchanged by key; per key, each side's current
/// rows (a multiset, no history); each completed time, in order, emits
/// `ΔL ⋈ R + L ⋈ ΔR + ΔL ⋈ ΔR` (rows `left ++ right`) and then applies the deltas.
fn hash_join<'s>(left: Coll<'s, (SqlRow, SqlRow)>, right: Coll<'s, (SqlRow, SqlRow)>) -> Coll<'s, SqlRow> {
    use crate::ops::{multiset_apply, stash_by_time, FastMap, Stash};
    use differential_dataflow::AsCollection;
    use timely::dataflow::channels::pact::Exchange;
    use timely::dataflow::operators::generic::operator::Operator;
    type Side = Vec<(SqlRow, isize)>;
    let by_key = || Exchange::new(|((k, _), _, _): &((SqlRow, SqlRow), Time, isize)| differential_dataflow::Hashable::hashed(k));
    left.inner
        .binary_frontier(right.inner, by_key(), by_key(), "HashJoin", |_cap, _info| {
            let mut pending: [Stash<(SqlRow, SqlRow)>; 2] = Default::default();
            let mut state: FastMap<SqlRow, (Side, Side)> = FastMap::default();
            move |(l, lf), (r, rf), output| {
                let port = output.output_index();
                stash_by_time(l, &mut pending[0], port);
                stash_by_time(r, &mut pending[1], port);
                loop {
                    let next = pending.iter().filter_map(|p| p.first_key_value().map(|(t, _)| *t)).min();
                    let Some(t) = next.filter(|t| !lf.less_equal(t) && !rf.less_equal(t)) else { break };
                    let mut deltas: FastMap<SqlRow, (Side, Side)> = FastMap::default();
                    let mut cap = None;
                    for (side, p) in pending.iter_mut().enumerate() {
                        if let Some((c, updates)) = p.remove(&t) {
                            cap = Some(c);
                            for ((k, row), d) in updates {
                                let e = deltas.entry(k).or_default();
                                if side == 0 {
                                    e.0.push((row, d))
                                } else {
                                    e.1.push((row, d))
                                }
                            }
                        }
                    }
                    let cap = cap.expect("a time with updates");
                    let mut session = output.session(&cap);
                    let mut emit = |a: &Side, b: &Side| {
                        for (x, n) in a {
                            for (y, m) in b {
                                session.give((x.iter().chain(y).cloned().collect::<SqlRow>(), t, n * m));
                            }
                        }
                    };
                    for (k, (dl, dr)) in deltas {
                        let (cl, cr) = state.entry(k.clone()).or_default();
                        emit(&dl, cr);
                        emit(cl, &dr);
                        emit(&dl, &dr);
                        multiset_apply(cl, dl);
                        multiset_apply(cr, dr);
                        if cl.is_empty() && cr.is_empty() {
                            state.remove(&k);
                        }
                    }
                }
            }
        })
        .container::<Vec<_>>()
        .as_collection()
}

/// The aggregates of one group, given as its rows' argument tuples with their counts.
pub fn aggregate(aggs: &[Aggregate], group: &[(&SqlRow, isize)]) -> Result<SqlRow, String> {
    let mut out = Vec::with_capacity(aggs.len());
    for (j, a) in aggs.iter().enumerate() {
        let values = group.iter().filter(|(r, n)| *n > 0 && !r[j].is_null()).map(|(r, n)| (&r[j], *n as i64));
        out.push(match a.func {
            AggFunc::CountStar => Value::Int(group.iter().map(|(_, n)| *n as i64).sum()),
            AggFunc::Count => Value::Int(values.map(|(_, n)| n).sum()),
            AggFunc::CountDistinct => {
                let mut distinct: Vec<&Value> = values.map(|(v, _)| v).collect();
                distinct.sort();
                distinct.dedup();
                Value::Int(distinct.len() as i64)
            }
            AggFunc::Min => values.map(|(v, _)| v).min().cloned().unwrap_or(Value::Null),
            AggFunc::Max => values.map(|(v, _)| v).max().cloned().unwrap_or(Value::Null),
            AggFunc::Sum | AggFunc::Avg => {
                let values: Vec<(&Value, i64)> = values.collect();
                if values.is_empty() {
                    Value::Null
                } else if a.arg_type == Type::Int && a.func == AggFunc::Sum {
                    let mut sum: i64 = 0;
                    for (v, n) in &values {
                        let Value::Int(i) = v else { return Err(format!("SUM of {v}")) };
                        sum = i.checked_mul(*n).and_then(|x| sum.checked_add(x)).ok_or("integer overflow in SUM")?;
                    }
                    Value::Int(sum)
                } else {
                    let sum: f64 = values.iter().map(|(v, n)| v.as_f64().unwrap_or(0.0) * *n as f64).sum();
                    if a.func == AggFunc::Sum {
                        Value::Float(sum)
                    } else {
                        let count: i64 = values.iter().map(|(_, n)| n).sum();
                        cast(Value::Float(sum / count as f64), Type::Float)?
                    }
                }
            }
        });
    }
    Ok(out)
}
