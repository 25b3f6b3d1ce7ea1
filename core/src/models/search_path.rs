//! Where vgen looks for model folders, so that the default model is found wherever vgen runs.
//!
//! The folders, in order (the first folder that holds a model of a given name wins):
//! 1. `$VGEN_MODELS`: folders of model folders, separated by `:`;
//! 2. the user's data folder: `$XDG_DATA_HOME/vgen/models`, else `~/.local/share/vgen/models`;
//! 3. the Python package's own data (`vgen/models` beside the extension), when vgen runs inside it;
//! 4. the install prefix's `share/vgen/models`: the prefix is the folder above the one holding the binary that
//!    vgen is part of (`PREFIX/bin/vgen` or `PREFIX/lib/libvgen.so`), found at run time, so an installed tree
//!    can be moved;
//! 5. the `models/` folder of the source tree vgen was built from, if it still exists.
//!
//! Nothing is looked up relative to the working directory: a program behaves the same from any folder.

use std::path::{Path, PathBuf};

/// One folder of model folders, and why it is searched (said in `vgen models` and in the error a request gets
/// when no model is found).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Root {
    pub path: PathBuf,
    pub origin: Origin,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// `$VGEN_MODELS`.
    Environment,
    /// `$XDG_DATA_HOME/vgen/models` or `~/.local/share/vgen/models`.
    UserData,
    /// The Python package's `models/` folder.
    Package,
    /// `PREFIX/share/vgen/models`.
    InstallPrefix,
    /// The source tree's `models/`.
    SourceTree,
    /// A folder a host named itself.
    Host,
}

impl Origin {
    pub fn describe(self) -> &'static str {
        match self {
            Origin::Environment => "$VGEN_MODELS",
            Origin::UserData => "user data",
            Origin::Package => "Python package",
            Origin::InstallPrefix => "install prefix",
            Origin::SourceTree => "source tree",
            Origin::Host => "given by the host",
        }
    }
}

/// The ordered folders to search; see the module's documentation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SearchPath {
    roots: Vec<Root>,
}

/// The source tree's `models/`, fixed when this crate was compiled.
const SOURCE_TREE_MODELS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../models");

impl SearchPath {
    /// The standard search path of the process, from its environment and the location of its binary.
    pub fn standard() -> Self {
        let binary = binary_holding_vgen();
        Self::from_parts(
            std::env::var_os("VGEN_MODELS").as_deref(),
            user_data_models().as_deref(),
            binary.as_deref(),
            Path::new(SOURCE_TREE_MODELS),
        )
    }

    /// The search path built from its parts, for tests and for hosts that know better: `models_env` is the value
    /// of `$VGEN_MODELS`, `user_data` the user's models folder, `binary` the file vgen is part of.
    pub fn from_parts(
        models_env: Option<&std::ffi::OsStr>,
        user_data: Option<&Path>,
        binary: Option<&Path>,
        source_tree: &Path,
    ) -> Self {
        let mut path = Self::default();
        if let Some(value) = models_env {
            for p in std::env::split_paths(value).filter(|p| !p.as_os_str().is_empty()) {
                path.push(p, Origin::Environment);
            }
        }
        if let Some(dir) = user_data {
            path.push(dir.to_path_buf(), Origin::UserData);
        }
        if let Some(binary) = binary {
            let folder = binary.parent().unwrap_or(Path::new("/"));
            // The Python extension sits in the package folder, whose `models/` is the wheel's package data.
            if binary.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("_vgen.")) {
                path.push(folder.join("models"), Origin::Package);
            }
            if let Some(prefix) = folder.parent() {
                path.push(prefix.join("share/vgen/models"), Origin::InstallPrefix);
            }
        }
        path.push(normalize(source_tree), Origin::SourceTree);
        path
    }

    /// Only these folders: no environment, no install prefix, no source tree.
    pub fn only(folders: impl IntoIterator<Item = PathBuf>) -> Self {
        let mut path = Self::default();
        for f in folders {
            path.push(f, Origin::Host);
        }
        path
    }

    fn push(&mut self, path: PathBuf, origin: Origin) {
        if !self.roots.iter().any(|r| r.path == path) {
            self.roots.push(Root { path, origin });
        }
    }

    pub fn roots(&self) -> &[Root] {
        &self.roots
    }

    /// The folders as a person reads them, for an error message: `/a ($VGEN_MODELS), /b (user data), ...`.
    pub fn describe(&self) -> String {
        let parts: Vec<String> =
            self.roots.iter().map(|r| format!("{} ({})", r.path.display(), r.origin.describe())).collect();
        if parts.is_empty() { "no folder".to_string() } else { parts.join(", ") }
    }
}

