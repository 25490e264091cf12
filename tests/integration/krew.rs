//! The krew manifest: its schema (as krew's validator checks it), and each platform's archive built by
//! krew/package installed the way krew installs it (`files` globs moved into place, `bin` present, a plain
//! LICENSE file as krew-index CI requires). Where krew itself is installed, the release workflow also runs
//! `kubectl krew install --manifest --archive`.

use std::path::Path;
use std::process::Command;

use crate::util::*;

const PLATFORMS: &[(&str, &str, &str)] = &[
    ("linux", "amd64", "x86_64-unknown-linux-musl"),
    ("linux", "arm64", "aarch64-unknown-linux-musl"),
    ("darwin", "amd64", "x86_64-apple-darwin"),
    ("darwin", "arm64", "aarch64-apple-darwin"),
    ("windows", "amd64", "x86_64-pc-windows-msvc"),
];

fn yaml(path: &Path) -> serde_yaml_ng::Value {
    serde_yaml_ng::from_str(&std::fs::read_to_string(path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn s<'a>(v: &'a serde_yaml_ng::Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or_else(|| panic!("missing string {key}"))
}

/// krew's validation rules for a manifest (krew `internal/index/validation`), as far as they apply.
fn validate(m: &serde_yaml_ng::Value) {
    assert_eq!(s(m, "apiVersion"), "krew.googlecontainertools.github.com/v1alpha2");
    assert_eq!(s(m, "kind"), "Plugin");
    let name = s(&m["metadata"], "name");
    assert!(name == "snapshot" && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'));
    let spec = &m["spec"];
    let version = s(spec, "version");
    let parts: Vec<&str> = version
        .strip_prefix('v')
        .expect("version starts with v")
        .split('.')
        .collect();
    assert!(
        parts.len() == 3 && parts.iter().all(|p| p.parse::<u32>().is_ok()),
        "not semver: {version}"
    );
    assert!(
        !s(spec, "shortDescription").contains('\n'),
        "shortDescription is one line"
    );
    assert!(s(spec, "description").len() > 50);
    let platforms = spec["platforms"].as_sequence().expect("platforms");
    let mut seen = Vec::new();
    for p in platforms {
        let labels = &p["selector"]["matchLabels"];
        let pair = (s(labels, "os").to_owned(), s(labels, "arch").to_owned());
        assert!(
            PLATFORMS
                .iter()
                .any(|(o, a, _)| (*o, *a) == (pair.0.as_str(), pair.1.as_str())),
            "unexpected platform {pair:?}"
        );
        assert!(!seen.contains(&pair), "overlapping selectors for {pair:?}");
        seen.push(pair.clone());
        let uri = s(p, "uri");
        let sha = s(p, "sha256");
        assert!(
            sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit()),
            "{uri}: bad sha256"
        );
        let bin = s(p, "bin");
        if pair.0 == "windows" {
            assert!(uri.ends_with(".zip") && bin.ends_with(".exe"), "{uri}");
        } else {
            assert!(uri.ends_with(".tar.gz") && bin == "kubectl-snapshot", "{uri}");
            assert!(
                p["files"].as_sequence().is_some_and(|f| !f.is_empty()),
                "{uri}: tarballs have a top-level directory, so need files:"
            );
        }
    }
    assert_eq!(seen.len(), PLATFORMS.len(), "every platform is in the manifest");
}

/// `*` matches within one path segment, as krew's globs do.
fn glob(pattern: &str, path: &str) -> bool {
    let (p, q): (Vec<&str>, Vec<&str>) = (pattern.split('/').collect(), path.split('/').collect());
    p.len() == q.len()
        && p.iter().zip(&q).all(|(pat, seg)| match pat.split_once('*') {
            None => pat == seg,
            Some((a, b)) => seg.len() >= a.len() + b.len() && seg.starts_with(a) && seg.ends_with(b),
        })
}

fn files_under(dir: &Path, base: &Path, out: &mut Vec<String>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.path().is_dir() {
            files_under(&e.path(), base, out);
        } else {
            out.push(e.path().strip_prefix(base).unwrap().to_string_lossy().into_owned());
        }
    }
}

/// Installs `archive` per the platform's entry; returns the install directory.
fn krew_install(platform: &serde_yaml_ng::Value, archive: &Path) -> tempfile::TempDir {
    let extracted = tempfile::tempdir().unwrap();
    if archive.extension().is_some_and(|e| e == "zip") {
        let ok = Command::new("python3")
            .args(["-m", "zipfile", "-e"])
            .arg(archive)
            .arg(extracted.path())
            .status()
            .unwrap();
        assert!(ok.success());
    } else {
        let f = std::fs::File::open(archive).unwrap();
        tar::Archive::new(flate2::read::GzDecoder::new(f))
            .unpack(extracted.path())
            .unwrap();
    }
    let install = tempfile::tempdir().unwrap();
    let mut all = Vec::new();
    files_under(extracted.path(), extracted.path(), &mut all);
    match platform["files"].as_sequence() {
        None => {
            for f in &all {
                let to = install.path().join(f);
                std::fs::create_dir_all(to.parent().unwrap()).unwrap();
                std::fs::rename(extracted.path().join(f), to).unwrap();
            }
        }
        Some(files) => {
            for rule in files {
                let (from, to) = (s(rule, "from"), s(rule, "to"));
                let matched: Vec<&String> = all.iter().filter(|f| glob(from, f)).collect();
                assert!(
                    !matched.is_empty(),
                    "files: {from} matches nothing in {}",
                    archive.display()
                );
                for m in matched {
                    let dest = install.path().join(to).join(Path::new(m).file_name().unwrap());
                    std::fs::rename(extracted.path().join(m), dest).unwrap();
                }
            }
        }
    }
    let bin = install.path().join(s(platform, "bin"));
    assert!(
        bin.is_file(),
        "bin {} missing after install of {}",
        s(platform, "bin"),
        archive.display()
    );
    // krew-index CI: a license file named exactly like this must be installed.
    assert!(
        install.path().join("LICENSE").is_file(),
        "no LICENSE installed from {}",
        archive.display()
    );
    install
}

#[test]
fn manifest_schema_and_archive_layouts() {
    let root = repo();
    validate(&yaml(&root.join("krew/snapshot.yaml")));
    let dist = tempfile::tempdir().unwrap();
    // A stripped copy of the test build: the same program, without 150 MB of debug info to compress five times.
    let stripped = dist.path().join("kubectl-snapshot.stripped");
    let bin = match Command::new("strip").arg("-o").arg(&stripped).arg(BIN).status() {
        Ok(s) if s.success() => stripped.display().to_string(),
        _ => BIN.to_owned(),
    };
    for (_, _, target) in PLATFORMS {
        let out = Command::new(root.join("krew/package"))
            .args([*target, bin.as_str()])
            .arg(dist.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "krew/package {target}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = Command::new(root.join("krew/render"))
        .args(["v0.1.0"])
        .arg(dist.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "krew/render: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rendered: serde_yaml_ng::Value = serde_yaml_ng::from_slice(&out.stdout).unwrap();
    validate(&rendered);
    // The committed manifest is the template rendered: the same but for its placeholder digests.
    let mut committed = yaml(&root.join("krew/snapshot.yaml"));
    let mut expected = rendered.clone();
    for m in [&mut committed, &mut expected] {
        for p in m["spec"]["platforms"].as_sequence_mut().unwrap() {
            p["sha256"] = serde_yaml_ng::Value::Null;
        }
    }
    assert_eq!(committed, expected, "krew/snapshot.yaml and .krew.yaml disagree");

    for p in rendered["spec"]["platforms"].as_sequence().unwrap() {
        let uri = s(p, "uri");
        let archive = dist.path().join(uri.rsplit('/').next().unwrap());
        let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(std::fs::read(&archive).unwrap()));
        assert_eq!(s(p, "sha256"), sha);
        let sidecar = std::fs::read_to_string(format!("{}.sha256", archive.display())).unwrap();
        assert!(sidecar.starts_with(&sha));
        let install = krew_install(p, &archive);
        let labels = &p["selector"]["matchLabels"];
        if (s(labels, "os"), s(labels, "arch"))
            == ("linux", if cfg!(target_arch = "x86_64") { "amd64" } else { "arm64" })
        {
            let v = Command::new(install.path().join("kubectl-snapshot"))
                .arg("--version")
                .output()
                .unwrap();
            assert!(
                String::from_utf8_lossy(&v.stdout).starts_with("kubectl-snapshot "),
                "installed binary does not run"
            );
        }
    }
}

#[test]
fn globs_match_like_krew() {
    assert!(glob(
        "kubectl-snapshot-*/kubectl-snapshot",
        "kubectl-snapshot-x86_64-apple-darwin/kubectl-snapshot"
    ));
    assert!(!glob("kubectl-snapshot-*/kubectl-snapshot", "kubectl-snapshot"));
    assert!(!glob("kubectl-snapshot-*/LICENSE", "other/LICENSE"));
}
