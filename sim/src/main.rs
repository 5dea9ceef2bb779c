//! The simulator CLI: runs many seeds in parallel with a progress bar, or replays one.
//!
//! ```text
//! cargo run --release -p sim -- --seeds 1000          # seeds 0..1000
//! cargo run --release -p sim -- --seeds 5000..6000    # a range
//! cargo run --release -p sim -- --seed 42 -v          # replay one seed with a readable trace
//! RUST_LOG=debug cargo run --release -p sim -- --seed 42 -v   # ... and every debug event
//! cargo run --release -p sim -- --real --seeds 100     # the real stack under turmoil
//! cargo run --release -p sim -- --real --seed 7        # replay one turmoil seed
//! ```

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use sim::{Report, RunOptions, Stats, TimePolicy, Violation};

/// Deterministic Raft cluster simulation.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Seeds to run: a count N (seeds 0..N) or a range A..B.
    #[arg(long, default_value = "100", value_parser = parse_seeds)]
    seeds: (u64, u64),
    /// Run one seed (overrides --seeds).
    #[arg(long)]
    seed: Option<u64>,
    /// Print every event of the run (use with --seed), and what the crates log (`RUST_LOG`
    /// filters it; `info` by default).
    #[arg(short, long)]
    verbose: bool,
    /// Simulate the real stack (raft-net's driver and TCP transport, the durable store) under
    /// turmoil instead of the core alone; much slower per seed.
    #[arg(long)]
    real: bool,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// How nodes' drivers hand time to their cores: `shipped` (raft-net's DriverClock), or
    /// `loses-paused-ticks` (the driver before the lease fix, to show what it got wrong).
    #[arg(long, default_value = "shipped", value_parser = parse_time_policy)]
    time_policy: TimePolicy,
}

fn parse_time_policy(text: &str) -> Result<TimePolicy, String> {
    match text {
        "shipped" => Ok(TimePolicy::Shipped),
        "loses-paused-ticks" => Ok(TimePolicy::LosesPausedTicks),
        other => Err(format!("'{other}' is not a time policy (shipped, loses-paused-ticks)")),
    }
}

fn parse_seeds(text: &str) -> Result<(u64, u64), String> {
    let number = |s: &str| s.trim().parse::<u64>().map_err(|e| format!("'{s}' is not a seed number: {e}"));
    let (start, end) = match text.split_once("..") {
        Some((a, b)) => (number(a)?, number(b)?),
        None => (0, number(text)?),
    };
    if start >= end {
        return Err(format!("empty seed range {start}..{end}"));
    }
    Ok((start, end))
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.verbose {
        init_tracing();
    }
    if args.real {
        return run_real(&args);
    }
    if let Some(seed) = args.seed {
        let options = RunOptions { verbose: args.verbose, time_policy: args.time_policy, ..RunOptions::default() };
        let report = sim::run(seed, options);
        println!("config: {}", report.config);
        print_summary(&report.stats, 1, std::time::Duration::ZERO);
        println!("trace hash: {:016x}", report.trace_hash);
        return finish(&[report]);
    }
    let (start, end) = args.seeds;
    let threads = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    println!("running seeds {start}..{end} on {threads} threads");
    let started = Instant::now();
    let reports = run_parallel(start, end, threads, args.time_policy);
    let mut total = Stats::default();
    for report in &reports {
        total.add(&report.stats);
    }
    print_summary(&total, reports.len() as u64, started.elapsed());
    finish(&reports)
}

/// `-v`: what raft-core, raft-net and raft-storage log, on stdout between the lines of the
/// readable trace, filtered by `RUST_LOG` (`info` without it; `RUST_LOG=debug` adds every
/// vote, chunk and dropped message). No timestamps: the wall clock means nothing in a
/// simulation, and without it two replays of a seed print the same text.
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .without_time()
        .with_ansi(std::io::stdout().is_terminal())
        .with_writer(std::io::stdout)
        .try_init();
}

