//! Topic names and filters: validation and matching, pure and table-tested.

/// Why a topic name or filter is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("empty topic")]
    Empty,
    #[error("wildcard in a topic name")]
    WildcardInName,
    #[error("'#' must be the last level and alone in it")]
    BadMultiLevel,
    #[error("'+' must be alone in its level")]
    BadSingleLevel,
    #[error("malformed shared subscription")]
    BadShare,
}

/// A topic name a client may publish to.
pub fn validate_name(topic: &str) -> Result<(), TopicError> {
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    if topic.contains(['+', '#']) {
        return Err(TopicError::WildcardInName);
    }
    Ok(())
}

/// A topic filter a client may subscribe to (without `$share/`).
pub fn validate_filter(filter: &str) -> Result<(), TopicError> {
    if filter.is_empty() {
        return Err(TopicError::Empty);
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return Err(TopicError::BadMultiLevel);
        }
        if level.contains('+') && level != "+" {
            return Err(TopicError::BadSingleLevel);
        }
    }
    Ok(())
}

/// Split `$share/{group}/{filter}` into group and filter; `Ok(None)` for a
/// plain filter.
pub fn parse_shared(filter: &str) -> Result<Option<(&str, &str)>, TopicError> {
    let Some(rest) = filter.strip_prefix("$share/") else {
        return Ok(None);
    };
    let Some((group, inner)) = rest.split_once('/') else {
        return Err(TopicError::BadShare);
    };
    if group.is_empty() || group.contains(['+', '#']) || inner.is_empty() {
        return Err(TopicError::BadShare);
    }
    validate_filter(inner)?;
    Ok(Some((group, inner)))
}

/// Does `filter` (valid) match `topic` (valid name)? Topics starting with
/// `$` are not matched by a filter starting with a wildcard [MQTT-4.7.2-1].
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching_table() {
        let cases = [
            ("a/b/c", "a/b/c", true),
            ("a/+/c", "a/b/c", true),
            ("a/+/c", "a/b/d", false),
            ("a/#", "a", true), // "#" also matches the parent level
            ("a/#", "a/b/c", true),
            ("#", "a/b", true),
            ("+", "a", true),
            ("+", "a/b", false),
            ("+/+", "/a", true),
            ("/+", "/a", true),
            ("a/+", "a/", true),
            ("a/b", "a/b/c", false),
            ("a/b/c", "a/b", false),
            ("#", "$SYS/x", false),
            ("+/x", "$SYS/x", false),
            ("$SYS/#", "$SYS/x", true),
            ("$SYS/+", "$SYS/x", true),
            ("A", "a", false),
        ];
        for (f, t, want) in cases {
            assert_eq!(matches(f, t), want, "{f} vs {t}");
        }
        assert_eq!(cases.len(), 18);
    }

    #[test]
    fn validation_table() {
        assert!(validate_filter("a/+/#").is_ok());
        assert!(validate_filter("#").is_ok());
        assert!(validate_filter("/").is_ok());
        assert_eq!(validate_filter(""), Err(TopicError::Empty));
        assert_eq!(validate_filter("a/#/b"), Err(TopicError::BadMultiLevel));
        assert_eq!(validate_filter("a#"), Err(TopicError::BadMultiLevel));
        assert_eq!(validate_filter("a+/b"), Err(TopicError::BadSingleLevel));
        assert_eq!(validate_name("a/+"), Err(TopicError::WildcardInName));
        assert_eq!(validate_name(""), Err(TopicError::Empty));
        assert!(validate_name("a/b").is_ok());
        assert_eq!(parse_shared("$share/g/a/#"), Ok(Some(("g", "a/#"))));
        assert_eq!(parse_shared("a/b"), Ok(None));
        assert_eq!(parse_shared("$share/g"), Err(TopicError::BadShare));
        assert_eq!(parse_shared("$share//a"), Err(TopicError::BadShare));
        assert_eq!(parse_shared("$share/g+/a"), Err(TopicError::BadShare));
    }
}
