//! The artifact pipeline against a real registry (Debian's docker-registry) on loopback.

#[path = "../../wasm-host/tests/guests/mod.rs"]
mod guests;
#[path = "../../tests/common/registry.rs"]
mod registry;

use http_body_util::{BodyExt, Empty};
use oci_client::client::{Config, ImageLayer};
use oci_client::secrets::RegistryAuth;
use registry::Registry;
use weft_node::artifacts::{self, ArtifactStore, PullError, PullPolicy};
use weft_wasm_host::{Host, HostConfig, Limits};

const ANON: RegistryAuth = RegistryAuth::Anonymous;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_pull_cache_and_serve() {
    let registry = Registry::start();
    let wasm = guests::sample("hello");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hello.wasm");
    std::fs::write(&file, &wasm).unwrap();
    let image = format!("{}/samples/hello:1", registry.addr);

    let pushed = artifacts::push(&file, &image, &ANON)
        .await
        .expect("push to the loopback registry");
    assert_eq!(pushed, artifacts::sha256(&wasm));

    let store = ArtifactStore::new(dir.path().join("artifacts")).unwrap();
    let pulled = store
        .pull(&image, PullPolicy::IfNotPresent, &ANON)
        .await
        .expect("pull");
    assert_eq!(pulled.digest, pushed, "digest verified and kept");
    assert_eq!(std::fs::read(&pulled.path).unwrap(), wasm);

    // The pulled artifact runs.
    let host = Host::new(HostConfig::new(dir.path().join("cwasm"))).unwrap();
    let artifact = host
        .load(&pulled.digest, &std::fs::read(&pulled.path).unwrap())
        .unwrap();
    let handler = host
        .http_handler(
            &artifact,
            vec![("HOSTNAME".into(), "from-registry".into())],
            Limits::default(),
        )
        .unwrap();
    let resp = handler
        .handle(
            hyper::Request::builder()
                .uri("http://x/")
                .body(Empty::<bytes::Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(
        resp.into_body().collect().await.unwrap().to_bytes(),
        "Hello from from-registry\n"
    );

    // A missing tag is ErrImagePull carrying the registry's message.
    let missing = store
        .pull(
            &format!("{}/samples/hello:nope", registry.addr),
            PullPolicy::Always,
            &ANON,
        )
        .await
        .unwrap_err();
    assert_eq!(missing.reason(), "ErrImagePull");
    assert!(
        missing.to_string().to_lowercase().contains("manifest"),
        "{missing}"
    );

    // With the registry gone, IfNotPresent is served from the cache and Always fails.
    drop(registry);
    assert_eq!(
        store
            .pull(&image, PullPolicy::IfNotPresent, &ANON)
            .await
            .unwrap(),
        pulled
    );
    assert_eq!(
        store.pull(&image, PullPolicy::Never, &ANON).await.unwrap(),
        pulled
    );
    let gone = store
        .pull(&image, PullPolicy::Always, &ANON)
        .await
        .unwrap_err();
    assert_eq!(gone.reason(), "ErrImagePull");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_layer_images_and_non_wasm_images() {
    let registry = Registry::start();
    let wasm = guests::sample("hello");
    let dir = tempfile::tempdir().unwrap();
    let store = ArtifactStore::new(dir.path().into()).unwrap();
    // This test drives oci-client directly, so it picks rustls' provider itself.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = oci_client::Client::new(oci_client::client::ClientConfig {
        protocol: oci_client::client::ClientProtocol::HttpsExcept(vec![registry.addr.clone()]),
        ..Default::default()
    });
    let image_config = || {
        Config::new(
            br#"{"architecture":"amd64","os":"linux"}"#.to_vec(),
            oci_client::manifest::IMAGE_CONFIG_MEDIA_TYPE.to_string(),
            None,
        )
    };

    // A plain single-layer image whose layer is the .wasm file.
    let plain = format!("{}/plain/hello:1", registry.addr);
    let layer = ImageLayer::new(
        wasm.clone(),
        oci_client::manifest::IMAGE_LAYER_MEDIA_TYPE.to_string(),
        None,
    );
    client
        .push(
            &plain.parse().unwrap(),
            &[layer],
            image_config(),
            &ANON,
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        store
            .pull(&plain, PullPolicy::Always, &ANON)
            .await
            .unwrap()
            .digest,
        artifacts::sha256(&wasm)
    );

    // An ordinary container image is not Wasm: that decides the runtime later.
    let container = format!("{}/plain/busybox:1", registry.addr);
    let layer = ImageLayer::new(
        b"not a wasm module, a tarball".to_vec(),
        oci_client::manifest::IMAGE_LAYER_MEDIA_TYPE.to_string(),
        None,
    );
    client
        .push(
            &container.parse().unwrap(),
            &[layer],
            image_config(),
            &ANON,
            None,
        )
        .await
        .unwrap();
    assert!(matches!(
        store.pull(&container, PullPolicy::Always, &ANON).await,
        Err(PullError::NotWasm(_))
    ));

    // Pushing something that is not Wasm is refused before any upload.
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"junk").unwrap();
    assert!(matches!(
        artifacts::push(&junk, &plain, &ANON).await,
        Err(PullError::NotWasm(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_pulls_at_once_fetch_the_blob_once() {
    let registry = Registry::start();
    let wasm = guests::sample("hello");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hello.wasm");
    std::fs::write(&file, &wasm).unwrap();
    let digest = artifacts::push(&file, &format!("{}/samples/hello:1", registry.addr), &ANON)
        .await
        .unwrap();
    // Each fetch of the blob takes 500 ms: every pull below starts while one is in flight.
    let stall = (digest.clone(), std::time::Duration::from_millis(500));
    let proxy = registry::Proxy::start(&registry.addr, Some(stall));
    let image = format!("{}/samples/hello:1", proxy.addr);
    let store = std::sync::Arc::new(ArtifactStore::new(dir.path().join("artifacts")).unwrap());
    for policy in [PullPolicy::IfNotPresent, PullPolicy::Always] {
        let pulls: Vec<_> = (0..10)
            .map(|_| {
                let (store, image) = (store.clone(), image.clone());
                tokio::spawn(async move { store.pull(&image, policy, &ANON).await })
            })
            .collect();
        for p in pulls {
            assert_eq!(p.await.unwrap().unwrap().digest, digest);
        }
    }
    // IfNotPresent: one fetch for ten pods; Always: one more, shared by ten.
    assert_eq!(proxy.gets(&digest), 2, "blob GETs of {digest}");
    assert_eq!(
        std::fs::read_dir(dir.path().join("artifacts/blobs"))
            .unwrap()
            .count(),
        1,
        "no temp files left behind"
    );
}
