//! No import cycles between the modules of `host/src`.
//!
//! Reads the source tree (no compiler involved, and no libtorch linked): every `use` tree and
//! every `crate::`/`super::`/`self::` path outside comments and strings is resolved to the
//! module it names, following `pub use` re-exports. A reference from a file under module `a`
//! to an item under its sibling `b` (two children of the same parent) is an edge `a → b`; any
//! strongly connected set of siblings is a cycle and fails the test, naming the lines that
//! make it. Code under `#[cfg(test)]` is skipped: tests consume modules and may use any.
//!
//! Why it matters: a cycle means neither module can be read, tested or moved without the
//! other, which is how "a module named for one stage holding another's work" starts.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// A module path below the crate root (`["pipeline", "img2img"]`; empty for the root).
type ModPath = Vec<String>;

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Ident(String),
    PathSep,
    Open(char),
    Close(char),
    Punct(char),
}

/// Tokens of Rust source with their line numbers; comments, strings and chars dropped.
fn lex(source: &str) -> Vec<(Tok, usize)> {
    let chars: Vec<char> = source.chars().collect();
    let mut tokens = Vec::new();
    let (mut i, mut line) = (0, 1);
    let skip_string = |i: &mut usize, line: &mut usize| {
        // At the opening quote of a (non-raw) string.
        *i += 1;
        while *i < chars.len() && chars[*i] != '"' {
            if chars[*i] == '\\' {
                *i += 1;
            }
            if chars.get(*i) == Some(&'\n') {
                *line += 1;
            }
            *i += 1;
        }
        *i += 1;
    };
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        match c {
            '\n' => {
                line += 1;
                i += 1;
            }
            '/' if next == Some('/') => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '/' if next == Some('*') => {
                let mut depth = 0;
                while i < chars.len() {
                    if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                        depth += 1;
                        i += 2;
                    } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        if chars[i] == '\n' {
                            line += 1;
                        }
                        i += 1;
                    }
                }
            }
            '"' => skip_string(&mut i, &mut line),
            'r' | 'b'
                if (c == 'r' && matches!(next, Some('"' | '#')))
                    || (c == 'b' && matches!(next, Some('"' | '\'')))
                    || (c == 'b'
                        && next == Some('r')
                        && matches!(chars.get(i + 2), Some('"' | '#'))) =>
            {
                // Byte strings, raw strings, byte chars and raw identifiers (`r#name`); a
                // plain identifier starting with r or b goes on with a letter.
                let mut j = i + 1;
                if c == 'b' && next == Some('r') {
                    j += 1;
                }
                if c == 'b' && next == Some('\'') {
                    i = skip_char(&chars, j + 1);
                    continue;
                }
                let raw = c == 'r' || (c == 'b' && next == Some('r'));
                if !raw {
                    i = j;
                    skip_string(&mut i, &mut line);
                    continue;
                }
                let hashes = chars[j..].iter().take_while(|&&h| h == '#').count();
                if chars.get(j + hashes) != Some(&'"') {
                    // A raw identifier `r#name`.
                    i = j + hashes;
                    continue;
                }
                i = j + hashes + 1;
                loop {
                    if i >= chars.len() {
                        break;
                    }
                    if chars[i] == '"'
                        && chars[i + 1..]
                            .iter()
                            .take(hashes)
                            .filter(|&&h| h == '#')
                            .count()
                            == hashes
                    {
                        i += 1 + hashes;
                        break;
                    }
                    if chars[i] == '\n' {
                        line += 1;
                    }
                    i += 1;
                }
            }
            '\'' => {
                // A char literal ('x', '\n', '\u{..}') or a lifetime ('a).
                if next == Some('\\') || chars.get(i + 2) == Some(&'\'') {
                    i = skip_char(&chars, i + 1);
                } else {
                    i += 1;
                    while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                        i += 1;
                    }
                }
            }
            ':' if next == Some(':') => {
                tokens.push((Tok::PathSep, line));
                i += 2;
            }
            c if c.is_alphabetic() || c == '_' => {
                let start = i;
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
                tokens.push((Tok::Ident(chars[start..i].iter().collect()), line));
            }
            '{' | '(' | '[' => {
                tokens.push((Tok::Open(c), line));
                i += 1;
            }
            '}' | ')' | ']' => {
                tokens.push((Tok::Close(c), line));
                i += 1;
            }
            c if c.is_whitespace() => i += 1,
            c => {
                tokens.push((Tok::Punct(c), line));
                i += 1;
            }
        }
    }
    tokens
}

