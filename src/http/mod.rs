//! The engine's HTTP server: an observer the commands attach (`--http ADDR`, or `[http]` in the
//! config), on the first process only; the other processes' rows reach it through the
//! dataflow ([`crate::runtime::Plan::observe_changes`]).
//!
//! - `GET /` — the dashboard (one page in the binary, charts drawn as SVG, no CDN)
//! - `GET /outputs` — every output: rows, last time it changed, changes/s
//! - `GET /outputs/NAME[?key=K]` — the current rows (all, or one key's) at the time it names
//! - `GET /outputs/NAME/subscribe` — Server-Sent Events: a `snapshot` at a closed time, then
//!   every later `change` (`{time, diff, row}`) in time order and a `progress` event as times
//!   close; a client that falls behind gets `dropped` and is cut off
//! - `GET /status` — the run's counters as JSON, for the dashboard's charts
//! - `GET /metrics` — Prometheus (OpenMetrics) text
//!
//! Requests are served on threads of their own (at most [`MAX_CLIENTS`] at once); nothing the
//! server does waits on the dataflow, and the dataflow never waits on a client.

pub mod metrics;
pub mod store;

use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::runtime::{ChangeSinks, Counters, Observer, Plan, Tick};
use crate::sinks::Sink;
use store::Store;

/// Requests served at once; more are answered 503.
pub const MAX_CLIENTS: usize = 64;

/// The default address of `--http` and `diffstream inspect`.
pub const DEFAULT_ADDR: &str = "127.0.0.1:9898";

const DASHBOARD: &str = include_str!("dashboard.html");

/// Where the server listens.
#[derive(Clone, Debug)]
pub struct HttpOptions {
    /// the address (`127.0.0.1:0` picks a free port)
    pub listen: String,
    /// allow an address other than loopback
    pub allow_remote: bool,
}

impl HttpOptions {
    /// The address to bind, refusing one beyond this machine unless asked explicitly.
    pub fn resolve(&self) -> anyhow::Result<SocketAddr> {
        let addr = self
            .listen
            .to_socket_addrs()
            .with_context(|| format!("--http {}: not an address to listen on; write host:port, e.g. {DEFAULT_ADDR}", self.listen))?
            .next()
            .with_context(|| format!("--http {}: the name resolves to no address", self.listen))?;
        if !addr.ip().is_loopback() && !self.allow_remote {
            bail!(
                "--http {}: that address is reachable from other machines, and the server has no authentication; \
                 bind loopback ({DEFAULT_ADDR}) and tunnel to it, or pass --http-allow-remote (`allow_remote = true` \
                 under [http]) to serve it anyway",
                self.listen
            );
        }
        Ok(addr)
    }
}

/// What the first worker reports to the server at each look-up from its work.
#[derive(Debug)]
pub struct Live {
    /// the first worker's logical time
    pub time: AtomicU64,
    /// each event-time SQL input's watermark
    pub input_watermarks: std::sync::Mutex<Vec<(String, i64)>>,
    /// the run's counters (this process's)
    pub counters: Arc<Counters>,
    /// when the run began
    pub started: Instant,
    /// the inputs the run reads
    pub inputs: Vec<dataflows::InputName>,
    /// the external sinks the run writes to: `kafka`, `mongodb`
    pub sinks: Vec<&'static str>,
    /// the Kafka inputs: (name, connection, input)
    pub kafka: Vec<(String, crate::config::kafka::KafkaConnection, crate::config::kafka::KafkaInput)>,
    /// their partitions' offsets as last asked, and when
    pub offsets: std::sync::Mutex<Option<(Instant, Vec<crate::sources::kafka::PartitionOffsets>)>>,
}

impl Live {
    /// Every event-time input's watermark.
    pub fn watermarks(&self) -> Vec<(String, i64)> {
        self.input_watermarks.lock().map(|w| w.clone()).unwrap_or_default()
    }

