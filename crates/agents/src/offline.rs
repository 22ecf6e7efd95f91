//! The offline language model: deterministic, no network. It classifies requests by keywords
//! when asked for JSON, and otherwise writes out the draft it is given, piece by piece. It never
//! invents facts: every figure in its answers comes from the prompt.

use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use serde_json::json;
use switchboard_engine::{ChatRole, Delta, DeltaStream, Model, ModelError, ModelRequest, ModelResponse, Usage};

use crate::triage::Category;

/// The deterministic default model.
#[derive(Debug, Clone, Default)]
pub struct OfflineModel {
    latency: Duration,
}

impl OfflineModel {
    /// A model that adds `latency` to every call (for demos and load tests).
    pub fn new(latency: Duration) -> Self {
        Self { latency }
    }

    fn answer(request: &ModelRequest) -> String {
        let last_user = request
            .messages
            .iter()
            .rev()
            .find(|m| m.role == ChatRole::User)
            .map(|m| m.content.as_str())
            .unwrap_or_default();
        if request.json {
            json!({ "category": Category::of(last_user).as_str() }).to_string()
        } else {
            last_user.to_owned()
        }
    }
}

/// Rough token count: words and punctuation runs, as the offline model has no tokenizer.
fn tokens(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

/// Splits text into pieces of a few words, keeping the spaces, for streaming.
fn pieces(text: &str) -> Vec<String> {
    let mut pieces = Vec::new();
    let mut current = String::new();
    let mut words = 0;
    for part in text.split_inclusive(char::is_whitespace) {
        current.push_str(part);
        if part.ends_with(char::is_whitespace) {
            words += 1;
        }
        if words == 4 || part.ends_with('\n') {
            pieces.push(std::mem::take(&mut current));
            words = 0;
        }
    }
    if !current.is_empty() {
        pieces.push(current);
    }
    pieces
}

#[async_trait]
impl Model for OfflineModel {
    fn name(&self) -> &str {
        "offline"
    }

    fn cost_usd(&self, _usage: Usage) -> Option<f64> {
        Some(0.0)
    }

    async fn complete(&self, request: ModelRequest) -> Result<ModelResponse, ModelError> {
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        let text = Self::answer(&request);
        Ok(ModelResponse {
            usage: usage(&request, &text),
            text,
        })
    }

    async fn stream(&self, request: ModelRequest) -> Result<DeltaStream, ModelError> {
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        let text = Self::answer(&request);
        let usage = usage(&request, &text);
        let deltas = pieces(&text)
            .into_iter()
            .map(Delta::Text)
            .chain([Delta::Usage(usage)])
            .map(Ok);
        Ok(futures_util::stream::iter(deltas).boxed())
    }
}

fn usage(request: &ModelRequest, text: &str) -> Usage {
    Usage {
        input_tokens: request.messages.iter().map(|m| tokens(&m.content)).sum(),
        output_tokens: tokens(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streamed_pieces_add_up_to_the_text() {
        for text in [
            "",
            "one",
            "a b c d e f g h i",
            "line one\nline two\n\n- item\n",
            "trailing space ",
        ] {
            assert_eq!(pieces(text).concat(), text);
        }
    }
}
