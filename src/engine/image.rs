//! In-memory image build contexts: a Dockerfile and files, packed as a tar for the engine.
//!
//! No image can be pulled where rollout is tested, so every image is built `FROM scratch` from a
//! static binary (busybox, or rollout itself) and the files it needs. [`busybox_context`] is the
//! usual starting point: a scratch image whose `/bin` holds Debian's static busybox.

use std::collections::BTreeSet;
use std::io;
use std::path::Path;

/// Where Debian's `busybox-static` package installs its binary.
pub const BUSYBOX_PATH: &str = "/bin/busybox";

/// Applets linked into `/bin` of a busybox image. `sh` is what matters: Docker runs shell-form
/// `CMD` and `HEALTHCHECK CMD-SHELL` through `/bin/sh`, and Debian's busybox shell runs any
/// applet by name without a link. The others let exec-form commands find them on `PATH`.
const BUSYBOX_APPLETS: &[&str] = &[
    "sh", "cat", "echo", "env", "false", "httpd", "ls", "nc", "sleep", "test", "true", "wget",
];

/// A file to put in a build context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextFile {
    /// Path inside the context, relative (`bin/busybox`).
    pub path: String,
    pub mode: u32,
    pub contents: Vec<u8>,
}

/// A symbolic link in a build context. Docker's `COPY dir/ /dir/` keeps links inside a copied
/// directory as links, which is how one busybox binary answers to several names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextLink {
    /// Path inside the context, relative (`bin/sh`).
    pub path: String,
    /// What the link points at, as stored in the link (`busybox`).
    pub target: String,
}

/// A Dockerfile and the files it copies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuildContext {
    pub dockerfile: String,
    pub files: Vec<ContextFile>,
    pub symlinks: Vec<ContextLink>,
}

impl BuildContext {
    /// The context as the tar body `POST /build` expects: the Dockerfile as `Dockerfile`, every
    /// parent directory, then the files and links.
    ///
    /// Owner, group and times are fixed so the same context always packs to the same bytes and the
    /// engine's build cache can reuse layers. Fails only on a path a tar cannot hold (absolute or
    /// with `..`).
    pub fn to_tar(&self) -> io::Result<Vec<u8>> {
        let mut builder = tar::Builder::new(Vec::new());
        append_file(
            &mut builder,
            "Dockerfile",
            0o644,
            self.dockerfile.as_bytes(),
        )?;

        let mut dirs = BTreeSet::new();
        let paths = self
            .files
            .iter()
            .map(|f| f.path.as_str())
            .chain(self.symlinks.iter().map(|l| l.path.as_str()));
        for path in paths {
            check_relative(path)?;
            let mut parent = Path::new(path).parent();
            while let Some(dir) = parent.filter(|d| !d.as_os_str().is_empty()) {
                dirs.insert(dir.to_path_buf());
                parent = dir.parent();
            }
        }
        // BTreeSet order puts `a` before `a/b`, so parents precede their children.
        for dir in &dirs {
            let mut header = fixed_header(tar::EntryType::Directory, 0o755);
            builder.append_data(&mut header, dir, io::empty())?;
        }
        for f in &self.files {
            append_file(&mut builder, &f.path, f.mode, &f.contents)?;
        }
        for l in &self.symlinks {
            let mut header = fixed_header(tar::EntryType::Symlink, 0o777);
            builder.append_link(&mut header, &l.path, &l.target)?;
        }
        builder.into_inner()
    }
}

fn check_relative(path: &str) -> io::Result<()> {
    let p = Path::new(path);
    let ok = !path.is_empty()
        && p.components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
    if ok {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("build context path `{path}` must be relative, without `.` or `..`"),
        ))
    }
}

fn fixed_header(kind: tar::EntryType, mode: u32) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_size(0);
    header
}

fn append_file(
    builder: &mut tar::Builder<Vec<u8>>,
    path: &str,
    mode: u32,
    contents: &[u8],
) -> io::Result<()> {
    check_relative(path)?;
    let mut header = fixed_header(tar::EntryType::Regular, mode);
    header.set_size(contents.len() as u64);
    builder.append_data(&mut header, path, contents)
}

/// The static busybox binary from Debian's `busybox-static` package.
///
/// A dynamically linked busybox (the `busybox` package) would not start in a scratch image, so
/// the file is refused unless it is an ELF without a program interpreter.
pub fn busybox_binary() -> io::Result<Vec<u8>> {
    let bytes = std::fs::read(BUSYBOX_PATH).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "busybox-static is not installed: apt-get install -y busybox-static ({BUSYBOX_PATH}: {e})"
            ),
        )
    })?;
    match elf_is_static(&bytes) {
        Some(true) => Ok(bytes),
        Some(false) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{BUSYBOX_PATH} is dynamically linked, so it cannot run in a scratch image: apt-get install -y busybox-static"
            ),
        )),
        None => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{BUSYBOX_PATH} is not an ELF executable: apt-get install -y busybox-static"),
        )),
    }
}

