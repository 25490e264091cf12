//! What a mutating operation leaves in the nodes so that it can be finished or undone by another process:
//!
//! - **the lock** — a directory `STATE_DIR/lock` on the cluster's first control plane, created with an atomic
//!   `mkdir`, holding `holder.json` (pid, host, command, since, and a heartbeat refreshed through the archive
//!   API, which works while nodes are paused). Held in the nodes, so it excludes processes on other hosts that
//!   share the daemon too. A holder is dead when it ran on this host and its pid is gone, or when its heartbeat
//!   is older than [`STALE_AFTER`]; its lock is then taken over by an atomic rename.
//! - **the journal** — `STATE_DIR/journal.json` on every node an operation touches: the operation, its phase,
//!   how the node was quiesced, what was left in the node to clean up, and for restore every rename of the
//!   switch (live path, staged path, where the old data is kept). `resume` reads it (through the archive API,
//!   so even a paused node can be read) and completes or rolls back.
//!
//! The switch is a set of renames, one per path, each idempotent given which paths exist, so that a process
//! killed between any two renames is finished (or undone) by `resume` with the same plan: see [`forward`]
//! and [`backward`], unit-tested from every intermediate state.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::node;
use super::{ClusterError, NodeState, Runtime};

/// kubectl-snapshot's lock and journal live in a node's /var/lib/kubectl-snapshot: on the node's /var volume,
/// which survives a restart of the node container.
pub const LOCK_DIR: &str = "/var/lib/kubectl-snapshot/lock";
pub const JOURNAL: &str = "/var/lib/kubectl-snapshot/journal.json";
const HOLDER: &str = "holder.json";
/// How often the holder proves it is alive.
const HEARTBEAT: Duration = Duration::from_secs(10);
/// A holder silent for this long is dead (it missed nine heartbeats).
pub const STALE_AFTER: Duration = Duration::from_secs(90);
const MAX_STATE_FILE: usize = 1 << 20;
/// A lock directory this old without a holder file was left by a process killed while creating it (the
/// holder file is written in the same round trip, and [`read_holder`] waits 2 s for it).
const UNDESCRIBED_AFTER_SECS: u64 = 2;

/// What a holder file written for `h` contains, and no other holder's does: its id, as the compact JSON that
/// [`Lock::acquire`] and the heartbeat write.
fn owner_token(h: &Holder) -> String {
    format!("\"id\":{}", serde_json::Value::String(h.id.clone()))
}

/// Who holds a lock or wrote a journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Holder {
    pub pid: u32,
    pub host: String,
    pub command: String,
    pub since: jiff::Timestamp,
    /// Refreshed every [`HEARTBEAT`] while the holder runs.
    #[serde(default)]
    pub heartbeat: Option<jiff::Timestamp>,
    /// Unique per operation.
    pub id: String,
}

impl Holder {
    pub fn me(command: &str) -> Self {
        Self {
            pid: std::process::id(),
            host: hostname(),
            command: command.to_owned(),
            since: jiff::Timestamp::now(),
            heartbeat: Some(jiff::Timestamp::now()),
            id: crate::util::nonce(),
        }
    }

    /// Whether the holder is known to be gone: its process is not running on this host, or its heartbeat
    /// stopped long ago.
    pub fn is_dead(&self) -> bool {
        if self.host == hostname() && self.pid != std::process::id() {
            return !backends::local::pid_alive(self.pid);
        }
        let last = self.heartbeat.unwrap_or(self.since);
        jiff::Timestamp::now().duration_since(last).unsigned_abs() > STALE_AFTER
    }

    pub fn describe(&self) -> String {
        format!(
            "`{}` (pid {} on host {}) since {}",
            self.command,
            self.pid,
            self.host,
            self.since.strftime("%Y-%m-%d %H:%M:%S UTC")
        )
    }
}

