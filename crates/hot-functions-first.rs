// How a build script has a binary linked with its hot functions first and together: shared
// by crates/agentkernel/build.rs and crates/ak-agent/build.rs (`include!`), since build
// scripts cannot depend on a workspace crate of their own without building it first.
//
// Why: each page-fault window of text a `run` touches costs it a fault and, at exit, an
// unmap; spread over the CLI's whole text its functions took 76 faults per cold run, laid
// out together 13 (docs/benchmarks.md, "Hot functions laid out together"). The lists are
// written by scripts/symbol-order.py; names no longer in the build are skipped without a
// warning, so a stale list costs speed, not a build.

/// Has each `(binary, list)` of `binaries` linked by rustc's own lld (`cc -fuse-ld=lld -B
/// <its gcc-ld directory>`: GNU ld has no `--symbol-ordering-file`) with the functions in
/// `list` (a file beside the build script) placed first. Does nothing but warn where that
/// cannot be done: a toolchain without `gcc-ld/ld.lld`, or a linker the user chose (in
/// RUSTFLAGS, or in Cargo's per-target `linker_env`).
fn hot_functions_first(binaries: &[(&str, &str)], linker_env: &str) {
    println!("cargo:rerun-if-changed=../hot-functions-first.rs");
    println!("cargo:rerun-if-env-changed={linker_env}");
    let linker_chosen = std::env::var("CARGO_ENCODED_RUSTFLAGS")
        .is_ok_and(|flags| flags.contains("-fuse-ld") || flags.contains("linker"))
        || std::env::var_os(linker_env).is_some();
    let Some(gcc_ld) = rust_lld_dir().filter(|_| !linker_chosen) else {
        println!(
            "cargo:warning=hot functions are not laid out together: that needs rustc's own lld (gcc-ld/ld.lld in its sysroot) and no linker chosen"
        );
        return;
    };
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    for (binary, list) in binaries {
        let order = format!("{manifest_dir}/{list}");
        println!("cargo:rerun-if-changed={order}");
        println!("cargo:rustc-link-arg-bin={binary}=-fuse-ld=lld");
        println!("cargo:rustc-link-arg-bin={binary}=-B{gcc_ld}");
        println!(
            "cargo:rustc-link-arg-bin={binary}=-Wl,--symbol-ordering-file={order},--no-warn-symbol-ordering"
        );
    }
}

/// The directory of rustc's own `ld.lld` for `cc -fuse-ld=lld`, if this toolchain has one.
fn rust_lld_dir() -> Option<String> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let output = std::process::Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()?;
    let sysroot = String::from_utf8(output.stdout).ok()?;
    let host = std::env::var("HOST").ok()?;
    let dir = format!("{}/lib/rustlib/{host}/bin/gcc-ld", sysroot.trim());
    std::path::Path::new(&dir)
        .join("ld.lld")
        .is_file()
        .then_some(dir)
}
