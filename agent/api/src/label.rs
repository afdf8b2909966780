//! Node labels (`netctl node update --label-add KEY=VALUE`): the rules
//! `netctl` checks before it sends and the managers check again.
//!
//! A key is 1 to 128 of `[A-Za-z0-9._/-]`, starting with a letter or digit
//! (Docker's reverse-DNS style, `com.example.rack`); a value is up to 256
//! printable characters; a node holds up to 64 labels.

pub const MAX_KEY: usize = 128;
pub const MAX_VALUE: usize = 256;
pub const MAX_LABELS: usize = 64;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    #[error("label key {0:?} is not valid: use 1 to {MAX_KEY} letters, digits, '.', '_', '/' or '-', starting with a letter or digit")]
    Key(String),
    #[error("label {0}: its value is not valid: use up to {MAX_VALUE} printable characters")]
    Value(String),
    #[error("--label-add {text:?}: {error}")]
    Argument {
        text: String,
        error: Box<LabelError>,
    },
}

/// Whether `key=value` may be a node label.
pub fn check(key: &str, value: &str) -> Result<(), LabelError> {
    let key_ok = (1..=MAX_KEY).contains(&key.len())
        && key
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'/' | b'-'));
    if !key_ok {
        return Err(LabelError::Key(key.to_owned()));
    }
    if value.chars().count() > MAX_VALUE || value.chars().any(char::is_control) {
        return Err(LabelError::Value(key.to_owned()));
    }
    Ok(())
}

/// `KEY=VALUE`, or `KEY` alone for an empty value (as Docker takes it).
pub fn parse(text: &str) -> Result<(String, String), LabelError> {
    let (key, value) = text.split_once('=').unwrap_or((text, ""));
    check(key, value).map_err(|error| LabelError::Argument {
        text: text.to_owned(),
        error: Box::new(error),
    })?;
    Ok((key.to_owned(), value.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_checked_and_parsed_like_docker() {
        assert_eq!(
            parse("com.example.rack=r1"),
            Ok(("com.example.rack".into(), "r1".into()))
        );
        assert_eq!(parse("ssd"), Ok(("ssd".into(), "".into())));
        assert_eq!(parse("k=a=b"), Ok(("k".into(), "a=b".into())));
        for bad in ["=v", "", "-k=v", "a b=c", "k=\u{7}", &"k".repeat(129)] {
            let error = parse(bad).expect_err(bad).to_string();
            assert!(!error.contains('\n'), "{error}");
            assert!(error.contains("--label-add"), "{error}");
        }
    }
}
