//! Dataflows written as SQL views, compiled to differential operators.
//!
//! `CREATE VIEW name AS SELECT …;` statements are parsed by the `sqlparser` crate
//! ([`plan::compile`]), their names resolved and types checked against a [`plan::Catalog`] of
//! inputs and earlier views, and planned as a tree of operators ([`plan::Plan`]): filters and
//! maps on the worker that holds a row, reduces (GROUP BY with COUNT, COUNT(DISTINCT), SUM,
//! MIN, MAX, AVG; HAVING) in hash maps exchanged by key ([`reduce`]), equi-joins (inner and
//! left), TUMBLE and HOP windows, UNION ALL, subqueries in FROM, views over views.
//! [`render::render`] builds the operators. A row whose expression fails is an error of its
//! view, not of the run. A windowed reduce over an input's event time drops each window once
//! the input's watermark passes its end ([`crate::watermark`]).

pub mod compiled;
pub mod eval;
pub mod exact;
pub mod join;
pub mod keep;
pub mod plan;
pub mod reduce;
pub mod registry;
pub mod render;
pub mod value;

pub use plan::{compile, view_names, Catalog, Column, SqlError, View};
pub use value::{SqlRow, Type, Value};
