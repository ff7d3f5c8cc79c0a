//! Resolve, then execute: turns parsed command lines and config files into a runtime
//! [`Plan`] and runs it, or runs `gen`.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use dataflows::InputName;

use crate::cli::{DemoArgs, GenArgs, RunArgs, TimelyArgs};
use crate::config::{builtin, Config, InputConfig};
use crate::http::HttpOptions;
use crate::runtime::{self, Cluster, Display, KafkaOutputPlan, Plan, Report};
use crate::sources::generator::GeneratorSpec;
use crate::sources::InputSpec;

/// The demo's configuration, compiled into the binary.
pub const DEMO_CONFIG: &str = include_str!("../configs/demo.toml");

fn cluster(args: &TimelyArgs, config_workers: usize) -> anyhow::Result<Cluster> {
    let hosts = match &args.hostfile {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read hostfile {} (-h); it lists one host:port per process", path.display()))?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(String::from)
            .collect(),
        None => Vec::new(),
    };
    if args.processes == 0 {
        bail!("-n must be at least 1");
    }
    if args.process >= args.processes {
        bail!("-p {} is not a process index for -n {}; use 0 to {}", args.process, args.processes, args.processes - 1);
    }
    let workers = args.workers.unwrap_or(config_workers);
    if workers == 0 {
        bail!("-w must be at least 1");
    }
    Ok(Cluster { workers, processes: args.processes, process: args.process, hosts })
}

/// The texts of the config's `views` files, each with its path.
fn view_files(config: &Config, config_path: Option<&std::path::Path>) -> anyhow::Result<Vec<(String, String)>> {
    let base = config_path.and_then(|p| p.parent()).unwrap_or(std::path::Path::new("."));
    let mut files = Vec::new();
    for path in &config.views {
        let path = base.join(path);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| anyhow::anyhow!("{}: cannot read it ({e}); fix `views` in the config", path.display()))?;
        files.push((path.display().to_string(), text));
    }
    Ok(files)
}

/// The views `names` select, compiled with every view they read: a shipped dataflow's name
/// (`user_event_counts`, …) that no `views` file defines is its views (`config::builtin`,
/// which also declares the columns of the inputs `users`, `clicks` and `sensors`), any other
/// name a view of the config's `views` files. Every input with `columns` is a table the views
/// may read. Errors name the file, line and column, or `source` (where the names come from).
fn resolve_views(
    config: &mut Config,
    config_path: Option<&std::path::Path>,
    names: &[String],
    source: &str,
) -> anyhow::Result<runtime::SqlPipeline> {
    let file = config_file(config_path);
    let files = view_files(config, config_path)?;
    let defined: Vec<String> = files.iter().flat_map(|(_, text)| dataflows::sql::view_names(text)).collect();
    for name in names.iter().filter(|n| builtin::DATAFLOWS.contains(&n.as_str()) && !defined.contains(n)) {
        if let Some(i) = builtin::inputs(name).iter().find(|i| !config.inputs.contains_key(**i)) {
            bail!("dataflow `{name}` reads input `{i}`, which is not bound; add --input {i}=FILE.jsonl, or an [inputs.{i}] table to the config");
        }
    }
    let expanded = builtin::expand(config, names, &defined, &file)?;
    let texts: Vec<(String, String)> = expanded.sql.into_iter().chain(files).collect();
    let mut sql = compile_sql(config, config_path, &texts)?.unwrap_or_default();
    let mut outputs = Vec::new();
    for name in &expanded.outputs {
        if !sql.views.iter().any(|v| &v.name == name) {
            let views: Vec<&str> = sql.views.iter().map(|v| v.name.as_str()).collect();
            let views = if views.is_empty() { String::new() } else { format!("; the views are {}", views.join(", ")) };
            bail!("{source}: unknown dataflow `{name}`; the dataflows are {}{views}", builtin::DATAFLOWS.join(", "));
        }
        outputs.push(name.parse::<dataflows::Output>().map_err(anyhow::Error::msg)?);
    }
    // (none: every view, for `explain`)
    if !outputs.is_empty() {
        sql.select(outputs);
    }
    Ok(sql)
}

