//! No import circles between the crate's modules (issue 21): a module that uses another must not
//! be used by it, directly or through others, at file level (`engine::table`) and at top level
//! (`engine`, `handler`, `metrics`). Self-contained: it reads `src/`, takes every `crate::…` and
//! `super::…` path in code (comments, strings and test modules left out) as an edge from the
//! file to the deepest module file the path names, and reports each strongly connected
//! component of more than one module.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Graph = BTreeMap<String, BTreeSet<String>>;

/// `src/a/b.rs` -> `a::b`; `src/a/mod.rs` -> `a`; `src/lib.rs` -> `` (the crate root).
fn module_name(rel: &Path) -> String {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap_or_default();
    let stem = last.trim_end_matches(".rs").to_string();
    if stem != "mod" && stem != "lib" {
        parts.push(stem);
    }
    parts.join("::")
}

fn is_test_module(m: &str) -> bool {
    m.split("::").any(|p| p.ends_with("tests"))
}

/// The code without comments, string and char literals, and `#[cfg(test)]` items.
fn strip(code: &str) -> String {
    let b = code.as_bytes();
    let mut out = String::with_capacity(code.len());
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            let mut depth = 0;
            while i < b.len() {
                if b[i..].starts_with(b"/*") {
                    depth += 1;
                    i += 2;
                } else if b[i..].starts_with(b"*/") {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else {
            let ch = code[i..].chars().next().unwrap();
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    // `#[cfg(test)]` items: the attribute, then an item up to its balanced closing brace
    // (or `;`).
    let mut res = String::with_capacity(out.len());
    let mut rest = out.as_str();
    while let Some(at) = rest.find("#[cfg(test)]") {
        res.push_str(&rest[..at]);
        let item = &rest[at..];
        let mut depth = 0usize;
        let mut end = item.len();
        for (k, c) in item.char_indices().skip("#[cfg(test)]".len()) {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        end = k + 1;
                        break;
                    }
                }
                ';' if depth == 0 => {
                    end = k + 1;
                    break;
                }
                _ => {}
            }
        }
        rest = &item[end..];
    }
    res.push_str(rest);
    res
}

/// Every `prefix` path in `code` (`crate::a::b::{c, d}` gives `a::b`, its longest plain part).
fn paths_after<'a>(code: &'a str, prefix: &str) -> Vec<(usize, &'a str)> {
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(at) = code[from..].find(prefix) {
        let start = from + at;
        from = start + prefix.len();
        let before = code[..start].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let tail = &code[from..];
        let len = tail
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(tail.len());
        found.push((start, tail[..len].trim_end_matches(':')));
    }
    found
}

/// The deepest module file that `segments` names, if any.
fn resolve(files: &BTreeSet<String>, segments: &[&str]) -> Option<String> {
    (1..=segments.len())
        .rev()
        .map(|k| segments[..k].join("::"))
        .find(|m| files.contains(m))
}

fn graph(files: &BTreeMap<String, String>) -> Graph {
    let names: BTreeSet<String> = files.keys().cloned().collect();
    let mut g = Graph::new();
    for (m, text) in files {
        if is_test_module(m) {
            continue;
        }
        let code = strip(text);
        let edges = g.entry(m.clone()).or_default();
        for (_, p) in paths_after(&code, "crate::") {
            let segs: Vec<&str> = p.split("::").filter(|s| !s.is_empty()).collect();
            if let Some(t) = resolve(&names, &segs) {
                if &t != m {
                    edges.insert(t);
                }
            }
        }
        let own: Vec<&str> = m.split("::").filter(|s| !s.is_empty()).collect();
        let mut from = 0;
        while let Some(at) = code[from..].find("super::") {
            let start = from + at;
            let before = code[..start].chars().next_back();
            let mut rest = &code[start..];
            from = start + "super::".len();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let mut up = 0;
            while let Some(r) = rest.strip_prefix("super::") {
                up += 1;
                rest = r;
            }
            from = code.len() - rest.len();
            let len = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(rest.len());
            let mut segs: Vec<&str> = own[..own.len().saturating_sub(up)].to_vec();
            segs.extend(rest[..len].split("::").filter(|s| !s.is_empty()));
            if let Some(t) = resolve(&names, &segs) {
                if &t != m {
                    edges.insert(t);
                }
            }
        }
    }
    g
}

