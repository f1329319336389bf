//! Pod volumes as folders on the host, bind-mounted at each `mountPath` in the
//! container's private mount namespace (see `container.rs`).
//!
//! Supported: emptyDir, hostPath, secret, configMap, downwardAPI, projected
//! (service account tokens through the TokenRequest API included) and
//! persistentVolumeClaim (bound to a hostPath or local PV, as the local
//! provisioner makes them). Anything else fails the pod with a clear message.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{
    Container, DownwardAPIVolumeFile, KeyToPath, PersistentVolume, PersistentVolumeClaim, Pod,
    ServiceAccount, Volume,
};
use kube::Api;
use kube::api::PostParams;

use super::env::{PodFacts, field_value, get_config_map, get_secret, secret_data};

/// One bind mount of a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub source: PathBuf,
    pub target: PathBuf,
    pub read_only: bool,
}

/// Materialises every volume of `pod` under `pod_dir/volumes` and returns the
/// host folder of each, by volume name.
pub async fn prepare(
    client: &kube::Client,
    pod: &Pod,
    pod_dir: &Path,
    facts: &PodFacts,
) -> Result<BTreeMap<String, PathBuf>> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let fs_group = pod
        .spec
        .as_ref()
        .and_then(|s| s.security_context.as_ref())
        .and_then(|s| s.fs_group);
    let mut out = BTreeMap::new();
    for vol in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        let dir = pod_dir.join("volumes").join(&vol.name);
        let path = prepare_one(client, pod, ns, vol, &dir, facts)
            .await
            .with_context(|| format!("volume {:?}", vol.name))?;
        if let Some(gid) = fs_group
            && path.starts_with(pod_dir)
        {
            chown_tree(&path, gid, writable_source(vol))?;
        }
        out.insert(vol.name.clone(), path);
    }
    Ok(out)
}

async fn prepare_one(
    client: &kube::Client,
    pod: &Pod,
    ns: &str,
    vol: &Volume,
    dir: &Path,
    facts: &PodFacts,
) -> Result<PathBuf> {
    if vol.empty_dir.is_some() {
        std::fs::create_dir_all(dir)?;
        // Like the kubelet: any user of the pod may write to an emptyDir.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777))?;
        return Ok(dir.into());
    }
    if let Some(host) = &vol.host_path {
        let path = PathBuf::from(&host.path);
        match host.type_.as_deref().unwrap_or("") {
            "DirectoryOrCreate" => std::fs::create_dir_all(&path)?,
            "Directory" if !path.is_dir() => bail!("hostPath {} is not a directory", host.path),
            "File" if !path.is_file() => bail!("hostPath {} is not a file", host.path),
            _ => {}
        }
        return Ok(path);
    }
    let mut files = Files::new(dir)?;
    if let Some(secret) = &vol.secret {
        let name = secret.secret_name.as_deref().unwrap_or_default();
        match get_secret(client, ns, name).await? {
            Some(s) => files.keys(
                &secret_data(&s),
                secret.items.as_deref(),
                secret.default_mode,
            )?,
            None if secret.optional.unwrap_or(false) => {}
            None => bail!("secret {ns}/{name} not found"),
        }
        return files.finish();
    }
    if let Some(cm) = &vol.config_map {
        let name = &cm.name;
        match get_config_map(client, ns, name).await? {
            Some(c) => files.keys(&config_map_data(&c), cm.items.as_deref(), cm.default_mode)?,
            None if cm.optional.unwrap_or(false) => {}
            None => bail!("configmap {ns}/{name} not found"),
        }
        return files.finish();
    }
    if let Some(dapi) = &vol.downward_api {
        files.downward(pod, dapi.items.as_deref().unwrap_or_default(), facts)?;
        return files.finish();
    }
    if let Some(projected) = &vol.projected {
        for source in projected.sources.iter().flatten() {
            if let Some(sa) = &source.service_account_token {
                let token = request_token(
                    client,
                    pod,
                    sa.audience.clone(),
                    sa.expiration_seconds.unwrap_or(3607),
                )
                .await?;
                files.write(&sa.path, token.as_bytes(), projected.default_mode)?;
            }
            if let Some(cm) = &source.config_map {
                match get_config_map(client, ns, &cm.name).await? {
                    Some(c) => files.keys(&config_map_data(&c), cm.items.as_deref(), None)?,
                    None if cm.optional.unwrap_or(false) => {}
                    None => bail!("configmap {ns}/{} not found", cm.name),
                }
            }
            if let Some(secret) = &source.secret {
                match get_secret(client, ns, &secret.name).await? {
                    Some(s) => files.keys(&secret_data(&s), secret.items.as_deref(), None)?,
                    None if secret.optional.unwrap_or(false) => {}
                    None => bail!("secret {ns}/{} not found", secret.name),
                }
            }
            if let Some(dapi) = &source.downward_api {
                files.downward(pod, dapi.items.as_deref().unwrap_or_default(), facts)?;
            }
        }
        return files.finish();
    }
    if let Some(claim) = &vol.persistent_volume_claim {
        return claim_path(client, ns, &claim.claim_name).await;
    }
    bail!(
        "volume type not supported by the local node (use emptyDir, hostPath, secret, configMap, downwardAPI, projected or persistentVolumeClaim)"
    )
}