/// The config's SQL inputs and the views of these texts (each with the name its errors give),
/// compiled in order; `outputs` is left empty for the caller.
fn compile_sql(
    config: &Config,
    config_path: Option<&std::path::Path>,
    files: &[(String, String)],
) -> anyhow::Result<Option<runtime::SqlPipeline>> {
    let mut catalog = dataflows::sql::Catalog::default();
    let mut tables = Vec::new();
    for (name, input) in config.inputs.iter().filter(|(_, i)| !i.columns().is_empty()) {
        let crate::config::Schema { columns, key, not_null, required } =
            input.schema().map_err(|(k, m)| anyhow::anyhow!("`inputs.{name}.{k}`: {m}"))?;
        let column = input.event_time_column(&columns).map_err(|(k, m)| anyhow::anyhow!("`inputs.{name}.{k}`: {m}"))?;
        let event_time = input.event_time().zip(column).map(|(e, column)| runtime::EventTime {
            column,
            allowed_lateness_ms: e.allowed_lateness.millis(),
            max_future_ms: e.max_future.millis(),
            slides: Vec::new(),
        });
        catalog.add_source(name, columns.clone());
        if !key.is_empty() {
            catalog.primary_key(name, &key);
        }
        tables.push(runtime::SqlTable {
            name: InputName(dataflows::sql::registry::table(name)),
            columns,
            key,
            event_time,
            not_null,
            required,
        });
    }
    if files.is_empty() {
        return Ok(None);
    }
    let mut views = Vec::new();
    for (path, text) in files {
        let mut compiled = dataflows::sql::compile(text, &mut catalog).map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
        for v in &mut compiled {
            if let Some(names) = config.keys.get(&v.name) {
                v.key = declared_key(v, names).map_err(|m| anyhow::anyhow!("{}: `keys.{}`: {m}", config_file(config_path), v.name))?;
            }
        }
        for v in &compiled {
            if v.name == dataflows::Output::DeadLetters.as_str() {
                bail!("{path}: the view `{}` has the name of the dead letters' output: name it otherwise", v.name);
            }
            let columns: Vec<(String, dataflows::sql::Type)> = v.columns.iter().map(|c| (c.name.clone(), c.ty)).collect();
            dataflows::sql::registry::view(&v.name, &columns, &v.key);
        }
        views.extend(compiled);
    }
    if let Some(name) = config.keys.keys().find(|k| !views.iter().any(|v| &v.name == *k)) {
        let names: Vec<&str> = views.iter().map(|v| v.name.as_str()).collect();
        bail!("{}: `keys.{name}`: there is no view `{name}`; the views are {}", config_file(config_path), names.join(", "));
    }
    let mut sql = runtime::SqlPipeline { tables, views, outputs: Vec::new() };
    sql.follow_windows();
    let shapes = sql.shapes();
    let append_only = dataflows::sql::render::append_only_views(&sql.views, &shapes);
    for v in &sql.views {
        let id = dataflows::sql::registry::find_view(&v.name).expect("registered above");
        dataflows::sql::registry::set_append_only(id, append_only.contains(&v.name));
    }
    Ok(Some(sql))
}

fn config_file(path: Option<&std::path::Path>) -> String {
    path.map_or_else(|| "(no config file)".to_string(), |p| p.display().to_string())
}

/// The columns of `v` that `names` (a config's `keys` entry) declare as its key.
fn declared_key(v: &dataflows::sql::View, names: &[String]) -> Result<Vec<usize>, String> {
    if names.is_empty() {
        return Err("name at least one column".into());
    }
    let columns: Vec<&str> = v.columns.iter().map(|c| c.name.as_str()).collect();
    names
        .iter()
        .map(|n| {
            let n = n.to_ascii_lowercase();
            columns.iter().position(|c| *c == n).ok_or_else(|| format!("`{n}` is not a column of `{}` ({})", v.name, columns.join(", ")))
        })
        .collect()
}

