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
        ..Limits::default()
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
        Err(weft_wasm_host::RequestError::CpuBudget(b)) => {
            assert_eq!(b, Duration::from_millis(300))
        }
        other => panic!("an infinite loop must be stopped by its CPU budget, got {other:?}"),
    }
    assert!(took < Duration::from_secs(5), "stopped after {took:?}");

    for (path, want) in [
        ("/oom", "memory limit"),
        ("/stack", "stack"),
        ("/trap", "unreachable"),
        // 100,000 handles held at once, past the table's cap of 10,000.
        ("/handles", "resource table has no free keys"),
    ] {
        let res = bad
            .handle(
                hyper::Request::builder()
                    .uri(format!("http://bad{path}"))
                    .body(Empty::<bytes::Bytes>::new())
                    .unwrap(),
            )
            .await;
        match res {
            Err(e) => assert!(e.to_string().contains(want), "{path}: {e}"),
            Ok(_) => panic!("{path} answered"),
        }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outgoing_http_goes_through_the_egress_hook() {
    use std::sync::Arc;
    use weft_wasm_host::{AllowList, Guest};
    // An upstream on loopback.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(
                        http_body_util::Full::new(bytes::Bytes::from_static(b"upstream says hi")),
                    ))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let host = Host::new(HostConfig::new(dir.path().into())).unwrap();
    let fetch = host
        .load(
            "sha256:fetch",
            &guest("wasm-host/tests/guests/fetch", "fetch"),
        )
        .unwrap();
    let with = |allow: Vec<String>| {
        let g = Guest {
            egress: Some(Arc::new(AllowList(allow))),
            ..Guest::default()
        };
        host.http_handler(&fetch, g, Limits::default()).unwrap()
    };
    let ask = |h: weft_wasm_host::HttpHandler| async move {
        let req = hyper::Request::builder()
            .uri(format!("http://pod/?url=http://{upstream}/"))
            .body(Empty::<bytes::Bytes>::new())
            .unwrap();
        let resp = h.handle(req).await.unwrap();
        let status = resp.status().as_u16();
        (status, body_of(resp).await)
    };
    assert_eq!(
        ask(with(vec![upstream.to_string()])).await,
        (200, "200 upstream says hi".to_string())
    );
    let (status, body) = ask(with(vec!["example.com".into()])).await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("HttpRequestDenied"), "{body}");
    let (status, body) = ask(host
        .http_handler(&fetch, Guest::default(), Limits::default())
        .unwrap())
    .await;
    assert_eq!(status, 502, "no egress hook: denied ({body})");
}
