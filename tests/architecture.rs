//! The one description of the crate's layers, checked against the code: the list in
//! `src/lib.rs`, the "Depends on" sentence of each top-level module's header, and the
//! picture in the README's Architecture section must all agree with the `crate::` paths the
//! code writes (the edges `module-cycles` counts, tests included).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The layers of `src/lib.rs`, top first; modules named on one bullet share a rank.
fn layers() -> Vec<BTreeSet<String>> {
    let lib = read(&root().join("src/lib.rs"));
    let mut layers = Vec::new();
    for line in lib.lines() {
        let Some(bullet) = line.strip_prefix("//! - ") else {
            if let Some(more) = line.strip_prefix("//!   ") {
                if let Some(last) = layers.last_mut() {
                    extend_with_links(last, more);
                }
            }
            continue;
        };
        let mut rank = BTreeSet::new();
        extend_with_links(&mut rank, bullet);
        layers.push(rank);
    }
    assert!(!layers.is_empty(), "src/lib.rs lists no layers");
    layers
}

/// Adds every ``[`name`]`` link of `text`.
fn extend_with_links(set: &mut BTreeSet<String>, text: &str) {
    for piece in text.split("[`").skip(1) {
        if let Some((name, _)) = piece.split_once("`]") {
            set.insert(name.to_string());
        }
    }
}

/// The top-level modules: `src/NAME/` folders and `src/NAME.rs` files (not `lib`, `main`).
fn modules() -> BTreeSet<String> {
    let mut modules = BTreeSet::new();
    for entry in std::fs::read_dir(root().join("src"))
        .expect("src")
        .flatten()
    {
        let path = entry.path();
        let name = path
            .file_stem()
            .expect("name")
            .to_string_lossy()
            .to_string();
        let is_module = path.is_dir() || path.extension().is_some_and(|e| e == "rs");
        if is_module && name != "lib" && name != "main" {
            modules.insert(name);
        }
    }
    modules
}

fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    if dir.is_file() {
        found.push(dir.to_path_buf());
        return;
    }
    for entry in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

/// Which other top-level modules each module names with a `crate::` path.
fn edges(modules: &BTreeSet<String>) -> BTreeMap<String, BTreeSet<String>> {
    let mut edges = BTreeMap::new();
    for module in modules {
        let mut files = Vec::new();
        let folder = root().join("src").join(module);
        match folder.is_dir() {
            true => rust_files(&folder, &mut files),
            false => files.push(folder.with_extension("rs")),
        }
        let mut uses = BTreeSet::new();
        for file in files {
            let text = read(&file);
            for piece in text.split("crate::").skip(1) {
                let name: String = piece
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if modules.contains(&name) && &name != module {
                    uses.insert(name);
                }
            }
        }
        edges.insert(module.clone(), uses);
    }
    edges
}

/// The modules a header's "Depends on" sentence names (none for "no other module").
fn declared_dependencies(module: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let folder = root().join("src").join(module);
    let header_file = match folder.is_dir() {
        true => folder.join("mod.rs"),
        false => folder.with_extension("rs"),
    };
    let header: String = read(&header_file)
        .lines()
        .take_while(|line| line.starts_with("//!"))
        .map(|line| line.trim_start_matches("//!").trim())
        .collect::<Vec<_>>()
        .join(" ");
    let lower = header.to_lowercase();
    let at = lower
        .find("depends on")
        .unwrap_or_else(|| panic!("the header of {module} has no \"Depends on\" sentence"));
    let sentence = &header[at..];
    let end = sentence.find(['.', ';']).unwrap_or(sentence.len());
    let sentence = &sentence[..end];
    sentence
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|name| modules.contains(*name))
        .map(str::to_string)
        .collect()
}

#[test]
fn lib_rs_lists_every_top_level_module_once() {
    let listed: Vec<String> = layers().into_iter().flatten().collect();
    let unique: BTreeSet<String> = listed.iter().cloned().collect();
    assert_eq!(listed.len(), unique.len(), "listed twice: {listed:?}");
    assert_eq!(unique, modules(), "src/lib.rs's layers against src/");
}

#[test]
fn every_dependency_points_down_the_layers() {
    let rank: BTreeMap<String, usize> = layers()
        .into_iter()
        .enumerate()
        .flat_map(|(rank, names)| names.into_iter().map(move |name| (name, rank)))
        .collect();
    let mut wrong = Vec::new();
    for (module, uses) in edges(&modules()) {
        for used in uses {
            if rank[&used] <= rank[&module] {
                wrong.push(format!("{module} -> {used}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "these imports do not point down src/lib.rs's layers: {wrong:?}"
    );
}

#[test]
fn each_module_header_names_exactly_what_it_depends_on() {
    let modules = modules();
    let mut wrong = Vec::new();
    for (module, uses) in edges(&modules) {
        let declared = declared_dependencies(&module, &modules);
        if declared != uses {
            wrong.push(format!(
                "{module}: the header says {declared:?}, the code uses {uses:?}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_readme_draws_the_layers_in_the_same_order() {
    let readme = read(&root().join("README.md"));
    let section = readme
        .split("\n## Architecture")
        .nth(1)
        .expect("README has an Architecture section");
    let picture = section
        .split("```")
        .nth(1)
        .expect("the Architecture section has a picture");
    let modules = modules();
    // Each layer's name starts a line of the picture; side-by-side ones share a rank.
    let mut drawn: Vec<String> = Vec::new();
    for line in picture.lines() {
        for word in line.split_whitespace() {
            if modules.contains(word) && !drawn.iter().any(|d| d == word) {
                let starts_line = line.trim_start().starts_with(word);
                let beside_a_bar = line.trim_start().starts_with('│');
                if starts_line || beside_a_bar {
                    drawn.push(word.to_string());
                }
                break;
            }
        }
    }
    let listed: Vec<String> = layers().into_iter().flatten().collect();
    assert_eq!(drawn, listed, "README's picture against src/lib.rs's list");
}
