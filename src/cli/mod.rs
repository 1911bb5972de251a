//! Command line: parses arguments, builds the configuration, checks it, and starts the mount.
//!
//! The top layer: depends on `service`, `config`, `store` (to check the cache dir) and `base`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod demo;
mod warm;

use crate::base::Invalidation;
use crate::config::{Config, ConfigError, DEFAULT_CONFIG_FILE};
use crate::service::daemon::{self, Readiness};
use crate::service::handover::Inherited;
use crate::service::mount::Lifetime;
use crate::service::upgrade::installed_exe;
use crate::service::{control, mount, mountinfo, supervise};
use crate::store;

const EXAMPLES: &str = "\
Examples:
  ston-fs http://origin.example.com/ /mnt/origin
  ston-fs -o max_cache_size=50G,ttl=600,allow_other http://origin.example.com/videos/ /mnt/videos
  ston-fs --config /etc/ston-fs/ston-fs.toml /mnt/origin
  ston-fs demo /tmp/ston-demo        (a built-in sample origin; needs no network)
  ston-fs purge /mnt/origin/videos/intro.mp4 '/mnt/origin/img/*'
  ston-fs restart /mnt/origin        (swap in the installed binary; the mount stays)

Unmount with: umount MOUNTPOINT (umount -l if files are still open). Every config key
can be given with -o key=value; `ston-fs --help` lists them all.";

/// `--help`'s epilogue: the examples, then every config key with its default.
fn long_help() -> String {
    format!("{EXAMPLES}\n\n{}", crate::config::keys_help())
}

#[derive(Parser)]
#[command(
    name = "ston-fs",
    version,
    about = "Mount an HTTP(S) origin as a read-only, locally cached disk.",
    override_usage = "ston-fs [OPTIONS] ORIGIN MOUNTPOINT\n       ston-fs [OPTIONS] --config FILE MOUNTPOINT\n       ston-fs demo MOUNTPOINT\n       ston-fs purge|expire|hardpurge PATH...\n       ston-fs stats MOUNTPOINT [--json]\n       ston-fs warm PATH...\n       ston-fs restart MOUNTPOINT",
    after_help = EXAMPLES,
    after_long_help = long_help(),
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    /// ORIGIN (an http:// or https:// URL; its path is prepended to every request) and
    /// MOUNTPOINT (an existing directory; what it holds is hidden while mounted).
    /// With --config, only MOUNTPOINT.
    #[arg(value_name = "ORIGIN MOUNTPOINT", num_args = 0..=2)]
    positional: Vec<String>,

    /// TOML config file [default: /etc/ston-fs/ston-fs.toml when no ORIGIN is given]
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Where the cache lives (one subfolder per origin) [default: /var/cache/ston-fs]
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,

    /// Options as key=value pairs, comma-separated, as in fstab (e.g. -o ttl=60,allow_other)
    #[arg(short = 'o', value_name = "OPTIONS")]
    options: Vec<String>,

    /// Stay in the foreground instead of daemonizing (what systemd wants)
    #[arg(short, long)]
    foreground: bool,

    /// More log detail (-v debug, -vv trace); STON_FS_LOG overrides
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,

    /// Internal: the process the supervisor starts to serve the mount
    #[arg(long, hide = true)]
    worker: bool,

    /// Internal: a supervisor started by the worker with this pid, whose supervisor died
    #[arg(long, hide = true, value_name = "PID")]
    adopt_worker: Option<u32>,

    /// Internal: the mount an adopting supervisor holds (so `ps` shows it)
    #[arg(long, hide = true, value_name = "MOUNTPOINT")]
    adopt_mountpoint: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Drop cached files on a live mount; the next read downloads them again. If the origin
    /// is down then, the dropped copy is restored and served.
    Purge {
        /// Files or directories on a ston-fs mount; `DIR/*` (quoted) covers what is below DIR
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
    },
    /// End cached files' TTL now; the next read revalidates (a 304 keeps the data)
    Expire {
        /// Files or directories on a ston-fs mount; `DIR/*` (quoted) covers what is below DIR
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
    },
    /// Delete cached files for good, data and metadata; nothing is kept to fall back on
    Hardpurge {
        /// Files or directories on a ston-fs mount; `DIR/*` (quoted) covers what is below DIR
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
    },
    /// Pre-fetch files or whole subtrees of a mount into the cache
    Warm {
        /// Files or directories on a ston-fs mount; directories are walked through listings
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
    },
    /// Show a live mount's statistics: hit ratios, latencies, origin traffic, cache use
    Stats {
        /// The mount point (or any path on the mount)
        mountpoint: PathBuf,
        /// Print JSON instead of the summary
        #[arg(long)]
        json: bool,
    },
    /// Replace the daemon of a live mount with the installed binary (an upgrade), in place:
    /// the mount stays, and programs reading from it only pause
    Restart {
        /// The mount point (or any path on the mount)
        mountpoint: PathBuf,
    },
    /// Serve a built-in sample origin and mount it: no configuration, no network needed
    Demo {
        /// Where to mount the demo (created if missing)
        mountpoint: PathBuf,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.adopt_worker.is_some() {
        return adopt_worker(cli.verbose);
    }
    match &cli.command {
        Some(Command::Demo { mountpoint }) => {
            init_logging(cli.verbose, &LogTo::Stderr { journal: false });
            demo::run(mountpoint)
        }
        Some(Command::Purge { paths }) => invalidate(Invalidation::Purge, paths),
        Some(Command::Expire { paths }) => invalidate(Invalidation::Expire, paths),
        Some(Command::Hardpurge { paths }) => invalidate(Invalidation::Hardpurge, paths),
        Some(Command::Stats { mountpoint, json }) => show_stats(mountpoint, *json),
        Some(Command::Warm { paths }) => warm::run(paths),
        Some(Command::Restart { mountpoint }) => restart(mountpoint),
        None => run_mount(&cli),
    }
}