/// Past a char literal whose body starts at `i` (after the opening quote).
fn skip_char(chars: &[char], mut i: usize) -> usize {
    while i < chars.len() && chars[i] != '\'' {
        if chars[i] == '\\' {
            i += 1;
        }
        i += 1;
    }
    i + 1
}

/// One path named in a file, as written, with where it is.
struct Reference {
    /// The module the code is in (the file's module plus inline `mod` blocks).
    from: ModPath,
    /// The segments as written (`crate`, `super`, `self` or a name first).
    segments: Vec<String>,
    line: usize,
    /// Part of a `use` declaration (a leading plain name may then be a child module).
    in_use: bool,
    /// `pub use`: the last segment (or its `as` alias) is re-exported from `from`.
    reexport: Option<String>,
}

fn ident(tokens: &[(Tok, usize)], i: usize) -> Option<&str> {
    match tokens.get(i) {
        Some((Tok::Ident(name), _)) => Some(name),
        _ => None,
    }
}

/// Whether the tokens just before `i` are `#[cfg(test)]`.
fn after_cfg_test(tokens: &[(Tok, usize)], i: usize) -> bool {
    let want = [
        Tok::Punct('#'),
        Tok::Open('['),
        Tok::Ident("cfg".into()),
        Tok::Open('('),
        Tok::Ident("test".into()),
        Tok::Close(')'),
        Tok::Close(']'),
    ];
    // Skip a visibility (`pub`, `pub(crate)`) between the attribute and the item.
    let mut end = i;
    if end >= 1 && ident(tokens, end - 1) == Some("pub") {
        end -= 1;
    } else if end >= 4
        && ident(tokens, end - 4) == Some("pub")
        && tokens[end - 1].0 == Tok::Close(')')
    {
        end -= 4;
    }
    end >= want.len()
        && tokens[end - want.len()..end]
            .iter()
            .map(|(t, _)| t)
            .eq(want.iter())
}

/// Parses the `use` tree at `i` (after `use`), pushing one reference per leaf; returns the
/// index of the closing `;`.
fn use_tree(
    tokens: &[(Tok, usize)],
    mut i: usize,
    prefix: &[String],
    out: &mut Vec<(Vec<String>, Option<String>, usize)>,
) -> usize {
    let mut segments = prefix.to_vec();
    loop {
        match tokens.get(i).map(|(t, _)| t) {
            Some(Tok::Ident(name)) if name == "as" => {
                let alias = ident(tokens, i + 1).map(str::to_string);
                out.push((segments.clone(), alias, tokens[i].1));
                segments.clear();
                i += 2;
                return i;
            }
            Some(Tok::Ident(name)) => {
                segments.push(name.clone());
                i += 1;
            }
            Some(Tok::PathSep) => i += 1,
            Some(Tok::Punct('*')) => {
                // A glob re-exports or imports a whole module: a reference to it.
                out.push((segments.clone(), None, tokens[i].1));
                return i + 1;
            }
            Some(Tok::Open('{')) => {
                i += 1;
                loop {
                    i = use_tree(tokens, i, &segments, out);
                    match tokens.get(i).map(|(t, _)| t) {
                        Some(Tok::Punct(',')) => i += 1,
                        _ => break,
                    }
                    if tokens.get(i).map(|(t, _)| t) == Some(&Tok::Close('}')) {
                        break;
                    }
                }
                // At the closing brace.
                return i + 1;
            }
            _ => {
                if segments.len() > prefix.len() {
                    let last = segments.last().cloned();
                    let line = tokens[i.saturating_sub(1)].1;
                    // `self` in a group names the prefix itself.
                    let mut path = segments.clone();
                    let alias = if last.as_deref() == Some("self") {
                        path.pop();
                        path.last().cloned()
                    } else {
                        last
                    };
                    out.push((path, alias, line));
                }
                return i;
            }
        }
    }
}

