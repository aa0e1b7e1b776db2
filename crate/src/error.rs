//! One typed error for the whole crate. Every category maps to a JS `Error.name` in the
//! wasm API and to exit code 2 in the CLI; nothing reachable from user input panics.

use std::fmt;

/// What went wrong, by category. The message always names the offending thing
/// (a tensor key, an option, a file, a chunk).
#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    /// A bad argument, prompt, image or option.
    InvalidInput(String),
    /// Weights that are missing, unexpected, misshaped, corrupt or of an unknown type.
    Weights(String),
    /// The compute device failed or was lost.
    Device(String),
    /// The caller cancelled the operation.
    Cancelled,
    /// A file could not be read or written.
    Io(String),
}

impl Error {
    /// The category name used by the JS API (`err.name`).
    pub fn name(&self) -> &'static str {
        match self {
            Error::InvalidInput(_) => "InvalidInput",
            Error::Weights(_) => "WeightsError",
            Error::Device(_) => "DeviceError",
            Error::Cancelled => "Cancelled",
            Error::Io(_) => "IoError",
        }
    }

    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidInput(msg.into())
    }

    pub fn weights(msg: impl Into<String>) -> Self {
        Error::Weights(msg.into())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidInput(m) => write!(f, "invalid input: {m}"),
            Error::Weights(m) => write!(f, "weights error: {m}"),
            Error::Device(m) => write!(f, "device error: {m}"),
            Error::Cancelled => write!(f, "cancelled"),
            Error::Io(m) => write!(f, "I/O error: {m}"),
        }
    }
}

impl std::error::Error for Error {}

pub type Result<T, E = Error> = std::result::Result<T, E>;
