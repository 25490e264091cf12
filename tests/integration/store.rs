//! list, show, prune and delete on real bundles.

use crate::util::*;

/// Copies snapshot `from` to `to` in the store, with its metadata's creation time moved `hours_ago`.
fn copy_snapshot(store: &Store, cluster: &str, from: &str, to: &str, hours_ago: i64) {
    let dir = store.root().join(cluster);
    std::fs::copy(dir.join(format!("{from}.tar.gz")), dir.join(format!("{to}.tar.gz"))).unwrap();
    let sidecar = std::fs::read_to_string(dir.join(format!("{from}.tar.gz.sha256"))).unwrap();
    std::fs::write(
        dir.join(format!("{to}.tar.gz.sha256")),
        sidecar.replace(&format!("{from}.tar.gz"), &format!("{to}.tar.gz")),
    )
    .unwrap();
    let mut meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(format!("{from}.metadata.json"))).unwrap()).unwrap();
    let created = jiff::Timestamp::now().as_second() - hours_ago * 3600;
    meta["created"] = serde_json::Value::String(jiff::Timestamp::from_second(created).unwrap().to_string());
    meta["name"] = serde_json::Value::String(to.into());
    std::fs::write(
        dir.join(format!("{to}.metadata.json")),
        serde_json::to_vec(&meta).unwrap(),
    )
    .unwrap();
}

fn names(run: &Run) -> Vec<String> {
    run.json()
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn list_show_prune_delete() {
    let cluster = Cluster::up("store", 1, 0);
    let store = Store::new();
    let c = cluster.name.as_str();
    store.run(&["create", c, "base"]).ok();

    // list: ok, corrupt (one flipped byte), incomplete (no sidecar)
    copy_snapshot(&store, c, "base", "flipped", 1);
    copy_snapshot(&store, c, "base", "nosidecar", 2);
    let flipped = store.bundle(c, "flipped");
    let mut bytes = std::fs::read(&flipped).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&flipped, bytes).unwrap();
    std::fs::remove_file(store.root().join(c).join("nosidecar.tar.gz.sha256")).unwrap();
    let listed = store.run(&["list", c, "-o", "json"]).ok().json();
    let status = |n: &str| {
        listed.as_array().unwrap().iter().find(|r| r["name"] == n).unwrap()["status"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(status("base"), "ok");
    assert_eq!(status("flipped"), "corrupt");
    assert_eq!(status("nosidecar"), "incomplete");
    assert_eq!(
        names(&store.run(&["list", c, "-o", "json"])),
        ["base", "flipped", "nosidecar"],
        "newest first"
    );
    let table = store.run(&["list", c]).ok().stdout;
    let header = table.lines().next().unwrap();
    assert!(
        header
            .split_whitespace()
            .eq(["NAME", "AGE", "SIZE", "K8S", "ADDONS", "STATUS"]),
        "{header}"
    );
    assert!(
        table.contains("v1.33.1") && table.contains("corrupt") && table.contains("incomplete"),
        "{table}"
    );
    let base_line = table.lines().find(|l| l.starts_with("base ")).unwrap();
    assert!(
        base_line.contains("..."),
        "ADDONS is truncated at 50 characters: {base_line}"
    );
    assert!(
        !store
            .run(&["list", c, "--no-trunc"])
            .ok()
            .stdout
            .lines()
            .find(|l| l.starts_with("base "))
            .unwrap()
            .contains("...")
    );
    let yaml: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&store.run(&["list", c, "-o", "yaml"]).ok().stdout).unwrap();
    assert_eq!(yaml.as_sequence().unwrap().len(), 3);

    // show
    let shown = store.run(&["show", c, "base"]).ok().stdout;
    let digest = std::fs::read_to_string(store.root().join(c).join("base.tar.gz.sha256")).unwrap()[..64].to_owned();
    for want in [
        "Name:           base",
        "K8s Version:    v1.33.1",
        "Topology:       1 control-plane, 0 workers",
        "local-path-provisioner:",
        &format!("Archive Digest: sha256:{digest} (from sidecar)"),
    ] {
        assert!(shown.contains(want), "show lacks {want:?}:\n{shown}");
    }
    let mut cmd = store.command(&["show", "base", "-o", "json"]);
    cmd.env("KIND_CLUSTER_NAME", c);
    let out = run_timeout(cmd, CMD_TIMEOUT);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["archiveDigest"], format!("sha256:{digest}"));
    assert_eq!(v["topology"]["controlPlanes"], 1);
    let missing = store.run(&["show", c, "nope"]).fails();
    assert!(missing.stderr.contains("not found"), "{}", missing.stderr);

    // prune: plans for each policy, their union, refusal without a TTY, deletion with --yes
    store.run(&["delete", c, "flipped", "nosidecar"]).ok();
    for (n, h) in [("h10", 10), ("h100", 100), ("h200", 200)] {
        copy_snapshot(&store, c, "base", n, h);
    }
    let size = std::fs::metadata(store.bundle(c, "base")).unwrap().len();
    let plan = |args: &[&str]| -> Vec<String> {
        let mut a = vec!["prune", c, "--dry-run"];
        a.extend(args);
        let out = store.run(&a).ok().stdout;
        out.lines()
            .filter(|l| l.trim_start().starts_with("DELETE"))
            .map(|l| l.split_whitespace().nth(1).unwrap().to_owned())
            .collect()
    };
    assert_eq!(plan(&["--keep-last", "3"]), ["h200"]);
    assert_eq!(plan(&["--older-than", "50h"]), ["h100", "h200"]);
    assert_eq!(plan(&["--older-than", "7d"]), ["h200"]);
    assert_eq!(plan(&["--max-size", &format!("{}", size * 3)]), ["h200"]);
    assert_eq!(
        plan(&["--keep-last", "3", "--older-than", "5h"]),
        ["h10", "h100", "h200"]
    );
    assert_eq!(
        plan(&["--keep-last", "0", "--older-than", "1000h"]),
        Vec::<String>::new()
    );
    let planned = store.run(&["prune", c, "--dry-run", "--keep-last", "2"]).ok().stdout;
    assert!(
        planned.contains("Prune plan for cluster") && planned.contains("KEEP") && planned.contains("Total to delete:"),
        "{planned}"
    );

    let refused = store.run(&["prune", c, "--keep-last", "1"]).fails();
    assert!(refused.stderr.contains("stdin is not a terminal"), "{}", refused.stderr);
    assert_eq!(
        store
            .run(&["list", c, "-o", "json"])
            .ok()
            .json()
            .as_array()
            .unwrap()
            .len(),
        4,
        "a refused prune deletes nothing"
    );

    store.run(&["prune", c, "--older-than", "50h", "--yes"]).ok();
    assert_eq!(names(&store.run(&["list", c, "-o", "json"])), ["base", "h10"]);
    assert!(
        !store.root().join(c).join("h200.tar.gz.sha256").exists(),
        "sidecar deleted too"
    );

    let none = store.run(&["prune", c]).fails();
    assert_eq!(none.code, Some(2));
    assert!(
        none.stderr
            .contains("at least one policy flag is required (--keep-last, --older-than, --max-size)"),
        "{}",
        none.stderr
    );

    // delete: unknown names delete nothing; known ones go with their files
    let bad = store.run(&["delete", c, "h10", "nope"]).fails();
    assert!(
        bad.stderr.contains("nope") && bad.stderr.contains("nothing was deleted"),
        "{}",
        bad.stderr
    );
    assert!(store.bundle(c, "h10").exists());
    store.run(&["delete", c, "h10", "base"]).ok();
    assert!(store.files(c).is_empty(), "left: {:?}", store.files(c));
}