/// Bind mounts of `container`, from its `volumeMounts`.
pub fn mounts(container: &Container, volumes: &BTreeMap<String, PathBuf>) -> Result<Vec<Mount>> {
    container
        .volume_mounts
        .iter()
        .flatten()
        .map(|vm| {
            let base = volumes
                .get(&vm.name)
                .ok_or_else(|| anyhow!("volumeMount {:?}: no such volume", vm.name))?;
            let source = match vm.sub_path.as_deref() {
                Some(sub) if !sub.is_empty() => {
                    if Path::new(sub).components().any(|c| c.as_os_str() == "..") {
                        bail!("volumeMount {:?}: subPath must not contain '..'", vm.name);
                    }
                    let p = base.join(sub);
                    if !p.exists() {
                        std::fs::create_dir_all(&p)?;
                    }
                    p
                }
                _ => base.clone(),
            };
            Ok(Mount {
                source,
                target: PathBuf::from(&vm.mount_path),
                read_only: vm.read_only.unwrap_or(false),
            })
        })
        .collect()
}

/// The host folder of a bound claim's PersistentVolume.
async fn claim_path(client: &kube::Client, ns: &str, claim: &str) -> Result<PathBuf> {
    let pvc = Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns)
        .get_opt(claim)
        .await?
        .ok_or_else(|| anyhow!("persistentvolumeclaim {ns}/{claim} not found"))?;
    let pv_name = pvc
        .spec
        .and_then(|s| s.volume_name)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| anyhow!("persistentvolumeclaim {ns}/{claim} is not bound yet"))?;
    let pv = Api::<PersistentVolume>::all(client.clone())
        .get(&pv_name)
        .await?;
    let spec = pv.spec.unwrap_or_default();
    let path = spec
        .host_path
        .map(|h| h.path)
        .or(spec.local.map(|l| l.path))
        .ok_or_else(|| anyhow!("persistentvolume {pv_name} is neither hostPath nor local"))?;
    std::fs::create_dir_all(&path)?;
    Ok(path.into())
}

async fn request_token(
    client: &kube::Client,
    pod: &Pod,
    audience: Option<String>,
    expiration_seconds: i64,
) -> Result<String> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let sa = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_else(|| "default".into());
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: audience.into_iter().collect(),
            expiration_seconds: Some(expiration_seconds),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
        },
        ..Default::default()
    };
    let api = Api::<ServiceAccount>::namespaced(client.clone(), ns);
    let resp: TokenRequest = api
        .create_subresource("token", &sa, &PostParams::default(), &request)
        .await
        .with_context(|| format!("requesting a token for serviceaccount {ns}/{sa}"))?;
    resp.status
        .map(|s| s.token)
        .ok_or_else(|| anyhow!("token request for {ns}/{sa} returned no token"))
}

fn config_map_data(cm: &k8s_openapi::api::core::v1::ConfigMap) -> BTreeMap<String, Vec<u8>> {
    let mut out: BTreeMap<String, Vec<u8>> = cm
        .data
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.into_bytes()))
        .collect();
    for (k, v) in cm.binary_data.clone().unwrap_or_default() {
        out.insert(k, v.0);
    }
    out
}

/// Files written into a fresh volume folder, swapped in whole on `finish`
/// so a container never sees half a Secret.
struct Files {
    staging: PathBuf,
    dest: PathBuf,
}

