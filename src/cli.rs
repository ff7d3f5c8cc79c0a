//! The command line: clap definitions, parsing only. Resolving them against the config file
//! happens in `commands`. timely's `-h` is the hostfile, so the short help flag is off and
//! help is `--help`.

use std::path::PathBuf;

use clap::{ArgAction, Args, Parser, Subcommand};

/// Exact, incremental streaming dataflows on timely and differential dataflow.
///
/// diffstream compiles SQL views to differential operators over JSON inputs (files, stdin,
/// Kafka or its generators), keeps their results exact and incremental, and writes only the
/// changes. Its three shipped dataflows — user_event_counts, user_activity, sensor_metrics —
/// are such views. Records it cannot use go to the dead letters with their raw bytes; the run
/// goes on.
#[derive(Debug, Parser)]
#[command(name = "diffstream", version, disable_help_flag = true, disable_help_subcommand = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// Print help.
    #[arg(long, action = ArgAction::Help, global = true)]
    pub help: Option<bool>,
    /// Log level on stderr: error, warn, info, debug or trace.
    #[arg(long, global = true, default_value = "warn", value_name = "LEVEL")]
    pub log_level: tracing::Level,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run dataflows over inputs until the inputs end (or Ctrl-C), then write the outputs.
    ///
    /// Example: diffstream run user_event_counts user_activity --input users=users.jsonl
    /// --input clicks=clicks.jsonl --output-dir out -w 2
    #[command(disable_help_flag = true)]
    Run(RunArgs),
    /// Write synthetic records as JSON Lines to stdout (or a Kafka topic): the shipped
    /// dataflows' users, clicks and sensors, or the shipped pipelines' transactions, sales and
    /// inputs (order applications).
    ///
    /// Example: diffstream gen sensors --count 100000 --seed 7 > sensors.jsonl
    #[command(disable_help_flag = true)]
    Gen(GenArgs),
    /// The embedded default: the three shipped dataflows on generators at a steady rate,
    /// with a live view of the outputs, writing snapshots and changes under ./demo-out.
    /// Needs no Kafka and no MongoDB. Stops on Ctrl-C or after --duration. `demo transactions`
    /// (or sales, applications) runs a shipped SQL pipeline the same way.
    #[command(disable_help_flag = true)]
    Demo(DemoArgs),
    /// Print the plan of the config's SQL views: each view's columns and key, its operators,
    /// which of them exchange and arrange rows, and by what.
    ///
    /// Example: diffstream explain --config configs/applications.sample.toml applications_per_product
    #[command(disable_help_flag = true)]
    Explain(ExplainArgs),
    /// Show an output of a running engine (started with --http): its current rows, one JSON
    /// object a line, then with --follow every change as it happens.
    ///
    /// Example: diffstream inspect user_event_counts --key 42 --follow
    #[command(disable_help_flag = true)]
    Inspect(InspectArgs),
    /// Show each Kafka input's partitions: committed offset, where the input began, end offset and lag.
    #[command(disable_help_flag = true)]
    Offsets(OffsetsArgs),
    /// Measure the whole `run` path (files in, snapshot files out) at -w 1 and -w 2 against a
    /// plain single-threaded loop over the same files: events/s, peak memory, ratios; --soak
    /// for memory over a long run.
    #[command(disable_help_flag = true)]
    Bench(BenchArgs),
}

/// timely's process layout flags.
#[derive(Debug, Args, Clone)]
pub struct TimelyArgs {
    /// Worker threads per process (default: the config's runtime.workers, else 1).
    #[arg(short = 'w', long = "workers", value_name = "N")]
    pub workers: Option<usize>,
    /// Number of processes in the cluster.
    #[arg(short = 'n', long = "processes", value_name = "N", default_value_t = 1)]
    pub processes: usize,
    /// This process's index, 0 to N-1.
    #[arg(short = 'p', long = "process", value_name = "I", default_value_t = 0)]
    pub process: usize,
    /// File with one `host:port` line per process, in process order (default: localhost:2101, 2102, …).
    #[arg(short = 'h', long = "hostfile", value_name = "HOSTFILE")]
    pub hostfile: Option<PathBuf>,
}