fn run_mount(cli: &Cli) -> ExitCode {
    // A process started to take a live mount over (by the supervisor, by systemd after a
    // crash, or by itself after an in-place upgrade) is handed its descriptors: claim them
    // first, while this process is still single-threaded.
    let inherited = Inherited::take();
    let supervisor_pipe = Readiness::from_supervisor();
    if cli.positional.is_empty() {
        return show_usage();
    }
    let (config, mountpoint) = match build_config(cli) {
        Ok(built) => built,
        Err(e) => {
            eprintln!("ston-fs: {e}");
            eprintln!("Try 'ston-fs --help' for usage.");
            return ExitCode::from(2);
        }
    };
    // systemd and login shells start processes at 1,024 descriptors: far too few for a
    // mount with many open files and origin connections.
    store::descriptors::raise_open_file_limit();
    let launch_dir = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    let mountpoint = std::path::absolute(&mountpoint).unwrap_or(mountpoint);
    // A live mount handed over waits for this very process: looking at it would hang.
    if !inherited.is_takeover() {
        if let Err(e) = preflight(&config, &mountpoint) {
            eprintln!("ston-fs: {e}");
            return ExitCode::from(1);
        }
    }
    let lifetime = Lifetime::Restartable {
        inherited,
        launch_dir: launch_dir.clone(),
    };
    let logs = LogTo::choose(
        config.log_file.as_deref(),
        &config.cache_dir,
        cli.foreground,
    );
    if cli.worker {
        // The supervisor's child: a daemon already, logging where the daemon logs.
        init_logging(cli.verbose, &logs);
        let _ = std::env::set_current_dir("/");
        let readiness = supervisor_pipe.unwrap_or(Readiness::Foreground);
        return finish(mount::serve(config, &mountpoint, readiness, lifetime));
    }
    init_logging(cli.verbose, &logs);
    if cli.foreground {
        return finish(mount::serve(
            config,
            &mountpoint,
            Readiness::Foreground,
            lifetime,
        ));
    }
    eprintln!("ston-fs: logging to {}", logs.describe());
    supervise_in_background(logs.file(), launch_dir, mountpoint)
}

