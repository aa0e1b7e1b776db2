//! The crate's layers (README "Architecture"): every `crate::` path and every `super::` path in
//! `src/` must point to a module of the same layer or one below it, and no two modules may use
//! each other, directly or round a longer circle. Reads the source text; no build needed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, bottom first. A module may use its own layer's code and the layers before it.
const LAYERS: &[&[&str]] = &[
    &["error"],
    &["rng"],
    &["tokenizer"],
    &["config"],
    &["kernels"],
    &["quant"],
    &["io"],
    &["models"],
    &["scheduler"],
    &["pipeline"],
    &["bench", "wasm"],
];

fn layer_of(top: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&top))
}

/// A source file's module path: `src/models/unet.rs` → `models::unet`, `src/io/mod.rs` → `io`.
fn module_of(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap_or_default();
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" {
        parts.push(stem.to_string());
    }
    parts
}

/// The code of a file without comments, string literals and its `#[cfg(test)] mod tests`
/// block (tests may reach anywhere, and their `super::` is the file itself).
fn code(text: &str) -> String {
    let code = strip_comments_and_strings(text);
    let Some(start) = code.find("#[cfg(test)]\nmod tests {") else {
        return code;
    };
    let open = start + code[start..].find('{').unwrap();
    let mut depth = 0;
    for (i, c) in code[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return format!("{}{}", &code[..start], &code[open + i + 1..]);
                }
            }
            _ => {}
        }
    }
    code[..start].to_string()
}

fn strip_comments_and_strings(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            // A character literal ('"', '\'', '\n'); a lifetime (`'a`) is left as it is.
            '\'' if chars.peek() == Some(&'\\') => {
                chars.next();
                chars.next();
                for c in chars.by_ref() {
                    if c == '\'' {
                        break;
                    }
                }
            }
            '\'' if chars.clone().nth(1) == Some('\'') => {
                chars.next();
                chars.next();
            }
            '"' => {
                let mut escaped = false;
                for c in chars.by_ref() {
                    if escaped {
                        escaped = false;
                    } else if c == '\\' {
                        escaped = true;
                    } else if c == '"' {
                        break;
                    }
                }
                out.push_str("\"\"");
            }
            _ => out.push(c),
        }
    }
    out
}

fn ident(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The paths after each `crate::` and `super::` (as segments from the crate root), with
/// `crate::{a::X, b::{Y, Z}}` split into its items.
fn paths(code: &str, module: &[String]) -> Vec<Vec<String>> {
    fn items(rest: &str, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
        let mut path = prefix;
        let mut rest = rest;
        loop {
            if let Some(inner) = rest.strip_prefix('{') {
                // Split the group at its top-level commas.
                let mut depth = 0;
                let mut start = 0;
                for (i, c) in inner.char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => {
                            items(inner[start..i].trim_start(), path.clone(), out);
                            return;
                        }
                        '}' => depth -= 1,
                        ',' if depth == 0 => {
                            items(inner[start..i].trim_start(), path.clone(), out);
                            start = i + 1;
                        }
                        _ => {}
                    }
                }
                return;
            }
            let id = ident(rest);
            if id.is_empty() || id == "self" {
                break;
            }
            path.push(id.to_string());
            rest = &rest[id.len()..];
            match rest.strip_prefix("::") {
                Some(r) => rest = r.trim_start(),
                None => break,
            }
        }
        if !path.is_empty() {
            out.push(path);
        }
    }
    let mut out = Vec::new();
    for (i, _) in code.match_indices("crate::") {
        let before = code[..i].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // `fastcomposer::crate` never occurs; `my_crate::` is not ours
        }
        items(&code[i + "crate::".len()..], Vec::new(), &mut out);
    }
    for (i, _) in code.match_indices("super::") {
        let before = code[..i].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue; // `super::super::` is handled from its first `super`
        }
        let mut base = module.to_vec();
        let mut rest = &code[i..];
        while let Some(r) = rest.strip_prefix("super::") {
            base.pop();
            rest = r;
        }
        items(rest, base, &mut out);
    }
    out
}

