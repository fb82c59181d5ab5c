//! harvestd's modules depend one way: no cycle among the top-level modules of `src/` (test code
//! excluded), and nothing imports `server`, which only wires the others together.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The top-level module a file belongs to, and its text without test code.
fn sources(dir: &Path, module: Option<&str>, out: &mut BTreeMap<String, String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            sources(&path, Some(module.unwrap_or(&name)), out);
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs")
            || name.ends_with("tests")
            || name == "testing"
            || (module.is_none() && (name == "lib" || name == "main"))
        {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        // Code only: not test code, not comments (doc links name modules too).
        let code: String = text
            .split("#[cfg(test)]")
            .next()
            .unwrap_or("")
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .map(|l| format!("{l}\n"))
            .collect();
        let owner = module.unwrap_or(&name).to_owned();
        out.entry(owner).or_default().push_str(&code);
    }
}

/// Whether `code` names `crate::<module>` (not a longer name that starts the same).
fn names(code: &str, module: &str) -> bool {
    let pat = format!("crate::{module}");
    code.match_indices(&pat).any(|(i, _)| {
        code[i + pat.len()..]
            .chars()
            .next()
            .is_none_or(|c| !(c.is_alphanumeric() || c == '_'))
    })
}

fn edges() -> BTreeMap<String, BTreeSet<String>> {
    let mut files = BTreeMap::new();
    sources(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        None,
        &mut files,
    );
    let modules: BTreeSet<String> = files.keys().cloned().collect();
    files
        .iter()
        .map(|(m, code)| {
            let uses = modules
                .iter()
                .filter(|other| *other != m && names(code, other))
                .cloned()
                .collect();
            (m.clone(), uses)
        })
        .collect()
}

#[test]
fn no_module_imports_the_server() {
    for (m, uses) in edges() {
        assert!(!uses.contains("server"), "{m} imports crate::server");
    }
}

#[test]
fn module_dependencies_have_no_cycle() {
    let graph = edges();
    // Depth-first search for a back edge, reporting the cycle.
    fn visit(
        m: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) {
        if let Some(i) = path.iter().position(|p| p == m) {
            panic!("import cycle: {} -> {m}", path[i..].join(" -> "));
        }
        if done.contains(m) {
            return;
        }
        path.push(m.to_owned());
        for next in graph.get(m).into_iter().flatten() {
            visit(next, graph, path, done);
        }
        path.pop();
        done.insert(m.to_owned());
    }
    let mut done = BTreeSet::new();
    for m in graph.keys() {
        visit(m, &graph, &mut Vec::new(), &mut done);
    }
    assert!(graph.len() > 10, "too few modules found: {graph:?}");
}