    /// Every Kafka input partition's offsets, asked of the brokers at most every 5 s (the
    /// whole cluster's partitions: the group's commits are).
    pub fn kafka_offsets(&self) -> Vec<crate::sources::kafka::PartitionOffsets> {
        if self.kafka.is_empty() {
            return Vec::new();
        }
        let mut cached = self.offsets.lock().unwrap_or_else(|e| e.into_inner());
        if cached.as_ref().is_none_or(|(at, _)| at.elapsed() >= Duration::from_secs(5)) {
            let inputs = self.kafka.iter().map(|(n, c, k)| (n.as_str(), c, k));
            match crate::sources::kafka::partition_offsets(inputs) {
                Ok(o) => *cached = Some((Instant::now(), o)),
                Err(e) => tracing::warn!("reading the Kafka inputs' offsets for /metrics: {e:#}"),
            }
        }
        cached.as_ref().map(|(_, o)| o.clone()).unwrap_or_default()
    }
}

/// The observer that feeds the server: it keeps the [`Store`] (through [`Observer::changes`])
/// and the [`Live`] figures, and hands every tick on to the observer it wraps (the status line).
pub struct HttpObserver {
    store: Arc<Store>,
    live: Arc<Live>,
    inner: Option<Box<dyn Observer>>,
}

impl Observer for HttpObserver {
    fn tick(&mut self, tick: &Tick<'_>) {
        self.live.time.store(tick.time, Ordering::Relaxed);
        if let Ok(mut w) = self.live.input_watermarks.try_lock() {
            w.clear();
            w.extend(tick.input_watermarks.iter().filter_map(|(i, c)| Some((i.to_string(), c.get()?))));
        }
        if let Some(o) = &mut self.inner {
            o.tick(tick);
        }
    }
    fn change_sinks(&self) -> Option<ChangeSinks> {
        let store = self.store.clone();
        Some(Arc::new(move |i| Box::new(store.sink(i)) as Box<dyn Sink>))
    }
}

impl HttpObserver {
    /// The store it keeps.
    pub fn store(&self) -> Arc<Store> {
        self.store.clone()
    }
}

/// A running server.
pub struct Server {
    /// where it listens
    pub addr: SocketAddr,
    /// the observer to attach to the run
    pub observer: HttpObserver,
}

impl HttpObserver {
    /// The observer, also handing every tick to `inner`.
    pub fn wrapping(mut self, inner: Option<Box<dyn Observer>>) -> Self {
        self.inner = inner;
        self
    }
}

/// Starts the server at `options` for a run of `plan` that counts into `counters`.
pub fn start(options: &HttpOptions, plan: &Plan, counters: Arc<Counters>) -> anyhow::Result<Server> {
    let addr = options.resolve()?;
    let server = tiny_http::Server::http(addr).map_err(|e| anyhow::anyhow!("--http {addr}: cannot listen there: {e}"))?;
    let addr = server.server_addr().to_ip().context("the HTTP server listens on an IP address")?;
    let store = Arc::new(Store::new(&plan.outputs(), plan.cluster.workers));
    let sinks = [("kafka", plan.kafka_output.is_some()), ("mongodb", plan.mongodb_output.is_some())];
    let live = Arc::new(Live {
        time: AtomicU64::new(0),
        input_watermarks: std::sync::Mutex::default(),
        counters,
        started: Instant::now(),
        inputs: plan.inputs.keys().copied().filter(|i| plan.needs(*i)).collect(),
        sinks: sinks.into_iter().filter(|(_, on)| *on).map(|(s, _)| s).collect(),
        kafka: plan
            .inputs
            .iter()
            .filter(|(i, _)| plan.needs(**i))
            .filter_map(|(i, spec)| match &spec.source {
                crate::sources::SourceSpec::Kafka(k) => Some((i.to_string(), k.0.clone(), k.1.clone())),
                _ => None,
            })
            .collect(),
        offsets: std::sync::Mutex::new(None),
    });
    let (s, l) = (store.clone(), live.clone());
    std::thread::Builder::new().name("http".into()).spawn(move || serve(server, s, l)).context("starting the HTTP thread")?;
    Ok(Server { addr, observer: HttpObserver { store, live, inner: None } })
}

