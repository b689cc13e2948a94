//! `cargo xtask layers`: keeps the layering true. Inside a crate no two modules depend on each
//! other, directly or round a loop; across the workspace no crate depends on one above it.
//!
//! The module graph is judged one level at a time. At module M the nodes are M's child
//! modules (each standing for its whole subtree) and M's own code (its file, minus the
//! children). A path in one node's code that names something in another node is an edge
//! between them, counted only at the deepest module holding both ends: `crate::a::x` using
//! `crate::a::y` is an edge x → y at `crate::a`, and `crate::a::x` using `crate::b::Item` an
//! edge a → b at the crate root. Any cycle among one level's nodes is a violation. Test code
//! (`#[cfg(test)]`) is not looked at: tests may reach anything.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};
use proc_macro2::{TokenStream, TokenTree};
use serde_json::Value;
use syn::punctuated::Punctuated;
use syn::visit::Visit;
use syn::{Attribute, Item, Meta, Token, UseTree};

use crate::build::workspace_root;

/// One crate's place in the layering.
struct Layer {
    krate: &'static str,
    /// The workspace crates its normal and build dependencies may name. Dev-dependencies are
    /// exempt: tests may reach up, and cargo still sees no cycle.
    may_use: &'static [&'static str],
    /// External crates it must not reach, even through other crates.
    never_reaches: &'static [&'static str],
}

/// Everything but the top: what tests, test pods and the build tasks may use.
const BELOW_TOP: &[&str] = &[
    "shunt-common",
    "shunt-ebpf",
    "shunt-mesh",
    "shunt-identity",
    "shunt-api",
    "shunt-proxy",
    "shunt-agent",
    "shuntctl",
    "shunt-cni",
];

/// The workspace's crates, bottom up. An entry whose crate does not exist (yet) is skipped,
/// so the table can describe crates that are still being split out.
const LAYERS: &[Layer] = &[
    Layer {
        krate: "shunt-common",
        may_use: &[],
        never_reaches: &[],
    },
    Layer {
        krate: "shunt-ebpf",
        may_use: &["shunt-common"],
        never_reaches: &[],
    },
    // The mesh model is data and decisions: no async runtime, no HTTP stack, no eBPF loader,
    // so it can be tested, and reused by the agent and shuntctl, without them.
    Layer {
        krate: "shunt-mesh",
        may_use: &[],
        never_reaches: &["tokio", "hyper", "aya"],
    },
    Layer {
        krate: "shunt-api",
        may_use: &["shunt-common", "shunt-mesh"],
        never_reaches: &[],
    },
    // Certificates, the CA and the HBONE TLS configs: the agent (CA mode) and the proxy
    // (certificates, mTLS) both use it, so it sits below them. Above shunt-api, whose
    // `certs` types its status reports use (shuntctl reads them through shunt-api alone).
    Layer {
        krate: "shunt-identity",
        may_use: &["shunt-mesh", "shunt-api"],
        never_reaches: &["aws-lc-sys", "aws-lc-rs"],
    },
    Layer {
        krate: "shunt-proxy",
        may_use: &["shunt-common", "shunt-mesh", "shunt-identity", "shunt-api"],
        never_reaches: &[],
    },
    // The agent talks to proxies through shunt-api only, never through the proxy's code.
    Layer {
        krate: "shunt-agent",
        may_use: &["shunt-common", "shunt-mesh", "shunt-identity", "shunt-api"],
        never_reaches: &[],
    },
    Layer {
        krate: "shuntctl",
        may_use: &["shunt-common", "shunt-mesh", "shunt-api"],
        never_reaches: &[],
    },
    // The CNI plugin runs on the node for every pod sandbox: it speaks the agent's protocol
    // (shunt-api) and nothing else of shunt's.
    Layer {
        krate: "shunt-cni",
        may_use: &["shunt-api"],
        never_reaches: &[],
    },
    Layer {
        krate: "shunt-httppod",
        may_use: BELOW_TOP,
        never_reaches: &[],
    },
    // The HBONE test peer mints certificates with shunt-identity's signer and speaks rustls
    // on ring, as the node proxy does.
    Layer {
        krate: "shunt-hbonepeer",
        may_use: BELOW_TOP,
        never_reaches: &["aws-lc-sys", "aws-lc-rs"],
    },
    Layer {
        krate: "shunt-tests",
        may_use: &[
            "shunt-common",
            "shunt-ebpf",
            "shunt-mesh",
            "shunt-identity",
            "shunt-api",
            "shunt-proxy",
            "shunt-agent",
            "shuntctl",
            "shunt-httppod",
        ],
        never_reaches: &[],
    },
    Layer {
        krate: "xtask",
        may_use: &[
            "shunt-common",
            "shunt-ebpf",
            "shunt-mesh",
            "shunt-identity",
            "shunt-api",
            "shunt-proxy",
            "shunt-agent",
            "shuntctl",
            "shunt-httppod",
            "shunt-tests",
        ],
        never_reaches: &[],
    },
];

pub fn run() -> Result<()> {
    let metadata = metadata()?;
    let root = workspace_root();
    let mut violations = Vec::new();
    for package in workspace_packages(&metadata)? {
        let (mut modules, mut edges, mut references) = (0, 0, 0);
        let only_target = package.targets.len() == 1;
        for target in &package.targets {
            let file = target
                .root
                .strip_prefix(&root)
                .unwrap_or(&target.root)
                .to_path_buf();
            let report = check_tree(&file, &|path: &Path| {
                std::fs::read_to_string(root.join(path)).ok()
            })
            .with_context(|| format!("{}: reading the module tree", package.name))?;
            modules += report.modules;
            edges += report.edges;
            references += report.references;
            let name = if target.is_lib || only_target {
                package.name.clone()
            } else {
                format!("{} (bin {})", package.name, target.name)
            };
            violations.extend(report.cycles.iter().map(|cycle| format!("{name}: {cycle}")));
        }
        println!(
            "    {}: {modules} modules, {edges} edges between sibling modules \
             ({references} references)",
            package.name
        );
    }
    let crate_violations = check_crates(&metadata, LAYERS)?;
    let cycles = violations.len();
    violations.extend(crate_violations.iter().cloned());
    if violations.is_empty() {
        println!("    layering: no module cycles, no crate dependency pointing up");
        return Ok(());
    }
    for violation in &violations {
        println!("{violation}");
    }
    bail!(
        "layering: {cycles} module cycles, {} crate dependency problems. Break each cycle by \
         moving what both sides use down into a module both may depend on (a sibling, or a \
         new one), or by turning the upward use into a parameter or trait the lower side owns; \
         a parent's own code counts as a node, so a child using `super::Item` while the parent \
         uses the child is a cycle too. A crate may only depend on the crates its row in \
         LAYERS (xtask/src/layers.rs) names: move the shared code down into a lower crate",
        crate_violations.len()
    )
}

