//! The generators of the users' own pipelines (`dataflows/transactions.sql`, `sales.sql`,
//! `applications.sql`): records shaped like what the Spark + Kafka lab, the Spark–Kafka
//! integration guide and the Quix Streams example produce, with skewed keys and a few bad
//! records (about 0.5%: a cut-off line, a value of the wrong type, a missing field) that the
//! engine must turn into dead letters. Like the others, record `i` is a function of `(seed, i)`.
//!
//! Event time advances 100 ms per record from 2026-01-01T00:00:00Z; a fifth of the records are
//! up to 3 s out of order and one in a thousand 90–150 s late (beyond the shipped configs' 30 s
//! of allowed lateness: dead letters with reason `late`).

use super::{Rng, EPOCH_MS};
use crate::codec::format_time;

const CITIES: [&str; 10] = ["New York", "London", "Paris", "Berlin", "Tokyo", "Sydney", "Toronto", "Madrid", "Dublin", "Singapore"];
const TX_CATEGORIES: [&str; 8] = ["groceries", "electronics", "travel", "dining", "fuel", "fashion", "health", "entertainment"];
const TX_TYPES: [(&str, u64); 4] = [("purchase", 70), ("refund", 10), ("transfer", 10), ("withdrawal", 10)];
const CURRENCIES: [(&str, u64); 3] = [("USD", 60), ("EUR", 25), ("GBP", 15)];
const STATUSES: [(&str, u64); 3] = [("success", 90), ("failed", 7), ("pending", 3)];

const REGIONS: [&str; 5] = ["north", "south", "east", "west", "central"];
/// Products and their category and unit price.
const PRODUCTS: [(&str, &str, f64); 12] = [
    ("laptop", "electronics", 899.0),
    ("phone", "electronics", 599.0),
    ("headphones", "electronics", 79.5),
    ("monitor", "electronics", 229.0),
    ("desk", "furniture", 249.0),
    ("chair", "furniture", 129.0),
    ("lamp", "furniture", 35.25),
    ("coffee", "grocery", 7.5),
    ("tea", "grocery", 4.25),
    ("book", "media", 15.0),
    ("game", "media", 59.0),
    ("shoes", "apparel", 89.0),
];

const APPLICANTS: [&str; 8] = ["Ada", "Bo", "Cy", "Dee", "Eve", "Finn", "Gus", "Hal"];
const SUBJECTS: [&str; 3] = ["order", "reorder", "urgent order"];
const ITEMS: [&str; 6] = ["widget", "gadget", "sprocket", "gizmo", "bolt", "flange"];

fn pick<'a>(weights: &[(&'a str, u64)], rng: &mut Rng) -> &'a str {
    let total: u64 = weights.iter().map(|(_, w)| w).sum();
    let mut n = rng.below(total);
    for (name, w) in weights {
        if n < *w {
            return name;
        }
        n -= w;
    }
    weights[0].0
}

/// A key in `1..=n` skewed towards low values (a few heavy users, products, merchants).
fn skewed(n: u64, rng: &mut Rng) -> u64 {
    let u = rng.unit();
    1 + ((u * u * n as f64) as u64).min(n - 1)
}

/// Event time of record `i`: 100 ms apart, some out of order, a few late.
fn event_time(i: u64, rng: &mut Rng) -> i64 {
    let delay = match rng.below(1000) {
        0 => 90_000 + rng.below(60_000) as i64,
        d if d < 200 => rng.below(3_000) as i64,
        _ => 0,
    };
    EPOCH_MS + i as i64 * 100 - delay
}

/// The three spellings of a time the engine accepts: RFC 3339 with milliseconds, the same
/// at another UTC offset, and `YYYY-MM-DD HH:MM:SS` (whole seconds, UTC).
fn spell_time(ms: i64, rng: &mut Rng) -> String {
    match rng.below(3) {
        0 => format_time(ms),
        1 => chrono::DateTime::from_timestamp_millis(ms)
            .expect("in range")
            .with_timezone(&chrono::FixedOffset::east_opt(3600).expect("valid"))
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, false),
        _ => {
            let secs = ms.div_euclid(1000) * 1000;
            chrono::DateTime::from_timestamp_millis(secs).expect("in range").format("%Y-%m-%d %H:%M:%S").to_string()
        }
    }
}