fn hostname() -> String {
    rustix::system::uname().nodename().to_string_lossy().into_owned()
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "cluster {cluster:?} is busy: {} holds its lock (in node {node})\nhint: wait for it to finish; a lock whose holder died is taken over automatically",
        holder.describe()
    )]
    Held {
        cluster: String,
        node: String,
        holder: Box<Holder>,
    },
    #[error(
        "node {node} of cluster {cluster:?} is paused{by}\nhint: run `kubectl snapshot resume {cluster}` to thaw it"
    )]
    Paused { cluster: String, node: String, by: String },
    #[error(
        "cluster {cluster:?} has an unfinished {op} (node {node}: phase {phase}, by {holder})\nhint: run `kubectl snapshot resume {cluster}` to {what}"
    )]
    Unfinished {
        cluster: String,
        node: String,
        op: &'static str,
        phase: &'static str,
        holder: String,
        what: &'static str,
    },
    #[error("cluster {0:?} has no control-plane node to hold its lock")]
    NoControlPlane(String),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
}

/// The node that holds a cluster's lock and whose journal decides whether a restore committed: the first
/// control plane (kind's bootstrap node, `<cluster>-control-plane`).
pub fn lock_node(nodes: &[super::Node]) -> Option<&super::Node> {
    nodes.iter().find(|n| n.role == super::Role::ControlPlane)
}

/// Starts a mutating operation: refuses while a node is paused or an earlier operation is unfinished (and
/// says what to run), and takes the cluster's lock.
pub async fn begin(rt: &Runtime, cluster: &str, nodes: &[super::Node], command: &str) -> Result<Lock, LockError> {
    let lock_at = lock_node(nodes).ok_or_else(|| LockError::NoControlPlane(cluster.to_owned()))?;
    if let NodeState::Other(state) = &lock_at.state {
        // The lock lives in this node: nothing can be done, or checked, while it is down.
        return Err(ClusterError::NodeNotRunning {
            node: lock_at.name.clone(),
            state: state.clone(),
        }
        .into());
    }
    for n in super::kubelet_nodes(nodes) {
        if n.state == NodeState::Paused {
            let by = match Journal::read(rt, &n.name).await {
                Ok(Some(j)) => format!(" by an interrupted {}", j.holder.describe()),
                _ => String::new(),
            };
            return Err(LockError::Paused {
                cluster: cluster.to_owned(),
                node: n.name.clone(),
                by,
            });
        }
    }
    let lock = Lock::acquire(rt, cluster, &lock_at.name, command).await?;
    for n in super::kubelet_nodes(nodes) {
        match Journal::read(rt, &n.name).await {
            Ok(Some(j)) if j.unfinished() => {
                lock.release().await;
                return Err(j.unfinished_error(cluster, &n.name));
            }
            Ok(_) => {}
            Err(e) => {
                lock.release().await;
                return Err(e.into());
            }
        }
    }
    Ok(lock)
}