/// `Some(true)` for an ELF with no `PT_INTERP` program header, `Some(false)` for one with it,
/// `None` for anything that is not a well-formed ELF.
pub fn elf_is_static(bytes: &[u8]) -> Option<bool> {
    const PT_INTERP: u32 = 3;
    if bytes.get(..4)? != b"\x7fELF" {
        return None;
    }
    let is64 = match bytes.get(4)? {
        1 => false,
        2 => true,
        _ => return None,
    };
    let little = match bytes.get(5)? {
        1 => true,
        2 => false,
        _ => return None,
    };
    let read = |at: usize, len: usize| -> Option<u64> {
        let raw = bytes.get(at..at.checked_add(len)?)?;
        let mut v: u64 = 0;
        for i in 0..len {
            let b = if little { raw[len - 1 - i] } else { raw[i] };
            v = (v << 8) | u64::from(b);
        }
        Some(v)
    };
    let (phoff, phentsize, phnum) = if is64 {
        (read(0x20, 8)?, read(0x36, 2)?, read(0x38, 2)?)
    } else {
        (read(0x1c, 4)?, read(0x2a, 2)?, read(0x2c, 2)?)
    };
    let phoff = usize::try_from(phoff).ok()?;
    let phentsize = usize::try_from(phentsize).ok()?;
    for i in 0..usize::try_from(phnum).ok()? {
        let entry = phoff.checked_add(i.checked_mul(phentsize)?)?;
        if read(entry, 4)? == u64::from(PT_INTERP) {
            return Some(false);
        }
    }
    Some(true)
}

/// A scratch image with busybox at `/bin/busybox` and common applets linked to it.
///
/// The Dockerfile is `FROM scratch`, `COPY bin/ /bin/`, one `COPY` per other top-level entry of
/// `extra_files` (each file lands at the same path in the image: `www/index.html` becomes
/// `/www/index.html`), then `dockerfile_tail` (`CMD`, `HEALTHCHECK`, `EXPOSE`, `ENV`...). There
/// is no `RUN`: the image needs nothing executed at build time. Extra files under `bin/` join
/// busybox there.
pub fn busybox_context(
    dockerfile_tail: &str,
    extra_files: Vec<ContextFile>,
) -> io::Result<BuildContext> {
    let busybox = busybox_binary()?;
    let mut dockerfile = String::from("FROM scratch\nCOPY bin/ /bin/\n");
    let mut tops = BTreeSet::new();
    for f in &extra_files {
        check_relative(&f.path)?;
        let mut parts = f.path.splitn(2, '/');
        let top = parts.next().unwrap_or_default();
        match parts.next() {
            Some(_) if top != "bin" => {
                tops.insert(format!("COPY {top}/ /{top}/\n"));
            }
            Some(_) => {}
            None => {
                tops.insert(format!("COPY {top} /{top}\n"));
            }
        }
    }
    for line in &tops {
        dockerfile.push_str(line);
    }
    dockerfile.push_str(dockerfile_tail);
    if !dockerfile.ends_with('\n') {
        dockerfile.push('\n');
    }

    let mut files = vec![ContextFile {
        path: "bin/busybox".to_string(),
        mode: 0o755,
        contents: busybox,
    }];
    files.extend(extra_files);
    let symlinks = BUSYBOX_APPLETS
        .iter()
        .filter(|applet| !files.iter().any(|f| f.path == format!("bin/{applet}")))
        .map(|applet| ContextLink {
            path: format!("bin/{applet}"),
            target: "busybox".to_string(),
        })
        .collect();
    Ok(BuildContext {
        dockerfile,
        files,
        symlinks,
    })
}

/// The helper image rollout runs short-lived utility containers from (volume copies), built
/// locally from [`util_context`] when the engine lacks it. One tag per rollout version.
pub const UTIL_IMAGE: &str = concat!("rollout-util:", env!("CARGO_PKG_VERSION"));

/// Applets the utility image links into `/bin` beyond the usual ones.
const UTIL_APPLETS: &[&str] = &["cp", "mkdir", "rm", "tar"];