/// Where a mount's log lines go. A daemon never logs to nowhere: without `log_file` it
/// uses syslog (the journal), and without a syslog socket a file in the cache folder.
enum LogTo {
    /// `--foreground` (a terminal, or the journal under a systemd service), or a daemon
    /// whose stderr systemd already connected to the journal.
    Stderr {
        journal: bool,
    },
    Syslog,
    /// The daemon's stderr goes to this file.
    File {
        path: PathBuf,
        fallback: bool,
    },
}

impl LogTo {
    fn choose(log_file: Option<&Path>, cache_dir: &Path, foreground: bool) -> LogTo {
        let journal = std::env::var_os("JOURNAL_STREAM").is_some();
        match log_file {
            _ if foreground => LogTo::Stderr { journal },
            Some(path) => LogTo::File {
                path: path.to_path_buf(),
                fallback: false,
            },
            None if journal => LogTo::Stderr { journal },
            None if crate::service::syslog::is_listening() => LogTo::Syslog,
            None => LogTo::File {
                path: cache_dir.join("ston-fs.log"),
                fallback: true,
            },
        }
    }

    fn file(&self) -> Option<&Path> {
        match self {
            LogTo::File { path, .. } => Some(path),
            _ => None,
        }
    }

    fn describe(&self) -> String {
        match self {
            LogTo::Stderr { journal: true } => "the journal (stderr)".into(),
            LogTo::Stderr { journal: false } => "stderr".into(),
            LogTo::Syslog => format!(
                "syslog ({})",
                crate::service::syslog::socket_path().display()
            ),
            LogTo::File {
                path,
                fallback: false,
            } => path.display().to_string(),
            LogTo::File {
                path,
                fallback: true,
            } => format!(
                "{} (no syslog socket at {}; set log_file to choose)",
                path.display(),
                crate::service::syslog::socket_path().display()
            ),
        }
    }
}

/// A supervisor started by a worker whose supervisor died: it takes the descriptors it was
/// handed (first, while single-threaded) and holds them for that worker and the next ones.
fn adopt_worker(verbose: u8) -> ExitCode {
    let taken = crate::service::holder::take_adoption();
    let logs = match &taken {
        Ok((adoption, _)) if !adoption.log_to_stderr => LogTo::Syslog,
        _ => LogTo::Stderr { journal: false },
    };
    init_logging(verbose, &logs);
    match taken {
        Ok((adoption, stored)) => {
            ExitCode::from(supervise::adopt(adoption, stored).clamp(0, 255) as u8)
        }
        Err(e) => {
            tracing::error!("cannot adopt the mount process: {e}");
            ExitCode::from(1)
        }
    }
}

/// A bare `ston-fs`: shows a newcomer how it is used rather than one terse error.
fn show_usage() -> ExitCode {
    let usage = <Cli as clap::CommandFactory>::command().render_usage();
    eprintln!("ston-fs mounts an HTTP(S) origin as a read-only, locally cached disk.\n\n{usage}\n\n{EXAMPLES}");
    ExitCode::from(2)
}

/// Becomes a daemon that supervises: it keeps the mount's descriptors while workers (this
/// binary with `--worker`) come and go.
fn supervise_in_background(
    log_file: Option<&std::path::Path>,
    launch_dir: PathBuf,
    mountpoint: PathBuf,
) -> ExitCode {
    let readiness = match daemon::daemonize(log_file) {
        Ok(pipe) => pipe,
        Err(e) => {
            eprintln!("ston-fs: {e}");
            return ExitCode::from(1);
        }
    };
    let mut args: Vec<std::ffi::OsString> = vec!["--worker".into()];
    args.extend(std::env::args_os().skip(1));
    let plan = supervise::Plan {
        exe: installed_exe(),
        args,
        launch_dir,
        mountpoint,
    };
    ExitCode::from(supervise::run(plan, readiness).clamp(0, 255) as u8)
}