/// Every path a file names, skipping `#[cfg(test)]` code.
fn references(file_module: &ModPath, source: &str) -> Vec<Reference> {
    let tokens = lex(source);
    let mut refs = Vec::new();
    // Inline modules open at a brace depth: (name, depth, is test code).
    let mut inline: Vec<(String, usize, bool)> = Vec::new();
    let mut depth = 0usize;
    let mut skip_item_depth: Option<usize> = None;
    let mut i = 0;
    let here = |inline: &[(String, usize, bool)]| {
        let mut m = file_module.clone();
        m.extend(inline.iter().map(|(n, _, _)| n.clone()));
        m
    };
    while i < tokens.len() {
        let in_test = inline.iter().any(|(_, _, test)| *test) || skip_item_depth.is_some();
        match &tokens[i].0 {
            Tok::Open('{') => {
                depth += 1;
                i += 1;
            }
            Tok::Close('}') => {
                depth -= 1;
                if inline.last().is_some_and(|(_, d, _)| *d == depth) {
                    inline.pop();
                }
                if skip_item_depth == Some(depth) {
                    skip_item_depth = None;
                }
                i += 1;
            }
            Tok::Ident(kw) if kw == "mod" => {
                if let (Some(name), Some((Tok::Open('{'), _))) =
                    (ident(&tokens, i + 1), tokens.get(i + 2))
                {
                    let test = after_cfg_test(&tokens, i);
                    inline.push((name.to_string(), depth, test));
                    depth += 1;
                    i += 3;
                } else {
                    i += 1;
                }
            }
            Tok::Ident(kw)
                if kw == "fn" && after_cfg_test(&tokens, i) && skip_item_depth.is_none() =>
            {
                // A test-only function: skip its body.
                let mut j = i;
                while j < tokens.len() && tokens[j].0 != Tok::Open('{') {
                    j += 1;
                }
                skip_item_depth = Some(depth);
                i = j;
            }
            Tok::Ident(kw) if kw == "use" => {
                let public = i >= 1
                    && (ident(&tokens, i - 1) == Some("pub")
                        || (i >= 4
                            && ident(&tokens, i - 4) == Some("pub")
                            && tokens[i - 1].0 == Tok::Close(')')));
                let test = after_cfg_test(&tokens, i) || in_test;
                let mut leaves = Vec::new();
                let mut j = i + 1;
                if tokens.get(j).map(|(t, _)| t) == Some(&Tok::PathSep) {
                    j += 1; // `use ::name` names an external crate.
                    while j < tokens.len() && tokens[j].0 != Tok::Punct(';') {
                        j += 1;
                    }
                    i = j;
                    continue;
                }
                j = use_tree(&tokens, j, &[], &mut leaves);
                while j < tokens.len() && tokens[j].0 != Tok::Punct(';') {
                    j += 1;
                }
                if !test {
                    for (segments, alias, line) in leaves {
                        refs.push(Reference {
                            from: here(&inline),
                            segments,
                            line,
                            in_use: true,
                            reexport: if public { alias } else { None },
                        });
                    }
                }
                i = j + 1;
            }
            Tok::Ident(first)
                if matches!(first.as_str(), "crate" | "super" | "self")
                    && tokens.get(i + 1).map(|(t, _)| t) == Some(&Tok::PathSep) =>
            {
                let line = tokens[i].1;
                let mut segments = vec![first.clone()];
                let mut j = i + 1;
                while tokens.get(j).map(|(t, _)| t) == Some(&Tok::PathSep) {
                    match ident(&tokens, j + 1) {
                        Some(name) => segments.push(name.to_string()),
                        None => break,
                    }
                    j += 2;
                }
                if !in_test {
                    refs.push(Reference {
                        from: here(&inline),
                        segments,
                        line,
                        in_use: false,
                        reexport: None,
                    });
                }
                i = j;
            }
            _ => i += 1,
        }
    }
    refs
}

