//! Evaluating a planned expression on one row. SQL's NULL rules: an operator of a NULL is NULL,
//! except AND/OR (three-valued), IS NULL and COALESCE. A row whose expression fails (a cast
//! that does not parse, division by zero, an integer overflow) gets an error, which makes it a
//! dead letter of its view.

use super::plan::{BinOp, Expr, Func, TimeUnit};
use super::value::{Type, Value};

/// Evaluates `e` on `row`.
#[inline]
pub fn eval(e: &Expr, row: &[Value]) -> Result<Value, String> {
    at(e, row)
}

/// Evaluates `e` on `row` onto the end of `out` (a column or a constant is copied there
/// without passing through a `Result`).
#[inline]
pub fn eval_onto(e: &Expr, row: &[Value], out: &mut Vec<Value>) -> Result<(), String> {
    match place(e, row) {
        Some(v) => out.push(v.clone()),
        None => out.push(eval_expr(e, row)?),
    }
    Ok(())
}

/// Whether `predicate` holds on `row` (`None`: it is NULL), as [`truth`] of [`eval`] says, but
/// without making a value of each condition: comparisons read their operands where they are.
#[inline]
pub fn holds(predicate: &Expr, row: &[Value]) -> Result<Option<bool>, String> {
    test(predicate, row)
}

/// [`holds`] on `left ++ right` without building that row (`None`: NULLs), as a filter judges
/// a looked-up row before it is copied.
#[inline]
pub fn holds_joined(predicate: &Expr, left: &[Value], right: Option<&[Value]>) -> Result<Option<bool>, String> {
    test(predicate, &Joined { left, right })
}

/// The columns an expression reads.
pub(super) trait Columns {
    fn column(&self, i: usize) -> &Value;
}

impl Columns for [Value] {
    #[inline]
    fn column(&self, i: usize) -> &Value {
        &self[i]
    }
}

/// A row and the row a join looked up for it, as one.
pub(super) struct Joined<'a> {
    pub(super) left: &'a [Value],
    pub(super) right: Option<&'a [Value]>,
}

static NULL: Value = Value::Null;

impl Columns for Joined<'_> {
    #[inline]
    fn column(&self, i: usize) -> &Value {
        match i.checked_sub(self.left.len()) {
            None => &self.left[i],
            Some(j) => self.right.map_or(&NULL, |r| &r[j]),
        }
    }
}

/// Where an operand's value is, when it is a column or a constant (`None`: it must be
/// evaluated). A pointer in a register: no value, and no `Result` of one, is moved through
/// the stack for the commonest operands.
#[inline]
fn place<'a, R: Columns + ?Sized>(e: &'a Expr, row: &'a R) -> Option<&'a Value> {
    match e {
        Expr::Column(c) => Some(row.column(*c)),
        Expr::Literal(v) => Some(v),
        _ => None,
    }
}

/// An operand by reference: where it is ([`place`]), or evaluated into `$slot`.
macro_rules! operand {
    ($e:expr, $row:expr, $slot:ident) => {
        match place($e, $row) {
            Some(v) => v,
            None => {
                $slot = at($e, $row)?;
                &$slot
            }
        }
    };
}

#[inline]
fn at<R: Columns + ?Sized>(e: &Expr, row: &R) -> Result<Value, String> {
    // (a column or a constant, nearly every key and argument, without the call)
    match e {
        Expr::Column(c) => Ok(row.column(*c).clone()),
        Expr::Literal(v) => Ok(v.clone()),
        _ => eval_expr(e, row),
    }
}

/// A condition's truth (`None`: NULL). AND, OR, NOT, comparisons and IS NULL are judged here,
/// their operands read in place; anything else is evaluated and must be a bool. (Both sides
/// of AND and OR are evaluated, so an error on either side is the row's error, as in
/// [`eval_expr`].)
fn test<R: Columns + ?Sized>(e: &Expr, row: &R) -> Result<Option<bool>, String> {
    use BinOp::*;
    Ok(match e {
        Expr::Binary(op @ (And | Or), a, b) => three_valued(*op == And, test(a, row)?, test(b, row)?),
        Expr::Binary(op @ (Eq | NotEq | Lt | LtEq | Gt | GtEq), a, b) => {
            let (x, y);
            compare(*op, operand!(a, row, x), operand!(b, row, y))
        }
        Expr::Not(a) => test(a, row)?.map(|b| !b),
        Expr::IsNull(a, negated) => {
            let x;
            Some(operand!(a, row, x).is_null() != *negated)
        }
        e => truth(at(e, row)?)?,
    })
}