impl Files {
    fn new(dest: &Path) -> Result<Self> {
        let staging = dest.with_extension("staging");
        if staging.exists() {
            std::fs::remove_dir_all(&staging)?;
        }
        std::fs::create_dir_all(&staging)?;
        std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o755))?;
        Ok(Self {
            staging,
            dest: dest.into(),
        })
    }

    fn write(&mut self, rel: &str, data: &[u8], mode: Option<i32>) -> Result<()> {
        let rel = Path::new(rel);
        if rel.is_absolute() || rel.components().any(|c| c.as_os_str() == "..") {
            bail!(
                "volume file path {} must be relative without '..'",
                rel.display()
            );
        }
        let path = self.staging.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, data)?;
        let mode = mode.unwrap_or(0o644) as u32;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
        Ok(())
    }

    fn keys(
        &mut self,
        data: &BTreeMap<String, Vec<u8>>,
        items: Option<&[KeyToPath]>,
        default_mode: Option<i32>,
    ) -> Result<()> {
        match items {
            None => {
                for (k, v) in data {
                    self.write(k, v, default_mode)?;
                }
            }
            Some(items) => {
                for item in items {
                    let v = data
                        .get(&item.key)
                        .ok_or_else(|| anyhow!("key {:?} not found", item.key))?;
                    self.write(&item.path, v, item.mode.or(default_mode))?;
                }
            }
        }
        Ok(())
    }

    fn downward(
        &mut self,
        pod: &Pod,
        items: &[DownwardAPIVolumeFile],
        facts: &PodFacts,
    ) -> Result<()> {
        for item in items {
            let value = match &item.field_ref {
                Some(f) => field_value(pod, &f.field_path, facts)?,
                None => bail!("downwardAPI {:?}: only fieldRef is supported", item.path),
            };
            self.write(&item.path, value.as_bytes(), item.mode)?;
        }
        Ok(())
    }

    fn finish(self) -> Result<PathBuf> {
        if self.dest.exists() {
            std::fs::remove_dir_all(&self.dest)?;
        }
        std::fs::rename(&self.staging, &self.dest)?;
        Ok(self.dest)
    }
}

/// Whether the kubelet lets the pod write into a volume of this kind (Secrets, ConfigMaps,
/// downward API and projected volumes are read-only whatever the mount says).
fn writable_source(vol: &Volume) -> bool {
    vol.secret.is_none()
        && vol.config_map.is_none()
        && vol.downward_api.is_none()
        && vol.projected.is_none()
}

/// What the kubelet does for `fsGroup`: every file and folder becomes owned by the group,
/// files readable (and writable, for writable volumes) by it, folders set-group-id so that
/// new files inherit the group.
fn chown_tree(path: &Path, gid: i64, writable: bool) -> Result<()> {
    std::os::unix::fs::lchown(path, None, Some(gid as u32))?;
    let meta = std::fs::symlink_metadata(path)?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    let group_bits = match (meta.is_dir(), writable) {
        (true, true) => 0o2070,
        (true, false) => 0o2050,
        (false, true) => 0o060,
        (false, false) => 0o040,
    };
    let mode = meta.permissions().mode() | group_bits;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(path)? {
            chown_tree(&entry?.path(), gid, writable)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::VolumeMount;

    #[test]
    fn mounts_resolve_sub_paths_and_reject_escapes() {
        let dir = tempfile::tempdir().unwrap();
        let vols = BTreeMap::from([("cache".to_string(), dir.path().to_path_buf())]);
        let mut c = Container {
            name: "c".into(),
            volume_mounts: Some(vec![VolumeMount {
                name: "cache".into(),
                mount_path: "/models".into(),
                sub_path: Some("gguf".into()),
                read_only: Some(true),
                ..Default::default()
            }]),
            ..Default::default()
        };
        let m = mounts(&c, &vols).unwrap();
        assert_eq!(m[0].source, dir.path().join("gguf"));
        assert_eq!(m[0].target, PathBuf::from("/models"));
        assert!(m[0].read_only);

        c.volume_mounts.as_mut().unwrap()[0].sub_path = Some("../etc".into());
        assert!(mounts(&c, &vols).is_err());
        c.volume_mounts.as_mut().unwrap()[0].name = "missing".into();
        let err = mounts(&c, &vols).unwrap_err().to_string();
        assert!(err.contains("no such volume"), "{err}");
    }

    #[test]
    fn files_are_written_with_modes_and_paths_checked() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("secret");
        let mut files = Files::new(&dest).unwrap();
        let data = BTreeMap::from([("key".to_string(), b"v".to_vec())]);
        files.keys(&data, None, Some(0o600)).unwrap();
        assert!(files.write("../escape", b"x", None).is_err());
        let out = files.finish().unwrap();
        let meta = std::fs::metadata(out.join("key")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read(out.join("key")).unwrap(), b"v");
    }
}
