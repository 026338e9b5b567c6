//! A person's own sign-in, for a responder without an app secret: the
//! device code flow (the Graph adapter's `device_code`) gives a first access
//! token and a refresh token, held here for one run and never written
//! anywhere. The token provider takes the first token, then redeems the
//! refresh token (which Entra rotates) for each next one.

use std::sync::Mutex;
use std::time::Duration;

use secrecy::SecretString;

/// A user's tokens for one run.
pub struct DelegatedSession {
    first: Mutex<Option<(SecretString, Duration)>>,
    refresh: Mutex<Option<SecretString>>,
}

impl DelegatedSession {
    /// The sign-in's access token (valid for `lifetime`) and its refresh
    /// token, if Entra gave one.
    pub fn new(access: SecretString, lifetime: Duration, refresh: Option<SecretString>) -> Self {
        Self {
            first: Mutex::new(Some((access, lifetime))),
            refresh: Mutex::new(refresh),
        }
    }

    /// The sign-in's own access token, once.
    pub fn take_first(&self) -> Option<(SecretString, Duration)> {
        self.first.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// The refresh token to redeem next, if there is one.
    pub fn refresh_token(&self) -> Option<SecretString> {
        self.refresh.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Keeps the refresh token Entra gave with the last access token.
    pub fn rotate(&self, next: SecretString) {
        *self.refresh.lock().unwrap_or_else(|p| p.into_inner()) = Some(next);
    }
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    #[test]
    fn the_first_token_is_given_once_and_the_refresh_token_rotates() {
        let s = DelegatedSession::new("at-1".into(), Duration::from_secs(60), Some("rt-1".into()));
        assert_eq!(
            s.take_first().map(|(t, _)| t.expose_secret().to_owned()).as_deref(),
            Some("at-1")
        );
        assert!(s.take_first().is_none());
        assert_eq!(
            s.refresh_token().map(|t| t.expose_secret().to_owned()).as_deref(),
            Some("rt-1")
        );
        s.rotate("rt-2".into());
        assert_eq!(
            s.refresh_token().map(|t| t.expose_secret().to_owned()).as_deref(),
            Some("rt-2")
        );
    }
}