fn finish(served: Result<(), String>) -> ExitCode {
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("ston-fs: {e}");
            ExitCode::from(1)
        }
    }
}

/// `ston-fs restart MOUNTPOINT`: asks the daemon to exec the installed binary in place, and
/// waits (bounded) until the new image serves the mount.
fn restart(mountpoint: &Path) -> ExitCode {
    const WAIT: std::time::Duration = std::time::Duration::from_secs(60);
    let paths = [mountpoint.to_path_buf()];
    let before = match control::request(control::Op::Restart, &paths) {
        Ok(response) if response.ok => response.daemon.unwrap_or_default(),
        Ok(response) => {
            let why = response.error.unwrap_or_else(|| "request failed".into());
            eprintln!("ston-fs: {why}");
            return ExitCode::from(1);
        }
        Err(e) => {
            eprintln!("ston-fs: {e}");
            return ExitCode::from(1);
        }
    };
    let deadline = std::time::Instant::now() + WAIT;
    while std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
        // The socket is gone for a moment while the new image starts: ask again.
        let Ok(now) = control::request(control::Op::Status, &paths) else {
            continue;
        };
        let Some(now) = now.daemon else { continue };
        if now.incarnation > before.incarnation {
            println!(
                "restarted {}: pid {} now runs {} (ston-fs {}, incarnation {})",
                mountpoint.display(),
                now.pid,
                now.exe,
                now.version,
                now.incarnation
            );
            return ExitCode::SUCCESS;
        }
        if let Some(why) = now
            .upgrade_error
            .filter(|e| before.upgrade_error.as_ref() != Some(e))
        {
            eprintln!("ston-fs: {why}; the running binary keeps serving");
            return ExitCode::from(1);
        }
    }
    eprintln!(
        "ston-fs: the daemon of {} did not come back within {}s",
        mountpoint.display(),
        WAIT.as_secs()
    );
    ExitCode::from(1)
}

fn invalidate(action: Invalidation, paths: &[PathBuf]) -> ExitCode {
    match control::request(action.into(), paths) {
        Ok(response) if response.ok => {
            let verb = match action {
                Invalidation::Purge => "purged",
                Invalidation::Expire => "expired",
                Invalidation::Hardpurge => "hard-purged",
            };
            println!(
                "{verb} {} object(s), {} byte(s) of cached data",
                response.objects, response.bytes
            );
            ExitCode::SUCCESS
        }
        Ok(response) => {
            eprintln!(
                "ston-fs: {}",
                response.error.unwrap_or_else(|| "request failed".into())
            );
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("ston-fs: {e}");
            ExitCode::from(1)
        }
    }
}

fn show_stats(mountpoint: &Path, json: bool) -> ExitCode {
    let response = control::request(control::Op::Stats, &[mountpoint.to_path_buf()]);
    match response.map(|r| r.stats) {
        Ok(Some(stats)) if json => match serde_json::to_string_pretty(&stats) {
            Ok(text) => {
                println!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ston-fs: {e}");
                ExitCode::from(1)
            }
        },
        Ok(Some(stats)) => {
            print!("{}", stats.to_text());
            ExitCode::SUCCESS
        }
        Ok(None) => {
            eprintln!("ston-fs: the daemon sent no statistics");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("ston-fs: {e}");
            ExitCode::from(1)
        }
    }
}

