//! AWS as the issuer: STS `GetWebIdentityToken` (IAM outbound identity
//! federation) signs a JWT for the function's execution role, which the
//! app registration trusts as a federated credential (issuer
//! `https://<id>.tokens.sts.global.api.aws`, subject the role's ARN).

use std::time::SystemTime;

use aws_sdk_sts::error::ProvideErrorMetadata;
use tokio::sync::OnceCell;

use super::federation::{Assertion, AssertionSource, FederationError};
use crate::core::BoxFuture;

const ISSUER: &str = "ATTEST_FEDERATION=aws";

/// How long the web identity token lives: STS's default, and the shortest
/// that comfortably covers the token request (STS accepts 60..3600).
pub const TOKEN_SECONDS: i32 = 300;

/// The signing algorithm asked for: the one Entra tests.
pub const SIGNING_ALGORITHM: &str = "RS256";

/// Web identity tokens from STS, with the host's client or one built from
/// the environment on first use (`AWS_ENDPOINT_URL_STS` and the usual
/// `AWS_*` settings apply).
pub struct AwsWebIdentity {
    client: OnceCell<aws_sdk_sts::Client>,
}

impl AwsWebIdentity {
    /// A source using `client`, or the environment's when `None`.
    pub fn new(client: Option<aws_sdk_sts::Client>) -> Self {
        Self {
            client: match client {
                Some(c) => OnceCell::new_with(Some(c)),
                None => OnceCell::new(),
            },
        }
    }

    async fn client(&self) -> &aws_sdk_sts::Client {
        self.client
            .get_or_init(|| async {
                let cfg = aws_config::defaults(aws_config::BehaviorVersion::latest())
                    .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(3))
                    .load()
                    .await;
                aws_sdk_sts::Client::new(&cfg)
            })
            .await
    }
}

/// What an STS refusal means for the deployment.
fn refused(code: Option<&str>, disabled: bool) -> FederationError {
    if disabled {
        return FederationError::Configuration {
            setting: ISSUER,
            what: "outbound identity federation is not enabled for this AWS account \
                   (OutboundWebIdentityFederationDisabledException); enable it once with \
                   `aws iam enable-outbound-web-identity-federation`"
                .into(),
        };
    }
    match code {
        Some(c @ ("AccessDenied" | "AccessDeniedException" | "UnauthorizedOperation")) => {
            FederationError::Configuration {
                setting: ISSUER,
                what: format!(
                    "STS refused GetWebIdentityToken ({c}); the execution role needs sts:GetWebIdentityToken \
                     for this audience and RS256"
                ),
            }
        }
        Some(c @ ("ValidationError" | "InvalidParameterValue" | "InvalidParameterCombination")) => {
            FederationError::Configuration {
                setting: ISSUER,
                what: format!("STS refused the request as invalid ({c})"),
            }
        }
        other => FederationError::Unavailable {
            issuer: ISSUER,
            what: format!(
                "STS GetWebIdentityToken failed ({})",
                crate::core::text::bounded(other.unwrap_or("no error code"), 80)
            ),
        },
    }
}

impl AssertionSource for AwsWebIdentity {
    fn assertion<'a>(&'a self, audience: &'a str) -> BoxFuture<'a, Result<Assertion, FederationError>> {
        Box::pin(async move {
            let out = self
                .client()
                .await
                .get_web_identity_token()
                .audience(audience)
                .signing_algorithm(SIGNING_ALGORITHM)
                .duration_seconds(TOKEN_SECONDS)
                .send()
                .await
                .map_err(|e| match e.as_service_error() {
                    Some(s) => refused(s.code(), s.is_outbound_web_identity_federation_disabled_exception()),
                    None => FederationError::Unavailable {
                        issuer: ISSUER,
                        what: "STS did not answer".into(),
                    },
                })?;
            let token = out.web_identity_token.ok_or_else(|| FederationError::Unavailable {
                issuer: ISSUER,
                what: "STS answered without a WebIdentityToken".into(),
            })?;
            Assertion::checked(token, ISSUER, SystemTime::now())
        })
    }

    fn describe(&self) -> &'static str {
        ISSUER
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_that_need_a_deployment_change_are_configuration_errors() {
        let disabled = refused(Some("OutboundWebIdentityFederationDisabledException"), true);
        assert!(disabled.is_configuration());
        assert!(disabled.to_string().contains("enable-outbound-web-identity-federation"));
        assert!(refused(Some("AccessDenied"), false).is_configuration());
        assert!(!refused(Some("Throttling"), false).is_configuration());
        assert!(!refused(None, false).is_configuration());
    }
}
