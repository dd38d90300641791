//! Policy sources: the built-in default policy or the `*.rego` files of a directory.

use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::PolicyError;

/// The default policy and its unit tests, compiled into the binary so that credproxy has a
/// safe policy without any file on disk, and so that `credproxy policy init DIR` can write
/// out exactly what is being served.
const BUILTIN_FILES: &[(&str, &str)] = &[
    ("authz.rego", include_str!("../policy/authz.rego")),
    ("authz_test.rego", include_str!("../policy/authz_test.rego")),
];

/// The built-in default policy files as `(file name, text)`, for `credproxy policy init DIR`.
pub fn builtin_files() -> &'static [(&'static str, &'static str)] {
    BUILTIN_FILES
}

/// The text of one policy generation: file names and contents, sorted by name.
///
/// Test files (`*_test.rego`) are part of the source so that `credproxy policy test` can run
/// them, but [`crate::PolicyEngine::compile`] leaves them out: tests often define helper
/// rules, and an operator's typo in a test must not change what is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySource {
    /// `(file name, text)`, sorted by file name, names unique.
    pub files: Vec<(String, String)>,
}

impl PolicySource {
    /// Builds a source from in-memory files (sorted here; a later duplicate name replaces an
    /// earlier one).
    pub fn from_files(files: impl IntoIterator<Item = (String, String)>) -> PolicySource {
        let mut files: Vec<(String, String)> = files.into_iter().collect();
        // Stable sort, then keep the last of each name.
        files.sort_by(|a, b| a.0.cmp(&b.0));
        files.reverse();
        files.dedup_by(|later, earlier| later.0 == earlier.0);
        files.reverse();
        PolicySource { files }
    }

    /// The default policy shipped in the binary, with its tests.
    pub fn builtin() -> PolicySource {
        PolicySource::from_files(
            BUILTIN_FILES
                .iter()
                .map(|(name, text)| ((*name).to_owned(), (*text).to_owned())),
        )
    }

    /// Reads every `*.rego` file at the top level of `dir` (no recursion, hidden files
    /// skipped). Fails when a file cannot be read or is not UTF-8, and when no file other
    /// than `*_test.rego` is found: an empty policy directory is a configuration mistake,
    /// not a request to deny everything silently.
    pub fn load_dir(dir: &Path) -> Result<PolicySource, PolicyError> {
        let load_err = |file: &Path, source| PolicyError::Load {
            file: file.to_path_buf(),
            source,
        };
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| load_err(dir, e))? {
            let entry = entry.map_err(|e| load_err(dir, e))?;
            let path = entry.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if name.starts_with('.') || !name.ends_with(".rego") {
                continue;
            }
            // Follows symlinks on purpose: configuration management often links policy files.
            if !std::fs::metadata(&path)
                .map_err(|e| load_err(&path, e))?
                .is_file()
            {
                continue;
            }
            let text = std::fs::read_to_string(&path).map_err(|e| load_err(&path, e))?;
            files.push((name.to_owned(), text));
        }
        let source = PolicySource::from_files(files);
        if source.serving_files().next().is_none() {
            return Err(PolicyError::NoPolicies {
                dir: dir.to_path_buf(),
            });
        }
        Ok(source)
    }

    /// Hex SHA-256 over every file name and text (tests included), identifying the policy
    /// generation in logs and audit records. Computed on each call, so it always matches
    /// `files`.
    pub fn hash(&self) -> String {
        hash_files(&self.files)
    }

    /// The files compiled for serving: everything but `*_test.rego`.
    pub fn serving_files(&self) -> impl Iterator<Item = &(String, String)> {
        self.files.iter().filter(|(name, _)| !is_test_file(name))
    }
}

/// Whether `name` is a test file, which is loaded by `policy test` but never served.
pub(crate) fn is_test_file(name: &str) -> bool {
    name.ends_with("_test.rego")
}

/// Length-prefixes every part so that no two different file sets hash alike.
fn hash_files(files: &[(String, String)]) -> String {
    let mut hasher = Sha256::new();
    for (name, text) in files {
        for part in [name.as_bytes(), text.as_bytes()] {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part);
        }
    }
    hex::encode(hasher.finalize())
}