/// A held cluster lock. Release it with [`Lock::release`]; a process killed while holding it leaves it for
/// the next command to take over once the holder is dead.
pub struct Lock {
    rt: Runtime,
    node: String,
    pub holder: Holder,
    heartbeat: tokio::task::JoinHandle<()>,
    /// Stops the heartbeat between refreshes.
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Lock {
    /// Takes the cluster's lock in `node` (its first control plane) for `command`.
    pub async fn acquire(rt: &Runtime, cluster: &str, node: &str, command: &str) -> Result<Self, LockError> {
        let me = Holder::me(command);
        for _ in 0..3 {
            let json = serde_json::to_vec(&me).unwrap_or_default();
            let taken = match node::create_dir_with_file(rt, node, LOCK_DIR, HOLDER, json).await {
                // Whether the command took the lock is unknown: the holder file, our id or not, says.
                Err(ClusterError::LostExit { .. }) => read_holder(rt, node).await?.is_some_and(|h| h.id == me.id),
                taken => taken?,
            };
            if taken {
                return Ok(Self::held(rt, node, me));
            }
            match read_holder(rt, node).await? {
                Some(h) if !h.is_dead() => {
                    return Err(LockError::Held {
                        cluster: cluster.to_owned(),
                        node: node.to_owned(),
                        holder: Box::new(h),
                    });
                }
                // Dead, or never written (killed between mkdir and the write): take over that lock, and only
                // that one (see `node::take_over_lock`); then try again, as everyone else does.
                dead => {
                    let token = dead.as_ref().map(owner_token);
                    let dead = dead.as_ref().zip(token.as_deref()).map(|(h, t)| (t, h.id.as_str()));
                    node::take_over_lock(rt, node, LOCK_DIR, HOLDER, dead, UNDESCRIBED_AFTER_SECS).await?;
                }
            }
        }
        match read_holder(rt, node).await? {
            Some(h) => Err(LockError::Held {
                cluster: cluster.to_owned(),
                node: node.to_owned(),
                holder: Box::new(h),
            }),
            None => Err(LockError::Held {
                cluster: cluster.to_owned(),
                node: node.to_owned(),
                holder: Box::new(Holder {
                    pid: 0,
                    host: "?".into(),
                    command: "another kubectl-snapshot".into(),
                    since: jiff::Timestamp::now(),
                    heartbeat: None,
                    id: String::new(),
                }),
            }),
        }
    }

    fn held(rt: &Runtime, node: &str, holder: Holder) -> Self {
        let (rt2, node2, mut h) = (rt.clone(), node.to_owned(), holder.clone());
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        // Through the archive API: it works while the nodes are paused.
        let heartbeat = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(HEARTBEAT) => {}
                    _ = &mut stopped => return,
                }
                h.heartbeat = Some(jiff::Timestamp::now());
                if let Ok(json) = serde_json::to_vec(&h) {
                    let _ = node::put_file(&rt2, &node2, LOCK_DIR, HOLDER, json).await;
                }
            }
        });
        Self {
            rt: rt.clone(),
            node: node.to_owned(),
            holder,
            heartbeat,
            stop: Some(stop),
        }
    }

    /// Removes the lock if it is still ours.
    pub async fn release(self) {
        self.release_with(&[]).await;
    }

    /// Removes `also` (paths in the lock's node), then the lock if it is still ours, in one round trip.
    pub async fn release_with(mut self, also: &[&str]) {
        // A refresh in flight finishes first: it would rewrite the holder file removed below.
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(30), &mut self.heartbeat).await;
        let token = owner_token(&self.holder);
        let _ = node::remove_all_then_owned(&self.rt, &self.node, also, LOCK_DIR, HOLDER, &token).await;
    }

    /// The node holding the lock.
    pub fn node(&self) -> &str {
        &self.node
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        self.heartbeat.abort();
    }
}

/// The lock's holder; `None` when there is no lock or its holder file stays unreadable (a holder killed
/// between creating the lock and describing itself).
pub async fn read_holder(rt: &Runtime, node: &str) -> Result<Option<Holder>, ClusterError> {
    let path = format!("{LOCK_DIR}/{HOLDER}");
    for attempt in 0..10 {
        if !rt.path_exists(node, LOCK_DIR).await? {
            return Ok(None);
        }
        // A holder being written or refreshed can be missing or partial for a moment.
        if let Some(h) = node::read_small_file(rt, node, &path, MAX_STATE_FILE)
            .await
            .ok()
            .flatten()
            .and_then(|b| serde_json::from_slice(&b).ok())
        {
            return Ok(Some(h));
        }
        if attempt < 9 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(None)
}

// ---------------------------------------------------------------------------------------------------------
// journal

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Op {
    Create,
    Restore,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// create: capturing while the cluster runs; restore: staging the new data beside the live data.
    Preparing,
    /// create: the nodes are being (or are) quiesced.
    Quiesced,
    /// restore: everything is staged and validated on every node; from here the restore completes.
    Committed,
    /// restore: switched; the journal stays so that `resume --rollback` can put the old data back.
    Done,
    /// restore: being undone (a failed switch, or `resume --rollback`); from here it is only ever undone.
    RollingBack,
}

impl Phase {
    pub fn as_str(&self) -> &'static str {
        match self {
            Phase::Preparing => "preparing",
            Phase::Quiesced => "quiesced",
            Phase::Committed => "committed",
            Phase::Done => "done",
            Phase::RollingBack => "rolling-back",
        }
    }
}

/// How a node was quiesced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Quiesce {
    /// Frozen with the cgroup freezer (`docker pause`): nothing restarts.
    Pause,
    /// kubelet and every container stopped.
    Stop,
}

