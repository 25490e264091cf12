//! `kubectl snapshot schedule add|list|remove|run|install|uninstall`: scheduled snapshots with retention.

use crate::util::Span;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use backends::{ClusterName, SnapshotName};

use super::Output;
use super::{Ctx, UsageError, collect_garbage, delete_snapshot, entries, push_snapshot, snapshot_name};
use crate::bundle::WriterOptions;
use crate::bundle::metadata::ImagesMode;
use crate::capture::{self, CaptureError, Request};
use crate::cluster::journal::LockError;
use crate::progress::Progress;
use crate::schedule::{self, Outcome, Run, Schedule};
use crate::settings::{Config, RemoteArgs, require};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: Sub,
}

#[derive(Debug, clap::Subcommand)]
pub enum Sub {
    /// Add a schedule: snapshots of CLUSTER named <NAME>-YYYYMMDD-HHMMSS, on a cron schedule, with retention.
    #[command(
        override_usage = "kubectl snapshot schedule add NAME [CLUSTER] --cron EXPR [--keep-last N] [--older-than DUR] [--push [--remote R] [--remote-keep-last N]]"
    )]
    Add(AddArgs),
    /// List schedules with their next run times and last outcome.
    #[command(visible_alias = "ls")]
    List(ListArgs),
    /// Remove a schedule (its snapshots stay).
    #[command(visible_alias = "rm")]
    Remove { name: String },
    /// Run the schedules that are due, once (all, or those named); with --watch, keep running them on time.
    Run(RunArgs),
    /// Run due schedules every minute from the user's service manager (systemd timer, launchd agent, or cron).
    Install(InstallArgs),
    /// Undo `schedule install`.
    Uninstall(InstallArgs),
}