/// Checks `files` (module path → code): upward uses and circles between modules. Returns one
/// line per problem.
fn check(files: &BTreeMap<Vec<String>, String>) -> Vec<String> {
    let modules: BTreeSet<&Vec<String>> = files.keys().collect();
    let mut problems = Vec::new();
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for (module, code) in files {
        let Some(top) = module.first() else { continue };
        let Some(own) = layer_of(top) else {
            problems.push(format!("{}: no layer for `{top}`", module.join("::")));
            continue;
        };
        for path in paths(code, module) {
            // The deepest module the path names.
            let target = (1..=path.len())
                .rev()
                .map(|n| path[..n].to_vec())
                .find(|p| modules.contains(p));
            let Some(target) = target else { continue };
            let Some(theirs) = layer_of(&target[0]) else {
                continue;
            };
            if theirs > own {
                problems.push(format!(
                    "{} uses {} (layer `{}` is above `{}`)",
                    module.join("::"),
                    path.join("::"),
                    target[0],
                    top
                ));
            }
            let related = target.starts_with(module) || module.starts_with(&target);
            if !related {
                edges.entry(module.clone()).or_default().insert(target);
            }
        }
    }
    // Circles: strongly connected components of more than one module (Tarjan).
    let nodes: Vec<&Vec<String>> = modules.iter().copied().collect();
    let index_of: BTreeMap<&Vec<String>, usize> =
        nodes.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let adj: Vec<Vec<usize>> = nodes
        .iter()
        .map(|n| {
            edges
                .get(*n)
                .map(|s| s.iter().filter_map(|t| index_of.get(t).copied()).collect())
                .unwrap_or_default()
        })
        .collect();
    struct Tarjan<'a> {
        adj: &'a [Vec<usize>],
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        on_stack: Vec<bool>,
        stack: Vec<usize>,
        next: usize,
        sccs: Vec<Vec<usize>>,
    }
    impl Tarjan<'_> {
        fn visit(&mut self, v: usize) {
            self.index[v] = Some(self.next);
            self.low[v] = self.next;
            self.next += 1;
            self.stack.push(v);
            self.on_stack[v] = true;
            for &w in &self.adj[v] {
                match self.index[w] {
                    None => {
                        self.visit(w);
                        self.low[v] = self.low[v].min(self.low[w]);
                    }
                    Some(i) if self.on_stack[w] => self.low[v] = self.low[v].min(i),
                    Some(_) => {}
                }
            }
            if Some(self.low[v]) == self.index[v] {
                let mut scc = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack[w] = false;
                    scc.push(w);
                    if w == v {
                        break;
                    }
                }
                self.sccs.push(scc);
            }
        }
    }
    let n = nodes.len();
    let mut t = Tarjan {
        adj: &adj,
        index: vec![None; n],
        low: vec![0; n],
        on_stack: vec![false; n],
        stack: Vec::new(),
        next: 0,
        sccs: Vec::new(),
    };
    for v in 0..n {
        if t.index[v].is_none() {
            t.visit(v);
        }
    }
    for scc in t.sccs.iter().filter(|s| s.len() > 1) {
        let mut names: Vec<String> = scc.iter().map(|&i| nodes[i].join("::")).collect();
        names.sort();
        problems.push(format!("circular uses between {}", names.join(", ")));
    }
    problems
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn modules_use_only_their_layer_and_the_ones_below() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut paths = Vec::new();
    rust_files(&src, &mut paths);
    let mut files = BTreeMap::new();
    for path in paths {
        let rel = path.strip_prefix(&src).unwrap();
        // The command-line tool is its own crate on top of the library; lib.rs only declares.
        if rel.starts_with("bin") || rel == Path::new("lib.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        files.insert(module_of(rel), code(&text));
    }
    assert!(files.len() > 30, "found only {} source files", files.len());
    let problems = check(&files);
    assert!(problems.is_empty(), "layering:\n{}", problems.join("\n"));
}

/// The checker itself finds an upward use, one inside a `use crate::{...}` group, one through
/// `super::`, and a circle between two modules of one layer — and ignores comments, strings
/// and test modules.
#[test]
fn the_checker_finds_upward_uses_and_circles() {
    let file = |m: &str, code: &str| {
        (
            m.split("::").map(String::from).collect::<Vec<_>>(),
            self::code(code),
        )
    };
    let clean: BTreeMap<_, _> = [
        file("error", ""),
        file(
            "config",
            "use crate::error::Error;\n// crate::pipeline::X\n",
        ),
        file("kernels", "pub mod conv;"),
        file(
            "kernels::conv",
            "fn f() { super::winograd::g(); let s = \"crate::io::x\"; }",
        ),
        file("kernels::winograd", "use crate::config::ModelConfig;"),
        file("io", ""),
        file(
            "pipeline",
            "use crate::{error::Error, config::{self, ModelConfig}};",
        ),
        file(
            "models",
            "use crate::kernels::conv;\n#[cfg(test)]\nmod tests { use crate::pipeline::X; }",
        ),
    ]
    .into_iter()
    .collect();
    assert_eq!(check(&clean), Vec::<String>::new());

    // `clean` with one module's code replaced.
    let with = |module: &str, text: &str| {
        let mut files = clean.clone();
        let (m, c) = file(module, text);
        files.insert(m, c);
        check(&files)
    };
    let p = with("kernels::winograd", "fn g() -> crate::io::Bundle {}");
    assert!(
        p.iter()
            .any(|l| l.contains("kernels::winograd uses io::Bundle")),
        "{p:?}"
    );
    // (models uses kernels::conv, which uses config: a circle too.)
    let p = with("config", "use crate::{error::Error, models::unet::X};");
    assert!(
        p.iter().any(|l| l.contains("config uses models::unet::X")),
        "{p:?}"
    );
    let p = with("kernels::conv", "use super::super::pipeline::Denoiser;");
    assert!(
        p.iter()
            .any(|l| l.contains("kernels::conv uses pipeline::Denoiser")),
        "{p:?}"
    );
    let p = with("kernels::winograd", "use super::conv::is_3x3;");
    assert_eq!(
        p,
        vec!["circular uses between kernels::conv, kernels::winograd".to_string()]
    );
}

/// Every relative link in README.md and the Markdown files under docs/ and web/pkg-src/ names a
/// file or folder of the repository (the docs the README links live in the repository).
#[test]
fn relative_links_in_the_docs_resolve() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut docs = vec![root.join("README.md"), root.join("BENCHMARKS.md")];
    for dir in ["docs", "web/pkg-src"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let p = entry.unwrap().path();
            if p.extension().is_some_and(|e| e == "md") {
                docs.push(p);
            }
        }
    }
    let mut broken = Vec::new();
    let mut links = 0;
    for doc in &docs {
        let text = std::fs::read_to_string(doc).unwrap();
        for (i, _) in text.match_indices("](") {
            let rest = &text[i + 2..];
            let Some(end) = rest.find(')') else { continue };
            let target = rest[..end].split('#').next().unwrap_or("");
            if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            links += 1;
            if !doc.parent().unwrap().join(target).exists() {
                broken.push(format!(
                    "{}: {target}",
                    doc.strip_prefix(root).unwrap().display()
                ));
            }
        }
    }
    assert!(links > 5, "found only {links} relative links");
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}