fn metadata() -> Result<Value> {
    // The cargo that runs xtask; metadata is the same from any toolchain.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .args(["metadata", "--format-version", "1"])
        .current_dir(workspace_root())
        .output()
        .context("could not start cargo metadata")?;
    if !output.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    serde_json::from_slice(&output.stdout).context("cargo metadata printed no JSON")
}

struct Package {
    name: String,
    targets: Vec<Target>,
}

struct Target {
    name: String,
    is_lib: bool,
    root: PathBuf,
}

/// The workspace's crates with their library and binary targets (tests, benches, examples
/// and build scripts are not part of any layer).
fn workspace_packages(metadata: &Value) -> Result<Vec<Package>> {
    let members = workspace_members(metadata)?;
    let mut packages = Vec::new();
    for package in metadata["packages"].as_array().into_iter().flatten() {
        if !package["id"]
            .as_str()
            .is_some_and(|id| members.contains(id))
        {
            continue;
        }
        let name = json_str(package, "name")?.to_owned();
        let mut targets = Vec::new();
        for target in package["targets"].as_array().into_iter().flatten() {
            let kinds: Vec<&str> = target["kind"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            let is_lib = kinds
                .iter()
                .any(|kind| kind.ends_with("lib") || *kind == "proc-macro");
            if !is_lib && !kinds.contains(&"bin") {
                continue;
            }
            targets.push(Target {
                name: json_str(target, "name")?.to_owned(),
                is_lib,
                root: PathBuf::from(json_str(target, "src_path")?),
            });
        }
        packages.push(Package { name, targets });
    }
    packages.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(packages)
}

fn workspace_members(metadata: &Value) -> Result<BTreeSet<&str>> {
    Ok(metadata["workspace_members"]
        .as_array()
        .context("cargo metadata: no workspace_members")?
        .iter()
        .filter_map(Value::as_str)
        .collect())
}

fn json_str<'a>(value: &'a Value, key: &str) -> Result<&'a str> {
    value[key]
        .as_str()
        .with_context(|| format!("cargo metadata: an entry without {key}"))
}

/// Each workspace crate's non-dev dependencies against its row in `layers`.
fn check_crates(metadata: &Value, layers: &[Layer]) -> Result<Vec<String>> {
    let mut names = BTreeMap::new();
    for package in metadata["packages"].as_array().into_iter().flatten() {
        names.insert(json_str(package, "id")?, json_str(package, "name")?);
    }
    let members = workspace_members(metadata)?;
    let member_names: BTreeSet<&str> = members
        .iter()
        .filter_map(|id| names.get(id).copied())
        .collect();
    let mut deps: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let nodes = metadata["resolve"]["nodes"]
        .as_array()
        .context("cargo metadata: no resolve graph")?;
    for node in nodes {
        let id = json_str(node, "id")?;
        let normal = node["deps"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|dep| {
                dep["dep_kinds"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|kind| kind["kind"].as_str() != Some("dev"))
            })
            .filter_map(|dep| dep["pkg"].as_str());
        deps.entry(id).or_default().extend(normal);
    }
    let name_of = |id| package_name(&names, id);

    let mut violations = Vec::new();
    for &id in &members {
        let name = name_of(id);
        let Some(layer) = layers.iter().find(|layer| layer.krate == name) else {
            violations.push(format!(
                "{name}: not in the layering table; add it to the layering table in \
                 xtask/src/layers.rs, with the workspace crates it may depend on"
            ));
            continue;
        };
        for &dep in deps.get(id).into_iter().flatten() {
            let dep_name = name_of(dep);
            if member_names.contains(dep_name) && !layer.may_use.contains(&dep_name) {
                violations.push(format!(
                    "{name}: depends on {dep_name}, which is not below it (it may use: {})",
                    if layer.may_use.is_empty() {
                        "no workspace crate".to_owned()
                    } else {
                        layer.may_use.join(", ")
                    }
                ));
            }
        }
        if layer.never_reaches.is_empty() {
            continue;
        }
        // Breadth first, remembering how each crate was reached, to show the chain.
        let mut reached_from: BTreeMap<&str, &str> = BTreeMap::new();
        let mut queue = VecDeque::from([id]);
        while let Some(at) = queue.pop_front() {
            for &dep in deps.get(at).into_iter().flatten() {
                if dep != id && !reached_from.contains_key(dep) {
                    reached_from.insert(dep, at);
                    queue.push_back(dep);
                }
            }
        }
        for &dep in reached_from.keys() {
            if !layer
                .never_reaches
                .iter()
                .any(|&banned| banned == name_of(dep))
            {
                continue;
            }
            let mut chain = vec![name_of(dep)];
            let mut at = dep;
            while let Some(&from) = reached_from.get(at) {
                chain.push(name_of(from));
                at = from;
            }
            chain.reverse();
            violations.push(format!(
                "{name}: reaches {} ({}), which it must not",
                name_of(dep),
                chain.join(" -> ")
            ));
        }
    }
    Ok(violations)
}

fn package_name<'m>(names: &BTreeMap<&'m str, &'m str>, id: &'m str) -> &'m str {
    names.get(id).copied().unwrap_or(id)
}

/// What one target's module tree holds, and its cycles.
#[derive(Debug)]
struct TreeReport {
    modules: usize,
    edges: usize,
    references: usize,
    cycles: Vec<Cycle>,
}

#[derive(Debug)]
struct Cycle {
    /// The module whose children (and own code) form the cycle, e.g. `crate::proxy`.
    level: String,
    /// The nodes in the cycle, sorted.
    members: Vec<String>,
    /// A closed walk through every member, each step with one example reference.
    walk: String,
    /// Every edge among the members, with how many references make it.
    edges: Vec<String>,
}

impl fmt::Display for Cycle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cycle at {}: {}", self.level, self.walk)?;
        if self.members.len() > 2 {
            write!(f, "\n        nodes: {}", self.members.join(", "))?;
        }
        for edge in &self.edges {
            write!(f, "\n        {edge}")?;
        }
        Ok(())
    }
}

