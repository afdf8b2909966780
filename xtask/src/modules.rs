//! `cargo xtask modules`: the module graph of every crate has no cycle.
//!
//! Two sibling modules that use each other are one unit split over two
//! files: neither can be read, tested or moved alone. So the sources of each
//! workspace crate are read (a small scanner, not a parser), every path that
//! names a module of the crate is collected (`crate::a::b`, `super::x`,
//! `self::x`, and `x::y` for a child `x` of the module it is written in,
//! `use` groups expanded) and resolved to the deepest module it names.
//!
//! Edges are compared among siblings: a reference from `a::b::c` to `a::d`
//! is an edge `b -> d` among the children of `a`; a module's own file is one
//! more node of its children's group (`dataplane (mod.rs)`), so a child using
//! `super::Error` and its parent re-exporting that child's items make a
//! cycle too. Each strongly connected component of more than one node is
//! printed with one `file:line` witness per edge, and the command fails.
//!
//! Test code is left out: `#[cfg(test)]` items (the `mod tests { ... }` of a
//! file) and the files of modules declared `#[cfg(test)] mod x;` may use
//! anything.
//!
//! What the scanner cannot see:
//! - names a glob brings in (`use super::*` counts as a use of the parent,
//!   not of the siblings it re-exports), and paths that name no module at
//!   all: a method called on a value received from elsewhere, a type
//!   inferred;
//! - paths built by macros, written in string literals
//!   (`#[serde(with = "crate::x")]`) or in doc links;
//! - modules placed by `#[path]`, `include!` or a macro: modules are found
//!   from the file layout (`x.rs`, `x/mod.rs`, `x/y.rs`) plus inline
//!   `mod x { ... }` blocks, so a file no `mod x;` declares still counts
//!   (a `mod x;` declaration itself is no reference);
//! - `cfg`s other than the exact `#[cfg(test)]` / `#![cfg(test)]`: code for
//!   other features or targets counts, `#[cfg(all(test, ...))]` code too;
//! - shadowing: a bare `x::y` is taken for the child module `x` even where a
//!   local item or import named `x` would win; a re-export counts as a use
//!   of the re-exporting module, not of where the item lives;
//! - the binaries (`src/bin/*.rs`, or `main.rs` next to a `lib.rs`), which
//!   reach the library by its crate name, are not checked.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};

use crate::workspace;

/// Crate directories (relative to the workspace root) never checked:
/// the eBPF programs build for bpf, with their own rules.
const SKIPPED: &[&str] = &["ebpf/programs"];

/// A module's path below its crate root (empty: the root itself).
type ModPath = Vec<String>;

/// Where a reference is written: a file (relative to the workspace root)
/// and a line.
type Witness = (String, usize);

/// Checks every crate; with `graph`, first prints the edges among the
/// top-level modules of each crate.
pub fn run(graph: bool) -> Result<()> {
    let root = workspace::root();
    let dirs = crate_dirs(&root)?;
    let (mut modules, mut references) = (0, 0);
    let mut cycles = Vec::new();
    for dir in &dirs {
        let krate = Crate::load(&root, dir)?;
        let groups = krate.groups();
        if graph {
            print!("{}", krate.top_level(&groups));
        }
        modules += krate.modules.len();
        references += krate.refs.iter().filter(|r| r.from != r.to).count();
        cycles.extend(krate.cycles(&groups));
    }
    for cycle in &cycles {
        println!("{cycle}");
    }
    let checked = format!(
        "{} crates, {modules} modules, {references} references checked",
        dirs.len()
    );
    if !cycles.is_empty() {
        bail!("{checked}: {} cycles in the module graph", cycles.len());
    }
    println!("modules: {checked}, no cycle");
    Ok(())
}

/// Every crate directory with a `src/lib.rs` or `src/main.rs`, one or two
/// levels below the workspace root, but `target/`, hidden ones and
/// [`SKIPPED`].
fn crate_dirs(root: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for first in subdirs(root)? {
        for dir in std::iter::once(first.clone()).chain(subdirs(&first)?) {
            let rel = relative(root, &dir);
            let src = dir.join("src");
            if !SKIPPED.contains(&rel.as_str())
                && (src.join("lib.rs").is_file() || src.join("main.rs").is_file())
            {
                found.push(dir);
            }
        }
    }
    found.sort();
    Ok(found)
}

/// The directories in `dir`, but `target` and hidden ones, sorted.
fn subdirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut dirs = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type()?.is_dir() && name != "target" && !name.starts_with('.') {
            dirs.push(entry.path());
        }
    }
    dirs.sort();
    Ok(dirs)
}

