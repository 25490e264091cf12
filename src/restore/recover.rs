//! Finishing or undoing what an operation left in the nodes, from their journals: what `restore` does when a
//! step fails, and what `resume` does after a process was killed.
//!
//! | journal found                  | `resume`                                              | `resume --rollback`          |
//! |--------------------------------|-------------------------------------------------------|------------------------------|
//! | none                           | start kubelet on every node                           | refused: nothing to undo     |
//! | create (any phase)             | thaw paused nodes / start kubelet, remove its leftovers | same                       |
//! | restore, preparing             | remove the staged data (nothing live was changed)     | same                         |
//! | restore, committed             | quiesce, complete every rename, restart               | quiesce, undo every rename, restart |
//! | restore, done                  | start kubelet                                         | quiesce, undo every rename, restart |
//! | restore, rolling-back          | quiesce, undo every rename, restart                   | same                         |
//!
//! The lock node's journal decides (it is written last on the way forward, first on the way back, and removed
//! last).

use std::collections::BTreeMap;

use crate::cluster::journal::{self, Journal, Lock, Op, Phase, Quiesce};
use crate::cluster::{Node, NodeState, Role, Runtime, kubelet_nodes, node};

use super::{RestoreError, wait_healthy};

/// The journals' nodes with the lock node last.
fn lock_node_last<'a>(journals: &'a BTreeMap<String, Journal>, lock_at: &str) -> Vec<(&'a String, &'a Journal)> {
    let mut v: Vec<_> = journals.iter().collect();
    v.sort_by_key(|(n, _)| n.as_str() == lock_at);
    v
}

/// Removes what an uncommitted restore staged, and its journals (the lock node's last). Best effort: a journal
/// that could not be cleaned stays for `resume`.
pub async fn discard(rt: &Runtime, nodes: &[Node], journals: &BTreeMap<String, Journal>) {
    let _ = roll_back(rt, nodes, journals).await;
}

/// Undoes every node's switch and removes the journals, the lock node's last; first marks every journal
/// rolling-back (the lock node's first), so that an interruption is only ever finished backwards.
/// A completed restore's live data has been written to since: its rollback keeps it aside
/// (`<live>.old-<time>`, see [`journal::Switch::keep_live`]), recorded in the journal before anything moves.
/// Returns where it is kept, per node.
async fn roll_back(
    rt: &Runtime,
    nodes: &[Node],
    journals: &BTreeMap<String, Journal>,
) -> Result<Vec<(String, String)>, RestoreError> {
    let lock_at = journal::lock_node(nodes).map(|n| n.name.clone()).unwrap_or_default();
    let stamp = jiff::Timestamp::now().strftime("%Y%m%dT%H%M%SZ").to_string();
    let mut journals = journals.clone();
    for j in journals.values_mut().filter(|j| j.phase == Phase::Done) {
        for s in &mut j.switches {
            s.keep_live = Some(format!("{}.old-{stamp}", s.live));
        }
    }
    let order = lock_node_last(&journals, &lock_at);
    for (n, j) in order.iter().rev() {
        if j.phase != Phase::Preparing && j.phase != Phase::RollingBack {
            let mut j = (*j).clone();
            j.phase = Phase::RollingBack;
            j.write(rt, n).await?;
        }
    }
    let mut errors = Vec::new();
    for (n, j) in &order {
        if let Err(e) = clean(rt, n, j, journal::backward).await {
            errors.push((n.to_string(), e));
        }
    }
    if !errors.is_empty() {
        return Err(RestoreError::UndoFailed { failures: errors });
    }
    // What is kept, as it is now (also after an interrupted rollback that had moved it already).
    let mut kept = Vec::new();
    for (n, j) in &order {
        for k in j.switches.iter().filter_map(|s| s.keep_live.as_deref()) {
            if rt.path_exists(n, k).await? {
                kept.push(((*n).clone(), k.to_owned()));
            }
        }
    }
    for (n, _) in &order {
        Journal::remove(rt, n).await?;
    }
    Ok(kept)
}