/// `$XDG_DATA_HOME/vgen/models`, else `$HOME/.local/share/vgen/models`. A relative `XDG_DATA_HOME` is ignored,
/// as the XDG specification says.
fn user_data_models() -> Option<PathBuf> {
    let xdg = std::env::var_os("XDG_DATA_HOME").map(PathBuf::from).filter(|p| p.is_absolute());
    let base = xdg.or_else(|| {
        std::env::var_os("HOME").map(PathBuf::from).filter(|p| p.is_absolute()).map(|h| h.join(".local/share"))
    })?;
    Some(base.join("vgen/models"))
}

/// The file this code was loaded from: the `vgen` executable, `libvgen.so`, or the Python extension. `dladdr`
/// names the shared object that holds a function of ours; for code linked into the executable it may name the
/// program as it was started, so the executable's own path (`/proc/self/exe`) is used then.
pub fn binary_holding_vgen() -> Option<PathBuf> {
    // SAFETY: Dl_info is plain data (pointers and integers); all zeroes is a valid value.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    let marker = binary_holding_vgen as *const () as *const libc::c_void;
    // SAFETY: dladdr only reads the loader's tables and fills `info`; the strings it points to live as long as the
    // object stays loaded, and we copy the one we use at once.
    let found = unsafe { libc::dladdr(marker, &mut info) } != 0 && !info.dli_fname.is_null();
    if found {
        // SAFETY: non-NULL and NUL-terminated, as dladdr promises.
        let name = unsafe { std::ffi::CStr::from_ptr(info.dli_fname) };
        let path = PathBuf::from(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(name.to_bytes()));
        if path.is_absolute() {
            if let Ok(p) = path.canonicalize() {
                return Some(p);
            }
        }
    }
    std::env::current_exe().ok().and_then(|p| p.canonicalize().ok())
}

/// Removes `..` and `.` components without touching the file system (the folder may not exist).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_order_is_environment_user_package_prefix_source() {
        let p = SearchPath::from_parts(
            Some(std::ffi::OsStr::new("/a:/b")),
            Some(Path::new("/home/u/.local/share/vgen/models")),
            Some(Path::new("/opt/site/vgen/_vgen.abi3.so")),
            Path::new("/src/core/../models"),
        );
        let got: Vec<(&str, Origin)> = p.roots().iter().map(|r| (r.path.to_str().unwrap(), r.origin)).collect();
        assert_eq!(
            got,
            [
                ("/a", Origin::Environment),
                ("/b", Origin::Environment),
                ("/home/u/.local/share/vgen/models", Origin::UserData),
                ("/opt/site/vgen/models", Origin::Package),
                ("/opt/site/share/vgen/models", Origin::InstallPrefix),
                ("/src/models", Origin::SourceTree),
            ]
        );
    }

    #[test]
    fn an_installed_binary_looks_in_its_prefix() {
        for binary in ["/usr/local/bin/vgen", "/usr/local/lib/libvgen.so"] {
            let p = SearchPath::from_parts(None, None, Some(Path::new(binary)), Path::new("/src/models"));
            assert_eq!(p.roots()[0].path, Path::new("/usr/local/share/vgen/models"), "{binary}");
            assert_eq!(p.roots()[0].origin, Origin::InstallPrefix);
        }
    }

    #[test]
    fn the_running_binary_is_found() {
        let binary = binary_holding_vgen().expect("a path");
        assert!(binary.is_absolute() && binary.is_file(), "{}", binary.display());
    }
}
