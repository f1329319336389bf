//! A dynamic provisioner for the `local-process` StorageClass (the cluster's
//! default): each pending claim gets a hostPath PersistentVolume in a folder
//! of the node, pre-bound to the claim; released volumes are deleted with
//! their folder (reclaim policy Delete).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub const STORAGE_CLASS: &str = "local-process";
const PROVISIONER: &str = "llamanet.io/local-process";

pub async fn ensure_storage_class(client: &kube::Client) -> Result<()> {
    let sc = serde_json::json!({
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {
            "name": STORAGE_CLASS,
            "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
        },
        "provisioner": PROVISIONER,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "Immediate",
    });
    Api::<StorageClass>::all(client.clone())
        .patch(
            STORAGE_CLASS,
            &PatchParams::apply("llamanet-local-node").force(),
            &Patch::Apply(sc),
        )
        .await?;
    Ok(())
}

pub async fn run(client: kube::Client, dir: PathBuf, cancel: CancellationToken) {
    let mut claims = watcher(
        Api::<PersistentVolumeClaim>::all(client.clone()),
        Default::default(),
    )
    .boxed();
    let mut volumes = watcher(
        Api::<PersistentVolume>::all(client.clone()),
        Default::default(),
    )
    .boxed();
    loop {
        let result = tokio::select! {
            e = claims.next() => match e {
                Some(Ok(watcher::Event::Apply(c) | watcher::Event::InitApply(c))) => provision(&client, &dir, &c).await,
                Some(Ok(_)) => Ok(()),
                Some(Err(e)) => Err(e.into()),
                None => return,
            },
            e = volumes.next() => match e {
                Some(Ok(watcher::Event::Apply(v) | watcher::Event::InitApply(v))) => reclaim(&client, &v).await,
                Some(Ok(_)) => Ok(()),
                Some(Err(e)) => Err(e.into()),
                None => return,
            },
            _ = cancel.cancelled() => return,
        };
        if let Err(e) = result {
            warn!("local provisioner: {e:#}");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

async fn provision(
    client: &kube::Client,
    dir: &std::path::Path,
    pvc: &PersistentVolumeClaim,
) -> Result<()> {
    let spec = pvc.spec.clone().unwrap_or_default();
    let bound = spec.volume_name.as_deref().is_some_and(|v| !v.is_empty());
    if bound
        || spec.storage_class_name.as_deref() != Some(STORAGE_CLASS)
        || pvc.metadata.deletion_timestamp.is_some()
    {
        return Ok(());
    }
    let uid = pvc.metadata.uid.clone().unwrap_or_default();
    let name = format!("pvc-{uid}");
    let path = dir.join(&name);
    std::fs::create_dir_all(&path)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777))?;
    let storage = spec
        .resources
        .and_then(|r| r.requests)
        .and_then(|r| r.get("storage").cloned())
        .map(|q| q.0)
        .unwrap_or_else(|| "1Gi".into());
    let pv: PersistentVolume = serde_json::from_value(serde_json::json!({
        "metadata": {
            "name": name,
            "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER},
        },
        "spec": {
            "capacity": {"storage": storage},
            "accessModes": spec.access_modes.unwrap_or_else(|| vec!["ReadWriteOnce".into()]),
            "persistentVolumeReclaimPolicy": "Delete",
            "storageClassName": STORAGE_CLASS,
            "hostPath": {"path": path.display().to_string(), "type": "DirectoryOrCreate"},
            "claimRef": {
                "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "namespace": pvc.metadata.namespace, "name": pvc.metadata.name, "uid": uid,
            },
        }
    }))?;
    match Api::<PersistentVolume>::all(client.clone())
        .create(&PostParams::default(), &pv)
        .await
    {
        Ok(_) => info!(claim = ?pvc.metadata.name, volume = %name, "provisioned"),
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

async fn reclaim(client: &kube::Client, pv: &PersistentVolume) -> Result<()> {
    let ours = pv
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("pv.kubernetes.io/provisioned-by"))
        .is_some_and(|p| p == PROVISIONER);
    let released = pv.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Released");
    if !ours || !released {
        return Ok(());
    }
    if let Some(path) = pv
        .spec
        .as_ref()
        .and_then(|s| s.host_path.as_ref())
        .map(|h| h.path.clone())
    {
        let _ = std::fs::remove_dir_all(path);
    }
    let name = pv.metadata.name.clone().unwrap_or_default();
    Api::<PersistentVolume>::all(client.clone())
        .delete(&name, &DeleteParams::default())
        .await?;
    info!(volume = %name, "released volume deleted");
    Ok(())
}
