//! The container resolver's steering programs, in an object of their own:
//! the agent loads one instance per container namespace (its own socket map
//! and resolver port), which the datapath object (`main.rs`, loaded once per
//! agent with its maps pinned) cannot give.
//!
//! Built for `bpfel-unknown-none` by `agent/build.rs` (aya-build) and embedded
//! in the agent binary; on the host this file compiles to an empty stub.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod dns_steer;

netagent_ebpf::object_root!();
