//! The one node layer: every command kubectl-snapshot runs inside a kind node, and the parser of what each
//! prints. `capture` and `restore` say *what* is done; this module says *how* a kind node is asked for it,
//! by concern: [`cri`] (crictl), [`containerd`] (`ctr`, its configuration), [`batch`] (several reads in one
//! round trip, images in and out), [`etcd`] (etcd's tools inside the etcd container) and [`fs`] (files,
//! directories, the lock's and journal's scripts). Transport is [`Runtime`]. Each parser is unit-tested below on
//! output of the real tool, named with its source.

use std::collections::HashMap;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use tokio::io::AsyncReadExt;

use super::{ClusterError, ExecError, ExecStream, Runtime, argv_of, idempotent};

pub const ETCD_PKI: &str = "/etc/kubernetes/pki/etcd";
/// Where kind's containerd looks for per-registry hosts.toml files (`config_path` of the CRI registry).
pub const CONTAINERD_HOSTS_DIR: &str = "/etc/containerd/certs.d";

/// An error for output a command printed that this layer cannot read.
fn unreadable(node: &str, argv: &[&str], out: &str, why: impl std::fmt::Display) -> ClusterError {
    ExecError {
        node: node.into(),
        command: argv_of(argv),
        code: Some(0),
        stdout: out.chars().take(500).collect(),
        stderr: format!("unexpected output: {why}"),
    }
    .into()
}

mod batch;
mod containerd;
mod cri;
mod etcd;
mod fs;

