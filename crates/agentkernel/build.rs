//! Links the `agentkernel` executable at a fixed address (`agentkernel_cli::Executable`
//! says why), where it is a static executable; `ak-server` stays position-independent.
//! `agentkernel` and `ak-agent` get their hot functions laid out together.

include!("../hot-functions-first.rs");

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let static_crt = std::env::var("CARGO_CFG_TARGET_FEATURE")
        .is_ok_and(|features| features.split(',').any(|f| f == "crt-static"));
    let gnu_linux = std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux")
        && std::env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("gnu");
    if static_crt && gnu_linux {
        // rustc links a static PIE (`-static-pie`); these, given after it, make the
        // linker produce a static executable that needs no relocation at start.
        println!("cargo:rustc-link-arg-bin=agentkernel=-no-pie");
        println!("cargo:rustc-link-arg-bin=agentkernel=-static");
    }
    if gnu_linux && std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("x86_64") {
        hot_functions_first(
            &[
                ("agentkernel", "cli-symbol-order.txt"),
                ("ak-agent", "agent-symbol-order.txt"),
            ],
            "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER",
        );
    }
}