/// `path` relative to `root`, with `/` separators.
fn relative(root: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(root).unwrap_or(path);
    let parts: Vec<_> = rel.iter().map(|p| p.to_string_lossy()).collect();
    parts.join("/")
}

/// The `.rs` files below `src`, relative to it, but the binaries in
/// `src/bin/`.
fn rust_files(src: &Path) -> Result<Vec<Vec<String>>> {
    let mut files = Vec::new();
    let mut pending = vec![Vec::<String>::new()];
    while let Some(rel) = pending.pop() {
        let dir = rel.iter().fold(src.to_owned(), |dir, part| dir.join(part));
        for entry in fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let mut path = rel.clone();
            path.push(name.clone());
            if entry.file_type()?.is_dir() {
                if !(rel.is_empty() && name == "bin") {
                    pending.push(path);
                }
            } else if name.ends_with(".rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// The module a file below `src` holds: `lib.rs`/`main.rs` the root,
/// `x.rs` and `x/mod.rs` `x`, `x/y.rs` `x::y`.
fn module_of(file: &[String]) -> Option<ModPath> {
    let (name, dirs) = file.split_last()?;
    let stem = name.strip_suffix(".rs")?;
    let mut path: ModPath = dirs.to_vec();
    match (dirs.is_empty(), stem) {
        (true, "lib" | "main") | (false, "mod") => {}
        _ => path.push(stem.to_owned()),
    }
    Some(path)
}

// ---------------------------------------------------------------- scanner

/// A token of Rust source: comments and whitespace are gone, literals and
/// lifetimes are one opaque token each.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Token {
    text: String,
    ident: bool,
    line: usize,
}

impl Token {
    fn is(&self, text: &str) -> bool {
        self.text == text
    }
}

const LITERAL: &str = "<literal>";

/// The tokens of `text`: identifiers (keywords included, `r#x` as `x`),
/// `::` and single punctuation characters, and opaque literals.
fn tokenize(text: &str) -> Vec<Token> {
    let chars: Vec<char> = text.chars().collect();
    let at = |i: usize| chars.get(i).copied().unwrap_or('\0');
    let mut tokens = Vec::new();
    let mut line = 1;
    let mut i = 0;
    let literal = |line| Token {
        text: LITERAL.to_owned(),
        ident: false,
        line,
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if c == '/' && at(i + 1) == '/' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    line += usize::from(chars[i] == '\n');
                    i += 1;
                }
            }
        } else if c == '"' {
            tokens.push(literal(line));
            i = skip_string(&chars, i, &mut line);
        } else if c == '\'' {
            tokens.push(literal(line));
            i = skip_quote(&chars, i);
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            while at(i).is_alphanumeric() || at(i) == '_' {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut hashes = 0;
            while at(i + hashes) == '#' {
                hashes += 1;
            }
            if matches!(word.as_str(), "r" | "br" | "cr") && at(i + hashes) == '"' {
                // A raw string: up to `"` and as many `#`.
                tokens.push(literal(line));
                i += hashes + 1;
                while i < chars.len()
                    && !(chars[i] == '"' && (1..=hashes).all(|k| at(i + k) == '#'))
                {
                    line += usize::from(chars[i] == '\n');
                    i += 1;
                }
                i += hashes + 1;
            } else if word == "r" && hashes == 1 && (at(i + 1).is_alphabetic() || at(i + 1) == '_')
            {
                // A raw identifier.
                let start = i + 1;
                i = start;
                while at(i).is_alphanumeric() || at(i) == '_' {
                    i += 1;
                }
                tokens.push(Token {
                    text: chars[start..i].iter().collect(),
                    ident: true,
                    line,
                });
            } else if matches!(word.as_str(), "b" | "c") && at(i) == '"' {
                tokens.push(literal(line));
                i = skip_string(&chars, i, &mut line);
            } else if word == "b" && at(i) == '\'' {
                tokens.push(literal(line));
                i = skip_quote(&chars, i);
            } else {
                tokens.push(Token {
                    text: word,
                    ident: true,
                    line,
                });
            }
        } else if c.is_ascii_digit() {
            while at(i).is_alphanumeric() || at(i) == '_' {
                i += 1;
            }
            tokens.push(literal(line));
        } else if c == ':' && at(i + 1) == ':' {
            tokens.push(Token {
                text: "::".to_owned(),
                ident: false,
                line,
            });
            i += 2;
        } else {
            tokens.push(Token {
                text: c.to_string(),
                ident: false,
                line,
            });
            i += 1;
        }
    }
    tokens
}

