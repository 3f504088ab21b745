//! The code's shape, held by tests: no import circles between src/'s top-level modules or
//! between the files of one folder, and docs/ARCHITECTURE.md true to the tree (every path it
//! names exists; every top-level module is in its table; the README points to it).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use crate::support::repo_root;

/// Every `.rs` file under `dir`, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("reading {dir:?}: {e}")) {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// A file's module path under src/ (`src/hub/mod.rs` → `["hub"]`, `src/lib.rs` → `[]`).
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let relative = file.strip_prefix(src).expect("under src");
    let mut parts: Vec<String> = relative
        .with_extension("")
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// The source without comments, string and character literals (their text is no import).
fn code_only(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        let rest = &text[i..];
        if rest.starts_with("//") {
            i += rest.find('\n').unwrap_or(rest.len());
        } else if rest.starts_with("/*") {
            i += rest.find("*/").map_or(rest.len(), |end| end + 2);
        } else if let Some(raw) = raw_string_len(rest) {
            out.push_str("\"\"");
            i += raw;
        } else if rest.starts_with('"') {
            let mut j = 1;
            while j < rest.len() {
                match rest.as_bytes()[j] {
                    b'\\' => j += 2,
                    b'"' => break,
                    _ => j += 1,
                }
            }
            out.push_str("\"\"");
            i += (j + 1).min(rest.len());
        } else if rest.starts_with("'\"'") {
            i += 3;
        } else {
            let c = rest.chars().next().expect("not empty");
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

/// The length of a raw string literal (`r"…"`, `r#"…"#`) at the start of `text`.
fn raw_string_len(text: &str) -> Option<usize> {
    let after_r = text.strip_prefix('r')?;
    let hashes = after_r.len() - after_r.trim_start_matches('#').len();
    let body = after_r[hashes..].strip_prefix('"')?;
    let close = format!("\"{}", "#".repeat(hashes));
    let end = body.find(&close)?;
    Some(1 + hashes + 1 + end + close.len())
}

/// The names that follow `crate::` or `super::` (`kind`), use trees' first level included.
fn references<'a>(code: &'a str, kind: &str) -> Vec<&'a str> {
    let needle = format!("{kind}::");
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(at) = code[from..].find(&needle) {
        let start = from + at;
        from = start + needle.len();
        let before = code[..start].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let rest = &code[from..];
        if rest.starts_with('{') {
            found.extend(use_tree_heads(rest));
        } else {
            found.push(identifier(rest));
        }
    }
    found.retain(|name| !name.is_empty() && *name != "self");
    found
}

fn identifier(text: &str) -> &str {
    let end = text
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    &text[..end]
}

/// The first segment of each path at the top level of a `{…}` use tree.
fn use_tree_heads(tree: &str) -> Vec<&str> {
    let mut heads = Vec::new();
    let mut depth = 0;
    let mut item_start = true;
    for (i, c) in tree.char_indices() {
        match c {
            '{' => {
                depth += 1;
                if depth == 1 {
                    item_start = true;
                    continue;
                }
            }
            '}' => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            ',' if depth == 1 => {
                item_start = true;
                continue;
            }
            _ => {}
        }
        if depth == 1 && item_start && !c.is_whitespace() {
            heads.push(identifier(&tree[i..]));
            item_start = false;
        }
    }
    heads
}

type Graph = BTreeMap<String, BTreeSet<String>>;

/// The top-level graph (module → modules it uses) and, per folder, the graph of its files.
fn module_graphs(src: &Path) -> (Graph, BTreeMap<String, Graph>) {
    let files = rust_files(src);
    let top_modules: BTreeSet<String> = files
        .iter()
        .filter_map(|f| module_of(src, f).first().cloned())
        .collect();
    let mut siblings: BTreeMap<Vec<String>, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let module = module_of(src, file);
        if module.len() >= 2 && !file.ends_with("mod.rs") {
            let (name, folder) = module.split_last().expect("two parts");
            siblings
                .entry(folder.to_vec())
                .or_default()
                .insert(name.clone());
        }
    }
    let mut top = Graph::new();
    let mut inner: BTreeMap<String, Graph> = BTreeMap::new();
    for file in &files {
        let module = module_of(src, file);
        let Some(first) = module.first() else {
            continue;
        };
        let code = code_only(&fs::read_to_string(file).expect("a source file"));
        for name in references(&code, "crate") {
            if top_modules.contains(name) && name != first {
                top.entry(first.clone())
                    .or_default()
                    .insert(name.to_owned());
            }
        }
        if module.len() < 2 || file.ends_with("mod.rs") {
            continue;
        }
        let (me, folder) = module.split_last().expect("two parts");
        let files_here = &siblings[folder];
        let folder_path = format!("crate::{}::", folder.join("::"));
        let mut uses: Vec<&str> = references(&code, "super");
        uses.extend(
            code.match_indices(&folder_path)
                .map(|(at, _)| identifier(&code[at + folder_path.len()..])),
        );
        for name in uses {
            if files_here.contains(name) && name != me {
                inner
                    .entry(format!("src/{}", folder.join("/")))
                    .or_default()
                    .entry(me.clone())
                    .or_default()
                    .insert(name.to_owned());
            }
        }
    }
    (top, inner)
}

