//! Links the musl build of `ak-agent` (scripts/build-musl-agent.sh) with its hot functions
//! laid out together, as crates/agentkernel/build.rs does for the CLI and the glibc agent.

include!("../hot-functions-first.rs");

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let target = |key: &str, value: &str| std::env::var(key).as_deref() == Ok(value);
    let musl_x86_64 = target("CARGO_CFG_TARGET_OS", "linux")
        && target("CARGO_CFG_TARGET_ENV", "musl")
        && target("CARGO_CFG_TARGET_ARCH", "x86_64");
    if musl_x86_64 && std::env::var_os("CARGO_FEATURE_BIN").is_some() {
        hot_functions_first(
            &[("ak-agent", "musl-symbol-order.txt")],
            "CARGO_TARGET_X86_64_UNKNOWN_LINUX_MUSL_LINKER",
        );
    }
}
