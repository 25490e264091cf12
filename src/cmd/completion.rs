//! `kubectl snapshot completion bash|zsh|fish|powershell|elvish|kubectl` and `kubectl snapshot man`.
//!
//! Shell scripts complete the standalone `kubectl-snapshot` binary (clap_complete). For `kubectl snapshot
//! <TAB>`, kubectl (1.26+) runs an executable named `kubectl_complete-snapshot` from PATH: `completion kubectl`
//! prints one, which calls the hidden `__complete` command (see `crate::complete`).

use std::io::Write;

use anyhow::Result;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
    Powershell,
    Elvish,
    /// The `kubectl_complete-snapshot` helper kubectl runs to complete `kubectl snapshot <TAB>`.
    Kubectl,
}

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  \
    kubectl snapshot completion kubectl > \"${KREW_ROOT:-$HOME/.krew}/bin/kubectl_complete-snapshot\" && \
    chmod +x \"${KREW_ROOT:-$HOME/.krew}/bin/kubectl_complete-snapshot\"\n  \
    kubectl-snapshot completion bash > /etc/bash_completion.d/kubectl-snapshot")]
pub struct Args {
    pub shell: Shell,
}

/// `cli`: the whole command line's definition (the command tree lives above the commands).
pub fn run(args: Args, mut cli: clap::Command) -> Result<()> {
    let mut out = std::io::stdout().lock();
    let generator = match args.shell {
        Shell::Kubectl => {
            out.write_all(b"#!/usr/bin/env sh\n# kubectl runs this to complete `kubectl snapshot <TAB>` (kubectl >= 1.26).\nexec kubectl-snapshot __complete \"$@\"\n")?;
            return Ok(());
        }
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
        Shell::Powershell => clap_complete::Shell::PowerShell,
        Shell::Elvish => clap_complete::Shell::Elvish,
    };
    // Into a buffer first: clap_complete panics on a closed pipe, our own writes report it as an error.
    let mut script = Vec::new();
    clap_complete::generate(generator, &mut cli, "kubectl-snapshot", &mut script);
    out.write_all(&script)?;
    Ok(())
}

/// `kubectl snapshot man`: the man page, generated from the CLI definition (roff on stdout).
pub fn man(cli: clap::Command) -> Result<()> {
    let cmd = cli.name("kubectl-snapshot");
    let mut out = std::io::stdout().lock();
    clap_mangen::Man::new(cmd).render(&mut out)?;
    Ok(())
}
