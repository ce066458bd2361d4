//! Repository and tag names as found on disk, validated before they become paths.

use std::fmt;
use std::path::PathBuf;

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
#[error("invalid {what} name {name:?}")]
pub struct NameError {
    pub what: &'static str,
    pub name: String,
}

/// One path component that cannot lead anywhere else: not empty, `.` or `..`, no `/`
/// and no NUL.
pub fn plain_component(c: &str) -> bool {
    !c.is_empty() && c != "." && c != ".." && !c.contains('/') && !c.contains('\0')
}

/// A repository name: one or more `/`-separated components, none starting with `_`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoName(String);

impl RepoName {
    pub fn new(name: &str) -> Result<Self, NameError> {
        let ok = !name.is_empty()
            && name
                .split('/')
                .all(|c| plain_component(c) && !c.starts_with('_'));
        if ok {
            Ok(RepoName(name.to_string()))
        } else {
            Err(NameError {
                what: "repository",
                name: name.into(),
            })
        }
    }

    /// `self/child`.
    pub fn child(&self, component: &str) -> Result<Self, NameError> {
        Self::new(&format!("{}/{component}", self.0))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn as_path(&self) -> PathBuf {
        PathBuf::from(&self.0)
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl serde::Serialize for RepoName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// A tag: one path component.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TagName(String);

impl TagName {
    pub fn new(name: &str) -> Result<Self, NameError> {
        if plain_component(name) {
            Ok(TagName(name.to_string()))
        } else {
            Err(NameError {
                what: "tag",
                name: name.into(),
            })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TagName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TagName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// One plain path component of a name the registry chooses (an upload id, a file inside
/// an upload, a temp file's name), validated before it becomes a path.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Component(String);

impl Component {
    pub fn new(name: &str) -> Result<Self, NameError> {
        if plain_component(name) {
            Ok(Component(name.to_string()))
        } else {
            Err(NameError {
                what: "path component",
                name: name.into(),
            })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_names_nest_and_refuse_underscore_components() {
        assert!(RepoName::new("team/app/web").is_ok());
        assert!(RepoName::new("a").unwrap().child("b").is_ok());
        for bad in [
            "",
            "/a",
            "a/",
            "a//b",
            "a/../b",
            "_uploads",
            "a/_manifests",
            ".",
            "a/.",
        ] {
            assert!(RepoName::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn tag_names_are_one_component() {
        assert!(TagName::new("v1.0").is_ok());
        for bad in ["", ".", "..", "a/b"] {
            assert!(TagName::new(bad).is_err(), "{bad:?}");
        }
    }
}