#[derive(Debug, clap::Args)]
pub struct AddArgs {
    /// Schedule name: the prefix of its snapshots' names.
    pub name: String,
    /// Cluster (default: KIND_CLUSTER_NAME, else the only kind cluster).
    pub cluster: Option<String>,
    /// Cron expression in local time: 5 fields (minute hour day-of-month month day-of-week), or 6 with a
    /// leading seconds field. k3s's default is "0 */12 * * *".
    #[arg(long, value_name = "EXPR")]
    pub cron: String,
    /// Keep this many of this schedule's local snapshots (0: no count limit).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub keep_last: usize,
    /// Remove this schedule's local snapshots older than this (7d, 12h).
    #[arg(long, value_name = "DUR")]
    pub older_than: Option<Span>,
    /// Push each snapshot to a remote.
    #[arg(long)]
    pub push: bool,
    /// The remote to push to (a name or URL; default: the default remote).
    #[arg(long, value_name = "NAME|URL", requires = "push")]
    pub remote: Option<String>,
    /// Keep this many of this schedule's snapshots on the remote (0: no remote retention).
    #[arg(long, default_value_t = 0, value_name = "N", requires = "push")]
    pub remote_keep_last: usize,
    /// Which images to capture (as `create --images`).
    #[arg(long, value_enum, default_value_t = ImagesMode::All)]
    pub images: ImagesMode,
    /// gzip level (as `create --compression-level`).
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..=9))]
    pub compression_level: Option<u32>,
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Output format (json includes each schedule's recent runs).
    #[arg(short, long, value_enum)]
    pub output: Option<Output>,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Schedules to consider (default: all).
    pub names: Vec<String>,
    /// Stay in the foreground and run schedules when they are due (for a container or a terminal).
    #[arg(long)]
    pub watch: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Manager {
    Systemd,
    Launchd,
    Cron,
}

#[derive(Debug, clap::Args)]
pub struct InstallArgs {
    /// Print what would be written and run, change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Service manager (default: systemd on Linux, launchd on macOS, else a crontab line).
    #[arg(long, value_enum)]
    pub manager: Option<Manager>,
    /// Write (or remove) the files only; print the `systemctl`/`launchctl` commands instead of running them.
    #[arg(long)]
    pub no_enable: bool,
}

pub async fn run(args: Args, ctx: &Ctx) -> Result<()> {
    match args.command {
        Sub::Add(a) => add(a, ctx).await,
        Sub::List(a) => list(a, ctx),
        Sub::Remove { name } => remove(&name),
        Sub::Run(a) => run_due(a, ctx).await,
        Sub::Install(a) => install(a, ctx, true),
        Sub::Uninstall(a) => install(a, ctx, false),
    }
}

async fn add(a: AddArgs, ctx: &Ctx) -> Result<()> {
    // The schedule's name becomes its snapshots' prefix: it follows the snapshot name rules, with room for
    // the 16-character time suffix.
    snapshot_name(&a.name)?;
    if a.name.len() > 112 {
        return Err(UsageError(format!("schedule name {:?} is longer than 112 characters", a.name)).into());
    }
    schedule::parse_cron(&a.cron).map_err(UsageError)?;
    let mut config = Config::load()?;
    if config.schedules.contains_key(&a.name) {
        bail!(
            "schedule {:?} already exists (kubectl snapshot schedule remove {} first)",
            a.name,
            a.name
        );
    }
    if let Some(r) = &a.remote
        && !r.contains(':')
        && !r.contains('/')
        && !config.remotes.contains_key(r)
    {
        bail!("no remote named {r:?} (see `kubectl snapshot remote list`)");
    }
    let cluster = match a.cluster {
        Some(c) => c,
        None => ctx.live_cluster(None).await?.1,
    };
    ClusterName::new(&cluster)?;
    let s = Schedule {
        cluster,
        cron: a.cron,
        keep_last: a.keep_last,
        older_than: a.older_than,
        push: a.push,
        remote: a.remote,
        remote_keep_last: a.remote_keep_last,
        images: a.images,
        compression_level: a.compression_level,
        created: jiff::Timestamp::now(),
    };
    let next = s.next_runs(jiff::Timestamp::now(), 1);
    config.schedules.insert(a.name.clone(), s);
    let path = config.save()?;
    crate::util::out!(
        "Added schedule {:?} to {}; next run {}. Runs happen when `kubectl snapshot schedule run` runs: see `schedule install` or `schedule run --watch`.",
        a.name,
        path.display(),
        next.first().map_or("never".into(), |t| t.to_string())
    );
    Ok(())
}

fn remove(name: &str) -> Result<()> {
    let mut config = Config::load()?;
    if config.schedules.remove(name).is_none() {
        bail!("no schedule named {name:?} (see `kubectl snapshot schedule list`)");
    }
    config.save()?;
    crate::util::out!("Removed schedule {name:?}; its snapshots stay");
    Ok(())
}

fn list(a: ListArgs, ctx: &Ctx) -> Result<()> {
    let config = Config::load()?;
    let log = schedule::read_log(ctx.store.root());
    let now = jiff::Timestamp::now();
    if a.output.is_some() {
        let items: Vec<serde_json::Value> = config
            .schedules
            .iter()
            .map(|(name, s)| {
                let runs: Vec<&Run> = log.iter().filter(|r| &r.schedule == name).rev().take(20).collect();
                serde_json::json!({
                    "name": name, "schedule": s, "next": s.next_runs(now, 3), "runs": runs,
                })
            })
            .collect();
        let text = match a.output {
            Some(Output::Yaml) => serde_yaml_ng::to_string(&items)?,
            _ => serde_json::to_string_pretty(&items)?,
        };
        crate::util::out!("{}", text.trim_end());
        return Ok(());
    }
    let mut rows = vec![
        ["NAME", "CLUSTER", "CRON", "NEXT", "LAST RUN", "RESULT", "KEEP", "PUSH"]
            .map(str::to_owned)
            .to_vec(),
    ];
    for (name, s) in &config.schedules {
        let last = schedule::last_run(&log, name);
        rows.push(vec![
            name.clone(),
            s.cluster.clone(),
            s.cron.clone(),
            s.next_runs(now, 1).first().map_or("-".into(), |t| t.to_string()),
            last.map_or("-".into(), |r| r.started.to_string()),
            last.map_or("-".into(), |r| format!("{:?}", r.result).to_lowercase()),
            if s.keep_last == 0 {
                "-".into()
            } else {
                s.keep_last.to_string()
            },
            match (&s.push, &s.remote) {
                (false, _) => "-".to_owned(),
                (true, r) => r.clone().unwrap_or_else(|| "default".into()),
            },
        ]);
    }
    super::list::print_table(&rows)
}

async fn run_due(a: RunArgs, ctx: &Ctx) -> Result<()> {
    let config = Config::load()?;
    if let Some(unknown) = a.names.iter().find(|n| !config.schedules.contains_key(*n)) {
        bail!("no schedule named {unknown:?} (see `kubectl snapshot schedule list`)");
    }
    if !a.watch {
        let (failed, _) = run_once(ctx, &config, &a.names).await;
        if failed > 0 {
            bail!(
                "{failed} scheduled run{} failed (see `kubectl snapshot schedule list -o json`)",
                if failed == 1 { "" } else { "s" }
            );
        }
        return Ok(());
    }
    eprintln!("running schedules as they fall due; Ctrl-C to stop");
    // One listener for the whole watch: a signal between runs is not lost.
    let signals = crate::util::Signals::install();
    loop {
        let config = Config::load()?;
        if run_once(ctx, &config, &a.names).await.1 || signals.pending().is_some() {
            // A signal arrived during a run: that run stopped (the cluster was resumed), and so does the watch.
            eprintln!("stopped");
            return Ok(());
        }
        // Sleep until the next firing (at most a minute, so edits to config.toml are picked up).
        let now = jiff::Timestamp::now();
        let next = config
            .schedules
            .iter()
            .filter(|(n, _)| a.names.is_empty() || a.names.contains(n))
            .filter_map(|(_, s)| s.next_runs(now, 1).first().copied())
            .min();
        let wait = next
            .map(|t| t.duration_since(now).unsigned_abs())
            .unwrap_or(std::time::Duration::from_secs(60))
            .min(std::time::Duration::from_secs(60));
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = signals.wait() => {
                eprintln!("stopped");
                return Ok(());
            }
        }
    }
}