/// Applies `plan` to a node's switches and removes its leftovers.
async fn clean(rt: &Runtime, node_name: &str, j: &Journal, plan: journal::SwitchPlan) -> Result<(), RestoreError> {
    journal::apply(rt, node_name, &j.switches, plan).await?;
    let left: Vec<&str> = j.leftovers.iter().map(String::as_str).collect();
    node::remove_all(rt, node_name, &left).await?;
    Ok(())
}

/// Undoes a committed restore on every node (already quiesced, or partly), then restarts the cluster.
/// Returns where what was live is kept, per node (see [`roll_back`]).
pub async fn undo(
    rt: &Runtime,
    nodes: &[Node],
    journals: &BTreeMap<String, Journal>,
) -> Result<Vec<(String, String)>, RestoreError> {
    let kept = roll_back(rt, nodes, journals).await?;
    restart(rt, nodes).await?;
    Ok(kept)
}

async fn restart(rt: &Runtime, nodes: &[Node]) -> Result<(), RestoreError> {
    let all: Vec<String> = kubelet_nodes(nodes).into_iter().map(|n| n.name.clone()).collect();
    crate::cluster::quiesce::resume_nodes(rt, nodes, &all).await?;
    let cps: Vec<&Node> = nodes.iter().filter(|n| n.role == Role::ControlPlane).collect();
    wait_healthy(rt, &cps).await
}

async fn quiesce_all(rt: &Runtime, nodes: &[Node]) -> Result<(), RestoreError> {
    let kubelet = kubelet_nodes(nodes);
    for n in kubelet
        .iter()
        .filter(|n| n.role == Role::Worker)
        .chain(kubelet.iter().filter(|n| n.role == Role::ControlPlane).rev())
    {
        node::quiesce(rt, &n.name).await?;
    }
    Ok(())
}

/// What `resume` did.
#[derive(Debug, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub actions: Vec<String>,
    /// Where a rollback kept the data that was live before it (`node:path`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kept: Vec<String>,
    /// Every copy the nodes keep once resume is done (what the last restore or a rollback moved aside), and
    /// its size: the disk it takes, and what `resume --rollback` or a person could bring back.
    pub kept_on_nodes: Vec<KeptCopy>,
}

/// A copy of data a restore or rollback replaced, kept on a node.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KeptCopy {
    pub node: String,
    pub path: String,
    pub size: u64,
}

impl Report {
    fn rolled_back(&mut self, snapshot: &str, kept: &[(String, String)]) {
        self.actions.push(format!(
            "rolled back the restore of {snapshot:?}: etcd data and volumes are the ones from before it"
        ));
        self.kept = kept.iter().map(|(n, p)| format!("{n}:{p}")).collect();
        if !kept.is_empty() {
            self.actions
                .push(format!("what was live until now is kept in {}", self.kept.join(", ")));
        }
    }
}