/// Past the string literal whose opening `"` is at `i`.
fn skip_string(chars: &[char], mut i: usize, line: &mut usize) -> usize {
    i += 1;
    while i < chars.len() {
        match chars[i] {
            '\\' => {
                *line += usize::from(chars.get(i + 1) == Some(&'\n'));
                i += 2;
            }
            '"' => return i + 1,
            c => {
                *line += usize::from(c == '\n');
                i += 1;
            }
        }
    }
    i
}

/// Past the character literal or lifetime whose `'` is at `i`.
fn skip_quote(chars: &[char], i: usize) -> usize {
    let at = |i: usize| chars.get(i).copied().unwrap_or('\0');
    if at(i + 1) == '\\' {
        // `'\n'`, `'\''`, `'\u{1F600}'`.
        let mut j = i + 3;
        while j < chars.len() && chars[j] != '\'' && chars[j] != '\n' {
            j += 1;
        }
        j + 1
    } else if at(i + 2) == '\'' {
        i + 3
    } else {
        // A lifetime or a label.
        let mut j = i + 1;
        while at(j).is_alphanumeric() || at(j) == '_' {
            j += 1;
        }
        j
    }
}

/// A path written in a module: `segments` as written (`super`, `self` and
/// `crate` included), at `line`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct RawRef {
    module: ModPath,
    segments: Vec<String>,
    line: usize,
}

/// What one file holds.
#[derive(Debug, Default)]
struct FileScan {
    refs: Vec<RawRef>,
    /// Inline `mod x { ... }` modules, but test ones.
    inline: Vec<ModPath>,
    /// Modules declared `#[cfg(test)] mod x;`.
    test_modules: Vec<ModPath>,
    /// The file starts with `#![cfg(test)]`.
    test_only: bool,
}

/// The paths a file of module `module` writes, and the modules it declares.
fn scan(text: &str, module: &[String]) -> FileScan {
    let tokens = tokenize(text);
    let mut found = FileScan::default();
    // The inline modules we are in, with the brace depth inside each.
    let mut stack: Vec<(ModPath, usize)> = vec![(module.to_vec(), 0)];
    let mut depth = 0;
    let mut i = 0;
    while i < tokens.len() {
        let current = stack
            .last()
            .map(|(path, _)| path.clone())
            .unwrap_or_default();
        let token = &tokens[i];
        let next = |k: usize| tokens.get(i + k);
        if token.is("#") {
            if let Some((end, inner)) = cfg_test_attribute(&tokens, i) {
                if inner {
                    if stack.len() == 1 && depth == 0 {
                        found.test_only = true;
                        return found;
                    }
                    i = end;
                } else {
                    let (end, declared) = skip_item(&tokens, end);
                    if let Some(name) = declared {
                        found
                            .test_modules
                            .push([current.as_slice(), &[name]].concat());
                    }
                    i = end;
                }
                continue;
            }
        }
        if token.is("{") {
            depth += 1;
        } else if token.is("}") {
            if stack.len() > 1 && stack.last().is_some_and(|(_, d)| *d == depth) {
                stack.pop();
            }
            depth = depth.saturating_sub(1);
        } else if token.is("mod") && next(1).is_some_and(|t| t.ident) {
            if next(2).is_some_and(|t| t.is("{")) {
                let path = [current.as_slice(), &[next(1).unwrap().text.clone()]].concat();
                found.inline.push(path.clone());
                stack.push((path, depth + 1));
            }
            i += 2;
            continue;
        } else if token.is("use") && next(1).is_some_and(|t| t.is("{")) {
            let mut paths = Vec::new();
            i = use_tree(&tokens, i + 1, &[], &mut paths);
            push_refs(&mut found, &current, paths);
            continue;
        } else if token.ident && next(1).is_some_and(|t| t.is("::")) && starts_path(&tokens, i) {
            let mut paths = Vec::new();
            i = use_tree(&tokens, i, &[], &mut paths);
            push_refs(&mut found, &current, paths);
            continue;
        }
        i += 1;
    }
    found
}

fn push_refs(found: &mut FileScan, module: &[String], paths: Vec<(Vec<String>, usize)>) {
    found
        .refs
        .extend(paths.into_iter().map(|(segments, line)| RawRef {
            module: module.to_vec(),
            segments,
            line,
        }));
}

