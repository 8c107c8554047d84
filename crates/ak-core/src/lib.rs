//! ak-core: the domain types (sandbox spec, resources, security policy, images, state
//! machine), configuration, and the `Backend` trait that every backend implements.

pub mod backend;
pub mod config;
pub mod egress;
pub mod error;
pub mod exec;
pub mod host_image;
pub mod image;
pub mod image_options;
pub mod kvm;
pub mod policy;
pub mod process;
pub mod random;
pub mod resources;
pub mod runtime;
pub mod secrets;
pub mod source;
pub mod spec;
pub mod state;
pub mod volume;
pub mod watch;

pub use ak_protocol::{ExecSpec, ExitStatus, PtySize, StdinMode};
pub use backend::{Backend, BackendKind, BackendProbe, Sandbox, Transport};
pub use error::{BackendError, ConfigError};
pub use image::{ImageConfig, ImageRef, StoredImage};
pub use policy::{Capability, NetworkMode, Profile, SecurityPolicy};
pub use resources::Resources;
pub use spec::{Mount, SandboxSpec};
pub use state::SandboxState;
