//! Where `scripts/build-tools.sh` puts the Go tools (helm, promtool, Prometheus, the
//! endpoint picker, crictl) and the CRDs it fetches. Their folders are named once, in
//! `scripts/common.sh`, by version and build options (each folder is a cache key), and read
//! from there: a version bump is one edit, not one per test.

use std::path::PathBuf;
use std::process::Command;

/// The folder `scripts/common.sh` names `var` (`HELM_BIN`, `PROMTOOL_BIN`, `INFERENCE_CRDS`,
/// ...), under `$LLAMANET_CACHE` as the scripts put it.
///
/// Panics when `var` is not a plain variable name or common.sh does not set it.
pub fn folder(var: &str) -> PathBuf {
    folder_in(None, var)
}

/// [`folder`] with `$LLAMANET_CACHE` set to `cache`, when given.
fn folder_in(cache: Option<&std::path::Path>, var: &str) -> PathBuf {
    assert!(
        var.starts_with(|c: char| c.is_ascii_uppercase())
            && var
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'),
        "{var:?} is not a variable of scripts/common.sh"
    );
    let root = crate::testing::repo_root();
    let mut bash = Command::new("bash");
    if let Some(cache) = cache {
        bash.env("LLAMANET_CACHE", cache);
    }
    let out = bash
        .arg("-c")
        .arg(format!(
            r#"source scripts/common.sh && printf '%s' "${{{var}:-}}""#
        ))
        .current_dir(&root)
        .output()
        .unwrap_or_else(|e| panic!("bash for scripts/common.sh: {e}"));
    let value = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && !value.is_empty(),
        "scripts/common.sh in {} sets no {var}: {}",
        root.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(value)
}

/// The file `name` in the folder `var` names, which must exist: else the panic says which
/// script makes it.
pub fn file(var: &str, name: &str) -> PathBuf {
    let path = folder(var).join(name);
    assert!(
        path.exists(),
        "{} missing: run scripts/build-tools.sh",
        path.display()
    );
    path
}

/// `$env` when set, else [`file`]`(var, name)`: the tests' overrides (`LLAMANET_HELM`, ...).
pub fn file_or_env(env: &str, var: &str, name: &str) -> PathBuf {
    std::env::var_os(env).map_or_else(|| file(var, name), PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_go_tools_share_one_folder_under_the_cache() {
        let cache = std::path::Path::new("/nonexistent/cache");
        let crictl = folder_in(Some(cache), "CRICTL_BIN");
        let name = crictl
            .strip_prefix(cache)
            .unwrap_or_else(|_| panic!("{} is not under {}", crictl.display(), cache.display()));
        let key = name.to_str().unwrap().strip_prefix("go-tools-").unwrap();
        assert_eq!(
            key.len(),
            "go-tools-0123456789ab/bin".len() - "go-tools-".len()
        );
        for var in [
            "HELM_BIN",
            "PROMTOOL_BIN",
            "PROMETHEUS_BIN",
            "EPP_BIN",
            "COREDNS_BIN",
        ] {
            assert_eq!(folder_in(Some(cache), var), crictl, "{var}");
        }
        // Kubernetes comes from its own module and keeps its own folder.
        let k8s = folder_in(Some(cache), "K8S_BIN");
        assert_eq!(k8s, cache.join(format!("k8s-{}/bin", crate::K8S_VERSION)));
    }

    #[test]
    #[should_panic(expected = "sets no NO_SUCH_FOLDER")]
    fn an_unknown_variable_is_an_error() {
        folder("NO_SUCH_FOLDER");
    }

    #[test]
    #[should_panic(expected = "is not a variable")]
    fn a_command_is_not_a_variable_name() {
        folder("X}; rm -rf /; echo ${Y");
    }
}
