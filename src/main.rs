//! kubectl-snapshot: snapshot and restore kind clusters. Parse → resolve → run; errors are printed once,
//! here, with their causes. Exit codes: see `cli::exit` and docs/commands.md ("Exit codes").

mod bundle;
mod capture;
mod cli;
mod cluster;
mod cmd;
mod complete;
mod image_spec;
mod progress;
mod restore;
mod retention;
mod schedule;
mod settings;
mod util;

use std::process::ExitCode;

fn main() -> ExitCode {
    // kubectl's plugin completion: a `kubectl_complete-snapshot` link to this binary, or `__complete ARGS`.
    let argv: Vec<String> = std::env::args().collect();
    let invoked = argv
        .first()
        .map(|a| {
            std::path::Path::new(a)
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned()
        })
        .unwrap_or_default();
    let completing = if invoked.starts_with("kubectl_complete-") {
        Some(&argv[1..])
    } else if argv.get(1).map(String::as_str) == Some("__complete") {
        Some(&argv[2..])
    } else {
        None
    };
    if let Some(words) = completing {
        if let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
            rt.block_on(complete::run(words));
        }
        return ExitCode::SUCCESS;
    }
    let matches = <cli::Cli as clap::CommandFactory>::command()
        .color(color_choice(&argv))
        .get_matches_from(&argv);
    let cli = <cli::Cli as clap::FromArgMatches>::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    util::set_verbose(cli.global.verbose);
    // create does its CPU work (deflate, sha256, writing) on threads of its own; its async side only moves
    // bytes between the runtime's sockets and those threads, where one thread saves the cross-thread wake-ups
    // of a work-stealing pool (bench/create, 300 MiB of random PV data: volume phase 1.90 s -> 1.62 s, median
    // of 6; docs/design.md). Push and pull hash in their tasks, so they keep every core.
    let runtime = if matches!(cli.command, cli::Command::Create(_)) {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().enable_all().build()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::from(cli::exit::FAILURE);
        }
    };
    let result = runtime.block_on(cli::run(cli));
    // Do not wait for stray blocking tasks (e.g. a bundle writer fed by an interrupted stream).
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) {
                return ExitCode::SUCCESS; // `kubectl snapshot list | head`
            }
            // Error chains carry remote and bundle text: what a terminal would act on is escaped.
            eprintln!("error: {}", util::printable(&format!("{e:#}")));
            ExitCode::from(cli::exit::code_for(&e))
        }
    }
}

/// `--color` applies to clap's own help and errors too, so it is read before parsing. `auto` leaves the
/// decision to clap, which honours NO_COLOR and whether the stream is a terminal.
fn color_choice(argv: &[String]) -> clap::ColorChoice {
    let mut value = None;
    for (i, a) in argv.iter().enumerate() {
        if let Some(v) = a.strip_prefix("--color=") {
            value = Some(v.to_owned());
        } else if a == "--color" {
            value = argv.get(i + 1).cloned();
        }
    }
    match value.as_deref() {
        Some("always") => clap::ColorChoice::Always,
        Some("never") => clap::ColorChoice::Never,
        _ => clap::ColorChoice::Auto,
    }
}

/// The layering rule of docs/design.md ("Layers"), checked on the sources: a layer never imports one above it,
/// and capture and restore never import each other.
#[cfg(test)]
mod layering {
    fn sources(dir: &str) -> Vec<(String, String)> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let path = root.join(dir);
        fn walk(p: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
            if p.is_dir() {
                for e in std::fs::read_dir(p).unwrap().flatten() {
                    walk(&e.path(), out);
                }
            } else if p.extension().is_some_and(|e| e == "rs") {
                out.push(p.to_owned());
            }
        }
        let mut files = Vec::new();
        if path.is_dir() {
            walk(&path, &mut files);
        } else {
            files.push(root.join(format!("{dir}.rs")));
        }
        files
            .into_iter()
            .map(|f| (f.display().to_string(), std::fs::read_to_string(&f).unwrap()))
            .collect()
    }

    #[test]
    fn no_layer_imports_one_above_it() {
        let rules: &[(&str, &[&str])] = &[
            (
                "cluster",
                &["capture", "restore", "cmd", "cli", "bundle", "remote", "schedule"],
            ),
            (
                "bundle",
                &["capture", "restore", "cmd", "cli", "cluster", "remote", "schedule"],
            ),
            ("capture", &["restore", "cmd", "cli"]),
            ("restore", &["capture", "cmd", "cli"]),
            ("cmd", &["cli"]),
            ("util", &["capture", "restore", "cmd", "cli", "cluster", "bundle"]),
            ("progress", &["capture", "restore", "cmd", "cli", "cluster", "bundle"]),
            ("image_spec", &["capture", "restore", "cmd", "cli", "cluster", "bundle"]),
            ("retention", &["capture", "restore", "cmd", "cli", "cluster", "bundle"]),
        ];
        let mut broken = Vec::new();
        for (layer, above) in rules {
            for (file, text) in sources(layer) {
                // `crate::x::…`, `crate::x;`, and `crate::{x, …}` groups.
                let grouped: Vec<&str> = text
                    .split("crate::{")
                    .skip(1)
                    .flat_map(|g| g.split('}').next().unwrap_or("").split([',', ' ', '\n']))
                    .map(|w| w.split("::").next().unwrap_or(""))
                    .collect();
                for a in *above {
                    if text.contains(&format!("crate::{a}::"))
                        || text.contains(&format!("crate::{a};"))
                        || grouped.contains(a)
                    {
                        broken.push(format!("{file} imports crate::{a}"));
                    }
                }
            }
        }
        assert!(
            broken.is_empty(),
            "imports against the layering of docs/design.md:\n{}",
            broken.join("\n")
        );
    }
}
