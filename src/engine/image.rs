//! In-memory image build contexts: a Dockerfile and files, packed as a tar for the engine.
//!
//! No image can be pulled where rollout is tested, so every image is built `FROM scratch` from a
//! static binary (busybox, or rollout itself) and the files it needs.

/// A file to put in a build context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextFile {
    /// Path inside the context, relative (`bin/busybox`).
    pub path: String,
    pub mode: u32,
    pub contents: Vec<u8>,
}

/// A Dockerfile and the files it copies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuildContext {
    pub dockerfile: String,
    pub files: Vec<ContextFile>,
}
