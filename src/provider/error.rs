//! The provider error taxonomy: every failed provider call becomes a `ProviderError` with a
//! category that says how the rest of the system treats it (retry, wait, fail).
//!
//! Classification lives here and nowhere else; callers ask `category()`, `is_transient()` and
//! `retry_after()` instead of matching on messages or status codes.

use std::time::Duration;

/// How a failed provider call should be treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCategory {
    Transient,
    RateLimited,
    Permanent,
    Timeout,
    ResourceLimit,
}

impl ErrorCategory {
    pub fn as_str(&self) -> &'static str {
        match self {
            ErrorCategory::Transient => "transient",
            ErrorCategory::RateLimited => "rate_limited",
            ErrorCategory::Permanent => "permanent",
            ErrorCategory::Timeout => "timeout",
            ErrorCategory::ResourceLimit => "resource_limit",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "transient" => ErrorCategory::Transient,
            "rate_limited" => ErrorCategory::RateLimited,
            "permanent" => ErrorCategory::Permanent,
            "timeout" => ErrorCategory::Timeout,
            "resource_limit" => ErrorCategory::ResourceLimit,
            _ => return None,
        })
    }
}

/// A failed provider call.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ProviderError {
    category: ErrorCategory,
    message: String,
    status: Option<u16>,
    retry_after: Option<Duration>,
    /// The sandbox is known to be gone (killed, expired, never existed).
    sandbox_gone: bool,
}

impl ProviderError {
    pub fn new(category: ErrorCategory, message: impl Into<String>) -> Self {
        ProviderError {
            category,
            message: message.into(),
            status: None,
            retry_after: None,
            sandbox_gone: false,
        }
    }

    pub fn transient(message: impl Into<String>) -> Self {
        Self::new(ErrorCategory::Transient, message)
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        Self::new(ErrorCategory::Permanent, message)
    }

    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(ErrorCategory::Timeout, message)
    }

    pub fn resource_limit(message: impl Into<String>) -> Self {
        Self::new(ErrorCategory::ResourceLimit, message)
    }

    pub fn rate_limited(message: impl Into<String>, retry_after: Option<Duration>) -> Self {
        let mut e = Self::new(ErrorCategory::RateLimited, message);
        e.retry_after = retry_after;
        e
    }

    /// Classify an HTTP status from the provider; `body` may be JSON, HTML or plain text.
    pub fn from_status(status: u16, body: &str, retry_after: Option<Duration>) -> Self {
        let category = match status {
            429 => ErrorCategory::RateLimited,
            408 => ErrorCategory::Timeout,
            500..=599 => ErrorCategory::Transient,
            _ => ErrorCategory::Permanent,
        };
        let detail = summarize_body(body);
        let mut e = Self::new(category, format!("provider answered {status}: {detail}"));
        e.status = Some(status);
        if category == ErrorCategory::RateLimited {
            e.retry_after = retry_after;
        }
        e
    }

    pub fn with_sandbox_gone(mut self) -> Self {
        self.sandbox_gone = true;
        self
    }

    pub fn category(&self) -> ErrorCategory {
        self.category
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn status(&self) -> Option<u16> {
        self.status
    }

    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    pub fn is_transient(&self) -> bool {
        matches!(
            self.category,
            ErrorCategory::Transient | ErrorCategory::Timeout
        )
    }

    pub fn sandbox_gone(&self) -> bool {
        self.sandbox_gone
    }
}

/// A short, single-line description of an error body: the `message` field of a JSON body when
/// there is one, otherwise the text with markup stripped, capped in length.
pub fn summarize_body(body: &str) -> String {
    const MAX: usize = 200;
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(body) {
        for key in ["message", "error", "detail"] {
            if let Some(s) = v.get(key).and_then(|m| m.as_str()) {
                return truncate(s.trim(), MAX);
            }
        }
    }
    let mut text = String::with_capacity(body.len().min(MAX * 2));
    let mut in_tag = false;
    for c in body.chars() {
        match c {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                text.push(' ');
            }
            _ if !in_tag => text.push(c),
            _ => {}
        }
    }
    let collapsed = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if collapsed.is_empty() {
        "empty body".to_string()
    } else {
        truncate(&collapsed, MAX)
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_classify() {
        assert_eq!(
            ProviderError::from_status(503, "", None).category(),
            ErrorCategory::Transient
        );
        assert_eq!(
            ProviderError::from_status(502, "", None).category(),
            ErrorCategory::Transient
        );
        assert_eq!(
            ProviderError::from_status(404, "", None).category(),
            ErrorCategory::Permanent
        );
        assert_eq!(
            ProviderError::from_status(422, "", None).category(),
            ErrorCategory::Permanent
        );
        let e = ProviderError::from_status(429, "", Some(Duration::from_secs(7)));
        assert_eq!(e.category(), ErrorCategory::RateLimited);
        assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
    }

    #[test]
    fn bodies_of_any_shape_are_summarized() {
        assert_eq!(
            summarize_body(r#"{"code":500,"message":"placement failed"}"#),
            "placement failed"
        );
        assert_eq!(
            summarize_body("<html><body><h1>502 Bad Gateway</h1></body></html>"),
            "502 Bad Gateway"
        );
        assert_eq!(
            summarize_body("upstream connect error"),
            "upstream connect error"
        );
        assert_eq!(summarize_body(""), "empty body");
        assert!(summarize_body(&"é".repeat(500)).ends_with("..."));
    }
}
