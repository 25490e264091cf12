//! The command line: `kubectl snapshot <command>`.

use anyhow::Result;
use clap::{CommandFactory, Parser, Subcommand};

use crate::cmd::{self, Ctx, Global};

#[derive(Debug, Parser)]
#[command(
    name = "kubectl-snapshot",
    bin_name = "kubectl snapshot",
    version,
    about = "Snapshot and restore kind clusters: etcd, images and local-path volumes in one bundle",
    long_about = "Snapshot and restore kind clusters.\n\nA snapshot holds a consistent etcd snapshot, every image loaded in each node's containerd, the \
local-path-provisioner volumes and metadata (Kubernetes version, node image, topology, addon versions) in one .tar.gz \
bundle with a .sha256 sidecar.\n\nThe cluster is a positional argument, else KIND_CLUSTER_NAME, else the only kind cluster.",
    propagate_version = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Capture a running kind cluster into a snapshot.
    Create(cmd::create::Args),
    /// Put a cluster back to a snapshot (after pre-flight checks; a hard overwrite).
    Restore(cmd::restore::Args),
    /// Bring a cluster back after an interrupted operation (or, with --rollback, undo the last restore).
    Resume(cmd::resume::Args),
    /// List a cluster's snapshots, newest first, with their integrity status.
    #[command(visible_alias = "ls")]
    List(cmd::list::Args),
    /// Print a snapshot's metadata.
    Show(cmd::show::Args),
    /// Delete snapshots by retention policy (keep-last, older-than, max-size; their union).
    Prune(cmd::prune::Args),
    /// Delete snapshots by name.
    #[command(visible_alias = "rm")]
    Delete(cmd::delete::Args),
    /// Upload a local snapshot to a remote (S3 bucket, OCI registry, directory).
    Push(cmd::push::Args),
    /// Download a snapshot from a remote into the local store, verifying it.
    Pull(cmd::pull::Args),
    /// Manage named remotes.
    Remote(cmd::remote::Args),
    /// Scheduled snapshots with retention (cron expressions; run by `schedule run`, installable as a timer).
    Schedule(cmd::schedule::Args),
    /// Print a shell completion script (or, with `kubectl`, the kubectl_complete-snapshot helper).
    Completion(cmd::completion::Args),
    /// Print the man page (roff).
    #[command(hide = true)]
    Man,
}

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> Result<()> {
    let ctx = Ctx::new(&cli.global)?;
    match cli.command {
        Command::Create(a) => cmd::create::run(a, &ctx).await,
        Command::List(a) => cmd::list::run(a, &ctx).await,
        Command::Show(a) => cmd::show::run(a, &ctx).await,
        Command::Prune(a) => cmd::prune::run(a, &ctx).await,
        Command::Delete(a) => cmd::delete::run(a, &ctx).await,
        Command::Restore(a) => cmd::restore::run(a, &ctx).await,
        Command::Push(a) => cmd::push::run(a, &ctx).await,
        Command::Pull(a) => cmd::pull::run(a, &ctx).await,
        Command::Remote(a) => cmd::remote::run(a).await,
        Command::Completion(a) => cmd::completion::run(a, Cli::command()),
        Command::Man => cmd::completion::man(Cli::command()),
        Command::Resume(a) => cmd::resume::run(a, &ctx).await,
        Command::Schedule(a) => cmd::schedule::run(a, &ctx).await,
    }
}

/// Exit codes (documented in docs/commands.md, "Exit codes", and the README).
pub mod exit {
    /// Any failure not listed below.
    pub const FAILURE: u8 = 1;
    // 2: usage error (clap).
    /// Restore refused by its pre-flight checks; nothing was changed.
    pub const PREFLIGHT: u8 = 3;
    // 130 / 143: interrupted by SIGINT / SIGTERM (`util::Signal::exit_code`).

    pub fn code_for(e: &anyhow::Error) -> u8 {
        for cause in e.chain() {
            if let Some(crate::capture::CaptureError::Interrupted(sig)) = cause.downcast_ref() {
                return sig.exit_code();
            }
            if cause.downcast_ref::<crate::cmd::UsageError>().is_some() {
                return 2;
            }
            if let Some(crate::restore::RestoreError::Preflight(_)) = cause.downcast_ref() {
                return PREFLIGHT;
            }
            if let Some(crate::restore::RestoreError::Interrupted { signal, .. }) = cause.downcast_ref() {
                return signal.exit_code();
            }
        }
        FAILURE
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    /// Every `kubectl snapshot …` example in the docs parses against this CLI definition.
    #[test]
    fn documented_examples_parse() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut checked = 0;
        for doc in [
            "docs/commands.md",
            "docs/getting-started.md",
            "docs/backends.md",
            "README.md",
        ] {
            let text = std::fs::read_to_string(root.join(doc)).unwrap();
            for line in text.lines().map(str::trim) {
                let Some(rest) = line.strip_prefix("kubectl snapshot ") else {
                    continue;
                };
                let command = rest.split(['#', '>', '&']).next().unwrap_or("").trim();
                let mut argv = vec!["kubectl-snapshot".to_string()];
                // Words as a shell splits them, double-quoted ones whole (cron expressions).
                let mut quoted = false;
                let mut word = None::<String>;
                for ch in command.chars() {
                    match ch {
                        '"' => {
                            quoted = !quoted;
                            word.get_or_insert_with(String::new);
                        }
                        c if c.is_whitespace() && !quoted => argv.extend(word.take()),
                        c => word.get_or_insert_with(String::new).push(c),
                    }
                }
                argv.extend(word);
                if argv
                    .iter()
                    .any(|a| a.contains('[') || a == "..." || a.contains('|') || a.contains('<'))
                {
                    continue; // a synopsis line, not an example
                }
                if let Err(e) = super::Cli::try_parse_from(&argv)
                    && !matches!(
                        e.kind(),
                        clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
                    )
                {
                    panic!("{doc}: `{line}` does not parse:\n{e}");
                }
                checked += 1;
            }
        }
        assert!(checked > 40, "only {checked} examples found");
    }
}
