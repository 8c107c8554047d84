//! Command-line arguments. Parsing only: validation and defaults live in `ak-core`.

use ak_core::config::{NetworkSetting, SandboxOptions};
use clap::{Args, Parser, Subcommand};

/// What `agentkernel --help` says the program is.
const ABOUT: &str = "Run AI agents' commands in isolated sandboxes";
/// What `agentkernel run --help` says `run` does (in both trees below; no final period, as
/// clap leaves the other commands' doc comments).
const RUN_ABOUT: &str =
    "Run a command in a fresh sandbox, stream its output, exit with its exit code";

#[derive(Debug, Parser)]
#[command(name = "agentkernel", version, about = ABOUT)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

// The options every command takes. (A plain comment: clap makes a flattened struct's doc
// comment the about text of the command it is flattened into.)
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// More log output on stderr (-v info, -vv debug, -vvv trace); AGENTKERNEL_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
}

impl Cli {
    /// This process's command line. `agentkernel run …`, which agents call for every
    /// command they run, is parsed against a tree of `run` alone: clap builds and
    /// completes the whole tree (26 subcommands) before parsing any of it, about a third
    /// of a pooled `run`'s argument parsing (perf probes; docs/benchmarks.md). The same
    /// definitions make both trees, so `run` parses, helps and fails the same (tested).
    pub fn from_command_line() -> Cli {
        if std::env::args_os()
            .nth(1)
            .is_some_and(|first| first == "run")
        {
            let RunCommandLine {
                global,
                command: RunOnly::Run(args),
            } = RunCommandLine::parse();
            return Cli {
                global,
                command: Command::Run(args),
            };
        }
        Cli::parse()
    }
}

/// [`Cli`] with `run` as its only subcommand (see [`Cli::from_command_line`]).
#[derive(Debug, Parser)]
#[command(name = "agentkernel", version, about = ABOUT)]
struct RunCommandLine {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: RunOnly,
}

#[derive(Debug, Subcommand)]
enum RunOnly {
    #[command(about = RUN_ABOUT)]
    Run(Box<RunArgs>),
}

// `defer`: a subcommand's arguments are built only when it is the one given. Building the
// whole tree took about a third of the CLI's own CPU time per command (perf).
#[derive(Debug, Subcommand)]
#[command(defer = true)]
pub enum Command {
    // Its help text is a constant: `RunOnly` shows the same.
    #[command(about = RUN_ABOUT)]
    Run(Box<RunArgs>),
    /// Show which backends work here, and why the others do not.
    Status(StatusArgs),
    /// Create a named sandbox (stopped; `start` runs it). Its workdir persists until removal.
    Create(Box<CreateArgs>),
    /// Start a named sandbox.
    Start(NameArgs),
    /// Run a command in a running named sandbox.
    Exec(ExecArgs),
    /// Open an interactive shell in a running named sandbox; leaving it leaves the sandbox running.
    Attach(AttachArgs),
    /// Copy files or directories between the host and a sandbox: `cp SRC DST`, one of them `NAME:/path`.
    Cp(CpArgs),
    /// Stop a named sandbox: every process ends, its workdir stays.
    Stop(NameArgs),
    /// Pause a running sandbox: its processes (a VM's vCPUs) stop where they are and use no
    /// CPU, keeping their memory and connections, until `resume`.
    Pause(PauseArgs),
    /// Resume a paused or saved sandbox where it stopped.
    Resume(NameArgs),
    /// Remove a stopped or failed sandbox and its workdir.
    #[command(alias = "rm")]
    Remove(RemoveArgs),
    /// List named sandboxes.
    #[command(alias = "ls")]
    List(ListArgs),
    /// Show one named sandbox in detail.
    Inspect(InspectArgs),
    /// Named volumes: directories that outlive sandboxes (`--volume NAME:/path`).
    #[command(subcommand)]
    Volume(VolumeCommand),
    /// The secret store: values that sandboxes get as placeholders (`--secret KEY:host`).
    #[command(subcommand)]
    Secret(SecretCommand),
    /// Snapshots of named sandboxes' writable state (root and workdir).
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// A named sandbox's network: show it, or change an allowlist sandbox's allowlist
    /// (a running sandbox's next connection is judged by the new list).
    #[command(subcommand)]
    Network(NetworkCommand),
    /// Snapshot a named sandbox and make new sandboxes from that one instant (running if it
    /// runs); each then goes its own way.
    Fork(ForkArgs),
    /// The daemon that keeps warm pools, so that `run` starts in about a millisecond.
    #[command(subcommand)]
    Daemon(DaemonCommand),
    /// Measure where a sandbox's time goes on each usable backend: boot, ready, exec,
    /// shutdown, and throughput.
    Bench(Box<BenchArgs>),
    /// Serve the HTTP API that the agentkernel SDKs speak (token: AGENTKERNEL_API_KEY).
    Serve(ServeArgs),
    /// Show the audit log: every sandbox operation and every refused request.
    Audit(AuditArgs),
    /// Serve MCP (Model Context Protocol) on stdin/stdout for agent clients.
    Mcp,
    /// Set agent clients up to use `agentkernel mcp`.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// The local OCI image store: pull images from registries (no Docker needed), list,
    /// inspect, remove, prune.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Build what the microvm backend boots: the guest kernel (from Debian's
    /// linux-source-6.1), the default base image (debootstrap), the agent's initramfs, and
    /// install the vsock daemon. Everything is cached; a second run costs nothing.
    Setup(SetupArgs),
}