/// The strongly connected components of more than one module (Tarjan's algorithm).
fn circles(graph: &Graph) -> Vec<Vec<String>> {
    struct Walk<'a> {
        graph: &'a Graph,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        found: Vec<Vec<String>>,
    }
    impl<'a> Walk<'a> {
        fn visit(&mut self, v: &'a str) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            for w in self.graph.get(v).into_iter().flatten() {
                let w = w.as_str();
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w]);
                    self.low.insert(v, low);
                } else if self.stack.contains(&w) {
                    let low = self.low[v].min(self.index[w]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                while let Some(w) = self.stack.pop() {
                    component.push(w.to_owned());
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.found.push(component);
                }
            }
        }
    }
    let mut walk = Walk {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        found: Vec::new(),
    };
    let nodes: BTreeSet<&str> = graph
        .iter()
        .flat_map(|(from, to)| std::iter::once(from.as_str()).chain(to.iter().map(String::as_str)))
        .collect();
    for node in nodes {
        if !walk.index.contains_key(node) {
            walk.visit(node);
        }
    }
    walk.found
}

fn all_circles(src: &Path) -> Vec<String> {
    let (top, inner) = module_graphs(src);
    let mut found: Vec<String> = circles(&top)
        .into_iter()
        .map(|c| format!("src: {}", c.join(" -> ")))
        .collect();
    for (folder, graph) in &inner {
        found.extend(
            circles(graph)
                .into_iter()
                .map(|c| format!("{folder}: {}", c.join(" -> "))),
        );
    }
    found
}

#[test]
fn no_module_imports_another_in_a_circle() {
    let found = all_circles(&repo_root().join("src"));
    assert!(
        found.is_empty(),
        "import circles (docs/ARCHITECTURE.md says who may call whom):\n{}",
        found.join("\n")
    );
}

#[test]
fn the_circle_check_finds_a_circle_between_modules_and_between_files() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let src = dir.path();
    let write = |path: &str, text: &str| {
        let path = src.join(path);
        fs::create_dir_all(path.parent().expect("a parent")).expect("a folder");
        fs::write(path, text).expect("a file");
    };
    write("lib.rs", "pub mod a;\npub mod b;\npub mod c;\n");
    write("a.rs", "use crate::b::Thing; // crate::c in a comment\n");
    write(
        "b.rs",
        "use crate::{c::Other, a};\nconst S: &str = \"crate::a\";\n",
    );
    write("c.rs", "pub struct Other;\n");
    write("f/mod.rs", "mod x;\nmod y;\n");
    write("f/x.rs", "use super::y::Y;\n");
    write("f/y.rs", "fn f() { crate::f::x::go() }\n");
    assert_eq!(all_circles(src), ["src: a -> b", "src/f: x -> y"]);
    write("b.rs", "use crate::c::Other;\n");
    write("f/y.rs", "// uses super::x\n");
    assert!(all_circles(src).is_empty());
}

/// The paths docs/ARCHITECTURE.md names in backticks or links.
fn named_paths(text: &str) -> BTreeSet<String> {
    const ROOTS: [&str; 6] = [
        "src/",
        "tests/",
        "docs/",
        "client/",
        "migrations/",
        "scripts/",
    ];
    let mut paths = BTreeSet::new();
    for piece in text.split(['`', '(', ')', ' ', '\n', ',']) {
        let piece = piece.trim_start_matches("../").trim_end_matches(['.', ':']);
        if ROOTS.iter().any(|root| piece.starts_with(root)) && !piece.contains(['*', '{', '<']) {
            paths.insert(piece.to_owned());
        }
    }
    paths
}

#[test]
fn the_architecture_map_names_only_what_exists_and_every_top_level_module() {
    let root = repo_root();
    let map = fs::read_to_string(root.join("docs/ARCHITECTURE.md")).expect("docs/ARCHITECTURE.md");
    let named = named_paths(&map);
    assert!(named.len() > 20, "the map names paths: {named:?}");
    let missing: Vec<&String> = named.iter().filter(|p| !root.join(p).exists()).collect();
    assert!(
        missing.is_empty(),
        "docs/ARCHITECTURE.md names paths that are gone: {missing:?}"
    );
    let lib = fs::read_to_string(root.join("src/lib.rs")).expect("src/lib.rs");
    let modules: Vec<&str> = lib
        .lines()
        .filter_map(|line| line.trim().strip_prefix("pub mod "))
        .map(|rest| rest.trim_end_matches(';'))
        .collect();
    assert!(modules.len() > 10, "src/lib.rs lists its modules");
    let unmapped: Vec<&&str> = modules
        .iter()
        .filter(|m| {
            !named.contains(&format!("src/{m}.rs")) && !named.contains(&format!("src/{m}/"))
        })
        .collect();
    assert!(
        unmapped.is_empty(),
        "top-level modules missing from docs/ARCHITECTURE.md's table: {unmapped:?}"
    );
    let readme = fs::read_to_string(root.join("README.md")).expect("README.md");
    assert!(
        readme.contains("docs/ARCHITECTURE.md"),
        "the README's Layout points to docs/ARCHITECTURE.md"
    );
}

#[test]
fn the_map_check_sees_paths_in_backticks_and_links() {
    let named = named_paths("`src/hub/` and [x](../src/wire/transport.rs), `src/a.rs`: `src/*.rs`");
    let expected: BTreeSet<String> = ["src/hub/", "src/wire/transport.rs", "src/a.rs"]
        .map(String::from)
        .into();
    assert_eq!(named, expected);
}
