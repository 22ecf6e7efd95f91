//! `switchboard chat`: signs in (dev-login by default), sends each line typed, and prints the
//! run as a live timeline (agents, steps, tools, timings), then the answer.

#![allow(clippy::print_stdout)]

use std::time::Instant;

use anyhow::bail;
use clap::Args;
use switchboard_protocol::{ClientFrame, Control, Event, EventPayload, ServerFrame, ThreadId, UserMessage};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::SignIn;

/// Options of `switchboard chat`.
#[derive(Debug, Clone, Args)]
pub struct ChatArgs {
    /// The server and how to sign in.
    #[command(flatten)]
    pub sign_in: SignIn,
}

/// What the timeline keeps between events of one run.
#[derive(Debug, Default)]
pub struct Timeline {
    depth: usize,
    answer: String,
}

impl Timeline {
    /// The line to print for an event (none for answer pieces, which are collected), and
    /// whether the run is over.
    pub fn line(&mut self, event: &Event, elapsed_ms: u128) -> (Option<String>, bool) {
        let indent = "  ".repeat(self.depth);
        let at = format!("{:>6.2}s", elapsed_ms as f64 / 1000.0);
        let agent = &event.agent_name;
        let line = match &event.payload {
            EventPayload::AgentStarted(started) => {
                self.depth += 1;
                let task = if started.task.is_empty() {
                    String::new()
                } else {
                    format!(": {}", started.task)
                };
                let task = if agent.as_str() == "supervisor" {
                    String::new()
                } else {
                    task
                };
                Some(format!("{at} {indent}▶ {agent}{task}"))
            }
            EventPayload::AgentThinking(thinking) => Some(format!("{at} {indent}  · {}", thinking.text)),
            EventPayload::ToolExecuting(call) => {
                Some(format!("{at} {indent}  ⚙ {} {}", call.tool_name, call.parameters))
            }
            EventPayload::ToolCompleted(done) if done.success => {
                Some(format!("{at} {indent}  ✓ {} ({} ms)", done.tool_name, done.duration_ms))
            }
            EventPayload::ToolCompleted(done) => Some(format!(
                "{at} {indent}  ✗ {} ({} ms): {}",
                done.tool_name,
                done.duration_ms,
                done.error.as_deref().unwrap_or("failed")
            )),
            EventPayload::PartialResult(piece) => {
                self.answer.push_str(&piece.delta);
                None
            }
            EventPayload::AgentError(error) => Some(format!("{at} {indent}  ! {}", error.message)),
            EventPayload::AgentCompleted(done) => {
                self.depth = self.depth.saturating_sub(1);
                let indent = "  ".repeat(self.depth);
                let mut line = format!(
                    "{at} {indent}■ {agent} {} in {} ms",
                    done.status.as_str(),
                    done.duration_ms
                );
                if let Some(timings) = done.timings.as_ref().filter(|_| done.is_final) {
                    let agents: Vec<String> = timings.agents.iter().map(|(a, ms)| format!("{a} {ms}")).collect();
                    line.push_str(&format!(
                        "\n         timings (ms): queue {}, store {}, model {}, tools {}, agents [{}], total {}",
                        timings.queue_ms,
                        timings.store_ms,
                        timings.model_ms,
                        timings.tools_ms,
                        agents.join(", "),
                        timings.total_ms
                    ));
                }
                for call in done.model_calls.iter().filter(|_| done.is_final) {
                    let cost = call
                        .cost_usd
                        .map_or_else(|| "unpriced".to_owned(), |c| format!("${c:.6}"));
                    line.push_str(&format!(
                        "\n         model call: {} by {}, {} in + {} out tokens, {cost}, {} ms{}",
                        call.model,
                        call.agent,
                        call.input_tokens,
                        call.output_tokens,
                        call.duration_ms,
                        if call.success { "" } else { ", failed" }
                    ));
                }
                Some(line)
            }
        };
        (line, event.is_final())
    }

    /// The answer collected from the run's pieces.
    pub fn take_answer(&mut self) -> String {
        std::mem::take(&mut self.answer)
    }
}

/// Runs the terminal client until end of input.
pub async fn run(args: ChatArgs) -> anyhow::Result<()> {
    let (client, session) = args.sign_in.session().await?;
    let mut socket = client.connect(&session.access_token, None).await?;
    println!(
        "Connected to {} as {}. Type a message and press Enter; Ctrl-D quits.",
        args.sign_in.server, session.user_id
    );
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut thread_id: Option<ThreadId> = None;
    while let Some(line) = lines.next_line().await? {
        let text = line.trim();
        if text.is_empty() {
            continue;
        }
        let frame = ClientFrame::UserMessage(UserMessage {
            text: text.to_owned(),
            thread_id: thread_id.clone(),
            client_message_id: None,
        });
        socket.send(&frame).await?;
        let started = Instant::now();
        let mut timeline = Timeline::default();
        let mut run_id = None;
        loop {
            let Some(frame) = socket.next_frame().await? else {
                bail!("the server closed the connection");
            };
            match frame {
                ServerFrame::Control(control) => match control.body {
                    Control::MessageAccepted(accepted) => {
                        thread_id = Some(accepted.thread_id.clone());
                        run_id = Some(accepted.run_id.clone());
                        println!(
                            "{:>6.2}s accepted: run {}",
                            started.elapsed().as_secs_f64(),
                            accepted.run_id
                        );
                    }
                    Control::Error(error) => {
                        println!("error ({}): {}", error.code.as_str(), error.message);
                        break;
                    }
                    _ => {}
                },
                ServerFrame::Event(event) if Some(&event.run_id) == run_id.as_ref() => {
                    let (line, done) = timeline.line(&event, started.elapsed().as_millis());
                    if let Some(line) = line {
                        println!("{line}");
                    }
                    if done {
                        let answer = timeline.take_answer();
                        if !answer.is_empty() {
                            println!("\n{answer}");
                        }
                        break;
                    }
                }
                ServerFrame::Event(_) => {}
            }
        }
    }
    socket.close().await.ok();
    Ok(())
}
