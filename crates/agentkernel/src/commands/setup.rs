//! `agentkernel setup`: builds and caches what the microvm backend boots, with progress.

use std::process::Command;

use ak_core::ImageRef;
use ak_microvm::guest::image::BaseSource;
use ak_microvm::guest::{Progress, image, initramfs, kernel};
use ak_microvm::tools;
use anyhow::{Context, anyhow};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::cli::SetupArgs;
use crate::{exit, wiring};

pub async fn setup(args: SetupArgs) -> i32 {
    match run(args).await {
        Ok(()) => 0,
        Err(e) => {
            exit::report(&e);
            // Bad input (an image that does not exist, a broken config) is a usage error.
            if e.downcast_ref::<ak_core::ConfigError>().is_some() {
                exit::USAGE
            } else {
                exit::SANDBOX_FAILURE
            }
        }
    }
}

async fn run(args: SetupArgs) -> anyhow::Result<()> {
    let config = wiring::settings().user.clone();
    let backend = wiring::microvm_backend(&config)?;
    let cache = backend.cache().to_path_buf();
    let everything = !args.kernel && args.image.is_none();
    let image = if everything || args.image.is_some() {
        let name = args
            .image
            .clone()
            .unwrap_or_else(|| ak_core::image::MICROVM_BASE_IMAGE.to_string());
        let cwd = std::env::current_dir().context("the current directory")?;
        let source = BaseSource::from_image(&ImageRef::parse(&name, &cwd)?)?;
        Some((name, source))
    } else {
        None
    };
    if everything {
        install_vsock_daemon()?;
    }
    let bars = MultiProgress::new();
    // The kernel build is compiler-bound, the image build mostly downloads and disk
    // writes: they run side by side.
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let image_build = match &image {
            Some((name, source)) if !matches!(source, BaseSource::Container(_)) => {
                let (bars, cache) = (&bars, &cache);
                Some(scope.spawn(move || {
                    with_bar(bars, "base image", |sink| image::build(cache, source, sink))
                        .map(|built| format!("image {name}: {}", built.display()))
                }))
            }
            _ => None,
        };
        if everything || args.kernel {
            match &config.microvm_options()?.kernel {
                Some(own) => {
                    kernel::check_vmlinux(own)?;
                    super::say(&format!(
                        "kernel: {} (yours, from the config)",
                        own.display()
                    ));
                }
                None => {
                    let built =
                        with_bar(&bars, "guest kernel", |sink| kernel::build(&cache, sink))?;
                    super::say(&format!("kernel: {}", built.display()));
                }
            }
        }
        if let Some(build) = image_build {
            let line = build
                .join()
                .map_err(|_| anyhow!("the image build panicked"))??;
            super::say(&line);
        }
        Ok(())
    })?;
    if let Some((name, BaseSource::Container(reference))) = &image {
        let built = backend.container_disk(reference).await?;
        super::say(&format!("image {name}: {}", built.display()));
    }
    if everything {
        let agent = wiring::agent_path();
        let built = initramfs::ensure(&cache, &agent)?;
        super::say(&format!(
            "initramfs: {} (agent {})",
            built.display(),
            agent.display()
        ));
    }
    Ok(())
}

/// Installs `vhost-device-vsock` with cargo when it is not found.
fn install_vsock_daemon() -> anyhow::Result<()> {
    if let Some(path) = tools::find_program(tools::VSOCK_DAEMON) {
        super::say(&format!("vsock daemon: {}", path.display()));
        return Ok(());
    }
    let cargo = tools::find_program("cargo").ok_or_else(|| {
        anyhow!(
            "{} is missing and cargo is not installed to build it: install Rust (rustup), then run `cargo install --locked {}`",
            tools::VSOCK_DAEMON,
            tools::VSOCK_DAEMON
        )
    })?;
    let bar = spinner(&format!(
        "cargo install {} (about a minute)",
        tools::VSOCK_DAEMON
    ));
    let status = Command::new(cargo)
        .args(["install", "--locked", "--quiet", tools::VSOCK_DAEMON])
        .status()
        .context("run cargo install")?;
    bar.finish_and_clear();
    if !status.success() {
        return Err(anyhow!(
            "cargo install {} failed ({status})",
            tools::VSOCK_DAEMON
        ));
    }
    let path = tools::find_program(tools::VSOCK_DAEMON).ok_or_else(|| {
        anyhow!(
            "{} was installed but is not on PATH or in ~/.cargo/bin",
            tools::VSOCK_DAEMON
        )
    })?;
    super::say(&format!("vsock daemon: {} (installed)", path.display()));
    Ok(())
}

fn spinner(message: &str) -> ProgressBar {
    let bar = ProgressBar::new_spinner().with_message(message.to_string());
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    bar
}

/// Runs `build` with a bar in `bars` that follows its progress (a spinner while the
/// length is unknown); hidden when stderr is not a terminal.
fn with_bar<T>(
    bars: &MultiProgress,
    what: &str,
    build: impl FnOnce(&(dyn Fn(&Progress) + Send + Sync)) -> Result<T, ak_microvm::MicrovmError>,
) -> anyhow::Result<T> {
    let bar = bars.add(spinner(what));
    let bar_style = ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {elapsed}")
        .map(|style| style.progress_chars("=> "));
    let sink = |progress: &Progress| {
        bar.set_message(format!("{what}: {}", progress.message));
        if let Some(length) = progress.length {
            if bar.length() != Some(length)
                && let Ok(style) = &bar_style
            {
                bar.set_style(style.clone());
                bar.set_length(length);
            }
            bar.set_position(progress.position);
        }
    };
    let result = build(&sink);
    bar.finish_and_clear();
    Ok(result?)
}
