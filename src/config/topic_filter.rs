//! MQTT topic filters (`+` and `#` wildcards): parsed and checked for `[[mqtt]] topics` and
//! `[[route]] topic_filter`, and matched against topics by the router.

use std::fmt;

use thiserror::Error;

/// A malformed MQTT topic filter.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FilterError {
    /// Empty filter.
    #[error("a topic filter must not be empty")]
    Empty,
    /// `#` somewhere other than the whole last level.
    #[error("`{0}`: `#` must be the last level on its own (e.g. \"sensors/#\")")]
    BadMultiLevel(String),
    /// `+` sharing a level with other characters.
    #[error("`{0}`: `+` must be a whole level on its own (e.g. \"sensors/+/reading\")")]
    BadSingleLevel(String),
}

/// One level of a topic filter.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    Exact(String),
    /// `+`
    Any,
    /// `#`: this level and every one below it.
    Rest,
}

/// A parsed MQTT topic filter with `+` and `#` wildcards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicFilter {
    text: String,
    levels: Vec<Level>,
}

impl TopicFilter {
    /// Parses a filter, rejecting misplaced wildcards as an MQTT broker would.
    pub fn parse(text: &str) -> Result<Self, FilterError> {
        if text.is_empty() {
            return Err(FilterError::Empty);
        }
        let parts: Vec<&str> = text.split('/').collect();
        let mut levels = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let level = match *part {
                "#" if i == parts.len() - 1 => Level::Rest,
                "+" => Level::Any,
                p if p.contains('#') => return Err(FilterError::BadMultiLevel(text.to_owned())),
                p if p.contains('+') => return Err(FilterError::BadSingleLevel(text.to_owned())),
                p => Level::Exact(p.to_owned()),
            };
            levels.push(level);
        }
        Ok(Self {
            text: text.to_owned(),
            levels,
        })
    }

    /// Whether `topic` matches. Wildcards at the first level do not match topics starting with
    /// `$` (MQTT 3.1.1 §4.7.2), so `#` never swallows `$SYS/…`.
    pub fn matches(&self, topic: &str) -> bool {
        if topic.starts_with('$') && !matches!(self.levels.first(), Some(Level::Exact(_))) {
            return false;
        }
        let mut parts = topic.split('/');
        for level in &self.levels {
            match level {
                Level::Rest => return true,
                Level::Any => {
                    if parts.next().is_none() {
                        return false;
                    }
                }
                Level::Exact(want) => match parts.next() {
                    Some(part) if part == want => {}
                    _ => return false,
                },
            }
        }
        parts.next().is_none()
    }
}

impl fmt::Display for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(text: &str) -> TopicFilter {
        TopicFilter::parse(text).unwrap()
    }

    #[test]
    fn wildcards_match_like_a_broker() {
        assert!(f("sensors/+/reading").matches("sensors/d1/reading"));
        assert!(!f("sensors/+/reading").matches("sensors/d1/x/reading"));
        assert!(!f("sensors/+/reading").matches("sensors/d1"));
        assert!(f("sensors/#").matches("sensors"));
        assert!(f("sensors/#").matches("sensors/a/b/c"));
        assert!(f("#").matches("a/b"));
        assert!(!f("#").matches("$SYS/broker/load"));
        assert!(f("+/+").matches("a/"));
        assert!(f("a/b").matches("a/b"));
        assert!(!f("a/b").matches("a/b/c"));
    }

    #[test]
    fn misplaced_wildcards_are_rejected() {
        assert!(matches!(
            TopicFilter::parse("a/#/b"),
            Err(FilterError::BadMultiLevel(_))
        ));
        assert!(matches!(
            TopicFilter::parse("a/b#"),
            Err(FilterError::BadMultiLevel(_))
        ));
        assert!(matches!(
            TopicFilter::parse("a/x+/b"),
            Err(FilterError::BadSingleLevel(_))
        ));
        assert_eq!(TopicFilter::parse(""), Err(FilterError::Empty));
    }
}