/// The build context of [`UTIL_IMAGE`]: busybox with the file tools a helper container needs.
/// It has no `CMD`: every helper container names its command.
pub fn util_context() -> io::Result<BuildContext> {
    // No LABEL: a container inherits its image's labels, and helper containers carry only the
    // labels they are given.
    let mut context = busybox_context("", Vec::new())?;
    for applet in UTIL_APPLETS {
        let path = format!("bin/{applet}");
        if !context.symlinks.iter().any(|l| l.path == path) {
            context.symlinks.push(ContextLink {
                path,
                target: "busybox".to_string(),
            });
        }
    }
    Ok(context)
}

/// Where the edge proxy keeps its routing table inside its container.
pub const PROXY_STATE_DIR: &str = "/state";
/// The edge proxy's admin port inside its container.
pub const PROXY_ADMIN_PORT: u16 = 7481;

/// The edge proxy's image tag for a given static rollout binary: the version and a digest of
/// the binary, so a rebuilt rollout never runs a stale proxy image of the same version.
pub fn proxy_image(binary: &[u8]) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    binary.hash(&mut h);
    format!(
        "rollout-proxy:{}-{:016x}",
        env!("CARGO_PKG_VERSION"),
        h.finish()
    )
}

/// rollout's own binary, statically linked, for the proxy image: `$ROLLOUT_STATIC_BINARY` if set,
/// else the running executable if it is static. A dynamically linked build cannot run in a
/// `FROM scratch` image, so it is refused with how to make a static one.
pub fn static_rollout_binary() -> io::Result<Vec<u8>> {
    let path = std::env::var_os("ROLLOUT_STATIC_BINARY")
        .map(std::path::PathBuf::from)
        .unwrap_or(std::env::current_exe()?);
    let bytes = std::fs::read(&path)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot read {}: {e}", path.display())))?;
    match elf_is_static(&bytes) {
        Some(true) => Ok(bytes),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} is not a statically linked rollout, which the edge proxy's FROM scratch image needs: build one with scripts/build-static.sh and point ROLLOUT_STATIC_BINARY at it",
                path.display()
            ),
        )),
    }
}