/// `--real`: one seed (with its configuration and counts), or many in parallel.
fn run_real(args: &Args) -> ExitCode {
    let started = Instant::now();
    let reports = match args.seed {
        Some(seed) => {
            let report = sim::real::run(seed);
            println!("config: {}", report.config);
            println!("trace hash: {:016x}", report.trace_hash);
            vec![report]
        }
        None => {
            let (start, end) = args.seeds;
            let threads = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            println!("running turmoil seeds {start}..{end} of the real stack on {threads} threads");
            parallel(start, end, threads, sim::real::run)
        }
    };
    let mut total = sim::real::RealStats::default();
    for report in &reports {
        total.add(&report.stats);
    }
    let seconds = started.elapsed().as_secs_f64();
    println!("seeds:               {}", reports.len());
    let multi: Vec<_> = reports.iter().filter(|report| report.config.groups > 1).collect();
    let multi_passed = multi.iter().filter(|report| report.violation.is_none()).count();
    println!(
        "multi-Raft seeds:    {} with 2 to 4 groups per node ({multi_passed} passed), {} with one group",
        multi.len(),
        reports.len() - multi.len()
    );
    let quiet_seeds = reports.iter().filter(|report| report.config.quiesce).count();
    println!(
        "quiescence:          {quiet_seeds} seeds; groups seen quiet {}, peers reported down {}, pings {}",
        total.quiet_groups, total.peer_downs, total.pings
    );
    println!("simulated time:      {:.1}s", total.simulated_ms as f64 / 1000.0);
    println!(
        "faults injected:     partitions {} crashes {} pauses {} restarts {} storage fail-stops {} stores refusing to open {}",
        total.partitions, total.crashes, total.pauses, total.restarts, total.storage_failures, total.open_failures
    );
    println!(
        "leaders elected:     {}; snapshots restored {}; membership changes and transfers {}",
        total.leaders, total.restores, total.membership_changes
    );
    let undecided = reports.iter().filter(|report| report.linearizability_unknown).count();
    println!(
        "client operations:   {} writes and {} reads answered, {} unknown; linearizability undecided (budget) in {undecided} runs",
        total.writes, total.reads, total.unknown
    );
    if seconds > 0.0 {
        println!("wall time:           {seconds:.1}s ({:.1} seeds/min)", reports.len() as f64 * 60.0 / seconds);
    }
    finish(&reports)
}

fn run_parallel(start: u64, end: u64, threads: usize, time_policy: TimePolicy) -> Vec<Report> {
    parallel(start, end, threads, move |seed| sim::run(seed, RunOptions { time_policy, ..RunOptions::default() }))
}

/// What the command line needs of one seed's report, from either simulator.
trait SeedReport {
    /// The seed.
    fn seed(&self) -> u64;
    /// The seed's first violation, if any.
    fn violation(&self) -> Option<&Violation>;
    /// The seed's configuration, as printed.
    fn config_text(&self) -> String;
    /// The command that replays the seed.
    fn replay(&self) -> String;
}

impl SeedReport for Report {
    fn seed(&self) -> u64 {
        self.config.seed
    }
    fn violation(&self) -> Option<&Violation> {
        self.violation.as_ref()
    }
    fn config_text(&self) -> String {
        self.config.to_string()
    }
    fn replay(&self) -> String {
        self.replay_command()
    }
}

impl SeedReport for sim::real::RealReport {
    fn seed(&self) -> u64 {
        self.config.seed
    }
    fn violation(&self) -> Option<&Violation> {
        self.violation.as_ref()
    }
    fn config_text(&self) -> String {
        self.config.to_string()
    }
    fn replay(&self) -> String {
        self.replay_command()
    }
}

