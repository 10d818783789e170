//! The inputs of `oauth2_jwt_bearer` definitions (RFC 7523 section 2.1, SPEC section 12): who
//! the assertion names (`issuer`, `subject`, `audience`), the key that signs it (`privateKey`,
//! PEM) and how (`algorithm`, `keyId`). A key is parsed for its algorithm whenever it is written,
//! so a connection never holds one Latchkey cannot sign with; the key itself is never echoed.

use jsonwebtoken::{Algorithm, EncodingKey};

use super::*;

/// The input holding the PEM private key (a `password`: sealed at rest).
pub const PRIVATE_KEY_INPUT: &str = "privateKey";
/// The input naming the signature algorithm.
pub const ALGORITHM_INPUT: &str = "algorithm";
/// The longest PEM private key accepted, in bytes (a 8192-bit RSA key is about 6.4 KB).
const MAX_KEY_PEM: usize = 8_192;

/// How an assertion is signed: `RS256` (RSASSA-PKCS1-v1_5 with SHA-256, an RSA key of at least
/// 2048 bits) or `ES256` (ECDSA on P-256 with SHA-256), RFC 7518 section 3.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AssertionAlgorithm {
    Rs256,
    Es256,
}

impl AssertionAlgorithm {
    /// The accepted `algorithm` values, the default first.
    pub const NAMES: [&'static str; 2] = ["RS256", "ES256"];

    /// `RS256` or `ES256`; `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "RS256" => Some(Self::Rs256),
            "ES256" => Some(Self::Es256),
            _ => None,
        }
    }

    /// The JOSE algorithm of the header.
    pub fn jose(self) -> Algorithm {
        match self {
            Self::Rs256 => Algorithm::RS256,
            Self::Es256 => Algorithm::ES256,
        }
    }

    /// Parses a PEM private key for this algorithm, without signing anything: PKCS#1 or PKCS#8
    /// RSA for `RS256`, PKCS#8 P-256 for `ES256` (a key of the other type does not parse). This
    /// is what each token request does; whether the key can sign is [`Self::check_key`]'s, when
    /// it is written.
    ///
    /// # Errors
    /// A message for the field, never the key or any part of it.
    pub fn signing_key(self, pem: &str) -> Result<EncodingKey, &'static str> {
        if pem.len() > MAX_KEY_PEM {
            return Err("must be a PEM private key of at most 8192 bytes");
        }
        let parsed = match self {
            Self::Rs256 => EncodingKey::from_rsa_pem(pem.as_bytes()),
            Self::Es256 => EncodingKey::from_ec_pem(pem.as_bytes()),
        };
        parsed.map_err(|_| self.wrong_key())
    }

    /// Checks a key when it is written: it parses for this algorithm ([`Self::signing_key`]) and
    /// signs a throwaway assertion, since some keys parse and still cannot sign (an RSA key under
    /// 2048 bits).
    ///
    /// # Errors
    /// A message for the field, never the key or any part of it.
    pub fn check_key(self, pem: &str) -> Result<(), &'static str> {
        let key = self.signing_key(pem)?;
        let header = jsonwebtoken::Header::new(self.jose());
        jsonwebtoken::encode(&header, &serde_json::json!({}), &key).map(drop).map_err(|_| self.wrong_key())
    }

    /// What a key that does not fit this algorithm is told.
    fn wrong_key(self) -> &'static str {
        match self {
            Self::Rs256 => "must be a PEM RSA private key (PKCS#1 or PKCS#8, 2048 bits or more) for RS256",
            Self::Es256 => "must be a PEM P-256 EC private key (PKCS#8) for ES256",
        }
    }
}

