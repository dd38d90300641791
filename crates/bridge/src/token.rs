//! Where the agent token the bridge adds comes from: a file, or a token obtained by OIDC
//! client credentials and kept fresh by [`credproxy_identity::RefreshingToken`] (the same
//! refresher the proxy uses for listener-bound identity).

use std::path::PathBuf;
use std::sync::Arc;

use credproxy_identity::RefreshingToken;

/// Why no token can be added right now (shown to the agent in a 503: no secret in it).
#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenUnavailable {
    #[error("cannot read the token file {path}: {error}")]
    File { path: PathBuf, error: String },
    #[error("the token file {0} is empty")]
    EmptyFile(PathBuf),
    #[error("no valid agent token yet: {0}")]
    Oidc(#[from] credproxy_identity::TokenUnavailable),
}

/// A source of agent tokens. Cheap to clone.
#[derive(Clone, Debug)]
pub enum TokenSource {
    /// Read the file for every connection, so an external refresher can replace it.
    File(PathBuf),
    Oidc(Arc<RefreshingToken>),
}

impl TokenSource {
    /// The token to add now.
    pub fn current(&self) -> Result<String, TokenUnavailable> {
        match self {
            TokenSource::File(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| TokenUnavailable::File {
                    path: path.clone(),
                    error: e.to_string(),
                })?;
                let t = text.trim();
                if t.is_empty() {
                    Err(TokenUnavailable::EmptyFile(path.clone()))
                } else {
                    Ok(t.to_string())
                }
            }
            TokenSource::Oidc(o) => Ok(o.current()?.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_file_is_read_each_time() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        let src = TokenSource::File(p.clone());
        assert!(matches!(src.current(), Err(TokenUnavailable::File { .. })));
        std::fs::write(&p, "  \n").unwrap();
        assert!(matches!(src.current(), Err(TokenUnavailable::EmptyFile(_))));
        std::fs::write(&p, "abc\n").unwrap();
        assert_eq!(src.current().unwrap(), "abc");
        std::fs::write(&p, "def").unwrap();
        assert_eq!(src.current().unwrap(), "def");
    }
}