/// Runs every due schedule (of `only`, if not empty) one after the other; returns how many failed, and
/// whether a signal interrupted a run (then no further schedule is started).
async fn run_once(ctx: &Ctx, config: &Config, only: &[String]) -> (usize, bool) {
    let log = schedule::read_log(ctx.store.root());
    let mut failed = 0;
    for (name, s) in &config.schedules {
        if !only.is_empty() && !only.contains(name) {
            continue;
        }
        let last = schedule::last_run(&log, name).map(|r| r.started);
        if !s.is_due(last, jiff::Timestamp::now()) {
            continue;
        }
        let (run, interrupted) = run_schedule(ctx, name, s).await;
        if run.result == Outcome::Failed {
            failed += 1;
        }
        let _ = report(&run);
        if let Err(e) = schedule::append(ctx.store.root(), &run) {
            eprintln!(
                "warning: could not record the run in {}: {e}",
                schedule::log_path(ctx.store.root()).display()
            );
        }
        if interrupted {
            return (failed, true);
        }
    }
    (failed, false)
}

fn report(run: &Run) -> Result<()> {
    let mut line = format!("{}: ", run.schedule);
    match run.result {
        Outcome::Ok => line.push_str(&format!("created {}", run.snapshot.as_deref().unwrap_or("?"))),
        Outcome::Skipped => line.push_str("skipped: "),
        Outcome::Failed => line.push_str("failed: "),
    }
    if let Some(e) = &run.error {
        line.push_str(e.lines().next().unwrap_or(""));
    }
    if let Some(p) = &run.pushed {
        line.push_str(&format!("; pushed to {p}"));
    }
    if !run.pruned.is_empty() {
        line.push_str(&format!("; pruned {}", run.pruned.join(", ")));
    }
    if !run.remote_pruned.is_empty() {
        line.push_str(&format!("; pruned on the remote {}", run.remote_pruned.join(", ")));
    }
    crate::util::out!("{line}");
    Ok(())
}