/// `diffstream run`
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Dataflows to run: user_event_counts, user_activity, sensor_metrics, or views of the
    /// config's `views` files (default: the config's `dataflows`).
    #[arg(value_name = "DATAFLOW")]
    pub dataflows: Vec<String>,
    /// TOML config file (see configs/).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Bind an input to a JSON Lines file (`-` for stdin), e.g. --input clicks=clicks.jsonl. Repeatable.
    #[arg(long = "input", value_name = "NAME=PATH")]
    pub inputs: Vec<String>,
    /// Write `<output>.jsonl` snapshots and `dead_letters.jsonl` here when the run ends.
    #[arg(long, value_name = "DIR")]
    pub output_dir: Option<PathBuf>,
    /// Also write every update as it happens to `<output>.changes.jsonl`.
    #[arg(long)]
    pub changes: bool,
    /// Records per input per batch for file and generator inputs; the sensor watermark advances
    /// once per batch (default: the config's runtime.batch_size, else 10000). Kafka inputs take
    /// their own `max_records_per_batch` (a warning says so if both are given).
    #[arg(long, value_name = "N")]
    pub batch_size: Option<usize>,
    /// Batches per logical time for file inputs (default: about 200000 records per time when a
    /// per-user dataflow runs, else 1; streams and rate-limited inputs always take one). Results
    /// do not depend on it; change files show one step per logical time, so 1 gives the finest.
    #[arg(long, value_name = "N")]
    pub batches_per_time: Option<u64>,
    /// Stop reading after this many seconds, then finish and write outputs.
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
    /// No status line.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Serve the dashboard, the outputs' current rows, their changes (Server-Sent Events) and
    /// Prometheus metrics over HTTP at this address, e.g. 127.0.0.1:9898 (`:0` picks a port;
    /// default: the config's [http] listen, else off). Only loopback unless --http-allow-remote.
    #[arg(long, value_name = "HOST:PORT")]
    pub http: Option<String>,
    /// Let --http bind an address other machines can reach (the server has no authentication).
    #[arg(long)]
    pub http_allow_remote: bool,
    /// With --http, keep serving the final rows this many seconds after the run ends (Ctrl-C stops).
    #[arg(long, value_name = "SECS")]
    pub http_linger: Option<f64>,
    #[command(flatten)]
    pub timely: TimelyArgs,
}

/// `diffstream gen`
#[derive(Debug, Args)]
pub struct GenArgs {
    /// users, clicks, sensors, transactions, sales or inputs.
    #[arg(value_name = "KIND")]
    pub kind: String,
    /// Number of records (default: until stopped).
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Start at record I (records are a function of seed and index, so `--from 1000 --count 1000`
    /// continues where `--count 1000` stopped).
    #[arg(long, value_name = "I", default_value_t = 0)]
    pub from: u64,
    /// Records per second (default: as fast as possible).
    #[arg(long, value_name = "R")]
    pub rate: Option<f64>,
    /// Seed; the same seed gives the same records.
    #[arg(long, value_name = "S", default_value_t = 1)]
    pub seed: u64,
    /// Number of distinct users (users, clicks, transactions; customers of sales).
    #[arg(long, value_name = "U", default_value_t = 1000)]
    pub users: u64,
    /// Sensors: copies of the twelve locations, each with its own 1000 sensors
    /// (`plant-a/line-1@site-3`): more keys and more open windows.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub sites: u64,
    /// Where to write: stdout (default) or kafka.
    #[arg(long, value_name = "WHERE", default_value = "stdout")]
    pub to: String,
    /// Kafka topic (with --to kafka); keys are user_id (users, clicks, transactions),
    /// sensor_id, region (sales) or id (inputs).
    #[arg(long, value_name = "T")]
    pub topic: Option<String>,
    /// Kafka bootstrap servers (default: the config's [kafka], else $KAFKA_BOOTSTRAP, else localhost:9092).
    #[arg(long, value_name = "HOST:PORT")]
    pub bootstrap: Option<String>,
    /// Config file whose [kafka] table says how to connect (SASL, TLS).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Create the topic first if it does not exist, with this many partitions.
    #[arg(long, value_name = "N")]
    pub create_partitions: Option<i32>,
    /// Extra librdkafka producer option, e.g. batch.num.messages=1. Repeatable.
    #[arg(long = "producer-option", value_name = "KEY=VALUE")]
    pub producer_options: Vec<String>,
}

/// `diffstream demo`
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// A shipped pipeline to run instead of the three dataflows: transactions, sales or
    /// applications (its SQL views on its input's generator).
    #[arg(value_name = "PIPELINE")]
    pub pipeline: Option<String>,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
    /// Records per second per input.
    #[arg(long, value_name = "R", default_value_t = 2000.0)]
    pub rate: f64,
    /// Where snapshots and change files go.
    #[arg(long, value_name = "DIR", default_value = "demo-out")]
    pub output_dir: PathBuf,
    /// Print the status line instead of the live view.
    #[arg(long)]
    pub plain: bool,
    /// Where the dashboard is served (a free port if this one is taken).
    #[arg(long, value_name = "HOST:PORT", default_value = crate::http::DEFAULT_ADDR)]
    pub http: String,
    /// Serve no dashboard.
    #[arg(long)]
    pub no_http: bool,
    /// Keep serving the dashboard this many seconds after the demo ends (Ctrl-C stops).
    #[arg(long, value_name = "SECS")]
    pub http_linger: Option<f64>,
    #[command(flatten)]
    pub timely: TimelyArgs,
}

