//! The inputs of `oauth1` definitions (RFC 5849, OAuth 1.0a three-legged; SPEC section 12):
//! the provider's three endpoints (`requestTokenUrl`, `authorizeUrl`, `accessTokenUrl`), the
//! consumer (`consumerKey`, `consumerSecret`) and how requests are signed (`signatureMethod`,
//! and `privateKey` for `RSA-SHA1`). An RSA key is parsed whenever it is written, so a
//! connection never holds one Latchkey cannot sign with; the key itself is never echoed.

use rsa::RsaPrivateKey;
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs8::DecodePrivateKey;
use rsa::traits::PublicKeyParts;

use super::*;

/// The input naming the signature method.
pub const SIGNATURE_METHOD_INPUT: &str = "signatureMethod";
/// The input holding the consumer secret (a `password`).
pub const CONSUMER_SECRET_INPUT: &str = "consumerSecret";
/// The longest PEM private key accepted, in bytes (an 8192-bit RSA key is about 6.4 KB).
const MAX_KEY_PEM: usize = 8_192;
/// The smallest RSA modulus accepted for `RSA-SHA1`, in bits.
const MIN_RSA_BITS: usize = 2_048;

/// How an OAuth 1.0a request is signed (RFC 5849 section 3.4; `HMAC-SHA256` is the common
/// extension of section 3.4.2 with SHA-256).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureMethod {
    HmacSha1,
    HmacSha256,
    /// RSASSA-PKCS1-v1_5 with SHA-1 under the consumer's RSA key (section 3.4.3); the
    /// consumer and token secrets play no part.
    RsaSha1,
    /// The secrets themselves (section 3.4.4): only over https.
    Plaintext,
}

impl SignatureMethod {
    /// The accepted `signatureMethod` values, the default first.
    pub const NAMES: [&'static str; 4] = ["HMAC-SHA1", "HMAC-SHA256", "RSA-SHA1", "PLAINTEXT"];

    /// The method of that `oauth_signature_method` name; `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "HMAC-SHA1" => Some(Self::HmacSha1),
            "HMAC-SHA256" => Some(Self::HmacSha256),
            "RSA-SHA1" => Some(Self::RsaSha1),
            "PLAINTEXT" => Some(Self::Plaintext),
            _ => None,
        }
    }

    /// Its `oauth_signature_method` name.
    pub fn name(self) -> &'static str {
        match self {
            Self::HmacSha1 => Self::NAMES[0],
            Self::HmacSha256 => Self::NAMES[1],
            Self::RsaSha1 => Self::NAMES[2],
            Self::Plaintext => Self::NAMES[3],
        }
    }

    /// The method an input value names: absent or empty is `HMAC-SHA1`.
    ///
    /// # Errors
    /// The field message for any other value.
    pub fn of_value(v: Option<&Value>) -> Result<Self, String> {
        match v {
            None | Some(Value::Null) => Ok(Self::HmacSha1),
            Some(Value::String(s)) if s.is_empty() => Ok(Self::HmacSha1),
            Some(v) => {
                v.as_str().and_then(Self::parse).ok_or_else(|| format!("must be one of {}", Self::NAMES.join(", ")))
            }
        }
    }
}

/// Parses the PEM RSA private key of `RSA-SHA1` (PKCS#1 `RSA PRIVATE KEY` or PKCS#8
/// `PRIVATE KEY`, at least 2048 bits).
///
/// # Errors
/// A message for the field, never the key or any part of it.
pub fn rsa_signing_key(pem: &str) -> Result<RsaPrivateKey, &'static str> {
    const WRONG: &str = "must be a PEM RSA private key (PKCS#1 or PKCS#8, 2048 bits or more) for RSA-SHA1";
    if pem.len() > MAX_KEY_PEM {
        return Err("must be a PEM private key of at most 8192 bytes");
    }
    let key = RsaPrivateKey::from_pkcs1_pem(pem.trim())
        .or_else(|_| RsaPrivateKey::from_pkcs8_pem(pem.trim()))
        .map_err(|_| WRONG)?;
    if key.size() * 8 < MIN_RSA_BITS {
        return Err(WRONG);
    }
    Ok(key)
}

