//! `/etc/hosts` for pods. The local cluster has no DNS server and no Service IPs, so every
//! pod gets a hosts file, written when the pod starts, that resolves the names cluster DNS
//! would: `<service>.<namespace>.svc.cluster.local` (and the shorter forms) to the Service's
//! endpoints, the pod's own hostname, and `<pod>.<subdomain>.<namespace>.svc...` for pods
//! behind a headless Service (StatefulSets).
//!
//! Endpoints are the pods a Service selects, chosen as the endpoints controller would (ready,
//! or any running pod with `publishNotReadyAddresses`): the API server refuses EndpointSlices
//! with loopback addresses, and pods here all live on 127.0.x.y. A headless Service resolves
//! to every endpoint, a normal one to its first (there is no virtual IP to hand out). The
//! file is a snapshot: a Service that gains endpoints after a pod started is not seen by
//! that pod until it restarts.

use anyhow::Result;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::Api;
use kube::api::ListParams;

const DOMAIN: &str = "cluster.local";

/// The names of `service` in `namespace`, longest first; the bare name only for pods in the
/// same namespace, as the DNS search path would allow.
fn service_names(service: &str, namespace: &str, pod_namespace: &str) -> Vec<String> {
    let mut names = vec![
        format!("{service}.{namespace}.svc.{DOMAIN}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}"),
    ];
    if namespace == pod_namespace {
        names.push(service.to_owned());
    }
    names
}

/// Endpoints of one Service: `(pod IP, pod hostname when the pod names the Service as its
/// subdomain)`, ordered by pod name.
fn endpoints(service: &Service, pods: &[Pod]) -> Vec<(String, Option<String>)> {
    let Some(spec) = &service.spec else {
        return Vec::new();
    };
    let Some(selector) = spec.selector.as_ref().filter(|s| !s.is_empty()) else {
        return Vec::new();
    };
    let publish_not_ready = spec.publish_not_ready_addresses.unwrap_or(false);
    let mut found: Vec<(String, String, Option<String>)> = pods
        .iter()
        .filter(|p| p.metadata.namespace == service.metadata.namespace)
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            let labels = p.metadata.labels.clone().unwrap_or_default();
            selector.iter().all(|(k, v)| labels.get(k) == Some(v))
        })
        .filter_map(|p| {
            let status = p.status.as_ref()?;
            let ip = status.pod_ip.clone()?;
            let ready = status
                .conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            if !ready && !publish_not_ready {
                return None;
            }
            let pod_spec = p.spec.as_ref();
            let hostname = pod_spec
                .filter(|s| s.subdomain.as_deref() == service.metadata.name.as_deref())
                .map(|s| {
                    s.hostname
                        .clone()
                        .unwrap_or_else(|| p.metadata.name.clone().unwrap_or_default())
                });
            Some((p.metadata.name.clone().unwrap_or_default(), ip, hostname))
        })
        .collect();
    found.sort();
    found.into_iter().map(|(_, ip, host)| (ip, host)).collect()
}

