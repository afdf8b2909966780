//! The programs live in the objects' roots (`main.rs`, `dns_main.rs`). This
//! library target lets `agent` depend on the crate so that cargo rebuilds
//! the agent when the programs change, and holds what every root needs.
#![no_std]

/// The items every object root of this crate carries: the panic handler
/// (the verifier rejects any path that could reach it; it only satisfies
/// the compiler), the license section (GPL: the helpers we call require
/// it), and an empty `main` so the roots compile on the host for linting.
#[macro_export]
macro_rules! object_root {
    () => {
        #[cfg(target_arch = "bpf")]
        #[panic_handler]
        fn panic(_info: &core::panic::PanicInfo) -> ! {
            loop {}
        }

        #[cfg(not(target_arch = "bpf"))]
        fn main() {}

        #[cfg(target_arch = "bpf")]
        #[unsafe(link_section = "license")]
        #[unsafe(no_mangle)]
        static LICENSE: [u8; 4] = *b"GPL\0";
    };
}