/// Whether the identifier at `i` starts a path: it follows no `::` (the
/// middle of a path, `::std`), `.` (a method) or `pub(in`.
fn starts_path(tokens: &[Token], i: usize) -> bool {
    let before = |k: usize| i.checked_sub(k).map(|j| tokens[j].text.as_str());
    let pub_in = before(1) == Some("in") && before(2) == Some("(");
    !pub_in && !matches!(before(1), Some("::" | "."))
}

/// At `#` (index `i`): the index past `#[cfg(test)]` or `#![cfg(test)]`,
/// and whether it is the inner one.
fn cfg_test_attribute(tokens: &[Token], i: usize) -> Option<(usize, bool)> {
    let inner = tokens.get(i + 1)?.is("!");
    let start = i + 1 + usize::from(inner);
    let want = ["[", "cfg", "(", "test", ")", "]"];
    let matched = want
        .iter()
        .enumerate()
        .all(|(k, text)| tokens.get(start + k).is_some_and(|t| t.is(text)));
    matched.then_some((start + want.len(), inner))
}

/// Past the item (or field, statement) starting at `i`: to its `;` or `,`,
/// or its braced body; never past a `}` that closes an outer block. With
/// the name of the module when it is `mod x;`.
fn skip_item(tokens: &[Token], mut i: usize) -> (usize, Option<String>) {
    // Further attributes.
    while tokens.get(i).is_some_and(|t| t.is("#")) && tokens.get(i + 1).is_some_and(|t| t.is("[")) {
        i = matching(tokens, i + 1) + 1;
    }
    // `pub(crate) mod x;`
    let mut j = i;
    if tokens.get(j).is_some_and(|t| t.is("pub")) {
        j += 1;
        if tokens.get(j).is_some_and(|t| t.is("(")) {
            j = matching(tokens, j) + 1;
        }
    }
    if tokens.get(j).is_some_and(|t| t.is("mod")) {
        if let (Some(name), Some(end)) = (tokens.get(j + 1), tokens.get(j + 2)) {
            if name.ident && end.is(";") {
                return (j + 3, Some(name.text.clone()));
            }
        }
    }
    let mut depth = 0usize;
    let mut angles = 0usize;
    while i < tokens.len() {
        let text = tokens[i].text.as_str();
        let before = i.checked_sub(1).map(|k| tokens[k].text.as_str());
        match text {
            "{" if depth == 0 => return (matching(tokens, i) + 1, None),
            "(" | "[" | "{" => depth += 1,
            ")" | "]" | "}" if depth == 0 => return (i, None),
            ")" | "]" | "}" => depth -= 1,
            "<" => angles += 1,
            ">" if !matches!(before, Some("-" | "=")) => angles = angles.saturating_sub(1),
            ";" if depth == 0 => return (i + 1, None),
            "," if depth == 0 && angles == 0 => return (i + 1, None),
            _ => {}
        }
        i += 1;
    }
    (i, None)
}

/// The index of the bracket closing the one at `i` (or the last token).
fn matching(tokens: &[Token], i: usize) -> usize {
    let mut depth = 0usize;
    for (k, token) in tokens.iter().enumerate().skip(i) {
        match token.text.as_str() {
            "(" | "[" | "{" => depth += 1,
            ")" | "]" | "}" => {
                depth -= 1;
                if depth == 0 {
                    return k;
                }
            }
            _ => {}
        }
    }
    tokens.len().saturating_sub(1)
}

/// Reads the path or use tree at `i` below `prefix`, pushing every path it
/// stands for with the line of its last segment: `a::{self, b::{c, d}}`
/// is `a`, `a::b::c` and `a::b::d`; a glob `a::*` is `a`. Returns the index
/// past it.
fn use_tree(
    tokens: &[Token],
    mut i: usize,
    prefix: &[String],
    out: &mut Vec<(Vec<String>, usize)>,
) -> usize {
    let mut segments = prefix.to_vec();
    loop {
        let Some(token) = tokens.get(i) else {
            return i;
        };
        if token.is("{") {
            i += 1;
            loop {
                match tokens.get(i) {
                    None => return i,
                    Some(t) if t.is("}") => return i + 1,
                    Some(t) if t.is(",") => i += 1,
                    Some(_) => {
                        let end = use_tree(tokens, i, &segments, out);
                        // Something no use tree holds: step over it.
                        i = if end == i { i + 1 } else { end };
                    }
                }
            }
        } else if token.is("*") {
            out.push((segments, token.line));
            return i + 1;
        } else if token.ident {
            let continues = tokens.get(i + 1).is_some_and(|t| t.is("::"))
                && tokens
                    .get(i + 2)
                    .is_some_and(|t| t.ident || t.is("{") || t.is("*"));
            // `a::{self}` is `a`; a leading `self::` stays.
            if segments.is_empty() || !token.is("self") {
                segments.push(token.text.clone());
            }
            if continues {
                i += 2;
                continue;
            }
            out.push((segments, token.line));
            i += 1;
            // `as name`
            if tokens.get(i).is_some_and(|t| t.is("as"))
                && tokens.get(i + 1).is_some_and(|t| t.ident)
            {
                i += 2;
            }
            return i;
        } else {
            return i;
        }
    }
}

