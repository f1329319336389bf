//! A container's environment and argv, as the kubelet would build them:
//! service variables, `envFrom`, `env` (values, downward-API field and
//! resource references, ConfigMap and Secret keys) and `$(VAR)` expansion.

use std::collections::BTreeMap;

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};
use kube::Api;

/// What a pod's downward API can see that is not in the Pod object yet.
#[derive(Debug, Clone)]
pub struct PodFacts {
    pub pod_ip: String,
    pub host_ip: String,
}

/// Builds the environment of `container` in `pod` (order as in Kubernetes:
/// `base` first, then `envFrom`, then `env`; later entries win).
pub async fn container_env(
    client: &kube::Client,
    pod: &Pod,
    container: &Container,
    facts: &PodFacts,
    base: &[(String, String)],
) -> Result<Vec<(String, String)>> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut env: Vec<(String, String)> = base.to_vec();
    let set = |env: &mut Vec<(String, String)>, k: String, v: String| {
        env.retain(|(name, _)| *name != k);
        env.push((k, v));
    };

    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        if let Some(cm_ref) = &from.config_map_ref {
            let optional = cm_ref.optional.unwrap_or(false);
            match get_config_map(client, ns, &cm_ref.name).await? {
                Some(cm) => {
                    for (k, v) in cm.data.unwrap_or_default() {
                        set(&mut env, format!("{prefix}{k}"), v);
                    }
                }
                None if optional => {}
                None => bail!("configmap {ns}/{} not found (envFrom)", cm_ref.name),
            }
        }
        if let Some(secret_ref) = &from.secret_ref {
            let optional = secret_ref.optional.unwrap_or(false);
            match get_secret(client, ns, &secret_ref.name).await? {
                Some(secret) => {
                    for (k, v) in secret_data(&secret) {
                        set(&mut env, format!("{prefix}{k}"), lossy(&v));
                    }
                }
                None if optional => {}
                None => bail!("secret {ns}/{} not found (envFrom)", secret_ref.name),
            }
        }
    }

    for var in container.env.iter().flatten() {
        let value = match &var.value_from {
            None => {
                let lookup: BTreeMap<_, _> = env.iter().cloned().collect();
                expand(var.value.as_deref().unwrap_or(""), &lookup)
            }
            Some(source) => {
                if let Some(field) = &source.field_ref {
                    field_value(pod, &field.field_path, facts)?
                } else if let Some(res) = &source.resource_field_ref {
                    resource_value(pod, container, res)?
                } else if let Some(key) = &source.config_map_key_ref {
                    let optional = key.optional.unwrap_or(false);
                    let cm = get_config_map(client, ns, &key.name).await?;
                    match cm.and_then(|cm| cm.data.unwrap_or_default().remove(&key.key)) {
                        Some(v) => v,
                        None if optional => continue,
                        None => bail!(
                            "env {}: key {:?} of configmap {ns}/{} not found",
                            var.name,
                            key.key,
                            key.name
                        ),
                    }
                } else if let Some(key) = &source.secret_key_ref {
                    let optional = key.optional.unwrap_or(false);
                    let secret = get_secret(client, ns, &key.name).await?;
                    match secret.and_then(|s| secret_data(&s).remove(&key.key)) {
                        Some(v) => lossy(&v),
                        None if optional => continue,
                        None => bail!(
                            "env {}: key {:?} of secret {ns}/{} not found",
                            var.name,
                            key.key,
                            key.name
                        ),
                    }
                } else {
                    bail!("env {}: unsupported valueFrom", var.name)
                }
            }
        };
        set(&mut env, var.name.clone(), value);
    }
    Ok(env)
}

/// `command` + `args` (falling back to the image's entrypoint), `$(VAR)` expanded.
pub fn container_argv(
    container: &Container,
    entrypoint: &[String],
    env: &[(String, String)],
) -> Vec<String> {
    let lookup: BTreeMap<_, _> = env.iter().cloned().collect();
    let mut argv: Vec<String> = match &container.command {
        Some(cmd) if !cmd.is_empty() => cmd.clone(),
        _ => entrypoint.to_vec(),
    };
    argv.extend(container.args.iter().flatten().cloned());
    argv.iter().map(|a| expand(a, &lookup)).collect()
}