/// Walks the module tree from `root` (a crate root file), reading files through `read`, and
/// judges its graph. Paths are as `read` takes them; names are shown relative to `root`'s
/// directory.
fn check_tree(root: &Path, read: &dyn Fn(&Path) -> Option<String>) -> Result<TreeReport> {
    let tree = Tree::load(root, read)?;
    Ok(tree.judge(root.parent().unwrap_or_else(|| Path::new(""))))
}

/// A module of the tree.
struct Module {
    /// From the crate root (`[]` is the root).
    path: Vec<String>,
    /// The file its own code is in.
    file: PathBuf,
    /// Declared with a body (`mod x { .. }`) rather than in a file of its own.
    inline: bool,
    /// Where `mod x;` inside it looks for `x.rs` and `x/mod.rs`.
    child_dir: PathBuf,
    parent: Option<usize>,
    children: BTreeMap<String, usize>,
    /// Names its own code defines.
    items: BTreeSet<String>,
    /// Names its `use` declarations bind, to the path each names (as written, from here).
    imports: BTreeMap<String, Vec<String>>,
    /// Its glob imports' paths (`use a::*` is `a`).
    globs: Vec<Vec<String>>,
}

/// A path in a module's code that may name something in the crate.
struct Reference {
    from: usize,
    segments: Vec<String>,
    text: String,
    file: PathBuf,
    line: usize,
}

/// A node of one level's graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Node {
    /// The level module's own code.
    Own,
    /// A child module and everything under it.
    Child(usize),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Resolved {
    /// Defined in this module's own code (or the path names the module itself).
    Found(usize),
    /// Not found where the path says (made by a macro, say): taken to be that module's own.
    Assumed(usize),
    /// Outside the crate (std, a dependency), or not resolvable.
    Outside,
}

/// Imports of imports: a loop is a compile error, so this only stops runaway resolution.
const MAX_HOPS: usize = 32;

struct Tree {
    modules: Vec<Module>,
    references: Vec<Reference>,
}

impl Tree {
    fn load(root: &Path, read: &dyn Fn(&Path) -> Option<String>) -> Result<Self> {
        let text = read(root).with_context(|| format!("could not read {}", root.display()))?;
        let syntax = syn::parse_file(&text)
            .with_context(|| format!("could not parse {}", root.display()))?;
        let mut tree = Self {
            modules: Vec::new(),
            references: Vec::new(),
        };
        // A crate root's children sit next to it, as a mod.rs's do.
        let dir = root.parent().unwrap_or_else(|| Path::new("")).to_path_buf();
        let module = tree.add_module(None, "", root.to_path_buf(), false, dir);
        tree.add_items(module, &syntax.items, read)?;
        Ok(tree)
    }

    fn add_module(
        &mut self,
        parent: Option<usize>,
        name: &str,
        file: PathBuf,
        inline: bool,
        child_dir: PathBuf,
    ) -> usize {
        let index = self.modules.len();
        let mut path = Vec::new();
        if let Some(parent) = parent {
            path.clone_from(&self.modules[parent].path);
            path.push(name.to_owned());
            self.modules[parent].children.insert(name.to_owned(), index);
        }
        self.modules.push(Module {
            path,
            file,
            inline,
            child_dir,
            parent,
            children: BTreeMap::new(),
            items: BTreeSet::new(),
            imports: BTreeMap::new(),
            globs: Vec::new(),
        });
        index
    }

    /// Records a module's items: its children (recursively), names, imports and references.
    fn add_items(
        &mut self,
        module: usize,
        items: &[Item],
        read: &dyn Fn(&Path) -> Option<String>,
    ) -> Result<()> {
        let file = self.modules[module].file.clone();
        let mut collector = Collector {
            module,
            file: &file,
            references: Vec::new(),
        };
        for item in items {
            if is_test_only(item_attrs(item)) {
                continue;
            }
            match item {
                Item::Mod(declared) => self.add_child(module, declared, read)?,
                Item::Use(used) => {
                    let mut leaves = Vec::new();
                    use_leaves(
                        &used.tree,
                        used.leading_colon.is_some(),
                        &mut Vec::new(),
                        &mut leaves,
                    );
                    let own = &mut self.modules[module];
                    for leaf in leaves {
                        match leaf.binding {
                            Some(name) if name != "_" => {
                                own.imports.insert(name, leaf.segments.clone());
                            }
                            Some(_) => {}
                            None => own.globs.push(leaf.segments.clone()),
                        }
                    }
                    collector.visit_item_use(used);
                }
                Item::ExternCrate(krate) => {
                    let name = krate
                        .rename
                        .as_ref()
                        .map_or(&krate.ident, |(_, rename)| rename);
                    self.modules[module]
                        .imports
                        .insert(name.to_string(), vec!["::".to_owned()]);
                }
                other => {
                    if let Some(name) = item_name(other) {
                        self.modules[module].items.insert(name);
                    }
                    collector.visit_item(other);
                }
            }
        }
        self.references.extend(collector.references);
        Ok(())
    }

    fn add_child(
        &mut self,
        parent: usize,
        declared: &syn::ItemMod,
        read: &dyn Fn(&Path) -> Option<String>,
    ) -> Result<()> {
        let name = declared.ident.to_string();
        let path_attr = path_attribute(&declared.attrs);
        let outer = &self.modules[parent];
        if let Some((_, items)) = &declared.content {
            let child_dir = outer.child_dir.join(path_attr.as_deref().unwrap_or(&name));
            let file = outer.file.clone();
            let child = self.add_module(Some(parent), &name, file, true, child_dir);
            return self.add_items(child, items, read);
        }
        let candidates = match &path_attr {
            // Relative to the declaring file's directory, or inside an inline module to the
            // directory that module stands for.
            Some(path) if outer.inline => vec![outer.child_dir.join(path)],
            Some(path) => vec![
                outer
                    .file
                    .parent()
                    .unwrap_or_else(|| Path::new(""))
                    .join(path),
            ],
            None => vec![
                outer.child_dir.join(format!("{name}.rs")),
                outer.child_dir.join(&name).join("mod.rs"),
            ],
        };
        let declared_at = format!(
            "{}:{}",
            outer.file.display(),
            declared.ident.span().start().line
        );
        let (file, text) = candidates
            .iter()
            .map(|candidate| normalize(candidate))
            .find_map(|candidate| read(&candidate).map(|text| (candidate, text)))
            .with_context(|| {
                let looked: Vec<String> =
                    candidates.iter().map(|c| c.display().to_string()).collect();
                format!(
                    "{declared_at}: `mod {name};` has no file (looked for {})",
                    looked.join(", ")
                )
            })?;
        let syntax = syn::parse_file(&text)
            .with_context(|| format!("could not parse {}", file.display()))?;
        // A mod.rs, and a file named by #[path], keeps its children beside it; `x.rs` keeps
        // them in `x/`.
        let child_dir = if path_attr.is_some() || file.file_name().is_some_and(|f| f == "mod.rs") {
            file.parent().unwrap_or_else(|| Path::new("")).to_path_buf()
        } else {
            file.with_extension("")
        };
        let child = self.add_module(Some(parent), &name, file, false, child_dir);
        self.add_items(child, &syntax.items, read)
    }