pub(super) fn eval_expr<R: Columns + ?Sized>(e: &Expr, row: &R) -> Result<Value, String> {
    use BinOp::*;
    Ok(match e {
        Expr::Column(c) => row.column(*c).clone(),
        Expr::Literal(v) => v.clone(),
        Expr::Binary(And | Or | Eq | NotEq | Lt | LtEq | Gt | GtEq, ..) | Expr::Not(_) | Expr::IsNull(..) => {
            test(e, row)?.map_or(Value::Null, Value::Bool)
        }
        Expr::Binary(BinOp::Concat, a, b) => match (at(a, row)?, at(b, row)?) {
            (Value::Null, _) | (_, Value::Null) => Value::Null,
            (Value::Text(x), Value::Text(y)) => Value::Text(x + &y),
            _ => return Err("|| needs text".into()),
        },
        // (columns and constants are read where they are, not copied)
        Expr::Binary(op, a, b) => {
            let (x, y);
            binary(*op, operand!(a, row, x), operand!(b, row, y))?
        }
        Expr::Neg(a) => match at(a, row)? {
            Value::Int(i) => Value::Int(i.checked_neg().ok_or("integer overflow")?),
            Value::Float(f) => Value::Float(-f),
            _ => Value::Null,
        },
        Expr::Case(arms, other) => {
            for (c, r) in arms {
                if test(c, row)? == Some(true) {
                    return at(r, row);
                }
            }
            at(other, row)?
        }
        Expr::Cast(a, to) => cast(at(a, row)?, *to)?,
        Expr::InList(a, list, negated) => {
            let v = at(a, row)?;
            if v.is_null() {
                return Ok(Value::Null);
            }
            let mut null = false;
            for x in list {
                let slot;
                match compare(BinOp::Eq, &v, operand!(x, row, slot)) {
                    Some(true) => return Ok(Value::Bool(!negated)),
                    None => null = true,
                    Some(false) => {}
                }
            }
            if null {
                Value::Null
            } else {
                Value::Bool(*negated)
            }
        }
        Expr::Call(Func::Coalesce, args) => {
            for a in args {
                let v = at(a, row)?;
                if !v.is_null() {
                    return Ok(v);
                }
            }
            Value::Null
        }
        Expr::Call(Func::Concat, args) => {
            let mut out = String::new();
            for a in args {
                match at(a, row)? {
                    Value::Null => {}
                    Value::Text(s) => out.push_str(&s),
                    v => out.push_str(&match cast(v, Type::Text)? {
                        Value::Text(s) => s,
                        _ => unreachable!("a cast to text gives text"),
                    }),
                }
            }
            Value::Text(out.into())
        }
        Expr::Call(f @ (Func::JsonGet | Func::JsonGetText), args) => match (at(&args[0], row)?, at(&args[1], row)?) {
            (Value::Text(json), at) if !at.is_null() => json_get(&json, &at, *f == Func::JsonGetText)?,
            _ => Value::Null,
        },
        Expr::Call(f @ (Func::Substring | Func::SplitPart | Func::Position), args) => {
            let values: Vec<Value> = args.iter().map(|a| at(a, row)).collect::<Result<_, _>>()?;
            if values.iter().any(Value::is_null) {
                return Ok(Value::Null);
            }
            match (f, &values[..]) {
                (Func::Substring, [Value::Text(s), Value::Int(from), rest @ ..]) => {
                    // SQL: characters from `from` (1-based; before 1 counts against the length)
                    let len = match rest {
                        [Value::Int(l)] if *l < 0 => return Err("a negative SUBSTRING length".into()),
                        [Value::Int(l)] => Some(*l),
                        _ => None,
                    };
                    let start = from - 1;
                    let end = len.map(|l| start.saturating_add(l));
                    let chars = s.chars().enumerate().filter(|(i, _)| {
                        let i = *i as i64;
                        i >= start && end.is_none_or(|e| i < e)
                    });
                    Value::Text(chars.map(|(_, c)| c).collect())
                }
                (Func::SplitPart, [Value::Text(s), Value::Text(d), Value::Int(n)]) => {
                    if *n <= 0 {
                        return Err(format!("SPLIT_PART's field {n} is not positive"));
                    }
                    let part = if d.is_empty() { (*n == 1).then_some(s.as_str()) } else { s.split(d.as_str()).nth(*n as usize - 1) };
                    Value::Text(part.unwrap_or("").into())
                }
                (Func::Position, [Value::Text(needle), Value::Text(hay)]) => {
                    Value::Int(hay.find(needle.as_str()).map_or(0, |b| hay[..b].chars().count() as i64 + 1))
                }
                _ => return Err(format!("{f:?} of {values:?}")),
            }
        }
        Expr::Call(f, args) => {
            let v = at(&args[0], row)?;
            match (f, v) {
                (_, Value::Null) => Value::Null,
                (Func::Lower, Value::Text(s)) => Value::Text(s.to_lowercase()),
                (Func::Upper, Value::Text(s)) => Value::Text(s.to_uppercase()),
                (Func::Trim, Value::Text(s)) => Value::Text(s.trim().into()),
                (Func::Length, Value::Text(s)) => Value::Int(s.chars().count() as i64),
                (Func::Abs, Value::Int(i)) => Value::Int(i.checked_abs().ok_or("integer overflow")?),
                (Func::Abs, Value::Float(x)) => Value::Float(x.abs()),
                (Func::Round | Func::Floor | Func::Ceil, Value::Int(i)) => Value::Int(i),
                (Func::Round, Value::Float(x)) => Value::Float(x.round()),
                (Func::Floor, Value::Float(x)) => Value::Float(x.floor()),
                (Func::Ceil, Value::Float(x)) => Value::Float(x.ceil()),
                (Func::DateTrunc(unit), Value::Timestamp(t)) => Value::Timestamp(truncate(t, *unit)),
                (Func::Extract(TimeUnit::Epoch), Value::Timestamp(t)) => Value::Float(t as f64 / 1000.0),
                (Func::Extract(unit), Value::Timestamp(t)) => Value::Int(extract(t, *unit)),
                (f, v) => return Err(format!("{f:?} of {v}")),
            }
        }
    })
}

