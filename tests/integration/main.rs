//! Integration tests: the built `kubectl-snapshot` binary against fixture kind clusters
//! (tests/fixtures/cluster) on the local Docker Engine. Run everything with `tests/run`.

/// Debian's docker-registry and TLS material, shared with the backends' tests.
use kubectl_snapshot_testkit::registry as distribution;
mod util;

mod bad_input;
mod completion;
mod crash;
mod create;
mod failures;
mod hostile;
mod krew;
mod oci;
mod providers;
mod real_kind;
mod remote;
mod restore;
mod schedule;
mod store;