/// The module of each source file of the library (`main.rs` is another crate).
fn source_files(src: &Path) -> Vec<(PathBuf, ModPath)> {
    fn walk(dir: &Path, module: &ModPath, out: &mut Vec<(PathBuf, ModPath)>) {
        let mut entries: Vec<_> = fs::read_dir(dir)
            .expect("readable source folder")
            .map(|e| e.expect("entry").path())
            .collect();
        entries.sort();
        for path in entries {
            let name = path.file_stem().unwrap().to_string_lossy().to_string();
            if path.is_dir() {
                let mut child = module.clone();
                child.push(path.file_name().unwrap().to_string_lossy().to_string());
                walk(&path, &child, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let mut m = module.clone();
                match name.as_str() {
                    "mod" => {}
                    "lib" if module.is_empty() => {}
                    "main" if module.is_empty() => continue,
                    _ => m.push(name),
                }
                out.push((path, m));
            }
        }
    }
    let mut out = Vec::new();
    walk(src, &Vec::new(), &mut out);
    out
}

/// A sibling edge: parent module, from child, to child, with the line that makes it.
type Edges = BTreeMap<ModPath, BTreeMap<(String, String), String>>;

/// The sibling edges of the crate whose `lib.rs` is in `src`.
fn sibling_edges(src: &Path) -> Edges {
    let files = source_files(src);
    let mut modules: BTreeSet<ModPath> = files.iter().map(|(_, m)| m.clone()).collect();
    let mut all = Vec::new();
    for (path, module) in &files {
        let source = fs::read_to_string(path).expect("readable source");
        let rel = path.strip_prefix(src).unwrap().display().to_string();
        for r in references(module, &source) {
            // Inline modules (`pub mod size_pair { .. }`) are modules too.
            for k in module.len()..=r.from.len() {
                modules.insert(r.from[..k].to_vec());
            }
            all.push((rel.clone(), r));
        }
    }
    let resolve = |r: &Reference| -> Option<Vec<String>> {
        let mut s = r.segments.iter().peekable();
        let mut base: Vec<String> = match s.peek().map(|x| x.as_str()) {
            Some("crate") => {
                s.next();
                Vec::new()
            }
            Some("self") => {
                s.next();
                r.from.clone()
            }
            Some("super") => {
                let mut b = r.from.clone();
                while s.peek().map(|x| x.as_str()) == Some("super") {
                    s.next();
                    b.pop()?;
                }
                b
            }
            Some(name) if r.in_use => {
                // A plain name in `use` is a child module (or an external crate).
                let mut child = r.from.clone();
                child.push(name.to_string());
                if !modules.contains(&child) {
                    return None;
                }
                r.from.clone()
            }
            _ => return None,
        };
        base.extend(s.cloned());
        Some(base)
    };
    // `pub use` re-exports: the alias's absolute path → the path it stands for.
    let mut reexports: BTreeMap<Vec<String>, Vec<String>> = BTreeMap::new();
    for (_, r) in &all {
        if let (Some(alias), Some(target)) = (&r.reexport, resolve(r)) {
            let mut key = r.from.clone();
            key.push(alias.clone());
            if key != target {
                reexports.insert(key, target);
            }
        }
    }
    let expand = |mut path: Vec<String>| -> Vec<String> {
        for _ in 0..16 {
            let hit = (1..=path.len())
                .rev()
                .find_map(|k| reexports.get(&path[..k]).map(|t| (k, t.clone())));
            match hit {
                Some((k, mut target)) => {
                    target.extend(path[k..].iter().cloned());
                    path = target;
                }
                None => break,
            }
        }
        path
    };
    let mut edges = Edges::new();
    for (file, r) in &all {
        let Some(target) = resolve(r).map(&expand) else {
            continue;
        };
        // The module the named item lives in.
        let mut to = target;
        while !modules.contains(&to) {
            to.pop();
        }
        let from = &r.from;
        let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
        if from.len() > common && to.len() > common {
            edges
                .entry(from[..common].to_vec())
                .or_default()
                .entry((from[common].clone(), to[common].clone()))
                .or_insert_with(|| format!("{file}:{}: {}", r.line, r.segments.join("::")));
        }
    }
    edges
}

/// The strongly connected sets (more than one module) of one parent's children.
fn cycles(edges: &BTreeMap<(String, String), String>) -> Vec<Vec<String>> {
    let nodes: BTreeSet<&String> = edges.keys().flat_map(|(a, b)| [a, b]).collect();
    let reaches = |start: &String| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![start.clone()];
        while let Some(n) = stack.pop() {
            for (a, b) in edges.keys() {
                if *a == n && seen.insert(b.clone()) {
                    stack.push(b.clone());
                }
            }
        }
        seen
    };
    let reach: BTreeMap<&String, BTreeSet<String>> =
        nodes.iter().map(|&n| (n, reaches(n))).collect();
    let mut done = BTreeSet::new();
    let mut out = Vec::new();
    for &n in &nodes {
        if done.contains(n) || !reach[n].contains(n) {
            continue;
        }
        let component: Vec<String> = nodes
            .iter()
            .filter(|&&m| reach[n].contains(m) && reach[m].contains(n))
            .map(|m| m.to_string())
            .collect();
        done.extend(component.iter().cloned());
        out.push(component);
    }
    out
}

