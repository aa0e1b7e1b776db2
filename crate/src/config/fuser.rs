//! FastComposer's fuser config.

use serde::Deserialize;

/// `{"embed_dim": D}`; 768 for SD1.5.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
pub struct FuserConfig {
    pub embed_dim: usize,
}

impl Default for FuserConfig {
    fn default() -> Self {
        Self { embed_dim: 768 }
    }
}
