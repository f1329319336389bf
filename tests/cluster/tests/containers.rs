//! The container build files agree with what runs them: the binary each
//! builds is one the workspace defines, the entrypoint is the one the local
//! node maps the image to, and the user is the uid the pod specs and the
//! local node use. (No container engine runs here, so nothing is built.)

use std::path::Path;

use llamanet_cluster::ImageCatalog;
use llamanet_cluster::kubelet::IMAGE_USER;

fn read(rel: &str) -> String {
    let path = llamanet_cluster::testing::repo_root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn dockerfiles_match_images_binaries_and_users() {
    let catalog = ImageCatalog::workspace(Path::new("/unused"));
    for (file, image, manifest) in [
        (
            "deploy/docker/node.Dockerfile",
            "llamanet-node",
            "node/Cargo.toml",
        ),
        (
            "deploy/docker/node-cuda.Dockerfile",
            "llamanet-node",
            "node/Cargo.toml",
        ),
        (
            "deploy/docker/operator.Dockerfile",
            "llamanet-operator",
            "operator/Cargo.toml",
        ),
    ] {
        let docker = read(file);
        let local = catalog.resolve(image).unwrap();
        let entry = &local.entrypoint[0];

        assert!(
            docker.contains(&format!("--bin {entry}")),
            "{file} must build the binary {entry}"
        );
        assert!(
            read(manifest).contains(&format!("name = \"{entry}\"")),
            "{manifest} defines no binary {entry} that {file} builds"
        );
        assert!(
            docker.contains(&format!("ENTRYPOINT [\"{entry}\"]")),
            "{file}: entrypoint must be {entry}, as the local node runs it"
        );
        let user = format!("USER {IMAGE_USER}:{IMAGE_USER}");
        assert!(docker.contains(&user), "{file} must run as {user}");
    }
    assert!(
        read("deploy/docker/node-cuda.Dockerfile").contains("--features cuda"),
        "the CUDA image builds the cuda feature"
    );
    // The operator's pod specs run nodes as the images' user.
    assert!(read("operator/src/children.rs").contains(&IMAGE_USER.to_string()));
}
