//! Commands (Job containers and workers) with the real wasmtime:
//! `samples/job` as a wasi:cli component and as a wasip1 core module.

mod guests;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use guests::{guest, guest_for, sample};
use weft_wasm_host::{Exit, Guest, Host, HostConfig, Limits, LogSink, Preopen, Stream};

/// Collects a guest's output.
#[derive(Default)]
struct Collect(Mutex<Vec<(Stream, Vec<u8>)>>);

impl LogSink for Collect {
    fn write(&self, stream: Stream, bytes: &[u8]) {
        self.0.lock().unwrap().push((stream, bytes.to_vec()));
    }
}

impl Collect {
    fn text(&self, stream: Stream) -> String {
        let all = self.0.lock().unwrap();
        all.iter()
            .filter(|(s, _)| *s == stream)
            .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
            .collect()
    }
}

fn guest_with(args: &[&str], env: &[(&str, &str)], out: &Arc<Collect>) -> Guest {
    Guest {
        args: args.iter().map(|a| a.to_string()).collect(),
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        output: Some(out.clone()),
        ..Guest::default()
    }
}

#[tokio::test]
async fn a_command_runs_to_completion_with_args_env_and_output() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::new(HostConfig::new(dir.path().join("cache"))).unwrap();
    let job = host.load("sha256:job-test", &sample("job")).unwrap();
    assert!(!host.is_http(&job), "a command, not a server");
    let hello = host.load("sha256:hello-test", &sample("hello")).unwrap();
    assert!(host.is_http(&hello));

    let out = Arc::new(Collect::default());
    let argv = ["step", "--item", "7"];
    let cmd = host
        .command(
            &job,
            guest_with(&argv, &[("HOSTNAME", "job-abc")], &out),
            Limits::default(),
        )
        .unwrap();
    assert_eq!(cmd.run().await, Exit::Code(0));
    let printed = out.text(Stream::Stdout);
    assert!(
        printed.contains("job step done by job-abc with args [\"--item\", \"7\"]"),
        "{printed}"
    );

    // A failing run is a failure exit (wasi:cli 0.2 carries no other code).
    let out = Arc::new(Collect::default());
    let failing = host
        .command(
            &job,
            guest_with(&argv, &[("EXIT_CODE", "3")], &out),
            Limits::default(),
        )
        .unwrap();
    assert_eq!(failing.run().await, Exit::Code(1));
    assert!(
        out.text(Stream::Stderr)
            .contains("failing with exit code 3")
    );
    assert!(
        !out.text(Stream::Stdout).contains("failing"),
        "stderr is its own stream"
    );
}

#[tokio::test]
async fn wasip1_modules_run_as_commands_with_their_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::new(HostConfig::new(dir.path().join("cache"))).unwrap();
    let wasm = guest_for("samples/job", "job", "wasm32-wasip1");
    assert_eq!(&wasm[4..8], &[1, 0, 0, 0], "a core module");
    let job = host.load("sha256:job-p1", &wasm).unwrap();
    assert!(!host.is_http(&job));
    assert!(host.http_handler(&job, vec![], Limits::default()).is_err());
    let out = Arc::new(Collect::default());
    let cmd = host
        .command(
            &job,
            guest_with(
                &["job", "x"],
                &[("EXIT_CODE", "3"), ("HOSTNAME", "p1")],
                &out,
            ),
            Limits::default(),
        )
        .unwrap();
    assert_eq!(
        cmd.run().await,
        Exit::Code(3),
        "wasip1 keeps the real exit code"
    );
    assert!(
        out.text(Stream::Stdout)
            .contains("job step done by p1 with args [\"x\"]")
    );
    // Loaded again, it comes from the compile cache as a module.
    assert!(host.is_cached("sha256:job-p1"));
    let again = host.load("sha256:job-p1", &wasm).unwrap();
    assert!(!host.is_http(&again));
}

