//! netlab: clusters of netagent nodes built out of Linux network namespaces.
//!
//! One harness serves the integration tests (`tests/netns/tests`), the
//! benchmarks and the demo (`cargo xtask`). A lab is:
//!
//! ```text
//!                     <prefix>-sw (a bridge "sw0" in its own namespace)
//!          ┌──────────────┬───────┴───────┬──────────────┐
//!   <prefix>-n1 ... <prefix>-nN      <prefix>-ext    <prefix>-dns
//!   netagent          netagent       external client  dnsmasq (upstream DNS)
//!   198.18.0.11 ...   198.18.0.10+N  198.18.0.200     198.18.0.2
//! ```
//!
//! plus container namespaces (`<prefix>-c1` ...) that the agents attach.
//! Every address lives inside the lab's namespaces (198.18.0.0/15 is the
//! range RFC 2544 sets aside for benchmark networks): the root namespace gets
//! no address and no route, and nothing is ever sent outside the lab.
//!
//! Each lab has a unique prefix and a state directory under `/run/netlab`
//! recording what it made. Dropping the [`Lab`] tears everything down (also
//! on panic); [`sweep`] removes what a killed run left behind.

mod cmd;
pub mod etcd;
mod lab;
mod names;
mod process;
mod sweep;
mod thread;

pub use cmd::{run, run_output, CmdError};
pub use lab::{Agent, Container, Lab, LabError, LabSpec, Node};
pub use names::{LAB_STATE_ROOT, UNDERLAY_PREFIX_LEN};
pub use process::{is_root, wait_until};
pub use sweep::{leftovers, sweep, Leftovers, SweepReport};
pub use thread::{threads_named, StoppedThread};

/// Skips the calling test when not root, unless `NETLAB_REQUIRED=1` (set by
/// `cargo xtask test` and CI), in which case a missing privilege fails it.
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::is_root() {
            if std::env::var_os("NETLAB_REQUIRED").is_some_and(|v| v == "1") {
                panic!("namespace tests need root: run them with `sudo -E cargo xtask test`");
            }
            eprintln!("skipped: namespace tests need root (run `cargo xtask test` as root)");
            return;
        }
    };
}
