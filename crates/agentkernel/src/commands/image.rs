//! `agentkernel image pull|list|inspect|remove|prune [--json]`: the local OCI image store.

use std::collections::HashMap;
use std::sync::Mutex;

use ak_image::{ImageInfo, LayerOutcome, PullProgress};
use ak_service::{Caller, ServiceError};
use indicatif::{HumanBytes, MultiProgress, ProgressBar, ProgressStyle};
use serde::Serialize;

use super::say;
use crate::cli::{ImageArgs, ImageCommand, ImageListArgs, ImagePullArgs};
use crate::exit;
use crate::wiring;

pub async fn image(command: ImageCommand) -> i32 {
    let service = wiring::service();
    match command {
        ImageCommand::Pull(ImagePullArgs {
            image: args,
            unpack,
        }) => {
            let bars = LayerBars::new();
            let result = service
                .image_pull(Caller::Local, &args.reference, unpack, &bars)
                .await;
            bars.clear();
            answer(result, args.json, |info| {
                format!("{} {}", info.reference, info.digest)
            })
        }
        ImageCommand::List(args) => answer(service.image_list(Caller::Local), args.json, |list| {
            let mut out = format!(
                "{:<50} {:<19} {:>10} {:>6}\n",
                "REFERENCE", "DIGEST", "SIZE", "LAYERS"
            );
            for info in list {
                out.push_str(&format!(
                    "{:<50} {:<19} {:>10} {:>6}\n",
                    info.reference,
                    short(&info.digest),
                    HumanBytes(info.size()).to_string(),
                    info.layers.len()
                ));
            }
            out.trim_end().to_string()
        }),
        ImageCommand::Inspect(ImageArgs { reference, json }) => answer(
            service.image_inspect(Caller::Local, &reference),
            json,
            render,
        ),
        ImageCommand::Remove(ImageArgs { reference, json }) => answer(
            service.image_remove(Caller::Local, &reference).await,
            json,
            |info| info.reference.clone(),
        ),
        ImageCommand::Prune(ImageListArgs { json }) => {
            answer(service.image_prune(Caller::Local).await, json, |pruned| {
                format!(
                    "removed {} layer(s), {}",
                    pruned.layers.len(),
                    HumanBytes(pruned.bytes)
                )
            })
        }
    }
}

/// Prints the answer (JSON, or `text`) or the failure; the exit code.
fn answer<T: Serialize>(
    result: Result<T, ServiceError>,
    json: bool,
    text: impl FnOnce(&T) -> String,
) -> i32 {
    let value = match result {
        Ok(value) => value,
        Err(error) => {
            let code = exit::code_for(&error);
            exit::report(&exit::with_hint(error));
            return code;
        }
    };
    if !json {
        say(&text(&value));
        return 0;
    }
    match serde_json::to_string_pretty(&value) {
        Ok(out) => {
            say(&out);
            0
        }
        Err(error) => {
            exit::report(&error.into());
            exit::SANDBOX_FAILURE
        }
    }
}

/// `sha256:0123456789ab`
fn short(digest: &str) -> &str {
    digest.get(..19).unwrap_or(digest)
}

fn render(info: &ImageInfo) -> String {
    let mut out = format!(
        "reference   {}\ndigest      {}\nplatform    {}\nconfig      {}\nsize        {}\nlayers:\n",
        info.reference,
        info.digest,
        info.platform,
        info.config_digest,
        HumanBytes(info.size())
    );
    for layer in &info.layers {
        out.push_str(&format!(
            "  {}  {} ({} compressed)\n",
            layer.digest,
            HumanBytes(layer.size),
            HumanBytes(layer.compressed_size)
        ));
    }
    let c = &info.config;
    out.push_str(&format!("env         {:?}\n", c.env));
    out.push_str(&format!(
        "entrypoint  {:?}\ncmd         {:?}\n",
        c.entrypoint, c.cmd
    ));
    out.push_str(&format!(
        "workdir     {}\nuser        {}",
        c.working_dir.as_deref().unwrap_or("-"),
        c.user.as_deref().unwrap_or("-")
    ));
    out
}

/// A progress bar per layer on stderr (drawn only when stderr is a terminal).
struct LayerBars {
    multi: MultiProgress,
    bars: Mutex<HashMap<String, ProgressBar>>,
}

impl LayerBars {
    fn new() -> LayerBars {
        LayerBars {
            multi: MultiProgress::new(),
            bars: Mutex::new(HashMap::new()),
        }
    }

    fn bar(&self, digest: &str) -> Option<ProgressBar> {
        let bars = self.bars.lock().unwrap_or_else(|p| p.into_inner());
        bars.get(digest).cloned()
    }

    fn clear(&self) {
        let _ = self.multi.clear();
    }
}

impl PullProgress for LayerBars {
    fn layer_started(&self, digest: &str, size: u64) {
        let bar = self.multi.add(ProgressBar::new(size));
        if let Ok(style) =
            ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(short(digest).to_string());
        let mut bars = self.bars.lock().unwrap_or_else(|p| p.into_inner());
        bars.insert(digest.to_string(), bar);
    }

    fn layer_progress(&self, digest: &str, done: u64) {
        if let Some(bar) = self.bar(digest) {
            bar.set_position(done);
        }
    }

    fn layer_done(&self, digest: &str, outcome: LayerOutcome) {
        if let Some(bar) = self.bar(digest) {
            let what = match outcome {
                LayerOutcome::Downloaded => "pulled",
                LayerOutcome::AlreadyPresent => "already in the store",
            };
            bar.finish_with_message(format!("{} {what}", short(digest)));
        }
    }
}
