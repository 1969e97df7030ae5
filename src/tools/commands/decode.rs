//! `fleetgate decode FILE...`: one JSON line per captured websocket message.

use std::io::{Read, Write};
use std::path::Path;

use serde_json::json;

use crate::wire::{decode_standalone, json::RecordLine, FrameError};

/// Why one input produced no record line.
#[derive(Debug, thiserror::Error)]
pub enum DecodeFileError {
    /// The file (or stdin) could not be read.
    #[error("cannot read: {0}")]
    Io(#[from] std::io::Error),
    /// The bytes are not a usable frame.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The record could not be rendered as JSON.
    #[error("cannot render as JSON: {0}")]
    Json(#[from] serde_json::Error),
}

impl DecodeFileError {
    fn kind(&self) -> &'static str {
        match self {
            DecodeFileError::Io(_) => "unreadable",
            DecodeFileError::Frame(e) => e.kind(),
            DecodeFileError::Json(_) => "unrenderable",
        }
    }
}

/// Reads `name` (`-` is stdin) and renders its record line.
pub fn decode_one(name: &str) -> Result<String, DecodeFileError> {
    let bytes = if name == "-" {
        let mut buf = Vec::new();
        std::io::stdin().lock().read_to_end(&mut buf)?;
        buf
    } else {
        std::fs::read(Path::new(name))?
    };
    let record = decode_standalone(&bytes, 0)?;
    Ok(serde_json::to_string(&RecordLine::new(&record))?)
}

/// Decodes every input, writing one line each to `out`. Returns how many inputs failed; the
/// others are still decoded.
pub fn run(inputs: &[String], out: &mut impl Write) -> std::io::Result<usize> {
    let mut failed = 0;
    for name in inputs {
        match decode_one(name) {
            Ok(line) => writeln!(out, "{line}")?,
            Err(e) => {
                failed += 1;
                let line = json!({"file": name, "error": e.kind(), "detail": e.to_string()});
                writeln!(out, "{line}")?;
            }
        }
    }
    out.flush()?;
    Ok(failed)
}