/// Kubernetes' `$(VAR)` syntax: known variables are replaced, unknown ones
/// are left as written, `$$` is a literal `$`.
pub fn expand(input: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match vars.get(name) {
                Some(v) => out.push_str(v),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// A downward-API `fieldRef` path.
pub fn field_value(pod: &Pod, path: &str, facts: &PodFacts) -> Result<String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let map_key = |prefix: &str| {
        path.strip_prefix(prefix)
            .and_then(|r| r.strip_prefix("['").or_else(|| r.strip_prefix("[\"")))
            .and_then(|r| r.strip_suffix("']").or_else(|| r.strip_suffix("\"]")))
    };
    Ok(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.podIP" | "status.podIPs" => facts.pod_ip.clone(),
        "status.hostIP" | "status.hostIPs" => facts.host_ip.clone(),
        _ => {
            if let Some(key) = map_key("metadata.labels") {
                meta.labels
                    .as_ref()
                    .and_then(|l| l.get(key).cloned())
                    .unwrap_or_default()
            } else if let Some(key) = map_key("metadata.annotations") {
                meta.annotations
                    .as_ref()
                    .and_then(|a| a.get(key).cloned())
                    .unwrap_or_default()
            } else if path == "metadata.labels" || path == "metadata.annotations" {
                let map = if path == "metadata.labels" {
                    meta.labels.clone()
                } else {
                    meta.annotations.clone()
                };
                map.unwrap_or_default()
                    .iter()
                    .map(|(k, v)| format!("{k}={v:?}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            } else {
                bail!("unsupported fieldRef {path:?}")
            }
        }
    })
}

fn resource_value(
    pod: &Pod,
    container: &Container,
    res: &k8s_openapi::api::core::v1::ResourceFieldSelector,
) -> Result<String> {
    let target = match &res.container_name {
        Some(name) if !name.is_empty() && *name != container.name => pod
            .spec
            .as_ref()
            .and_then(|s| s.containers.iter().find(|c| c.name == *name))
            .ok_or_else(|| anyhow!("resourceFieldRef: no container {name:?}"))?,
        _ => container,
    };
    let (kind, resource) = res
        .resource
        .split_once('.')
        .ok_or_else(|| anyhow!("resourceFieldRef: bad resource {:?}", res.resource))?;
    let reqs = target.resources.as_ref();
    let list = match kind {
        "limits" => reqs.and_then(|r| r.limits.as_ref()),
        "requests" => reqs.and_then(|r| r.requests.as_ref()),
        _ => bail!("resourceFieldRef: bad resource {:?}", res.resource),
    };
    let value = match list.and_then(|l| l.get(resource)) {
        Some(q) => parse_quantity(&q.0)?,
        // Kubernetes reports node allocatable for unset limits; one core and
        // the host's memory are as good an answer here.
        None if resource == "cpu" => 1.0,
        None => 0.0,
    };
    let divisor = match &res.divisor {
        Some(d) => parse_quantity(&d.0)?,
        None => 1.0,
    };
    Ok(format!("{}", (value / divisor).ceil() as i64))
}

/// A Kubernetes quantity (`500m`, `2`, `1Gi`, `1e3`) as a number.
pub fn parse_quantity(q: &str) -> Result<f64> {
    let q = q.trim();
    let split = q
        .find(|c: char| c.is_ascii_alphabetic() && c != 'e' && c != 'E')
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let mult = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        _ => bail!("bad quantity {q:?}"),
    };
    let n: f64 = num.parse().with_context(|| format!("bad quantity {q:?}"))?;
    Ok(n * mult)
}

pub(crate) async fn get_config_map(
    client: &kube::Client,
    ns: &str,
    name: &str,
) -> Result<Option<ConfigMap>> {
    Ok(Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await?)
}

pub(crate) async fn get_secret(
    client: &kube::Client,
    ns: &str,
    name: &str,
) -> Result<Option<Secret>> {
    Ok(Api::<Secret>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await?)
}

/// A Secret's `data` and `stringData` as bytes.
pub(crate) fn secret_data(secret: &Secret) -> BTreeMap<String, Vec<u8>> {
    let mut out: BTreeMap<String, Vec<u8>> = secret
        .data
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    for (k, v) in secret.string_data.clone().unwrap_or_default() {
        out.insert(k, v.into_bytes());
    }
    out
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn expansion_follows_kubernetes_rules() {
        let v = vars(&[("IP", "127.0.0.12"), ("PORT", "8080")]);
        assert_eq!(expand("--host=$(IP):$(PORT)", &v), "--host=127.0.0.12:8080");
        assert_eq!(expand("$(MISSING)", &v), "$(MISSING)");
        assert_eq!(expand("$$(IP)", &v), "$(IP)");
        assert_eq!(expand("cost $5", &v), "cost $5");
        assert_eq!(expand("$(unterminated", &v), "$(unterminated");
    }

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity("500m").unwrap(), 0.5);
        assert_eq!(parse_quantity("2").unwrap(), 2.0);
        assert_eq!(parse_quantity("1Gi").unwrap(), 1073741824.0);
        assert_eq!(parse_quantity("1e3").unwrap(), 1000.0);
        assert!(parse_quantity("12parsecs").is_err());
    }

    #[test]
    fn downward_api_fields() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u1",
                          "labels": {"app": "llamanet"}},
            "spec": {"nodeName": "local-node", "containers": []}
        }))
        .unwrap();
        let facts = PodFacts {
            pod_ip: "127.0.0.11".into(),
            host_ip: "127.0.0.1".into(),
        };
        let f = |p: &str| field_value(&pod, p, &facts).unwrap();
        assert_eq!(f("metadata.name"), "p");
        assert_eq!(f("metadata.namespace"), "ns");
        assert_eq!(f("status.podIP"), "127.0.0.11");
        assert_eq!(f("spec.nodeName"), "local-node");
        assert_eq!(f("metadata.labels['app']"), "llamanet");
        assert!(field_value(&pod, "spec.bogus", &facts).is_err());
    }
}