/// The module of the crate the path `segments`, written in module `from`,
/// names: the longest known prefix once `crate`, `super` and `self` are
/// applied. A bare path names a module only when its first segment is a
/// child of `from`; `None` for paths outside the crate.
fn resolve(known: &BTreeSet<ModPath>, from: &[String], segments: &[String]) -> Option<ModPath> {
    let first = segments.first()?.as_str();
    let (mut target, rest) = match first {
        "crate" => (Vec::new(), &segments[1..]),
        "super" | "self" => {
            let mut base = from.to_vec();
            let mut k = 0;
            while let Some(segment) = segments.get(k) {
                match segment.as_str() {
                    "super" => {
                        base.pop()?;
                    }
                    "self" if k == 0 => {}
                    _ => break,
                }
                k += 1;
            }
            (base, &segments[k..])
        }
        _ => {
            let child = [from, &segments[..1]].concat();
            if !known.contains(&child) {
                return None;
            }
            (from.to_vec(), segments)
        }
    };
    for segment in rest {
        target.push(segment.clone());
        if !known.contains(&target) {
            target.pop();
            break;
        }
    }
    Some(target)
}

// ------------------------------------------------------------------ graph

/// A node among the children of a module: the module's own file, or one of
/// its children (with its whole subtree).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Node {
    Own,
    Child(String),
}

/// The group (deepest common ancestor) and the edge a reference from
/// module `from` to module `to` makes; `None` within one module.
fn edge(from: &[String], to: &[String]) -> Option<(ModPath, Node, Node)> {
    if from == to {
        return None;
    }
    let common = from.iter().zip(to).take_while(|(a, b)| a == b).count();
    let node = |path: &[String]| {
        path.get(common)
            .map_or(Node::Own, |c| Node::Child(c.clone()))
    };
    Some((from[..common].to_vec(), node(from), node(to)))
}

/// The edges among the children of each module, with every witness.
type Groups = BTreeMap<ModPath, BTreeMap<(Node, Node), Vec<Witness>>>;

/// The strongly connected components of the graph of `n` nodes (Tarjan),
/// each sorted, in the order of their smallest node.
fn strongly_connected(n: usize, edges: &[(usize, usize)]) -> Vec<Vec<usize>> {
    struct Tarjan {
        next: Vec<Vec<usize>>,
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        on_stack: Vec<bool>,
        stack: Vec<usize>,
        counter: usize,
        components: Vec<Vec<usize>>,
    }
    fn visit(t: &mut Tarjan, v: usize) {
        t.index[v] = Some(t.counter);
        t.low[v] = t.counter;
        t.counter += 1;
        t.stack.push(v);
        t.on_stack[v] = true;
        for w in t.next[v].clone() {
            match t.index[w] {
                None => {
                    visit(t, w);
                    t.low[v] = t.low[v].min(t.low[w]);
                }
                Some(index) if t.on_stack[w] => t.low[v] = t.low[v].min(index),
                Some(_) => {}
            }
        }
        if t.index[v] == Some(t.low[v]) {
            let mut component = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on_stack[w] = false;
                component.push(w);
                if w == v {
                    break;
                }
            }
            component.sort_unstable();
            t.components.push(component);
        }
    }
    let mut next = vec![Vec::new(); n];
    for &(a, b) in edges {
        next[a].push(b);
    }
    let mut t = Tarjan {
        next,
        index: vec![None; n],
        low: vec![0; n],
        on_stack: vec![false; n],
        stack: Vec::new(),
        counter: 0,
        components: Vec::new(),
    };
    for v in 0..n {
        if t.index[v].is_none() {
            visit(&mut t, v);
        }
    }
    t.components.sort();
    t.components
}

