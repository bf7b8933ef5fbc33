//! `[[token]]` tables of the server's config file, read at start and
//! again on SIGHUP.

use std::path::Path;

use serde::Deserialize;

use super::access::TokenRule;
use super::scope::Scope;
use super::token::TokenHash;

/// One `[[token]]` table as written: a name, the token's hash, scopes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenTable {
    name: String,
    hash: String,
    scopes: Vec<String>,
}

impl TokenTable {
    /// The rule the table describes.
    ///
    /// # Errors
    /// A message naming the file, the table and what is wrong.
    pub fn resolve(&self, file: &Path) -> Result<TokenRule, String> {
        let bad = |why: String| format!("{}: [[token]] {:?}: {why}", file.display(), self.name);
        let hash = TokenHash::parse(&self.hash).map_err(bad)?;
        if self.scopes.is_empty() {
            return Err(bad("scopes: give at least one".into()));
        }
        let scopes = self
            .scopes
            .iter()
            .map(|s| Scope::parse(s))
            .collect::<Result<Vec<_>, _>>()
            .map_err(bad)?;
        Ok(TokenRule {
            name: self.name.clone(),
            hash,
            scopes,
        })
    }
}

/// Only the token tables of a config file; other keys are the server's.
#[derive(Deserialize)]
struct TokensOnly {
    #[serde(default)]
    token: Vec<TokenTable>,
}

/// Reads the `[[token]]` tables of the config file at `path`.
///
/// # Errors
/// The file cannot be read or parsed, or a table is invalid.
pub fn read_token_rules(path: &Path) -> Result<Vec<TokenRule>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let parsed: TokensOnly =
        toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    parsed.token.iter().map(|t| t.resolve(path)).collect()
}