/// A condition's truth: `None` for NULL.
pub fn truth(v: Value) -> Result<Option<bool>, String> {
    match v {
        Value::Bool(b) => Ok(Some(b)),
        Value::Null => Ok(None),
        other => Err(format!("{other} is not a bool")),
    }
}

fn binary(op: BinOp, a: &Value, b: &Value) -> Result<Value, String> {
    use BinOp::*;
    if a.is_null() || b.is_null() {
        return Ok(Value::Null);
    }
    Ok(match op {
        Add | Sub | Mul | Div | Mod => match (a, b) {
            (Value::Int(x), Value::Int(y)) => {
                let (x, y) = (*x, *y);
                let r = match op {
                    Add => x.checked_add(y),
                    Sub => x.checked_sub(y),
                    Mul => x.checked_mul(y),
                    Div if y == 0 => return Err("division by zero".into()),
                    Div => x.checked_div(y),
                    Mod if y == 0 => return Err("division by zero".into()),
                    _ => x.checked_rem(y),
                };
                Value::Int(r.ok_or("integer overflow")?)
            }
            _ => {
                let (x, y) = (a.as_f64().ok_or("not a number")?, b.as_f64().ok_or("not a number")?);
                if matches!(op, Div | Mod) && y == 0.0 {
                    return Err("division by zero".into());
                }
                Value::Float(match op {
                    Add => x + y,
                    Sub => x - y,
                    Mul => x * y,
                    Div => x / y,
                    _ => x % y,
                })
            }
        },
        Concat => unreachable!("|| is evaluated by eval"),
        _ => compare(op, a, b).map_or(Value::Null, Value::Bool),
    })
}

