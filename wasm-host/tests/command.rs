//! wasi:cli commands (Job containers) with the real wasmtime and `samples/job`.

mod guests;

use guests::sample;
use weft_wasm_host::{Exit, Host, HostConfig, Limits};

fn output_file(dir: &std::path::Path) -> (std::fs::File, std::fs::File, std::path::PathBuf) {
    let path = dir.join("out.log");
    let f = std::fs::File::create(&path).unwrap();
    (f.try_clone().unwrap(), f, path)
}

#[tokio::test]
async fn a_command_runs_to_completion_with_args_env_and_output() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::new(HostConfig::new(dir.path().join("cache"))).unwrap();
    let job = host.load("sha256:job-test", &sample("job")).unwrap();
    assert!(!host.is_http(&job), "a command, not a server");
    let hello = host.load("sha256:hello-test", &sample("hello")).unwrap();
    assert!(host.is_http(&hello));

    let argv = vec!["step".to_string(), "--item".into(), "7".into()];
    let env = vec![("HOSTNAME".to_string(), "job-abc".to_string())];
    let cmd = host
        .command(&job, argv.clone(), env, Limits::default())
        .unwrap();
    let (out, err, path) = output_file(dir.path());
    assert_eq!(cmd.run(out, err).await, Exit::Code(0));
    let printed = std::fs::read_to_string(&path).unwrap();
    assert!(
        printed.contains("job step done by job-abc with args [\"--item\", \"7\"]"),
        "{printed}"
    );

    // A failing run is a failure exit (wasi:cli 0.2 carries no other code).
    let env = vec![("EXIT_CODE".to_string(), "3".to_string())];
    let failing = host.command(&job, argv, env, Limits::default()).unwrap();
    let (out, err, path) = output_file(dir.path());
    assert_eq!(failing.run(out, err).await, Exit::Code(1));
    assert!(
        std::fs::read_to_string(&path)
            .unwrap()
            .contains("failing with exit code 3")
    );
}

#[tokio::test]
async fn a_server_component_is_not_a_command() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::new(HostConfig::new(dir.path().join("cache"))).unwrap();
    let hello = host.load("sha256:hello-test", &sample("hello")).unwrap();
    let err = host
        .command(&hello, vec![], vec![], Limits::default())
        .err()
        .expect("not a command");
    assert!(err.to_string().contains("wasi:cli/command"), "{err}");
}
