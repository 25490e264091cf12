//! Dynamic completion in Cobra's `__complete` protocol, which kubectl uses for plugins: the arguments are the
//! words after `kubectl snapshot`, the last being the word to complete (possibly empty). The answer is one
//! candidate per line, then `:<directive>` (4 = no file completion).
//!
//! Reached as `kubectl-snapshot __complete ARGS...` or through a `kubectl_complete-snapshot` link or script.

use std::io::Write;

use clap::CommandFactory;

use crate::cli::Cli;

const NO_FILE_COMP: u32 = 4;

/// Options that take a value, and how to complete it.
fn value_of(flag: &str) -> Option<&'static str> {
    match flag {
        "-o" | "--output" => Some("output"),
        "-r" | "--remote" | "--push" => Some("remote"),
        "--dir" | "--s3-endpoint-ca" => Some("file"),
        "--name" | "--keep-last" | "--older-than" | "--max-size" | "--min-free-space" | "--compression-level" => {
            Some("free")
        }
        f if f.starts_with("--s3-") && !matches!(f, "--s3-skip-ssl-verify" | "--s3-insecure") => Some("free"),
        _ => None,
    }
}

pub async fn run(args: &[String]) {
    let (words, current) = match args.split_last() {
        Some((cur, words)) => (words.to_vec(), cur.clone()),
        None => (Vec::new(), String::new()),
    };
    let (candidates, directive) = candidates(&words, &current).await;
    let mut out = std::io::stdout().lock();
    for c in candidates.iter().filter(|c| c.starts_with(current.as_str())) {
        let _ = writeln!(out, "{c}");
    }
    let _ = writeln!(out, ":{directive}");
}

async fn candidates(words: &[String], current: &str) -> (Vec<String>, u32) {
    let root = Cli::command();
    let (cmd, positionals) = typed(&root, words);
    if let Some(prev) = words.last().filter(|w| w.starts_with('-') && !w.contains('=')) {
        match value_of(prev) {
            Some("output") => return (vec!["json".into(), "yaml".into()], NO_FILE_COMP),
            Some("remote") => return (remote_names(), NO_FILE_COMP),
            Some("file") => return (Vec::new(), 0),
            Some(_) => return (Vec::new(), NO_FILE_COMP),
            None => {}
        }
    }
    if current.starts_with('-') {
        let flags = cmd
            .get_arguments()
            .chain(root.get_arguments().filter(|a| a.is_global_set()))
            .filter(|a| !a.is_hide_set())
            .flat_map(|a| {
                a.get_long()
                    .map(|l| format!("--{l}"))
                    .into_iter()
                    .chain(a.get_short().map(|s| format!("-{s}")))
            })
            .collect();
        return (flags, NO_FILE_COMP);
    }
    let subs: Vec<String> = cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
        .map(|s| s.get_name().to_owned())
        .collect();
    if !subs.is_empty() && positionals.is_empty() {
        return (subs, NO_FILE_COMP);
    }
    (stored(cmd.get_name(), &positionals, words).await, NO_FILE_COMP)
}

/// The subcommand path and the positional arguments typed so far (flags and their values skipped).
fn typed<'a>(root: &'a clap::Command, words: &[String]) -> (&'a clap::Command, Vec<String>) {
    let mut cmd = root;
    let mut positionals = Vec::new();
    let mut skip = false;
    for w in words {
        if skip {
            skip = false;
            continue;
        }
        if w.starts_with('-') {
            skip = !w.contains('=') && value_of(w).is_some();
            continue;
        }
        match cmd.find_subcommand(w) {
            Some(sub) if positionals.is_empty() => cmd = sub,
            _ => positionals.push(w.clone()),
        }
    }
    (cmd, positionals)
}

/// Positional candidates from the local store: cluster names, snapshot names of the cluster typed (or the
/// only one, or KIND_CLUSTER_NAME's), remote names, shells.
async fn stored(command: &str, positionals: &[String], words: &[String]) -> Vec<String> {
    let store = backends::LocalStore::new(
        std::env::var_os("KUBECTL_SNAPSHOT_DIR")
            .map(Into::into)
            .unwrap_or_else(default_dir),
    );
    let clusters = cluster_names(&store).await;
    let snapshots = |cluster: Option<&str>| -> Vec<String> {
        let cluster = cluster
            .map(str::to_owned)
            .or_else(|| std::env::var("KIND_CLUSTER_NAME").ok())
            .or_else(|| (clusters.len() == 1).then(|| clusters[0].clone()));
        cluster
            .and_then(|c| backends::ClusterName::new(&c).ok())
            .map(|c| {
                store
                    .list(&c)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|s| s.name.to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    match (command, positionals) {
        ("create" | "list" | "prune" | "resume", []) => clusters.clone(),
        ("remove", []) if words.iter().any(|w| w == "remote") => remote_names(),
        ("restore" | "show" | "delete" | "push" | "pull", []) => {
            clusters.iter().cloned().chain(snapshots(None)).collect()
        }
        ("restore" | "show" | "push" | "pull", [c]) if clusters.contains(c) => snapshots(Some(c)),
        ("delete", [c, ..]) if clusters.contains(c) => snapshots(Some(c)),
        ("delete", _) => snapshots(None),
        ("completion", []) => ["bash", "zsh", "fish", "powershell", "elvish", "kubectl"]
            .map(String::from)
            .to_vec(),
        _ => Vec::new(),
    }
}

fn default_dir() -> std::path::PathBuf {
    crate::cmd::default_store_dir().unwrap_or_default()
}

/// Live kind clusters and clusters with local snapshots (never fails: completion must stay quiet).
async fn cluster_names(store: &backends::LocalStore) -> Vec<String> {
    let mut all: Vec<String> = store
        .clusters()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.to_string())
        .collect();
    let live = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        match crate::cluster::Runtime::connect().await {
            Ok(rt) => rt.clusters().await.unwrap_or_default(),
            Err(_) => Vec::new(),
        }
    })
    .await
    .unwrap_or_default();
    all.extend(live);
    all.sort();
    all.dedup();
    all
}

fn remote_names() -> Vec<String> {
    crate::settings::Config::load()
        .map(|c| c.remotes.into_keys().collect())
        .unwrap_or_default()
}