/// `diffstream explain`: the compiled views' plans.
pub fn explain(args: &crate::cli::ExplainArgs) -> anyhow::Result<()> {
    let mut config = Config::load(&args.config)?;
    let names = config.dataflows.clone();
    let sql = resolve_views(&mut config, Some(&args.config), &names, &format!("{}: `dataflows`", args.config.display()))?;
    if sql.views.is_empty() {
        bail!("{}: has no views to explain; add views = [\"my_views.sql\"], or name a dataflow in `dataflows`", args.config.display());
    }
    for name in &args.views {
        if !sql.views.iter().any(|v| &v.name == name) {
            let names: Vec<&str> = sql.views.iter().map(|v| v.name.as_str()).collect();
            bail!("there is no view `{name}`; the views are {}", names.join(", "));
        }
    }
    let mut out = std::io::stdout().lock();
    for t in &sql.tables {
        let Some(e) = &t.event_time else { continue };
        let rule = if e.slides.is_empty() {
            "a row whose event time is behind the watermark".to_string()
        } else {
            let slides: Vec<String> = e.slides.iter().map(|s| crate::config::Duration::from_millis(*s).to_string()).collect();
            format!("a row that could only land in windows (slides {}) the watermark has passed", slides.join(", "))
        };
        writeln!(
            out,
            "input {}: event time `{}`; watermark = greatest event time read − {}, the same on every worker; {rule} is a `late` dead letter, and one dated more than {} ahead of the clock a `future` one, before any view sees it\n",
            t.name.as_str(),
            t.columns[e.column].name,
            crate::config::Duration::from_millis(e.allowed_lateness_ms),
            crate::config::Duration::from_millis(e.max_future_ms),
        )?;
    }
    // What a checkpoint keeps of each input (runtime/checkpoint.rs, dataflows/src/sql/keep.rs).
    let forgettable = dataflows::sql::render::forgettable_inputs(&sql.views, &sql.shapes());
    for t in &sql.tables {
        let keeps = match forgettable.get(t.name.as_str()) {
            _ if !t.key.is_empty() => "each key's latest version".to_string(),
            Some(sizes) if sizes.is_empty() => {
                "its rows until the watermark passes them (only stateless views read it: none needs a row again)".to_string()
            }
            Some(sizes) => {
                let sizes: Vec<String> = sizes.iter().map(|s| crate::config::Duration::from_millis(*s).to_string()).collect();
                format!("its rows until the watermark passes the end of their tumbling window ({}): then they are final", sizes.join(", "))
            }
            None => "every distinct row with its count (a view reads it that may need any row again)".to_string(),
        };
        writeln!(out, "input {}: a checkpoint keeps {keeps}\n", t.name.as_str())?;
    }
    let notes = dataflows::sql::render::physical_notes(&sql.views, &sql.shapes());
    for v in sql.views.iter().filter(|v| args.views.is_empty() || args.views.contains(&v.name)) {
        let columns: Vec<String> = v.columns.iter().map(|c| format!("{} {}", c.name, c.ty)).collect();
        let key: Vec<&str> = v.key.iter().map(|&k| v.columns[k].name.as_str()).collect();
        writeln!(
            out,
            "view {} ({})\n  keyed by ({}); #i is the i-th column of an operator's input; only the operators that say so move rows between workers",
            v.name,
            columns.join(", "),
            key.join(", ")
        )?;
        for line in v.plan.to_string().lines() {
            writeln!(out, "  {line}")?;
        }
        for note in notes.get(&v.name).into_iter().flatten() {
            writeln!(out, "  · {note}")?;
        }
        writeln!(out)?;
    }
    Ok(())
}

/// Records per input that a logical time holds, by default, when the inputs are neither
/// streams nor rate-limited and a per-user dataflow runs. Each time changes about every key it
/// touches once (`-old +new` through the operators and sinks), so the cost of a time grows with
/// the keys, not the records: 200 000 clicks of 10 000 users ran 15% faster per click than
/// 100 000 (`bench`, 2 M clicks), and at 1 M users held 1.75× the plain loop's memory, against
/// 1.5× (300 000: 1.9×, too near the 2× the output-path issue allows).
pub const RECORDS_PER_TIME: u64 = 200_000;

