//! Tells rustc which BPF target architecture the programs are built for, so
//! that aya-ebpf's architecture-specific helpers compile on the host too.
fn main() {
    if let Err(error) = aya_build::emit_bpf_target_arch_cfg() {
        panic!("netagent-ebpf build script: {error}");
    }
}
