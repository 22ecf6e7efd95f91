//! Shared by the load and cluster benchmarks: what `/proc` says of a process.

use anyhow::Context;

/// CPU time a process has used (user and system), in clock ticks of 10 ms.
pub(crate) fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The fields after the command name (which may hold spaces) in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("no command name")?
        .1
        .split_whitespace()
        .collect();
    let field = |n: usize| -> anyhow::Result<u64> { Ok(fields.get(n).context("short stat")?.parse()?) };
    Ok(field(11)? + field(12)?)
}
