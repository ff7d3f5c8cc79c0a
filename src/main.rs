//! The `diffstream` binary: parse, set up logging and Ctrl-C, hand over.

use std::sync::atomic::{AtomicUsize, Ordering};

use clap::Parser;
use diffstream::cli::{Cli, Command};
use diffstream::{bench, commands, runtime};

// Dataflows allocate and free many small strings per record; glibc's malloc spent a quarter
// of the engine's time on them (perf), mimalloc a fraction of that. Its v2 line: v3 (the
// crate's default) held a third more resident memory for the same run at the same speed.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = Cli::parse();
    // Colours only on a terminal: a log redirected to a file stays plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_writer(std::io::stderr).with_ansi(ansi).with_max_level(cli.log_level).with_target(false).init();
    install_ctrlc();
    no_huge_pages();
    let result = match &cli.command {
        Command::Run(args) => commands::plan_run(args).and_then(commands::execute),
        Command::Demo(args) => commands::plan_demo(args).and_then(commands::execute),
        Command::Gen(args) => commands::gen(args),
        Command::Explain(args) => diffstream::commands::explain(args),
        Command::Inspect(args) => diffstream::inspect::main(args),
        Command::Offsets(args) => diffstream::sources::kafka::print_offsets(&args.config),
        Command::Bench(args) => bench::main(args),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(2);
    }
}

/// Turns transparent huge pages off for this process (and the processes it starts). mimalloc
/// asks for them on its memory, so each first touch of a 2 MiB region zeroes all of it, and
/// memory it returns and takes again is zeroed again: a quarter of the SQL sensor job's time
/// went to zeroing pages. Without them, at a million users, `run` took 8% (`-w 2`) to 10% (`-w 1`)
/// less time and 2–3% less memory; the plain loop `bench` compares with was unchanged.
fn no_huge_pages() {
    #[cfg(target_os = "linux")]
    if let Err(e) = nix::sys::prctl::set_thp_disable(true) {
        tracing::warn!(error = %e, "could not turn transparent huge pages off; the run may be slower");
    }
}

/// First Ctrl-C: stop reading, finish the batches in flight, write outputs. Second: leave now.
fn install_ctrlc() {
    static PRESSED: AtomicUsize = AtomicUsize::new(0);
    let _ = ctrlc::set_handler(|| {
        if PRESSED.fetch_add(1, Ordering::SeqCst) == 0 {
            eprintln!("\nstopping: finishing the batches in flight and writing outputs (Ctrl-C again to abort)");
            runtime::STOP.store(true, Ordering::SeqCst);
        } else {
            std::process::exit(130);
        }
    });
}
