//! netagent's datapath programs.
//!
//! Built for `bpfel-unknown-none` by `agent/build.rs` (aya-build) and embedded
//! in the agent binary. On the host this file compiles to an empty stub so the
//! workspace can be linted as a whole.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod conntrack;
#[cfg(target_arch = "bpf")]
mod counters;
#[cfg(target_arch = "bpf")]
mod csum;
#[cfg(target_arch = "bpf")]
mod eth;
#[cfg(target_arch = "bpf")]
mod ingress;
#[cfg(target_arch = "bpf")]
mod ipv4;
#[cfg(target_arch = "bpf")]
mod lb;
#[cfg(target_arch = "bpf")]
mod maglev;
#[cfg(target_arch = "bpf")]
mod trace;
#[cfg(target_arch = "bpf")]
mod vxlan;

netagent_ebpf::object_root!();
