//! OCI registry remotes against Debian's docker-registry (distribution 2.8.2) with htpasswd auth and deletes
//! enabled, started per test on loopback.

use std::process::Command;

use crate::distribution::{Auth, Registry};
use crate::util::*;

const USER: &str = "kst";
const PASSWORD: &str = "kst-registry-password-never-printed";

fn start() -> Registry {
    Registry::start(
        Auth::Htpasswd {
            user: USER,
            password: PASSWORD,
        },
        true,
    )
}

fn args(r: &Registry, cmd: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = cmd.iter().map(|s| s.to_string()).collect();
    v.extend([
        "--remote".into(),
        format!("oci://127.0.0.1:{}/kind/snapshots", r.port),
        "--oci-insecure".into(),
    ]);
    v
}

fn docker_config(dir: &std::path::Path, port: u16, password: &str) {
    use base64::Engine;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{password}"));
    std::fs::write(
        dir.join("config.json"),
        format!(r#"{{"auths":{{"127.0.0.1:{port}":{{"auth":"{auth}"}}}}}}"#),
    )
    .unwrap();
}

fn run(store: &Store, a: Vec<String>, env: &[(&str, &str)]) -> Run {
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let r = store.run_env(&a, env);
    assert!(
        !r.stdout.contains(PASSWORD) && !r.stderr.contains(PASSWORD),
        "the password appeared in the output of {a:?}"
    );
    r
}

#[test]
fn push_pull_restore_through_a_registry() {
    let reg = start();
    let cluster = Cluster::up("oci", 1, 0);
    let c = cluster.name.as_str();
    let store = Store::new();
    let docker = tempfile::tempdir().unwrap();
    docker_config(docker.path(), reg.port, PASSWORD);
    let env = [
        ("DOCKER_CONFIG", docker.path().to_str().unwrap()),
        ("REGISTRY_AUTH_FILE", "/nonexistent"),
    ];
    cluster.etcdctl(&cluster.cp(1), &["put", "/registry/test/oci", "at-snapshot"]);
    store.run(&["create", c, "v1"]).ok();

    // Password on stdin.
    let a = args(&reg, &["push", c, "v1", "--oci-username", USER, "--oci-password-stdin"]);
    let r = store.run_stdin(
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
        &[("DOCKER_CONFIG", "/nonexistent")],
        &format!("{PASSWORD}\n"),
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    // Credentials from the Docker config from here on.
    let listed = run(&store, args(&reg, &["list", c, "-o", "json"]), &env).ok().json();
    assert_eq!(listed[0]["name"], "v1");
    assert_eq!(listed[0]["status"], "ok");
    let shown = run(&store, args(&reg, &["show", c, "v1", "-o", "json"]), &env)
        .ok()
        .json();
    let digest = std::fs::read_to_string(store.root().join(c).join("v1.tar.gz.sha256")).unwrap()[..64].to_owned();
    assert_eq!(shown["archiveDigest"], format!("sha256:{digest}"));

    // Standard OCI tools see an artifact with our type, the metadata as config, the bundle as a titled layer.
    let inspect = Command::new("skopeo")
        .args([
            "inspect",
            "--raw",
            "--tls-verify=false",
            "--creds",
            &format!("{USER}:{PASSWORD}"),
        ])
        .arg(format!("docker://127.0.0.1:{}/kind/snapshots/{c}:v1", reg.port))
        .output()
        .expect("skopeo missing: run tests/run");
    let manifest: serde_json::Value = serde_json::from_slice(&inspect.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&inspect.stderr)));
    assert_eq!(manifest["artifactType"], "application/vnd.kubectl-snapshot.bundle.v1");
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.kubectl-snapshot.config.v1+json"
    );
    // Schema-2 bundles: one layer per member, in bundle order, the bundle's sha256 as an annotation.
    let layers = manifest["layers"].as_array().unwrap();
    assert!(
        layers
            .iter()
            .all(|l| l["mediaType"] == "application/vnd.kubectl-snapshot.member.v1.tar+gzip"),
        "{manifest}"
    );
    assert_eq!(
        manifest["annotations"]["io.kubectl-snapshot.bundle.sha256"],
        digest.as_str()
    );
    let bundle_size = std::fs::metadata(store.bundle(c, "v1")).unwrap().len();
    assert_eq!(
        layers.iter().map(|l| l["size"].as_u64().unwrap()).sum::<u64>(),
        bundle_size
    );
    assert_eq!(
        layers[0]["annotations"]["io.kubectl-snapshot.holds"],
        "etcd/snapshot.db"
    );
    assert_eq!(
        layers.last().unwrap()["annotations"]["io.kubectl-snapshot.holds"],
        "metadata.json"
    );
    assert_eq!(manifest["annotations"]["io.kubectl-snapshot.cluster"], c);

    // A teammate restores: pulled from the registry first, verified, restored.
    let teammate = Store::new();
    cluster.etcdctl(&cluster.cp(1), &["put", "/registry/test/oci", "changed"]);
    run(&teammate, args(&reg, &["restore", c, "v1"]), &env).ok();
    assert_eq!(
        cluster
            .etcdctl(&cluster.cp(1), &["get", "/registry/test/oci", "--print-value-only"])
            .trim(),
        "at-snapshot"
    );
    cluster.assert_running();

    // A member corrupted in the registry's storage: the pull is refused and nothing is restored.
    let etcd_member = layers[0]["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_owned();
    let blob = reg.blob(&etcd_member);
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[50] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();
    cluster.etcdctl(&cluster.cp(1), &["put", "/registry/test/oci", "after-corruption"]);
    let third = Store::new();
    let r = run(&third, args(&reg, &["restore", c, "v1"]), &env);
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(r.stderr.to_lowercase().contains("digest"), "{}", r.stderr);
    assert!(third.files(c).is_empty(), "{:?}", third.files(c));
    assert_eq!(
        cluster
            .etcdctl(&cluster.cp(1), &["get", "/registry/test/oci", "--print-value-only"])
            .trim(),
        "after-corruption"
    );

    // Delete by digest removes the tag.
    run(&store, args(&reg, &["delete", c, "v1"]), &env).ok();
    assert!(
        run(&store, args(&reg, &["list", c, "-o", "json"]), &env)
            .ok()
            .json()
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[test]
fn wrong_password_is_refused_without_printing_it() {
    let reg = start();
    let store = Store::new();
    let docker = tempfile::tempdir().unwrap();
    docker_config(docker.path(), reg.port, "kst-wrong-registry-password");
    let r = run(
        &store,
        args(&reg, &["list", "c"]),
        &[
            ("DOCKER_CONFIG", docker.path().to_str().unwrap()),
            ("REGISTRY_AUTH_FILE", "/nonexistent"),
        ],
    );
    assert_eq!(r.code, Some(1));
    assert!(
        r.stderr.contains("access denied") && r.stderr.contains("Docker config"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains(&format!("127.0.0.1:{}", reg.port)), "{}", r.stderr);
    assert!(!r.stderr.contains("kst-wrong-registry-password"));
}

/// A Docker config that is there but unusable is an error naming the file that DOCKER_CONFIG points to, never
/// a silent fall back to anonymous access (which a registry answers with a confusing "denied").
#[test]
fn a_malformed_docker_config_is_an_error_naming_it() {
    let reg = start();
    let store = Store::new();
    let docker = tempfile::tempdir().unwrap();
    let config = docker.path().join("config.json");
    std::fs::write(&config, r#"{"auths": {"127.0.0.1": "#).unwrap();
    let env = [
        ("DOCKER_CONFIG", docker.path().to_str().unwrap()),
        ("REGISTRY_AUTH_FILE", "/nonexistent"),
    ];
    let r = run(&store, args(&reg, &["list", "c"]), &env).fails();
    assert!(
        r.stderr.contains(&config.display().to_string()) && r.stderr.contains("not valid JSON"),
        "{}",
        r.stderr
    );
    // A config for the registry read from DOCKER_CONFIG is named as that file in errors too.
    docker_config(docker.path(), reg.port, "kst-wrong-registry-password");
    let r = run(&store, args(&reg, &["list", "c"]), &env).fails();
    assert!(
        r.stderr.contains(&config.display().to_string()) && r.stderr.contains("access denied"),
        "{}",
        r.stderr
    );
}

#[test]
fn prune_then_pull_through_a_registry() {
    let reg = start();
    let store = Store::new();
    let docker = tempfile::tempdir().unwrap();
    docker_config(docker.path(), reg.port, PASSWORD);
    let env = [
        ("DOCKER_CONFIG", docker.path().to_str().unwrap()),
        ("REGISTRY_AUTH_FILE", "/nonexistent"),
    ];
    let c = "regprune";
    for (name, hours_ago) in [("old", 200), ("mid", 100), ("new", 1)] {
        fake_snapshot(&store, c, name, 5000, hours_ago);
        run(&store, args(&reg, &["push", c, name]), &env).ok();
    }
    // Union of the policies: --keep-last 2 marks old, --older-than 50h marks old and mid.
    let r = run(
        &store,
        args(&reg, &["prune", c, "--keep-last", "2", "--older-than", "50h", "--yes"]),
        &env,
    )
    .ok();
    for line in ["DELETE  old", "DELETE  mid", "KEEP    new"] {
        assert!(r.stdout.contains(line), "plan lacks {line:?}:\n{}", r.stdout);
    }
    let listed = run(&store, args(&reg, &["list", c, "-o", "json"]), &env).ok().json();
    assert_eq!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["new"]
    );
    // The registry itself no longer has the pruned tags, as another OCI client sees it.
    let tags = Command::new("skopeo")
        .args([
            "list-tags",
            "--tls-verify=false",
            "--creds",
            &format!("{USER}:{PASSWORD}"),
        ])
        .arg(format!("docker://127.0.0.1:{}/kind/snapshots/{c}", reg.port))
        .output()
        .expect("skopeo missing: run tests/run");
    let tags: serde_json::Value =
        serde_json::from_slice(&tags.stdout).unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&tags.stderr)));
    assert_eq!(tags["Tags"], serde_json::json!(["new"]));
    // A teammate pulls what is left: the same bytes, verified.
    let teammate = Store::new();
    run(&teammate, args(&reg, &["pull", c, "new"]), &env).ok();
    assert_eq!(
        std::fs::read(teammate.root().join(c).join("new.tar.gz")).unwrap(),
        std::fs::read(store.root().join(c).join("new.tar.gz")).unwrap()
    );
    assert_eq!(
        std::fs::read_to_string(teammate.root().join(c).join("new.tar.gz.sha256")).unwrap(),
        std::fs::read_to_string(store.root().join(c).join("new.tar.gz.sha256")).unwrap()
    );
}