fn serve(server: tiny_http::Server, store: Arc<Store>, live: Arc<Live>) {
    let busy = Arc::new(AtomicUsize::new(0));
    for request in server.incoming_requests() {
        if busy.load(Ordering::Relaxed) >= MAX_CLIENTS {
            let _ = request.respond(json_response(503, error_json("too many clients at once; try again")));
            continue;
        }
        busy.fetch_add(1, Ordering::Relaxed);
        let (store, live, busy) = (store.clone(), live.clone(), busy.clone());
        let spawned = std::thread::Builder::new().name("http-client".into()).spawn(move || {
            handle(request, &store, &live);
            busy.fetch_sub(1, Ordering::Relaxed);
        });
        if let Err(e) = spawned {
            tracing::warn!("the HTTP server could not start a thread for a request: {e}");
        }
    }
}

type Response = tiny_http::Response<std::io::Cursor<Vec<u8>>>;

fn header(name: &str, value: &str) -> tiny_http::Header {
    tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("a valid header")
}

fn response(status: u16, content_type: &str, body: String) -> Response {
    tiny_http::Response::from_string(body)
        .with_status_code(status)
        .with_header(header("Content-Type", content_type))
        .with_header(header("Cache-Control", "no-store"))
}

fn json_response(status: u16, body: String) -> Response {
    response(status, "application/json", body)
}

fn error_json(message: &str) -> String {
    serde_json::json!({ "error": message }).to_string()
}

fn handle(request: tiny_http::Request, store: &Store, live: &Live) {
    if request.method() != &tiny_http::Method::Get {
        let _ = request.respond(json_response(405, error_json("only GET is served")));
        return;
    }
    let url = request.url().to_string();
    let (path, query) = url.split_once('?').unwrap_or((&url, ""));
    let param = |name: &str| {
        query.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == name).then(|| percent_encoding::percent_decode_str(&v.replace('+', " ")).decode_utf8_lossy().into_owned())
        })
    };
    let segments: Vec<&str> = path.trim_matches('/').split('/').filter(|s| !s.is_empty()).collect();
    let reply = match segments.as_slice() {
        [] => response(200, "text/html; charset=utf-8", DASHBOARD.to_string()),
        ["outputs"] => json_response(200, outputs_json(store)),
        ["outputs", name] => match rows_json(store, name, param("key").as_deref()) {
            Ok(body) => json_response(200, body),
            Err(e) => json_response(404, error_json(&e)),
        },
        ["outputs", name, "subscribe"] => return subscribe(request, store, name, param("key").as_deref()),
        ["status"] => json_response(200, status_json(store, live)),
        ["metrics"] => response(200, "application/openmetrics-text; version=1.0.0; charset=utf-8", metrics::encode_text(store, live)),
        _ => json_response(
            404,
            error_json("not found; the server has /, /outputs, /outputs/NAME[?key=K], /outputs/NAME/subscribe, /status and /metrics"),
        ),
    };
    let _ = request.respond(reply);
}

fn unknown(name: &str, store: &Store) -> String {
    let names: Vec<String> = store.outputs().iter().map(|o| o.to_string()).collect();
    format!("no output `{name}` in this run; it has {}", names.join(", "))
}

fn outputs_json(store: &Store) -> String {
    let (time, summary) = store.summary();
    let outputs: Vec<serde_json::Value> = summary
        .iter()
        .map(|o| {
            serde_json::json!({
                "name": o.output.as_str(),
                "rows": o.rows,
                "append_only": o.append_only,
                "changes": o.changes,
                "last_time": o.last_time,
                "changes_per_sec": (o.changes_per_sec * 10.0).round() / 10.0,
            })
        })
        .collect();
    serde_json::json!({ "time": time, "done": store.finished.load(Ordering::Relaxed), "outputs": outputs }).to_string()
}

/// The output called `name` and a `?key=` as its key's JSON spellings.
fn find(store: &Store, name: &str, key: Option<&str>) -> Result<(usize, Option<Vec<String>>), String> {
    let i = store.outputs().iter().position(|o| o.as_str() == name).ok_or_else(|| unknown(name, store))?;
    let key = key.map(|k| key_spellings(k, &crate::codec::key_fields(store.outputs()[i]))).transpose()?;
    Ok((i, key))
}