/// `resume [--rollback]`: thaws paused nodes, then finishes or undoes what the journals record, and restarts
/// the cluster.
/// `yes`: a completed restore may be rolled back (else [`RestoreError::ConfirmRollback`] names it first).
pub async fn resume(rt: &Runtime, cluster: &str, rollback: bool, yes: bool) -> Result<Report, RestoreError> {
    let mut report = Report::default();
    let nodes = rt.nodes(cluster).await?;
    let kubelet: Vec<&Node> = kubelet_nodes(&nodes);
    if let Some(n) = kubelet
        .iter()
        .find(|n| !matches!(n.state, NodeState::Running | NodeState::Paused))
    {
        return Err(crate::cluster::ClusterError::NodeNotRunning {
            node: n.name.clone(),
            state: n.state.to_string(),
        }
        .into());
    }
    let lock_at = journal::lock_node(&nodes)
        .ok_or_else(|| RestoreError::Lock(journal::LockError::NoControlPlane(cluster.to_owned())))?
        .name
        .clone();
    // A live holder (another create, restore or resume) is never interfered with, paused nodes or not.
    if let Some(h) = journal::read_holder(rt, &lock_at).await?
        && !h.is_dead()
    {
        return Err(journal::LockError::Held {
            cluster: cluster.to_owned(),
            node: lock_at,
            holder: Box::new(h),
        }
        .into());
    }
    let mut journals = BTreeMap::new();
    for n in &kubelet {
        if let Some(j) = Journal::read(rt, &n.name).await? {
            journals.insert(n.name.clone(), j);
        }
    }
    // Thaw first (control planes first, as etcd needs its quorum): exec and the lock need running nodes.
    let paused: Vec<&&Node> = kubelet
        .iter()
        .filter(|n| n.role == Role::ControlPlane)
        .chain(kubelet.iter().filter(|n| n.role != Role::ControlPlane))
        .filter(|n| n.state == NodeState::Paused)
        .collect();
    for n in &paused {
        rt.unpause(&n.name).await?;
        report.actions.push(format!("thawed {}", n.name));
    }
    let nodes = rt.nodes(cluster).await?;
    let lock = Lock::acquire(
        rt,
        cluster,
        &lock_at,
        if rollback { "resume --rollback" } else { "resume" },
    )
    .await?;
    let result = resume_locked(rt, &nodes, &lock_at, journals, (rollback, yes), &mut report).await;
    if result.is_ok() {
        let mut lives = vec![super::etcd::LIVE];
        lives.extend_from_slice(crate::bundle::PV_ROOTS);
        for n in kubelet_nodes(&nodes) {
            for (path, size) in node::kept_copies(rt, &n.name, &lives).await.unwrap_or_default() {
                report.kept_on_nodes.push(KeptCopy {
                    node: n.name.clone(),
                    path,
                    size,
                });
            }
        }
    }
    lock.release().await;
    result.map(|()| report)
}

/// Interrupted creates: what they left in each node removed (the nodes are resumed by the caller).
async fn clean_after_creates(
    rt: &Runtime,
    creates: &BTreeMap<String, Journal>,
    report: &mut Report,
) -> Result<(), RestoreError> {
    for (n, j) in creates {
        clean(rt, n, j, journal::backward).await?;
        Journal::remove(rt, n).await?;
        let how = match j.quiesce {
            Some(Quiesce::Pause) => "it had frozen the node",
            Some(Quiesce::Stop) => "it had stopped the node's kubelet",
            None => "it had not quiesced the node",
        };
        report.actions.push(format!(
            "{n}: cleaned up after an interrupted create ({how}; {})",
            j.holder.describe()
        ));
    }
    Ok(())
}

/// A committed restore completed: every node switched forward, restarted, its journal marked done and its
/// leftovers removed.
async fn complete(rt: &Runtime, nodes: &[Node], restores: &BTreeMap<String, Journal>) -> Result<(), RestoreError> {
    quiesce_all(rt, nodes).await?;
    for (n, j) in restores {
        journal::apply(rt, n, &j.switches, journal::forward).await?;
    }
    restart(rt, nodes).await?;
    for (n, j) in restores {
        let mut j = j.clone();
        j.phase = Phase::Done;
        j.write(rt, n).await?;
        let left: Vec<&str> = j.leftovers.iter().map(String::as_str).collect();
        node::remove_all(rt, n, &left).await?;
    }
    Ok(())
}

/// "started 2026-12-05 10:00:00 UTC, 5m ago".
fn started_ago(t: jiff::Timestamp) -> String {
    let ago = jiff::Timestamp::now().duration_since(t).as_secs().max(0) as u64;
    format!(
        "started {}, {} ago",
        t.strftime("%Y-%m-%d %H:%M:%S UTC"),
        humantime::format_duration(std::time::Duration::from_secs(ago))
    )
}