/// One run: create, local retention, push, remote retention (only after a successful push). The flag says
/// whether a signal interrupted it.
async fn run_schedule(ctx: &Ctx, name: &str, s: &Schedule) -> (Run, bool) {
    let started = jiff::Timestamp::now();
    let mut run = Run {
        schedule: name.to_owned(),
        cluster: s.cluster.clone(),
        started,
        finished: started,
        result: Outcome::Ok,
        snapshot: None,
        error: None,
        pushed: None,
        pruned: Vec::new(),
        remote_pruned: Vec::new(),
    };
    let snap = schedule::snapshot_name(name, started);
    match create(ctx, name, s, &snap).await {
        Ok(()) => run.snapshot = Some(snap.clone()),
        Err(e) => {
            let held = e
                .downcast_ref::<CaptureError>()
                .is_some_and(|c| matches!(c, CaptureError::Lock(l) if matches!(**l, LockError::Held { .. })));
            let interrupted = e
                .downcast_ref::<CaptureError>()
                .is_some_and(|c| matches!(c, CaptureError::Interrupted(_)));
            run.result = if held { Outcome::Skipped } else { Outcome::Failed };
            run.error = Some(if held {
                format!("the previous run (or another operation) still holds the cluster: {e:#}")
            } else {
                format!("{e:#}")
            });
            run.finished = jiff::Timestamp::now();
            return (run, interrupted);
        }
    }
    let result: Result<()> = async {
        let cluster = ClusterName::new(&s.cluster)?;
        run.pruned = retain(ctx, &cluster, name, s.keep_last, s.older_than, None).await?;
        if s.push {
            let remote = require(&RemoteArgs {
                remote: s.remote.clone(),
                s3: Default::default(),
                oci: Default::default(),
            })?;
            let snap = SnapshotName::new(&snap)?;
            push_snapshot(ctx, &cluster, &snap, remote.as_ref(), false).await?;
            run.pushed = Some(remote.describe());
            if s.remote_keep_last > 0 {
                run.remote_pruned =
                    retain(ctx, &cluster, name, s.remote_keep_last, None, Some(remote.as_ref())).await?;
            }
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        run.result = Outcome::Failed;
        run.error = Some(format!("{e:#}"));
    }
    run.finished = jiff::Timestamp::now();
    (run, false)
}

async fn create(ctx: &Ctx, name: &str, s: &Schedule, snap: &str) -> Result<()> {
    let (rt, cluster) = ctx.live_cluster(Some(&s.cluster)).await?;
    let mut writer = WriterOptions::default();
    if let Some(l) = s.compression_level {
        writer.level = l;
    }
    let req = Request {
        cluster,
        images: s.images,
        name: snapshot_name(snap)?,
        store: ctx.store.clone(),
        writer,
        schedule: Some(name.to_owned()),
    };
    capture::create(&rt, req, &Progress::new(false)).await?;
    Ok(())
}

/// Deletes this schedule's snapshots of `cluster` beyond `keep_last` / older than `older_than`, locally or on
/// `remote`; returns their names. Snapshots whose metadata does not name the schedule are never touched.
async fn retain(
    ctx: &Ctx,
    cluster: &ClusterName,
    name: &str,
    keep_last: usize,
    older_than: Option<Span>,
    remote: Option<&dyn backends::SnapshotStore>,
) -> Result<Vec<String>> {
    let older_than = older_than.filter(|d| !d.is_zero());
    if keep_last == 0 && older_than.is_none() {
        return Ok(Vec::new());
    }
    let mine: Vec<_> = entries(ctx, cluster, remote)
        .await?
        .into_iter()
        .filter(|e| schedule::belongs(name, e.metadata.as_ref().ok().and_then(|m| m.schedule.as_deref())))
        .collect();
    let sizes: Vec<(jiff::Timestamp, u64)> = mine.iter().map(|e| (e.created, e.size)).collect();
    let reasons = crate::retention::deletions(&sizes, jiff::Timestamp::now(), keep_last, older_than, None);
    let mut pruned = Vec::new();
    for (e, why) in mine.iter().zip(&reasons) {
        if !why.is_empty() {
            delete_snapshot(ctx, cluster, &e.name, remote).await?;
            pruned.push(e.name.to_string());
        }
    }
    if let Some(r) = remote
        && !pruned.is_empty()
    {
        collect_garbage(r, &[], false).await?;
    }
    Ok(pruned)
}

// ---- install

const UNIT: &str = "kubectl-snapshot-schedule";
const LAUNCHD_LABEL: &str = "io.kubectl-snapshot.schedule";

/// A file to write and the commands that activate it.
struct ServiceFiles {
    files: Vec<(PathBuf, String)>,
    activate: Vec<Vec<String>>,
    deactivate: Vec<Vec<String>>,
    note: Option<String>,
}

fn home() -> Result<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .context("HOME is not set")
}

/// A path a unit file, a plist and a crontab line can all carry: UTF-8 without control characters (a newline
/// would end the setting or the cron line and start another).
fn carried(what: &str, how: &str, path: &Path) -> Result<String> {
    let Some(text) = path.to_str() else {
        bail!(
            "{what} {} is not valid UTF-8, which a service file cannot carry; {how}",
            path.display()
        );
    };
    if text.chars().any(char::is_control) {
        bail!(
            "{what} {:?} holds a control character (a newline would start another setting or cron job), which a \
             service file cannot carry; {how}",
            crate::util::printable_line(text)
        );
    }
    Ok(text.to_owned())
}

