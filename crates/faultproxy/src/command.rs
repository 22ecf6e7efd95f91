//! The commands the `switchboard-faultproxy` binary reads, one a line, on its standard input.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::Fault;

/// One line of the binary's input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// `none`, `latency MS`, `stall`, `refuse`.
    Set(Fault),
    /// `cut`: close every open connection.
    Cut,
    /// `quit`: stop the proxy.
    Quit,
}

/// A line that is not a command; its text says what the commands are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseCommandError(String);

impl fmt::Display for ParseCommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ParseCommandError {}

const COMMANDS: &str = "none, latency MS, stall, refuse, cut, quit";

impl FromStr for Command {
    type Err = ParseCommandError;

    fn from_str(line: &str) -> Result<Self, Self::Err> {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["none"] => Ok(Self::Set(Fault::None)),
            ["latency", millis] => millis
                .parse::<u64>()
                .map(|millis| Self::Set(Fault::Latency(Duration::from_millis(millis))))
                .map_err(|_| {
                    ParseCommandError(format!(
                        "latency takes whole milliseconds, like `latency 300`; got `{millis}`"
                    ))
                }),
            ["stall"] => Ok(Self::Set(Fault::Stall)),
            ["refuse"] => Ok(Self::Set(Fault::Refuse)),
            ["cut"] => Ok(Self::Cut),
            ["quit"] => Ok(Self::Quit),
            _ => Err(ParseCommandError(format!(
                "unknown command `{}`; the commands are: {COMMANDS}",
                line.trim()
            ))),
        }
    }
}
