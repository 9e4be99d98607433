//! `sellable`: the command-line binary. Argument parsing and glue only: `cli.rs` declares the
//! commands, `config.rs` layers the configuration under them, and `commands/` holds one module per
//! command group, each calling the library crate that does the work (`core`, `batch`, `speed`,
//! `serving`, `models`, `benchmarks`).

/// jemalloc instead of the system allocator: a stream worker allocates a few small values per
/// event (reply parsing, decoding, folding), and glibc's malloc and free were about 30% of its
/// time (fold +20%, training set +25%; the nightly job within noise, peak memory +5-10%:
/// `docs/benchmarks.md`). mimalloc, tried before, raised the nightly job's peak by 45%.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::path::PathBuf;

use anyhow::Result;

mod cli;
mod commands;
mod config;

use cli::{BallistaCommand, Cli, Command, KeysCommand, LakeCommand};
use config::Config;

fn main() {
    let cli = parse_cli();
    init_tracing(cli.log_json, matches!(cli.command, Command::Ballista(_)));
    // 8 MiB per thread: a Ballista plan is (de)serialized by deep recursion
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().thread_stack_size(8 << 20).build().expect("tokio runtime");
    if let Err(error) = runtime.block_on(run(cli.command)) {
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}

async fn run(command: Command) -> Result<()> {
    use commands::*;
    match command {
        Command::Demo(args) => demo::run(args).await,
        Command::Gen(args) => lake::gen_command(&args),
        Command::Lake(LakeCommand::Import(args)) => lake::import(&args.lake.open()?, &args.from).await,
        Command::Lake(LakeCommand::Info(args)) => lake::info(&args.open()?).await,
        Command::Batch(args) => batch::run(&args).await,
        Command::Trainset(args) => batch::trainset(&args).await,
        Command::Train(args) => models::train(&args).await,
        Command::Models(command) => models::registry(command),
        Command::Backtest(args) => models::backtest(&args).await,
        Command::Fold(args) => speed::fold(&args).await,
        Command::Archive(args) => speed::archive(&args).await,
        Command::Reconcile(args) => speed::reconcile(&args).await,
        Command::Publish(args) => speed::publish(&args).await,
        Command::Deadletters(args) => speed::dead_letters(&args).await,
        Command::Serve(args) => serve::run(&args).await,
        Command::Run(args) => run::run(&args).await,
        Command::Rules(command) => rules::run(command).await,
        Command::Keys(KeysCommand::New(args)) => keys::new(&args),
        Command::Ballista(BallistaCommand::Scheduler(args)) => cluster::scheduler(&args).await,
        Command::Ballista(BallistaCommand::Executor(args)) => cluster::executor(&args).await,
    }
}

/// Parses the command line over the configuration: the file (`--config` before the command, or
/// `SELLABLE_CONFIG`) and the environment are merged into a [`Config`] (every problem printed,
/// exit 1), its values become the flags' defaults (so `--help` shows them too), and then the
/// command line is parsed. `demo` keeps the embedded defaults, and `backtest --rules` (rule
/// files, not the serving directory) is left alone.
fn parse_cli() -> Cli {
    use clap::{CommandFactory, FromArgMatches};
    let environment = std::env::vars_os().filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)));
    let config = Config::load(config_file().as_deref(), environment).unwrap_or_else(|problems| {
        for problem in &problems {
            eprintln!("config: {problem}");
        }
        eprintln!("config: {} problem(s); nothing was done", problems.len());
        std::process::exit(1);
    });
    let command = with_defaults(Cli::command(), &config.flag_defaults());
    config::keep(config);
    Cli::from_arg_matches(&command.get_matches()).unwrap_or_else(|error| error.exit())
}

/// The `--config FILE` given before the command (a command's own `--config`, as `train`'s, is
/// another thing), else `SELLABLE_CONFIG`.
fn config_file() -> Option<PathBuf> {
    let mut args = std::env::args_os().skip(1);
    while let Some(arg) = args.next() {
        let text = arg.to_string_lossy();
        if text == "--config" {
            return args.next().map(PathBuf::from);
        }
        if let Some(path) = text.strip_prefix("--config=") {
            return Some(path.into());
        }
        if !text.starts_with('-') {
            break;
        }
    }
    std::env::var_os("SELLABLE_CONFIG").map(PathBuf::from)
}

fn with_defaults(mut command: clap::Command, defaults: &[(&'static str, String)]) -> clap::Command {
    for (id, value) in defaults {
        let skip = command.get_name() == "backtest" && *id == "rules";
        if !skip && command.get_arguments().any(|arg| arg.get_id() == *id) {
            // clap keeps defaults for the life of the program: leaked once, at startup
            let value: &'static str = Box::leak(value.clone().into_boxed_str());
            command = command.mut_arg(*id, |arg| arg.default_value(value));
        }
    }
    let subcommands: Vec<String> = command.get_subcommands().map(|sub| sub.get_name().to_string()).filter(|name| name != "demo").collect();
    for name in subcommands {
        command = command.mut_subcommand(name, |sub| with_defaults(sub, defaults));
    }
    command
}

/// Logs at `info` (`RUST_LOG` overrides), but for the engines' chatter; a Ballista scheduler's or
/// executor's own lines stay when the process is one (`cluster`), not when a standalone one runs
/// inside a command.
fn init_tracing(json: bool, cluster: bool) {
    let quiet = if cluster { "" } else { ",ballista_scheduler=warn,ballista_executor=warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("info,lance=warn,datafusion=warn,ballista::extension=warn,ballista_core=warn{quiet}"))
    });
    // colours only for a terminal: a log file or collector gets plain text (and a request's span
    // costs less to format)
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(|| OneLine(std::io::stderr()));
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// A log writer that keeps each record on one line: a line break or carriage return inside a
/// record (a client's SKU, path or message carrying CR/LF) is written as `\n` or `\r`, so no
/// input can forge a log line. The formatter writes each record whole, in one call.
struct OneLine<W>(W);

impl<W: std::io::Write> std::io::Write for OneLine<W> {
    fn write(&mut self, record: &[u8]) -> std::io::Result<usize> {
        let (body, ended) = match record.strip_suffix(b"\n") {
            Some(body) => (body, true),
            None => (record, false),
        };
        if !body.iter().any(|b| *b == b'\n' || *b == b'\r') {
            self.0.write_all(record)?;
            return Ok(record.len());
        }
        let mut escaped = Vec::with_capacity(record.len() + 16);
        for byte in body {
            match byte {
                b'\n' => escaped.extend_from_slice(b"\\n"),
                b'\r' => escaped.extend_from_slice(b"\\r"),
                other => escaped.push(*other),
            }
        }
        if ended {
            escaped.push(b'\n');
        }
        self.0.write_all(&escaped)?;
        Ok(record.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    #[test]
    fn a_record_stays_on_one_line() {
        let mut out = super::OneLine(Vec::new());
        out.write_all(b"INFO rejected sku=\"SKU-1\r\nERROR forged\" error=x\n").unwrap();
        out.write_all(b"INFO plain\n").unwrap();
        let text = String::from_utf8(out.0).unwrap();
        assert_eq!(text, "INFO rejected sku=\"SKU-1\\r\\nERROR forged\" error=x\nINFO plain\n");
        assert_eq!(text.lines().count(), 2);
    }
}
