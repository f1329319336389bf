//! The container build files agree with what runs them: the binary each builds is one the
//! workspace defines and is its entrypoint, and the user is the uid the operator's pod specs
//! run as; and the real node's images and tools are the versions the scripts build.
//! (scripts/build-images.sh builds the images; tests/integration/real_node.rs runs them.)

/// The uid:gid the images run as and the operator's pod specs ask for.
const IMAGE_USER: u32 = 65532;

fn read(rel: &str) -> String {
    let path = llamanet_cluster::testing::repo_root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn dockerfiles_match_binaries_and_users() {
    for (file, binary, manifest) in [
        (
            "deploy/docker/node.Dockerfile",
            "llamanet",
            "node/Cargo.toml",
        ),
        (
            "deploy/docker/node-cuda.Dockerfile",
            "llamanet",
            "node/Cargo.toml",
        ),
        (
            "deploy/docker/router.Dockerfile",
            "llamanet",
            "node/Cargo.toml",
        ),
        (
            "deploy/docker/operator.Dockerfile",
            "llamanet-operator",
            "operator/Cargo.toml",
        ),
    ] {
        let docker = read(file);
        assert!(
            docker.contains(&format!("--bin {binary}")),
            "{file} must build the binary {binary}"
        );
        assert!(
            read(manifest).contains(&format!("name = \"{binary}\"")),
            "{manifest} defines no binary {binary} that {file} builds"
        );
        assert!(
            docker.contains(&format!("ENTRYPOINT [\"{binary}\"]")),
            "{file}: the entrypoint must be {binary}"
        );
        let user = format!("USER {IMAGE_USER}:{IMAGE_USER}");
        assert!(docker.contains(&user), "{file} must run as {user}");
    }
    assert!(
        read("deploy/docker/node-cuda.Dockerfile").contains("--features cuda"),
        "the CUDA image builds the cuda feature"
    );
    assert!(
        read("deploy/docker/router.Dockerfile").contains("--no-default-features"),
        "the router image is the build without llama.cpp"
    );
    // The operator's pod specs run nodes as the images' user.
    assert!(read("operator/src/children.rs").contains(&IMAGE_USER.to_string()));
}

/// The names the real node's code uses for what the scripts build: the CoreDNS image's tag
/// (its binary's version), the pause image, crictl's version.
#[test]
fn the_real_node_uses_the_versions_the_scripts_build() {
    let common = read("scripts/common.sh");
    let version = |name: &str| -> String {
        common
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name} in scripts/common.sh"))
            .to_owned()
    };
    let coredns = version("COREDNS_VERSION");
    let manifest = read("tests/cluster/manifests/coredns.yaml");
    let image = format!(
        "image: localhost/llamanet/coredns:{}",
        coredns.trim_start_matches('v')
    );
    assert!(
        manifest.contains(&image),
        "the CoreDNS manifest lacks {image}"
    );

    // crictl as scripts/build-tools.sh built it says the pinned version.
    let crictl = llamanet_cluster::real_node::crictl_bin();
    let out = std::process::Command::new(&crictl)
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/build-tools.sh)", crictl.display()));
    let said = String::from_utf8_lossy(&out.stdout);
    let want = version("CRICTL_VERSION");
    assert!(
        said.split_whitespace().any(|word| word == want),
        "{} says {said:?}, scripts/common.sh pins {want}",
        crictl.display()
    );

    let pause = format!("PAUSE_IMAGE={}", llamanet_cluster::real_node::PAUSE_IMAGE);
    assert!(
        read("scripts/build-images.sh").contains(&pause),
        "scripts/build-images.sh does not build {pause}"
    );
}