async fn resume_locked(
    rt: &Runtime,
    nodes: &[Node],
    lock_at: &str,
    journals: BTreeMap<String, Journal>,
    (rollback, yes): (bool, bool),
    report: &mut Report,
) -> Result<(), RestoreError> {
    let (creates, restores): (BTreeMap<_, _>, BTreeMap<_, _>) =
        journals.into_iter().partition(|(_, j)| j.op == Op::Create);
    clean_after_creates(rt, &creates, report).await?;
    if rollback && restores.is_empty() {
        return Err(RestoreError::NothingToRollBack);
    }
    let decides = restores
        .get(lock_at)
        .or_else(|| restores.values().find(|j| j.phase == Phase::RollingBack))
        .map(|j| j.phase);
    let snapshot = restores.values().next().map(|j| j.snapshot.clone()).unwrap_or_default();
    match decides {
        None if restores.is_empty() => {}
        // Before the commit (or the lock node's journal already removed by a rollback): undo.
        None | Some(Phase::Preparing) => {
            roll_back(rt, nodes, &restores).await?;
            report.actions.push(format!(
                "removed what an interrupted restore of {snapshot:?} had staged or switched: etcd data and volumes are the ones from before it"
            ));
        }
        Some(Phase::Done) if rollback && !yes => {
            let since = restores.values().next().map(|j| j.holder.since);
            return Err(RestoreError::ConfirmRollback {
                snapshot,
                since: since.map_or_else(String::new, started_ago),
            });
        }
        Some(Phase::RollingBack) => {
            quiesce_all(rt, nodes).await?;
            let kept = undo(rt, nodes, &restores).await?;
            report.rolled_back(&snapshot, &kept);
            return Ok(());
        }
        Some(_) if rollback => {
            quiesce_all(rt, nodes).await?;
            let kept = undo(rt, nodes, &restores).await?;
            report.rolled_back(&snapshot, &kept);
            return Ok(());
        }
        Some(Phase::Committed) | Some(Phase::Quiesced) => {
            complete(rt, nodes, &restores).await?;
            report.actions.push(format!(
                "completed the interrupted restore of {snapshot:?}: etcd data and volumes are the snapshot's"
            ));
            return Ok(());
        }
        Some(Phase::Done) => {}
    }
    restart(rt, nodes).await?;
    report
        .actions
        .push(format!("started kubelet on {} node(s)", kubelet_nodes(nodes).len()));
    Ok(())
}