#[derive(Debug, Args)]
pub struct SetupArgs {
    /// Only the guest kernel.
    #[arg(long)]
    pub kernel: bool,
    /// Only the base image: `debian-minbase` (the default), a root file system directory, or
    /// a container image (exported through the Docker engine).
    #[arg(long, value_name = "IMAGE", num_args = 0..=1, default_missing_value = "debian-minbase")]
    pub image: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum VolumeCommand {
    /// Create an empty volume (a sandbox naming a missing volume also creates it).
    Create(VolumeCreateArgs),
    /// List volumes: size, and the named sandboxes that mount each.
    #[command(alias = "ls")]
    List(ListArgs),
    /// Show one volume.
    Inspect(InspectArgs),
    /// Remove a volume and its files; refused while a sandbox uses it.
    #[command(alias = "rm")]
    Remove(InspectArgs),
}

#[derive(Debug, Args)]
pub struct VolumeCreateArgs {
    pub name: String,
    /// The most its files may take, e.g. 10G (binary units): a project quota, where the
    /// file system keeps them (ext4 or xfs mounted with prjquota); elsewhere an error.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub size: Option<u64>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

fn parse_size(input: &str) -> Result<u64, String> {
    ak_core::resources::parse_memory(input).map_err(|e| e.to_string())
}

#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Store a secret; its value is read from standard input (never from the command line).
    Set(SecretNameArgs),
    /// List the secrets' names (values are never shown).
    #[command(alias = "ls")]
    List(ListArgs),
    /// Remove a secret.
    #[command(alias = "rm")]
    Remove(SecretNameArgs),
}

#[derive(Debug, Args)]
pub struct SecretNameArgs {
    /// The secret's name (an environment variable name).
    pub name: String,
}

#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Add agentkernel's MCP server to a client's configuration (merging, never clobbering).
    Install {
        /// The client: claude, codex, cursor, gemini or opencode.
        client: String,
        #[command(flatten)]
        target: PluginTarget,
        /// Also replace an agentkernel entry that starts something else (a wrapper, a
        /// remote server): how it starts is set to ours, the rest of it is kept.
        #[arg(long)]
        force: bool,
    },
    /// Remove agentkernel's MCP server from a client's configuration (nothing else).
    Uninstall {
        /// The client: claude, codex, cursor, gemini or opencode.
        client: String,
        #[command(flatten)]
        target: PluginTarget,
    },
}

/// Which of a client's files, and whether to write it.
#[derive(Debug, Args)]
pub struct PluginTarget {
    /// The project's file in the current directory (Claude Code's .mcp.json, Gemini's
    /// .gemini/settings.json, ...) instead of the user's.
    #[arg(long)]
    pub project: bool,
    /// Print the file as it would be written, and write nothing.
    #[arg(long)]
    pub dry_run: bool,
}