/// A resolved command line: the plan the runtime executes, and the observers to attach.
pub struct Launch {
    /// what to run
    pub plan: Plan,
    /// serve HTTP (on the first process) while it runs
    pub http: Option<HttpOptions>,
    /// and this long after it ended
    pub linger: Option<Duration>,
}

/// Resolves `diffstream run` into a plan.
pub fn plan_run(args: &RunArgs) -> anyhow::Result<Launch> {
    let (mut config, file) = match &args.config {
        Some(path) => (Config::load(path)?, path.display().to_string()),
        None => (Config::default(), "(no config file)".to_string()),
    };
    let (names, source) = if args.dataflows.is_empty() {
        (config.dataflows.clone(), format!("{file}: `dataflows`"))
    } else {
        (args.dataflows.clone(), "command line".to_string())
    };
    if names.is_empty() {
        bail!(
            "name at least one dataflow, e.g. `diffstream run user_event_counts --input clicks=clicks.jsonl`, \
             or list them as `dataflows = [...]` in a --config file; the dataflows are {}, and the views of the config's `views` files",
            builtin::DATAFLOWS.join(", ")
        );
    }
    for binding in &args.inputs {
        let Some((name, path)) = binding.split_once('=') else {
            bail!("--input {binding}: write NAME=PATH, e.g. --input clicks=clicks.jsonl");
        };
        let file = InputConfig::File {
            path: PathBuf::from(path),
            rate: None,
            columns: Vec::new(),
            required: Vec::new(),
            event_time: None,
            primary_key: None,
            format: None,
        };
        let file = file.declared_as(config.inputs.get(name));
        config.inputs.insert(name.to_string(), file);
    }
    let sql = resolve_views(&mut config, args.config.as_deref(), &names, &source)?;
    let sql = Some(std::sync::Arc::new(sql));
    let mut inputs: BTreeMap<InputName, InputConfig> = BTreeMap::new();
    for (name, input) in &config.inputs {
        if input.columns().is_empty() {
            bail!("{file}: `inputs.{name}`: declare the records' `columns` for SQL views, e.g. columns = [\"id int\", \"name text\"]");
        }
        inputs.insert(InputName(dataflows::sql::registry::table(name)), input.clone());
    }
    let output_dir = args.output_dir.clone().or(config.output.dir.clone());
    let changes = args.changes || config.output.changes;
    if changes && output_dir.is_none() {
        bail!("--changes writes files into the output directory; add --output-dir DIR");
    }
    let batch_size = args.batch_size.unwrap_or(config.runtime.batch_size);
    if batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let specs: BTreeMap<InputName, InputSpec> = inputs.iter().map(|(n, c)| (*n, InputSpec::from_config(*n, c, &config.kafka))).collect();
    if args.batch_size.is_some() {
        for (name, _) in specs.iter().filter(|(_, s)| s.is_stream()) {
            tracing::warn!(
                input = name.as_str(),
                "--batch-size does not apply to Kafka inputs: set `max_records_per_batch` in [inputs.{name}] instead"
            );
        }
    }
    // Streams and rate-limited inputs show each batch as it comes. Other inputs are read as
    // fast as they go, and when a per-user output runs — each batch changes thousands of its
    // rows — larger logical times carry far fewer intermediate changes. Window metrics change a
    // few rows per batch, and a larger time only holds more readings while lateness is judged.
    let paced = specs.values().any(|i| i.is_stream() || i.rate.is_some());
    // SQL views take the larger times too, unless an input has an event time: like the window
    // metrics, they then judge lateness per batch.
    // (the per-user views run beside the sensors' take them: the sensors' lateness is judged per
    // batch whatever a time holds)
    let per_user = names.iter().any(|n| n == "user_event_counts" || n == "user_activity")
        || sql.as_ref().is_some_and(|s| !s.outputs.is_empty() && s.tables.iter().all(|t| t.event_time.is_none()));
    let batches_per_time = match args.batches_per_time {
        Some(0) => bail!("--batches-per-time must be at least 1"),
        Some(n) => n,
        None if paced || !per_user => 1,
        None => (RECORDS_PER_TIME / batch_size as u64).max(1),
    };
    let http = match (&args.http, &config.http.listen) {
        (Some(listen), _) => Some(HttpOptions { listen: listen.clone(), allow_remote: args.http_allow_remote }),
        (None, Some(listen)) => {
            Some(HttpOptions { listen: listen.clone(), allow_remote: args.http_allow_remote || config.http.allow_remote })
        }
        (None, None) => None,
    };
    if let Some(h) = &http {
        h.resolve().with_context(|| format!("the HTTP server of {file}"))?;
    }
    if let Some(names) = config.output.mongodb.as_ref().and_then(|m| m.outputs.as_ref()) {
        let known: Vec<String> = sql
            .iter()
            .flat_map(|s| s.outputs.iter().map(|o| o.to_string()))
            .chain(std::iter::once(dataflows::Output::DeadLetters.to_string()))
            .collect();
        if let Some(bad) = names.iter().find(|n| !known.contains(n)) {
            bail!("{file}: output.mongodb.outputs names `{bad}`, which this run does not write; its outputs are {}", known.join(", "));
        }
    }
    let plan = Plan {
        sql,
        inputs: specs,
        batches_per_time,
        output_dir,
        changes,
        batch_size,
        max_inflight: config.runtime.max_inflight,
        cluster: cluster(&args.timely, config.runtime.workers)?,
        display: if args.quiet { Display::Quiet } else { Display::Status },
        display_interval: config.runtime.status_interval.std(),
        duration: args.duration.map(Duration::from_secs_f64),
        kafka_output: kafka_output(&config, &inputs),
        mongodb_output: config.output.mongodb.clone(),
        state_dir: state_dir(&config, &inputs),
        state_topic: config.runtime.state_topic.clone().map(|t| (config.kafka.clone(), t)),
        // (checkpoints do not hold the SQL views' state yet: a restart of a run with views reads
        // its input again from where it began, at the bound times)
        checkpoint_interval: Some(config.runtime.checkpoint_interval.std()).filter(|d| !d.is_zero()),
        replay_on_restart: config.runtime.restart == crate::config::Restart::Replay,
        observe_changes: http.is_some(),
    };
    Ok(Launch { plan, http, linger: args.http_linger.map(Duration::from_secs_f64) })
}

