//! `crds/inferencenode.yaml` must be exactly what the Rust types generate: the file is what
//! users and the Helm chart install, the types are what the operator reads and writes.

use std::path::PathBuf;

#[test]
fn committed_crd_matches_the_types() {
    // At run time: a binary reused from a shared target folder may come from another checkout.
    let crate_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| env!("CARGO_MANIFEST_DIR").into(), PathBuf::from);
    let path = crate_dir.join("../crds/inferencenode.yaml");
    let committed = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let generated = llamanet_operator::crd::crd_yaml();
    if committed != generated {
        let line = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .map_or_else(
                || committed.lines().count().min(generated.lines().count()) + 1,
                |i| i + 1,
            );
        panic!(
            "crds/inferencenode.yaml differs from the types in operator/src/crd.rs (first at line \
             {line}); run cargo run -p llamanet-operator --bin crdgen > crds/inferencenode.yaml"
        );
    }
}