    /// Resolves `segments`, written in module `from`, to the module that holds what they name.
    fn resolve(
        &self,
        from: usize,
        segments: &[String],
        hops: usize,
        seen: &mut BTreeSet<(usize, String)>,
    ) -> Resolved {
        if hops > MAX_HOPS {
            return Resolved::Outside;
        }
        let Some(first) = segments.first() else {
            return Resolved::Found(from);
        };
        let module = &self.modules[from];
        match first.as_str() {
            "::" => Resolved::Outside,
            "crate" => self.walk(0, &segments[1..], hops, seen),
            "self" => self.walk(from, &segments[1..], hops, seen),
            "super" => self.walk(from, segments, hops, seen),
            name if module.children.contains_key(name) => self.walk(from, segments, hops, seen),
            name => match module.imports.get(name) {
                Some(target) => {
                    let mut path = target.clone();
                    path.extend_from_slice(&segments[1..]);
                    self.resolve(from, &path, hops + 1, seen)
                }
                // A dependency, std, the prelude, a local item or a variable.
                None => Resolved::Outside,
            },
        }
    }

    fn walk(
        &self,
        mut at: usize,
        segments: &[String],
        hops: usize,
        seen: &mut BTreeSet<(usize, String)>,
    ) -> Resolved {
        for (i, name) in segments.iter().enumerate() {
            let module = &self.modules[at];
            match name.as_str() {
                "self" => {}
                "super" => match module.parent {
                    Some(parent) => at = parent,
                    None => return Resolved::Outside,
                },
                _ => match module.children.get(name) {
                    Some(&child) => at = child,
                    None => return self.lookup(at, name, &segments[i + 1..], hops, seen),
                },
            }
        }
        Resolved::Found(at)
    }

    /// Where `name`, seen from inside module `at`, is defined: imports (re-exports) are
    /// followed to the module that defines the item.
    fn lookup(
        &self,
        at: usize,
        name: &str,
        rest: &[String],
        hops: usize,
        seen: &mut BTreeSet<(usize, String)>,
    ) -> Resolved {
        if !seen.insert((at, name.to_owned())) {
            return Resolved::Outside;
        }
        let module = &self.modules[at];
        if let Some(target) = module.imports.get(name) {
            let mut path = target.clone();
            path.extend_from_slice(rest);
            return self.resolve(at, &path, hops + 1, seen);
        }
        if module.items.contains(name) {
            return Resolved::Found(at);
        }
        for glob in &module.globs {
            let mut path = glob.clone();
            path.push(name.to_owned());
            path.extend_from_slice(rest);
            if let found @ Resolved::Found(_) = self.resolve(at, &path, hops + 1, seen) {
                return found;
            }
        }
        Resolved::Assumed(at)
    }

    /// The deepest module holding both `a` and `b`.
    fn common_ancestor(&self, a: usize, b: usize) -> usize {
        let (pa, pb) = (&self.modules[a].path, &self.modules[b].path);
        let depth = pa.iter().zip(pb).take_while(|(x, y)| x == y).count();
        let mut at = a;
        while self.modules[at].path.len() > depth {
            match self.modules[at].parent {
                Some(parent) => at = parent,
                None => break,
            }
        }
        at
    }

    /// The node of `level`'s graph that module `at` (inside `level`) belongs to.
    fn node(&self, level: usize, mut at: usize) -> Node {
        if at == level {
            return Node::Own;
        }
        while let Some(parent) = self.modules[at].parent {
            if parent == level {
                return Node::Child(at);
            }
            at = parent;
        }
        Node::Own
    }

    fn judge(&self, base: &Path) -> TreeReport {
        // level → (from, to) → the references making that edge, in reading order.
        let mut levels: BTreeMap<usize, BTreeMap<(Node, Node), Vec<usize>>> = BTreeMap::new();
        for (index, reference) in self.references.iter().enumerate() {
            let target =
                match self.resolve(reference.from, &reference.segments, 0, &mut BTreeSet::new()) {
                    Resolved::Found(target) | Resolved::Assumed(target) => target,
                    Resolved::Outside => continue,
                };
            if target == reference.from {
                continue;
            }
            let level = self.common_ancestor(reference.from, target);
            let edge = (self.node(level, reference.from), self.node(level, target));
            levels
                .entry(level)
                .or_default()
                .entry(edge)
                .or_default()
                .push(index);
        }
        let mut cycles = Vec::new();
        for (&level, edges) in &levels {
            for members in strongly_connected(edges) {
                cycles.push(self.describe(level, &members, edges, base));
            }
        }
        TreeReport {
            modules: self.modules.len(),
            edges: levels.values().map(BTreeMap::len).sum(),
            references: levels
                .values()
                .flat_map(BTreeMap::values)
                .map(Vec::len)
                .sum(),
            cycles,
        }
    }

