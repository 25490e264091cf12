//! Small shared helpers: sizes, durations, ages, nonces, signals, stdout.

/// `println!` that returns the write error instead of panicking: a closed stdout (`kubectl snapshot list |
/// head`) ends the command quietly (main treats a broken pipe as success) instead of with a panic.
/// Lines may hold text from a bundle or a remote: control characters are escaped ([`printable`]).
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let line = format!($($arg)*);
        writeln!(std::io::stdout().lock(), "{}", $crate::util::printable(&line))?
    }};
}
pub(crate) use out;

/// Characters a terminal acts on rather than shows: C0 and C1 controls, DEL, and the Unicode marks that
/// reorder text on screen (bidirectional embeddings, overrides and isolates).
fn acts_on_terminal(c: char) -> bool {
    c.is_control() || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

fn escape_into(out: &mut String, c: char) {
    use std::fmt::Write as _;
    let _ = match u32::from(c) {
        n @ 0..=0x7f => write!(out, "\\x{n:02x}"),
        n => write!(out, "\\u{{{n:x}}}"),
    };
}

/// `text` safe to print: every character a terminal would act on (an escape sequence that sets the title, clears
/// the screen or moves the cursor; a carriage return that overwrites a line) is shown escaped (`\x1b`), except
/// newlines and tabs. Text from bundles, remotes and error chains goes through this before it is printed.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    escaped(text, |c| c == '\n' || c == '\t')
}

/// [`printable`] for one line or table cell: newlines and tabs are escaped too.
pub fn printable_line(text: &str) -> std::borrow::Cow<'_, str> {
    escaped(text, |_| false)
}

fn escaped(text: &str, keep: impl Fn(char) -> bool) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(|c| acts_on_terminal(c) && !keep(c)) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if acts_on_terminal(c) && !keep(c) {
            escape_into(&mut out, c);
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A spawned task that is aborted when dropped: work started ahead, whose result an early return no longer
/// wants.
pub struct Task<T>(tokio::task::JoinHandle<T>);

impl<T: Send + 'static> Task<T> {
    pub fn spawn(work: impl Future<Output = T> + Send + 'static) -> Self {
        Self(tokio::spawn(work))
    }

    /// Waits for the result (a panic in the task is resumed here).
    pub async fn join(mut self) -> T {
        match (&mut self.0).await {
            Ok(v) => v,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => panic!("task cancelled: {e}"),
        }
    }
}

impl<T> Drop for Task<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reads from `src` into `buf` until it holds `limit` bytes or `src` ends; true at the end. Callers hand on
/// whole buffers: the runtime's reads are small (~25 KiB from the archive API), and each hand-off costs a
/// wake-up or a system call.
pub async fn fill(
    src: &mut (impl tokio::io::AsyncRead + Unpin),
    buf: &mut bytes::BytesMut,
    limit: usize,
) -> std::io::Result<bool> {
    use tokio::io::AsyncReadExt;
    while buf.len() < limit {
        if src.read_buf(buf).await? == 0 {
            return Ok(true);
        }
    }
    Ok(false)
}

/// When `-v` was given: the time the command started, which trace lines count from.
static VERBOSE: OnceLock<Instant> = OnceLock::new();

pub fn set_verbose(on: bool) {
    if on {
        let _ = VERBOSE.set(Instant::now());
    }
}

/// With `-v`: one line on stderr, `[  1.234s] what (took)`, for a step that started at `since`.
pub fn trace(since: Instant, what: impl FnOnce() -> String) {
    if let Some(start) = VERBOSE.get() {
        eprintln!(
            "[{:8.3}s] {} ({} ms)",
            since.duration_since(*start).as_secs_f64(),
            what(),
            since.elapsed().as_millis()
        );
    }
}

/// The per-user directories (XDG on Linux and macOS, Known Folders on Windows).
pub fn app_dirs() -> Option<impl etcetera::AppStrategy> {
    etcetera::choose_app_strategy(etcetera::AppStrategyArgs {
        top_level_domain: "io".into(),
        author: "kubectl-snapshot".into(),
        app_name: "kubectl-snapshot".into(),
    })
    .ok()
}

/// A random hex string for temporary names and tokens.
pub fn nonce() -> String {
    backends::local::nonce()
}

/// A signal that asks an operation to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Int,
    Term,
    /// The terminal closed: handled as SIGTERM is.
    Hup,
}

