//! Compiles the eBPF programs of `ebpf/programs` for the BPF target and puts
//! the object in OUT_DIR, where `dataplane::bpf` embeds it.
use aya_build::{Package, Toolchain};

fn main() {
    let programs = Package {
        name: "netagent-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../ebpf/programs"),
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
