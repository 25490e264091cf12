//! The pre-flight gauntlet: every check runs, nothing is changed, and all violations are reported at once.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::bundle::Metadata;
use crate::cluster::node::{self, RestoreTool};
use crate::cluster::{Node, NodeState, Role, Runtime};
use crate::util::human_bytes;

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub message: String,
}

impl Check {
    pub fn pass(name: &'static str, message: impl Into<String>) -> Self {
        Self {
            name,
            ok: true,
            message: message.into(),
        }
    }
    pub fn fail(name: &'static str, message: impl Into<String>) -> Self {
        Self {
            name,
            ok: false,
            message: message.into(),
        }
    }
}

/// What the live cluster looks like, gathered without changing anything.
#[derive(Debug)]
pub struct Live {
    pub nodes: Vec<Node>,
    pub k8s_version: Result<String, String>,
    pub platform: Result<String, String>,
    pub addons: Result<BTreeMap<String, String>, String>,
    /// Per control plane: is its etcd member reachable and healthy?
    pub etcd: Vec<(String, Result<(), String>)>,
    /// Free bytes on the cluster's container root (the nodes' /var volume).
    pub free: Result<u64, String>,
    /// Per control plane: the tool its etcd container restores snapshots with (`None`: it has none).
    pub restore_tools: Vec<(String, Result<Option<RestoreTool>, String>)>,
}

/// Every node and control plane asked at once: each probe is a round trip or more, and none depends on another
/// (but a control plane's restore tool, probed only where its etcd is healthy).
pub async fn gather(rt: &Runtime, nodes: Vec<Node>) -> Live {
    let cps: Vec<&Node> = nodes
        .iter()
        .filter(|n| n.role == Role::ControlPlane && n.state == NodeState::Running)
        .collect();
    let first = cps.first().map(|n| n.name.clone());
    const NO_CP: &str = "no running control-plane node";
    let k8s_version = async {
        match &first {
            Some(n) => node::k8s_version(rt, n).await.map_err(|e| e.to_string()),
            None => Err(NO_CP.to_owned()),
        }
    };
    let free = async {
        match &first {
            Some(n) => node::free_bytes(rt, n).await.map_err(|e| e.to_string()),
            None => Err(NO_CP.to_owned()),
        }
    };
    let platform = async { rt.platform().await.map_err(|e| e.to_string()) };
    let running = futures_util::future::join_all(
        nodes
            .iter()
            .filter(|n| n.role.runs_kubelet() && n.state == NodeState::Running)
            .map(|n| node::running_containers(rt, &n.name)),
    );
    let etcd = futures_util::future::join_all(cps.iter().map(|n| async move {
        let health = node::etcd_health(rt, &n.name).await.map_err(|e| e.to_string());
        let tool = match health {
            Ok(()) => Some(node::etcd_restore_tool(rt, &n.name).await.map_err(|e| e.to_string())),
            Err(_) => None,
        };
        (n.name.clone(), health, tool)
    }));
    let (k8s_version, free, platform, running, etcd) = tokio::join!(k8s_version, free, platform, running, etcd);
    let mut images = Vec::new();
    let mut addons_err = None;
    for r in running {
        match r {
            Ok(cs) => images.extend(cs.into_iter().map(|c| c.image)),
            Err(e) => addons_err = Some(e.to_string()),
        }
    }
    let addons = match addons_err {
        Some(e) => Err(e),
        None => Ok(crate::cluster::addons::detect(images.iter().map(String::as_str))),
    };
    let mut restore_tools = Vec::new();
    let etcd = etcd
        .into_iter()
        .map(|(name, health, tool)| {
            if let Some(t) = tool {
                restore_tools.push((name.clone(), t));
            }
            (name, health)
        })
        .collect();
    Live {
        nodes,
        k8s_version,
        platform,
        addons,
        etcd,
        free,
        restore_tools,
    }
}