impl Signal {
    pub fn name(self) -> &'static str {
        match self {
            Signal::Int => "SIGINT",
            Signal::Term => "SIGTERM",
            Signal::Hup => "SIGHUP",
        }
    }

    /// 128 + the signal's number, as shells report a process it ended.
    pub fn exit_code(self) -> u8 {
        match self {
            Signal::Int => 130,
            Signal::Term => 143,
            Signal::Hup => 129,
        }
    }
}

impl std::fmt::Display for Signal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Resolves when SIGINT, SIGTERM or SIGHUP arrives, naming it.
pub async fn interrupted() -> Signal {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut hup)) = (signal(SignalKind::terminate()), signal(SignalKind::hangup())) else {
            return ctrl_c().await;
        };
        tokio::select! {
            s = ctrl_c() => s,
            _ = term.recv() => Signal::Term,
            _ = hup.recv() => Signal::Hup,
        }
    }
    #[cfg(not(unix))]
    {
        ctrl_c().await
    }
}

/// SIGINT, SIGTERM and SIGHUP (a closed terminal) caught for the whole of an operation that must not die between two steps (restore):
/// the first one is remembered, and the operation asks [`Signals::pending`] where it can stop safely.
pub struct Signals {
    got: std::sync::Arc<std::sync::OnceLock<Signal>>,
    /// How many signals arrived so far; waiters await its changes.
    count: tokio::sync::watch::Receiver<usize>,
    task: tokio::task::JoinHandle<()>,
}

impl Signals {
    /// Installs the handlers now (from here on a signal no longer kills the process).
    pub fn install() -> Self {
        let got = std::sync::Arc::new(std::sync::OnceLock::new());
        let (counted, count) = tokio::sync::watch::channel(0usize);
        let seen = got.clone();
        #[cfg(unix)]
        let task = {
            use tokio::signal::unix::{SignalKind, signal};
            let int = signal(SignalKind::interrupt());
            let term = signal(SignalKind::terminate());
            let hup = signal(SignalKind::hangup());
            tokio::spawn(async move {
                let (Ok(mut int), Ok(mut term), Ok(mut hup)) = (int, term, hup) else {
                    return;
                };
                loop {
                    let s = tokio::select! {
                        _ = int.recv() => Signal::Int,
                        _ = term.recv() => Signal::Term,
                        _ = hup.recv() => Signal::Hup,
                    };
                    if seen.set(s).is_ok() {
                        eprintln!("{s} received: finishing the step in progress safely...");
                    }
                    // After the signal is recorded: a waiter woken by the count finds it.
                    counted.send_modify(|n| *n += 1);
                }
            })
        };
        #[cfg(not(unix))]
        let task = tokio::spawn(async move {
            if let Ok(()) = tokio::signal::ctrl_c().await {
                let _ = seen.set(Signal::Int);
                counted.send_modify(|n| *n += 1);
            }
        });
        Self { got, count, task }
    }

    /// How many signals arrived so far.
    pub fn count(&self) -> usize {
        *self.count.borrow()
    }

    /// Resolves once more than `seen` signals have arrived (a second Ctrl-C, say); never, once no more can.
    pub async fn wait_beyond(&self, seen: usize) {
        let mut count = self.count.clone();
        if count.wait_for(|n| *n > seen).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    pub fn pending(&self) -> Option<Signal> {
        self.got.get().copied()
    }

    /// Resolves once a signal has arrived.
    pub async fn wait(&self) -> Signal {
        self.wait_beyond(0).await;
        self.pending().unwrap_or(Signal::Int)
    }
}

impl Drop for Signals {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How a wait for something to hold retries: first after `first`, then backing off (doubling, with jitter, so
/// that nodes asked together do not stay in step) up to `max` between tries, giving up once the delays add up
/// to `within`. One policy for every such wait, from backon.
pub fn backoff(first: Duration, max: Duration, within: Duration) -> backon::ExponentialBuilder {
    backon::ExponentialBuilder::default()
        .with_min_delay(first)
        .with_max_delay(max)
        .with_factor(2.0)
        .with_jitter()
        .with_total_delay(Some(within))
        .without_max_times()
}

/// The environment variable naming a phase to stop at: tests use it to signal or kill an operation at a
/// known point. Unset (the default) it does nothing.
pub const PAUSE_AT_ENV: &str = "KUBECTL_SNAPSHOT_PAUSE_AT";

/// The phases an operation can be stopped at ([`PAUSE_AT_ENV`]); docs/commands.md lists them all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pause {
    /// create: reading images, the cluster running.
    CreateImages,
    /// create: the nodes quiesced, volumes being read.
    CreateQuiesced,
    /// create: the first node thawed, the others still frozen.
    CreateThawing,
    /// restore: staging the snapshot beside the live data, nothing live changed.
    RestorePrepare,
    /// restore: every journal committed, nothing switched yet.
    RestoreCommitted,
    /// restore: the cluster quiesced for the switch.
    RestoreQuiesced,
    /// restore: every node switched, the cluster not yet restarted.
    RestoreSwitched,
    /// restore: switched and finished, restarting the cluster (a signal here lets it complete).
    RestoreResuming,
}

impl Pause {
    #[cfg(test)]
    pub const ALL: [Pause; 8] = [
        Pause::CreateImages,
        Pause::CreateQuiesced,
        Pause::CreateThawing,
        Pause::RestorePrepare,
        Pause::RestoreCommitted,
        Pause::RestoreQuiesced,
        Pause::RestoreSwitched,
        Pause::RestoreResuming,
    ];

