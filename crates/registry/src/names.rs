//! Validation of user-supplied names and parsing of model references (`name@selector`).
//! Owns the rules that keep names out of path traversal; touches no storage.

use crate::error::{RegistryError, Result};

/// Stages with a meaning of their own. Custom stages are any other valid stage name.
pub const PRODUCTION: &str = "production";
pub const STAGING: &str = "staging";
pub const ARCHIVED: &str = "archived";

fn invalid(name: &str, reason: &str) -> RegistryError {
    RegistryError::InvalidName {
        name: name.to_string(),
        reason: reason.to_string(),
    }
}

/// A model name: 1..=128 of `[A-Za-z0-9._-]`, starting with a letter or digit, no `..`.
pub fn validate_model_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 128 {
        return Err(invalid(name, "must be 1 to 128 characters"));
    }
    if !name.chars().next().unwrap().is_ascii_alphanumeric() {
        return Err(invalid(name, "must start with a letter or digit"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(invalid(
            name,
            &format!("character {c:?} not allowed (use letters, digits, '.', '_', '-')"),
        ));
    }
    if name.contains("..") {
        return Err(invalid(name, "must not contain '..'"));
    }
    Ok(())
}

/// A stage, alias or tag: 1..=64 of `[a-z0-9_-]` (lowercased), starting with a letter,
/// and not `latest` (which always means the newest version).
pub fn validate_label(label: &str) -> Result<()> {
    if label.is_empty() || label.len() > 64 {
        return Err(invalid(label, "must be 1 to 64 characters"));
    }
    if !label.chars().next().unwrap().is_ascii_lowercase() {
        return Err(invalid(label, "must start with a lowercase letter"));
    }
    if !label
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
    {
        return Err(invalid(label, "use lowercase letters, digits, '_' and '-'"));
    }
    if label == "latest" {
        return Err(invalid(
            label,
            "'latest' is reserved for the newest version",
        ));
    }
    Ok(())
}

/// A file's path inside a model version: relative, `/`-separated, each component of
/// `[A-Za-z0-9._-]` not starting with '.', at most 4 levels and 255 bytes.
pub fn validate_file_path(path: &str) -> Result<()> {
    if path.is_empty() || path.len() > 255 {
        return Err(invalid(path, "file path must be 1 to 255 bytes"));
    }
    let parts: Vec<&str> = path.split('/').collect();
    if parts.len() > 4 {
        return Err(invalid(path, "file path is nested deeper than 4 levels"));
    }
    for p in parts {
        if p.is_empty() || p == "." || p == ".." || p.starts_with('.') {
            return Err(invalid(
                path,
                "file path components must be non-empty and must not start with '.'",
            ));
        }
        if !p
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err(invalid(
                path,
                "file names may use letters, digits, '.', '_', '-'",
            ));
        }
    }
    Ok(())
}

/// What follows the `@` in a reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// No selector: the production version if there is one, else the newest.
    Default,
    /// `@latest`: the newest version.
    Latest,
    /// `@3`: version 3.
    Version(u32),
    /// `@production`, `@staging`, a custom stage or an alias.
    Label(String),
}

/// A parsed model reference such as `gemma3-270m@production` or `my-model@3`.
///
/// ```
/// use hangar_registry::names::{ModelRef, Selector};
/// let r: ModelRef = "gemma3-270m@2".parse().unwrap();
/// assert_eq!(r.name, "gemma3-270m");
/// assert_eq!(r.selector, Selector::Version(2));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelRef {
    pub name: String,
    pub selector: Selector,
}

impl std::str::FromStr for ModelRef {
    type Err = RegistryError;
    fn from_str(s: &str) -> Result<Self> {
        let (name, sel) = match s.split_once('@') {
            Some((n, sel)) => (n, Some(sel)),
            None => (s, None),
        };
        validate_model_name(name)?;
        let selector = match sel {
            None => Selector::Default,
            Some("latest") => Selector::Latest,
            Some(v) if !v.is_empty() && v.chars().all(|c| c.is_ascii_digit()) => {
                let n: u32 = v
                    .parse()
                    .map_err(|_| invalid(s, "version number out of range"))?;
                if n == 0 {
                    return Err(invalid(s, "versions are numbered from 1"));
                }
                Selector::Version(n)
            }
            Some(label) => {
                let label = label.strip_prefix('v').filter(|r| r.parse::<u32>().is_ok());
                match label {
                    Some(num) => Selector::Version(num.parse().unwrap()),
                    None => {
                        let l = sel.unwrap();
                        validate_label(l)?;
                        Selector::Label(l.to_string())
                    }
                }
            }
        };
        Ok(ModelRef {
            name: name.to_string(),
            selector,
        })
    }
}

impl std::fmt::Display for ModelRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.selector {
            Selector::Default => write!(f, "{}", self.name),
            Selector::Latest => write!(f, "{}@latest", self.name),
            Selector::Version(v) => write!(f, "{}@{v}", self.name),
            Selector::Label(l) => write!(f, "{}@{l}", self.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_traversal_in_model_names() {
        for bad in ["../etc", "a/b", "..", ".hidden", "a..b", "", "x y", "a\\b"] {
            assert!(validate_model_name(bad).is_err(), "{bad}");
        }
        validate_model_name("gemma3-270m").unwrap();
        validate_model_name("Qwen2.5-0.5B_it").unwrap();
    }

    #[test]
    fn rejects_traversal_in_file_paths() {
        for bad in [
            "../x",
            "/etc/passwd",
            "a/../b",
            "a//b",
            ".git/config",
            "a\\..\\b",
            "",
        ] {
            assert!(validate_file_path(bad).is_err(), "{bad}");
        }
        validate_file_path("model.gguf").unwrap();
        validate_file_path("tokenizer/tokenizer.json").unwrap();
    }

    #[test]
    fn parses_references() {
        let r: ModelRef = "m@production".parse().unwrap();
        assert_eq!(r.selector, Selector::Label("production".into()));
        let r: ModelRef = "m@v7".parse().unwrap();
        assert_eq!(r.selector, Selector::Version(7));
        let r: ModelRef = "m".parse().unwrap();
        assert_eq!(r.selector, Selector::Default);
        assert!("m@0".parse::<ModelRef>().is_err());
        assert!("m@../x".parse::<ModelRef>().is_err());
    }
}
