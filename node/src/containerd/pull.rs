//! Image pull into containerd. containerd 1.6 (Debian's) has no Transfer
//! service, so the client does what `ctr pull` does: it fetches blobs from
//! the registry (oci-client), writes them into containerd's content store,
//! records the image, and unpacks the layers into snapshots. Everything is
//! written under a lease, so containerd's garbage collector cannot take
//! half an image; the GC labels keep it once the lease is gone.

use std::collections::HashMap;
use std::time::Instant;

use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::services::v1::{
    AbortRequest, ApplyRequest, CreateImageRequest, CreateRequest as CreateLease,
    DeleteRequest as DeleteLease, GetImageRequest, Image, InfoRequest, ReadContentRequest,
    UpdateImageRequest, WriteAction, WriteContentRequest,
};
use containerd_client::tonic;
use containerd_client::types::Descriptor;
use futures::StreamExt;
use oci_client::manifest::{OciDescriptor, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use oci_spec::image::ImageConfiguration;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::{Conn, SNAPSHOTTER};
use crate::artifacts::{PullError, PullPolicy, WASM_CONFIG_MEDIA_TYPE, WASM_MEDIA_TYPE};

/// An image unpacked in containerd, ready for containers.
#[derive(Debug, Clone)]
pub struct Unpacked {
    /// The manifest digest (`imageID`).
    pub digest: String,
    pub config: ImageConfiguration,
    /// The chain ID of the top layer: the parent of a container's snapshot.
    pub top: String,
}

/// Progress reports: bytes fetched of the total, per image.
#[derive(Debug, Clone)]
pub struct Progress {
    pub image: String,
    pub done: u64,
    pub total: u64,
}

/// What a pull did, for the `Pulled` event.
#[derive(Debug, Clone)]
pub enum Outcome {
    AlreadyPresent,
    Pulled {
        bytes: u64,
        took: std::time::Duration,
    },
}

fn pull_err(image: &str, message: impl std::fmt::Display) -> PullError {
    PullError::Pull {
        image: image.into(),
        message: message.to_string(),
    }
}

/// Whether a manifest describes a Wasm artifact rather than a container
/// image: a Wasm config or a Wasm layer type.
pub fn is_wasm(manifest: &OciImageManifest) -> bool {
    manifest.config.media_type == WASM_CONFIG_MEDIA_TYPE
        || manifest.layers.iter().any(|l| {
            l.media_type == WASM_MEDIA_TYPE
                || l.media_type == oci_client::manifest::WASM_LAYER_MEDIA_TYPE
        })
}

/// Layer chain IDs, as the OCI image spec defines them.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => {
                let hex: String = Sha256::digest(format!("{prev} {d}").as_bytes())
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                format!("sha256:{hex}")
            }
        };
        out.push(next);
    }
    out
}

fn descriptor(d: &OciDescriptor) -> Descriptor {
    Descriptor {
        media_type: d.media_type.clone(),
        digest: d.digest.clone(),
        size: d.size,
        annotations: Default::default(),
    }
}

impl Conn {
    /// Whether containerd's content store has `digest`.
    async fn has_content(&self, digest: &str) -> bool {
        self.content()
            .info(self.req(InfoRequest {
                digest: digest.into(),
            }))
            .await
            .is_ok()
    }