    /// The name [`PAUSE_AT_ENV`] takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Pause::CreateImages => "create:images",
            Pause::CreateQuiesced => "create:quiesced",
            Pause::CreateThawing => "create:thawing",
            Pause::RestorePrepare => "restore:prepare",
            Pause::RestoreCommitted => "restore:committed",
            Pause::RestoreQuiesced => "restore:quiesced",
            Pause::RestoreSwitched => "restore:switched",
            Pause::RestoreResuming => "restore:resuming",
        }
    }
}

/// Stops at `phase` when [`PAUSE_AT_ENV`] names it: prints where it stopped, then waits for a signal (for an
/// operation that watches [`Signals`]) or forever (for one cancelled by a signal).
pub async fn pause_point(phase: Pause, signals: Option<&Signals>) {
    let phase = phase.as_str();
    if std::env::var(PAUSE_AT_ENV).ok().as_deref() != Some(phase) {
        return;
    }
    eprintln!("paused at {phase} ({PAUSE_AT_ENV})");
    match signals {
        Some(s) => {
            s.wait().await;
        }
        None => std::future::pending::<()>().await,
    }
}

async fn ctrl_c() -> Signal {
    match tokio::signal::ctrl_c().await {
        Ok(()) => Signal::Int,
        Err(_) => std::future::pending().await,
    }
}

/// `412.00 MiB`, base 2: indicatif's format, the one the progress bars use.
pub fn human_bytes(n: u64) -> String {
    indicatif::HumanBytes(n).to_string()
}

/// Parses a size with base-2 multipliers, case-insensitive: `10G`, `500m`, `1.5GiB`, `2048` (bytes).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let bad =
        || format!("invalid size {s:?}: use a number with an optional K, M, G or T suffix (base 2), e.g. 10G or 500M");
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(bad());
    }
    let unit = unit.trim().to_ascii_lowercase();
    let shift = match unit.as_str() {
        "" | "b" => 0,
        "k" | "ki" | "kb" | "kib" => 10,
        "m" | "mi" | "mb" | "mib" => 20,
        "g" | "gi" | "gb" | "gib" => 30,
        "t" | "ti" | "tb" | "tib" => 40,
        _ => return Err(bad()),
    };
    let v: f64 = num.parse().map_err(|_| bad())?;
    let bytes = v * (1u64 << shift) as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes.round() as u64)
}

/// Parses a duration with humantime (`168h`, `7d`, `30m`, `1h30m`, `2w`); a unit is required, except for a
/// bare `0` (off).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let bad = || format!("invalid duration {s:?}: use units s, m, h, d or w, e.g. 168h, 7d or 1h30m");
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    if t.is_empty() || !t.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(bad());
    }
    humantime::parse_duration(t).map_err(|_| bad())
}

/// A length of time as people write it (`7d`, `12h`, `90m`, `1h30m`, `0` for off), for every setting that
/// takes one (`prune --older-than`, schedules, `--s3-timeout`): parsed once, by [`parse_duration`], and
/// shown by one formatter, in the largest unit that divides it (`168h` is shown `7d`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Span(pub Duration);

impl Span {
    pub fn is_zero(self) -> bool {
        self.0.is_zero()
    }
}

impl std::str::FromStr for Span {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_duration(s).map(Span)
    }
}