/// Strongly connected components of more than one node (Tarjan).
fn circles(g: &Graph) -> Vec<Vec<String>> {
    struct St<'a> {
        g: &'a Graph,
        next: usize,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn go<'a>(s: &mut St<'a>, v: &'a str) {
        s.index.insert(v, s.next);
        s.low.insert(v, s.next);
        s.next += 1;
        s.stack.push(v);
        s.on.insert(v);
        if let Some(ws) = s.g.get(v) {
            for w in ws {
                let w = w.as_str();
                if !s.index.contains_key(w) {
                    go(s, w);
                    let l = s.low[v].min(s.low[w]);
                    s.low.insert(v, l);
                } else if s.on.contains(w) {
                    let l = s.low[v].min(s.index[w]);
                    s.low.insert(v, l);
                }
            }
        }
        if s.low[v] == s.index[v] {
            let mut c = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on.remove(w);
                c.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if c.len() > 1 {
                c.sort();
                s.out.push(c);
            }
        }
    }
    let mut s = St {
        g,
        next: 0,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in g.keys() {
        if !s.index.contains_key(v.as_str()) {
            go(&mut s, v);
        }
    }
    s.out
}

/// The graph between top-level modules (the crate root left out: it names everything).
fn top_level(g: &Graph) -> Graph {
    let top = |m: &str| m.split("::").next().unwrap_or("").to_string();
    let mut t = Graph::new();
    for (a, bs) in g {
        for b in bs {
            let (ta, tb) = (top(a), top(b));
            if !ta.is_empty() && !tb.is_empty() && ta != tb {
                t.entry(ta).or_default().insert(tb);
            }
        }
    }
    t
}

fn read_src(dir: &Path, root: &Path, files: &mut BTreeMap<String, String>) {
    for e in std::fs::read_dir(dir).expect("read src") {
        let p = e.expect("dir entry").path();
        if p.is_dir() {
            read_src(&p, root, files);
        } else if p.extension().is_some_and(|x| x == "rs") {
            let rel = p.strip_prefix(root).expect("under src");
            files.insert(
                module_name(rel),
                std::fs::read_to_string(&p).expect("read file"),
            );
        }
    }
}

#[test]
fn no_import_circles_between_modules() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = BTreeMap::new();
    read_src(&src, &src, &mut files);
    assert!(files.len() > 20, "found only {} files in src/", files.len());
    let g = graph(&files);
    let edges: usize = g.values().map(BTreeSet::len).sum();
    assert!(
        edges > 50,
        "found only {edges} module edges: the parser is broken"
    );
    let file = circles(&g);
    let top = circles(&top_level(&g));
    let show = |cs: &[Vec<String>]| {
        cs.iter()
            .map(|c| c.join(" <-> "))
            .collect::<Vec<_>>()
            .join("\n  ")
    };
    assert!(
        file.is_empty() && top.is_empty(),
        "import circles (a module that uses another must not be used by it; move shared \
         constants and types into a leaf module such as src/limits.rs):\n file level:\n  {}\n \
         top level:\n  {}",
        show(&file),
        show(&top)
    );
}

#[test]
fn the_checker_finds_a_circle() {
    let files: BTreeMap<String, String> = [
        ("", "mod a; mod b; use crate::a::X;"),
        ("a", "use crate::b::inner::Y; // crate::c in a comment\n"),
        ("b", "pub mod inner;"),
        (
            "b::inner",
            "pub fn f() { let _ = \"crate::c\"; super::super::a::X }",
        ),
        (
            "c",
            "use crate::a::X;\n#[cfg(test)]\nmod tests { use crate::c::Z; }",
        ),
        ("d", "fn f() { crate::c::g() }"),
    ]
    .into_iter()
    .map(|(m, c)| (m.to_string(), c.to_string()))
    .collect();
    let g = graph(&files);
    assert_eq!(g["c"], BTreeSet::from(["a".to_string()]));
    assert_eq!(g["b::inner"], BTreeSet::from(["a".to_string()]));
    assert_eq!(
        circles(&g),
        vec![vec!["a".to_string(), "b::inner".to_string()]]
    );
    assert_eq!(
        circles(&top_level(&g)),
        vec![vec!["a".to_string(), "b".to_string()]]
    );
}