    /// A blob from containerd's content store.
    pub async fn read_content(&self, digest: &str) -> Result<Vec<u8>, tonic::Status> {
        let mut stream = self
            .content()
            .read(self.req(ReadContentRequest {
                digest: digest.into(),
                offset: 0,
                size: 0,
            }))
            .await?
            .into_inner();
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk?.data);
        }
        Ok(out)
    }

    /// Streams `chunks` into the content store as `digest`, with `labels`.
    async fn write_content(
        &self,
        lease: &str,
        digest: &str,
        size: i64,
        labels: HashMap<String, String>,
        mut chunks: mpsc::Receiver<Result<bytes::Bytes, String>>,
    ) -> Result<(), String> {
        let reference = format!("weft-{digest}");
        // A write cut short earlier holds the ref; start it over.
        let _ = self
            .content()
            .abort(self.leased(
                AbortRequest {
                    r#ref: reference.clone(),
                },
                lease,
            ))
            .await;
        let (tx, rx) = mpsc::channel::<WriteContentRequest>(4);
        let mut client = self.content();
        let call =
            client.write(self.leased(tokio_stream::wrappers::ReceiverStream::new(rx), lease));
        let feed = async {
            let mut offset = 0i64;
            while let Some(chunk) = chunks.recv().await {
                let data = chunk?;
                let len = data.len() as i64;
                let req = WriteContentRequest {
                    action: WriteAction::Write as i32,
                    r#ref: reference.clone(),
                    offset,
                    data: data.to_vec(),
                    ..Default::default()
                };
                tx.send(req).await.map_err(|_| "content write closed")?;
                offset += len;
            }
            let commit = WriteContentRequest {
                action: WriteAction::Commit as i32,
                r#ref: reference.clone(),
                total: size,
                offset,
                expected: digest.into(),
                labels,
                ..Default::default()
            };
            tx.send(commit).await.map_err(|_| "content write closed")?;
            drop(tx);
            Ok::<(), String>(())
        };
        let drain = async {
            let mut responses = call
                .await
                .map_err(|e| e.message().to_string())?
                .into_inner();
            while let Some(r) = responses.next().await {
                if let Err(e) = r {
                    // Another pull committed the same blob first: that is success.
                    if e.code() == tonic::Code::AlreadyExists {
                        return Ok(());
                    }
                    return Err(e.message().to_string());
                }
            }
            Ok(())
        };
        let (fed, drained) = tokio::join!(feed, drain);
        drained?;
        fed
    }

    /// Makes `image` available and unpacked as its pull policy says.
    pub(super) async fn pull_image(
        &self,
        image: &str,
        policy: PullPolicy,
        auth: &RegistryAuth,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<(Unpacked, Outcome), PullError> {
        let name = crate::artifacts::normalize(image)?;
        if policy != PullPolicy::Always
            && let Some(u) = self.local(&name).await
        {
            return Ok((u, Outcome::AlreadyPresent));
        }
        if policy == PullPolicy::Never {
            return Err(PullError::NeverPull(image.to_string()));
        }
        // Single flight: whoever waited for a pull in flight takes its result.
        let held = self.pulls.lock(&name).await;
        if (held.waited || policy != PullPolicy::Always)
            && let Some(u) = self.local(&name).await
        {
            return Ok((u, Outcome::AlreadyPresent));
        }
        let started = Instant::now();
        let reference = crate::artifacts::parse(image)?;
        let client = crate::artifacts::client_for(&reference);
        let (manifest, digest, config_json) = client
            .pull_manifest_and_config(&reference, auth)
            .await
            .map_err(|e| pull_err(image, e))?;
        if is_wasm(&manifest) {
            return Err(PullError::Pull {
                image: image.into(),
                message: "this is a Wasm artifact: it runs with runtimeClassName wasm".into(),
            });
        }
        let config: ImageConfiguration = serde_json::from_str(&config_json)
            .map_err(|e| pull_err(image, format!("image config: {e}")))?;
        let diff_ids = config.rootfs().diff_ids().clone();
        if diff_ids.len() != manifest.layers.len() {
            return Err(pull_err(
                image,
                format!(
                    "{} layers but {} diff IDs in the config",
                    manifest.layers.len(),
                    diff_ids.len()
                ),
            ));
        }
        let chain = chain_ids(&diff_ids);
        let lease = format!("weft-pull-{}", uuid_like());
        self.leases()
            .create(self.req(CreateLease {
                id: lease.clone(),
                labels: HashMap::new(),
            }))
            .await
            .map_err(|e| pull_err(image, format!("lease: {}", e.message())))?;
        let result = self
            .fetch_and_unpack(
                image,
                &name,
                &reference,
                &client,
                auth,
                &lease,
                (&manifest, &digest, &config_json),
                &chain,
                progress,
            )
            .await;
        let _ = self
            .leases()
            .delete(self.req(DeleteLease {
                id: lease,
                sync: false,
            }))
            .await;
        let bytes = result?;
        Ok((
            Unpacked {
                digest,
                config,
                top: chain.last().cloned().unwrap_or_default(),
            },
            Outcome::Pulled {
                bytes,
                took: started.elapsed(),
            },
        ))
    }

    #[allow(clippy::too_many_arguments)]
    async fn fetch_and_unpack(
        &self,
        image: &str,
        name: &str,
        reference: &oci_client::Reference,
        client: &oci_client::Client,
        auth: &RegistryAuth,
        lease: &str,
        (manifest, digest, config_json): (&OciImageManifest, &String, &String),
        chain: &[String],
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<u64, PullError> {
        let total: u64 = manifest.layers.iter().map(|l| l.size.max(0) as u64).sum();
        let mut done = 0u64;
        for layer in &manifest.layers {
            if self.has_content(&layer.digest).await {
                done += layer.size.max(0) as u64;
                continue;
            }
            let (tx, rx) = mpsc::channel(4);
            let fetch = async {
                let mut stream = client
                    .pull_blob_stream(reference, layer)
                    .await
                    .map_err(|e| pull_err(image, e))?;
                while let Some(chunk) = stream.next().await {
                    let chunk = chunk.map_err(|e| pull_err(image, e))?;
                    done += chunk.len() as u64;
                    progress(Progress {
                        image: image.into(),
                        done,
                        total,
                    });
                    if tx.send(Ok(chunk)).await.is_err() {
                        break;
                    }
                }
                drop(tx);
                Ok::<(), PullError>(())
            };
            let write = self.write_content(lease, &layer.digest, layer.size, HashMap::new(), rx);
            let (fetched, written) = tokio::join!(fetch, write);
            fetched?;
            written.map_err(|e| pull_err(image, format!("writing layer {}: {e}", layer.digest)))?;
        }
        // The config keeps the unpacked snapshots alive, the manifest its blobs.
        let snapshot_label = format!("containerd.io/gc.ref.snapshot.{SNAPSHOTTER}");
        let config_labels =
            HashMap::from([(snapshot_label, chain.last().cloned().unwrap_or_default())]);
        self.put_blob(
            lease,
            &manifest.config.digest,
            config_json.as_bytes(),
            config_labels,
        )
        .await
        .map_err(|e| pull_err(image, format!("writing config: {e}")))?;
        let mut manifest_labels = HashMap::from([(
            "containerd.io/gc.ref.content.config".to_string(),
            manifest.config.digest.clone(),
        )]);
        for (i, l) in manifest.layers.iter().enumerate() {
            manifest_labels.insert(
                format!("containerd.io/gc.ref.content.l.{i}"),
                l.digest.clone(),
            );
        }
        // Stored as the registry served it: re-serialized bytes would not
        // hash to the digest that names the manifest.
        let (raw, _) = client
            .pull_manifest_raw(
                &reference.clone_with_digest(digest.clone()),
                auth,
                &[
                    oci_client::manifest::OCI_IMAGE_MEDIA_TYPE,
                    oci_client::manifest::IMAGE_MANIFEST_MEDIA_TYPE,
                ],
            )
            .await
            .map_err(|e| pull_err(image, e))?;
        if crate::artifacts::sha256(&raw) != *digest {
            return Err(PullError::DigestMismatch {
                image: image.into(),
                expected: digest.clone(),
                actual: crate::artifacts::sha256(&raw),
            });
        }
        let media_type = manifest
            .media_type
            .clone()
            .unwrap_or_else(|| oci_client::manifest::OCI_IMAGE_MEDIA_TYPE.to_string());
        self.put_blob(lease, digest, &raw, manifest_labels)
            .await
            .map_err(|e| pull_err(image, format!("writing manifest: {e}")))?;
        self.unpack(lease, &manifest.layers, chain)
            .await
            .map_err(|e| pull_err(image, format!("unpacking: {e}")))?;
        self.record_image(image, name, lease, digest, media_type, raw.len())
            .await?;
        Ok(done)
    }

    /// The image record (name → manifest), created or brought up to date.
    async fn record_image(
        &self,
        image: &str,
        name: &str,
        lease: &str,
        digest: &str,
        media_type: String,
        size: usize,
    ) -> Result<(), PullError> {
        let record = Image {
            name: name.into(),
            labels: HashMap::from([("io.cri-containerd.image".into(), "managed".into())]),
            target: Some(Descriptor {
                media_type,
                digest: digest.to_string(),
                size: size as i64,
                annotations: Default::default(),
            }),
            created_at: None,
            updated_at: None,
        };
        let created = self
            .images()
            .create(self.leased(
                CreateImageRequest {
                    image: Some(record.clone()),
                    source_date_epoch: None,
                },
                lease,
            ))
            .await;
        if let Err(e) = created {
            if e.code() != tonic::Code::AlreadyExists {
                return Err(pull_err(image, format!("image record: {}", e.message())));
            }
            self.images()
                .update(self.leased(
                    UpdateImageRequest {
                        image: Some(record),
                        update_mask: None,
                        source_date_epoch: None,
                    },
                    lease,
                ))
                .await
                .map_err(|e| pull_err(image, format!("image record: {}", e.message())))?;
        }
        Ok(())
    }

    async fn put_blob(
        &self,
        lease: &str,
        digest: &str,
        bytes: &[u8],
        labels: HashMap<String, String>,
    ) -> Result<(), String> {
        let (tx, rx) = mpsc::channel(1);
        tx.send(Ok(bytes::Bytes::copy_from_slice(bytes)))
            .await
            .map_err(|_| "closed")?;
        drop(tx);
        self.write_content(lease, digest, bytes.len() as i64, labels, rx)
            .await
    }

    /// Applies each layer onto its parent snapshot and commits it under its
    /// chain ID; layers already unpacked are skipped.
    async fn unpack(
        &self,
        lease: &str,
        layers: &[OciDescriptor],
        chain: &[String],
    ) -> Result<(), String> {
        for (i, layer) in layers.iter().enumerate() {
            if self.snapshot_exists(&chain[i]).await {
                continue;
            }
            let key = format!("weft-extract-{}-{}", uuid_like(), chain[i]);
            let parent = if i == 0 {
                String::new()
            } else {
                chain[i - 1].clone()
            };
            let mounts = self
                .snapshots()
                .prepare(self.leased(
                    PrepareSnapshotRequest {
                        snapshotter: SNAPSHOTTER.into(),
                        key: key.clone(),
                        parent,
                        labels: HashMap::new(),
                    },
                    lease,
                ))
                .await
                .map_err(|e| e.message().to_string())?
                .into_inner()
                .mounts;
            let applied = self
                .diff()
                .apply(self.leased(
                    ApplyRequest {
                        diff: Some(descriptor(layer)),
                        mounts,
                        payloads: HashMap::new(),
                        sync_fs: false,
                    },
                    lease,
                ))
                .await;
            let committed = match applied {
                Ok(_) => {
                    self.snapshots()
                        .commit(self.leased(
                            CommitSnapshotRequest {
                                snapshotter: SNAPSHOTTER.into(),
                                name: chain[i].clone(),
                                key: key.clone(),
                                labels: HashMap::new(),
                            },
                            lease,
                        ))
                        .await
                }
                Err(e) => Err(e),
            };
            if let Err(e) = committed {
                let _ = self
                    .snapshots()
                    .remove(self.req(RemoveSnapshotRequest {
                        snapshotter: SNAPSHOTTER.into(),
                        key,
                    }))
                    .await;
                // A concurrent unpack of the same layer won the race.
                if e.code() != tonic::Code::AlreadyExists {
                    return Err(e.message().to_string());
                }
            }
        }
        Ok(())
    }

    pub async fn snapshot_exists(&self, key: &str) -> bool {
        self.snapshots()
            .stat(self.req(StatSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: key.into(),
            }))
            .await
            .is_ok()
    }

    /// The image as containerd has it, if it is there and unpacked.
    async fn local(&self, name: &str) -> Option<Unpacked> {
        let image = self
            .images()
            .get(self.req(GetImageRequest { name: name.into() }))
            .await
            .ok()?
            .into_inner()
            .image?;
        let target = image.target?;
        let manifest: OciImageManifest =
            serde_json::from_slice(&self.read_content(&target.digest).await.ok()?).ok()?;
        let config: ImageConfiguration =
            serde_json::from_slice(&self.read_content(&manifest.config.digest).await.ok()?).ok()?;
        let top = chain_ids(config.rootfs().diff_ids()).pop()?;
        self.snapshot_exists(&top).await.then_some(Unpacked {
            digest: target.digest,
            config,
            top,
        })
    }
}

/// A unique-enough suffix for leases and extraction keys.
fn uuid_like() -> String {
    format!("{:016x}", rand::random::<u64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_image_spec() {
        let a = "sha256:aaaa".to_string();
        let b = "sha256:bbbb".to_string();
        let ids = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(ids[0], a, "the first chain ID is the first diff ID");
        let expect: String = Sha256::digest(b"sha256:aaaa sha256:bbbb")
            .iter()
            .map(|x| format!("{x:02x}"))
            .collect();
        assert_eq!(ids[1], format!("sha256:{expect}"));
        assert!(chain_ids(&[]).is_empty());
    }
}