/// A plan of the shipped dataflows `names` (or views of `config`) over the given inputs, resolved
/// as `run` resolves a config: what the property tests and benchmarks run inside their own
/// process. The inputs' sources replace those the config binds.
pub fn embedded(
    mut config: Config,
    names: &[&str],
    inputs: BTreeMap<String, InputSpec>,
    workers: usize,
    batch_size: usize,
) -> anyhow::Result<Plan> {
    for name in inputs.keys() {
        config.inputs.entry(name.clone()).or_insert(InputConfig::Stdin {
            columns: Vec::new(),
            required: Vec::new(),
            event_time: None,
            primary_key: None,
            format: None,
        });
    }
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let sql = resolve_views(&mut config, None, &names, "embedded plan")?;
    let inputs = inputs.into_iter().map(|(n, spec)| (InputName(dataflows::sql::registry::table(&n)), spec)).collect();
    let mut plan = Plan::embedded(inputs, workers, batch_size);
    plan.sql = Some(std::sync::Arc::new(sql));
    Ok(plan)
}

/// Where a streaming run keeps its state: `[runtime] state_dir`, or the user's state directory
/// (`$XDG_STATE_HOME`, else `~/.local/state`) under `diffstream/<group_id>` of the first Kafka
/// input. Runs of files keep none.
fn state_dir(config: &Config, inputs: &BTreeMap<InputName, InputConfig>) -> Option<PathBuf> {
    let group = inputs.values().find_map(|i| match i {
        InputConfig::Kafka(k) => Some(k.group_id.clone()),
        _ => None,
    })?;
    if let Some(dir) = &config.runtime.state_dir {
        return Some(dir.clone());
    }
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(std::env::temp_dir);
    Some(base.join("diffstream").join(group))
}

