//! The process's SQL inputs (tables) and views, by number: [`crate::InputName`] and
//! [`crate::Output::View`] carry only the number, so that they stay `Copy` and small. Every
//! process of a cluster registers the same config in the same order, so numbers agree.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

use super::value::Type;

/// A registered view: what its rows are.
#[derive(Clone, Debug)]
pub struct ViewInfo {
    /// its name
    pub name: &'static str,
    /// its columns, in order
    pub columns: Vec<(&'static str, Type)>,
    /// the columns that key its rows
    pub key: Vec<usize>,
    /// each column's name as a JSON object's key, escaped once here (`"name":`): every output
    /// row writes them
    pub json_names: Vec<String>,
}

#[derive(Default)]
struct Registry {
    tables: Vec<&'static str>,
    views: Vec<ViewInfo>,
}

static REGISTRY: RwLock<Registry> = RwLock::new(Registry { tables: Vec::new(), views: Vec::new() });

/// Bumped by every change of the views, after it is made: a thread's copy of them
/// ([`with_view`]) is current while this has not moved.
static GENERATION: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// This thread's copy of the views and the generation it was taken at: every row's key
    /// hash reads its view, and a shared lock's counter, written by every worker at every
    /// row, was 8% of a run.
    static VIEWS: RefCell<(u64, Rc<Vec<ViewInfo>>)> = RefCell::new((u64::MAX, Rc::default()));
}

fn leak(s: &str) -> &'static str {
    Box::leak(s.to_string().into_boxed_str())
}

/// How many tables or views a process may have.
pub const MAX: usize = 64;

/// The number of table `name`, registering it once.
pub fn table(name: &str) -> u8 {
    let mut r = REGISTRY.write().unwrap_or_else(|p| p.into_inner());
    if let Some(i) = r.tables.iter().position(|t| *t == name) {
        return i as u8;
    }
    assert!(r.tables.len() < MAX, "more than {MAX} SQL inputs");
    r.tables.push(leak(name));
    (r.tables.len() - 1) as u8
}

/// Table `i`'s name.
pub fn table_name(i: u8) -> &'static str {
    REGISTRY.read().unwrap_or_else(|p| p.into_inner()).tables.get(i as usize).copied().unwrap_or("?")
}

/// The registered table of this name.
pub fn find_table(name: &str) -> Option<u8> {
    REGISTRY.read().unwrap_or_else(|p| p.into_inner()).tables.iter().position(|t| *t == name).map(|i| i as u8)
}

/// The number of view `name` with these columns and key, registering it once (a view
/// registered again replaces its columns: the same config compiles the same).
pub fn view(name: &str, columns: &[(String, Type)], key: &[usize]) -> u8 {
    let mut r = REGISTRY.write().unwrap_or_else(|p| p.into_inner());
    let json_name = |n: &str| {
        let mut s = String::new();
        crate::output::json_string(&mut s, n);
        s + ":"
    };
    let info = ViewInfo {
        name: leak(name),
        columns: columns.iter().map(|(n, t)| (leak(n), *t)).collect(),
        key: key.to_vec(),
        json_names: columns.iter().map(|(n, _)| json_name(n)).collect(),
    };
    let i = match r.views.iter().position(|v| v.name == name) {
        Some(i) => {
            r.views[i] = info;
            i
        }
        None => {
            assert!(r.views.len() < MAX, "more than {MAX} SQL views");
            r.views.push(info);
            r.views.len() - 1
        }
    };
    GENERATION.fetch_add(1, Ordering::Release);
    i as u8
}

/// View `i`'s name.
pub fn view_name(i: u8) -> &'static str {
    REGISTRY.read().unwrap_or_else(|p| p.into_inner()).views.get(i as usize).map_or("?", |v| v.name)
}

/// The registered view of this name.
pub fn find_view(name: &str) -> Option<u8> {
    REGISTRY.read().unwrap_or_else(|p| p.into_inner()).views.iter().position(|v| v.name == name).map(|i| i as u8)
}

/// The views whose rows are only ever inserted (a bit per view number).
static APPEND_ONLY: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Marks view `i` as append-only (its plan never retracts a row) or not.
pub fn set_append_only(i: u8, yes: bool) {
    let bit = 1u64 << i;
    if yes {
        APPEND_ONLY.fetch_or(bit, std::sync::atomic::Ordering::Relaxed);
    } else {
        APPEND_ONLY.fetch_and(!bit, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Whether view `i` is append-only.
pub fn append_only(i: u8) -> bool {
    APPEND_ONLY.load(std::sync::atomic::Ordering::Relaxed) & (1u64 << i) != 0
}

/// Calls `f` with view `i`.
pub fn with_view<R>(i: u8, f: impl FnOnce(&ViewInfo) -> R) -> R {
    let generation = GENERATION.load(Ordering::Acquire);
    let views = VIEWS.with(|copy| {
        let mut copy = copy.borrow_mut();
        if copy.0 != generation {
            let views = REGISTRY.read().unwrap_or_else(|p| p.into_inner()).views.clone();
            *copy = (generation, Rc::new(views));
        }
        copy.1.clone()
    });
    f(&views[i as usize])
}
