//! `make demo`: placeholder until written.

use std::path::PathBuf;
use std::process::ExitCode;

pub fn run(_kproxy: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    anyhow::bail!("demo not written yet")
}
