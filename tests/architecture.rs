//! The library's layering, read from its source: its top-level modules depend on each other
//! without a circle, and the domain depends on none of them. A new `use crate::...` that closes
//! a circle fails here, naming it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read a source folder") {
        let path = entry.expect("a folder entry").path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

/// A source file's code: without comment lines (doc links are not dependencies) and without
/// its `#[cfg(test)]` items (a unit test may build its fixtures with another module's helpers:
/// tests are not the layering). An item's extent is counted by its braces.
fn code_of(file: &Path) -> String {
    let mut code = Vec::new();
    let (mut in_test, mut depth, mut opened) = (false, 0i64, false);
    let source = std::fs::read_to_string(file).unwrap();
    for line in source.lines() {
        if line.trim_start().starts_with("//") {
            continue;
        }
        if line.trim() == "#[cfg(test)]" {
            (in_test, depth, opened) = (true, 0, false);
            continue;
        }
        if in_test {
            depth += line.matches('{').count() as i64 - line.matches('}').count() as i64;
            opened |= line.contains('{');
            if (opened && depth <= 0) || (!opened && line.trim_end().ends_with(';')) {
                in_test = false;
            }
            continue;
        }
        code.push(line);
    }
    code.join("\n")
}

/// The first segment after each `crate::` in `code`, grouped imports included:
/// `use crate::{service::X, domain}` names `service` and `domain`.
fn crate_paths(code: &str) -> Vec<String> {
    fn ident(s: &str) -> String {
        s.trim_start().chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect()
    }
    let mut names = Vec::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = code[i + 7..].trim_start();
        let Some(group) = rest.strip_prefix('{') else {
            names.push(ident(rest));
            continue;
        };
        // The group's top-level items: split at commas outside nested braces, up to its `}`.
        let (mut depth, mut item) = (0usize, String::new());
        for c in group.chars() {
            match c {
                '}' if depth == 0 => break,
                ',' if depth == 0 => names.push(ident(&std::mem::take(&mut item))),
                '{' => depth += 1,
                '}' => depth -= 1,
                _ => {}
            }
            if !(c == ',' && depth == 0) {
                item.push(c);
            }
        }
        names.push(ident(&item));
    }
    names
}

#[test]
fn grouped_imports_are_read_too() {
    let code = "use crate::{service::{self, X}, domain};\nlet _ = crate::http::y;\nuse crate::{ ports };";
    assert_eq!(crate_paths(code), ["service", "domain", "http", "ports"]);
}

/// Top-level module -> the top-level modules its code names as `crate::<module>`, comments
/// aside (doc links are not dependencies).
fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("shared/src");
    let modules: BTreeSet<String> = std::fs::read_dir(&src)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .filter(|m| m != "lib")
        .collect();
    let mut graph = BTreeMap::new();
    for module in &modules {
        let file = src.join(format!("{module}.rs"));
        let files = if file.is_file() { vec![file] } else { rust_files(&src.join(module)) };
        let mut uses = BTreeSet::new();
        for f in files {
            for name in crate_paths(&code_of(&f)) {
                if modules.contains(&name) && &name != module {
                    uses.insert(name);
                }
            }
        }
        graph.insert(module.clone(), uses);
    }
    graph
}

/// A circle through `start`, if any, as the path of modules.
fn circle_from(graph: &BTreeMap<String, BTreeSet<String>>, start: &str) -> Option<Vec<String>> {
    fn walk(
        graph: &BTreeMap<String, BTreeSet<String>>,
        start: &str,
        at: &str,
        path: &mut Vec<String>,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        for next in graph.get(at).into_iter().flatten() {
            if next == start {
                path.push(next.clone());
                return true;
            }
            if seen.insert(next.clone()) {
                path.push(next.clone());
                if walk(graph, start, next, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![start.to_owned()];
    walk(graph, start, start, &mut path, &mut BTreeSet::new()).then_some(path)
}

#[test]
fn the_library_modules_depend_on_each_other_without_circles() {
    let graph = module_graph();
    assert!(graph.len() >= 10, "the scan found the modules: {graph:?}");
    assert!(graph["service"].contains("domain") && graph["http"].contains("service"), "the scan sees uses: {graph:?}");
    let circles: Vec<String> = graph.keys().filter_map(|m| circle_from(&graph, m)).map(|c| c.join(" -> ")).collect();
    assert!(circles.is_empty(), "import circles between the library's modules:\n{}", circles.join("\n"));
}

#[test]
fn the_domain_depends_on_no_other_module() {
    let graph = module_graph();
    assert_eq!(graph["domain"], BTreeSet::new(), "the domain is pure: it imports nothing above it");
}

#[test]
fn the_scan_finds_a_circle_when_there_is_one() {
    let mut graph = module_graph();
    graph.get_mut("domain").unwrap().insert("service".to_owned());
    let circle = circle_from(&graph, "domain").expect("domain -> service -> domain");
    assert_eq!(circle.first(), circle.last());
}
