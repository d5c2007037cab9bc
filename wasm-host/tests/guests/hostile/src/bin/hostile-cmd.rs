//! The command form of the hostile guest: argv[1] picks the misbehaviour
//! (`loop`, `oom`, `stack`, `trap`, `flood MB`), or `read PATH` / `write PATH`
//! check volumes; anything else prints `behaving` and exits 0.

use std::io::Write;

#[inline(never)]
fn recurse(depth: u64, sink: &mut [u64; 64]) -> u64 {
    sink[(depth % 64) as usize] = depth;
    if std::hint::black_box(depth) == u64::MAX {
        0
    } else {
        recurse(depth + 1, sink) + sink[0]
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("loop") => loop {
            std::hint::black_box(());
        },
        Some("oom") => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 1 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        Some("stack") => {
            let mut sink = [0u64; 64];
            std::hint::black_box(recurse(0, &mut sink));
        }
        Some("trap") => panic!("trapping on purpose"),
        Some("flood") => {
            let mb: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(100);
            let line = [b'x'; 1023];
            let mut out = std::io::stdout().lock();
            for _ in 0..mb * 1024 {
                out.write_all(&line).unwrap();
                out.write_all(b"\n").unwrap();
            }
            out.flush().unwrap();
            println!("flooded {mb} MB");
        }
        // Volume checks: print a file, or try to write one.
        Some("read") => match std::fs::read_to_string(&args[2]) {
            Ok(text) => print!("{text}"),
            Err(e) => println!("read error: {e}"),
        },
        Some("write") => match std::fs::write(&args[2], "written") {
            Ok(()) => println!("wrote {}", args[2]),
            Err(e) => println!("write error: {e}"),
        },
        _ => println!("behaving"),
    }
}
