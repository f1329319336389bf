//! Images without a registry: a container image of this project names a set of
//! binaries built from this workspace.
//!
//! "Pulling" copies the image's binaries into the node's image folder (world
//! readable, so pods that run as a non-root user can execute them). Any image
//! not in the catalog fails like a missing image would, with a message saying
//! which images exist.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The user our Dockerfiles declare (`USER 65532`, distroless "nonroot").
pub const IMAGE_USER: u32 = 65532;

/// One local image: binaries and the entrypoint used when a container sets no command.
#[derive(Debug, Clone)]
pub struct LocalImage {
    /// Repository name, the last path segment without tag or digest (`llamanet-node`).
    pub name: String,
    /// Where the binaries are built.
    pub source_dir: PathBuf,
    /// Binaries of `source_dir` that make up the image.
    pub binaries: Vec<String>,
    /// argv when the container gives no `command`.
    pub entrypoint: Vec<String>,
    /// uid when the pod's security context names none.
    pub user: u32,
    /// How to build the binaries, for the message when they are missing.
    pub build: &'static str,
}

/// The images this node can run, by repository name.
#[derive(Debug, Clone, Default)]
pub struct ImageCatalog {
    images: BTreeMap<String, LocalImage>,
}

/// Why a container's image can't be used: the pod shows `ErrImagePull` with this message.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image {image:?} is not built by this workspace (local images: {known})")]
    Unknown { image: String, known: String },
    #[error("image {image:?}: binary {path} is missing; build it first ({build})")]
    NotBuilt {
        image: String,
        path: PathBuf,
        build: &'static str,
    },
    #[error("image {image:?}: copying {path}: {source}")]
    Copy {
        image: String,
        path: PathBuf,
        source: std::io::Error,
    },
}

impl ImageCatalog {
    /// The project's images: `llamanet-node` and `llamanet-operator`, made of binaries in
    /// `bin_dir` (a cargo target profile folder), and `llamanet-router`, the node binary
    /// built without the engine that `scripts/setup.sh` puts in `light/` beside it.
    pub fn workspace(bin_dir: &Path) -> Self {
        let mut catalog = Self::default();
        catalog.add(LocalImage {
            name: "llamanet-node".into(),
            source_dir: bin_dir.into(),
            binaries: vec!["llamanet".into()],
            entrypoint: vec!["llamanet".into()],
            user: IMAGE_USER,
            build: "cargo build --release --workspace",
        });
        catalog.add(LocalImage {
            name: "llamanet-router".into(),
            source_dir: bin_dir.parent().unwrap_or(bin_dir).join("light"),
            binaries: vec!["llamanet".into()],
            entrypoint: vec!["llamanet".into()],
            user: IMAGE_USER,
            build: "scripts/setup.sh",
        });
        catalog.add(LocalImage {
            name: "llamanet-operator".into(),
            source_dir: bin_dir.into(),
            binaries: vec!["llamanet-operator".into()],
            entrypoint: vec!["llamanet-operator".into()],
            user: IMAGE_USER,
            build: "cargo build --release --workspace",
        });
        catalog
    }

    pub fn add(&mut self, image: LocalImage) {
        self.images.insert(image.name.clone(), image);
    }

    /// Finds the image a container names (`ghcr.io/llamanet/llamanet-node:0.1`,
    /// `llamanet-node@sha256:...` and `llamanet-node` all name `llamanet-node`).
    pub fn resolve(&self, image: &str) -> Result<&LocalImage, ImageError> {
        let name = repository_name(image);
        self.images.get(name).ok_or_else(|| ImageError::Unknown {
            image: image.into(),
            known: self.images.keys().cloned().collect::<Vec<_>>().join(", "),
        })
    }