/// The hosts file of `pod` (whose IP is `pod_ip`) given every Service and Pod.
pub fn render(pod: &Pod, pod_ip: &str, services: &[Service], pods: &[Pod]) -> String {
    let pod_namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let pod_name = pod.metadata.name.as_deref().unwrap_or_default();
    let spec = pod.spec.clone().unwrap_or_default();
    let hostname = spec.hostname.clone().unwrap_or_else(|| pod_name.to_owned());
    let mut text = String::from(
        "# Written by llamanet-cluster's kubelet when this pod started (there is no cluster DNS).\n\
         127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    );
    let mut own = vec![hostname.clone()];
    if let Some(subdomain) = &spec.subdomain {
        own.insert(
            0,
            format!("{hostname}.{subdomain}.{pod_namespace}.svc.{DOMAIN}"),
        );
        own.insert(1, format!("{hostname}.{subdomain}.{pod_namespace}.svc"));
    }
    text.push_str(&format!("{pod_ip}\t{}\n", own.join(" ")));

    for service in services {
        let (Some(namespace), Some(name)) = (&service.metadata.namespace, &service.metadata.name)
        else {
            continue;
        };
        let mut found = endpoints(service, pods);
        let headless = service.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None");
        if !headless {
            found.truncate(1);
        }
        let names = service_names(name, namespace, pod_namespace).join(" ");
        for (address, endpoint_hostname) in &found {
            text.push_str(&format!("{address}\t{names}\n"));
            if headless && let Some(host) = endpoint_hostname {
                text.push_str(&format!(
                    "{address}\t{host}.{name}.{namespace}.svc.{DOMAIN} {host}.{name}.{namespace}.svc\n"
                ));
            }
        }
    }
    text
}

/// Reads every Service and Pod and renders the hosts file of `pod`.
pub async fn for_pod(client: &kube::Client, pod: &Pod, pod_ip: &str) -> Result<String> {
    let services = Api::<Service>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items;
    let pods = Api::<Pod>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items;
    Ok(render(pod, pod_ip, &services, &pods))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::{PodCondition, PodSpec, PodStatus, ServiceSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn service(ns: &str, name: &str, app: &str, headless: bool, not_ready: bool) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                ..ObjectMeta::default()
            },
            spec: Some(ServiceSpec {
                cluster_ip: headless.then(|| "None".to_owned()),
                publish_not_ready_addresses: Some(not_ready),
                selector: Some(BTreeMap::from([("app".to_owned(), app.to_owned())])),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        }
    }

    fn pod(ns: &str, name: &str, app: &str, ip: &str, ready: bool, subdomain: Option<&str>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                labels: Some(BTreeMap::from([("app".to_owned(), app.to_owned())])),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                subdomain: subdomain.map(str::to_owned),
                ..PodSpec::default()
            }),
            status: Some(PodStatus {
                pod_ip: Some(ip.into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..PodCondition::default()
                }]),
                ..PodStatus::default()
            }),
        }
    }

    #[test]
    fn services_resolve_like_cluster_dns() {
        let pods = [
            pod("llamanet", "op-a", "operator", "127.0.0.20", false, None),
            pod("llamanet", "op-b", "operator", "127.0.0.21", true, None),
            pod(
                "ai",
                "gemma-0",
                "gemma",
                "127.0.0.30",
                false,
                Some("gemma-swarm"),
            ),
            pod(
                "ai",
                "gemma-1",
                "gemma",
                "127.0.0.31",
                true,
                Some("gemma-swarm"),
            ),
            pod("other", "gemma-x", "gemma", "127.0.0.40", true, None),
        ];
        let services = [
            service("llamanet", "llamanet-swarm", "operator", true, true),
            service("ai", "gemma", "gemma", false, false),
            service("ai", "gemma-swarm", "gemma", true, true),
            service("ai", "empty", "nothing", false, false),
        ];
        let text = render(&pods[2], "127.0.0.30", &services, &pods);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.contains(
            &"127.0.0.30\tgemma-0.gemma-swarm.ai.svc.cluster.local gemma-0.gemma-swarm.ai.svc gemma-0"
        ), "{text}");
        // Headless with not-ready addresses published: every endpoint, no short name across
        // namespaces.
        for ip in ["127.0.0.20", "127.0.0.21"] {
            assert!(lines.contains(&format!(
                "{ip}\tllamanet-swarm.llamanet.svc.cluster.local llamanet-swarm.llamanet.svc llamanet-swarm.llamanet"
            ).as_str()), "{text}");
        }
        // A normal Service: its first ready endpoint in its own namespace, bare name in the
        // pod's namespace.
        assert!(
            lines.contains(&"127.0.0.31\tgemma.ai.svc.cluster.local gemma.ai.svc gemma.ai gemma"),
            "{text}"
        );
        assert!(
            !text.contains("127.0.0.30\tgemma.ai"),
            "not-ready endpoint listed:\n{text}"
        );
        assert!(
            !text.contains("127.0.0.40"),
            "a pod of another namespace listed:\n{text}"
        );
        // Pods of a headless Service get their own names.
        assert!(
            lines.contains(
                &"127.0.0.31\tgemma-1.gemma-swarm.ai.svc.cluster.local gemma-1.gemma-swarm.ai.svc"
            ),
            "{text}"
        );
        assert!(
            !text.contains("empty."),
            "a Service without endpoints resolves to nothing"
        );
    }
}