/// A systemd user service that runs due schedules, and a timer that starts it every minute.
fn systemd_files(exe: &str, env: &[(&str, &str)]) -> Result<ServiceFiles> {
    let dir = match std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => home()?.join(".config"),
    }
    .join("systemd/user");
    let environment: String = env
        .iter()
        .map(|(k, v)| format!("Environment={}\n", systemd_quoted(&format!("{k}={v}"), false)))
        .collect();
    let service = format!(
        "[Unit]\nDescription=kubectl-snapshot: run the snapshot schedules that are due\n\n[Service]\nType=oneshot\n\
         {environment}ExecStart={} schedule run\n",
        systemd_quoted(exe, true)
    );
    let timer = "[Unit]\nDescription=kubectl-snapshot: check the snapshot schedules every minute\n\n[Timer]\n\
         OnCalendar=*-*-* *:*:00\nAccuracySec=1s\nPersistent=true\n\n[Install]\nWantedBy=timers.target\n"
        .to_owned();
    let sc = |args: &[&str]| args.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    Ok(ServiceFiles {
        files: vec![
            (dir.join(format!("{UNIT}.service")), service),
            (dir.join(format!("{UNIT}.timer")), timer),
        ],
        activate: vec![
            sc(&["systemctl", "--user", "daemon-reload"]),
            sc(&["systemctl", "--user", "enable", "--now", &format!("{UNIT}.timer")]),
        ],
        deactivate: vec![
            sc(&["systemctl", "--user", "disable", "--now", &format!("{UNIT}.timer")]),
            sc(&["systemctl", "--user", "daemon-reload"]),
        ],
        note: Some("schedules with a seconds field run at most once a minute this way; use `schedule run --watch` for finer ones".into()),
    })
}

/// A launchd agent that runs due schedules every minute.
fn launchd_files(exe: &str, env: &[(&str, &str)]) -> Result<ServiceFiles> {
    let path = home()?.join(format!("Library/LaunchAgents/{LAUNCHD_LABEL}.plist"));
    let vars: String = env
        .iter()
        .map(|(k, v)| format!("    <key>{k}</key><string>{}</string>\n", xml(v)))
        .collect();
    let plist = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<!DOCTYPE plist PUBLIC \"-//Apple//DTD PLIST 1.0//EN\" \
         \"http://www.apple.com/DTDs/PropertyList-1.0.dtd\">\n<plist version=\"1.0\">\n<dict>\n  <key>Label</key><string>{LAUNCHD_LABEL}</string>\n  \
         <key>ProgramArguments</key>\n  <array><string>{}</string><string>schedule</string><string>run</string></array>\n  \
         <key>EnvironmentVariables</key>\n  <dict>\n{vars}  </dict>\n  <key>StartInterval</key><integer>60</integer>\n</dict>\n</plist>\n",
        xml(exe)
    );
    let p = path.display().to_string();
    Ok(ServiceFiles {
        files: vec![(path, plist)],
        activate: vec![vec!["launchctl".into(), "load".into(), "-w".into(), p.clone()]],
        deactivate: vec![vec!["launchctl".into(), "unload".into(), "-w".into(), p]],
        note: None,
    })
}

fn service_files(manager: Manager, ctx: &Ctx) -> Result<ServiceFiles> {
    let exe = std::env::current_exe().context("locating this executable")?;
    let exe = carried("this executable's path", "install it elsewhere", &exe)?;
    let config = carried(
        "the config file",
        "set KUBECTL_SNAPSHOT_CONFIG to another path",
        &crate::settings::config_path()?,
    )?;
    let store = carried(
        "the snapshot store",
        "use another --dir or KUBECTL_SNAPSHOT_DIR",
        ctx.store.root(),
    )?;
    let env = [
        ("KUBECTL_SNAPSHOT_DIR", store.as_str()),
        ("KUBECTL_SNAPSHOT_CONFIG", config.as_str()),
    ];
    Ok(match manager {
        Manager::Systemd => systemd_files(&exe, &env)?,
        Manager::Launchd => launchd_files(&exe, &env)?,
        Manager::Cron => {
            let vars: String = env.iter().map(|(k, v)| format!("{k}={} ", shell_quote(v))).collect();
            ServiceFiles {
                files: Vec::new(),
                activate: Vec::new(),
                deactivate: Vec::new(),
                note: Some(format!(
                    "add this line to your crontab (`crontab -e`):\n* * * * * {}",
                    cron_command(&format!("{vars}{} schedule run", shell_quote(&exe)))
                )),
            }
        }
    })
}

