//! Compiles the eBPF programs of `ebpf/programs` for the BPF target and puts
//! the object in OUT_DIR, where `dataplane::bpf` embeds it.
//!
//! `NETAGENT_EBPF_NO_TRACE=1` builds them without their `trace` feature:
//! the reference object `cargo xtask bench lb` measures tracing against
//! (built into a target dir of its own, so the normal one never flips).
use aya_build::{Package, Toolchain};

const NO_TRACE: &str = "NETAGENT_EBPF_NO_TRACE";

fn main() {
    println!("cargo:rerun-if-env-changed={NO_TRACE}");
    let no_trace = std::env::var(NO_TRACE).is_ok_and(|v| v == "1");
    let programs = Package {
        name: "netagent-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../ebpf/programs"),
        no_default_features: no_trace,
        ..Default::default()
    };
    // aya-build turns every line the inner cargo prints into a build-script
    // warning, which cargo then replays on every build: keep it to errors.
    std::env::set_var("CARGO_TERM_QUIET", "true");
    if let Err(error) = aya_build::build_ebpf([programs], Toolchain::default()) {
        panic!(
            "building the eBPF programs failed: {error:#}\n\
             hint: run `cargo xtask setup` (nightly rust-src and bpf-linker)"
        );
    }
}