/// Runs `run` on seeds `start..end` on `threads` threads with a progress bar (periodic lines
/// without a terminal), printing each failure as it comes; returns the reports in seed order.
fn parallel<R: SeedReport + Send>(start: u64, end: u64, threads: usize, run: impl Fn(u64) -> R + Sync) -> Vec<R> {
    let next = AtomicU64::new(start);
    let bar = ProgressBar::new(end - start);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} seeds ({per_sec}, eta {eta}) {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    // Without a terminal the bar is hidden: print a line every 10% instead.
    let plain = !std::io::stderr().is_terminal();
    let step = ((end - start) / 10).max(1);
    let (sender, receiver) = mpsc::channel();
    let mut reports = Vec::new();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            let sender = sender.clone();
            let next = &next;
            let run = &run;
            scope.spawn(move || {
                loop {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= end {
                        break;
                    }
                    if sender.send((seed, run(seed))).is_err() {
                        break;
                    }
                }
            });
        }
        drop(sender);
        let mut failures = 0;
        for report in receiver {
            if let Some(violation) = report.1.violation() {
                let seed = report.1.seed();
                failures += 1;
                bar.println(format!("seed {seed} FAILED: {violation}"));
                bar.set_message(format!("{failures} failed"));
            }
            bar.inc(1);
            reports.push(report);
            if plain && (reports.len() as u64).is_multiple_of(step) {
                eprintln!("{} of {} seeds done, {failures} failed", reports.len(), end - start);
            }
        }
    });
    bar.finish();
    reports.sort_by_key(|(seed, _)| *seed);
    reports.into_iter().map(|(_, report)| report).collect()
}

fn print_summary(stats: &Stats, seeds: u64, wall: std::time::Duration) {
    let seconds = wall.as_secs_f64();
    println!("seeds:               {seeds}");
    println!("simulated ticks:     {}", stats.ticks);
    println!("messages delivered:  {}", stats.messages_delivered);
    println!(
        "faults injected:     lost {} blocked {} duplicated {} partitions {} crashes {} pauses {}",
        stats.messages_lost,
        stats.messages_blocked,
        stats.messages_duplicated,
        stats.partitions,
        stats.crashes,
        stats.pauses
    );
    println!("snapshots:           taken {} installed {}", stats.snapshots_taken, stats.snapshots_installed);
    println!("membership changes:  {} accepted (changes and transfers)", stats.membership_changes);
    println!(
        "client operations:   {} writes and {} reads completed; linearizability undecided (budget) in {} runs",
        stats.commands_committed, stats.reads_completed, stats.linearizability_unknown
    );
    println!(
        "quiescence:          {} quiet node ticks, {} pings, {} peers reported down, {} quiet leaders crashed, {} replaced while down",
        stats.quiet_ticks, stats.pings_sent, stats.peer_downs, stats.quiet_leader_crashes, stats.quiet_leaders_replaced
    );
    println!("checks evaluated:    {}", stats.checks);
    if seconds > 0.0 {
        println!(
            "wall time:           {seconds:.2}s ({:.1} seeds/s, {:.0} messages delivered/s)",
            seeds as f64 / seconds,
            stats.messages_delivered as f64 / seconds
        );
    }
}

/// Prints each failed seed (violation, config, replay command), or that all passed; the exit
/// code says which.
fn finish<R: SeedReport>(reports: &[R]) -> ExitCode {
    let failed: Vec<(&R, &Violation)> =
        reports.iter().filter_map(|report| report.violation().map(|violation| (report, violation))).collect();
    if failed.is_empty() {
        println!("all {} seeds passed", reports.len());
        return ExitCode::SUCCESS;
    }
    for (report, violation) in &failed {
        println!("\nseed {} violated {}", report.seed(), violation.property);
        println!("  {}", violation.detail);
        println!("  config: {}", report.config_text());
        println!("  replay: {}", report.replay());
    }
    println!("\n{} of {} seeds failed", failed.len(), reports.len());
    ExitCode::FAILURE
}