#[tokio::test]
async fn a_server_component_is_not_a_command() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::new(HostConfig::new(dir.path().join("cache"))).unwrap();
    let hello = host.load("sha256:hello-test", &sample("hello")).unwrap();
    let err = host
        .command(&hello, Guest::default(), Limits::default())
        .err()
        .expect("not a command");
    assert!(err.to_string().contains("wasi:cli/command"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_commands_end_with_clear_exits_and_cpu_limits_throttle() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::new(HostConfig::new(dir.path().join("cache"))).unwrap();
    let wasm = guest("wasm-host/tests/guests/hostile", "hostile-cmd");
    let cmd = host.load("sha256:hostile-cmd", &wasm).unwrap();
    let limits = Limits {
        memory_bytes: 32 << 20,
        ..Limits::default()
    };
    let run = |mode: &'static str| {
        let out = Arc::new(Collect::default());
        let c = host
            .command(
                &cmd,
                guest_with(&["hostile", mode], &[], &out),
                limits.clone(),
            )
            .unwrap();
        async move { (c.run().await, out) }
    };
    match run("oom").await.0 {
        Exit::OutOfMemory(m) => assert!(m.contains("growing memory"), "{m}"),
        other => panic!("a memory bomb is OutOfMemory, got {other:?}"),
    }
    match run("stack").await.0 {
        Exit::Trap(m) => assert!(m.contains("stack"), "{m}"),
        other => panic!("{other:?}"),
    }
    match run("trap").await.0 {
        Exit::Trap(m) => assert!(m.contains("unreachable"), "{m}"),
        other => panic!("{other:?}"),
    }
    let (exit, out) = run("behaving").await;
    assert_eq!(exit, Exit::Code(0));
    assert_eq!(out.text(Stream::Stdout), "behaving\n");

    // Volumes: a read-only preopen can be read, not written; a writable one can.
    let (ro, rw) = (dir.path().join("ro"), dir.path().join("rw"));
    for d in [&ro, &rw] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(ro.join("key"), "value-from-configmap").unwrap();
    let with_volumes = |args: &[&str]| {
        let out = Arc::new(Collect::default());
        let mut g = guest_with(args, &[], &out);
        g.dirs = vec![
            Preopen {
                host: ro.clone(),
                guest: "/etc/config".into(),
                read_only: true,
            },
            Preopen {
                host: rw.clone(),
                guest: "/scratch".into(),
                read_only: false,
            },
        ];
        (host.command(&cmd, g, limits.clone()).unwrap(), out)
    };
    let (c, out) = with_volumes(&["hostile", "read", "/etc/config/key"]);
    assert_eq!(c.run().await, Exit::Code(0));
    assert_eq!(out.text(Stream::Stdout), "value-from-configmap");
    let (c, out) = with_volumes(&["hostile", "write", "/etc/config/new"]);
    c.run().await;
    assert!(
        out.text(Stream::Stdout).starts_with("write error"),
        "{}",
        out.text(Stream::Stdout)
    );
    assert!(!ro.join("new").exists());
    let (c, out) = with_volumes(&["hostile", "write", "/scratch/new"]);
    c.run().await;
    assert_eq!(out.text(Stream::Stdout), "wrote /scratch/new\n");
    assert_eq!(std::fs::read_to_string(rw.join("new")).unwrap(), "written");

    // A busy loop is stopped by dropping its run (the pod's deadline), and
    // at `cpu: 250m` it gets about a quarter of a core meanwhile.
    let mut throttled = limits.clone();
    throttled.cpu_cores = Some(0.25);
    let out = Arc::new(Collect::default());
    let spin = host
        .command(&cmd, guest_with(&["hostile", "loop"], &[], &out), throttled)
        .unwrap();
    // On a thread and runtime of its own, whose CPU time is the guest's
    // alone: the other tests of this binary run beside it.
    let (used, wall) = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let cpu_before = thread_cpu_total();
            let started = Instant::now();
            let r = tokio::time::timeout(Duration::from_millis(800), spin.run()).await;
            assert!(r.is_err(), "a loop runs until stopped");
            (
                thread_cpu_total() - cpu_before,
                started.elapsed().as_secs_f64(),
            )
        })
    })
    .join()
    .unwrap();
    assert!(
        used < wall * 0.6,
        "cpu 250m used {used:.2}s of CPU in {wall:.2}s"
    );
}

/// The calling thread's CPU time in seconds (user + system).
fn thread_cpu_total() -> f64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}