impl std::fmt::Display for Span {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (s, ms) = (self.0.as_secs(), self.0.as_millis());
        if self.0.subsec_millis() != 0 || (s == 0 && ms > 0) {
            return write!(f, "{ms}ms");
        }
        match s {
            0 => f.write_str("0s"),
            s if s.is_multiple_of(86_400) => write!(f, "{}d", s / 86_400),
            s if s.is_multiple_of(3600) => write!(f, "{}h", s / 3600),
            s if s.is_multiple_of(60) => write!(f, "{}m", s / 60),
            s => write!(f, "{s}s"),
        }
    }
}

impl serde::Serialize for Span {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Span {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// `5s ago`, `2h ago`, `8d ago`.
pub fn age(created: jiff::Timestamp, now: jiff::Timestamp) -> String {
    let secs = now.as_second() - created.as_second();
    if secs < 0 {
        return "in the future".into();
    }
    let (v, u) = match secs {
        s if s < 60 => (s, "s"),
        s if s < 3600 => (s / 60, "m"),
        s if s < 86_400 * 2 => (s / 3600, "h"),
        s => (s / 86_400, "d"),
    };
    format!("{v}{u} ago")
}

#[cfg(test)]
mod tests {
    /// A signal is awaited (no polling): `wait` resolves with it, and `wait_beyond` only with a later one.
    #[tokio::test]
    async fn signals_are_awaited_and_counted() {
        use super::{Signal, Signals};
        let limit = std::time::Duration::from_secs(10);
        let signals = Signals::install();
        let me = rustix::process::getpid();
        rustix::process::kill_process(me, rustix::process::Signal::HUP).unwrap();
        let got = tokio::time::timeout(limit, signals.wait())
            .await
            .expect("the signal was not seen");
        assert_eq!(got, Signal::Hup);
        let seen = signals.count();
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(300), signals.wait_beyond(seen))
                .await
                .is_err(),
            "wait_beyond resolved without a further signal"
        );
        rustix::process::kill_process(me, rustix::process::Signal::HUP).unwrap();
        tokio::time::timeout(limit, signals.wait_beyond(seen))
            .await
            .expect("the second signal was not seen");
    }

    #[test]
    fn every_pause_point_is_documented() {
        let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/commands.md")).unwrap();
        for p in super::Pause::ALL {
            assert!(
                doc.contains(&format!("`{}`", p.as_str())),
                "docs/commands.md does not name {}",
                p.as_str()
            );
        }
    }

    #[test]
    fn what_a_terminal_acts_on_is_escaped() {
        use super::{printable, printable_line};
        let hostile = "v1.31\x1b]0;pwned\x07\x1b[2J\rall snapshots verified ok\u{9b}31m\u{202e}gpj.exe\n\tnext";
        assert_eq!(
            printable(hostile),
            "v1.31\\x1b]0;pwned\\x07\\x1b[2J\\x0dall snapshots verified ok\\u{9b}31m\\u{202e}gpj.exe\n\tnext"
        );
        assert_eq!(printable_line("a\nb\tc"), "a\\x0ab\\x09c");
        assert!(matches!(printable("plain: ünïcode ✓"), std::borrow::Cow::Borrowed(_)));
    }

    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("10G").unwrap(), 10 << 30);
        assert_eq!(parse_size("500m").unwrap(), 500 << 20);
        assert_eq!(parse_size("1.5GiB").unwrap(), 3 << 29);
        assert_eq!(parse_size("2048").unwrap(), 2048);
        assert_eq!(parse_size("0").unwrap(), 0);
        for bad in ["", "G", "10X", "-1G", "1.2.3G", "10 GB extra", "99999999999T"] {
            assert!(parse_size(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("168h").unwrap(), Duration::from_secs(168 * 3600));
        for (text, shown) in [
            ("168h", "7d"),
            ("90m", "90m"),
            ("1h30m", "90m"),
            ("45s", "45s"),
            ("0", "0s"),
            ("1.5s", "1500ms"),
        ] {
            let span: Span = text.parse().unwrap();
            assert_eq!(span.to_string(), shown);
            assert_eq!(shown.parse::<Span>().unwrap(), span, "{shown} reads back");
        }
        assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(7 * 86_400));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("1.5h").unwrap(), Duration::from_secs(5400));
        for bad in ["", "7", "h", "7x", "-1h", "99999999999999999999h"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn human() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(412 << 20), "412.00 MiB");
        assert_eq!(human_bytes(3 << 29), "1.50 GiB");
    }
}