    fn describe(
        &self,
        level: usize,
        members: &[Node],
        edges: &BTreeMap<(Node, Node), Vec<usize>>,
        base: &Path,
    ) -> Cycle {
        let label = |node: Node| self.label(level, node, base);
        let example = |from: Node, to: Node| -> String {
            edges
                .get(&(from, to))
                .and_then(|refs| refs.first())
                .map(|&index| {
                    let reference = &self.references[index];
                    format!(
                        "{}:{} uses {}",
                        reference.file.display(),
                        reference.line,
                        reference.text
                    )
                })
                .unwrap_or_default()
        };
        let mut walk = label(members[0]);
        for pair in closed_walk(members, edges).windows(2) {
            walk.push_str(&format!(
                " -> {} ({})",
                label(pair[1]),
                example(pair[0], pair[1])
            ));
        }
        let mut edge_lines = Vec::new();
        for (&(from, to), refs) in edges {
            if members.contains(&from) && members.contains(&to) {
                edge_lines.push(format!(
                    "{} -> {}: {} reference{}, e.g. {}",
                    label(from),
                    label(to),
                    refs.len(),
                    if refs.len() == 1 { "" } else { "s" },
                    example(from, to)
                ));
            }
        }
        let mut names: Vec<String> = members.iter().map(|&node| label(node)).collect();
        names.sort();
        Cycle {
            level: module_name(&self.modules[level].path),
            members: names,
            walk,
            edges: edge_lines,
        }
    }

    /// A node as a reader finds it: a file, a directory (a module with children), or an
    /// inline module's name and file.
    fn label(&self, level: usize, node: Node, base: &Path) -> String {
        let relative = |path: &Path| {
            path.strip_prefix(base)
                .unwrap_or(path)
                .display()
                .to_string()
        };
        let module = match node {
            Node::Own => &self.modules[level],
            Node::Child(child) => &self.modules[child],
        };
        if module.inline {
            return format!(
                "{} (in {})",
                module_name(&module.path),
                relative(&module.file)
            );
        }
        if matches!(node, Node::Own) || module.children.is_empty() {
            return relative(&module.file);
        }
        if module.file.parent() == Some(module.child_dir.as_path()) {
            format!("{}/", relative(&module.child_dir))
        } else {
            format!(
                "{}+{}/",
                relative(&module.file),
                relative(&module.child_dir)
            )
        }
    }
}

fn module_name(path: &[String]) -> String {
    std::iter::once("crate")
        .chain(path.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join("::")
}

/// Every strongly connected component of more than one node. The graphs are a level's
/// children, a few dozen nodes at most, so reachability from each node is cheap enough.
fn strongly_connected<T>(edges: &BTreeMap<(Node, Node), T>) -> Vec<Vec<Node>> {
    let nodes: BTreeSet<Node> = edges.keys().flat_map(|&(a, b)| [a, b]).collect();
    let reach: BTreeMap<Node, BTreeSet<Node>> = nodes
        .iter()
        .map(|&node| (node, reachable(node, edges)))
        .collect();
    let mut placed = BTreeSet::new();
    let mut components = Vec::new();
    for &node in &nodes {
        if placed.contains(&node) {
            continue;
        }
        let component: Vec<Node> = nodes
            .iter()
            .copied()
            .filter(|other| {
                *other == node || (reach[&node].contains(other) && reach[other].contains(&node))
            })
            .collect();
        placed.extend(component.iter().copied());
        if component.len() > 1 {
            components.push(component);
        }
    }
    components
}

fn reachable<T>(from: Node, edges: &BTreeMap<(Node, Node), T>) -> BTreeSet<Node> {
    let mut seen = BTreeSet::new();
    let mut queue = VecDeque::from([from]);
    while let Some(at) = queue.pop_front() {
        for &(a, b) in edges.keys() {
            if a == at && seen.insert(b) {
                queue.push_back(b);
            }
        }
    }
    seen
}

/// A walk from the first member through every member and back, along edges among the
/// members: each step goes to the nearest member not yet visited.
fn closed_walk<T>(members: &[Node], edges: &BTreeMap<(Node, Node), T>) -> Vec<Node> {
    // The shortest path inside the members from `from` to a node `wanted` accepts.
    let shortest = |from: Node, wanted: &dyn Fn(Node) -> bool| -> Vec<Node> {
        let mut previous: BTreeMap<Node, Node> = BTreeMap::new();
        let mut queue = VecDeque::from([from]);
        while let Some(at) = queue.pop_front() {
            for &(a, b) in edges.keys() {
                if a != at || b == from || !members.contains(&b) || previous.contains_key(&b) {
                    continue;
                }
                previous.insert(b, a);
                if wanted(b) {
                    let mut path = vec![b];
                    let mut back = b;
                    while let Some(&before) = previous.get(&back) {
                        path.push(before);
                        back = before;
                    }
                    path.reverse();
                    return path;
                }
                queue.push_back(b);
            }
        }
        Vec::new()
    };
    let start = members[0];
    let mut walk = vec![start];
    let mut visited = BTreeSet::from([start]);
    while visited.len() < members.len() {
        let at = walk[walk.len() - 1];
        let step = shortest(at, &|node| !visited.contains(&node));
        if step.len() < 2 {
            break;
        }
        visited.extend(step.iter().copied());
        walk.extend_from_slice(&step[1..]);
    }
    let at = walk[walk.len() - 1];
    let back = shortest(at, &|node| node == start);
    walk.extend_from_slice(back.get(1..).unwrap_or_default());
    walk
}

/// Collects the paths in one module's code that may name something in the crate.
struct Collector<'a> {
    module: usize,
    file: &'a Path,
    references: Vec<Reference>,
}

impl Collector<'_> {
    fn push(&mut self, segments: Vec<String>, text: String, line: usize) {
        self.references.push(Reference {
            from: self.module,
            segments,
            text,
            file: self.file.to_path_buf(),
            line,
        });
    }

    /// Paths inside a macro call's tokens (`format!("{}", crate::x::y())`): syn leaves them
    /// unparsed, so they are found as `ident :: ident ...` runs.
    fn scan_tokens(&mut self, tokens: TokenStream) {
        let tokens: Vec<TokenTree> = tokens.into_iter().collect();
        let is_colon =
            |i: usize| matches!(tokens.get(i), Some(TokenTree::Punct(p)) if p.as_char() == ':');
        let mut i = 0;
        while i < tokens.len() {
            match &tokens[i] {
                TokenTree::Group(group) => {
                    self.scan_tokens(group.stream());
                    i += 1;
                }
                TokenTree::Ident(first) => {
                    // `$crate::` belongs to a macro definition; `a::b::c` mid-path was taken
                    // from its start.
                    let after_dollar = i > 0
                        && matches!(&tokens[i - 1], TokenTree::Punct(p) if p.as_char() == '$');
                    let mut segments = vec![first.to_string()];
                    let mut j = i + 1;
                    while is_colon(j) && is_colon(j + 1) {
                        match tokens.get(j + 2) {
                            Some(TokenTree::Ident(next)) => {
                                segments.push(next.to_string());
                                j += 3;
                            }
                            _ => break,
                        }
                    }
                    if segments.len() > 1 && !after_dollar {
                        let text = segments.join("::");
                        self.push(segments, text, first.span().start().line);
                    }
                    i = j;
                }
                TokenTree::Punct(_) | TokenTree::Literal(_) => i += 1,
            }
        }
    }
}