/// Human-readable cycles of the crate in `src`, with the lines that close them.
fn report(src: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for (parent, edges) in sibling_edges(src) {
        for component in cycles(&edges) {
            let scope = if parent.is_empty() {
                "crate".to_string()
            } else {
                format!("crate::{}", parent.join("::"))
            };
            let mut text = format!("in {scope}: {}", component.join(" ↔ "));
            for ((a, b), at) in &edges {
                if component.contains(a) && component.contains(b) {
                    text += &format!("\n    {a} → {b}  ({at})");
                }
            }
            found.push(text);
        }
    }
    found
}

fn host_src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn host_modules_have_no_import_cycles() {
    let found = report(&host_src());
    assert!(
        found.is_empty(),
        "import cycles between sibling modules of host/src:\n{}",
        found.join("\n")
    );
}

#[test]
fn lexer_keeps_paths_and_drops_literals() {
    let idents: Vec<String> = lex(
        "crate::brownian::x; br\"crate\" r#\"a \" crate\"# b'c' '\\'' 'd' r#type bar /* crate /* x */ */ // crate",
    )
    .into_iter()
    .filter_map(|(t, _)| match t {
        Tok::Ident(name) => Some(name),
        _ => None,
    })
    .collect();
    assert_eq!(idents, ["crate", "brownian", "x", "type", "bar"]);
}

/// The checker itself: it must see what it is meant to see.
#[test]
fn checker_finds_a_cycle_through_a_reexport_and_super() {
    let dir = tempdir();
    let write = |rel: &str, text: &str| {
        let path = dir.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    };
    write("lib.rs", "pub mod a;\npub mod b;\npub mod c;\n");
    write("a/mod.rs", "pub mod x;\npub use x::Thing;\n");
    write(
        "a/x.rs",
        "// use crate::c::Ignored; (a comment)\nlet s = \"crate::c::Nope\";\npub struct Thing;\nfn f() -> crate::b::Other { todo!() }\n",
    );
    write(
        "b.rs",
        "use crate::{a::Thing as T, c};\npub struct Other;\n#[cfg(test)]\nmod tests { use crate::c::Z; }\n",
    );
    write(
        "c.rs",
        "#[cfg(test)]\nuse crate::a::Thing;\npub struct Z;\n",
    );
    let found = report(&dir);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].starts_with("in crate: a ↔ b"), "{}", found[0]);
    assert!(found[0].contains("a/x.rs:4"), "{}", found[0]);
    // b → c exists, c → a only in test code: no cycle through c.
    assert!(!found[0].contains("→ c"), "{}", found[0]);

    write("b.rs", "pub struct Other;\n");
    write("a/y.rs", "use super::x::Thing;\n");
    write("a/mod.rs", "pub mod x;\npub mod y;\npub use self::y::*;\n");
    write("a/x.rs", "fn f() { super::y::g(); }\n");
    let found = report(&dir);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].starts_with("in crate::a: x ↔ y"), "{}", found[0]);
    fs::remove_dir_all(&dir).unwrap();
}

/// A fresh folder under the target directory's temp area.
fn tempdir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("module-cycles-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}