/// Whether every control plane's etcd container can restore a snapshot.
fn restore_tools(live: &Live) -> Check {
    let mut problems = Vec::new();
    let mut used = std::collections::BTreeSet::new();
    for (node, tool) in &live.restore_tools {
        match tool {
            Ok(Some(t)) => {
                used.insert(if t.bump_revision { t.program.clone() } else { format!("{} (no --bump-revision: etcd older than 3.5.10)", t.program) });
            }
            Ok(None) => problems.push(format!(
                "the etcd container on {node} has no tool that can restore a snapshot: no etcdutl, and no etcdctl of 3.5 or older \
                 (3.6 removed `etcdctl snapshot restore`); use an etcd image that carries etcdutl (etcd's own, or registry.k8s.io/etcd:3.6.5-0 and later)"
            )),
            Err(e) => problems.push(format!("cannot probe the etcd tools on {node}: {}", first_line(e))),
        }
    }
    if !problems.is_empty() {
        Check::fail("etcd restore tool", problems.join("; "))
    } else if used.is_empty() {
        Check::fail("etcd restore tool", "no control plane with a healthy etcd to probe")
    } else {
        Check::pass("etcd restore tool", used.into_iter().collect::<Vec<_>>().join(", "))
    }
}

/// Checks of the live cluster against a snapshot's metadata, in the order they are shown.
pub fn compat(meta: &Metadata, live: &Live, min_free: u64) -> Vec<Check> {
    vec![
        running(live),
        disk_space(live, min_free),
        same(
            "k8s version",
            &meta.k8s_version,
            &live.k8s_version,
            "the live k8s version",
        ),
        topology(meta, &live.nodes),
        restore_tools(live),
        addons(meta, live),
        same("platform", &meta.platform, &live.platform, "the live platform"),
    ]
}

/// Cluster running: every node up, etcd healthy on every control plane.
fn running(live: &Live) -> Check {
    let down = (live.nodes.iter())
        .filter(|n| n.state != NodeState::Running)
        .map(|n| format!("node {} is {}", n.name, n.state));
    let sick = live.etcd.iter().filter_map(|(n, r)| {
        r.as_ref()
            .err()
            .map(|e| format!("etcd on {n} is not reachable: {}", first_line(e)))
    });
    let mut why: Vec<String> = down.chain(sick).collect();
    if live.nodes.is_empty() {
        return Check::fail("cluster running", "cluster not running: it has no nodes");
    }
    if live.etcd.is_empty() {
        why.push("no running control-plane node".into());
    }
    if why.is_empty() {
        Check::pass(
            "cluster running",
            format!("{} nodes running, etcd healthy", live.nodes.len()),
        )
    } else {
        Check::fail("cluster running", format!("cluster not running: {}", why.join("; ")))
    }
}

/// Disk space on the container root.
fn disk_space(live: &Live, min_free: u64) -> Check {
    match &live.free {
        Ok(free) if *free >= min_free => Check::pass("disk space", format!("{} free", human_bytes(*free))),
        Ok(free) => Check::fail(
            "disk space",
            format!(
                "not enough disk space: {} free on the cluster's container root, {} required (--min-free-space)",
                human_bytes(*free),
                human_bytes(min_free)
            ),
        ),
        Err(e) => Check::fail(
            "disk space",
            format!("cannot measure free disk space: {}", first_line(e)),
        ),
    }
}

/// A value the snapshot recorded, the same live (`what`: how the live value is named when it cannot be read).
fn same(name: &'static str, snapshot: &str, live: &Result<String, String>, what: &str) -> Check {
    match live {
        Ok(v) if v == snapshot => Check::pass(name, v.clone()),
        Ok(v) => Check::fail(name, format!("{name} mismatch: snapshot={snapshot}, live={v}")),
        Err(e) => Check::fail(name, format!("cannot read {what}: {}", first_line(e))),
    }
}