pub use batch::*;
pub use containerd::*;
pub use cri::*;
pub use etcd::*;
pub use fs::*;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sized_output_is_parsed_and_anything_else_refused() {
        // What the script prints for a 3-byte file, an empty one and a file holding a newline (busybox's
        // `wc -c` pads with spaces).
        let out = b"3\nabc0\n      1\n\n";
        assert_eq!(parse_sized(out, 3), Some(vec![b"abc".to_vec(), vec![], b"\n".to_vec()]));
        assert_eq!(parse_sized(out, 2), None, "trailing bytes");
        assert_eq!(parse_sized(out, 4), None, "a record missing");
        assert_eq!(parse_sized(b"5\nabc", 1), None, "short");
        assert_eq!(parse_sized(b"x\nabc", 1), None, "not a size");
    }

    /// The script itself, run by this machine's `sh` (dash, as in kindest/node): each command's exit code and
    /// outputs come back framed, in order, whatever each printed or however it failed.
    #[test]
    fn commands_run_together_come_back_each_with_its_own_outcome() {
        let cmds: &[&[&str]] = &[
            &["printf", "%s\\n", "one", "two"],
            &["sh", "-c", "echo${IFS}out;echo${IFS}err>&2;exit${IFS}3"],
            &["no-such-tool-here", "x"],
            &["printf", "*"],
            &["true"],
        ];
        let joined: Vec<String> = cmds.iter().map(|c| c.join(" ")).collect();
        let out = std::process::Command::new("sh")
            .args(["-c", RUN_ALL, "sh"])
            .args(&joined)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let frames = parse_frames(&out.stdout, cmds.len()).expect("framed");
        assert_eq!(frames[0], (0, &b"one\ntwo\n"[..], &b""[..]));
        assert_eq!(frames[1], (3, &b"out\n"[..], &b"err\n"[..]));
        assert_eq!(frames[2].0, 127);
        assert!(
            String::from_utf8_lossy(frames[2].2).contains("not found"),
            "{:?}",
            frames[2]
        );
        assert_eq!(frames[3], (0, &b"*"[..], &b""[..]), "never globbed");
        assert_eq!(frames[4], (0, &b""[..], &b""[..]));
        assert_eq!(parse_frames(&out.stdout, cmds.len() + 1), None, "a result missing");
        assert_eq!(parse_frames(&out.stdout, cmds.len() - 1), None, "trailing bytes");
    }

    #[test]
    fn framed_results_are_parsed_by_their_lengths_and_anything_else_refused() {
        // Outputs holding newlines and what looks like a header; busybox's `wc -c` pads with spaces.
        let out = b"0 6 0\na\n1 2\n1       0       4\nerr\n";
        assert_eq!(
            parse_frames(out, 2),
            Some(vec![(0, &b"a\n1 2\n"[..], &b""[..]), (1, &b""[..], &b"err\n"[..])])
        );
        assert_eq!(parse_frames(b"0 5 0\nabc", 1), None, "short");
        assert_eq!(parse_frames(b"0 x 0\n", 1), None, "not a length");
        assert_eq!(parse_frames(b"0 0 0 0\n", 1), None, "a field too many");
        assert_eq!(parse_frames(b"0 0\n", 1), None, "a field missing");
        assert_eq!(parse_frames(b"", 0), Some(vec![]));
    }

    #[test]
    fn the_snapshot_size_line_is_a_number_and_nothing_else() {
        // `wc -c < FILE`: coreutils (kindest/node) prints the number, busybox pads it.
        assert_eq!(parse_size_line(b"20500512"), Some(20_500_512));
        assert_eq!(parse_size_line(b"   22528"), Some(22528));
        assert_eq!(parse_size_line(b""), None);
        assert_eq!(parse_size_line(b"-1"), None);
        assert_eq!(parse_size_line(b"{\"level\":\"info\"}"), None, "a log line is no size");
        assert_eq!(parse_size_line(b"99999999999999999999"), None, "beyond u64");
    }

    #[test]
    fn cat_output_is_split_by_the_declared_sizes_and_nothing_else() {
        assert_eq!(
            split_by_sizes(b"abcdef", &[1, 0, 2, 3]),
            Some(vec![b"a".to_vec(), vec![], b"bc".to_vec(), b"def".to_vec()])
        );
        // A file that grew or shrank since it was listed: nothing is split wrongly.
        assert_eq!(split_by_sizes(b"abcdef", &[1, 2]), None);
        assert_eq!(split_by_sizes(b"abc", &[1, 5]), None);
        assert_eq!(split_by_sizes(b"", &[u64::MAX, 1]), None);
    }

    /// `containerd config dump` of containerd 2.1.9 (Debian unstable's) loading kind's version-2 config.toml:
    /// printed as version 3 by go-toml v2, single-quoted (excerpt).
    const DUMP_V3: &str = "version = 3\nroot = '/var/lib/containerd'\nstate = '/run/containerd'\ntemp = ''\n\
        disabled_plugins = []\n\n[grpc]\n  address = '/run/containerd/containerd.sock'\n  uid = 0\n\n[plugins]\n\
        [plugins.'io.containerd.cri.v1.images']\n    snapshotter = 'overlayfs'\n    disable_snapshot_annotations = true\n\
        discard_unpacked_layers = true\n\n  [plugins.'io.containerd.cri.v1.runtime']\n    enable_selinux = false\n";

    /// containerd 1.7's dump of a version-2 config (double quotes, CRI plugin `io.containerd.grpc.v1.cri`).
    const DUMP_V2: &str = "version = 2\nroot = \"/var/lib/containerd\"\nstate = \"/run/containerd\"\n\n\
        [plugins]\n  [plugins.\"io.containerd.grpc.v1.cri\"]\n    sandbox_image = \"registry.k8s.io/pause:3.10\"\n\
        [plugins.\"io.containerd.grpc.v1.cri\".containerd]\n      discard_unpacked_layers = true\n      snapshotter = \"native\"\n";

    #[test]
    fn containerd_config_v3_single_quotes() {
        let c = parse_containerd_config(DUMP_V3).unwrap();
        assert_eq!(
            c,
            ContainerdConfig {
                root: "/var/lib/containerd".into(),
                snapshotter: "overlayfs".into()
            }
        );
        assert_eq!(
            c.content_blobs(),
            "/var/lib/containerd/io.containerd.content.v1.content/blobs/sha256"
        );
    }

    #[test]
    fn containerd_config_v2_and_a_changed_snapshotter() {
        let c = parse_containerd_config(DUMP_V2).unwrap();
        assert_eq!(c.snapshotter, "native");
        let moved = DUMP_V3
            .replace("'/var/lib/containerd'", "'/data/containerd'")
            .replace("'overlayfs'", "'fuse-overlayfs'");
        let c = parse_containerd_config(&moved).unwrap();
        assert_eq!(
            (c.root.as_str(), c.snapshotter.as_str()),
            ("/data/containerd", "fuse-overlayfs")
        );
    }

    /// containerd 2.3 (kind v0.32+) dumps version 4 (`version/version.go` ConfigVersion = 4); its migration
    /// moves only grpc/ttrpc/debug/metrics into a server section, and the CRI images plugin keeps `snapshotter`
    /// (`internal/cri/config/config.go`, `plugins/cri/images/plugin.go` at v2.3.4).
    #[test]
    fn containerd_config_v4() {
        let v4 = DUMP_V3
            .replace("version = 3", "version = 4")
            .replace("'overlayfs'", "'native'");
        let c = parse_containerd_config(&v4).unwrap();
        assert_eq!(
            (c.root.as_str(), c.snapshotter.as_str()),
            ("/var/lib/containerd", "native")
        );
    }

    #[test]
    fn containerd_config_garbage_is_an_error() {
        assert!(parse_containerd_config("root = '/x\n[[[").is_err());
    }

    /// `crictl ps -o json` (cri-tools cmd/crictl/util.go: protojson, EmitDefaultValues, indent of two) for a
    /// kubelet-created container: the image is the image ID.
    const PS: &str = r#"{
  "containers": [
    {
      "id": "40ce44ebcbcfd3d4c6b1d2ab6e6a0e1d5f2c4b8e9a7f6d5c4b3a2910f8e7d6c5",
      "podSandboxId": "80965bd40966b",
      "metadata": {
        "name": "kindnet-cni",
        "attempt": 0
      },
      "image": {
        "image": "sha256:d5a046d553a7a958ec794d35b1dcf9e6ab666eae200d6d6e6ed4d7b11a391aca",
        "annotations": {},
        "userSpecifiedImage": "",
        "runtimeHandler": ""
      },
      "imageRef": "sha256:d5a046d553a7a958ec794d35b1dcf9e6ab666eae200d6d6e6ed4d7b11a391aca",
      "state": "CONTAINER_RUNNING",
      "createdAt": "1796205344000000000",
      "labels": {},
      "annotations": {}
    },
    {
      "id": "f33d1ec041cc8",
      "podSandboxId": "9fe6bdc5c1783",
      "metadata": {"name": "coredns", "attempt": 1},
      "image": {
        "image": "sha256:52546a367cc9e0d924aa3b190596a9167fa6e53245023b5b5baf0f07e5443969",
        "annotations": {},
        "userSpecifiedImage": "registry.k8s.io/coredns/coredns:v1.12.0",
        "runtimeHandler": ""
      },
      "imageRef": "sha256:52546a367cc9e0d924aa3b190596a9167fa6e53245023b5b5baf0f07e5443969",
      "state": "CONTAINER_RUNNING",
      "createdAt": "1796205344000000000",
      "labels": {},
      "annotations": {}
    }
  ]
}"#;

    /// `crictl images -o json` (same printer; `size` is a uint64, so a string).
    const IMAGES: &str = r#"{
  "images": [
    {
      "id": "sha256:d5a046d553a7a958ec794d35b1dcf9e6ab666eae200d6d6e6ed4d7b11a391aca",
      "repoTags": [
        "docker.io/kindest/kindnetd:v20250512-df8de77b"
      ],
      "repoDigests": [],
      "size": "44375501",
      "username": "",
      "pinned": false
    },
    {
      "id": "sha256:e8281330373e9b25773a7de97b436bc245ca39e12838ac6fde4df2c3765bfb2d",
      "repoTags": [],
      "repoDigests": [
        "docker.io/library/nginx@sha256:9de3b1442976e5bb325a38cdb74de07aa0b4fe2c9d3ca029fccf5272bc901b85"
      ],
      "size": "1049211",
      "username": "",
      "pinned": false
    }
  ]
}"#;

    #[test]
    fn image_ids_resolve_to_names() {
        let ps = parse_ps(PS).unwrap();
        let images = parse_images(IMAGES).unwrap();
        let names: Vec<String> = ps.iter().map(|(_, i, u)| image_name(i, u, &images)).collect();
        assert_eq!(
            names,
            [
                "docker.io/kindest/kindnetd:v20250512-df8de77b",
                "registry.k8s.io/coredns/coredns:v1.12.0"
            ]
        );
        // A digest-only image resolves to its repo digest; an unknown ID stays an ID.
        let digest_only = "sha256:e8281330373e9b25773a7de97b436bc245ca39e12838ac6fde4df2c3765bfb2d";
        assert!(image_name(digest_only, "", &images).starts_with("docker.io/library/nginx@sha256:"));
        let unknown = format!("sha256:{}", "0".repeat(64));
        assert_eq!(image_name(&unknown, "", &images), unknown);
        // Names (an older runtime, or the fixture of old) pass through.
        assert_eq!(image_name("docker.io/x/y:1", "", &[]), "docker.io/x/y:1");
    }

    /// `ctr images ls` of containerd 2.1.9 in a kind-like node (columns padded; the CRI's `sha256:` records).
    const CTR_LS: &str = "REF                                           TYPE                                       DIGEST                                                                  SIZE    PLATFORMS   LABELS\n\
docker.io/kindest/kindnetd:v20250512-df8de77b application/vnd.oci.image.manifest.v1+json sha256:e4063ca9f144e9b42dc78969ea67f496c15ab4f89db0dca78afafd8f81f9ed68 795.0 B linux/amd64 io.cri-containerd.image=managed\n\
registry.k8s.io/pause:3.10                    application/vnd.oci.image.index.v1+json    sha256:9c807a8ca4413dc25c232a82afbe83ad3b268b503a034e32b6dfc26a8fb44eb4 780.0 B linux/amd64 io.cri-containerd.image=managed,io.cri-containerd.pinned=pinned\n\
sha256:d5a046d553a7a958ec794d35b1dcf9e6ab666eae200d6d6e6ed4d7b11a391aca       application/vnd.oci.image.manifest.v1+json sha256:e4063ca9f144e9b42dc78969ea67f496c15ab4f89db0dca78afafd8f81f9ed68 795.0 B linux/amd64 io.cri-containerd.image=managed\n";

    #[test]
    fn ctr_images_ls() {
        let got = parse_images_ls(CTR_LS);
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].name, "registry.k8s.io/pause:3.10");
        assert_eq!(got[1].media_type, "application/vnd.oci.image.index.v1+json");
        assert!(got[0].digest.starts_with("sha256:e4063c"));
        assert_eq!(
            got[1]
                .labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>(),
            ["io.cri-containerd.image=managed", "io.cri-containerd.pinned=pinned"]
        );
        let unlabelled = "REF TYPE DIGEST SIZE PLATFORMS LABELS\nx/y:1 application/vnd.oci.image.manifest.v1+json sha256:ab 1.0 KiB linux/amd64 -\n";
        assert!(parse_images_ls(unlabelled)[0].labels.is_empty());
    }

    #[test]
    fn etcd_outputs() {
        // etcdctl 3.5.30 `endpoint status -w json`
        let status = r#"[{"Endpoint":"https://127.0.0.1:2379","Status":{"header":{"cluster_id":4853638279150342533,"member_id":1033796535975940116,"revision":1234,"raft_term":3},"version":"3.5.30","dbSize":20480,"leader":1033796535975940116,"raftIndex":13,"raftTerm":3,"raftAppliedIndex":13,"dbSizeInUse":16384}}]"#;
        assert_eq!(parse_endpoint_status(status), Some(1234));
        // etcdutl 3.5.30 `snapshot status -w json`; etcdctl 3.5 prints the same after its deprecation notice
        assert_eq!(
            parse_snapshot_status("{\"hash\":1337392018,\"revision\":77,\"totalKey\":7,\"totalSize\":20480}\n"),
            Some(77)
        );
        assert_eq!(
            parse_snapshot_status(
                "Deprecated: Use `etcdutl snapshot status` instead.\n\n{\"hash\":1,\"revision\":5,\"totalKey\":7,\"totalSize\":1}"
            ),
            Some(5)
        );
        assert_eq!(
            parse_tool_version("etcdctl version: 3.5.30\nAPI version: 3.5\n"),
            Some((3, 5))
        );
        assert_eq!(
            parse_tool_version("etcdutl version: 3.6.5\nAPI version: 3.6\n"),
            Some((3, 6))
        );
        assert_eq!(parse_tool_version("garbage"), None);
        assert_eq!(
            bundled_etcdctls("etcd\netcd-3.4.18\netcd-3.5.12\netcdctl\netcdctl-3.4.18\netcdctl-3.5.12\nmigrate\n"),
            ["etcdctl-3.5.12", "etcdctl-3.4.18"]
        );
        // `member list` simple format
        assert_eq!(
            parse_member_list(
                "8e9e05c52164694d, started, kind-control-plane, https://172.18.0.2:2380, https://172.18.0.2:2379, false\n"
            ),
            ["8e9e05c52164694d"]
        );
        assert_eq!(
            parse_df(
                "Filesystem 1024-blocks Used Available Capacity Mounted on\noverlay 263174212 12345 100 5% /var\n"
            ),
            Some(102400)
        );
    }

    #[test]
    fn manifest_flags() {
        let m = "spec:\n  containers:\n  - command:\n    - etcd\n    - --name=kind-control-plane\n    - --initial-advertise-peer-urls=https://172.18.0.2:2380\n";
        let f = parse_manifest_flags(m);
        assert_eq!(f.get("name").map(String::as_str), Some("kind-control-plane"));
        assert_eq!(
            f.get("initial-advertise-peer-urls").map(String::as_str),
            Some("https://172.18.0.2:2380")
        );
    }
}