/// A closed walk through every node of the strongly connected `component`
/// along `edges`, from and back to its first node (shortest hops between).
fn closed_walk(component: &[usize], edges: &BTreeSet<(usize, usize)>) -> Vec<usize> {
    let inside: BTreeSet<usize> = component.iter().copied().collect();
    let hops = |from: usize, to: usize| -> Vec<usize> {
        let mut came_from = BTreeMap::from([(from, from)]);
        let mut queue = VecDeque::from([from]);
        while let Some(v) = queue.pop_front() {
            if v == to {
                break;
            }
            for &(_, w) in edges.range((v, 0)..=(v, usize::MAX)) {
                if inside.contains(&w) && !came_from.contains_key(&w) {
                    came_from.insert(w, v);
                    queue.push_back(w);
                }
            }
        }
        let mut path = vec![to];
        let mut v = to;
        while v != from {
            let Some(&previous) = came_from.get(&v) else {
                return vec![from];
            };
            v = previous;
            path.push(v);
        }
        path.reverse();
        path
    };
    let Some(&start) = component.first() else {
        return Vec::new();
    };
    let mut walk = vec![start];
    let mut seen = BTreeSet::from([start]);
    for &v in component {
        if seen.contains(&v) {
            continue;
        }
        let last = walk[walk.len() - 1];
        for w in hops(last, v).into_iter().skip(1) {
            seen.insert(w);
            walk.push(w);
        }
    }
    let last = walk[walk.len() - 1];
    if last != start {
        walk.extend(hops(last, start).into_iter().skip(1));
    }
    walk
}

// ------------------------------------------------------------------ crate

/// A reference resolved to a module of the crate.
#[derive(Debug)]
struct Ref {
    from: ModPath,
    to: ModPath,
    file: String,
    line: usize,
}

/// One crate's modules and references, test code left out.
struct Crate {
    /// The crate directory, relative to the workspace root.
    dir: String,
    /// Every module, with the file (relative to the workspace root) that
    /// holds it and whether it is an inline `mod x { ... }`.
    modules: BTreeMap<ModPath, (String, bool)>,
    refs: Vec<Ref>,
}

impl Crate {
    fn load(root: &Path, dir: &Path) -> Result<Crate> {
        let src = dir.join("src");
        let has_lib = src.join("lib.rs").is_file();
        let mut modules = BTreeMap::new();
        let mut test_modules = Vec::new();
        let mut scans = Vec::new();
        for file in rust_files(&src)? {
            // A `main.rs` next to a `lib.rs` is a binary.
            if has_lib && file == ["main.rs"] {
                continue;
            }
            let Some(module) = module_of(&file) else {
                continue;
            };
            let path = file.iter().fold(src.clone(), |path, part| path.join(part));
            let text = fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let name = relative(root, &path);
            let found = scan(&text, &module);
            if found.test_only {
                test_modules.push(module.clone());
            }
            test_modules.extend(found.test_modules.iter().cloned());
            modules.insert(module.clone(), (name.clone(), false));
            for inline in &found.inline {
                modules.insert(inline.clone(), (name.clone(), true));
            }
            scans.push((name, found));
        }
        let is_test = |path: &[String]| test_modules.iter().any(|t| path.starts_with(t));
        modules.retain(|path, _| !is_test(path));
        let known: BTreeSet<ModPath> = modules.keys().cloned().collect();
        let mut refs = Vec::new();
        for (file, found) in scans {
            for raw in found.refs {
                if !known.contains(&raw.module) {
                    continue;
                }
                if let Some(to) = resolve(&known, &raw.module, &raw.segments) {
                    refs.push(Ref {
                        from: raw.module,
                        to,
                        file: file.clone(),
                        line: raw.line,
                    });
                }
            }
        }
        Ok(Crate {
            dir: relative(root, dir),
            modules,
            refs,
        })
    }

    fn groups(&self) -> Groups {
        let mut groups = Groups::new();
        for r in &self.refs {
            if let Some((group, from, to)) = edge(&r.from, &r.to) {
                let witnesses = groups
                    .entry(group)
                    .or_default()
                    .entry((from, to))
                    .or_default();
                witnesses.push((r.file.clone(), r.line));
            }
        }
        for edges in groups.values_mut() {
            for witnesses in edges.values_mut() {
                witnesses.sort();
                witnesses.dedup();
            }
        }
        groups
    }

    /// `crate::a::b`, or `crate (agent)` for the root: the crate's
    /// directory tells the crates apart.
    fn group_name(&self, group: &[String]) -> String {
        if group.is_empty() {
            format!("crate ({})", self.dir)
        } else {
            format!("crate::{}", group.join("::"))
        }
    }

