//! The errors a configuration is refused with: unreadable file, TOML or schema error, and the
//! list of values that fail validation, each naming file, line and field. Builds none of them.

use std::path::PathBuf;

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not fit the schema.
    #[error("{path}:{line}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Line of the problem, from 1 (0 when unknown).
        line: usize,
        /// What is wrong, on one line. When the problem is in a value or key, it starts with the
        /// dotted field, e.g. `fetch.fragment_timeout_ms: invalid type: ...`.
        message: String,
    },
    /// Values that parse but are not acceptable: every problem, each on its own line, in the
    /// order of the file.
    #[error("{}", .problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid {
        /// Each problem found.
        problems: Vec<Invalid>,
    },
}

/// One unacceptable value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}:{line}: {field}: {message}")]
pub struct Invalid {
    /// The file, or where the values came from when there is none (`<config>` from
    /// [`Config::validate`](super::Config::validate)).
    pub path: String,
    /// Line of the field, or 0 when it is not in the file.
    pub line: usize,
    /// Dotted field name, with an index for list entries: `fetch.fragment_timeout_ms`,
    /// `fetch.hosts[2].url`, `esi.cookie_names[0]`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}
