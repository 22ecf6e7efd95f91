//! The suites every backend must pass, for backend crates' tests (feature `testsuite`): the
//! storage suite for a [`Store`](crate::Store) and the analytics suite for an
//! [`AnalyticsStore`](crate::AnalyticsStore). They panic on the first case that fails.

mod analytics;
mod store;

pub use analytics::{analytics, call, sample_calls};
pub use store::{append, entry, finished, model_call, new_message, started, store};