fn kafka_output(config: &Config, inputs: &BTreeMap<InputName, InputConfig>) -> Option<KafkaOutputPlan> {
    let output = config.output.kafka.clone()?;
    let mut dead_letter_topics = BTreeMap::new();
    for input in inputs.values() {
        if let InputConfig::Kafka(k) = input {
            for t in &k.topics {
                dead_letter_topics.insert(t.clone(), k.dead_letter_topic.clone().unwrap_or_else(|| format!("{t}.dlq")));
            }
        }
    }
    Some(KafkaOutputPlan { connection: config.kafka.clone(), output, dead_letter_topics })
}

/// The shipped pipelines `diffstream demo NAME` runs: name, config (it reads Kafka; the demo
/// reads the input's generator instead) and views, compiled into the binary.
pub const PIPELINES: [(&str, &str, &str); 3] = [
    ("transactions", include_str!("../configs/transactions.toml"), include_str!("../dataflows/transactions.sql")),
    ("sales", include_str!("../configs/sales.toml"), include_str!("../dataflows/sales.sql")),
    ("applications", include_str!("../configs/applications.toml"), include_str!("../dataflows/applications.sql")),
];

/// Resolves `diffstream demo` into a plan.
pub fn plan_demo(args: &DemoArgs) -> anyhow::Result<Launch> {
    if !(args.rate > 0.0) {
        bail!("--rate must be a positive number of records per second");
    }
    if let Some(name) = &args.pipeline {
        return plan_demo_pipeline(args, name);
    }
    let file = "configs/demo.toml (embedded)";
    let mut config = Config::parse(DEMO_CONFIG, file)?;
    let names = config.dataflows.clone();
    let sql = resolve_views(&mut config, None, &names, file)?;
    let inputs = sql
        .tables
        .iter()
        .map(|t| {
            let mut spec = InputSpec::from_config(t.name, &config.inputs[t.name.as_str()], &config.kafka);
            spec.rate = Some(args.rate);
            (t.name, spec)
        })
        .collect();
    demo_launch(args, &config, Some(std::sync::Arc::new(sql)), inputs)
}

/// `diffstream demo NAME`: a shipped pipeline's views on its input's generator.
fn plan_demo_pipeline(args: &DemoArgs, name: &str) -> anyhow::Result<Launch> {
    let Some((_, text, sql)) = PIPELINES.iter().find(|(n, _, _)| *n == name) else {
        let names: Vec<&str> = PIPELINES.iter().map(|(n, _, _)| *n).collect();
        bail!("there is no shipped pipeline `{name}`; the demo runs {} (or, without a name, the three dataflows)", names.join(", "));
    };
    let file = format!("configs/{name}.toml (embedded)");
    let generator = |_: &str| Generated { count: None, rate: Some(args.rate), seed: 1, users: 1000 };
    let (config, pipeline, inputs) = views_on_generators(text, &file, sql, &format!("dataflows/{name}.sql (embedded)"), generator)?;
    demo_launch(args, &config, Some(std::sync::Arc::new(pipeline)), inputs)
}

/// How a generator stands in for one of a config's inputs ([`views_on_generators`]).
pub struct Generated {
    /// records, else until stopped
    pub count: Option<u64>,
    /// records per second, else as fast as it can
    pub rate: Option<f64>,
    /// the generator's seed
    pub seed: u64,
    /// distinct users
    pub users: u64,
}