/// `resume` from every state a restore's journals can be left in, on an in-memory two-node cluster
/// (`cluster::fake`): what ends up live on each node, what is kept, and the journals.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::fake::Fake;
    use crate::cluster::journal::{Holder, JOURNAL, Switch};

    const CP: &str = "kind-control-plane";
    const W: &str = "kind-worker";
    const ETCD: &str = "/var/lib/etcd";
    const PV: &str = "/var/local-path-provisioner";
    const STAGE: &str = "/var/.kubectl-snapshot-stage-x";

    fn switches(node: &str) -> Vec<Switch> {
        let mut v = vec![Switch {
            live: PV.into(),
            staged: Some(format!("{STAGE}/local-path-provisioner")),
            aside: format!("{PV}.old-20261201T000000Z"),
            had_live: true,
            keep_live: None,
        }];
        if node == CP {
            v.insert(
                0,
                Switch {
                    live: ETCD.into(),
                    staged: Some(format!("{ETCD}.kubectl-snapshot-new-x")),
                    aside: format!("{ETCD}.old-20261201T000000Z"),
                    had_live: true,
                    keep_live: None,
                },
            );
        }
        v
    }

    /// A restore of "snap" at `phase`: the nodes in `switched` have the snapshot's data live (the old aside),
    /// the others still their own (the snapshot's staged). Before `Done`, kubelet is stopped (quiesced).
    fn left_at(phase: Phase, switched: &[&str]) -> (Fake, Runtime) {
        let fake = Fake::cluster("kind", &[(CP, Role::ControlPlane), (W, Role::Worker)]);
        for n in [CP, W] {
            for s in switches(n) {
                let staged = s.staged.as_deref().unwrap();
                if switched.contains(&n) {
                    fake.write(n, &s.live, b"new");
                    fake.write(n, &s.aside, b"old");
                } else {
                    fake.write(n, &s.live, b"old");
                    fake.write(n, staged, b"new");
                }
            }
            let j = Journal {
                op: Op::Restore,
                phase,
                holder: Holder::me("restore"),
                cluster: "kind".into(),
                snapshot: "snap".into(),
                quiesce: Some(Quiesce::Stop),
                switches: switches(n),
                leftovers: vec![STAGE.into()],
            };
            fake.write(n, JOURNAL, &serde_json::to_vec(&j).unwrap());
            fake.set_kubelet(n, phase == Phase::Done);
        }
        let rt = Runtime::with(fake.clone());
        (fake, rt)
    }

    /// What is live on every node: etcd on the control plane, the volumes everywhere.
    fn live(fake: &Fake) -> Vec<Option<String>> {
        vec![fake.read(CP, ETCD), fake.read(CP, PV), fake.read(W, PV)]
    }

    fn all(label: &str) -> Vec<Option<String>> {
        vec![Some(label.into()); 3]
    }

    fn journal(fake: &Fake, node: &str) -> Option<Journal> {
        fake.read(node, JOURNAL).map(|j| serde_json::from_str(&j).unwrap())
    }

    fn leftovers(fake: &Fake) -> Vec<String> {
        [CP, W]
            .iter()
            .flat_map(|n| fake.paths(n))
            .filter(|p| p.contains("kubectl-snapshot-new") || p.starts_with(STAGE))
            .collect()
    }

    #[tokio::test]
    async fn a_restore_interrupted_before_its_commit_is_undone() {
        let (fake, rt) = left_at(Phase::Preparing, &[]);
        resume(&rt, "kind", false, false).await.unwrap();
        assert_eq!(live(&fake), all("old"));
        assert_eq!(leftovers(&fake), Vec::<String>::new());
        assert!(journal(&fake, CP).is_none() && journal(&fake, W).is_none());
        assert!(fake.kubelet_running(CP) && fake.kubelet_running(W));
    }

    #[tokio::test]
    async fn a_committed_restore_switched_on_some_nodes_is_completed_on_all() {
        for switched in [&[][..], &[CP], &[W], &[CP, W]] {
            let (fake, rt) = left_at(Phase::Committed, switched);
            let report = resume(&rt, "kind", false, false).await.unwrap();
            assert_eq!(live(&fake), all("new"), "switched first on {switched:?}");
            assert_eq!(
                fake.read(CP, &format!("{ETCD}.old-20261201T000000Z")).as_deref(),
                Some("old")
            );
            assert_eq!(leftovers(&fake), Vec::<String>::new());
            for n in [CP, W] {
                assert_eq!(journal(&fake, n).unwrap().phase, Phase::Done, "{n}");
                assert!(fake.kubelet_running(n), "{n}");
            }
            assert!(report.actions.iter().any(|a| a.contains("completed")), "{report:?}");
            // What the restore replaced is named, with its size.
            assert_eq!(report.kept_on_nodes.len(), 3, "{:?}", report.kept_on_nodes);
        }
    }

    #[tokio::test]
    async fn rollback_of_an_unfinished_restore_puts_the_old_data_back_without_asking() {
        for switched in [&[][..], &[CP], &[W]] {
            let (fake, rt) = left_at(Phase::Committed, switched);
            resume(&rt, "kind", true, false).await.unwrap();
            assert_eq!(live(&fake), all("old"), "switched first on {switched:?}");
            assert_eq!(leftovers(&fake), Vec::<String>::new());
            assert!(journal(&fake, CP).is_none() && journal(&fake, W).is_none());
        }
    }

    #[tokio::test]
    async fn rolling_back_is_finished_even_by_a_plain_resume() {
        let (fake, rt) = left_at(Phase::RollingBack, &[W]);
        let report = resume(&rt, "kind", false, false).await.unwrap();
        assert_eq!(live(&fake), all("old"));
        assert!(report.actions.iter().any(|a| a.contains("rolled back")), "{report:?}");
    }

    #[tokio::test]
    async fn a_completed_restore_is_rolled_back_only_once_confirmed_and_what_was_live_is_kept() {
        let (fake, rt) = left_at(Phase::Done, &[CP, W]);
        let asked = resume(&rt, "kind", true, false).await.unwrap_err();
        assert!(
            matches!(asked, RestoreError::ConfirmRollback { ref snapshot, .. } if snapshot == "snap"),
            "{asked}"
        );
        assert_eq!(live(&fake), all("new"), "asking changed something");
        assert!(journal(&fake, CP).is_some());
        let moved: Vec<String> = fake
            .log()
            .into_iter()
            .filter(|c| c.contains(": mv -T") || c.contains(": rm -rf --"))
            .collect();
        assert_eq!(moved, Vec::<String>::new(), "asking moved or removed something");

        let report = resume(&rt, "kind", true, true).await.unwrap();
        assert_eq!(live(&fake), all("old"));
        assert_eq!(report.kept.len(), 3, "{report:?}");
        for kept in &report.kept {
            let (node, path) = kept.split_once(':').unwrap();
            assert_eq!(fake.read(node, path).as_deref(), Some("new"), "{kept}");
        }
        assert!(journal(&fake, CP).is_none() && journal(&fake, W).is_none());
    }

    #[tokio::test]
    async fn a_plain_resume_after_a_completed_restore_changes_no_data() {
        let (fake, rt) = left_at(Phase::Done, &[CP, W]);
        fake.set_kubelet(W, false);
        resume(&rt, "kind", false, false).await.unwrap();
        assert_eq!(live(&fake), all("new"));
        assert_eq!(
            journal(&fake, CP).unwrap().phase,
            Phase::Done,
            "the journal stays for --rollback"
        );
        assert!(fake.kubelet_running(W));
    }

    /// A rename that fails on one node (each in turn) fails resume saying where, leaves the journals, and the
    /// next resume completes: etcd and volumes end up all from the snapshot, never mixed.
    #[tokio::test]
    async fn a_rename_failing_on_each_node_in_turn_is_completed_by_the_next_resume() {
        for failing in [CP, W] {
            let (fake, rt) = left_at(Phase::Committed, &[]);
            fake.fail_on(failing, "mv -T");
            let err = resume(&rt, "kind", false, false).await.unwrap_err().to_string();
            assert!(err.contains(failing), "{failing}: {err}");
            assert!(journal(&fake, CP).is_some() && journal(&fake, W).is_some());
            fake.heal();
            resume(&rt, "kind", false, false).await.unwrap();
            assert_eq!(live(&fake), all("new"), "failing on {failing}");
        }
    }

    #[tokio::test]
    async fn without_a_journal_resume_starts_kubelet_and_rollback_has_nothing_to_undo() {
        let fake = Fake::cluster("kind", &[(CP, Role::ControlPlane), (W, Role::Worker)]);
        fake.set_kubelet(W, false);
        let rt = Runtime::with(fake.clone());
        let err = resume(&rt, "kind", true, true).await.unwrap_err().to_string();
        assert!(err.contains("nothing to roll back"), "{err}");
        resume(&rt, "kind", false, false).await.unwrap();
        assert!(fake.kubelet_running(W));
        assert!(
            !fake
                .paths(CP)
                .iter()
                .any(|p| p.starts_with(crate::cluster::journal::LOCK_DIR)),
            "the lock was left: {:?}",
            fake.paths(CP)
        );
    }
}
