//! The wasm host with the real wasmtime and the real `samples/hello` component.

use std::time::{Duration, Instant};

mod guests;

use guests::{guest, sample};
use http_body_util::{BodyExt, Empty};
use weft_wasm_host::{Host, HostConfig, HostError, Limits};

fn request(host: &str) -> hyper::Request<Empty<bytes::Bytes>> {
    hyper::Request::builder()
        .uri(format!("http://{host}/"))
        .body(Empty::new())
        .unwrap()
}

async fn body_of(resp: weft_wasm_host::Response) -> String {
    String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes()
            .to_vec(),
    )
    .unwrap()
}

#[tokio::test]
async fn hello_answers_with_the_pod_name() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::new(HostConfig::new(dir.path().into())).unwrap();
    let artifact = host.load("sha256:hello-test", &sample("hello")).unwrap();
    let handler = host
        .http_handler(
            &artifact,
            vec![("HOSTNAME".into(), "pod-a".into())],
            Limits::default(),
        )
        .unwrap();
    let resp = handler.handle(request("pod-a")).await.expect("a response");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/plain");
    assert_eq!(body_of(resp).await, "Hello from pod-a\n");
}

#[tokio::test]
async fn each_request_gets_a_fresh_instance_and_concurrency_is_fine() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::new(HostConfig::new(dir.path().into())).unwrap();
    let artifact = host.load("sha256:hello-conc", &sample("hello")).unwrap();
    let handler = host
        .http_handler(
            &artifact,
            vec![("HOSTNAME".into(), "pod-b".into())],
            Limits {
                max_concurrency: 8,
                ..Limits::default()
            },
        )
        .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let h = handler.clone();
        tasks.push(tokio::spawn(async move {
            body_of(h.handle(request("pod-b")).await.expect("response")).await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), "Hello from pod-b\n");
    }
}

#[tokio::test]
async fn compiled_artifacts_are_cached_by_digest() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = sample("hello");
    {
        let host = Host::new(HostConfig::new(dir.path().into())).unwrap();
        assert!(!host.is_cached("sha256:cache-me"));
        host.load("sha256:cache-me", &wasm).unwrap();
        assert!(host.is_cached("sha256:cache-me"));
    }
    let cwasm: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(Result::ok)
        .collect();
    assert_eq!(cwasm.len(), 1, "one precompiled file");
    let modified = cwasm[0].metadata().unwrap().modified().unwrap();
    // A new host (a restarted node) loads the precompiled file without recompiling.
    let host = Host::new(HostConfig::new(dir.path().into())).unwrap();
    assert!(host.is_cached("sha256:cache-me"));
    let artifact = host.load("sha256:cache-me", &wasm).unwrap();
    assert_eq!(cwasm[0].metadata().unwrap().modified().unwrap(), modified);
    let handler = host
        .http_handler(
            &artifact,
            vec![("HOSTNAME".into(), "c".into())],
            Limits::default(),
        )
        .unwrap();
    assert_eq!(
        body_of(handler.handle(request("c")).await.unwrap()).await,
        "Hello from c\n"
    );
}

#[tokio::test]
async fn bad_artifacts_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::new(HostConfig::new(dir.path().into())).unwrap();
    match host.load("sha256:garbage", b"this is not wasm") {
        Err(HostError::Compile(msg)) => assert!(!msg.is_empty()),
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("garbage compiled"),
    }
    assert!(!host.is_cached("sha256:garbage"), "failures are not cached");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_guests_hurt_only_themselves() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::new(HostConfig::new(dir.path().into())).unwrap();
    let hostile = host
        .load(
            "sha256:hostile",
            &guest("wasm-host/tests/guests/hostile", "hostile"),
        )
        .unwrap();
    let limits = Limits {
        memory_bytes: 16 << 20,
        cpu_budget: Duration::from_millis(300),
        request_timeout: Duration::from_secs(10),
        max_concurrency: 4,
    };
    let bad = host.http_handler(&hostile, vec![], limits).unwrap();
    let hello = host.load("sha256:hello-hostile", &sample("hello")).unwrap();
    let good = host
        .http_handler(
            &hello,
            vec![("HOSTNAME".into(), "good".into())],
            Limits::default(),
        )
        .unwrap();

    // A well-behaved pod keeps answering while a neighbour spins.
    let spinning = {
        let bad = bad.clone();
        tokio::spawn(async move {
            let start = Instant::now();
            (
                bad.handle(
                    hyper::Request::builder()
                        .uri("http://bad/loop")
                        .body(Empty::<bytes::Bytes>::new())
                        .unwrap(),
                )
                .await,
                start.elapsed(),
            )
        })
    };
    for _ in 0..20 {
        assert_eq!(
            body_of(good.handle(request("good")).await.unwrap()).await,
            "Hello from good\n"
        );
    }
    let (looped, took) = spinning.await.unwrap();
    match looped {
        Err(weft_wasm_host::RequestError::Trap(msg)) => assert!(msg.contains("interrupt"), "{msg}"),
        other => panic!("an infinite loop must be stopped by its CPU budget, got {other:?}"),
    }
    assert!(took < Duration::from_secs(5), "stopped after {took:?}");

    for path in ["/oom", "/stack", "/trap"] {
        let res = bad
            .handle(
                hyper::Request::builder()
                    .uri(format!("http://bad{path}"))
                    .body(Empty::<bytes::Bytes>::new())
                    .unwrap(),
            )
            .await;
        assert!(
            matches!(res, Err(weft_wasm_host::RequestError::Trap(_))),
            "{path}: {res:?}"
        );
    }
    // The same pod still serves good requests, and so does its neighbour.
    let ok = bad
        .handle(
            hyper::Request::builder()
                .uri("http://bad/ok")
                .body(Empty::<bytes::Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(body_of(ok).await, "ok\n");
    assert_eq!(
        body_of(good.handle(request("good")).await.unwrap()).await,
        "Hello from good\n"
    );
}