impl Command {
    /// Whether this command is a server that lives on and reads other programs' input,
    /// which `ak-server` runs (see `Executable`).
    pub fn is_long_lived_server(&self) -> bool {
        matches!(
            self,
            Command::Daemon(DaemonCommand::Start { foreground: true })
                | Command::Serve(_)
                | Command::Mcp
        )
    }

    /// Whether this command does several sandboxes' blocking work at once (the daemon
    /// serving while it builds spares, the benchmark's throughput run), so it needs a
    /// worker thread per core.
    pub fn needs_worker_threads(&self) -> bool {
        self.is_long_lived_server() || matches!(self, Command::Bench(_))
    }
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Options of the measured sandboxes; without --backend every usable backend is measured.
    #[command(flatten)]
    pub sandbox: SandboxArgs,
    /// Sandboxes taken one at a time through boot, ready, exec and shutdown.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub iterations: u32,
    /// Sandboxes run (create, exec, release) for the throughput figure.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub runs: u32,
    /// How many of those run at once (default: twice the CPUs).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub concurrency: Option<u32>,
    /// Print the results as JSON (no progress bar).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum DaemonCommand {
    /// Start the daemon in the background (or in the foreground with --foreground).
    Start {
        #[arg(long)]
        foreground: bool,
    },
    /// Show the daemon's pools: warm, in use, created, hits, misses, hand-out time.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Stop the daemon: waits for running commands (up to 10 s), then cleans up.
    Stop,
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Pull an image into the store: its layers for this host's platform, each verified
    /// (layers already in the store are not downloaded again). The first sandbox that
    /// uses a layer unpacks it, once; `--unpack` does it now.
    Pull(ImagePullArgs),
    /// List the images in the store.
    #[command(alias = "ls")]
    List(ImageListArgs),
    /// Show one image: its digest, layers and configuration.
    Inspect(ImageArgs),
    /// Remove an image (refused while a sandbox uses it); `prune` then frees its layers.
    #[command(alias = "rm")]
    Remove(ImageArgs),
    /// Remove the layers no image references.
    Prune(ImageListArgs),
}

#[derive(Debug, Args)]
pub struct ImageArgs {
    /// The image reference (`busybox`, `registry.lan:5000/team/tool:1`, `name@sha256:…`).
    pub reference: String,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ImagePullArgs {
    #[command(flatten)]
    pub image: ImageArgs,
    /// Unpack the layers now, while they download (the pull takes longer, the image's
    /// first run does not unpack; a hostile layer fails the pull).
    #[arg(long)]
    pub unpack: bool,
}

#[derive(Debug, Args)]
pub struct ImageListArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Only the entries of this sandbox.
    #[arg(long, value_name = "NAME")]
    pub sandbox: Option<String>,
    /// Only the egress verdicts (connections and DNS answers of allowlist sandboxes).
    #[arg(long)]
    pub network: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on. TCP always requires a token: AGENTKERNEL_API_KEY, `api_key`
    /// under `[api]` in the config, else one generated into the state directory's
    /// `api-token` file (mode 0600; its path is printed at start).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// TCP port (0 picks a free one, printed at start).
    #[arg(long, default_value_t = 18888)]
    pub port: u16,
    /// Listen on this Unix socket (mode 0600, no token needed) instead of TCP.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["host", "port"])]
    pub socket: Option<std::path::PathBuf>,
    /// Serve loopback TCP without a token: every local user can then run commands in your
    /// sandboxes. Refused for any address beyond loopback.
    #[arg(long, conflicts_with = "socket")]
    pub insecure_no_auth: bool,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Name: 1-63 letters, digits, '-', '_' or '.', starting with a letter or digit.
    pub name: String,
    #[command(flatten)]
    pub sandbox: SandboxArgs,
    /// Use this host directory (read-write, at the same path) as the workdir instead of a
    /// directory the service keeps for the sandbox.
    #[arg(long, value_name = "PATH")]
    pub dir: Option<std::path::PathBuf>,
    /// Make the sandbox from this snapshot: its settings and its files (no other sandbox
    /// option applies).
    #[arg(long, value_name = "SNAPSHOT", conflicts_with = "dir")]
    pub from_snapshot: Option<String>,
    /// When to pull an OCI image into the store (native backend): never, missing
    /// (default) or always.
    #[arg(long, default_value_t = ak_image::PullPolicy::Missing)]
    pub pull: ak_image::PullPolicy,
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Snapshot a named sandbox, running (its processes frozen for the copy) or stopped.
    Create(SnapshotCreateArgs),
    /// List snapshots.
    #[command(alias = "ls")]
    List(ListArgs),
    /// Show one snapshot.
    Inspect(InspectArgs),
    /// Remove a snapshot; sandboxes made from it keep their files.
    #[command(alias = "rm")]
    Remove(NameArgs),
}

