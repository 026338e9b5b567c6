//! Encoding the documents the product writes. A document that cannot be
//! encoded is an error that returns its delivery for retry, never a `null`
//! or an empty string published in its place.

use std::sync::Arc;

use serde::Serialize;

/// A document could not be encoded as JSON.
#[derive(Debug, Clone, thiserror::Error)]
#[error("a document could not be encoded as JSON: {0}")]
pub struct EncodeError(#[source] Arc<serde_json::Error>);

impl From<serde_json::Error> for EncodeError {
    fn from(e: serde_json::Error) -> Self {
        Self(Arc::new(e))
    }
}

/// `doc` as a JSON value.
pub fn to_value<T: Serialize + ?Sized>(doc: &T) -> Result<serde_json::Value, EncodeError> {
    Ok(serde_json::to_value(doc)?)
}

/// `doc` as JSON text.
pub fn to_string<T: Serialize + ?Sized>(doc: &T) -> Result<String, EncodeError> {
    Ok(serde_json::to_string(doc)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A document whose serialiser fails, as one with a non-string map key
    /// does.
    struct Unencodable;

    impl Serialize for Unencodable {
        fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            Err(serde::ser::Error::custom("no JSON form"))
        }
    }

    #[test]
    fn a_document_that_cannot_be_encoded_is_an_error_not_null() {
        let e = to_value(&Unencodable).unwrap_err();
        assert!(e.to_string().contains("no JSON form"), "{e}");
        assert!(std::error::Error::source(&e).is_some(), "the cause is kept");
        assert!(to_string(&Unencodable).is_err());
        let mut keyed = std::collections::HashMap::new();
        keyed.insert((1, 2), "a tuple key has no JSON form");
        assert!(to_value(&keyed).is_err());
    }
}