/// One path the restore switches by renames.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Switch {
    /// The path the cluster uses (`/var/lib/etcd`, a PV root).
    pub live: String,
    /// The new data, staged on the same filesystem; `None` when the snapshot has nothing there (the live
    /// data is only moved aside).
    pub staged: Option<String>,
    /// Where the old data is kept.
    pub aside: String,
    /// Whether `live` existed before the switch.
    pub had_live: bool,
    /// Where rolling back moves what is live (instead of removing it): set when a completed restore is
    /// rolled back, since the cluster has written there since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_live: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Journal {
    pub op: Op,
    pub phase: Phase,
    pub holder: Holder,
    pub cluster: String,
    pub snapshot: String,
    #[serde(default)]
    pub quiesce: Option<Quiesce>,
    #[serde(default)]
    pub switches: Vec<Switch>,
    /// Paths to remove when the operation is finished or undone (an etcd snapshot copy, staging dirs).
    #[serde(default)]
    pub leftovers: Vec<String>,
}

impl Journal {
    pub async fn write(&self, rt: &Runtime, node: &str) -> Result<(), ClusterError> {
        let json = serde_json::to_vec_pretty(self).unwrap_or_default();
        node::write_file(rt, node, JOURNAL, json).await
    }

    /// Reads a node's journal (works on a paused node). A journal that cannot be parsed is an error: it is
    /// never guessed at.
    pub async fn read(rt: &Runtime, node: &str) -> Result<Option<Self>, ClusterError> {
        let Some(bytes) = node::read_small_file(rt, node, JOURNAL, MAX_STATE_FILE).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            super::ExecError {
                node: node.into(),
                command: vec![format!("(archive API) read {JOURNAL}")],
                code: None,
                stdout: String::from_utf8_lossy(&bytes).chars().take(300).collect(),
                stderr: format!("unreadable journal: {e}; inspect it, then remove it to proceed"),
            }
            .into()
        })
    }

    pub async fn remove(rt: &Runtime, node: &str) -> Result<(), ClusterError> {
        Self::remove_with(rt, node, &[]).await
    }

    /// Removes `also` (leftovers the journal lists), then the journal, in one round trip.
    pub async fn remove_with(rt: &Runtime, node: &str, also: &[&str]) -> Result<(), ClusterError> {
        let mut paths = also.to_vec();
        paths.push(JOURNAL);
        node::remove_all(rt, node, &paths).await
    }

    /// Whether the operation it records still needs `resume`.
    pub fn unfinished(&self) -> bool {
        self.phase != Phase::Done
    }

    fn unfinished_error(&self, cluster: &str, node: &str) -> LockError {
        let (op, what) = match (self.op, self.phase) {
            (Op::Create, _) => (
                "create",
                "restart what it quiesced and remove what it left in the nodes",
            ),
            (Op::Restore, Phase::Preparing) => ("restore", "remove its staged data (nothing live was changed)"),
            (Op::Restore, Phase::RollingBack) => ("restore", "finish rolling it back (the previous data goes back)"),
            (Op::Restore, _) => (
                "restore",
                "complete it (etcd and volumes from the snapshot), or `resume --rollback` to put the previous data back",
            ),
        };
        LockError::Unfinished {
            cluster: cluster.to_owned(),
            node: node.to_owned(),
            op,
            phase: self.phase.as_str(),
            holder: self.holder.describe(),
            what,
        }
    }
}

/// [`forward`] or [`backward`]: the steps for one switch, given which paths exist.
pub type SwitchPlan = fn(&Switch, &dyn Fn(&str) -> bool) -> Vec<Action>;

/// A step of a switch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Rename { from: String, to: String },
    RemoveAll(String),
}

/// The renames that complete `s`, given which paths exist now. Applying them, from any state a killed
/// earlier run left, ends with the new data live and the old data aside.
pub fn forward(s: &Switch, exists: &dyn Fn(&str) -> bool) -> Vec<Action> {
    let mut out = Vec::new();
    let staged_pending = s.staged.as_deref().is_some_and(exists);
    let done = match &s.staged {
        Some(_) => !staged_pending,
        None => !exists(&s.live) || exists(&s.aside),
    };
    if done {
        return out;
    }
    if s.had_live && exists(&s.live) && !exists(&s.aside) {
        out.push(Action::Rename {
            from: s.live.clone(),
            to: s.aside.clone(),
        });
    } else if !s.had_live && exists(&s.live) {
        // Something created the path after staging: the snapshot replaces it; nothing of it is kept.
        out.push(Action::RemoveAll(s.live.clone()));
    }
    if let Some(staged) = &s.staged {
        out.push(Action::Rename {
            from: staged.clone(),
            to: s.live.clone(),
        });
    }
    out
}