    /// Copies the image's binaries into `images_dir/<name>/` when missing or
    /// older than the build, and returns that folder.
    pub fn pull(&self, image: &LocalImage, images_dir: &Path) -> Result<PathBuf, ImageError> {
        let dest_dir = images_dir.join(&image.name);
        let copy_err = |path: &Path, source| ImageError::Copy {
            image: image.name.clone(),
            path: path.into(),
            source,
        };
        std::fs::create_dir_all(&dest_dir).map_err(|e| copy_err(&dest_dir, e))?;
        for bin in &image.binaries {
            let src = image.source_dir.join(bin);
            let src_meta = std::fs::metadata(&src).map_err(|_| ImageError::NotBuilt {
                image: image.name.clone(),
                path: src.clone(),
                build: image.build,
            })?;
            let dest = dest_dir.join(bin);
            let fresh = std::fs::metadata(&dest)
                .and_then(|d| Ok(d.modified()? >= src_meta.modified()?))
                .unwrap_or(false);
            if !fresh {
                // Copy to a private temporary file, then rename: pods pulling
                // at the same time don't collide, and a running pod keeps its
                // old binary intact.
                let mut tmp = tempfile::NamedTempFile::new_in(&dest_dir)
                    .map_err(|e| copy_err(&dest_dir, e))?;
                let mut from = std::fs::File::open(&src).map_err(|e| copy_err(&src, e))?;
                std::io::copy(&mut from, tmp.as_file_mut()).map_err(|e| copy_err(&src, e))?;
                tmp.as_file()
                    .set_permissions(std::fs::Permissions::from_mode(0o755))
                    .map_err(|e| copy_err(tmp.path(), e))?;
                tmp.persist(&dest).map_err(|e| copy_err(&dest, e.error))?;
            }
        }
        Ok(dest_dir)
    }
}

/// `registry:5000/org/name:tag@sha256:...` -> `name`.
fn repository_name(image: &str) -> &str {
    let without_digest = image.split('@').next().unwrap_or(image);
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    last.split(':').next().unwrap_or(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_names() {
        assert_eq!(repository_name("llamanet-node"), "llamanet-node");
        assert_eq!(
            repository_name("ghcr.io/llamanet/llamanet-node:0.1.0"),
            "llamanet-node"
        );
        assert_eq!(
            repository_name("localhost:5000/llamanet-operator@sha256:abc"),
            "llamanet-operator"
        );
    }

    #[test]
    fn unknown_image_names_the_known_ones() {
        let catalog = ImageCatalog::workspace(Path::new("/nonexistent"));
        let err = catalog.resolve("docker.io/library/nginx:1.27").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("nginx:1.27"), "{msg}");
        assert!(
            msg.contains("llamanet-node, llamanet-operator, llamanet-router"),
            "{msg}"
        );
    }

    #[test]
    fn pull_copies_once_and_reports_missing_builds() {
        let build = tempfile::tempdir().unwrap();
        let images = tempfile::tempdir().unwrap();
        let catalog = ImageCatalog::workspace(build.path());
        let node = catalog.resolve("llamanet-node:dev").unwrap();
        let err = catalog.pull(node, images.path()).unwrap_err();
        assert!(matches!(err, ImageError::NotBuilt { .. }), "{err}");

        std::fs::write(build.path().join("llamanet"), b"#!/bin/sh\n").unwrap();
        let dir = catalog.pull(node, images.path()).unwrap();
        let copied = dir.join("llamanet");
        assert_eq!(std::fs::read(&copied).unwrap(), b"#!/bin/sh\n");
        let mode = std::fs::metadata(&copied).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
    }

    #[test]
    fn the_router_image_is_the_engine_less_build_beside_the_profile() {
        let target = tempfile::tempdir().unwrap();
        let release = target.path().join("release");
        let images = tempfile::tempdir().unwrap();
        let catalog = ImageCatalog::workspace(&release);
        let router = catalog
            .resolve("ghcr.io/llamanet/llamanet-router:0.1.0")
            .unwrap();
        let err = catalog.pull(router, images.path()).unwrap_err();
        assert!(err.to_string().contains("scripts/setup.sh"), "{err}");

        std::fs::create_dir_all(target.path().join("light")).unwrap();
        std::fs::write(target.path().join("light/llamanet"), b"light").unwrap();
        let dir = catalog.pull(router, images.path()).unwrap();
        assert_eq!(std::fs::read(dir.join("llamanet")).unwrap(), b"light");
        assert!(dir.ends_with("llamanet-router"));
    }
}