/// The well-known inputs of an `oauth1` definition, with a catalog provider's endpoints and
/// signature method: (name, type, required, default, label) as [`super::definition`] lists them.
pub(super) fn consumer_inputs(
    provider: Option<&Provider>,
) -> Vec<(&'static str, InputType, bool, Option<Value>, &'static str)> {
    let url = |u: Option<&String>| u.map(|u| Value::from(u.as_str()));
    let method = provider.and_then(|p| p.signature_method.as_deref()).unwrap_or(SignatureMethod::NAMES[0]);
    vec![
        (
            "requestTokenUrl",
            InputType::Url,
            true,
            url(provider.and_then(|p| p.request_token_url.as_ref())),
            "Request token URL",
        ),
        (
            "authorizeUrl",
            InputType::Url,
            true,
            url(provider.and_then(|p| p.authorize_url.as_ref())),
            "Authorization URL",
        ),
        (
            "accessTokenUrl",
            InputType::Url,
            true,
            url(provider.and_then(|p| p.access_token_url.as_ref())),
            "Access token URL",
        ),
        ("consumerKey", InputType::String, true, None, "Consumer key"),
        (CONSUMER_SECRET_INPUT, InputType::Password, false, None, "Consumer secret"),
        (SIGNATURE_METHOD_INPUT, InputType::String, false, Some(Value::from(method)), "Signature method"),
        (PRIVATE_KEY_INPUT, InputType::Password, false, None, "RSA private key (PEM, RSA-SHA1 only)"),
    ]
}

/// Checks the signing settings among a definition's defaults or a connection's values:
/// `signatureMethod` is one of [`SignatureMethod::NAMES`], and with `RSA-SHA1` a `privateKey`
/// that is present parses ([`rsa_signing_key`]). Errors name `{prefix}{input}{suffix}` and never
/// quote the key.
pub fn check_consumer_values(
    plain: &BTreeMap<String, Value>,
    secret: &BTreeMap<String, SecretString>,
    prefix: &str,
    suffix: &str,
) -> Vec<FieldError> {
    let method = match SignatureMethod::of_value(plain.get(SIGNATURE_METHOD_INPUT)) {
        Ok(m) => m,
        Err(message) => return vec![FieldError::new(format!("{prefix}{SIGNATURE_METHOD_INPUT}{suffix}"), message)],
    };
    match secret.get(PRIVATE_KEY_INPUT) {
        Some(pem) if method == SignatureMethod::RsaSha1 => match rsa_signing_key(pem.expose_secret()) {
            Ok(_) => Vec::new(),
            Err(message) => vec![FieldError::new(format!("{prefix}{PRIVATE_KEY_INPUT}{suffix}"), message)],
        },
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_methods_round_trip_and_default_to_hmac_sha1() {
        for name in SignatureMethod::NAMES {
            assert_eq!(SignatureMethod::parse(name).map(SignatureMethod::name), Some(name));
        }
        assert_eq!(SignatureMethod::of_value(None), Ok(SignatureMethod::HmacSha1));
        assert_eq!(SignatureMethod::of_value(Some(&Value::from(""))), Ok(SignatureMethod::HmacSha1));
        assert_eq!(
            SignatureMethod::of_value(Some(&Value::from("hmac-sha1"))),
            Err("must be one of HMAC-SHA1, HMAC-SHA256, RSA-SHA1, PLAINTEXT".to_owned())
        );
    }

    #[test]
    fn an_rsa_key_that_does_not_parse_is_refused_and_never_quoted() {
        let plain = BTreeMap::from([(SIGNATURE_METHOD_INPUT.to_owned(), Value::from("RSA-SHA1"))]);
        let pem = "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleQ==\n-----END PRIVATE KEY-----\n";
        let secret = BTreeMap::from([(PRIVATE_KEY_INPUT.to_owned(), SecretString::from(pem.to_owned()))]);
        let errors = check_consumer_values(&plain, &secret, "values.", "");
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].field, "values.privateKey");
        assert!(!errors[0].message.contains("c2VjcmV0"), "{errors:?}");
        // Another method never reads the key.
        let hmac = BTreeMap::from([(SIGNATURE_METHOD_INPUT.to_owned(), Value::from("HMAC-SHA256"))]);
        assert!(check_consumer_values(&hmac, &secret, "values.", "").is_empty());
    }
}
