//! Expressions compiled once, when a view's operators are built, into closures: a row's
//! condition or value is then a few calls, not a walk of the expression's tree per row.
//!
//! The commonest forms get closures of their own — a column, a constant, AND, OR, NOT, IS NULL,
//! CASE, and a comparison of a column with a constant or another column (a float with a float
//! and a text's equality compared directly) — and every other expression is evaluated by
//! [`super::eval`] as it stands. The results are the interpreter's, NULLs and errors
//! included (both sides of AND and OR are evaluated, the left first); the unit tests below
//! check the two against each other.

use std::cmp::Ordering;

use super::eval::{compare, eval_expr, three_valued, truth, Columns, Joined};
use super::plan::{BinOp, Expr};
use super::value::{SqlRow, Value};

type Cond = Box<dyn Fn(&Joined<'_>) -> Result<Option<bool>, String>>;
type Calc = Box<dyn Fn(&Joined<'_>) -> Result<Value, String>>;

/// A condition (a filter's predicate), compiled.
pub struct Predicate(Cond);

impl Predicate {
    /// Compiles `e`.
    pub fn new(e: &Expr) -> Predicate {
        Predicate(cond(e))
    }

    /// Whether it holds on `row` (`None`: it is NULL), as [`super::eval::holds`] says.
    #[inline]
    pub fn holds(&self, row: &[Value]) -> Result<Option<bool>, String> {
        (self.0)(&Joined { left: row, right: None })
    }

    /// Whether it holds on `left ++ right` (`None`: NULLs), without building that row, as
    /// [`super::eval::holds_joined`] says.
    #[inline]
    pub fn holds_joined(&self, left: &[Value], right: Option<&[Value]>) -> Result<Option<bool>, String> {
        (self.0)(&Joined { left, right })
    }
}

/// An expression (a projection's column, a group key, an aggregate's argument), compiled.
pub struct Compiled(Calc, Expr);

impl Compiled {
    /// Compiles `e`.
    pub fn new(e: &Expr) -> Compiled {
        Compiled(calc(e), e.clone())
    }

    /// The expression.
    pub fn expr(&self) -> &Expr {
        &self.1
    }

    /// Its value on `row`, as [`super::eval::eval`] gives it.
    #[inline]
    pub fn eval(&self, row: &[Value]) -> Result<Value, String> {
        (self.0)(&Joined { left: row, right: None })
    }

    /// Its value on `row`, onto the end of `out`.
    #[inline]
    pub fn eval_onto(&self, row: &[Value], out: &mut SqlRow) -> Result<(), String> {
        out.push(self.eval(row)?);
        Ok(())
    }
}

fn is(op: BinOp, o: Ordering) -> bool {
    match op {
        BinOp::Eq => o.is_eq(),
        BinOp::NotEq => o.is_ne(),
        BinOp::Lt => o.is_lt(),
        BinOp::LtEq => o.is_le(),
        BinOp::Gt => o.is_gt(),
        _ => o.is_ge(),
    }
}

fn cond(e: &Expr) -> Cond {
    use BinOp::*;
    match e {
        Expr::Binary(op @ (And | Or), a, b) => {
            let (a, b, and) = (cond(a), cond(b), *op == And);
            Box::new(move |r| Ok(three_valued(and, a(r)?, b(r)?)))
        }
        Expr::Binary(op @ (Eq | NotEq | Lt | LtEq | Gt | GtEq), a, b) => comparison(*op, a, b),
        Expr::Not(a) => {
            let a = cond(a);
            Box::new(move |r| Ok(a(r)?.map(|b| !b)))
        }
        Expr::IsNull(a, negated) => {
            let negated = *negated;
            match &**a {
                Expr::Column(c) => {
                    let c = *c;
                    Box::new(move |r| Ok(Some(r.column(c).is_null() != negated)))
                }
                a => {
                    let a = calc(a);
                    Box::new(move |r| Ok(Some(a(r)?.is_null() != negated)))
                }
            }
        }
        e => {
            let v = calc(e);
            Box::new(move |r| truth(v(r)?))
        }
    }
}

/// A comparison; a column's value is read where the row holds it.
fn comparison(op: BinOp, a: &Expr, b: &Expr) -> Cond {
    match (a, b) {
        (Expr::Column(c), Expr::Literal(Value::Float(y))) => {
            let (c, y, lit) = (*c, *y, Value::Float(*y));
            Box::new(move |r| {
                Ok(match r.column(c) {
                    Value::Float(x) => Some(is(op, x.total_cmp(&y))),
                    v => compare(op, v, &lit),
                })
            })
        }
        (Expr::Column(c), Expr::Literal(lit @ Value::Text(s))) if matches!(op, BinOp::Eq | BinOp::NotEq) => {
            let (c, s, lit, eq) = (*c, s.clone(), lit.clone(), op == BinOp::Eq);
            Box::new(move |r| {
                Ok(match r.column(c) {
                    Value::Text(x) => Some((x.as_str() == s.as_str()) == eq),
                    v => compare(op, v, &lit),
                })
            })
        }
        (Expr::Column(c), Expr::Literal(lit)) => {
            let (c, lit) = (*c, lit.clone());
            Box::new(move |r| Ok(compare(op, r.column(c), &lit)))
        }
        (Expr::Literal(lit), Expr::Column(c)) => {
            let (c, lit) = (*c, lit.clone());
            Box::new(move |r| Ok(compare(op, &lit, r.column(c))))
        }
        (Expr::Column(c), Expr::Column(d)) => {
            let (c, d) = (*c, *d);
            Box::new(move |r| {
                Ok(match (r.column(c), r.column(d)) {
                    (Value::Float(x), Value::Float(y)) => Some(is(op, x.total_cmp(y))),
                    (x, y) => compare(op, x, y),
                })
            })
        }
        (a, b) => {
            let (a, b) = (calc(a), calc(b));
            Box::new(move |r| {
                let x = a(r)?;
                Ok(compare(op, &x, &b(r)?))
            })
        }
    }
}

fn calc(e: &Expr) -> Calc {
    use BinOp::*;
    match e {
        Expr::Column(c) => {
            let c = *c;
            Box::new(move |r| Ok(r.column(c).clone()))
        }
        Expr::Literal(v) => {
            let v = v.clone();
            Box::new(move |_| Ok(v.clone()))
        }
        Expr::Binary(And | Or | Eq | NotEq | Lt | LtEq | Gt | GtEq, ..) | Expr::Not(_) | Expr::IsNull(..) => {
            let c = cond(e);
            Box::new(move |r| Ok(c(r)?.map_or(Value::Null, Value::Bool)))
        }
        Expr::Case(arms, other) => {
            let arms: Vec<(Cond, Calc)> = arms.iter().map(|(c, v)| (cond(c), calc(v))).collect();
            let other = calc(other);
            Box::new(move |r| {
                for (c, v) in &arms {
                    if c(r)? == Some(true) {
                        return v(r);
                    }
                }
                other(r)
            })
        }
        e => {
            let e = e.clone();
            Box::new(move |r| eval_expr(&e, r))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::eval::{eval, holds, holds_joined};
    use super::super::plan::{BinOp, Expr};
    use super::super::value::Value;
    use super::{Compiled, Predicate};

    fn values() -> Vec<Value> {
        vec![
            Value::Null,
            Value::Bool(true),
            Value::Bool(false),
            Value::Int(-3),
            Value::Int(2),
            Value::Float(2.0),
            Value::Float(-0.5),
            Value::Float(f64::NAN),
            Value::Text("anomaly".into()),
            Value::Text("a somewhat longer text, not held inline".into()),
            Value::Timestamp(60_000),
        ]
    }

    /// Expressions of every form the compiler handles itself, over columns 0 and 1 and
    /// constants, and some it leaves to the interpreter.
    fn exprs() -> Vec<Expr> {
        use BinOp::*;
        let b = Box::new;
        let mut operands = vec![Expr::Column(0), Expr::Column(1)];
        operands.extend(values().into_iter().map(Expr::Literal));
        let mut out = Vec::new();
        for op in [Eq, NotEq, Lt, LtEq, Gt, GtEq] {
            for x in &operands {
                for y in &operands {
                    out.push(Expr::Binary(op, b(x.clone()), b(y.clone())));
                }
            }
            // an operand the interpreter evaluates
            out.push(Expr::Binary(op, b(Expr::Binary(Add, b(Expr::Column(0)), b(Expr::Literal(Value::Int(1))))), b(Expr::Column(1))));
        }
        let comparisons = out.clone();
        for (i, x) in comparisons.iter().enumerate().step_by(7) {
            let y = &comparisons[(i * 31 + 5) % comparisons.len()];
            out.push(Expr::Binary(And, b(x.clone()), b(y.clone())));
            out.push(Expr::Binary(Or, b(x.clone()), b(y.clone())));
            out.push(Expr::Not(b(x.clone())));
            out.push(Expr::Case(vec![(x.clone(), Expr::Column(0)), (y.clone(), Expr::Literal(Value::Int(7)))], b(Expr::Column(1))));
        }
        for x in &operands {
            out.push(Expr::IsNull(b(x.clone()), false));
            out.push(Expr::IsNull(b(x.clone()), true));
            out.push(x.clone());
            // a value that is not a bool as a condition: an error
            out.push(Expr::Binary(And, b(x.clone()), b(Expr::Literal(Value::Bool(true)))));
        }
        out.push(Expr::Binary(Div, b(Expr::Column(0)), b(Expr::Literal(Value::Int(0)))));
        out
    }

    #[test]
    fn compiled_expressions_agree_with_the_interpreter() {
        let values = values();
        let exprs = exprs();
        let mut checked = 0;
        for x in &values {
            for y in &values {
                let row = [x.clone(), y.clone()];
                for e in &exprs {
                    let (p, c) = (Predicate::new(e), Compiled::new(e));
                    assert_eq!(p.holds(&row), holds(e, &row), "{e:?} on {row:?}");
                    let (want, got) = (eval(e, &row), c.eval(&row));
                    // (NaN is not equal to itself: compare what prints)
                    assert_eq!(format!("{got:?}"), format!("{want:?}"), "{e:?} on {row:?}");
                    // the same columns split between a row and what a join found for it
                    let (left, right) = row.split_at(1);
                    assert_eq!(p.holds_joined(left, Some(right)), holds_joined(e, left, Some(right)), "{e:?} on {row:?}");
                    assert_eq!(p.holds_joined(left, None), holds_joined(e, left, None), "{e:?} on {left:?} and NULLs");
                    checked += 1;
                }
            }
        }
        assert!(checked > 100_000, "{checked}");
    }
}
