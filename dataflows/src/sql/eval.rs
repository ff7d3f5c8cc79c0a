//! Evaluating a planned expression on one row. SQL's NULL rules: an operator of a NULL is NULL,
//! except AND/OR (three-valued), IS NULL and COALESCE. A row whose expression fails (a cast
//! that does not parse, division by zero, an integer overflow) gets an error, which makes it a
//! dead letter of its view.

use super::plan::{BinOp, Expr, Func};
use super::value::{Type, Value};

/// Evaluates `e` on `row`.
pub fn eval(e: &Expr, row: &[Value]) -> Result<Value, String> {
    Ok(match e {
        Expr::Column(c) => row[*c].clone(),
        Expr::Literal(v) => v.clone(),
        Expr::Binary(BinOp::And, a, b) => match (truth(eval(a, row)?)?, truth(eval(b, row)?)?) {
            (Some(false), _) | (_, Some(false)) => Value::Bool(false),
            (Some(true), Some(true)) => Value::Bool(true),
            _ => Value::Null,
        },
        Expr::Binary(BinOp::Or, a, b) => match (truth(eval(a, row)?)?, truth(eval(b, row)?)?) {
            (Some(true), _) | (_, Some(true)) => Value::Bool(true),
            (Some(false), Some(false)) => Value::Bool(false),
            _ => Value::Null,
        },
        Expr::Binary(op, a, b) => binary(*op, eval(a, row)?, eval(b, row)?)?,
        Expr::Not(a) => match truth(eval(a, row)?)? {
            Some(b) => Value::Bool(!b),
            None => Value::Null,
        },
        Expr::Neg(a) => match eval(a, row)? {
            Value::Int(i) => Value::Int(i.checked_neg().ok_or("integer overflow")?),
            Value::Float(f) => Value::Float(-f),
            _ => Value::Null,
        },
        Expr::IsNull(a, negated) => Value::Bool(eval(a, row)?.is_null() != *negated),
        Expr::Case(arms, other) => {
            for (c, r) in arms {
                if truth(eval(c, row)?)? == Some(true) {
                    return eval(r, row);
                }
            }
            eval(other, row)?
        }
        Expr::Cast(a, to) => cast(eval(a, row)?, *to)?,
        Expr::InList(a, list, negated) => {
            let v = eval(a, row)?;
            if v.is_null() {
                return Ok(Value::Null);
            }
            let mut null = false;
            for x in list {
                match binary(BinOp::Eq, v.clone(), eval(x, row)?)? {
                    Value::Bool(true) => return Ok(Value::Bool(!negated)),
                    Value::Null => null = true,
                    _ => {}
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
                let v = eval(a, row)?;
                if !v.is_null() {
                    return Ok(v);
                }
            }
            Value::Null
        }
        Expr::Call(f, args) => {
            let v = eval(&args[0], row)?;
            match (f, v) {
                (_, Value::Null) => Value::Null,
                (Func::Lower, Value::Text(s)) => Value::Text(s.to_lowercase()),
                (Func::Upper, Value::Text(s)) => Value::Text(s.to_uppercase()),
                (Func::Trim, Value::Text(s)) => Value::Text(s.trim().to_string()),
                (Func::Length, Value::Text(s)) => Value::Int(s.chars().count() as i64),
                (Func::Abs, Value::Int(i)) => Value::Int(i.checked_abs().ok_or("integer overflow")?),
                (Func::Abs, Value::Float(x)) => Value::Float(x.abs()),
                (Func::Round | Func::Floor | Func::Ceil, Value::Int(i)) => Value::Int(i),
                (Func::Round, Value::Float(x)) => Value::Float(x.round()),
                (Func::Floor, Value::Float(x)) => Value::Float(x.floor()),
                (Func::Ceil, Value::Float(x)) => Value::Float(x.ceil()),
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

fn binary(op: BinOp, a: Value, b: Value) -> Result<Value, String> {
    use BinOp::*;
    if a.is_null() || b.is_null() {
        return Ok(Value::Null);
    }
    Ok(match op {
        Add | Sub | Mul | Div | Mod => match (&a, &b) {
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
        Concat => match (a, b) {
            (Value::Text(x), Value::Text(y)) => Value::Text(x + &y),
            _ => return Err("|| needs text".into()),
        },
        _ => {
            let ord = match (&a, &b) {
                (Value::Int(_), Value::Float(_)) | (Value::Float(_), Value::Int(_)) => {
                    a.as_f64().expect("a number").total_cmp(&b.as_f64().expect("a number"))
                }
                _ => a.cmp(&b),
            };
            Value::Bool(match op {
                Eq => ord.is_eq(),
                NotEq => ord.is_ne(),
                Lt => ord.is_lt(),
                LtEq => ord.is_le(),
                Gt => ord.is_gt(),
                _ => ord.is_ge(),
            })
        }
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
            Value::Int(i) => i.to_string(),
            Value::Float(x) => x.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Timestamp(t) => t.to_string(),
            Value::Null => unreachable!("handled above"),
        }),
        (v @ Value::Int(_), Type::Int)
        | (v @ Value::Float(_), Type::Float)
        | (v @ Value::Bool(_), Type::Bool)
        | (v @ Value::Timestamp(_), Type::Timestamp) => v,
        (v, t) => return Err(format!("cannot cast {v} to {t}")),
    })
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
    // days from civil (Howard Hinnant's algorithm)
    let (y2, m2) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * m2 + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 24 + h) * 60 + mi) * 60_000 + sec * 1000 + ms)
}
