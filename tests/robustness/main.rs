//! Robustness: Kubernetes-shaped traffic through every member of a real
//! cluster while one fault is injected, then the recorded history is
//! checked (linearizability, watch guarantees, no lost writes), as etcd's
//! robustness tests do. docs/ha.md says how to run many seeds and replay.

mod checker;
mod history;

/// Checks a history a failed run saved: `WEFT_ROBUSTNESS_REPLAY=FILE
/// cargo test --test robustness replay -- --ignored --nocapture`.
#[test]
#[ignore = "replays the history file named by WEFT_ROBUSTNESS_REPLAY"]
fn replay() {
    let file = std::env::var("WEFT_ROBUSTNESS_REPLAY").expect("WEFT_ROBUSTNESS_REPLAY=FILE");
    let h: history::History =
        serde_json::from_slice(&std::fs::read(&file).expect("read the history")).expect("parse");
    let v = checker::check(&h);
    assert!(
        v.is_empty(),
        "seed {} ({}): {} violations:\n{}",
        h.seed,
        h.scenario,
        v.len(),
        v.join("\n")
    );
}