/// A config's views (`sql`, compiled as `sql_file`) with each of its inputs read from the
/// generator of the input's name (`generator` says how): what `diffstream demo NAME` runs, and
/// `bench --soak`. The config's outputs are dropped; its views, columns and keys are kept.
pub fn views_on_generators(
    config_text: &str,
    file: &str,
    sql: &str,
    sql_file: &str,
    generator: impl Fn(&str) -> Generated,
) -> anyhow::Result<(Config, runtime::SqlPipeline, BTreeMap<InputName, InputSpec>)> {
    let mut config = Config::parse(config_text, file)?;
    config.output = Default::default();
    for (name, input) in config.inputs.iter_mut() {
        let Generated { count, rate, seed, users } = generator(name);
        let generated = InputConfig::Generator {
            generator: None,
            count,
            rate,
            seed,
            users,
            columns: Vec::new(),
            required: Vec::new(),
            event_time: None,
            primary_key: None,
            format: None,
        };
        *input = generated.declared_as(Some(input));
    }
    let mut pipeline = compile_sql(&config, None, &[(sql_file.to_string(), sql.to_string())])?.context("a shipped pipeline has views")?;
    pipeline.select(config.dataflows.iter().filter_map(|v| v.parse::<dataflows::Output>().ok()).collect());
    let inputs =
        pipeline.tables.iter().map(|t| (t.name, InputSpec::from_config(t.name, &config.inputs[t.name.as_str()], &config.kafka))).collect();
    Ok((config, pipeline, inputs))
}

/// The demo's plan: the given dataflows or views on generators, with the live view and the dashboard.
fn demo_launch(
    args: &DemoArgs,
    config: &Config,
    sql: Option<std::sync::Arc<runtime::SqlPipeline>>,
    inputs: BTreeMap<InputName, InputSpec>,
) -> anyhow::Result<Launch> {
    let http = (!args.no_http).then(|| HttpOptions { listen: args.http.clone(), allow_remote: false });
    let plan = Plan {
        sql,
        inputs,
        output_dir: Some(args.output_dir.clone()),
        changes: true,
        // about ten logical times a second: changes show promptly
        batch_size: ((args.rate / 10.0) as usize).max(1),
        batches_per_time: 1,
        max_inflight: config.runtime.max_inflight,
        cluster: cluster(&args.timely, config.runtime.workers)?,
        display: if args.plain { Display::Status } else { Display::Live },
        display_interval: Duration::from_millis(500),
        duration: args.duration.map(Duration::from_secs_f64),
        kafka_output: None,
        mongodb_output: None,
        state_dir: None,
        state_topic: None,
        checkpoint_interval: None,
        replay_on_restart: false,
        observe_changes: http.is_some(),
    };
    Ok(Launch { plan, http, linger: args.http_linger.map(Duration::from_secs_f64) })
}