/// One word of a systemd unit setting, double-quoted: `\\` and `"` escaped, `%` doubled (a specifier otherwise,
/// systemd.unit(5)), and in a command line (`exec`) `$` doubled (variable expansion, systemd.service(5) "Command
/// lines"). systemd.syntax(7): quoted words take C-style escapes.
fn systemd_quoted(s: &str, exec: bool) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '%' => out.push_str("%%"),
            '$' if exec => out.push_str("$$"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A crontab command: cron turns an unescaped `%` into a newline (crontab(5)), even inside shell quotes.
fn cron_command(s: &str) -> String {
    s.replace('%', "\\%")
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn default_manager() -> Manager {
    if cfg!(target_os = "macos") {
        Manager::Launchd
    } else if cfg!(target_os = "linux") {
        Manager::Systemd
    } else {
        Manager::Cron
    }
}

fn command_line(c: &[String]) -> String {
    c.join(" ")
}

fn install(a: InstallArgs, ctx: &Ctx, installing: bool) -> Result<()> {
    let manager = a.manager.unwrap_or_else(default_manager);
    let p = service_files(manager, ctx)?;
    if a.dry_run {
        for (path, text) in &p.files {
            if installing {
                crate::util::out!("# would write {}\n{}", path.display(), text.trim_end());
            } else {
                crate::util::out!("# would remove {}", path.display());
            }
        }
        for c in if installing { &p.activate } else { &p.deactivate } {
            crate::util::out!("# would run: {}", command_line(c));
        }
        if let Some(n) = &p.note {
            crate::util::out!("# {n}");
        }
        return Ok(());
    }
    if installing {
        // Units systemd would reject are never written: they are verified first, as the files they will be.
        if manager == Manager::Systemd {
            verify_units(&p.files)?;
        }
        for (path, text) in &p.files {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            }
            backends::local::write_atomic(path, text.as_bytes())?;
            crate::util::out!("Wrote {}", path.display());
        }
    }
    let commands = if installing { &p.activate } else { &p.deactivate };
    let mut failed = Vec::new();
    if a.no_enable {
        failed.extend(commands.iter().map(|c| command_line(c)));
    }
    for c in commands.iter().filter(|_| !a.no_enable) {
        let ok = std::process::Command::new(&c[0])
            .args(&c[1..])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            failed.push(command_line(c));
        }
    }
    if !installing {
        for (path, _) in &p.files {
            match std::fs::remove_file(path) {
                Ok(()) => crate::util::out!("Removed {}", path.display()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
            }
        }
    }
    if !failed.is_empty() && a.no_enable {
        crate::util::out!("Now run:\n  {}", failed.join("\n  "));
    } else if !failed.is_empty() {
        eprintln!(
            "warning: could not run (no user service manager here?); run them yourself:\n  {}",
            failed.join("\n  ")
        );
    }
    if let Some(n) = &p.note {
        crate::util::out!("{n}");
    }
    Ok(())
}

/// `systemd-analyze verify` of the generated units (written under their names in a temporary directory), where
/// systemd-analyze exists.
fn verify_units(files: &[(PathBuf, String)]) -> Result<()> {
    let dir = tempfile::tempdir().context("creating a directory to verify the units in")?;
    let mut paths = Vec::new();
    for (path, text) in files {
        let at = dir.path().join(path.file_name().context("a unit file name")?);
        std::fs::write(&at, text).with_context(|| format!("writing {}", at.display()))?;
        paths.push(at);
    }
    let Ok(out) = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .args(&paths)
        .stdin(std::process::Stdio::null())
        .output()
    else {
        return Ok(());
    };
    if !out.status.success() {
        bail!(
            "systemd-analyze verify rejected the generated units; nothing was written:\n{}",
            String::from_utf8_lossy(&out.stderr).trim_end()
        );
    }
    Ok(())
}