/// `diffstream offsets`
#[derive(Debug, Args)]
pub struct OffsetsArgs {
    /// The run's config file.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
}

/// `diffstream inspect`
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The output (default: list every output with its row count and changes/s).
    #[arg(value_name = "OUTPUT")]
    pub output: Option<String>,
    /// Only this key's rows: the key's value (`42`, `alice`) or a JSON object of its fields.
    #[arg(long, value_name = "KEY")]
    pub key: Option<String>,
    /// After the current rows, print every change, `{"time","diff","row"}`, until the run
    /// ends or Ctrl-C.
    #[arg(long)]
    pub follow: bool,
    /// With --follow, also print `{"progress": T}` when times up to T are complete.
    #[arg(long)]
    pub progress: bool,
    /// The engine's --http address.
    #[arg(long, value_name = "HOST:PORT", default_value = crate::http::DEFAULT_ADDR)]
    pub connect: String,
}

/// `diffstream explain`
#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The config whose `views` files to compile.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Only these views (default: every view).
    pub views: Vec<String>,
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    pub help: Option<bool>,
}

/// `diffstream bench`
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Events per job (clicks, or sensor readings).
    #[arg(long, value_name = "N", default_value_t = 2_000_000)]
    pub events: u64,
    /// Distinct users of the clicks jobs, one job per figure.
    #[arg(long, value_name = "U,U", value_delimiter = ',', default_values_t = [10_000u64, 1_000_000])]
    pub users: Vec<u64>,
    /// Sensor jobs, one per figure: copies of the twelve locations (72 keys each; about 1.5
    /// open windows per key). `1,10,1000` measures 1, ~1 000 and ~100 000 open windows.
    #[arg(long, value_name = "N,N", value_delimiter = ',', default_values_t = [1u64])]
    pub sites: Vec<u64>,
    /// Records per batch in the engine runs (the baseline advances its watermark per
    /// batch of the same size). The default is `run`'s.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub batch_size: usize,
    /// Where the generated input files (kept for the next run) and outputs go (default: a
    /// `diffstream-bench` folder in the temporary directory).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Only the jobs whose name starts with this (`clicks` or `sensors`).
    #[arg(long, value_name = "JOB")]
    pub only: Option<String>,
    /// Runs of each measurement (the plain loop's and each engine run's), the fastest kept: a
    /// shared machine slows single runs by tens of percent.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    pub runs: u64,
    /// Instead: 10 × --events at a constant number of keys through the same path, printing the
    /// RSS at each tenth of the input.
    #[arg(long)]
    pub soak: bool,
    /// Instead: the Kafka benchmark against the broker at this address (e.g. $KAFKA_BOOTSTRAP):
    /// raw consume rate vs the engine's end-to-end rate from the same topic, and produce-to-output
    /// latency at a fixed rate.
    #[arg(long, value_name = "HOST:PORT")]
    pub kafka: Option<String>,
    /// Instead: the MongoDB sink's documents/s next to a plain loop of bulk writes of the same
    /// documents with the same driver, against the server at this URI.
    #[arg(long, value_name = "URI")]
    pub mongodb: Option<String>,
    /// Instead: the HTTP server's cost on the clicks and sensors jobs at -w 2: without it, with
    /// it and no client, with a client that follows an output, and with one that reads slowly.
    #[arg(long)]
    pub http: bool,
    /// Records per second for the Kafka latency run.
    #[arg(long, value_name = "R", default_value_t = 2000.0)]
    pub latency_rate: f64,
    /// Internal: run `run …` or `baseline …` in this process and print its peak RSS.
    #[arg(long, hide = true, num_args = 1.., allow_hyphen_values = true, trailing_var_arg = true)]
    pub measure: Vec<String>,
}
