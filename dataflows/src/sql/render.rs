//! Plans as differential operators: filters and maps stay on the worker that has the row;
//! a reduce exchanges and arranges by its group key, a join both sides by the join key. Rows
//! whose expressions fail leave as errors of their view (dead letters), the rest go on.

use std::collections::BTreeMap;

use differential_dataflow::input::Input;

use super::eval::{cast, eval, truth};
use super::plan::{AggFunc, Aggregate, Expr, Plan, View};
use super::value::{SqlRow, Type, Value};
use crate::Coll;

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

/// Renders `views` in order over the `sources`' rows (a view may read the ones before it).
pub fn render<'s>(views: &[View], sources: &BTreeMap<String, Coll<'s, SqlRow>>) -> BTreeMap<String, Rendered<'s>> {
    let mut done: BTreeMap<String, Rendered<'s>> = BTreeMap::new();
    for view in views {
        let mut errors = Vec::new();
        let rows = plan(&view.plan, &view.name, sources, &done, &mut errors);
        let any = sources.values().next().or_else(|| done.values().next().map(|r| &r.rows)).expect("a view reads something").clone();
        let errors = differential_dataflow::collection::concatenate(any.scope(), errors);
        done.insert(view.name.clone(), Rendered { rows, errors });
    }
    done
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

fn plan<'s>(
    p: &Plan,
    view: &str,
    sources: &BTreeMap<String, Coll<'s, SqlRow>>,
    views: &BTreeMap<String, Rendered<'s>>,
    errors: &mut Vec<Coll<'s, RowError>>,
) -> Coll<'s, SqlRow> {
    match p {
        Plan::Source(n) => sources.get(n).unwrap_or_else(|| panic!("the input `{n}` was not given")).clone(),
        Plan::View(n) => views[n].rows.clone(),
        Plan::Filter(input, predicate) => {
            let predicate = predicate.clone();
            let rows = plan(input, view, sources, views, errors).flat_map(move |row| match eval(&predicate, &row).and_then(truth) {
                Ok(Some(true)) => Some(Ok(row)),
                Ok(_) => None,
                Err(e) => Some(Err((e, row))),
            });
            split(rows, view, errors)
        }
        Plan::Map(input, exprs) => {
            let exprs = exprs.clone();
            let rows = plan(input, view, sources, views, errors).map(move |row| match exprs.iter().map(|e| eval(e, &row)).collect() {
                Ok(out) => Ok(out),
                Err(e) => Err((e, row)),
            });
            split(rows, view, errors)
        }
        Plan::Window { input, time, size, slide } => {
            let (time, size, slide) = (*time, *size, *slide);
            plan(input, view, sources, views, errors).flat_map(move |row| {
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
            let parts: Vec<Coll<'s, SqlRow>> = parts.iter().map(|q| plan(q, view, sources, views, errors)).collect();
            let scope = parts[0].scope();
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
            let l = keyed(plan(left, view, sources, views, errors), left_keys, errors);
            let r = keyed(plan(right, view, sources, views, errors), right_keys, errors);
            // A NULL key matches nothing.
            let no_null = |(k, _): &(SqlRow, SqlRow)| !k.iter().any(Value::is_null);
            let r = r.filter(no_null);
            let matched = l.clone().filter(no_null).join_map(r.clone(), |_, a, b| a.iter().chain(b).cloned().collect::<SqlRow>());
            if !*outer {
                return matched;
            }
            let n = *right_arity;
            let right_keys = r.map(|(k, _)| k).distinct();
            let unmatched = l.clone().filter(no_null).antijoin(right_keys).concat(l.filter(move |kv| !no_null(kv)));
            matched.concat(unmatched.map(move |(_, a)| a.into_iter().chain(std::iter::repeat_n(Value::Null, n)).collect()))
        }
        Plan::Reduce { input, keys, aggs } => {
            let (keys, args): (Vec<Expr>, Vec<Expr>) = (keys.clone(), aggs.iter().map(|a| a.arg.clone()).collect());
            let rows = plan(input, view, sources, views, errors).map(move |row| {
                let k: Result<SqlRow, String> = keys.iter().map(|k| eval(k, &row)).collect();
                let a: Result<SqlRow, String> = args.iter().map(|k| eval(k, &row)).collect();
                match (k, a) {
                    (Ok(k), Ok(a)) => Ok((k, a)),
                    (Err(e), _) | (_, Err(e)) => Err((e, row)),
                }
            });
            let grouped = split(rows, view, errors);
            let global = matches!(p, Plan::Reduce { keys, .. } if keys.is_empty());
            let aggs = aggs.clone();
            let folded = grouped.reduce(move |_key, group: &[(&SqlRow, isize)], out: &mut Vec<(Result<SqlRow, String>, isize)>| {
                out.push((aggregate(&aggs, group), 1));
            });
            let folded = split(
                folded.map(|(k, r)| match r {
                    Ok(a) => Ok(k.into_iter().chain(a).collect::<SqlRow>()),
                    Err(e) => Err((e, k)),
                }),
                view,
                errors,
            );
            if !global {
                return folded;
            }
            // SQL's global aggregate has a row even over no input: the empty group's, while no
            // group exists.
            let Plan::Reduce { aggs, .. } = p else { unreachable!() };
            let empty = aggregate(aggs, &[]).expect("the empty group's aggregates");
            let scope = folded.scope();
            let (_, one) = scope.new_collection_from(if scope.index() == 0 { vec![()] } else { vec![] });
            let missing = one.concat(folded.clone().map(|_| ()).negate());
            folded.concat(missing.map(move |()| empty.clone()))
        }
    }
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
