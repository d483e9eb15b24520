//! The priority lanes: a leaf both the job envelope and the NATS names (a lane is a subject
//! token) build on.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Priority lane of a job. Workers take from higher lanes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Lane {
    High,
    #[default]
    Normal,
    Low,
}

impl Lane {
    pub const ALL: [Lane; 3] = [Lane::High, Lane::Normal, Lane::Low];

    /// The lane's place in [`Lane::ALL`], highest first: an index for per-lane arrays.
    pub fn index(self) -> usize {
        match self {
            Lane::High => 0,
            Lane::Normal => 1,
            Lane::Low => 2,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Lane::High => "high",
            Lane::Normal => "normal",
            Lane::Low => "low",
        }
    }
}
