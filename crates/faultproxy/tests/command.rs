//! The binary's command lines, as data: each line and the command it means, or a part of the
//! error it gives.

use std::time::Duration;

use switchboard_faultproxy::{Command, Fault};

fn check(line: &str, expected: Result<Command, &str>) {
    let parsed = line.parse::<Command>();
    match (parsed, expected) {
        (Ok(command), Ok(expected)) => assert_eq!(command, expected, "{line:?}"),
        (Err(error), Err(part)) => {
            assert!(error.to_string().contains(part), "{line:?}: {error}")
        }
        (parsed, expected) => panic!("{line:?}: got {parsed:?}, expected {expected:?}"),
    }
}

#[test]
fn each_command_line_means_one_command_or_says_what_the_commands_are() {
    let latency = |millis| Ok(Command::Set(Fault::Latency(Duration::from_millis(millis))));
    check("none", Ok(Command::Set(Fault::None)));
    check("latency 300", latency(300));
    check("  latency   0  ", latency(0));
    check("stall", Ok(Command::Set(Fault::Stall)));
    check("refuse", Ok(Command::Set(Fault::Refuse)));
    check("cut", Ok(Command::Cut));
    check("quit", Ok(Command::Quit));
    check("latency", Err("the commands are: none, latency MS"));
    check("latency 1.5", Err("whole milliseconds"));
    check("latency -3", Err("whole milliseconds"));
    check("stall now", Err("unknown command `stall now`"));
    check("STALL", Err("unknown command"));
    check("", Err("unknown command"));
}
