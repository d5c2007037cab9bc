//! The control plane's top-level modules depend on each other one way
//! (docs/architecture.md). Until they are crates, where Cargo forbids
//! cycles, this reads the `crate::…` paths of every source file and checks
//! the arrows.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

fn sources(dir: &Path, out: &mut Vec<(String, String)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push((
                path.display().to_string(),
                std::fs::read_to_string(&path).unwrap(),
            ));
        }
    }
}

/// Top-level module → the top-level modules it names through `crate::`.
fn arrows() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (path, text) in files {
        let rel = path.strip_prefix(&format!("{}/", src.display())).unwrap();
        let top = rel
            .split('/')
            .next()
            .unwrap()
            .trim_end_matches(".rs")
            .to_string();
        if top == "lib" {
            continue;
        }
        let mut named = BTreeSet::new();
        for (i, _) in text.match_indices("crate::") {
            let rest = &text[i + "crate::".len()..];
            let idents: Vec<&str> = if let Some(group) = rest.strip_prefix('{') {
                let group = &group[..group.find('}').unwrap_or(0)];
                group
                    .split(',')
                    .map(|s| s.trim().split("::").next().unwrap_or(""))
                    .collect()
            } else {
                vec![
                    rest.split(|c: char| !(c.is_alphanumeric() || c == '_'))
                        .next()
                        .unwrap_or(""),
                ]
            };
            named.extend(
                idents
                    .into_iter()
                    .filter(|m| !m.is_empty() && *m != top)
                    .map(String::from),
            );
        }
        out.entry(top).or_default().extend(named);
    }
    out
}

#[test]
fn the_modules_arrows_point_one_way() {
    let arrows = arrows();
    // Depth-first: a module seen again on the current path is a cycle.
    fn visit<'a>(
        m: &'a str,
        arrows: &'a BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) {
        if done.contains(m) {
            return;
        }
        assert!(
            !path.contains(&m),
            "import cycle: {} -> {m}",
            path.join(" -> ")
        );
        path.push(m);
        for next in arrows.get(m).into_iter().flatten() {
            visit(next, arrows, path, done);
        }
        path.pop();
        done.insert(m);
    }
    let mut done = BTreeSet::new();
    for m in arrows.keys() {
        visit(m, &arrows, &mut Vec::new(), &mut done);
    }
    // The scheduler and the controllers know only the vocabulary.
    for m in ["scheduler", "controllers", "cluster"] {
        let allowed: BTreeSet<String> = if m == "cluster" {
            BTreeSet::new()
        } else {
            ["cluster".to_string()].into()
        };
        assert_eq!(
            arrows.get(m).cloned().unwrap_or_default(),
            allowed,
            "{m}'s arrows: {arrows:#?}"
        );
    }
}