/// The rows of `name` (only `key`'s, with one) at the last closed time.
fn rows_json(store: &Store, name: &str, key: Option<&str>) -> Result<String, String> {
    let (i, key) = find(store, name, key)?;
    let (time, count, rows) = store.rows(i, key.as_deref());
    Ok(store::snapshot_json(store.outputs()[i], time, count, rows))
}

/// A `?key=` as the key JSON it may stand for, fields in the output's order: a JSON object of
/// the key `fields`, or for a one-field key just the value — `42` may be the number or the
/// text, `alice` is the text.
fn key_spellings(given: &str, fields: &[String]) -> Result<Vec<String>, String> {
    let object = |pairs: Vec<(String, serde_json::Value)>| serde_json::Value::Object(pairs.into_iter().collect()).to_string();
    match serde_json::from_str::<serde_json::Value>(given) {
        Ok(serde_json::Value::Object(m)) => {
            let pairs = fields
                .iter()
                .map(|f| m.get(f).map(|v| (f.clone(), v.clone())).ok_or_else(|| format!("?key={given}: the key field `{f}` is missing")))
                .collect::<Result<Vec<_>, String>>()?;
            Ok(vec![object(pairs)])
        }
        parsed if fields.len() == 1 => {
            let f = &fields[0];
            let mut out = vec![object(vec![(f.clone(), serde_json::Value::String(given.to_string()))])];
            if let Ok(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) = parsed {
                out.push(object(vec![(f.clone(), v)]));
            }
            Ok(out)
        }
        _ => Err(format!(
            "?key={given}: this output's key has the fields {}; give them as a JSON object, e.g. ?key={{\"{}\":…}}",
            fields.join(", "),
            fields.join("\":…,\"")
        )),
    }
}

fn status_json(store: &Store, live: &Live) -> String {
    let counts = live.counters.snapshot();
    let inputs: serde_json::Map<String, serde_json::Value> =
        live.inputs.iter().map(|i| (i.to_string(), counts[i.index()].into())).collect();
    let watermarks = live.watermarks();
    serde_json::json!({
        "uptime_secs": live.started.elapsed().as_secs_f64(),
        "time": live.time.load(Ordering::Relaxed),
        "closed": store.time(),
        "done": store.finished.load(Ordering::Relaxed),
        // the least of them: the event time every input's outputs are final up to
        "watermark": watermarks.iter().map(|(_, w)| *w).min().map(crate::codec::format_time),
        "watermarks": watermarks.into_iter().map(|(i, w)| (i, crate::codec::format_time(w).into())).collect::<serde_json::Map<String, serde_json::Value>>(),
        "records_in": inputs,
        "decode_errors": live.counters.decode_errors.load(Ordering::Relaxed),
        "dead_letters": store.dead_letters(),
        "resident_bytes": metrics::resident_bytes(),
    })
    .to_string()
}

/// Serves `GET /outputs/NAME/subscribe` on this thread until the client leaves, is dropped, or
/// the run ends.
fn subscribe(request: tiny_http::Request, store: &Store, name: &str, key: Option<&str>) {
    let sub = match find(store, name, key) {
        Ok((i, key)) => store.subscribe(i, key),
        Err(e) => {
            let _ = request.respond(json_response(404, error_json(&e)));
            return;
        }
    };
    let mut w = request.into_writer();
    let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n";
    let mut ok = w.write_all(head.as_bytes()).and_then(|_| w.flush()).is_ok();
    let mut quiet_since = Instant::now();
    while ok {
        match store.next_events(&sub, Duration::from_millis(50)) {
            Some(events) if events.is_empty() => {
                if quiet_since.elapsed() >= Duration::from_secs(15) {
                    ok = w.write_all(b": keep-alive\n\n").and_then(|_| w.flush()).is_ok();
                    quiet_since = Instant::now();
                }
            }
            Some(events) => {
                ok = events.iter().try_for_each(|e| w.write_all(e.as_bytes())).and_then(|_| w.flush()).is_ok();
                quiet_since = Instant::now();
            }
            None => break,
        }
    }
    store.unsubscribe(&sub);
}
