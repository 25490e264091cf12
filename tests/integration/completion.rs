//! Completion as kubectl asks for it (Cobra's `__complete` protocol through `kubectl_complete-snapshot`), and
//! the generated shell scripts and man page.

use std::process::Command;

use crate::util::*;

fn complete(store: &Store, words: &[&str], via_link: Option<&std::path::Path>) -> Vec<String> {
    let mut cmd = match via_link {
        Some(link) => Command::new(link),
        None => {
            let mut c = Command::new(BIN);
            c.arg("__complete");
            c
        }
    };
    cmd.args(words)
        .env("KUBECTL_SNAPSHOT_DIR", store.root())
        .env("KIND_CLUSTER_NAME", "comp")
        .env("KUBECTL_SNAPSHOT_CONFIG", store.root().join("none.toml"));
    let out = run_timeout(cmd, std::time::Duration::from_secs(30));
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    assert_eq!(
        lines.pop().as_deref(),
        Some(":4"),
        "the directive line ends the answer: {text}"
    );
    lines
}

#[test]
fn kubectl_plugin_completion() {
    let store = Store::new();
    for n in ["baseline", "before-upgrade"] {
        let dir = store.root().join("comp");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{n}.tar.gz")), b"x").unwrap();
    }
    assert!(complete(&store, &[""], None).iter().any(|c| c == "restore"));
    assert_eq!(complete(&store, &["re"], None), ["restore", "resume", "remote"]);
    assert_eq!(
        complete(&store, &["restore", "b"], None),
        ["baseline", "before-upgrade"]
    );
    assert_eq!(complete(&store, &["show", "comp", "bef"], None), ["before-upgrade"]);
    assert_eq!(complete(&store, &["list", "-o", ""], None), ["json", "yaml"]);
    assert!(complete(&store, &["prune", "--k"], None).contains(&"--keep-last".to_string()));
    // The way kubectl calls it: an executable named kubectl_complete-snapshot on PATH.
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("kubectl_complete-snapshot");
    std::os::unix::fs::symlink(BIN, &link).unwrap();
    assert_eq!(complete(&store, &["delete", "comp", "base"], Some(&link)), ["baseline"]);
}

#[test]
fn shell_scripts_and_man_page() {
    let store = Store::new();
    for shell in ["bash", "zsh", "fish", "powershell", "elvish"] {
        let r = store.run(&["completion", shell]).ok();
        assert!(r.stdout.contains("kubectl-snapshot") && r.stdout.len() > 500, "{shell}");
    }
    let helper = store.run(&["completion", "kubectl"]).ok().stdout;
    assert!(
        helper.starts_with("#!/usr/bin/env sh") && helper.contains("kubectl-snapshot __complete \"$@\""),
        "{helper}"
    );
    let man = store.run(&["man"]).ok().stdout;
    assert!(
        man.contains(".TH kubectl-snapshot 1") && man.contains("restore"),
        "{}",
        &man[..man.len().min(300)]
    );
}
