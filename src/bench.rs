//! bench placeholder
pub fn main(_a: &crate::cli::BenchArgs) -> anyhow::Result<()> { Ok(()) }
