//! Test support shared by the backends' tests, the binary's unit tests and the CLI integration tests (instead
//! of including files by path): Debian's docker-registry with TLS material ([`registry`]), bundles written
//! the way an attacker would write them ([`bundle`]), and a CRI client that pulls as the kubelet does ([`cri`]).

pub mod bundle;
pub mod cri;
pub mod registry;