#[test]
fn the_store_is_private_and_cleans_up_after_killed_runs() {
    use std::os::unix::fs::PermissionsExt;
    let cluster = Cluster::up("priv", 1, 0);
    let store = Store::new();
    let c = cluster.name.as_str();
    let dir = store.root().join(c);
    // A store and cluster directory someone made world-writable are tightened before use.
    std::fs::create_dir_all(&dir).unwrap();
    for d in [store.root(), dir.as_path()] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    // What a killed create (partial bundle) and a killed restore (staging) left, from a process that is gone,
    // and a partial bundle of a process that still runs (this test).
    let dead = 2_147_483_646; // above any pid_max (at most 2^22 on Linux)
    std::fs::write(dir.join(format!(".gone.tar.gz.partial-{dead}-0123")), b"partial").unwrap();
    std::fs::create_dir(dir.join(format!(".restore.partial-{dead}-0123"))).unwrap();
    let alive = dir.join(format!(".busy.tar.gz.partial-{}-0123", std::process::id()));
    std::fs::write(&alive, b"still being written").unwrap();

    store.run(&["create", c, "snap"]).ok();
    for d in [store.root(), dir.as_path()] {
        let mode = std::fs::metadata(d).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{} is {mode:o}", d.display());
    }
    let files = store.files(c);
    assert!(!files.iter().any(|f| f.contains(&dead.to_string())), "{files:?}");
    assert!(alive.exists(), "a live process's partial file was removed");
    let mode = std::fs::metadata(store.bundle(c, "snap")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // A directory of another user is refused, not used.
    let other = Store::new();
    let theirs = other.root().join(c);
    std::fs::create_dir(&theirs).unwrap();
    std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).expect("the tests run as root (tests/run)");
    let run = other.run(&["create", c, "snap"]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(
        run.stderr.contains("belongs to uid 65534, not to you"),
        "{}",
        run.stderr
    );
    assert!(
        std::fs::read_dir(&theirs).unwrap().next().is_none(),
        "something was written there"
    );
}

/// A local snapshot whose member index lies (what a pull from a hostile remote or a damaged disk can leave) is
/// listed as corrupt with the reason, not ok: a push would refuse it, a pull would copy wrong members from it.
#[test]
fn a_local_snapshot_whose_index_lies_is_listed_corrupt() {
    let store = Store::new();
    fake_snapshot(&store, "c", "x", 4096, 1);
    let dir = store.root().join("c");
    let bundle = std::fs::read(dir.join("x.tar.gz")).unwrap();
    let digest = |b: &[u8]| hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b));
    let index = |second: &str| {
        serde_json::json!({
            "indexVersion": 1, "sha256": digest(&bundle), "size": 4096,
            "members": [
                {"offset": 0, "size": 1024, "sha256": digest(&bundle[..1024]), "holds": "metadata.json", "entries": 1},
                {"offset": 1024, "size": 3072, "sha256": second, "holds": "etcd/snapshot.db", "entries": 1}
            ]
        })
        .to_string()
    };
    let status = || store.run(&["list", "c", "-o", "json"]).ok().json()[0]["status"].clone();
    std::fs::write(dir.join("x.index.json"), index(&digest(&bundle[1024..]))).unwrap();
    assert_eq!(status(), "ok");
    std::fs::write(dir.join("x.index.json"), index(&"ab".repeat(32))).unwrap();
    assert_eq!(status(), "corrupt");
    let table = store.run(&["list", "c"]).ok();
    assert!(table.stderr.contains("member index"), "{}", table.stderr);
}