#[derive(Debug, Subcommand)]
pub enum NetworkCommand {
    /// Show a sandbox's network mode, its allowlist and how many connections it refused.
    Show(InspectArgs),
    /// Replace an allowlist sandbox's allowlist (`--add`: add to it).
    Set(NetworkSetArgs),
}

#[derive(Debug, Args)]
pub struct NetworkSetArgs {
    pub name: String,
    /// Allow a host: a name, a `*.domain` pattern or a preset (pypi, npm, crates, github,
    /// debian). Repeatable.
    #[arg(long = "allow-host", value_name = "HOST")]
    pub allow_host: Vec<String>,
    /// Allow a CIDR or a single address. Repeatable.
    #[arg(long = "allow-cidr", value_name = "CIDR")]
    pub allow_cidr: Vec<String>,
    /// Allow only these destination ports (default: any). Repeatable.
    #[arg(long = "allow-port", value_name = "PORT")]
    pub allow_port: Vec<u16>,
    /// Add the entries to the current allowlist instead of replacing it.
    #[arg(long)]
    pub add: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SnapshotCreateArgs {
    /// The sandbox to snapshot.
    pub sandbox: String,
    /// The snapshot's name (default: `<sandbox>-<unix seconds>`).
    #[arg(long)]
    pub name: Option<String>,
    /// Print JSON instead of the snapshot's name.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ForkArgs {
    /// The sandbox to fork.
    pub name: String,
    /// Names of the new sandboxes (one or more).
    #[arg(required = true)]
    pub new: Vec<String>,
}

#[derive(Debug, Args)]
pub struct NameArgs {
    pub name: String,
}

#[derive(Debug, Args)]
pub struct PauseArgs {
    pub name: String,
    /// Save it to disk with its memory and end its processes (QEMU microVMs): it holds no
    /// memory or CPU until `resume`, which also works after the daemon or host restarted.
    #[arg(long)]
    pub save: bool,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    pub name: String,
    /// Environment variable for the command (repeatable).
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Working directory inside the sandbox.
    #[arg(long)]
    pub workdir: Option<String>,
    /// Run the command on a terminal (interactive programs).
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Wall-clock limit, e.g. 30s; the command and all it started are killed after it.
    #[arg(long)]
    pub timeout: Option<String>,
    /// The command and its arguments (after `--`).
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct AttachArgs {
    pub name: String,
    /// The shell to run (default: /bin/bash if the sandbox has it, else /bin/sh).
    #[arg(long)]
    pub shell: Option<String>,
}

#[derive(Debug, Args)]
pub struct CpArgs {
    /// Source: a host path or NAME:/path.
    pub src: String,
    /// Destination: a host path or NAME:/path.
    pub dst: String,
}

#[derive(Debug, Args)]
pub struct RemoveArgs {
    pub name: String,
    /// Stop the sandbox first if it is running.
    #[arg(short, long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    pub name: String,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

// Sandbox settings shared by every command that makes a sandbox. (A plain comment: clap
// made a flattened struct's doc comment the about text of `run --help` and `create --help`.)
#[derive(Debug, Args)]
pub struct SandboxArgs {
    /// Backend: native, gvisor, docker, podman, microvm, apple.
    #[arg(long, env = "AGENTKERNEL_BACKEND")]
    pub backend: Option<String>,
    /// Image: `host` (the host's root, read-only), a directory, or an OCI image name.
    #[arg(long, env = "AGENTKERNEL_IMAGE")]
    pub image: Option<String>,
    /// Security profile: permissive, moderate (default) or restrictive.
    #[arg(long, env = "AGENTKERNEL_PROFILE")]
    pub profile: Option<String>,
    /// No network at all (only loopback), whatever the profile allows.
    #[arg(long)]
    pub no_network: bool,
    /// Network mode: none, allowlist (only --allow-host/--allow-cidr destinations) or open.
    /// `--network` alone means open, also where a backend gives none by default (a microVM
    /// gets a NIC with NAT; root only).
    #[arg(
        long,
        conflicts_with = "no_network",
        num_args = 0..=1,
        default_missing_value = "open",
        value_name = "MODE"
    )]
    pub network: Option<ak_core::NetworkMode>,
    /// A host an allowlist sandbox may reach: a name, `*.domain`, or a preset (pypi, npm,
    /// crates, github, debian). Repeatable; implies --network allowlist.
    #[arg(long = "allow-host", value_name = "HOST")]
    pub allow_host: Vec<String>,
    /// A CIDR (or one address) an allowlist sandbox may reach. Repeatable.
    #[arg(long = "allow-cidr", value_name = "CIDR")]
    pub allow_cidr: Vec<String>,
    /// A secret the sandbox uses without holding it: `KEY:host`, `KEY:host:header` (value from
    /// the secret store, else the environment) or `KEY=value:host`. Inside, $KEY holds a
    /// placeholder that becomes the value only in HTTPS requests to host. Repeatable;
    /// implies --network allowlist with host allowed.
    #[arg(long = "secret", value_name = "KEY[=VALUE]:HOST[:HEADER]")]
    pub secret: Vec<String>,
    /// A secret whose real value the sandbox reads from /run/agentkernel/secrets/KEY
    /// (visible to the sandbox: for tools that must read a file). Repeatable.
    #[arg(long = "secret-file", value_name = "KEY")]
    pub secret_file: Vec<String>,
    /// The only destination ports an allowlist sandbox may connect to. Repeatable.
    #[arg(long = "allow-port", value_name = "PORT")]
    pub allow_port: Vec<u16>,
    /// Memory limit, e.g. 512M or 2G.
    #[arg(long)]
    pub memory: Option<String>,
    /// CPU limit in CPUs, e.g. 1 or 0.5.
    #[arg(long)]
    pub cpus: Option<f64>,
    /// Maximum number of processes and threads.
    #[arg(long)]
    pub pids: Option<u64>,
    /// Wall-clock limit, e.g. 30s or 5m; the command and all it started are killed after it.
    #[arg(long)]
    pub timeout: Option<String>,
    /// Environment variable for the command (repeatable).
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Working directory inside the sandbox (default /workspace, or the current directory
    /// with --mount-cwd).
    #[arg(long)]
    pub workdir: Option<String>,
    /// Bind the current directory read-write at the same path inside the sandbox.
    #[arg(long)]
    pub mount_cwd: bool,
    /// A named volume (see `agentkernel volume`): NAME:/path, NAME:/path:ro, or
    /// NAME:/path:shared to write alongside other sandboxes (repeatable).
    #[arg(long = "volume", value_name = "NAME:/PATH[:ro|:shared]")]
    pub volumes: Vec<String>,
    /// Clone this git repository (https, ssh or file URL; `#REF` picks a branch, tag or
    /// commit) into the workdir before the sandbox starts.
    #[arg(long, value_name = "URL[#REF]", value_parser = ak_core::source::GitSource::parse_cli)]
    pub source: Option<ak_core::source::GitSource>,
}

impl SandboxArgs {
    /// The flags as the top configuration layer (unset flags leave lower layers alone).
    pub fn options(&self) -> SandboxOptions {
        SandboxOptions {
            backend: self.backend.clone(),
            image: self.image.clone(),
            profile: self.profile.clone(),
            memory: self.memory.clone(),
            cpus: self.cpus,
            pids: self.pids,
            timeout: self.timeout.clone(),
            network: if self.no_network {
                Some(NetworkSetting::Enabled(false))
            } else {
                self.network.map(NetworkSetting::Mode)
            },
            allow_hosts: (!self.allow_host.is_empty()).then(|| self.allow_host.clone()),
            allow_cidrs: (!self.allow_cidr.is_empty()).then(|| self.allow_cidr.clone()),
            allow_ports: (!self.allow_port.is_empty()).then(|| self.allow_port.clone()),
            env: (!self.env.is_empty()).then(|| self.env.clone()),
            workdir: self.workdir.clone(),
            mount_cwd: self.mount_cwd.then_some(true),
            volumes: (!self.volumes.is_empty()).then(|| self.volumes.clone()),
            source: self.source.clone(),
            secrets: (!self.secret.is_empty()).then(|| self.secret.clone()),
            secret_files: (!self.secret_file.is_empty()).then(|| self.secret_file.clone()),
        }
    }
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub sandbox: SandboxArgs,
    /// Take a sandbox from the daemon's warm pool; fail if no daemon runs. (Without it, the
    /// pool is used when a daemon runs and the sandbox has no host mounts.)
    #[arg(short = 'F', long)]
    pub fast: bool,
    /// When to pull an OCI image into the store (native backend): never, missing
    /// (default) or always.
    #[arg(long, default_value_t = ak_image::PullPolicy::Missing)]
    pub pull: ak_image::PullPolicy,
    /// The command and its arguments (after `--`). Without one, an OCI image's own
    /// `Entrypoint`/`Cmd` runs, as `docker run IMAGE` does.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn run_help(mut tree: clap::Command) -> String {
        tree.build();
        let run = tree.find_subcommand_mut("run").expect("a run subcommand");
        format!("{}\n{}", run.render_long_help(), run.render_usage())
    }