/// The edge proxy's image: rollout's static binary alone, running `rollout proxy`. The admin API
/// binds 0.0.0.0 inside the container's own network namespace and is published on 127.0.0.1 only.
pub fn proxy_context(binary: Vec<u8>) -> BuildContext {
    let dockerfile = format!(
        "FROM scratch\nCOPY rollout /rollout\nVOLUME {PROXY_STATE_DIR}\nEXPOSE {PROXY_ADMIN_PORT}\nENTRYPOINT [\"/rollout\", \"proxy\", \"--admin\", \"0.0.0.0:{PROXY_ADMIN_PORT}\", \"--state\", \"{PROXY_STATE_DIR}\", \"--bind\", \"0.0.0.0\"]\n"
    );
    BuildContext {
        dockerfile,
        files: vec![ContextFile {
            path: "rollout".into(),
            mode: 0o755,
            contents: binary,
        }],
        symlinks: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Entry {
        path: String,
        kind: tar::EntryType,
        mode: u32,
        data: Vec<u8>,
        link: Option<String>,
    }

    fn entries(tar_bytes: &[u8]) -> Vec<Entry> {
        let mut archive = tar::Archive::new(tar_bytes);
        let mut out = Vec::new();
        for entry in archive.entries().expect("entries") {
            let mut entry = entry.expect("entry");
            let path = entry.path().expect("path").to_string_lossy().into_owned();
            let kind = entry.header().entry_type();
            let mode = entry.header().mode().expect("mode");
            let link = entry
                .link_name()
                .expect("link")
                .map(|l| l.to_string_lossy().into_owned());
            let mut data = Vec::new();
            io::Read::read_to_end(&mut entry, &mut data).expect("read");
            out.push(Entry {
                path,
                kind,
                mode,
                data,
                link,
            });
        }
        out
    }

    #[test]
    fn to_tar_holds_dockerfile_files_with_modes_dirs_and_links() {
        let ctx = BuildContext {
            dockerfile: "FROM scratch\n".into(),
            files: vec![
                ContextFile {
                    path: "bin/tool".into(),
                    mode: 0o755,
                    contents: b"#!x".to_vec(),
                },
                ContextFile {
                    path: "www/a/index.html".into(),
                    mode: 0o600,
                    contents: b"hello".to_vec(),
                },
            ],
            symlinks: vec![ContextLink {
                path: "bin/sh".into(),
                target: "tool".into(),
            }],
        };
        let got = entries(&ctx.to_tar().expect("tar"));
        let names: Vec<&str> = got.iter().map(|e| e.path.as_str()).collect();
        let find = |p: &str| {
            got.iter()
                .find(|e| e.path.trim_end_matches('/') == p)
                .unwrap_or_else(|| panic!("{p} missing from {names:?}"))
        };
        assert_eq!(got[0].path, "Dockerfile");
        assert_eq!(got[0].data, b"FROM scratch\n");
        assert_eq!(got[0].mode, 0o644);

        let tool = find("bin/tool");
        assert_eq!(tool.kind, tar::EntryType::Regular);
        assert_eq!((tool.mode, tool.data.as_slice()), (0o755, &b"#!x"[..]));
        let page = find("www/a/index.html");
        assert_eq!((page.mode, page.data.as_slice()), (0o600, &b"hello"[..]));
        for dir in ["bin", "www", "www/a"] {
            assert_eq!(find(dir).kind, tar::EntryType::Directory);
        }
        // Parents come before what they hold, as an extractor needs.
        let at = |p: &str| names.iter().position(|n| n.trim_end_matches('/') == p);
        assert!(at("www") < at("www/a") && at("www/a") < at("www/a/index.html"));
        let link = find("bin/sh");
        assert_eq!(link.kind, tar::EntryType::Symlink);
        assert_eq!(link.link.as_deref(), Some("tool"));

        // Same context, same bytes: the build cache depends on it.
        assert_eq!(ctx.to_tar().expect("tar"), ctx.to_tar().expect("tar"));
    }

    #[test]
    fn to_tar_refuses_paths_outside_the_context() {
        for bad in ["/etc/passwd", "../x", "a/../../b", ""] {
            let ctx = BuildContext {
                dockerfile: String::new(),
                files: vec![ContextFile {
                    path: bad.into(),
                    mode: 0o644,
                    contents: vec![],
                }],
                symlinks: vec![],
            };
            assert!(ctx.to_tar().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn static_elf_check() {
        // Minimal ELF64 LE headers: one program header of the given type.
        let elf = |ptype: u32| {
            let mut b = vec![0u8; 0x40 + 0x38];
            b[..4].copy_from_slice(b"\x7fELF");
            b[4] = 2;
            b[5] = 1;
            b[0x20..0x28].copy_from_slice(&0x40u64.to_le_bytes());
            b[0x36..0x38].copy_from_slice(&0x38u16.to_le_bytes());
            b[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
            b[0x40..0x44].copy_from_slice(&ptype.to_le_bytes());
            b
        };
        assert_eq!(elf_is_static(&elf(1)), Some(true));
        assert_eq!(elf_is_static(&elf(3)), Some(false));
        assert_eq!(elf_is_static(b"#!/bin/sh\n"), None);
        assert_eq!(elf_is_static(&elf(1)[..0x42]), None);
        // This test binary is linked against the C library, so it has an interpreter.
        let me = std::fs::read(std::env::current_exe().expect("exe")).expect("read exe");
        assert_eq!(elf_is_static(&me), Some(false));
        let busybox = busybox_binary().expect("busybox-static is required to test rollout");
        assert_eq!(elf_is_static(&busybox), Some(true));
    }

    #[test]
    fn busybox_context_copies_extra_files_to_the_same_paths() {
        let ctx = busybox_context(
            "CMD [\"/bin/busybox\",\"httpd\",\"-f\"]",
            vec![
                ContextFile {
                    path: "www/index.html".into(),
                    mode: 0o644,
                    contents: b"hi".to_vec(),
                },
                ContextFile {
                    path: "motd".into(),
                    mode: 0o644,
                    contents: b"hi".to_vec(),
                },
            ],
        )
        .expect("busybox-static is required to test rollout");
        assert_eq!(
            ctx.dockerfile,
            "FROM scratch\nCOPY bin/ /bin/\nCOPY motd /motd\nCOPY www/ /www/\nCMD [\"/bin/busybox\",\"httpd\",\"-f\"]\n"
        );
        assert_eq!(ctx.files[0].path, "bin/busybox");
        assert!(
            ctx.symlinks
                .iter()
                .any(|l| l.path == "bin/sh" && l.target == "busybox")
        );
    }

    #[test]
    fn util_context_links_the_file_tools() {
        let ctx = util_context().expect("busybox-static is required to test rollout");
        assert!(
            ctx.dockerfile
                .starts_with("FROM scratch\nCOPY bin/ /bin/\n")
        );
        assert!(!ctx.dockerfile.contains("CMD"));
        for applet in ["sh", "cp", "tar"] {
            assert!(
                ctx.symlinks
                    .iter()
                    .any(|l| l.path == format!("bin/{applet}") && l.target == "busybox"),
                "{applet}"
            );
        }
        assert!(UTIL_IMAGE.starts_with("rollout-util:"));
        assert!(UTIL_IMAGE.ends_with(env!("CARGO_PKG_VERSION")));
    }
}