/// A comparison of two values (`None`: one is NULL); an int and a float compare as floats.
#[inline]
/// AND (`and`) or OR of two truths, three-valued: AND is FALSE if either side is, OR TRUE if
/// either side is; else a NULL side makes it NULL.
pub(super) fn three_valued(and: bool, x: Option<bool>, y: Option<bool>) -> Option<bool> {
    match (x, y) {
        (Some(v), _) | (_, Some(v)) if v != and => Some(v),
        (Some(_), Some(_)) => Some(and),
        _ => None,
    }
}

pub(super) fn compare(op: BinOp, a: &Value, b: &Value) -> Option<bool> {
    use BinOp::*;
    let ord = match (a, b) {
        (Value::Null, _) | (_, Value::Null) => return None,
        (Value::Float(x), Value::Float(y)) => x.total_cmp(y),
        (Value::Int(_), Value::Float(_)) | (Value::Float(_), Value::Int(_)) => {
            a.as_f64().expect("a number").total_cmp(&b.as_f64().expect("a number"))
        }
        _ => a.cmp(b),
    };
    Some(match op {
        Eq => ord.is_eq(),
        NotEq => ord.is_ne(),
        Lt => ord.is_lt(),
        LtEq => ord.is_le(),
        Gt => ord.is_gt(),
        _ => ord.is_ge(),
    })
}

/// CAST.
pub fn cast(v: Value, to: Type) -> Result<Value, String> {
    Ok(match (v, to) {
        (Value::Null, _) => Value::Null,
        (Value::Int(i), Type::Float) => Value::Float(i as f64),
        (Value::Float(x), Type::Int) => {
            if !x.is_finite() || x.abs() >= 9.2e18 {
                return Err(format!("{x} does not fit an int"));
            }
            Value::Int(x.trunc() as i64)
        }
        (Value::Text(s), Type::Int) => Value::Int(s.trim().parse().map_err(|_| format!("cannot cast '{s}' to int"))?),
        (Value::Text(s), Type::Float) => Value::Float(s.trim().parse().map_err(|_| format!("cannot cast '{s}' to float"))?),
        (Value::Text(s), Type::Bool) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "t" | "1" => Value::Bool(true),
            "false" | "f" | "0" => Value::Bool(false),
            _ => return Err(format!("cannot cast '{s}' to bool")),
        },
        (Value::Text(s), Type::Timestamp) => {
            Value::Timestamp(parse_timestamp(&s).ok_or_else(|| format!("cannot cast '{s}' to timestamp"))?)
        }
        (Value::Int(i), Type::Timestamp) => Value::Timestamp(i),
        (Value::Timestamp(t), Type::Int) => Value::Int(t),
        (Value::Bool(b), Type::Int) => Value::Int(i64::from(b)),
        (v, Type::Text) => Value::Text(match v {
            Value::Text(s) => s,
            Value::Int(i) => i.to_string().into(),
            Value::Float(x) => x.to_string().into(),
            Value::Bool(b) => b.to_string().into(),
            Value::Timestamp(t) => t.to_string().into(),
            Value::Null => unreachable!("handled above"),
        }),
        (Value::Text(s), Type::Json) => {
            let json: serde_json::Value = serde_json::from_str(&s).map_err(|e| format!("cannot cast '{s}' to json: {e}"))?;
            json_value(&json)
        }
        (v @ Value::Int(_), Type::Json) => v,
        (Value::Bool(b), Type::Json) => Value::Text(b.to_string().into()),
        (Value::Float(x), Type::Json) => json_value(&serde_json::Value::from(x)),
        (v @ Value::Int(_), Type::Int)
        | (v @ Value::Float(_), Type::Float)
        | (v @ Value::Bool(_), Type::Bool)
        | (v @ Value::Timestamp(_), Type::Timestamp) => v,
        (v, t) => return Err(format!("cannot cast {v} to {t}")),
    })
}