    /// What `argv` gives: the options and `run`'s arguments, or the error's text.
    fn outcome(parsed: Result<(GlobalArgs, Box<RunArgs>), clap::Error>) -> String {
        match parsed {
            Ok((global, args)) => format!("{global:?} {args:?}"),
            Err(error) => format!("{:?}: {error}", error.kind()),
        }
    }

    fn whole_tree(argv: &[&str]) -> String {
        outcome(Cli::try_parse_from(argv).map(|cli| match cli.command {
            Command::Run(args) => (cli.global, args),
            other => panic!("{argv:?} parsed as {other:?}"),
        }))
    }

    fn run_alone(argv: &[&str]) -> String {
        outcome(RunCommandLine::try_parse_from(argv).map(|line| {
            let RunOnly::Run(args) = line.command;
            (line.global, args)
        }))
    }

    #[test]
    fn run_alone_helps_as_run_in_the_whole_tree() {
        let whole = run_help(Cli::command());
        assert!(whole.starts_with(RUN_ABOUT), "{whole}");
        assert_eq!(whole, run_help(RunCommandLine::command()));
    }

    /// Each command's help says what that command does: a flattened struct's doc comment
    /// once replaced the text of both `run` and `create`.
    #[test]
    fn every_command_has_its_own_about_text() {
        let mut tree = Cli::command();
        tree.build();
        let mut seen = std::collections::HashMap::new();
        for command in tree.get_subcommands() {
            let about = command
                .get_about()
                .map(ToString::to_string)
                .unwrap_or_default();
            assert!(
                !about.is_empty(),
                "{} has no about text",
                command.get_name()
            );
            if let Some(other) = seen.insert(about.clone(), command.get_name().to_string()) {
                panic!("{other} and {} both say {about:?}", command.get_name());
            }
        }
    }

    #[test]
    fn run_alone_parses_and_fails_as_run_in_the_whole_tree() {
        let argvs: &[&[&str]] = &[
            &["agentkernel", "run", "--", "echo", "hi"],
            &[
                "agentkernel",
                "run",
                "-v",
                "--no-network",
                "--",
                "echo",
                "hi",
            ],
            &[
                "agentkernel",
                "run",
                "--memory",
                "256M",
                "-F",
                "--",
                "sh",
                "-c",
                "x",
            ],
            &["agentkernel", "run", "--bogus", "--", "true"],
            &["agentkernel", "run", "--memory"],
            &["agentkernel", "run", "--pull", "sometimes", "--", "true"],
            &["agentkernel", "run", "stray", "--", "true"],
            &["agentkernel", "run", "--help"],
            &["agentkernel", "run", "--version"],
        ];
        for argv in argvs {
            assert_eq!(whole_tree(argv), run_alone(argv), "{argv:?}");
        }
        // And the outcomes are what they look like, not two equal failures.
        assert!(run_alone(argvs[1]).contains("verbose: 1"));
        assert!(run_alone(argvs[3]).starts_with("UnknownArgument"));
        assert!(run_alone(argvs[7]).starts_with("DisplayHelp"));
    }
}