/// Money with two decimals, log-normally spread around `median`.
fn money(median: f64, rng: &mut Rng) -> f64 {
    // the sum of three uniforms is roughly normal; exp of it, roughly log-normal
    let z = (rng.unit() + rng.unit() + rng.unit() - 1.5) * 2.0;
    ((median * z.exp()) * 100.0).round() / 100.0
}

/// Now and then (one in 200) a bad record instead: cut off, `wrong_type`'s field holding its
/// value, or without the field `missing`.
fn spoil(line: String, rng: &mut Rng, wrong_type: (&str, &str), missing: &str) -> String {
    match rng.below(600) {
        0 => line[..line.len() / 2].to_string(),
        1 => {
            let (field, value) = wrong_type;
            let start = line.find(&format!("\"{field}\":")).expect("field present");
            let value_start = start + field.len() + 3;
            let end = line[value_start..].find([',', '}']).map_or(line.len(), |e| value_start + e);
            format!("{}{value}{}", &line[..value_start], &line[end..])
        }
        2 => {
            let start = line.find(&format!("\"{missing}\":")).expect("field present");
            match line[start..].find(',') {
                Some(e) => format!("{}{}", &line[..start], &line[start + e + 1..]),
                // the last field: its comma goes too
                None => format!("{}}}", &line[..line[..start].rfind(',').unwrap_or(start)]),
            }
        }
        _ => line,
    }
}

/// A card transaction.
pub(super) fn transaction(i: u64, users: u64, rng: &mut Rng) -> String {
    let user = skewed(users.max(1), rng);
    let ty = pick(&TX_TYPES, rng);
    let currency = pick(&CURRENCIES, rng);
    let status = pick(&STATUSES, rng);
    let amount = money(60.0, rng).max(0.5);
    let location = CITIES[rng.below(CITIES.len() as u64) as usize];
    let merchant = skewed(200, rng);
    let category = TX_CATEGORIES[rng.below(TX_CATEGORIES.len() as u64) as usize];
    let u = rng.unit();
    let fraud = ((u * u * u) * 100.0).round() / 100.0;
    let ts = spell_time(event_time(i, rng), rng);
    let line = format!(
        r#"{{"transaction_id":"tx-{i:08}","user_id":{user},"amount":{amount},"type":"{ty}","timestamp":"{ts}","location":"{location}","currency":"{currency}","merchant_id":"m-{merchant:03}","status":"{status}","category":"{category}","fraud_score":{fraud}}}"#
    );
    spoil(line, rng, ("amount", "\"N/A\""), "currency")
}

/// A sale.
pub(super) fn sale(i: u64, users: u64, rng: &mut Rng) -> String {
    let region = REGIONS[skewed(REGIONS.len() as u64, rng) as usize - 1];
    let (product, category, price) = PRODUCTS[skewed(PRODUCTS.len() as u64, rng) as usize - 1];
    let quantity = skewed(5, rng) + u64::from(rng.below(10) == 0) * rng.below(10);
    let amount = ((price * quantity as f64) * 100.0).round() / 100.0;
    let customer = skewed(users.max(1), rng);
    let ts = spell_time(event_time(i, rng), rng);
    let line = format!(
        r#"{{"event_id":"ev-{i:08}","timestamp":"{ts}","region":"{region}","product":"{product}","category":"{category}","amount":{amount},"quantity":{quantity},"customer_id":"c-{customer:05}"}}"#
    );
    spoil(line, rng, ("quantity", "\"two\""), "region")
}

/// An order application: `content` is `"<product> <quantity>"`, or now and then not.
pub(super) fn application(i: u64, rng: &mut Rng) -> String {
    let name = APPLICANTS[rng.below(APPLICANTS.len() as u64) as usize];
    let subject = SUBJECTS[rng.below(SUBJECTS.len() as u64) as usize];
    let item = ITEMS[skewed(ITEMS.len() as u64, rng) as usize - 1];
    let content = match rng.below(100) {
        0 => format!("{item} many"),
        1 => item.to_string(),
        2 => format!("{item} 2.5"),
        _ => format!("{item} {}", 1 + rng.below(20)),
    };
    let line = format!(r#"{{"id":{},"name":"{name}","subject":"{subject}","content":"{content}"}}"#, i + 1);
    spoil(line, rng, ("id", "\"x\""), "content")
}
