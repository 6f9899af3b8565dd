//! Token keys and the admin API key: merged from flags and environment over the file, and
//! checked together (development mode, or a token key and an API key; the JWKS URL's schedule).

use std::time::Duration;

use super::sources::{Args, FileConfig};
use super::{Config, ConfigError, invalid, pick};
use crate::auth::{AuthSettings, RefreshSchedule};

impl Config {
    /// Keys: none at all (development mode), or both a token key and an API key.
    pub(super) fn validate_keys(&self) -> Result<(), ConfigError> {
        if self.auth.jwt_secret.as_deref() == Some("") {
            return invalid("GATEWAY_JWT_SECRET is set but empty");
        }
        if self.api_key.as_deref() == Some("") {
            return invalid("GATEWAY_API_KEY is set but empty");
        }
        if self.auth.jwks_url.as_deref() == Some("") {
            return invalid("GATEWAY_JWKS_URL is set but empty");
        }
        if self.is_development() {
            return Ok(());
        }
        let has_jwt_key = self.auth.jwt_secret.is_some()
            || self.auth.jwt_public_key_file.is_some()
            || self.auth.jwks_file.is_some()
            || self.auth.jwks_url.is_some();
        if !has_jwt_key {
            return invalid(
                "GATEWAY_API_KEY is set but no token key: set GATEWAY_JWT_SECRET, \
                 GATEWAY_JWT_PUBLIC_KEY_FILE, GATEWAY_JWKS_FILE or GATEWAY_JWKS_URL",
            );
        }
        if self.api_key.is_none() {
            return invalid(
                "a token key is set but GATEWAY_API_KEY is not: the admin API needs a key",
            );
        }
        Ok(())
    }

    /// The JWKS URL is http or https, and its refresh intervals are positive and in order.
    pub(super) fn validate_jwks_url(&self) -> Result<(), ConfigError> {
        let RefreshSchedule {
            interval,
            min_interval,
        } = self.auth.jwks_refresh;
        if interval.is_zero() {
            return invalid("GATEWAY_JWKS_REFRESH_INTERVAL must be more than 0s");
        }
        if min_interval.is_zero() {
            return invalid("GATEWAY_JWKS_MIN_REFRESH_INTERVAL must be more than 0s");
        }
        if min_interval > interval {
            return invalid(format!(
                "GATEWAY_JWKS_MIN_REFRESH_INTERVAL ({}) must not be longer than \
                 GATEWAY_JWKS_REFRESH_INTERVAL ({})",
                humantime::format_duration(min_interval),
                humantime::format_duration(interval)
            ));
        }
        let Some(url) = &self.auth.jwks_url else {
            return Ok(());
        };
        match reqwest::Url::parse(url) {
            Ok(parsed) if matches!(parsed.scheme(), "http" | "https") && parsed.has_host() => {
                Ok(())
            }
            Ok(parsed) => invalid(format!(
                "GATEWAY_JWKS_URL must be an http:// or https:// URL with a host, got a {}: URL",
                parsed.scheme()
            )),
            Err(error) => invalid(format!(
                "GATEWAY_JWKS_URL is not a URL ({error}); expected e.g. \
                 https://login.example.com/.well-known/jwks.json"
            )),
        }
    }
}

/// Token verification settings from flags and environment over the file (the secret only
/// from flags and environment).
pub(super) fn auth_settings(args: &Args, file: &FileConfig) -> AuthSettings {
    AuthSettings {
        jwt_secret: args.jwt_secret.clone(),
        jwt_public_key_file: args
            .jwt_public_key_file
            .clone()
            .or(file.jwt_public_key_file.clone()),
        jwks_file: args.jwks_file.clone().or(file.jwks_file.clone()),
        jwks_url: args.jwks_url.clone().or(file.jwks_url.clone()),
        jwks_refresh: jwks_refresh(args, file),
        audience: args.jwt_audience.clone().or(file.jwt_audience.clone()),
        issuer: args.jwt_issuer.clone().or(file.jwt_issuer.clone()),
        leeway: args
            .jwt_leeway
            .or(file.jwt_leeway)
            .unwrap_or(Duration::from_secs(5)),
    }
}

/// When the JWKS URL is fetched again, from flags and environment over the file.
fn jwks_refresh(args: &Args, file: &FileConfig) -> RefreshSchedule {
    let default = RefreshSchedule::default();
    RefreshSchedule {
        interval: pick(
            args.jwks_refresh_interval,
            file.jwks_refresh_interval,
            default.interval,
        ),
        min_interval: pick(
            args.jwks_min_refresh_interval,
            file.jwks_min_refresh_interval,
            default.min_interval,
        ),
    }
}