/// Every addon at the version the snapshot recorded, none missing or added.
fn addons(meta: &Metadata, live: &Live) -> Check {
    let addons = match &live.addons {
        Ok(addons) => addons,
        Err(e) => {
            return Check::fail(
                "addons",
                format!("cannot detect live addon versions: {}", first_line(e)),
            );
        }
    };
    let mut names: Vec<&String> = meta.addons.keys().chain(addons.keys()).collect();
    names.sort();
    names.dedup();
    let diffs: Vec<String> = names
        .into_iter()
        .filter_map(|a| {
            let (s, l) = (meta.addons.get(a), addons.get(a));
            (s != l).then(|| {
                format!(
                    "addon version mismatch: {a} snapshot={}, live={}",
                    s.map_or("absent", String::as_str),
                    l.map_or("absent", String::as_str)
                )
            })
        })
        .collect();
    if diffs.is_empty() {
        Check::pass("addons", meta.addons_summary())
    } else {
        Check::fail("addons", diffs.join("; "))
    }
}

/// When no metadata can be read at all, the compatibility checks cannot run: say so.
pub fn compat_unavailable() -> Vec<Check> {
    vec![Check::fail(
        "schema version",
        "no readable metadata: compatibility cannot be checked",
    )]
}

fn topology(meta: &Metadata, nodes: &[Node]) -> Check {
    let kubelet = crate::cluster::kubelet_nodes(nodes);
    let snap: Vec<&crate::bundle::metadata::NodeInfo> = meta
        .topology
        .nodes
        .iter()
        .filter(|n| n.role == "control-plane" || n.role == "worker")
        .collect();
    if kubelet.len() != snap.len() {
        return Check::fail(
            "topology",
            format!(
                "topology mismatch: snapshot={} nodes, live={} nodes",
                snap.len(),
                kubelet.len()
            ),
        );
    }
    let cps = kubelet.iter().filter(|n| n.role == Role::ControlPlane).count();
    if cps != meta.topology.control_planes {
        return Check::fail(
            "topology",
            format!(
                "topology mismatch: snapshot={} control planes, live={cps} control planes",
                meta.topology.control_planes
            ),
        );
    }
    // etcd member names and PV node affinity are node names: they must match one for one.
    let mut live: Vec<(String, &str)> = kubelet.iter().map(|n| (n.name.clone(), n.role.as_str())).collect();
    let mut want: Vec<(String, &str)> = snap.iter().map(|n| (n.name.clone(), n.role.as_str())).collect();
    live.sort();
    want.sort();
    if live != want {
        let show = |v: &[(String, &str)]| {
            v.iter()
                .map(|(n, r)| format!("{n} ({r})"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        return Check::fail(
            "topology",
            format!(
                "topology mismatch: snapshot nodes {}, live nodes {}",
                show(&want),
                show(&live)
            ),
        );
    }
    Check::pass("topology", meta.topology_summary())
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn node(name: &str, role: Role) -> Node {
        Node {
            name: name.into(),
            id: format!("id-{name}"),
            role,
            image: "kindest/node:v1.33.1".into(),
            state: NodeState::Running,
        }
    }

    /// A two-node cluster's snapshot (control plane, worker, load balancer not counted) and the live cluster
    /// it was taken of, as `gather` would find it.
    pub(in crate::restore) fn matching() -> (Metadata, Live) {
        let meta = Metadata::from_json(
            serde_json::json!({
                "schemaVersion": 2, "name": "s", "cluster": "kind", "created": "2026-12-01T00:00:00Z",
                "toolVersion": "test", "k8sVersion": "v1.33.1", "nodeImage": "kindest/node:v1.33.1",
                "provider": "docker", "platform": "linux/amd64",
                "topology": {"controlPlanes": 1, "workers": 1, "loadBalancer": false, "nodes": [
                    {"name": "kind-control-plane", "role": "control-plane", "containerId": "a", "image": "i"},
                    {"name": "kind-worker", "role": "worker", "containerId": "b", "image": "i"}
                ]},
                "addons": {"coredns": "v1.12.0", "kindnetd": "v20250512"},
                "etcd": {"node": "kind-control-plane", "image": "i", "size": 1, "digest": "sha256:0"},
                "images": {"digest": "sha256:0", "size": 0, "blobs": 0, "nodes": {}},
                "pvs": {"digest": "sha256:0", "size": 0, "files": 0, "nodes": {}}
            })
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        let live = Live {
            nodes: vec![
                node("kind-control-plane", Role::ControlPlane),
                node("kind-worker", Role::Worker),
            ],
            k8s_version: Ok("v1.33.1".into()),
            platform: Ok("linux/amd64".into()),
            addons: Ok(meta.addons.clone()),
            etcd: vec![("kind-control-plane".into(), Ok(()))],
            free: Ok(20 * GIB),
            restore_tools: vec![(
                "kind-control-plane".into(),
                Ok(Some(RestoreTool {
                    program: "etcdutl".into(),
                    bump_revision: true,
                })),
            )],
        };
        (meta, live)
    }

    fn failed(checks: &[Check]) -> Vec<(&'static str, &str)> {
        checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| (c.name, c.message.as_str()))
            .collect()
    }

    #[test]
    fn a_cluster_like_the_snapshot_passes_every_check() {
        let (meta, live) = matching();
        let checks = compat(&meta, &live, 8 * GIB);
        assert_eq!(failed(&checks), []);
        assert_eq!(checks.len(), 7, "{checks:?}");
    }

    #[test]
    fn each_difference_fails_its_own_check_and_only_it() {
        type Change = (&'static str, &'static str, fn(&mut Live));
        let changes: &[Change] = &[
            ("cluster running", "node kind-worker is exited", |l| {
                l.nodes[1].state = NodeState::Other("exited".into())
            }),
            (
                "cluster running",
                "etcd on kind-control-plane is not reachable: connection refused",
                |l| l.etcd[0].1 = Err("connection refused\nmore".into()),
            ),
            ("disk space", "not enough disk space: 1.00 GiB free", |l| {
                l.free = Ok(GIB)
            }),
            ("k8s version", "snapshot=v1.33.1, live=v1.34.0", |l| {
                l.k8s_version = Ok("v1.34.0".into())
            }),
            ("topology", "snapshot=2 nodes, live=3 nodes", |l| {
                l.nodes.push(node("kind-worker2", Role::Worker))
            }),
            (
                "topology",
                "snapshot nodes kind-control-plane (control-plane), kind-worker (worker)",
                |l| l.nodes[1].name = "other-worker".into(),
            ),
            ("etcd restore tool", "has no tool that can restore a snapshot", |l| {
                l.restore_tools[0].1 = Ok(None)
            }),
            (
                "addons",
                "addon version mismatch: coredns snapshot=v1.12.0, live=v1.13.0",
                |l| {
                    if let Ok(a) = l.addons.as_mut() {
                        a.insert("coredns".into(), "v1.13.0".into());
                    }
                },
            ),
            (
                "addons",
                "addon version mismatch: metallb snapshot=absent, live=v0.15.2",
                |l| {
                    if let Ok(a) = l.addons.as_mut() {
                        a.insert("metallb".into(), "v0.15.2".into());
                    }
                },
            ),
            ("platform", "snapshot=linux/amd64, live=linux/arm64", |l| {
                l.platform = Ok("linux/arm64".into())
            }),
        ];
        for (check, says, change) in changes {
            let (meta, mut live) = matching();
            change(&mut live);
            let failed = failed(&compat(&meta, &live, 8 * GIB))
                .into_iter()
                .map(|(n, m)| (n, m.to_owned()))
                .collect::<Vec<_>>();
            assert_eq!(failed.len(), 1, "{check}: {failed:?}");
            assert_eq!(failed[0].0, *check);
            assert!(failed[0].1.contains(says), "{check}: {:?} lacks {says:?}", failed[0].1);
        }
    }

    #[test]
    fn every_violation_is_reported_at_once() {
        let (meta, mut live) = matching();
        live.k8s_version = Ok("v1.34.0".into());
        live.platform = Err("daemon gone".into());
        live.free = Err("df: not found".into());
        live.nodes.clear();
        live.etcd.clear();
        live.restore_tools.clear();
        let names: Vec<&str> = failed(&compat(&meta, &live, 8 * GIB))
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(
            names,
            [
                "cluster running",
                "disk space",
                "k8s version",
                "topology",
                "etcd restore tool",
                "platform"
            ]
        );
    }
}
