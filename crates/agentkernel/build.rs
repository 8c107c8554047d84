//! Links the `agentkernel` executable at a fixed address (`agentkernel_cli::Executable`
//! says why), where it is a static executable; `ak-server` stays position-independent.

fn main() {
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
}