/// The steps that undo `s` from any state: the old data live again, the new data removed.
pub fn backward(s: &Switch, exists: &dyn Fn(&str) -> bool) -> Vec<Action> {
    let mut out = Vec::new();
    let new_is_live = match &s.staged {
        // The staged data has been moved in (the staged path is gone and live holds it).
        Some(staged) => !exists(staged) && exists(&s.live) && (!s.had_live || exists(&s.aside)),
        None => false,
    };
    // What is live goes: kept aside where the switch says so, else removed.
    let away = |out: &mut Vec<Action>| match &s.keep_live {
        Some(keep) if !exists(keep) => out.push(Action::Rename {
            from: s.live.clone(),
            to: keep.clone(),
        }),
        _ => out.push(Action::RemoveAll(s.live.clone())),
    };
    if s.had_live {
        if exists(&s.aside) {
            if exists(&s.live) {
                away(&mut out);
            }
            out.push(Action::Rename {
                from: s.aside.clone(),
                to: s.live.clone(),
            });
        }
    } else if new_is_live || (s.keep_live.is_some() && exists(&s.live)) {
        away(&mut out);
    }
    if let Some(staged) = &s.staged
        && exists(staged)
    {
        out.push(Action::RemoveAll(staged.clone()));
    }
    out
}

/// Which of the switches' paths exist in a node (archive API: works on any state).
pub async fn existing(rt: &Runtime, node: &str, switches: &[Switch]) -> Result<BTreeSet<String>, ClusterError> {
    let mut found = BTreeSet::new();
    for s in switches {
        for p in [Some(&s.live), s.staged.as_ref(), Some(&s.aside)].into_iter().flatten() {
            if rt.path_exists(node, p).await? {
                found.insert(p.clone());
            }
        }
    }
    Ok(found)
}

