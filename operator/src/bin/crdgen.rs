//! Prints the InferenceNode CRD generated from the Rust types; `crds/inferencenode.yaml` is its
//! output, and a test fails when the two differ.

fn main() {
    print!("{}", llamanet_operator::crd::crd_yaml());
}