/// The assertion inputs of a JWT bearer definition, with the catalog provider's audience (if it
/// names one): (name, type, required, default, label) as [`super::definition`] lists them.
pub(super) fn assertion_inputs(
    provider: Option<&Provider>,
) -> Vec<(&'static str, InputType, bool, Option<Value>, &'static str)> {
    let audience = provider.and_then(|p| p.token_url.as_deref()).map(Value::from);
    vec![
        ("issuer", InputType::String, true, None, "Issuer (iss: the service account)"),
        ("subject", InputType::String, false, None, "Subject (sub; the issuer when empty)"),
        ("audience", InputType::String, false, audience, "Audience (aud; the token URL when empty)"),
        (PRIVATE_KEY_INPUT, InputType::Password, true, None, "Private key (PEM)"),
        (ALGORITHM_INPUT, InputType::String, false, Some(Value::from(AssertionAlgorithm::NAMES[0])), "Algorithm"),
        ("keyId", InputType::String, false, None, "Key ID (kid)"),
    ]
}

/// Checks the assertion settings among a definition's defaults or a connection's effective
/// values: `algorithm` is `RS256` or `ES256` (absent: `RS256`), and `privateKey`, when present,
/// parses as a key of that algorithm. Errors name `{prefix}{input}{suffix}` (for example
/// `values.privateKey` or `inputs.privateKey.default`) and never quote the key.
pub fn check_assertion_values(
    plain: &BTreeMap<String, Value>,
    secret: &BTreeMap<String, SecretString>,
    prefix: &str,
    suffix: &str,
) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let algorithm = match plain.get(ALGORITHM_INPUT) {
        None | Some(Value::Null) => Some(AssertionAlgorithm::Rs256),
        Some(Value::String(s)) if s.is_empty() => Some(AssertionAlgorithm::Rs256),
        Some(v) => v.as_str().and_then(AssertionAlgorithm::parse),
    };
    let Some(algorithm) = algorithm else {
        let message = format!("must be one of {}", AssertionAlgorithm::NAMES.join(", "));
        errors.push(FieldError::new(format!("{prefix}{ALGORITHM_INPUT}{suffix}"), message));
        return errors;
    };
    if let Some(pem) = secret.get(PRIVATE_KEY_INPUT)
        && let Err(message) = algorithm.check_key(pem.expose_secret())
    {
        errors.push(FieldError::new(format!("{prefix}{PRIVATE_KEY_INPUT}{suffix}"), message));
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A PKCS#8 P-256 key (generated for this test only; it signs nothing real).
    const EC_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgsVkHgx92n/97vy4C
Thq4WVovPSyXH+L4xUm6CRrLDjqhRANCAAS8Rdif+t1qAVW3mxbJMBn8SdUOAs+L
HKfgnrSJEwCEUnxdlUtrWPDmkwMqQP9YdjSovdejZ+rZTjGxr4gX0LBF
-----END PRIVATE KEY-----
";

    fn check(algorithm: Option<&str>, key: &str) -> Vec<FieldError> {
        let plain = algorithm.map(|a| (ALGORITHM_INPUT.to_owned(), Value::from(a))).into_iter().collect();
        let secret = BTreeMap::from([(PRIVATE_KEY_INPUT.to_owned(), SecretString::from(key.to_owned()))]);
        check_assertion_values(&plain, &secret, "values.", "")
    }

    #[test]
    fn a_key_is_checked_for_the_algorithm_it_signs_with_and_never_quoted() {
        assert!(check(Some("ES256"), EC_KEY).is_empty());
        let wrong = check(None, EC_KEY);
        assert_eq!(wrong.len(), 1);
        assert_eq!(wrong[0].field, "values.privateKey");
        assert!(wrong[0].message.contains("RS256"));
        let garbage =
            check(Some("ES256"), "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleQ==\n-----END PRIVATE KEY-----\n");
        assert_eq!(garbage.len(), 1);
        assert!(!garbage[0].message.contains("c2VjcmV0"), "{garbage:?}");
        let alg = check(Some("HS256"), EC_KEY);
        assert_eq!(alg[0].field, "values.algorithm");
        assert_eq!(alg[0].message, "must be one of RS256, ES256");
    }
}
