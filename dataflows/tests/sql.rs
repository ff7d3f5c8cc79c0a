//! SQL views compiled to differential operators, checked against a naive evaluator at every
//! logical time, at 1 and 4 workers; and the compiler's refusals.
//!
//! The reference shares nothing with the compiler: random queries are drawn as a small spec
//! ([`Query`]) that prints itself as SQL for the compiler and is evaluated by plain loops over
//! the inputs' rows at each time ([`Query::naive`]), from scratch.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use dataflows::sql::render::{render, Rows, Shape, Source};
use dataflows::sql::{compile, Catalog, Column, SqlRow, Type, Value};
use dataflows::{Coll, Time};
use differential_dataflow::consolidation::consolidate_updates;
use differential_dataflow::input::Input;
use proptest::prelude::*;
use timely::dataflow::operators::Probe;
use timely::dataflow::ProbeHandle;

/// Input `a(k int, x int, s text)`: x may be NULL. Input `b(k int, y int)`.
fn catalog() -> Catalog {
    let col = |n: &str, ty| Column { name: n.into(), ty };
    let mut c = Catalog::default();
    c.add_source("a", vec![col("k", Type::Int), col("x", Type::Int), col("s", Type::Text)]);
    c.add_source("b", vec![col("k", Type::Int), col("y", Type::Int)]);
    c
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct A {
    k: i64,
    x: Option<i64>,
    s: String,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct B {
    k: i64,
    y: i64,
}

/// What a test view computes; `sql()` is its text, `naive()` its rows from scratch.
#[derive(Clone, Debug)]
enum Query {
    /// SELECT k, x * m + c AS v, s FROM a WHERE x > w
    FilterMap { m: i64, c: i64, w: i64 },
    /// SELECT k, COUNT(*), COUNT(x), SUM(x), MIN(x), MAX(x), COUNT(DISTINCT s) FROM a
    /// [WHERE x > w] GROUP BY k HAVING COUNT(*) > h
    Group { w: Option<i64>, h: i64 },
    /// SELECT COUNT(*) AS n, SUM(x) AS sx, AVG(x) AS ax FROM a WHERE s = 'p'
    Global,
    /// SELECT a.k, a.x, b.y FROM a [LEFT] JOIN b ON a.k = b.k [WHERE b.y > w]
    Join { left: bool, w: Option<i64> },
    /// SELECT a.s, COUNT(*) AS n, SUM(b.y) AS sy FROM a JOIN b ON a.k = b.k GROUP BY a.s
    JoinGroup,
    /// SELECT a.k AS ak, b.k AS bk FROM a [LEFT] JOIN b ON a.x = b.y: a NULL x matches nothing
    JoinOnNullable { left: bool },
    /// SELECT k, x FROM a UNION ALL SELECT k, y FROM b
    Union,
    /// a view over a view: v1 = per-k counts of b, then SELECT k, n * 2 AS twice FROM v1 WHERE n > h
    Stacked { h: i64 },
    /// SELECT k, CASE WHEN x IS NULL THEN 'none' WHEN x > w THEN 'big' ELSE 'small' END AS size,
    /// COALESCE(x, -1) AS x0, lower(upper(s)) || '!' AS t, length(s) AS n FROM a WHERE k IN (0, 2, 3)
    Scalars { w: i64 },
    /// string functions over s, and timestamps made of x
    Strings { from: i64, len: i64 },
    /// per k and event-time window of t = x · 7 s: COUNT(*), SUM(x), over TUMBLE (no slide) or HOP
    Windowed { size: i64, slide: Option<i64> },
    /// a join with a VALUES table (int and float limits: a float column); a left join keeps a
    /// row without a limit (NULLs), then a projection
    ValuesJoin { left: bool },
    /// two GROUP BYs over `a` (folded in one pass), joined: per k, COUNT(*), SUM(x) and
    /// COUNT(DISTINCT s)
    TwoGroups,
    /// a filter and a GROUP BY over `a` (read in one pass), joined: each row of `a` with x > 2
    /// and the count of its k
    ChainAndGroup,
    /// the top n rows of a per k by x descending (NULLs first), then s: ROW_NUMBER() in a
    /// subquery, filtered by its number
    TopN { n: i64 },
}

impl Query {
    fn sql(&self) -> String {
        let body = match self {
            Query::FilterMap { m, c, w } => format!("SELECT k, x * {m} + {c} AS v, s FROM a WHERE x > {w}"),
            Query::Group { w, h } => format!(
                "SELECT k, COUNT(*) AS n, COUNT(x) AS nx, SUM(x) AS sx, MIN(x) AS mn, MAX(x) AS mx, COUNT(DISTINCT s) AS ds \
                 FROM a {} GROUP BY k HAVING COUNT(*) > {h}",
                w.map_or(String::new(), |w| format!("WHERE x > {w}"))
            ),
            Query::Global => "SELECT COUNT(*) AS n, SUM(x) AS sx, AVG(x) AS ax FROM a WHERE s = 'p'".into(),
            Query::Join { left, w } => format!(
                "SELECT a.k, a.x, b.y FROM a {} JOIN b ON a.k = b.k{}",
                if *left { "LEFT" } else { "" },
                w.map_or(String::new(), |w| format!(" WHERE b.y > {w}"))
            ),
            Query::JoinGroup => "SELECT a.s, COUNT(*) AS n, SUM(b.y) AS sy FROM a JOIN b ON a.k = b.k GROUP BY a.s".into(),
            Query::JoinOnNullable { left } => {
                format!("SELECT a.k AS ak, b.k AS bk FROM a {} JOIN b ON a.x = b.y", if *left { "LEFT" } else { "INNER" })
            }
            Query::Union => "SELECT k, x FROM a UNION ALL SELECT k, y FROM b".into(),
            Query::ChainAndGroup => {
                return "CREATE VIEW g AS SELECT k, COUNT(*) AS n FROM a GROUP BY k;\n\
                        CREATE VIEW f AS SELECT k, x FROM a WHERE x > 2;\n\
                        CREATE VIEW out AS SELECT f.k, f.x, g.n FROM f JOIN g ON f.k = g.k;"
                    .into()
            }
            Query::TwoGroups => {
                return "CREATE VIEW g1 AS SELECT k, COUNT(*) AS n FROM a GROUP BY k;\n\
                        CREATE VIEW g2 AS SELECT k, SUM(x) AS sx, COUNT(DISTINCT s) AS ds FROM a GROUP BY k;\n\
                        CREATE VIEW out AS SELECT g1.k, g1.n, g2.sx, g2.ds FROM g1 JOIN g2 ON g1.k = g2.k;"
                    .into()
            }
            Query::Stacked { h } => {
                return format!(
                    "CREATE VIEW v1 AS SELECT k, COUNT(*) AS n FROM b GROUP BY k;\n\
                     CREATE VIEW out AS SELECT k, n * 2 AS twice FROM v1 WHERE n > {h};"
                )
            }
            Query::Scalars { w } => format!(
                "SELECT k, CASE WHEN x IS NULL THEN 'none' WHEN x > {w} THEN 'big' ELSE 'small' END AS size, \
                 COALESCE(x, -1) AS x0, lower(upper(s)) || '!' AS t, length(s) AS n FROM a WHERE k IN (0, 2, 3)"
            ),
            Query::TopN { n } => format!(
                "SELECT k, s, x, r FROM (SELECT k, s, x, ROW_NUMBER() OVER (PARTITION BY k ORDER BY x DESC, s) AS r FROM a) ranked \
                 WHERE r <= {n}"
            ),
            Query::ValuesJoin { left: false } => "SELECT a.k, r.label, r.lim, a.x FROM a JOIN (VALUES (0, 'zero', 1.5), (1, 'one', 2), (3, 'three', 0.5)) \
                 AS r(k, label, lim) ON a.k = r.k WHERE a.x > r.lim"
                .into(),
            Query::ValuesJoin { left: true } => "SELECT a.k, COALESCE(r.label, 'none') AS label, a.x FROM a LEFT JOIN (VALUES (0, 'zero', 1.5), (1, 'one', 2), (3, 'three', 0.5)) \
                 AS r(k, label, lim) ON a.k = r.k WHERE a.x > r.lim OR r.lim IS NULL"
                .into(),
            Query::Windowed { size, slide } => {
                let from = match slide {
                    None => format!("TUMBLE(at, t, INTERVAL '{size}' SECOND)"),
                    Some(slide) => format!("HOP(at, t, INTERVAL '{slide} seconds', INTERVAL '{size}' SECOND)"),
                };
                return format!(
                    "CREATE VIEW at AS SELECT k, x, CAST(x * 7000 AS timestamp) AS t FROM a;\n\
                     CREATE VIEW out AS SELECT k, window_start, window_end, COUNT(*) AS n, SUM(x) AS sx\n  \
                     FROM {from} GROUP BY k, window_start, window_end;"
                );
            }
            Query::Strings { from, len } => format!(
                "SELECT k, SUBSTRING(s FROM {from} FOR {len}) AS a1, SPLIT_PART(s || '-x-' || s, '-', 2) AS a2, \
                 POSITION('r' IN s) AS a3, STRPOS(s, 'q') AS a4, CONCAT(s, NULL, k) AS a5, SUBSTR(s, {from}) AS a6, \
                 DATE_TRUNC('minute', CAST(x * 37000 AS timestamp)) AS t1, EXTRACT(SECOND FROM CAST(x * 37000 AS timestamp)) AS t2 FROM a"
            ),
        };
        format!("CREATE VIEW out AS\n  {body};")
    }

    /// The view's rows over `a` and `b`, recomputed from scratch, sorted.
    fn naive(&self, a: &[A], b: &[B]) -> Vec<SqlRow> {
        use Value::{Float, Int, Null, Text};
        let opt = |x: Option<i64>| x.map_or(Null, Int);
        let mut rows: Vec<SqlRow> = match self {
            Query::FilterMap { m, c, w } => a
                .iter()
                .filter(|r| r.x.is_some_and(|x| x > *w))
                .map(|r| vec![Int(r.k), Int(r.x.unwrap() * m + c), Text(r.s.as_str().into())])
                .collect(),
            Query::Group { w, h } => {
                let mut groups: BTreeMap<i64, Vec<&A>> = BTreeMap::new();
                for r in a.iter().filter(|r| w.is_none_or(|w| r.x.is_some_and(|x| x > w))) {
                    groups.entry(r.k).or_default().push(r);
                }
                groups
                    .into_iter()
                    .filter(|(_, g)| g.len() as i64 > *h)
                    .map(|(k, g)| {
                        let xs: Vec<i64> = g.iter().filter_map(|r| r.x).collect();
                        let mut ss: Vec<&String> = g.iter().map(|r| &r.s).collect();
                        ss.sort();
                        ss.dedup();
                        vec![
                            Int(k),
                            Int(g.len() as i64),
                            Int(xs.len() as i64),
                            if xs.is_empty() { Null } else { Int(xs.iter().sum()) },
                            opt(xs.iter().min().copied()),
                            opt(xs.iter().max().copied()),
                            Int(ss.len() as i64),
                        ]
                    })
                    .collect()
            }
            Query::ChainAndGroup => a
                .iter()
                .filter(|r| r.x.is_some_and(|x| x > 2))
                .map(|r| vec![Int(r.k), opt(r.x), Int(a.iter().filter(|q| q.k == r.k).count() as i64)])
                .collect(),
            Query::TwoGroups => {
                let mut groups: BTreeMap<i64, Vec<&A>> = BTreeMap::new();
                for r in a {
                    groups.entry(r.k).or_default().push(r);
                }
                groups
                    .into_iter()
                    .map(|(k, g)| {
                        let xs: Vec<i64> = g.iter().filter_map(|r| r.x).collect();
                        let ss: std::collections::BTreeSet<&String> = g.iter().map(|r| &r.s).collect();
                        vec![Int(k), Int(g.len() as i64), if xs.is_empty() { Null } else { Int(xs.iter().sum()) }, Int(ss.len() as i64)]
                    })
                    .collect()
            }
            Query::Global => {
                let p: Vec<&A> = a.iter().filter(|r| r.s == "p").collect();
                let xs: Vec<i64> = p.iter().filter_map(|r| r.x).collect();
                let sum: i64 = xs.iter().sum();
                vec![vec![
                    Int(p.len() as i64),
                    if xs.is_empty() { Null } else { Int(sum) },
                    if xs.is_empty() { Null } else { Float(sum as f64 / xs.len() as f64) },
                ]]
            }
            Query::Join { left, w } => {
                let mut out = Vec::new();
                for r in a {
                    let matches: Vec<&B> = b.iter().filter(|q| q.k == r.k).collect();
                    for q in &matches {
                        if w.is_none_or(|w| q.y > w) {
                            out.push(vec![Int(r.k), opt(r.x), Int(q.y)]);
                        }
                    }
                    // (WHERE b.y > w is NULL, so not TRUE, for a NULL b.y)
                    if *left && matches.is_empty() && w.is_none() {
                        out.push(vec![Int(r.k), opt(r.x), Null]);
                    }
                }
                out
            }
            Query::JoinGroup => {
                let mut groups: BTreeMap<String, (i64, i64)> = BTreeMap::new();
                for r in a {
                    for q in b.iter().filter(|q| q.k == r.k) {
                        let g = groups.entry(r.s.clone()).or_default();
                        g.0 += 1;
                        g.1 += q.y;
                    }
                }
                groups.into_iter().map(|(s, (n, sy))| vec![Text(s.into()), Int(n), Int(sy)]).collect()
            }
            Query::JoinOnNullable { left } => {
                let mut out = Vec::new();
                for r in a {
                    let matches: Vec<&B> = b.iter().filter(|q| r.x == Some(q.y)).collect();
                    out.extend(matches.iter().map(|q| vec![Int(r.k), Int(q.k)]));
                    if *left && matches.is_empty() {
                        out.push(vec![Int(r.k), Null]);
                    }
                }
                out
            }
            Query::Union => a.iter().map(|r| vec![Int(r.k), opt(r.x)]).chain(b.iter().map(|q| vec![Int(q.k), Int(q.y)])).collect(),
            Query::Stacked { h } => {
                let mut n: BTreeMap<i64, i64> = BTreeMap::new();
                for q in b {
                    *n.entry(q.k).or_default() += 1;
                }
                n.into_iter().filter(|(_, n)| n > h).map(|(k, n)| vec![Int(k), Int(n * 2)]).collect()
            }
            Query::Scalars { w } => a
                .iter()
                .filter(|r| [0, 2, 3].contains(&r.k))
                .map(|r| {
                    let size = match r.x {
                        None => "none",
                        Some(x) if x > *w => "big",
                        Some(_) => "small",
                    };
                    vec![
                        Int(r.k),
                        Text(size.into()),
                        Int(r.x.unwrap_or(-1)),
                        Text(format!("{}!", r.s.to_uppercase().to_lowercase()).into()),
                        Int(r.s.chars().count() as i64),
                    ]
                })
                .collect(),
            Query::ValuesJoin { left } => {
                let table = [(0, "zero", 1.5), (1, "one", 2.0), (3, "three", 0.5)];
                let mut out = Vec::new();
                for r in a {
                    let mut matched = false;
                    for (k, label, lim) in table.iter().filter(|(k, _, _)| *k == r.k) {
                        matched = true;
                        if r.x.is_some_and(|x| x as f64 > *lim) {
                            out.push(match left {
                                false => vec![Int(*k), Text((*label).into()), Float(*lim), opt(r.x)],
                                true => vec![Int(r.k), Text((*label).into()), opt(r.x)],
                            });
                        }
                    }
                    if *left && !matched {
                        out.push(vec![Int(r.k), Text("none".into()), opt(r.x)]);
                    }
                }
                out
            }
            Query::Windowed { size, slide } => {
                let (size, slide) = (size * 1000, slide.unwrap_or(*size) * 1000);
                let mut groups: BTreeMap<(i64, i64), (i64, i64)> = BTreeMap::new();
                for r in a {
                    let Some(x) = r.x else { continue };
                    let t = x * 7000;
                    let mut start = (t - size).div_euclid(slide) * slide;
                    while start <= t {
                        if t < start + size {
                            let g = groups.entry((r.k, start)).or_default();
                            g.0 += 1;
                            g.1 += x;
                        }
                        start += slide;
                    }
                }
                groups
                    .into_iter()
                    .map(|((k, s), (n, sx))| vec![Int(k), Value::Timestamp(s), Value::Timestamp(s + size), Int(n), Int(sx)])
                    .collect()
            }
            Query::TopN { n } => {
                let mut by_k: BTreeMap<i64, Vec<&A>> = BTreeMap::new();
                for r in a {
                    by_k.entry(r.k).or_default().push(r);
                }
                let mut out = Vec::new();
                for (k, mut rows) in by_k {
                    // x descending with NULLs first (SQL's default for DESC), then s ascending
                    rows.sort_by(|p, q| match (p.x, q.x) {
                        (None, None) => p.s.cmp(&q.s),
                        (None, Some(_)) => std::cmp::Ordering::Less,
                        (Some(_), None) => std::cmp::Ordering::Greater,
                        (Some(px), Some(qx)) => qx.cmp(&px).then(p.s.cmp(&q.s)),
                    });
                    for (i, r) in rows.into_iter().enumerate().take(*n as usize) {
                        out.push(vec![Int(k), Text(r.s.as_str().into()), opt(r.x), Int(i as i64 + 1)]);
                    }
                }
                out
            }
            Query::Strings { from, len } => a
                .iter()
                .map(|r| {
                    let chars: Vec<char> = r.s.chars().collect();
                    let pick = |lo: i64, hi: i64| -> String {
                        (0..chars.len() as i64).filter(|i| *i >= lo && *i < hi).map(|i| chars[i as usize]).collect()
                    };
                    let pos = |n: &str| r.s.find(n).map_or(0, |b| r.s[..b].chars().count() as i64 + 1);
                    let t = r.x.map(|x| x * 37000);
                    vec![
                        Int(r.k),
                        Text(pick(from - 1, from - 1 + len).into()),
                        Text("x".into()),
                        Int(pos("r")),
                        Int(pos("q")),
                        Text(format!("{}{}", r.s, r.k).into()),
                        Text(pick(from - 1, i64::MAX).into()),
                        t.map_or(Null, |t| Value::Timestamp(t - t % 60_000)),
                        t.map_or(Null, |t| Int(t % 60_000 / 1000)),
                    ]
                })
                .collect(),
        };
        rows.sort();
        rows
    }
}

/// One input change: a row of `a` or `b`, inserted (+1) or removed (-1), at a time.
#[derive(Clone, Debug)]
enum Change {
    A(Time, A, isize),
    B(Time, B, isize),
}

fn a_row(r: &A) -> SqlRow {
    vec![Value::Int(r.k), r.x.map_or(Value::Null, Value::Int), Value::Text(r.s.as_str().into())]
}

fn b_row(r: &B) -> SqlRow {
    vec![Value::Int(r.k), Value::Int(r.y)]
}

type Update = (SqlRow, Time, isize);
type Updates = Arc<Mutex<Vec<Update>>>;

/// Inserts the changes at their times, 0 to `last`, each worker its share (so rows start on
/// every worker), stepping until the probe passes each time.
fn feed(
    worker: &mut timely::worker::Worker,
    changes: &[Change],
    (ai, bi): (
        &mut differential_dataflow::input::InputSession<Time, SqlRow, isize>,
        &mut differential_dataflow::input::InputSession<Time, SqlRow, isize>,
    ),
    probe: &ProbeHandle<Time>,
    last: Time,
) {
    for t in 0..=last {
        for (_, c) in changes.iter().enumerate().filter(|(i, _)| i % worker.peers() == worker.index()) {
            match c {
                Change::A(ct, r, d) if *ct == t => ai.update(a_row(r), *d),
                Change::B(ct, r, d) if *ct == t => bi.update(b_row(r), *d),
                _ => {}
            }
        }
        ai.advance_to(t + 1);
        bi.advance_to(t + 1);
        ai.flush();
        bi.flush();
        worker.step_while(|| probe.less_than(&(t + 1)));
    }
}

/// Runs view `out` of `sql` over the changes on `workers` workers: its updates, and the row
/// errors of every view.
fn run(sql: &str, changes: &[Change], last: Time, workers: usize) -> (Vec<Update>, Vec<(String, String)>) {
    let views = compile(sql, &mut catalog()).unwrap_or_else(|e| panic!("{sql}\n{e}"));
    let out: Updates = Default::default();
    let errors: Arc<Mutex<Vec<(String, String)>>> = Default::default();
    let (o, e) = (out.clone(), errors.clone());
    let changes = Arc::new(changes.to_vec());
    timely::execute(timely::Config::process(workers), move |worker| {
        let probe = ProbeHandle::new();
        let (views, o, e) = (views.clone(), o.clone(), e.clone());
        let (mut ai, mut bi) = worker.dataflow::<Time, _, _>(|scope| {
            let (ai, a): (_, Coll<'_, SqlRow>) = scope.new_collection();
            let (bi, b): (_, Coll<'_, SqlRow>) = scope.new_collection();
            // both inputs have retractions: not monotone; no event time
            let source =
                |rows, arity| Source { rows: Rows::All(rows), shape: Shape { arity, event_time: None, monotone: false }, watermark: None };
            let sources = BTreeMap::from([("a".to_string(), source(a, 3)), ("b".to_string(), source(b, 2))]);
            let rendered = render(scope, &views, &sources, &Default::default());
            for r in rendered.values() {
                let e = e.clone();
                r.errors
                    .clone()
                    .inspect(move |((view, reason, _), _, _)| e.lock().unwrap().push((view.clone(), reason.clone())))
                    .inner
                    .probe_with(&probe);
            }
            rendered["out"].rows.clone().inspect(move |(d, t, r)| o.lock().unwrap().push((d.clone(), *t, *r))).inner.probe_with(&probe);
            (ai, bi)
        });
        feed(worker, &changes, (&mut ai, &mut bi), &probe, last);
    })
    .unwrap();
    let mut updates = std::mem::take(&mut *out.lock().unwrap());
    consolidate_updates(&mut updates);
    let errors = std::mem::take(&mut *errors.lock().unwrap());
    (updates, errors)
}

/// Runs view `out` of `sql` as a snapshot-only run renders it (asked to be counted): the net
/// count of its changes at each time — from its changes without rows when it is rendered so,
/// else from its rows — and, when its operator can give them, its current rows read at the end.
fn run_counted(sql: &str, changes: &[Change], last: Time, workers: usize) -> (BTreeMap<Time, isize>, Option<Vec<SqlRow>>) {
    let views = compile(sql, &mut catalog()).unwrap_or_else(|e| panic!("{sql}\n{e}"));
    let net: Arc<Mutex<BTreeMap<Time, isize>>> = Default::default();
    let current: Arc<Mutex<Option<Vec<SqlRow>>>> = Default::default();
    let (n, c) = (net.clone(), current.clone());
    let changes = Arc::new(changes.to_vec());
    timely::execute(timely::Config::process(workers), move |worker| {
        let probe = ProbeHandle::new();
        let (views, n, c) = (views.clone(), n.clone(), c.clone());
        let (mut ai, mut bi, read) = worker.dataflow::<Time, _, _>(|scope| {
            let (ai, a): (_, Coll<'_, SqlRow>) = scope.new_collection();
            let (bi, b): (_, Coll<'_, SqlRow>) = scope.new_collection();
            let source =
                |rows, arity| Source { rows: Rows::All(rows), shape: Shape { arity, event_time: None, monotone: false }, watermark: None };
            let sources = BTreeMap::from([("a".to_string(), source(a, 3)), ("b".to_string(), source(b, 2))]);
            let rendered = render(scope, &views, &sources, &BTreeSet::from(["out".to_string()]));
            for r in rendered.values() {
                r.errors.clone().inner.probe_with(&probe);
                r.rows.clone().inner.probe_with(&probe);
            }
            let out = &rendered["out"];
            let changes = out.counted.clone().unwrap_or_else(|| out.rows.clone().map(|_| ()));
            changes.inspect(move |(_, t, r)| *n.lock().unwrap().entry(*t).or_default() += r).inner.probe_with(&probe);
            (ai, bi, out.current.clone())
        });
        feed(worker, &changes, (&mut ai, &mut bi), &probe, last);
        if let Some(read) = read {
            let mut rows = Vec::new();
            read(&mut |row, m| rows.extend(std::iter::repeat_n(row, m.max(0) as usize)));
            c.lock().unwrap().get_or_insert_with(Vec::new).extend(rows);
        }
    })
    .unwrap();
    let mut net = std::mem::take(&mut *net.lock().unwrap());
    net.retain(|_, n| *n != 0);
    let current = current.lock().unwrap().take().map(|mut rows| {
        rows.sort();
        rows
    });
    (net, current)
}

/// The rows at `t`, from the updates.
fn at(updates: &[Update], t: Time) -> Vec<SqlRow> {
    let mut acc: BTreeMap<&SqlRow, isize> = BTreeMap::new();
    for (d, _, r) in updates.iter().filter(|(_, ut, _)| *ut <= t) {
        *acc.entry(d).or_default() += r;
    }
    let mut rows = Vec::new();
    for (d, n) in acc {
        assert!(n >= 0, "a negative count for {d:?} at {t}");
        rows.extend(std::iter::repeat_n(d.clone(), n as usize));
    }
    rows
}

fn query() -> impl Strategy<Value = Query> {
    let small = -3i64..8;
    prop_oneof![
        (-2i64..3, -5i64..5, small.clone()).prop_map(|(m, c, w)| Query::FilterMap { m, c, w }),
        (proptest::option::of(small.clone()), 0i64..3).prop_map(|(w, h)| Query::Group { w, h }),
        Just(Query::Global),
        Just(Query::TwoGroups),
        Just(Query::ChainAndGroup),
        (any::<bool>(), proptest::option::of(small.clone())).prop_map(|(left, w)| Query::Join { left, w }),
        Just(Query::JoinGroup),
        any::<bool>().prop_map(|left| Query::JoinOnNullable { left }),
        Just(Query::Union),
        any::<bool>().prop_map(|left| Query::ValuesJoin { left }),
        (0i64..4).prop_map(|n| Query::TopN { n }),
        (0i64..3).prop_map(|h| Query::Stacked { h }),
        small.prop_map(|w| Query::Scalars { w }),
        (-1i64..4, 0i64..3).prop_map(|(from, len)| Query::Strings { from, len }),
        prop_oneof![Just((10, None)), Just((20, None)), Just((20, Some(5))), Just((30, Some(10))), Just((10, Some(10)))]
            .prop_map(|(size, slide)| Query::Windowed { size, slide }),
    ]
}

/// Changes over times 0..4: inserts, and removals of rows inserted before.
fn changes() -> impl Strategy<Value = Vec<Change>> {
    let a = (0i64..4, proptest::option::weighted(0.8, 0i64..6), prop_oneof![Just("p"), Just("q"), Just("Rr")]).prop_map(|(k, x, s)| A {
        k,
        x,
        s: s.to_string(),
    });
    let b = (0i64..4, 0i64..6).prop_map(|(k, y)| B { k, y });
    let step = prop_oneof![(0u64..4, a).prop_map(|(t, r)| (t, Some(r), None)), (0u64..4, b).prop_map(|(t, r)| (t, None, Some(r))),];
    (proptest::collection::vec(step, 0..40), proptest::collection::vec(any::<bool>(), 40)).prop_map(|(steps, removals)| {
        let mut out = Vec::new();
        for (i, (t, a, b)) in steps.into_iter().enumerate() {
            if let Some(a) = a {
                out.push(Change::A(t, a.clone(), 1));
                if removals[i] && t < 3 {
                    out.push(Change::A(t + 1, a, -1));
                }
            }
            if let Some(b) = b {
                out.push(Change::B(t, b.clone(), 1));
                if removals[i] && t < 3 {
                    out.push(Change::B(t + 1, b, -1));
                }
            }
        }
        out
    })
}

/// The inputs' rows at `t`.
fn inputs_at(changes: &[Change], t: Time) -> (Vec<A>, Vec<B>) {
    let mut a: BTreeMap<A, isize> = BTreeMap::new();
    let mut b: BTreeMap<B, isize> = BTreeMap::new();
    for c in changes {
        match c {
            Change::A(ct, r, d) if *ct <= t => *a.entry(r.clone()).or_default() += d,
            Change::B(ct, r, d) if *ct <= t => *b.entry(r.clone()).or_default() += d,
            _ => {}
        }
    }
    (expand(a), expand(b))
}

fn expand<R: Clone>(m: BTreeMap<R, isize>) -> Vec<R> {
    m.into_iter().flat_map(|(r, n)| std::iter::repeat_n(r, n.max(0) as usize)).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, .. ProptestConfig::default() })]

    /// Every view's rows at every time equal the naive evaluator's, at 1 and 4 workers.
    #[test]
    fn compiled_views_equal_the_naive_evaluator_at_every_time(q in query(), changes in changes()) {
        let sql = q.sql();
        for workers in [1, 4] {
            let (updates, errors) = run(&sql, &changes, 4, workers);
            prop_assert!(errors.is_empty(), "row errors: {errors:?}");
            for t in 0..=4 {
                let (a, b) = inputs_at(&changes, t);
                prop_assert_eq!(at(&updates, t), q.naive(&a, &b), "{} at time {} on {} workers", sql, t, workers);
            }
        }
    }

    /// As a snapshot-only run renders a view: its changes, counted without rows where it can,
    /// net to what its rows' changes net to at every time, and the rows its operator gives at
    /// the end are the naive evaluator's at the last time, at 1 and 4 workers.
    #[test]
    fn counted_views_and_their_current_rows_equal_the_naive_evaluator(q in query(), changes in changes()) {
        let sql = q.sql();
        for workers in [1, 4] {
            let (net, current) = run_counted(&sql, &changes, 4, workers);
            let mut want: BTreeMap<Time, isize> = BTreeMap::new();
            for t in 0..=4 {
                let (a, b) = inputs_at(&changes, t);
                let before = if t == 0 { 0 } else { let (a, b) = inputs_at(&changes, t - 1); q.naive(&a, &b).len() as isize };
                want.insert(t, q.naive(&a, &b).len() as isize - before);
            }
            want.retain(|_, n| *n != 0);
            prop_assert_eq!(&net, &want, "{} on {} workers: net changes per time", sql, workers);
            if let Some(rows) = current {
                let (a, b) = inputs_at(&changes, 4);
                let mut naive = q.naive(&a, &b);
                naive.sort();
                prop_assert_eq!(rows, naive, "{} on {} workers: current rows at the end", sql, workers);
            }
        }
    }
}

#[test]
fn a_row_error_is_a_dead_letter_of_its_view_and_the_rest_go_on() {
    let sql = "CREATE VIEW out AS SELECT k, 100 / x AS q FROM a;";
    let changes = vec![
        Change::A(0, A { k: 1, x: Some(4), s: "p".into() }, 1),
        Change::A(0, A { k: 2, x: Some(0), s: "p".into() }, 1),
        Change::A(1, A { k: 3, x: None, s: "q".into() }, 1),
    ];
    let (updates, errors) = run(sql, &changes, 1, 2);
    assert_eq!(at(&updates, 1), vec![vec![Value::Int(1), Value::Int(25)], vec![Value::Int(3), Value::Null]]);
    assert_eq!(errors, vec![("out".to_string(), "division by zero".to_string())]);
}

#[test]
fn a_row_error_in_a_group_key_or_an_aggregate_is_a_dead_letter_and_the_rest_go_on() {
    let changes = vec![
        Change::A(0, A { k: 1, x: Some(4), s: "p".into() }, 1),
        Change::A(0, A { k: 2, x: Some(0), s: "p".into() }, 1),
        Change::A(1, A { k: 3, x: None, s: "q".into() }, 1),
        Change::A(1, A { k: 1, x: Some(5), s: "q".into() }, 1),
    ];
    let by_key = "CREATE VIEW out AS SELECT 100 / x AS q, COUNT(*) AS n FROM a GROUP BY 100 / x;";
    for workers in [1, 2] {
        let (updates, errors) = run(by_key, &changes, 1, workers);
        assert_eq!(at(&updates, 0), vec![vec![Value::Int(25), Value::Int(1)]], "-w {workers}");
        let want = vec![vec![Value::Null, Value::Int(1)], vec![Value::Int(20), Value::Int(1)], vec![Value::Int(25), Value::Int(1)]];
        assert_eq!(at(&updates, 1), want, "-w {workers}");
        assert_eq!(errors, vec![("out".to_string(), "division by zero".to_string())], "-w {workers}");
    }
    let in_sum = "CREATE VIEW out AS SELECT k, SUM(100 / x) AS t FROM a GROUP BY k;";
    for workers in [1, 2] {
        let (updates, errors) = run(in_sum, &changes, 1, workers);
        let want = vec![vec![Value::Int(1), Value::Int(45)], vec![Value::Int(3), Value::Null]];
        assert_eq!(at(&updates, 1), want, "-w {workers}");
        assert_eq!(errors, vec![("out".to_string(), "division by zero".to_string())], "-w {workers}");
    }
}

/// A group whose aggregate fails (its SUM leaves the integers) is a dead letter of its view,
/// its row leaves, and the other groups go on, at 1 and 2 workers.
#[test]
fn a_group_whose_aggregate_fails_is_a_dead_letter_and_its_row_leaves() {
    let changes = vec![
        Change::A(0, A { k: 1, x: Some(i64::MAX), s: "p".into() }, 1),
        Change::A(0, A { k: 2, x: Some(1), s: "p".into() }, 1),
        Change::A(1, A { k: 1, x: Some(i64::MAX), s: "q".into() }, 1),
        Change::A(1, A { k: 2, x: Some(2), s: "q".into() }, 1),
    ];
    let sql = "CREATE VIEW out AS SELECT k, SUM(x) AS t FROM a GROUP BY k;";
    for workers in [1, 2] {
        let (updates, errors) = run(sql, &changes, 1, workers);
        assert_eq!(at(&updates, 0), vec![vec![Value::Int(1), Value::Int(i64::MAX)], vec![Value::Int(2), Value::Int(1)]], "-w {workers}");
        assert_eq!(at(&updates, 1), vec![vec![Value::Int(2), Value::Int(3)]], "-w {workers}");
        assert_eq!(errors, vec![("out".to_string(), "integer overflow in SUM".to_string())], "-w {workers}");
    }
}

#[test]
fn conditions_are_three_valued_and_an_error_on_either_side_of_and_or_is_the_rows() {
    use Value::{Bool, Int, Null};
    // (rows: x = 4, x = NULL; a condition as a column and as a filter)
    let changes = vec![Change::A(0, A { k: 1, x: Some(4), s: "p".into() }, 1), Change::A(0, A { k: 2, x: None, s: "q".into() }, 1)];
    let cases: [(&str, [Value; 2]); 8] = [
        ("x > 3 AND s = 'p'", [Bool(true), Bool(false)]),
        ("x > 3 OR s = 'q'", [Bool(true), Bool(true)]),
        ("x < 3 OR x IS NULL", [Bool(false), Bool(true)]),
        ("NOT (x < 3)", [Bool(true), Null]),
        ("x IS NOT NULL AND NOT s IN ('a', 'q')", [Bool(true), Bool(false)]),
        ("x = 4.0 OR x <> 4", [Bool(true), Null]),
        ("CASE WHEN x > 3 THEN 1 = 1 ELSE NULL END", [Bool(true), Null]),
        ("s > 'p' AND x >= 0", [Bool(false), Null]),
    ];
    for (condition, want) in cases {
        let (updates, errors) = run(&format!("CREATE VIEW out AS SELECT k, {condition} AS c FROM a;"), &changes, 0, 1);
        assert!(errors.is_empty(), "{condition}: {errors:?}");
        assert_eq!(at(&updates, 0), vec![vec![Int(1), want[0].clone()], vec![Int(2), want[1].clone()]], "{condition}");
        let (updates, _) = run(&format!("CREATE VIEW out AS SELECT k FROM a WHERE {condition};"), &changes, 0, 1);
        let kept: Vec<SqlRow> = [1, 2].into_iter().zip(&want).filter(|(_, c)| **c == Bool(true)).map(|(k, _)| vec![Int(k)]).collect();
        assert_eq!(at(&updates, 0), kept, "WHERE {condition}");
    }
    // both sides are evaluated: an error on either side fails the row, whatever the other says
    for condition in ["k < 0 AND 100 / (k - k) = 1", "100 / (k - k) = 1 OR k > 0", "NOT (k - k = 0 AND 1 / (k - k) > 0)"] {
        for query in [format!("SELECT k, {condition} AS c FROM a"), format!("SELECT k FROM a WHERE {condition}")] {
            let (updates, errors) = run(&format!("CREATE VIEW out AS {query};"), &changes, 0, 1);
            assert!(at(&updates, 0).is_empty(), "{query}");
            assert_eq!(errors, vec![("out".to_string(), "division by zero".to_string()); 2], "{query}");
        }
    }
}

/// One row of literals through a view.
fn one_row(select: &str) -> SqlRow {
    let sql = format!("CREATE VIEW out AS SELECT {select} FROM a;");
    let (updates, errors) = run(&sql, &[Change::A(0, A { k: 1, x: Some(2), s: "p".into() }, 1)], 0, 1);
    assert!(errors.is_empty(), "{errors:?}");
    at(&updates, 0).pop().expect("a row")
}

#[test]
fn timestamp_functions_on_calendar_dates() {
    let t = "TIMESTAMP '2024-02-29 13:45:10.250'";
    let row = one_row(&format!(
        "{t} AS t, DATE_TRUNC('month', {t}) AS m, DATE_TRUNC('year', {t}) AS y, DATE_TRUNC('day', {t}) AS d, \
         EXTRACT(YEAR FROM {t}) AS ey, EXTRACT(MONTH FROM {t}) AS em, EXTRACT(DAY FROM {t}) AS ed, EXTRACT(HOUR FROM {t}) AS eh, \
         EXTRACT(EPOCH FROM {t}) AS ee, EXTRACT(SECOND FROM CAST('1969-12-31 23:59:59' AS timestamp)) AS before_1970"
    ));
    use Value::{Float, Int, Timestamp};
    // (the figures are Python's datetime's)
    assert_eq!(
        row,
        vec![
            Timestamp(1_709_214_310_250),
            Timestamp(1_706_745_600_000),
            Timestamp(1_704_067_200_000),
            Timestamp(1_709_164_800_000),
            Int(2024),
            Int(2),
            Int(29),
            Int(13),
            Float(1_709_214_310.25),
            Int(59),
        ]
    );
}

#[test]
fn json_values_by_cast_and_their_fields_and_elements() {
    let j = r#"CAST('{"a": {"b": [10, "x", null, 2.50]}, "s": "t", "n": null}' AS json)"#;
    let row = one_row(&format!(
        "{j} AS doc, {j} -> 'a' -> 'b' AS arr, {j} -> 'a' -> 'b' ->> 1 AS x, {j} -> 'a' -> 'b' -> -1 AS last, \
         {j} ->> 's' AS s, {j} -> 's' AS quoted, {j} ->> 'n' AS n, {j} ->> 'missing' AS missing, {j} -> 's' ->> 0 AS not_an_array, \
         CAST(12 AS json) AS i, CAST(true AS json) AS b, CAST(CAST('[1, 2]' AS json) AS text) AS t, CAST({j} -> 'a' -> 'b' ->> 0 AS int) AS ten, \
         CAST('null' AS json) = CAST('1' AS json) AS null_eq, CAST('{{\"k\": 1}}' AS json) = CAST('{{ \"k\" : 1 }}' AS json) AS same"
    ));
    use Value::{Bool, Int, Null, Text};
    assert_eq!(
        row,
        vec![
            Text(r#"{"a":{"b":[10,"x",null,2.5]},"s":"t","n":null}"#.into()),
            Text(r#"[10,"x",null,2.5]"#.into()),
            Text("x".into()),
            Text("2.5".into()),
            Text("t".into()),
            Text(r#""t""#.into()),
            Null,
            Null,
            Null,
            Int(12),
            Text("true".into()),
            Text("[1,2]".into()),
            Int(10),
            Null,
            Bool(true),
        ]
    );
    let (_, errors) =
        run("CREATE VIEW out AS SELECT CAST(s AS json) AS j FROM a;", &[Change::A(0, A { k: 1, x: Some(2), s: "p".into() }, 1)], 0, 1);
    assert!(errors.len() == 1 && errors[0].1.contains("cannot cast 'p' to json"), "{errors:?}");
}

fn refusal(sql: &str) -> String {
    let e = compile(sql, &mut catalog()).expect_err(sql);
    format!("{e}")
}

#[test]
fn queries_outside_the_subset_are_refused_with_the_place_and_what_to_write() {
    let e = refusal("CREATE VIEW out AS\n  SELECT k FROM a ORDER BY k;");
    assert!(e.starts_with("line 2, column 3: ORDER BY"), "{e}");
    let e = refusal("CREATE VIEW out AS SELECT k, nope FROM a;");
    assert!(e.contains("line 1, column 30") && e.contains("unknown column `nope`") && e.contains("a.k, a.x, a.s"), "{e}");
    let e = refusal("CREATE VIEW out AS SELECT k, s + 1 AS z FROM a;");
    assert!(e.contains("type mismatch: text + int") && e.contains("CAST"), "{e}");
    let e = refusal("CREATE VIEW out AS SELECT k, x FROM a GROUP BY k;");
    assert!(e.contains("`x` must appear in GROUP BY"), "{e}");
    let e = refusal("CREATE VIEW out AS SELECT a.k FROM a, b;");
    assert!(e.contains("comma joins are not supported: write JOIN … ON"), "{e}");
    let e = refusal("CREATE VIEW out AS SELECT k FROM a WHERE x >;");
    assert!(e.starts_with("line 1, column") && e.contains("syntax error"), "{e}");
    let e = refusal("CREATE VIEW out AS SELECT k FROM missing;");
    assert!(e.contains("unknown input or view `missing`"), "{e}");
    let e = refusal("SELECT 1;");
    assert!(e.contains("only `CREATE VIEW"), "{e}");
    let e = refusal("CREATE VIEW out AS SELECT k FROM TUMBLE(a, x, INTERVAL '1' MINUTE);");
    assert!(e.contains("line 1, column 44") && e.contains("time column is int, not a timestamp"), "{e}");
    let e = refusal(
        "CREATE VIEW at AS SELECT k, CAST(x AS timestamp) AS t FROM a;\nCREATE VIEW out AS SELECT k FROM HOP(at, t, INTERVAL '7' SECOND, INTERVAL '1' MINUTE);",
    );
    assert!(e.starts_with("line 2") && e.contains("slide must divide its size"), "{e}");
    let e = refusal("CREATE VIEW out AS SELECT k FROM SESSION(a, x, INTERVAL '1' MINUTE);");
    assert!(e.contains("the table functions are TUMBLE and HOP"), "{e}");
    let e = refusal("CREATE VIEW out AS SELECT k, regexp_replace(s, 'a', 'b') AS r FROM a;");
    assert!(e.contains("regexp_replace is not supported; supported:"), "{e}");
    // top-N: ORDER BY … LIMIT points to ROW_NUMBER(), whose own misuses are named
    let e = refusal("CREATE VIEW out AS SELECT k FROM a ORDER BY x DESC LIMIT 5;");
    assert!(e.contains("ROW_NUMBER() OVER (PARTITION BY g ORDER BY x DESC) AS rank") && e.contains("WHERE rank <= N"), "{e}");
    let e = refusal("CREATE VIEW out AS SELECT k, RANK() OVER (PARTITION BY k ORDER BY x) AS r FROM a;");
    assert!(e.contains("line 1, column 30") && e.contains("rank() OVER is not supported: the window function is ROW_NUMBER()"), "{e}");
    let e = refusal("CREATE VIEW out AS SELECT k, ROW_NUMBER() OVER (PARTITION BY k) AS r FROM a;");
    assert!(e.contains("ROW_NUMBER() needs ORDER BY"), "{e}");
    let e = refusal("CREATE VIEW out AS SELECT k, COUNT(*) AS n, ROW_NUMBER() OVER (ORDER BY k) AS r FROM a GROUP BY k;");
    assert!(e.contains("a window function (OVER …) can only be a SELECT item of its own, in a SELECT without GROUP BY"), "{e}");
    let e = refusal("CREATE VIEW out AS SELECT k FROM a WHERE ROW_NUMBER() OVER (ORDER BY x) < 3;");
    assert!(e.contains("a window function (OVER …) can only be a SELECT item of its own"), "{e}");
}

#[test]
fn explain_names_the_operators_and_their_exchange_keys() {
    let views = compile(&Query::JoinGroup.sql(), &mut catalog()).unwrap();
    let text = views[0].plan.to_string();
    assert!(text.contains("Reduce: pre-aggregate on each worker, exchange by (#2), groups in a hash map; count(*), sum(#4)"), "{text}");
    assert!(text.contains("Join: exchange and hash the current rows of both sides by (#0) = (#0)"), "{text}");
    assert_eq!(views[0].key, vec![0], "keyed by the GROUP BY column");
}

/// A run renders the views its outputs read, directly or through other views, and no other.
#[test]
fn only_the_views_an_output_reads_are_needed() {
    let sql = "CREATE VIEW per_k AS SELECT k, COUNT(*) AS n FROM a GROUP BY k;
               CREATE VIEW big AS SELECT k, n FROM per_k WHERE n > 1;
               CREATE VIEW joined AS SELECT big.k, b.y FROM big JOIN b ON big.k = b.k;
               CREATE VIEW other AS SELECT y FROM b;";
    let views = compile(sql, &mut catalog()).unwrap();
    let needed = |outputs: &[&str]| dataflows::sql::render::needed_views(&views, outputs).into_iter().collect::<Vec<_>>();
    assert_eq!(needed(&["joined"]), ["big", "joined", "per_k"]);
    assert_eq!(needed(&["per_k", "other"]), ["other", "per_k"]);
    assert_eq!(needed(&["big"]), ["big", "per_k"]);
}

/// A view without GROUP BY is keyed by columns its plan keeps unique (an upsert input's primary
/// key, a GROUP BY's keys, through filters, projections that keep them and joins that match a
/// row with at most one other), else by all its columns.
#[test]
fn a_view_without_group_by_is_keyed_by_what_its_plan_keeps_unique() {
    let mut c = catalog();
    c.add_source("p", vec![Column { name: "id".into(), ty: Type::Int }, Column { name: "name".into(), ty: Type::Text }]);
    c.primary_key("p", &[0]);
    let sql = "CREATE VIEW counts AS SELECT k, COUNT(*) AS n FROM a GROUP BY k;\n\
               CREATE VIEW joined AS SELECT p.name, c.n, p.id FROM p JOIN counts c ON p.id = c.k;\n\
               CREATE VIEW left_joined AS SELECT p.id, c.n FROM p LEFT JOIN counts c ON p.id = c.k;\n\
               CREATE VIEW reversed AS SELECT c.k, c.n, p.name FROM counts c JOIN p ON c.k = p.id;\n\
               CREATE VIEW by_count AS SELECT c.k, p.name FROM p JOIN counts c ON p.id = c.n;\n\
               CREATE VIEW by_count_left AS SELECT c.k, p.name FROM p LEFT JOIN counts c ON p.id = c.n;\n\
               CREATE VIEW filtered AS SELECT name, id FROM p WHERE name <> 'x';\n\
               CREATE VIEW key_dropped AS SELECT name, name || '!' AS loud FROM p;\n\
               CREATE VIEW over_view AS SELECT id, n FROM joined WHERE n > 1;\n\
               CREATE VIEW plain AS SELECT k, x FROM a;\n\
               CREATE VIEW neither AS SELECT a.k, b.y FROM a JOIN b ON a.k = b.k;\n\
               CREATE VIEW unioned AS SELECT id FROM p UNION ALL SELECT id FROM p;";
    let views = compile(sql, &mut c).unwrap();
    let keys: BTreeMap<&str, Vec<usize>> = views.iter().map(|v| (v.name.as_str(), v.key.clone())).collect();
    let want: BTreeMap<&str, Vec<usize>> = BTreeMap::from([
        ("counts", vec![0]),
        // each p row meets at most one group: p's key
        ("joined", vec![2]),
        ("left_joined", vec![0]),
        ("reversed", vec![0]),
        // a count is shared by many groups, but each group meets at most one p row (inner only)
        ("by_count", vec![0]),
        ("by_count_left", vec![0, 1]),
        ("filtered", vec![1]),
        ("key_dropped", vec![0, 1]),
        ("over_view", vec![0]),
        ("plain", vec![0, 1]),
        ("neither", vec![0, 1]),
        ("unioned", vec![0]),
    ]);
    assert_eq!(keys, want);
}

/// Every stateful operator of a view reports what it keeps to the state metrics, by the view's
/// name: a GROUP BY its groups, a join the rows of both sides, ROW_NUMBER the rows it numbers.
#[test]
fn each_stateful_operator_reports_what_it_keeps() {
    let sql = "CREATE VIEW probe_groups AS SELECT k, COUNT(*) AS n FROM a GROUP BY k;\n\
               CREATE VIEW probe_join AS SELECT a.k, b.y FROM a JOIN b ON a.k = b.k;\n\
               CREATE VIEW probe_left AS SELECT a.k, b.y FROM a LEFT JOIN b ON a.k = b.k;\n\
               CREATE VIEW probe_rank AS SELECT k, x, ROW_NUMBER() OVER (PARTITION BY k ORDER BY x) AS r FROM a;";
    let views = compile(sql, &mut catalog()).unwrap();
    let sizes = Arc::new(Mutex::new(BTreeMap::new()));
    let seen = sizes.clone();
    timely::execute(timely::Config::process(1), move |worker| {
        let probe = ProbeHandle::new();
        let views = views.clone();
        let (mut ai, mut bi) = worker.dataflow::<Time, _, _>(|scope| {
            let (ai, a): (_, Coll<'_, SqlRow>) = scope.new_collection();
            let (bi, b): (_, Coll<'_, SqlRow>) = scope.new_collection();
            let source =
                |rows, arity| Source { rows: Rows::All(rows), shape: Shape { arity, event_time: None, monotone: false }, watermark: None };
            let sources = BTreeMap::from([("a".to_string(), source(a, 3)), ("b".to_string(), source(b, 2))]);
            for r in render(scope, &views, &sources, &Default::default()).values() {
                r.rows.clone().inner.probe_with(&probe);
            }
            (ai, bi)
        });
        // five rows of a over three keys, two of b over two keys (one of them in a)
        for (k, x) in [(1, 1), (1, 2), (2, 5), (3, 1), (3, 4)] {
            ai.update(vec![Value::Int(k), Value::Int(x), Value::Text("p".into())], 1);
        }
        for (k, y) in [(1, 10), (9, 90)] {
            bi.update(vec![Value::Int(k), Value::Int(y)], 1);
        }
        ai.advance_to(1);
        bi.advance_to(1);
        ai.flush();
        bi.flush();
        worker.step_while(|| probe.less_than(&1));
        // (read while the dataflow lives: its gauges go with it)
        *seen.lock().unwrap() = dataflows::state::sizes();
    })
    .unwrap();
    let sizes = sizes.lock().unwrap();
    let of = |view: &str, op: &str| sizes.get(&(view.to_string(), op)).copied();
    assert_eq!(of("probe_groups", "Reduce"), Some(3), "{sizes:?}");
    assert_eq!(of("probe_join", "HashJoin"), Some(5 + 2), "{sizes:?}");
    assert_eq!(of("probe_left", "LeftJoin"), Some(5 + 2), "{sizes:?}");
    assert_eq!(of("probe_rank", "RowNumber"), Some(5), "{sizes:?}");
}

/// A checkpoint forgets an event-time input's rows only when nothing will need them again:
/// every view that reads the input is read by no other view and either keeps no state (an
/// alert stream, a lookup in constant rows) or groups tumbling windows over its event time.
#[test]
fn a_checkpoint_forgets_only_rows_no_view_will_need_again() {
    use dataflows::sql::render::forgettable_inputs;
    let col = |n: &str, ty| Column { name: n.into(), ty };
    let forgettable = |sql: &str| {
        let mut c = Catalog::default();
        c.add_source("e", vec![col("ts", Type::Timestamp), col("k", Type::Text), col("v", Type::Float)]);
        c.add_source("p", vec![col("k", Type::Text), col("w", Type::Float)]);
        let views = compile(sql, &mut c).unwrap();
        let shapes: BTreeMap<String, Shape> = [
            ("e".to_string(), Shape { arity: 3, event_time: Some(0), monotone: true }),
            ("p".to_string(), Shape { arity: 2, event_time: None, monotone: true }),
        ]
        .into();
        forgettable_inputs(&views, &shapes)
    };
    let windows = "CREATE VIEW per_minute AS SELECT k, window_start, window_end, COUNT(*) AS n, MAX(v) AS top \
                   FROM TUMBLE(e, ts, INTERVAL '1' MINUTE) GROUP BY k, window_start, window_end;\n";
    let alerts = "CREATE VIEW limits AS SELECT * FROM (VALUES ('a', 1.0)) AS l (k, lim);\n\
                  CREATE VIEW alerts AS SELECT e.k, e.v FROM e JOIN limits ON e.k = limits.k WHERE e.v > limits.lim;\n";
    let minute = BTreeMap::from([("e".to_string(), vec![60_000])]);
    assert_eq!(forgettable(windows), minute);
    assert_eq!(forgettable(&format!("{windows}{alerts}")), minute, "an alert stream needs no row again");
    assert_eq!(forgettable(alerts), BTreeMap::from([("e".to_string(), vec![])]));
    let total = "CREATE VIEW total AS SELECT k, SUM(v) AS s FROM e GROUP BY k;\n";
    assert_eq!(forgettable(&format!("{windows}{total}")), BTreeMap::new(), "a running total needs every row");
    let hop = "CREATE VIEW sliding AS SELECT k, window_start, window_end, COUNT(*) AS n FROM HOP(e, ts, INTERVAL '30' SECOND, INTERVAL '1' MINUTE) GROUP BY k, window_start, window_end;\n";
    assert_eq!(forgettable(hop), BTreeMap::new(), "a row of a sliding window would rebuild a final one in part");
    let over = "CREATE VIEW busiest AS SELECT k, MAX(n) AS most FROM per_minute GROUP BY k;\n";
    assert_eq!(forgettable(&format!("{windows}{over}")), BTreeMap::new(), "a view over the windows keeps the final ones");
    let joined = "CREATE VIEW enriched AS SELECT e.k, e.v, p.w FROM e JOIN p ON e.k = p.k;\n";
    assert_eq!(forgettable(joined), BTreeMap::new(), "a join keeps the rows");
}

/// `explain` says which GROUP BYs fold their input in one pass.
#[test]
fn explain_names_the_group_bys_folded_together() {
    use dataflows::sql::render::physical_notes;
    let views = compile(&Query::TwoGroups.sql(), &mut catalog()).unwrap();
    let shapes: BTreeMap<String, Shape> = [
        ("a".to_string(), Shape { arity: 3, event_time: None, monotone: true }),
        ("b".to_string(), Shape { arity: 2, event_time: None, monotone: true }),
    ]
    .into();
    let notes = physical_notes(&views, &shapes);
    assert_eq!(notes["g1"], ["it reads `a` in one pass with the readers of g2: one operator reads each row once"]);
    let views = compile(&Query::ChainAndGroup.sql(), &mut catalog()).unwrap();
    let notes = physical_notes(&views, &shapes);
    assert_eq!(notes["f"][0], "it reads `a` in one pass with the readers of g: one operator reads each row once");
    assert!(notes["out"].iter().all(|n| !n.contains("one pass")), "{:?}", notes["out"]);
}

/// The runtime keeps rows' source positions in flight only for inputs whose rows an expression
/// that can fail reads as they were read: a row error there names its record.
#[test]
fn positions_are_kept_for_inputs_an_expression_can_fail_on() {
    use dataflows::sql::render::inputs_of_row_errors;
    let inputs = |sql: &str| inputs_of_row_errors(&compile(sql, &mut catalog()).unwrap()).into_keys().collect::<Vec<_>>();
    assert_eq!(inputs("CREATE VIEW out AS SELECT k, x * 2 AS v FROM a WHERE x > 1;"), ["a"], "arithmetic can overflow");
    assert_eq!(inputs("CREATE VIEW out AS SELECT k, CAST(s AS int) AS n FROM a;"), ["a"], "a cast can fail");
    assert_eq!(inputs("CREATE VIEW out AS SELECT k, s FROM a WHERE x > 1 AND s IS NOT NULL;"), Vec::<String>::new());
    assert_eq!(inputs("CREATE VIEW out AS SELECT k, COUNT(*) AS n, SUM(x) AS sx FROM a GROUP BY k;"), Vec::<String>::new());
    assert_eq!(inputs("CREATE VIEW out AS SELECT k, SUM(x + 1) AS sx FROM a GROUP BY k;"), ["a"]);
    assert_eq!(
        inputs("CREATE VIEW g AS SELECT k, COUNT(*) AS n FROM b GROUP BY k;\nCREATE VIEW out AS SELECT k, n * 2 AS twice FROM g;"),
        Vec::<String>::new(),
        "a row of a view over a GROUP BY is no input's row"
    );
    // A float SUM or AVG of a column fails only on that column's huge values: only those rows'
    // positions are kept. Anything else that can fail needs every row's.
    use dataflows::sql::render::Failing;
    let failing = |sql: &str| {
        let mut c = Catalog::default();
        let col = |n: &str, ty| Column { name: n.into(), ty };
        c.add_source("f", vec![col("k", Type::Int), col("v", Type::Float), col("w", Type::Float)]);
        inputs_of_row_errors(&compile(sql, &mut c).unwrap()).remove("f")
    };
    let only = |cols: &[usize]| Some(Failing::LargeFloats(cols.iter().copied().collect()));
    assert_eq!(failing("CREATE VIEW out AS SELECT k, AVG(v) AS a, SUM(w) AS s, MAX(v) AS m FROM f WHERE v > 0 GROUP BY k;"), only(&[1, 2]));
    assert_eq!(
        failing("CREATE VIEW a AS SELECT k, SUM(v) AS s FROM f GROUP BY k;\nCREATE VIEW b AS SELECT k, AVG(w) AS s FROM f GROUP BY k;"),
        only(&[1, 2])
    );
    assert_eq!(failing("CREATE VIEW out AS SELECT k, SUM(v * 2) AS s FROM f GROUP BY k;"), Some(Failing::Any), "arithmetic");
    assert_eq!(
        failing("CREATE VIEW out AS SELECT k, SUM(CASE WHEN v > 0 THEN w ELSE 0.0 END) AS s FROM f GROUP BY k;"),
        Some(Failing::Any),
        "a float sum of an expression"
    );
    assert_eq!(
        failing("CREATE VIEW a AS SELECT k, SUM(v) AS s FROM f GROUP BY k;\nCREATE VIEW b AS SELECT k, v / w AS q FROM f;"),
        Some(Failing::Any)
    );
    assert_eq!(failing("CREATE VIEW out AS SELECT k, MIN(v) AS m, COUNT(*) AS n FROM f GROUP BY k;"), None);
}

/// What a checkpoint keeps of an input, time by time: every distinct row with its count, a row
/// forgotten once the watermark passes the end of its tumbling window (the newest row stays);
/// of an upsert input, each key's latest version by rank. The state metrics count the rows.
#[test]
fn a_checkpoint_keeps_the_rows_the_views_need() {
    use dataflows::sql::keep::{keep_rows, Forget, KeptRows};
    let ts = |t: i64, k: &str| vec![Value::Timestamp(t), Value::Text(k.into())];
    let states = timely::execute_directly(move |worker| {
        let (mut counted, mut latest, logs) = worker.dataflow::<Time, _, _>(|scope| {
            let (counted, rows) = scope.new_collection::<(u64, SqlRow), isize>();
            let forget = Forget { column: 0, sizes: vec![10], lateness_ms: 2 };
            let a = keep_rows(rows, "keep_counted", Vec::new(), Some(forget), 1);
            let (latest, rows) = scope.new_collection::<(u64, SqlRow), isize>();
            let b = keep_rows(rows, "keep_latest", vec![1], None, 1);
            (counted, latest, (a, b))
        });
        counted.update((0, ts(1, "a")), 1);
        counted.update((0, ts(5, "b")), 2);
        latest.insert((7, ts(1, "k")));
        latest.insert((3, ts(2, "k")));
        for t in 1..3 {
            counted.advance_to(t);
            latest.advance_to(t);
            if t == 1 {
                // the watermark 13 - 2 passes the end (10) of the first window; 11 is in the next
                counted.update((0, ts(13, "c")), 1);
                counted.update((0, ts(11, "d")), 1);
                latest.insert((9, ts(3, "k")));
            }
            counted.flush();
            latest.flush();
            for _ in 0..50 {
                worker.step();
            }
        }
        let sizes = dataflows::state::sizes();
        let gauges = [sizes[&("keep_counted".to_string(), "KeepRows")], sizes[&("keep_latest".to_string(), "KeepRows")]];
        drop((counted, latest));
        while worker.step() {}
        let sorted = |k: Option<std::rc::Rc<KeptRows>>| {
            let mut rows = k.expect("a state at the checkpoint time").rows.clone();
            rows.sort();
            rows
        };
        let (a, b) = logs;
        let (a, b) = (a.borrow(), b.borrow());
        ([sorted(a.at(0)), sorted(a.at(1)), sorted(b.at(0)), sorted(b.at(1))], gauges)
    });
    let (states, gauges) = states;
    assert_eq!(gauges, [2, 1], "the state metrics count the rows kept");
    assert_eq!(states[0], vec![(0, ts(1, "a"), 1), (0, ts(5, "b"), 2)]);
    assert_eq!(states[1], vec![(0, ts(11, "d"), 1), (0, ts(13, "c"), 1)], "the first window is final");
    assert_eq!(states[2], vec![(7, ts(1, "k"), 1)], "the latest version by rank, not by arrival");
    assert_eq!(states[3], vec![(9, ts(3, "k"), 1)]);
    let sizes = dataflows::state::sizes();
    assert_eq!(sizes.get(&("keep_counted".to_string(), "KeepRows")), None, "the operators are gone with the worker");
}

/// Versions of an upsert input `p(k int, v int)` keyed by `k`: (time, rank, k, v). Rows of
/// `b`: (time, k, y, retracted one time later).
type Versions = Vec<(Time, u64, i64, i64)>;
type BRows = Vec<(Time, i64, i64, bool)>;

/// Views over upsert input `p` and input `b`: joined on p's key from either side (the join
/// keeps p's latest versions itself) and grouped (p's rows through an upsert). Each view's
/// updates, on `workers` workers.
fn run_upsert(versions: &Versions, bs: &BRows, last: Time, workers: usize) -> BTreeMap<String, Vec<Update>> {
    let sql = "CREATE VIEW pb AS SELECT p.k, p.v, b.y FROM p JOIN b ON p.k = b.k;\n\
               CREATE VIEW bp AS SELECT b.y, p.v FROM b JOIN p ON b.k = p.k;\n\
               CREATE VIEW per_v AS SELECT v, COUNT(*) AS n FROM p GROUP BY v;";
    let mut c = catalog();
    c.add_source("p", vec![Column { name: "k".into(), ty: Type::Int }, Column { name: "v".into(), ty: Type::Int }]);
    c.primary_key("p", &[0]);
    let views = compile(sql, &mut c).unwrap_or_else(|e| panic!("{sql}\n{e}"));
    let out: Arc<Mutex<BTreeMap<String, Vec<Update>>>> = Default::default();
    let o = out.clone();
    let (versions, bs) = (Arc::new(versions.clone()), Arc::new(bs.clone()));
    timely::execute(timely::Config::process(workers), move |worker| {
        let probe = ProbeHandle::new();
        let (views, o) = (views.clone(), o.clone());
        let (mut pi, mut bi) = worker.dataflow::<Time, _, _>(|scope| {
            let (pi, p): (_, Coll<'_, (u64, SqlRow)>) = scope.new_collection();
            let (bi, b): (_, Coll<'_, SqlRow>) = scope.new_collection();
            let shape = |arity| Shape { arity, event_time: None, monotone: false };
            let sources = BTreeMap::from([
                ("p".to_string(), Source { rows: Rows::latest(p, vec![0], "p"), shape: shape(2), watermark: None }),
                ("b".to_string(), Source { rows: Rows::All(b), shape: shape(2), watermark: None }),
            ]);
            let rendered = render(scope, &views, &sources, &Default::default());
            for (name, r) in rendered {
                r.errors.inner.probe_with(&probe);
                let o = o.clone();
                r.rows
                    .inspect(move |(d, t, m)| o.lock().unwrap().entry(name.clone()).or_default().push((d.clone(), *t, *m)))
                    .inner
                    .probe_with(&probe);
            }
            (pi, bi)
        });
        let (peers, index) = (worker.peers(), worker.index());
        let mine = |i: usize| i % peers == index;
        for t in 0..=last {
            for (_, (vt, rank, k, v)) in versions.iter().enumerate().filter(|(i, _)| mine(*i)) {
                if *vt == t {
                    pi.insert((*rank, vec![Value::Int(*k), Value::Int(*v)]));
                }
            }
            for (_, (bt, k, y, gone)) in bs.iter().enumerate().filter(|(i, _)| mine(*i)) {
                let row = vec![Value::Int(*k), Value::Int(*y)];
                if *bt == t {
                    bi.insert(row.clone());
                }
                if *gone && *bt + 1 == t {
                    bi.remove(row);
                }
            }
            pi.advance_to(t + 1);
            bi.advance_to(t + 1);
            pi.flush();
            bi.flush();
            worker.step_while(|| probe.less_than(&(t + 1)));
        }
    })
    .unwrap();
    let mut out = std::mem::take(&mut *out.lock().unwrap());
    for updates in out.values_mut() {
        consolidate_updates(updates);
    }
    out
}

/// The views of [`run_upsert`] at `t`, from scratch: p's version of the highest rank per key
/// among those read by `t`, b's rows at `t`.
fn naive_upsert(versions: &Versions, bs: &BRows, t: Time) -> BTreeMap<String, Vec<SqlRow>> {
    use Value::Int;
    let mut latest: BTreeMap<i64, (u64, i64)> = BTreeMap::new();
    for (_, rank, k, v) in versions.iter().filter(|(vt, ..)| *vt <= t) {
        if latest.get(k).is_none_or(|(r, _)| rank > r) {
            latest.insert(*k, (*rank, *v));
        }
    }
    let b: Vec<(i64, i64)> = bs.iter().filter(|(bt, _, _, gone)| *bt <= t && !(*gone && *bt < t)).map(|(_, k, y, _)| (*k, *y)).collect();
    let mut pb = Vec::new();
    let mut bp = Vec::new();
    for (k, (_, v)) in &latest {
        for (bk, y) in &b {
            if bk == k {
                pb.push(vec![Int(*k), Int(*v), Int(*y)]);
                bp.push(vec![Int(*y), Int(*v)]);
            }
        }
    }
    let mut per_v: BTreeMap<i64, i64> = BTreeMap::new();
    for (_, v) in latest.values() {
        *per_v.entry(*v).or_default() += 1;
    }
    let per_v = per_v.into_iter().map(|(v, n)| vec![Int(v), Int(n)]).collect();
    let mut views = BTreeMap::from([("pb".to_string(), pb), ("bp".to_string(), bp), ("per_v".to_string(), per_v)]);
    for rows in views.values_mut() {
        rows.sort();
    }
    views
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// An upsert input joined on its key (the join keeps its latest versions) and read by a
    /// GROUP BY (through an upsert): at every time, on 1 and 4 workers, the views of the latest
    /// versions recomputed from scratch. A version may arrive after one it outranks.
    #[test]
    fn an_upsert_input_joined_on_its_key_equals_its_latest_versions_joined(
        raw in proptest::collection::vec((0u64..4, 0i64..4, 0i64..3), 0..24),
        bs in proptest::collection::vec((0u64..4, 0i64..4, 0i64..3, proptest::bool::ANY), 0..16),
    ) {
        // unique ranks, not in the order of time
        let versions: Versions = raw.iter().enumerate().map(|(i, (t, k, v))| (*t, (i as u64 * 7919) % 101, *k, *v)).collect();
        let last = 4;
        for workers in [1, 4] {
            let out = run_upsert(&versions, &bs, last, workers);
            for t in 0..=last {
                let naive = naive_upsert(&versions, &bs, t);
                for (view, want) in &naive {
                    let got = out.get(view).map_or_else(Vec::new, |u| at(u, t));
                    prop_assert_eq!(&got, want, "{} at {} on {} workers", view, t, workers);
                }
            }
        }
    }
}