impl<'ast> Visit<'ast> for Collector<'_> {
    fn visit_path(&mut self, path: &'ast syn::Path) {
        // One segment names a local item, a variable or the prelude; a leading `::` a crate.
        if path.leading_colon.is_none() && path.segments.len() > 1 {
            let segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
            let line = path.segments[0].ident.span().start().line;
            let text = segments.join("::");
            self.push(segments, text, line);
        }
        syn::visit::visit_path(self, path);
    }

    fn visit_item_use(&mut self, used: &'ast syn::ItemUse) {
        let mut leaves = Vec::new();
        use_leaves(
            &used.tree,
            used.leading_colon.is_some(),
            &mut Vec::new(),
            &mut leaves,
        );
        for leaf in leaves {
            let text = if leaf.binding.is_some() {
                leaf.segments.join("::")
            } else {
                format!("{}::*", leaf.segments.join("::"))
            };
            self.push(leaf.segments, text, leaf.line);
        }
    }

    fn visit_item(&mut self, item: &'ast Item) {
        if !is_test_only(item_attrs(item)) {
            syn::visit::visit_item(self, item);
        }
    }

    fn visit_impl_item(&mut self, item: &'ast syn::ImplItem) {
        let attrs: &[Attribute] = match item {
            syn::ImplItem::Const(i) => &i.attrs,
            syn::ImplItem::Fn(i) => &i.attrs,
            syn::ImplItem::Type(i) => &i.attrs,
            syn::ImplItem::Macro(i) => &i.attrs,
            _ => &[],
        };
        if !is_test_only(attrs) {
            syn::visit::visit_impl_item(self, item);
        }
    }

    // A module inside a function body is not part of the tree; there are none to speak of.
    fn visit_item_mod(&mut self, _: &'ast syn::ItemMod) {}

    // `macro_rules!` bodies are token soup with `$crate`; they are ignored.
    fn visit_item_macro(&mut self, item: &'ast syn::ItemMacro) {
        if item.ident.is_none() {
            self.visit_macro(&item.mac);
        }
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        self.visit_path(&mac.path);
        self.scan_tokens(mac.tokens.clone());
    }

    // `pub(in crate::a)` limits who may see an item; it uses nothing.
    fn visit_visibility(&mut self, _: &'ast syn::Visibility) {}

    // Attributes (derives, cfgs, docs) name no code of the crate.
    fn visit_attribute(&mut self, _: &'ast Attribute) {}
}

/// One name (or glob) a `use` declaration brings in.
struct UseLeaf {
    /// The path as written; a leading `::` is kept as a `::` segment.
    segments: Vec<String>,
    /// The name it binds (`_` for `as _`); `None` for a glob.
    binding: Option<String>,
    line: usize,
}

fn use_leaves(tree: &UseTree, global: bool, prefix: &mut Vec<String>, out: &mut Vec<UseLeaf>) {
    let start = |prefix: &[String]| -> Vec<String> {
        let mut segments = Vec::with_capacity(prefix.len() + 2);
        if global {
            segments.push("::".to_owned());
        }
        segments.extend_from_slice(prefix);
        segments
    };
    match tree {
        UseTree::Path(path) => {
            prefix.push(path.ident.to_string());
            use_leaves(&path.tree, global, prefix, out);
            prefix.pop();
        }
        UseTree::Name(name) => {
            let mut segments = start(prefix);
            // `use a::{self}` binds `a`.
            let binding = if name.ident == "self" {
                prefix.last().cloned().unwrap_or_default()
            } else {
                segments.push(name.ident.to_string());
                name.ident.to_string()
            };
            out.push(UseLeaf {
                segments,
                binding: Some(binding),
                line: name.ident.span().start().line,
            });
        }
        UseTree::Rename(rename) => {
            let mut segments = start(prefix);
            if rename.ident != "self" {
                segments.push(rename.ident.to_string());
            }
            out.push(UseLeaf {
                segments,
                binding: Some(rename.rename.to_string()),
                line: rename.ident.span().start().line,
            });
        }
        UseTree::Glob(glob) => out.push(UseLeaf {
            segments: start(prefix),
            binding: None,
            line: glob.star_token.spans[0].start().line,
        }),
        UseTree::Group(group) => {
            for tree in &group.items {
                use_leaves(tree, global, prefix, out);
            }
        }
    }
}

fn item_attrs(item: &Item) -> &[Attribute] {
    match item {
        Item::Const(i) => &i.attrs,
        Item::Enum(i) => &i.attrs,
        Item::ExternCrate(i) => &i.attrs,
        Item::Fn(i) => &i.attrs,
        Item::ForeignMod(i) => &i.attrs,
        Item::Impl(i) => &i.attrs,
        Item::Macro(i) => &i.attrs,
        Item::Mod(i) => &i.attrs,
        Item::Static(i) => &i.attrs,
        Item::Struct(i) => &i.attrs,
        Item::Trait(i) => &i.attrs,
        Item::TraitAlias(i) => &i.attrs,
        Item::Type(i) => &i.attrs,
        Item::Union(i) => &i.attrs,
        Item::Use(i) => &i.attrs,
        _ => &[],
    }
}

/// The name an item defines in its module's namespace, if any.
fn item_name(item: &Item) -> Option<String> {
    let ident = match item {
        Item::Const(i) => &i.ident,
        Item::Enum(i) => &i.ident,
        Item::Fn(i) => &i.sig.ident,
        Item::Static(i) => &i.ident,
        Item::Struct(i) => &i.ident,
        Item::Trait(i) => &i.ident,
        Item::TraitAlias(i) => &i.ident,
        Item::Type(i) => &i.ident,
        Item::Union(i) => &i.ident,
        Item::Macro(i) => i.ident.as_ref()?,
        _ => return None,
    };
    Some(ident.to_string())
}

/// `#[cfg(test)]`, or a cfg that needs `test` (`all(test, ..)`): code only tests compile.
fn is_test_only(attrs: &[Attribute]) -> bool {
    attrs.iter().any(|attr| {
        attr.path().is_ident("cfg") && attr.parse_args::<Meta>().is_ok_and(|m| needs_test(&m))
    })
}

fn needs_test(meta: &Meta) -> bool {
    let nested = |list: &syn::MetaList| {
        list.parse_args_with(Punctuated::<Meta, Token![,]>::parse_terminated)
            .map(|metas| metas.into_iter().collect::<Vec<_>>())
            .unwrap_or_default()
    };
    match meta {
        Meta::Path(path) => path.is_ident("test"),
        Meta::List(list) if list.path.is_ident("all") => nested(list).iter().any(needs_test),
        Meta::List(list) if list.path.is_ident("any") => {
            let metas = nested(list);
            !metas.is_empty() && metas.iter().all(needs_test)
        }
        _ => false,
    }
}

/// `#[path = "..."]` on a module declaration.
fn path_attribute(attrs: &[Attribute]) -> Option<String> {
    attrs.iter().find_map(|attr| match &attr.meta {
        Meta::NameValue(value) if value.path.is_ident("path") => match &value.value {
            syn::Expr::Lit(syn::ExprLit {
                lit: syn::Lit::Str(text),
                ..
            }) => Some(text.value()),
            _ => None,
        },
        _ => None,
    })
}

/// `a/./b/../c` as `a/c`, so a `#[path]` with `..` finds the file a map of sources holds.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cycles (level, sorted members) of a tree given as (path, source) pairs, rooted at
    /// `src/lib.rs`.
    fn cycles_of(files: &[(&str, &str)]) -> Vec<(String, Vec<String>)> {
        let sources: BTreeMap<PathBuf, String> = files
            .iter()
            .map(|(path, text)| (PathBuf::from(path), (*text).to_owned()))
            .collect();
        let report = check_tree(Path::new("src/lib.rs"), &|path: &Path| {
            sources.get(path).cloned()
        })
        .expect("the tree loads");
        report
            .cycles
            .into_iter()
            .map(|cycle| (cycle.level, cycle.members))
            .collect()
    }

    /// A case's name, its files, and the cycles expected.
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, Vec<(String, Vec<String>)>);

    fn cycle(level: &str, members: &[&str]) -> (String, Vec<String>) {
        (
            level.to_owned(),
            members.iter().map(|m| (*m).to_owned()).collect(),
        )
    }

    #[test]
    fn module_cycles() {
        let reexport_parent = "mod a; mod b; pub use a::Thing; pub fn helper() { b::go() }";
        let cases: Vec<Case<'_>> = vec![
            (
                "no cycle",
                vec![
                    ("src/lib.rs", "mod a; mod b;"),
                    ("src/a.rs", "use crate::b::B; pub fn f() -> B { B }"),
                    ("src/b.rs", "pub struct B;"),
                ],
                vec![],
            ),
            (
                "sibling cycle",
                vec![
                    ("src/lib.rs", "mod a; mod b;"),
                    ("src/a.rs", "use crate::b::B; pub fn f() -> B { B }"),
                    ("src/b.rs", "pub struct B; fn g() { super::a::f(); }"),
                ],
                vec![cycle("crate", &["a.rs", "b.rs"])],
            ),
            (
                "parent's own code and a child",
                vec![
                    ("src/lib.rs", "mod p;"),
                    (
                        "src/p/mod.rs",
                        "mod c; pub struct Ctx; fn run() { c::go(); }",
                    ),
                    ("src/p/c.rs", "use super::Ctx; pub fn go() {}"),
                ],
                vec![cycle("crate::p", &["p/c.rs", "p/mod.rs"])],
            ),
            (
                "a re-export is followed to the module defining the item",
                vec![
                    ("src/lib.rs", "mod p;"),
                    ("src/p/mod.rs", reexport_parent),
                    ("src/p/a.rs", "pub struct Thing;"),
                    ("src/p/b.rs", "use super::Thing; pub fn go() {}"),
                ],
                vec![],
            ),
            (
                "a grouped re-export is followed",
                vec![
                    ("src/lib.rs", "mod p;"),
                    (
                        "src/p/mod.rs",
                        "mod a; mod b; pub use self::a::{Other, Thing}; fn h() { b::go() }",
                    ),
                    ("src/p/a.rs", "pub struct Thing; pub struct Other;"),
                    ("src/p/b.rs", "pub fn go() { let _ = super::Thing; }"),
                ],
                vec![],
            ),
            (
                "a glob re-export is followed",
                vec![
                    ("src/lib.rs", "mod p;"),
                    (
                        "src/p/mod.rs",
                        "mod a; mod b; pub use a::*; fn h() { b::go() }",
                    ),
                    ("src/p/a.rs", "pub struct Thing;"),
                    ("src/p/b.rs", "use super::Thing; pub fn go() {}"),
                ],
                vec![],
            ),
            (
                "but an item of the parent's own is the parent's",
                vec![
                    ("src/lib.rs", "mod p;"),
                    (
                        "src/p/mod.rs",
                        "mod a; mod b; pub use a::*; pub struct Own; fn h() { b::go() }",
                    ),
                    ("src/p/a.rs", "pub struct Thing;"),
                    ("src/p/b.rs", "use super::Own; pub fn go() {}"),
                ],
                vec![cycle("crate::p", &["p/b.rs", "p/mod.rs"])],
            ),
            (
                "a glob import of the parent is the parent's own code",
                vec![
                    ("src/lib.rs", "mod a; pub struct Root; fn f() { a::g() }"),
                    ("src/a.rs", "use super::*; pub fn g() {}"),
                ],
                vec![cycle("crate", &["a.rs", "lib.rs"])],
            ),
            (
                "test code is not looked at (nor its files read)",
                vec![
                    ("src/lib.rs", "mod a; mod b; #[cfg(test)] mod tests;"),
                    (
                        "src/a.rs",
                        "use crate::b::B; pub fn f() {} #[cfg(test)] mod tests { use crate::a; }",
                    ),
                    (
                        "src/b.rs",
                        "pub struct B;\n#[cfg(test)] mod tests { use crate::a::f; }\n\
                         #[cfg(all(test, unix))] fn t() { crate::a::f() }\n\
                         #[cfg(test)] use crate::a::f;",
                    ),
                ],
                vec![],
            ),
            (
                "super::super, counted where both ends meet",
                vec![
                    ("src/lib.rs", "mod a; mod b;"),
                    ("src/a/mod.rs", "mod inner; pub fn g() {}"),
                    ("src/a/inner.rs", "use super::super::b::B;"),
                    ("src/b.rs", "pub struct B; fn f() { crate::a::g(); }"),
                ],
                vec![cycle("crate", &["a/", "b.rs"])],
            ),
            (
                "inline modules, and a file module under one",
                vec![
                    (
                        "src/lib.rs",
                        "mod outer {\n\
                             pub mod x { pub fn f() { super::y::g() } }\n\
                             pub mod y { pub fn g() {} pub fn h() { crate::outer::x::f() } }\n\
                             mod z;\n\
                         }",
                    ),
                    ("src/outer/z.rs", "pub fn k() { super::x::f() }"),
                ],
                vec![cycle(
                    "crate::outer",
                    &["crate::outer::x (in lib.rs)", "crate::outer::y (in lib.rs)"],
                )],
            ),
            (
                "x.rs keeps its children in x/, and #[path] is followed",
                vec![
                    (
                        "src/lib.rs",
                        "mod pods; #[path = \"other/place.rs\"] mod moved;",
                    ),
                    (
                        "src/pods.rs",
                        "mod detail; pub struct Pod; fn f() { detail::d() }",
                    ),
                    ("src/pods/detail.rs", "pub fn d() { let _ = super::Pod; }"),
                    ("src/other/place.rs", "pub fn m() { crate::pods::Pod; }"),
                ],
                vec![cycle("crate::pods", &["pods.rs", "pods/detail.rs"])],
            ),
            (
                "paths inside macro calls count",
                vec![
                    ("src/lib.rs", "mod a; mod b;"),
                    (
                        "src/a.rs",
                        "pub fn f() { println!(\"{:?}\", crate::b::B); }",
                    ),
                    (
                        "src/b.rs",
                        "#[derive(Debug)] pub struct B; fn g() { assert!(super::a::f() == ()); }",
                    ),
                ],
                vec![cycle("crate", &["a.rs", "b.rs"])],
            ),
            (
                "a path through an imported module, and external crates ignored",
                vec![
                    ("src/lib.rs", "mod a; mod b;"),
                    (
                        "src/a.rs",
                        "use crate::b; pub fn f() { b::inner::g(); std::mem::drop(1); }",
                    ),
                    ("src/b/mod.rs", "pub mod inner; use tokio::sync::Mutex;"),
                    (
                        "src/b/inner.rs",
                        "pub fn g() {} fn h() { http::Request::new(()); }",
                    ),
                ],
                vec![],
            ),
        ];
        for (name, files, want) in cases {
            assert_eq!(cycles_of(&files), want, "{name}");
        }
    }

    #[test]
    fn a_cycle_is_shown_with_an_example_per_edge() {
        let files = [
            ("src/lib.rs", "mod p;"),
            (
                "src/p/mod.rs",
                "mod c;\npub struct Ctx;\nfn run() { c::go(); }",
            ),
            ("src/p/c.rs", "use super::Ctx;\npub fn go() {}"),
        ];
        let sources: BTreeMap<PathBuf, String> = files
            .iter()
            .map(|(path, text)| (PathBuf::from(path), (*text).to_owned()))
            .collect();
        let report = check_tree(Path::new("src/lib.rs"), &|path: &Path| {
            sources.get(path).cloned()
        })
        .expect("the tree loads");
        assert_eq!(report.modules, 3);
        assert_eq!(report.edges, 2);
        let shown: Vec<String> = report.cycles.iter().map(|c| c.walk.clone()).collect();
        assert_eq!(
            shown,
            [
                "p/mod.rs -> p/c.rs (src/p/mod.rs:3 uses c::go) -> p/mod.rs (src/p/c.rs:1 uses super::Ctx)"
            ]
        );
    }

    #[test]
    fn a_missing_module_file_is_an_error() {
        let result = check_tree(Path::new("src/lib.rs"), &|path: &Path| {
            (path == Path::new("src/lib.rs")).then(|| "mod gone;".to_owned())
        });
        let error = format!("{:#}", result.expect_err("gone.rs does not exist"));
        assert!(error.contains("src/gone.rs"), "{error}");
    }

    #[test]
    fn crate_dependencies_point_down() {
        let metadata = serde_json::json!({
            "workspace_members": ["low", "mid", "top", "new"],
            "packages": [
                {"id": "low", "name": "low"},
                {"id": "mid", "name": "mid"},
                {"id": "top", "name": "top"},
                {"id": "new", "name": "new"},
                {"id": "rt", "name": "tokio"},
                {"id": "wrap", "name": "wrapper"},
            ],
            "resolve": {"nodes": [
                {"id": "low", "deps": [
                    {"pkg": "wrap", "dep_kinds": [{"kind": null}]},
                    {"pkg": "top", "dep_kinds": [{"kind": "dev"}]},
                ]},
                {"id": "mid", "deps": [
                    {"pkg": "low", "dep_kinds": [{"kind": null}]},
                    {"pkg": "top", "dep_kinds": [{"kind": null}]},
                ]},
                {"id": "top", "deps": [{"pkg": "low", "dep_kinds": [{"kind": null}]}]},
                {"id": "new", "deps": []},
                {"id": "wrap", "deps": [{"pkg": "rt", "dep_kinds": [{"kind": null}]}]},
                {"id": "rt", "deps": []},
            ]},
        });
        let layers = [
            Layer {
                krate: "low",
                may_use: &[],
                never_reaches: &["tokio"],
            },
            Layer {
                krate: "mid",
                may_use: &["low"],
                never_reaches: &[],
            },
            Layer {
                krate: "top",
                may_use: &["low", "mid"],
                never_reaches: &[],
            },
            Layer {
                krate: "not-yet",
                may_use: &["low"],
                never_reaches: &[],
            },
        ];
        let violations = check_crates(&metadata, &layers).expect("metadata is complete");
        assert_eq!(
            violations,
            [
                "low: reaches tokio (low -> wrapper -> tokio), which it must not",
                "mid: depends on top, which is not below it (it may use: low)",
                "new: not in the layering table; add it to the layering table in \
                 xtask/src/layers.rs, with the workspace crates it may depend on",
            ]
        );
    }

    #[test]
    fn the_table_names_each_crate_once() {
        let names: BTreeSet<&str> = LAYERS.iter().map(|layer| layer.krate).collect();
        assert_eq!(names.len(), LAYERS.len());
    }
}