/// Runs a plan with its observers and prints its summary.
pub fn execute(launch: Launch) -> anyhow::Result<()> {
    let Launch { plan, http, linger } = launch;
    let quiet = plan.display == Display::Quiet;
    let counters = std::sync::Arc::new(runtime::Counters::default());
    // The server runs on the first process; the others send it their rows through the dataflow.
    let server = match http.filter(|_| plan.cluster.process == 0) {
        Some(options) => {
            let start = |o: &HttpOptions| crate::http::start(o, &plan, counters.clone());
            let server = match start(&options) {
                Ok(s) => s,
                // The demo's default port may be taken: any free one will do.
                Err(e) if options.listen == crate::http::DEFAULT_ADDR => {
                    tracing::warn!("{e:#}; serving on a free port instead");
                    start(&HttpOptions { listen: "127.0.0.1:0".into(), allow_remote: false })?
                }
                Err(e) => return Err(e),
            };
            eprintln!("dashboard: http://{}/  (rows: /outputs, changes: /outputs/NAME/subscribe, metrics: /metrics)", server.addr);
            Some(server)
        }
        None => None,
    };
    let dashboard = server.as_ref().map(|s| (s.addr, s.observer.store()));
    let address = dashboard.as_ref().map(|(a, _)| format!("http://{a}/"));
    let monitor = (!quiet).then(|| Box::new(crate::status::Monitor::new(&plan, address)) as Box<dyn runtime::Observer>);
    let observer = match server {
        Some(s) => Some(Box::new(s.observer.wrapping(monitor)) as Box<dyn runtime::Observer>),
        None => monitor,
    };
    if let Some(report) = runtime::run_with(plan, counters, observer)? {
        if !quiet {
            print_report(&report);
        }
    }
    // The server says so once the outputs are written.
    if let Some((_, store)) = &dashboard {
        store.finished.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    if let (Some((addr, _)), Some(linger)) = (dashboard, linger) {
        eprintln!("the run ended; serving its final rows at http://{addr}/ for {:.0} s (Ctrl-C stops)", linger.as_secs_f64());
        let until = Instant::now() + linger;
        while Instant::now() < until && !runtime::STOP.load(std::sync::atomic::Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(())
}

fn print_report(r: &Report) {
    let mut err = std::io::stderr().lock();
    let read: Vec<String> = (0..r.records_in.len())
        .filter(|i| r.records_in[*i] > 0)
        .filter_map(|i| Some(format!("{} {}", InputName::from_index(i)?, r.records_in[i])))
        .collect();
    let _ =
        writeln!(err, "done in {:.2}s: read {}", r.elapsed.as_secs_f64(), if read.is_empty() { "nothing".into() } else { read.join(", ") });
    for (name, rows) in &r.rows {
        let _ = writeln!(err, "  {name}: {rows} rows");
    }
    for f in &r.files {
        let _ = writeln!(err, "  wrote {}", f.display());
    }
}

/// `diffstream gen`: JSON Lines to stdout.
pub fn gen(args: &GenArgs) -> anyhow::Result<()> {
    let kind: crate::sources::generator::Kind = args.kind.parse().map_err(anyhow::Error::msg)?;
    if args.rate.is_some_and(|r| !(r > 0.0)) {
        bail!("--rate must be a positive number of records per second");
    }
    let spec = GeneratorSpec { kind, count: args.count.map(|c| c + args.from), seed: args.seed, users: args.users, sites: args.sites };
    match args.to.as_str() {
        "stdout" => {}
        "kafka" => {
            let topic = args.topic.as_deref().context("--to kafka needs --topic T")?;
            let mut connection = match &args.config {
                Some(path) => Config::load(path)?.kafka,
                None => Default::default(),
            };
            if args.bootstrap.is_some() {
                connection.bootstrap_servers = args.bootstrap.clone();
            }
            if let Some(p) = args.create_partitions {
                crate::sinks::kafka::create_topics(&connection, &[topic.to_string()], p)?;
            }
            return crate::sources::generator::to_kafka::run(crate::sources::generator::to_kafka::ToKafka {
                spec,
                from: args.from,
                rate: args.rate,
                topic,
                connection: &connection,
                producer_options: &args.producer_options,
                stop: &runtime::STOP,
            });
        }
        other => bail!("--to {other}: write stdout or kafka"),
    }
    let start = Instant::now();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 16, stdout.lock());
    let tty = std::io::stderr().is_terminal();
    let mut last_report = start;
    let mut i = args.from;
    while spec.count.is_none_or(|c| i < c) && !runtime::STOP.load(std::sync::atomic::Ordering::Relaxed) {
        if let Some(rate) = args.rate {
            let due = start + Duration::from_secs_f64((i - args.from) as f64 / rate);
            let now = Instant::now();
            if due > now {
                out.flush().or_else(ignore_broken_pipe)?;
                std::thread::sleep(due - now);
            }
        }
        let mut line = spec.line(i);
        line.push(b'\n');
        if let Err(e) = out.write_all(&line) {
            return ignore_broken_pipe(e);
        }
        i += 1;
        if tty && last_report.elapsed() >= Duration::from_secs(1) {
            last_report = Instant::now();
            eprint!("\r\x1b[Kgenerated {i} {kind} ({:.0}/s)", i as f64 / start.elapsed().as_secs_f64());
        }
    }
    out.flush().or_else(ignore_broken_pipe)?;
    let secs = start.elapsed().as_secs_f64();
    if tty {
        eprintln!("\r\x1b[Kgenerated {i} {kind} in {secs:.2}s ({:.0}/s)", i as f64 / secs.max(1e-9));
    }
    Ok(())
}

fn ignore_broken_pipe(e: std::io::Error) -> anyhow::Result<()> {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        Ok(())
    } else {
        Err(e.into())
    }
}

/// A plan's output directory, for messages.
pub fn describe_dir(dir: Option<&Path>) -> String {
    dir.map_or("(none)".into(), |d| d.display().to_string())
}
