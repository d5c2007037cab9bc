//! A batch step: says which pod did the work and exits with `EXIT_CODE`
//! (default 0), so manifests can make it succeed or fail.

fn main() {
    let pod = std::env::var("HOSTNAME").unwrap_or_else(|_| "unknown".into());
    let args: Vec<String> = std::env::args().skip(1).collect();
    println!("job step done by {pod} with args {args:?}");
    let code: i32 = std::env::var("EXIT_CODE")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    if code != 0 {
        eprintln!("failing with exit code {code}");
    }
    std::process::exit(code);
}