/// Applies `plan` (forward or backward) to every switch of a running node, re-reading which paths exist
/// before each switch.
pub async fn apply(rt: &Runtime, node: &str, switches: &[Switch], plan: SwitchPlan) -> Result<(), ClusterError> {
    for s in switches {
        let found = existing(rt, node, std::slice::from_ref(s)).await?;
        for action in plan(s, &|p| found.contains(p)) {
            match action {
                Action::Rename { from, to } => node::rename(rt, node, &from, &to).await?,
                Action::RemoveAll(p) => node::remove_all(rt, node, &[&p]).await?,
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_owner_token_is_in_the_holder_file_and_in_no_other() {
        let mut me = Holder::me("create");
        me.heartbeat = Some(jiff::Timestamp::now());
        let other = Holder::me("create");
        let file = String::from_utf8(serde_json::to_vec(&me).unwrap()).unwrap();
        assert!(file.contains(&owner_token(&me)), "{file}");
        assert!(!file.contains(&owner_token(&other)), "{file}");
    }

    /// A filesystem of whole directories: each path holds a label ("old", "new").
    type Fs = std::collections::BTreeMap<String, &'static str>;

    fn run(fs: &mut Fs, actions: &[Action]) {
        for a in actions {
            match a {
                Action::Rename { from, to } => {
                    assert!(!fs.contains_key(to), "rename onto an existing {to}");
                    let v = fs.remove(from).expect("rename of a missing path");
                    fs.insert(to.clone(), v);
                }
                Action::RemoveAll(p) => {
                    fs.remove(p);
                }
            }
        }
    }

    fn cases() -> Vec<(Switch, Fs)> {
        let s = |staged: bool, had_live: bool| Switch {
            live: "/var/lib/etcd".into(),
            staged: staged.then(|| "/var/lib/etcd.new".into()),
            aside: "/var/lib/etcd.old".into(),
            had_live,
            keep_live: None,
        };
        let fs = |live: bool, staged: bool| {
            let mut f = Fs::new();
            if live {
                f.insert("/var/lib/etcd".into(), "old");
            }
            if staged {
                f.insert("/var/lib/etcd.new".into(), "new");
            }
            f
        };
        vec![
            (s(true, true), fs(true, true)),   // replace
            (s(true, false), fs(false, true)), // new path
            (s(false, true), fs(true, false)), // path removed by the snapshot
        ]
    }

    /// Every prefix of the forward steps is a state a SIGKILL can leave.
    fn states(sw: &Switch, start: &Fs) -> Vec<Fs> {
        let mut fs = start.clone();
        let mut out = vec![fs.clone()];
        for a in forward(sw, &|p| fs.contains_key(p)) {
            run(&mut fs, std::slice::from_ref(&a));
            out.push(fs.clone());
        }
        out
    }

    #[test]
    fn forward_from_any_interrupted_state_ends_new_live_old_aside() {
        for (sw, start) in cases() {
            for mut fs in states(&sw, &start) {
                let plan = forward(&sw, &|p| fs.contains_key(p));
                run(&mut fs, &plan);
                assert_eq!(fs.get(&sw.live).copied(), sw.staged.as_ref().map(|_| "new"), "{sw:?}");
                assert_eq!(fs.get(&sw.aside).copied(), sw.had_live.then_some("old"), "{sw:?}");
                // Idempotent: nothing left to do.
                assert!(forward(&sw, &|p| fs.contains_key(p)).is_empty(), "{sw:?} {fs:?}");
            }
        }
    }

    /// Rolling back a completed restore: the cluster has written to the live data since ("work"). From every
    /// state an interrupted rollback can leave, the old data ends live and the work is kept, never removed.
    #[test]
    fn rolling_back_a_completed_restore_keeps_what_was_live() {
        for (sw, start) in cases() {
            let mut fs = start.clone();
            let plan = forward(&sw, &|p| fs.contains_key(p));
            run(&mut fs, &plan);
            if let Some(v) = fs.get_mut(&sw.live) {
                *v = "work";
            }
            let had_work = fs.contains_key(&sw.live);
            let sw = Switch {
                keep_live: Some("/var/lib/etcd.old-rolled-back".into()),
                ..sw
            };
            let mut prefixes = vec![fs.clone()];
            let mut step = fs.clone();
            for a in backward(&sw, &|p| step.contains_key(p)) {
                run(&mut step, std::slice::from_ref(&a));
                prefixes.push(step.clone());
            }
            for mut fs in prefixes {
                let plan = backward(&sw, &|p| fs.contains_key(p));
                run(&mut fs, &plan);
                let mut want = Fs::new();
                if sw.had_live {
                    want.insert(sw.live.clone(), "old");
                }
                if had_work {
                    want.insert("/var/lib/etcd.old-rolled-back".into(), "work");
                }
                assert_eq!(fs, want, "{sw:?}");
                assert!(backward(&sw, &|p| fs.contains_key(p)).is_empty(), "{sw:?} {fs:?}");
            }
        }
    }

    #[test]
    fn backward_from_any_state_ends_old_live_and_nothing_else() {
        for (sw, start) in cases() {
            for mut fs in states(&sw, &start) {
                let plan = backward(&sw, &|p| fs.contains_key(p));
                run(&mut fs, &plan);
                let want: Fs = if sw.had_live {
                    Fs::from([(sw.live.clone(), "old")])
                } else {
                    Fs::new()
                };
                assert_eq!(fs, want, "{sw:?}");
                assert!(backward(&sw, &|p| fs.contains_key(p)).is_empty(), "{sw:?} {fs:?}");
            }
        }
    }

    #[test]
    fn a_dead_holder_on_this_host_is_stale_and_a_silent_one_elsewhere_too() {
        let mut h = Holder::me("restore");
        assert!(!h.is_dead(), "this process is alive");
        h.pid = u32::MAX / 2; // no such pid
        assert!(h.is_dead());
        let mut remote = Holder::me("create");
        remote.host = "another-host".into();
        assert!(!remote.is_dead(), "a fresh heartbeat");
        remote.heartbeat = Some(jiff::Timestamp::now() - jiff::SignedDuration::from_secs(600));
        assert!(remote.is_dead());
    }
}