/// Defaults, then the config file, then ORIGIN, then `-o`, then `--cache-dir`.
fn build_config(cli: &Cli) -> Result<(Config, PathBuf), ConfigError> {
    let missing_mountpoint = || {
        ConfigError::Invalid(
            "missing MOUNTPOINT: usage is `ston-fs [OPTIONS] ORIGIN MOUNTPOINT`".into(),
        )
    };
    let (origin, mountpoint) = match cli.positional.as_slice() {
        [origin, mountpoint] => (Some(origin), mountpoint),
        // A lone URL is an origin whose mount point was forgotten, not a mount point.
        [origin] if origin.contains("://") => return Err(missing_mountpoint()),
        [mountpoint] => (None, mountpoint),
        _ => return Err(missing_mountpoint()),
    };
    let mut config = Config::default();
    let default_file = Path::new(DEFAULT_CONFIG_FILE);
    let config_file = match (&cli.config, origin) {
        (Some(file), _) => Some(file.as_path()),
        (None, None) if default_file.exists() => Some(default_file),
        _ => None,
    };
    if let Some(file) = config_file {
        config.apply_file(file)?;
    }
    if let Some(origin) = origin {
        config.set("origin", origin)?;
    }
    for options in &cli.options {
        config.apply_mount_options(options)?;
    }
    if let Some(dir) = &cli.cache_dir {
        config.cache_dir = dir.clone();
    }
    config.validate()?;
    Ok((config, PathBuf::from(mountpoint)))
}

/// Catches the common mistakes before forking, so they are reported where the user looks.
fn preflight(config: &Config, mountpoint: &Path) -> Result<(), String> {
    let absolute = std::path::absolute(mountpoint).unwrap_or_else(|_| mountpoint.to_path_buf());
    if mount::detach_dead_mount(&absolute) {
        eprintln!(
            "ston-fs: detached a dead FUSE mount at {} (its daemon was gone)",
            absolute.display()
        );
    }
    let meta = std::fs::metadata(mountpoint)
        .map_err(|e| format!("mount point {} does not exist: {e}", mountpoint.display()))?;
    if !meta.is_dir() {
        return Err(format!(
            "mount point {} is not a directory",
            mountpoint.display()
        ));
    }
    let canonical = mountpoint
        .canonicalize()
        .map_err(|e| format!("mount point {}: {e}", mountpoint.display()))?;
    if mountinfo::is_mount_point(&canonical) {
        return Err(format!(
            "mount point {} is already in use (something is mounted there)",
            canonical.display()
        ));
    }
    let holds_files = std::fs::read_dir(&canonical).is_ok_and(|mut d| d.next().is_some());
    if holds_files {
        eprintln!(
            "ston-fs: note: {} is not empty; its files are hidden while the mount is live",
            canonical.display()
        );
    }
    check_cache_dir(&config.cache_dir)
}

fn check_cache_dir(dir: &Path) -> Result<(), String> {
    let unusable = |e: std::io::Error| format!("cache dir {} is not usable: {e}", dir.display());
    store::create_private_dir(dir).map_err(unusable)?;
    let probe = dir.join(format!(".write-test-{}", std::process::id()));
    std::fs::File::create(&probe).map_err(unusable)?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

fn init_logging(verbose: u8, logs: &LogTo) {
    use crate::service::lograte::RateLimited;
    use tracing_subscriber::EnvFilter;
    let level = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_env("STON_FS_LOG").unwrap_or_else(|_| EnvFilter::new(level));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi && matches!(logs, LogTo::Stderr { journal: false }))
        .with_target(false);
    let _ = match logs {
        // syslog and the journal stamp their own time.
        LogTo::Syslog => builder
            .without_time()
            .with_writer(RateLimited::new(crate::service::syslog::Syslog::new()))
            .try_init(),
        LogTo::Stderr { journal: true } => builder
            .without_time()
            .with_writer(RateLimited::new(std::io::stderr))
            .try_init(),
        _ => builder
            .with_writer(RateLimited::new(std::io::stderr))
            .try_init(),
    };
}