    /// `cli`, or `dataplane (mod.rs)` / `crate root (lib.rs)` for the own
    /// file of `group`.
    fn label(&self, group: &[String], node: &Node) -> String {
        match node {
            Node::Child(name) => name.clone(),
            Node::Own => {
                let name = group.last().map_or("crate root", String::as_str);
                let (file, inline) = self.modules.get(group).cloned().unwrap_or_default();
                let file = file.rsplit('/').next().unwrap_or_default().to_owned();
                if inline {
                    format!("{name} (inline in {file})")
                } else {
                    format!("{name} ({file})")
                }
            }
        }
    }

    /// One report per cycle: the closed walk through its component, then
    /// the edges inside it the walk does not take.
    fn cycles(&self, groups: &Groups) -> Vec<String> {
        let mut reports = Vec::new();
        for (group, edges) in groups {
            let nodes: Vec<&Node> = edges
                .keys()
                .flat_map(|(a, b)| [a, b])
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            let index = |node: &Node| nodes.iter().position(|n| *n == node).unwrap_or(0);
            let numbered: BTreeSet<(usize, usize)> =
                edges.keys().map(|(a, b)| (index(a), index(b))).collect();
            let list: Vec<_> = numbered.iter().copied().collect();
            let witness = |a: usize, b: usize| {
                let (file, line) = &edges[&(nodes[a].clone(), nodes[b].clone())][0];
                format!("{file}:{line}")
            };
            for component in strongly_connected(nodes.len(), &list) {
                if component.len() < 2 {
                    continue;
                }
                let walk = closed_walk(&component, &numbered);
                let mut report = format!(
                    "cycle among children of {}: {}",
                    self.group_name(group),
                    self.label(group, nodes[walk[0]])
                );
                let taken: BTreeSet<(usize, usize)> =
                    walk.windows(2).map(|w| (w[0], w[1])).collect();
                for pair in walk.windows(2) {
                    let (a, b) = (pair[0], pair[1]);
                    let _ = write!(
                        report,
                        " -> {} ({})",
                        self.label(group, nodes[b]),
                        witness(a, b)
                    );
                }
                for &(a, b) in &numbered {
                    if component.contains(&a) && component.contains(&b) && !taken.contains(&(a, b))
                    {
                        let _ = write!(
                            report,
                            "\n    also {} -> {} ({})",
                            self.label(group, nodes[a]),
                            self.label(group, nodes[b]),
                            witness(a, b)
                        );
                    }
                }
                reports.push(report);
            }
        }
        reports
    }

