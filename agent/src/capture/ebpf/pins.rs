//! The pin folder of one agent instance: `<bpffs>/shunt/<instance>/{maps,links}/`.
//!
//! The pins are the state that outlives the agent: a pinned link stays attached and a pinned
//! map keeps its entries until the pin is removed. The agent itself holds no link descriptors,
//! so removing a link's pin detaches it at once, even from inside the running agent.

use std::path::{Path, PathBuf};

use super::Error;

const SK_LOOKUP_PREFIX: &str = "sk_lookup-";

#[derive(Clone, Debug)]
pub struct PinDir {
    root: PathBuf,
}

impl PinDir {
    /// Checks the instance name, which becomes a folder name.
    pub fn new(bpffs: &Path, instance: &str) -> Result<Self, Error> {
        let bad = |reason: &str| Error::InvalidInstance {
            instance: instance.to_owned(),
            reason: reason.to_owned(),
        };
        if instance.is_empty() {
            return Err(bad("it is empty"));
        }
        if instance == "." || instance == ".." {
            return Err(bad("it is not a folder name"));
        }
        if let Some(c) = instance
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        {
            return Err(bad(&format!(
                "it contains {c:?}; use letters, digits, '-', '_', '.'"
            )));
        }
        Ok(Self {
            root: bpffs.join("shunt").join(instance),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn maps_dir(&self) -> PathBuf {
        self.root.join("maps")
    }

    fn links_dir(&self) -> PathBuf {
        self.root.join("links")
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.maps_dir().join(name)
    }

    pub fn link(&self, name: &str) -> PathBuf {
        self.links_dir().join(name)
    }

    pub fn sk_lookup_link(&self, netns_cookie: u64) -> PathBuf {
        self.link(&format!("{SK_LOOKUP_PREFIX}{netns_cookie}"))
    }

    pub fn create(&self) -> Result<(), Error> {
        for dir in [self.maps_dir(), self.links_dir()] {
            std::fs::create_dir_all(&dir).map_err(|source| Error::PinDir {
                path: dir,
                error: source,
            })?;
        }
        Ok(())
    }

    /// Netns cookies that have a pinned sk_lookup link, sorted.
    pub fn sk_lookup_cookies(&self) -> Result<Vec<u64>, Error> {
        let mut cookies: Vec<u64> = list(&self.links_dir())?
            .iter()
            .filter_map(|path| {
                path.file_name()?
                    .to_str()?
                    .strip_prefix(SK_LOOKUP_PREFIX)?
                    .parse()
                    .ok()
            })
            .collect();
        cookies.sort_unstable();
        Ok(cookies)
    }

    /// Removes every link pin first (detaching them), then the maps, then the folders; the
    /// shared `<bpffs>/shunt` folder goes too when no other instance uses it. Returns what was
    /// removed, in order.
    pub fn remove_all(&self) -> Result<Vec<PathBuf>, Error> {
        let mut removed = Vec::new();
        if self.root.symlink_metadata().is_err() {
            return Ok(removed);
        }
        for dir in [self.links_dir(), self.maps_dir()] {
            for path in list(&dir)? {
                remove_file(&path)?;
                removed.push(path);
            }
            if remove_dir(&dir)? {
                removed.push(dir);
            }
        }
        if remove_dir(&self.root)? {
            removed.push(self.root.clone());
        }
        if let Some(shared) = self.root.parent()
            && list(shared)?.is_empty()
            && remove_dir(shared)?
        {
            removed.push(shared.to_owned());
        }
        Ok(removed)
    }
}

/// The entries of `dir`, sorted; a missing folder has none.
fn list(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(Error::PinDir {
                path: dir.to_owned(),
                error: source,
            });
        }
    };
    let mut paths = entries
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| Error::PinDir {
            path: dir.to_owned(),
            error: source,
        })?;
    paths.sort();
    Ok(paths)
}

/// Removes a pin; a pin that is already gone is fine.
pub fn remove_file(path: &Path) -> Result<(), Error> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(Error::Unpin {
            path: path.to_owned(),
            error: source,
        }),
    }
}

/// Whether the folder existed and was removed.
fn remove_dir(path: &Path) -> Result<bool, Error> {
    match std::fs::remove_dir(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(Error::Unpin {
            path: path.to_owned(),
            error: source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_names_become_one_folder() {
        let cases = [
            ("default", true),
            ("shunt-ab12_c.d", true),
            ("", false),
            (".", false),
            ("..", false),
            ("a/b", false),
            ("a b", false),
        ];
        for (instance, ok) in cases {
            let result = PinDir::new(Path::new("/sys/fs/bpf"), instance);
            assert_eq!(result.is_ok(), ok, "{instance:?}: {result:?}");
        }
    }

    #[test]
    fn layout() {
        let pins = PinDir::new(Path::new("/b"), "x").unwrap();
        assert_eq!(pins.root(), Path::new("/b/shunt/x"));
        assert_eq!(pins.map("STATS"), Path::new("/b/shunt/x/maps/STATS"));
        assert_eq!(
            pins.sk_lookup_link(42),
            Path::new("/b/shunt/x/links/sk_lookup-42")
        );
    }

    #[test]
    fn remove_all_on_plain_folders_lists_what_went_and_spares_other_instances() {
        let tmp = tempfile::tempdir().unwrap();
        let pins = PinDir::new(tmp.path(), "one").unwrap();
        let other = PinDir::new(tmp.path(), "two").unwrap();
        pins.create().unwrap();
        other.create().unwrap();
        std::fs::write(pins.map("STATS"), b"").unwrap();
        std::fs::write(pins.sk_lookup_link(7), b"").unwrap();
        std::fs::write(pins.link("not-a-cookie"), b"").unwrap();
        assert_eq!(pins.sk_lookup_cookies().unwrap(), vec![7]);

        let removed = pins.remove_all().unwrap();
        assert_eq!(removed.first(), Some(&pins.link("not-a-cookie")));
        assert!(removed.contains(&pins.map("STATS")));
        assert_eq!(removed.last(), Some(&pins.root().to_owned()));
        assert!(!pins.root().exists());
        assert!(
            other.root().exists(),
            "another instance's pins are not touched"
        );

        assert!(
            pins.remove_all().unwrap().is_empty(),
            "removing twice finds nothing"
        );
        other.remove_all().unwrap();
        assert!(
            !tmp.path().join("shunt").exists(),
            "the last instance takes the shared folder"
        );
    }
}