/// A JSON value as a SQL value of type json: an integer that fits i64 as an int (so ids that are
/// numbers group, join and order as numbers, before every other JSON value), NULL for JSON
/// null, any other value as its compact text.
pub fn json_value(json: &serde_json::Value) -> Value {
    match json {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Number(n) if n.is_i64() => Value::Int(n.as_i64().expect("an i64")),
        v => Value::Text(v.to_string().into()),
    }
}

/// `json -> at` (`text`: `->>`, a string's own text): a field of an object (`at` text) or an
/// element of an array (`at` int, from 0; negative counts from the end); NULL when there is none.
fn json_get(json: &str, at: &Value, text: bool) -> Result<Value, String> {
    let doc: serde_json::Value = serde_json::from_str(json).map_err(|e| format!("not json ({e}): {json}"))?;
    let found = match (&doc, at) {
        (serde_json::Value::Object(o), Value::Text(k)) => o.get(k.as_str()),
        (serde_json::Value::Array(a), Value::Int(i)) => {
            let i = if *i < 0 { i.checked_add(a.len() as i64) } else { Some(*i) };
            i.and_then(|i| usize::try_from(i).ok()).and_then(|i| a.get(i))
        }
        _ => None,
    };
    Ok(match found {
        Some(serde_json::Value::String(s)) if text => Value::Text(s.as_str().into()),
        // (`->>` gives text: a number's JSON text)
        Some(v @ serde_json::Value::Number(_)) if text => Value::Text(v.to_string().into()),
        Some(v) => json_value(v),
        None => Value::Null,
    })
}

/// The civil date of a day number (days since 1970-01-01): year, month, day.
fn civil(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let (y2, m2) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * m2 + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

const DAY_MS: i64 = 86_400_000;

fn truncate(t: i64, unit: TimeUnit) -> i64 {
    let unit_ms = |ms: i64| t.div_euclid(ms) * ms;
    match unit {
        TimeUnit::Second => unit_ms(1000),
        TimeUnit::Minute => unit_ms(60_000),
        TimeUnit::Hour => unit_ms(3_600_000),
        TimeUnit::Day | TimeUnit::Epoch => unit_ms(DAY_MS),
        TimeUnit::Month | TimeUnit::Year => {
            let (y, m, _) = civil(t.div_euclid(DAY_MS));
            days_from_civil(y, if unit == TimeUnit::Year { 1 } else { m }, 1) * DAY_MS
        }
    }
}

fn extract(t: i64, unit: TimeUnit) -> i64 {
    let (y, m, d) = civil(t.div_euclid(DAY_MS));
    let in_day = t.rem_euclid(DAY_MS);
    match unit {
        TimeUnit::Year => y,
        TimeUnit::Month => m,
        TimeUnit::Day => d,
        TimeUnit::Hour => in_day / 3_600_000,
        TimeUnit::Minute => in_day / 60_000 % 60,
        TimeUnit::Second => in_day / 1000 % 60,
        TimeUnit::Epoch => t / 1000,
    }
}

/// `YYYY-MM-DD[ T]HH:MM:SS[.fff]` (UTC, optional `Z`) as milliseconds since the epoch.
pub fn parse_timestamp(s: &str) -> Option<i64> {
    let s = s.trim().trim_end_matches('Z');
    let (date, time) = s.split_once([' ', 'T']).unwrap_or((s, "00:00:00"));
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    if d.next().is_some() || !(1..=12).contains(&m) || !(1..=31).contains(&day) {
        return None;
    }
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|p| p.parse::<i64>().ok());
    let (h, mi, sec) = (t.next()??, t.next()??, t.next().unwrap_or(Some(0))?);
    if !(0..24).contains(&h) || !(0..60).contains(&mi) || !(0..61).contains(&sec) {
        return None;
    }
    let ms: i64 = format!("{frac:0<3}")[..3].parse().ok()?;
    // (Howard Hinnant's days-from-civil)
    let days = days_from_civil(y, m, day);
    Some(((days * 24 + h) * 60 + mi) * 60_000 + sec * 1000 + ms)
}