    /// The edges among the top-level modules, for docs.
    fn top_level(&self, groups: &Groups) -> String {
        let mut text = format!("{} ({} modules):\n", self.dir, self.modules.len());
        match groups.get(&Vec::new()) {
            None => text.push_str("    (no edge)\n"),
            Some(edges) => {
                for ((a, b), witnesses) in edges {
                    let (file, line) = &witnesses[0];
                    let _ = writeln!(
                        text,
                        "    {} -> {}  [{} reference{}, first {file}:{line}]",
                        self.label(&[], a),
                        self.label(&[], b),
                        witnesses.len(),
                        if witnesses.len() == 1 { "" } else { "s" }
                    );
                }
            }
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(text: &str) -> ModPath {
        if text.is_empty() {
            Vec::new()
        } else {
            text.split("::").map(str::to_owned).collect()
        }
    }

    fn paths(text: &str) -> Vec<String> {
        scan(text, &[])
            .refs
            .into_iter()
            .map(|r| r.segments.join("::"))
            .collect()
    }

    fn known(modules: &[&str]) -> BTreeSet<ModPath> {
        modules.iter().map(|m| path(m)).collect()
    }

    #[test]
    fn a_nested_use_group_expands_to_all_its_paths() {
        assert_eq!(
            paths("use crate::{a::{self, b::C}, d};"),
            ["crate::a", "crate::a::b::C", "crate::d"]
        );
        assert_eq!(
            paths("pub use super::{\n    x::{self as y, z::*},\n    w as v,\n};\n"),
            ["super::x", "super::x::z", "super::w"]
        );
    }

    #[test]
    fn lines_are_those_of_the_last_segment() {
        let found = scan(
            "use super::{\n    netns,\n    overlay::{A, B},\n};\n",
            &path("dp::sandbox"),
        );
        let lines: Vec<_> = found.refs.iter().map(|r| r.line).collect();
        assert_eq!(lines, [2, 3, 3]);
    }

    #[test]
    fn comments_strings_and_test_modules_are_not_read() {
        let text = r##"
            // use crate::a;
            /* crate::b /* nested */ crate::c */
            const S: &str = "crate::d \" crate::e";
            const R: &str = r#"crate::f"#;
            const C: char = '"';
            fn f<'a>(x: &'a str) -> char { '\'' }
            pub(crate) fn g() { crate::h::run(); }
            #[cfg(test)]
            mod tests {
                use crate::i;
            }
            #[cfg(test)]
            mod fixtures;
            fn k() { crate::j::run(); }
        "##;
        let found = scan(text, &[]);
        let written: Vec<_> = found.refs.iter().map(|r| r.segments.join("::")).collect();
        assert_eq!(written, ["crate::h::run", "crate::j::run"]);
        assert_eq!(found.test_modules, [path("fixtures")]);
        assert!(scan("#![cfg(test)]\nuse crate::a;\n", &[]).test_only);
    }

    #[test]
    fn inline_modules_are_modules() {
        let found = scan(
            "mod keys {\n    use super::x::Y;\n}\nfn f() { keys::k(); }\n",
            &path("control::manager"),
        );
        assert_eq!(found.inline, [path("control::manager::keys")]);
        let from: Vec<_> = found.refs.iter().map(|r| r.module.join("::")).collect();
        assert_eq!(from, ["control::manager::keys", "control::manager"]);
    }

    #[test]
    fn super_in_a_mod_rs_and_in_a_leaf_file() {
        let file = |f: &str| f.split('/').map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(module_of(&file("lib.rs")), Some(path("")));
        assert_eq!(module_of(&file("cli/mod.rs")), Some(path("cli")));
        assert_eq!(module_of(&file("cli/trace.rs")), Some(path("cli::trace")));
        assert_eq!(
            module_of(&file("control/manager/services.rs")),
            Some(path("control::manager::services"))
        );

        let known = known(&["", "cli", "cli::trace", "trace", "trace::filter"]);
        let segments = |s: &str| path(s);
        // In cli/mod.rs `super` is the crate root; in cli/trace.rs, `cli`.
        assert_eq!(
            resolve(
                &known,
                &path("cli"),
                &segments("super::trace::filter::Filter")
            ),
            Some(path("trace::filter"))
        );
        assert_eq!(
            resolve(&known, &path("cli::trace"), &segments("super::CliError")),
            Some(path("cli"))
        );
        assert_eq!(
            resolve(
                &known,
                &path("cli::trace"),
                &segments("super::super::trace::X")
            ),
            Some(path("trace"))
        );
        assert_eq!(resolve(&known, &path(""), &segments("super::x")), None);
        // Bare paths: only a child of the module they are written in.
        assert_eq!(
            resolve(&known, &path("cli"), &segments("trace::run")),
            Some(path("cli::trace"))
        );
        assert_eq!(
            resolve(&known, &path("cli::trace"), &segments("trace::run")),
            None
        );
        assert_eq!(
            resolve(&known, &path("cli"), &segments("self::trace")),
            Some(path("cli::trace"))
        );
        assert_eq!(resolve(&known, &path("cli"), &segments("std::fs")), None);
    }

    #[test]
    fn edges_join_siblings_under_the_common_ancestor() {
        let child = |s: &str| Node::Child(s.to_owned());
        assert_eq!(
            edge(&path("dp::overlay"), &path("dp::sandbox::x")),
            Some((path("dp"), child("overlay"), child("sandbox")))
        );
        assert_eq!(
            edge(&path("cli::trace"), &path("cli")),
            Some((path("cli"), child("trace"), Node::Own))
        );
        assert_eq!(
            edge(&path(""), &path("api::client")),
            Some((path(""), Node::Own, child("api")))
        );
        assert_eq!(
            edge(&path("cli::status"), &path("trace")),
            Some((path(""), child("cli"), child("trace")))
        );
        assert_eq!(edge(&path("cli"), &path("cli")), None);
    }

    #[test]
    fn a_two_module_cycle_is_found_and_a_dag_is_not() {
        assert_eq!(
            strongly_connected(3, &[(0, 1), (1, 0), (1, 2)]),
            [vec![0, 1], vec![2]]
        );
        let dag = strongly_connected(4, &[(0, 1), (0, 2), (1, 3), (2, 3)]);
        assert!(dag.iter().all(|c| c.len() == 1));
        // A star 0 <-> 1, 0 <-> 2: one component, walked through.
        let edges = BTreeSet::from([(0, 1), (1, 0), (0, 2), (2, 0)]);
        let list: Vec<_> = edges.iter().copied().collect();
        assert_eq!(strongly_connected(3, &list), [vec![0, 1, 2]]);
        assert_eq!(closed_walk(&[0, 1, 2], &edges), [0, 1, 0, 2, 0]);
    }
}
