//! Integration tests: the built `kubectl-snapshot` binary against fixture kind clusters
//! (tests/fixtures/cluster) on the local Docker Engine. Run everything with `tests/run`.

mod util;

mod bad_input;
mod completion;
mod create;
mod failures;
mod hostile;
mod krew;
mod oci;
mod remote;
mod restore;
mod store;
