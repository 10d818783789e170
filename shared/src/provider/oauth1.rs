//! OAuth 1.0a's protocol (RFC 5849): the `Authorization` header of a signed request (sections
//! 3.4, 3.5.1) and the reading of a token endpoint's answer (sections 2.1, 2.3). The service
//! (`service::oauth::oauth1`) decides when to ask and what to keep.
//!
//! Signatures are built by the `oauth1-request` crate: its signature base string and HMAC-SHA1.
//! Gaps of the crate (0.6.1) are closed here, through its `SignatureMethod` trait: its PLAINTEXT
//! puts the signature into the header unencoded (section 3.5.1 wants it encoded, which matters
//! for secrets with reserved characters), its `ParameterList` writes parameter names into the
//! base string unencoded (section 3.4.1.3.2 encodes them), it has no HMAC-SHA256, and its
//! RSA-SHA1 signs unblinded. So PLAINTEXT, HMAC-SHA256 and RSA-SHA1 (RustCrypto `rsa`, blinded:
//! aws-lc-rs and ring sign PKCS#1 v1.5 only with SHA-256 and up) are Latchkey's, and query
//! parameter names are encoded before they are handed over. Requests carry the protocol
//! parameters in the `Authorization` header and an empty body.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use oauth1_request::signature_method::{Sign, SignatureMethod as Oauth1Method};
use oauth1_request::{Builder, Credentials, HmacSha1, ParameterList};
use rsa::RsaPrivateKey;
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

use crate::domain::{percent_encode, provider_code};

/// How a consumer signs: the method, with the RSA key `RSA-SHA1` needs (parsed), so that an
/// `RSA-SHA1` signer without a key cannot exist.
#[derive(Clone)]
pub(crate) enum Signing {
    HmacSha1,
    /// Section 3.4.2 with SHA-256, the extension most providers that left SHA-1 behind use
    /// (NetSuite, Garmin).
    HmacSha256,
    /// Section 3.4.3: RSASSA-PKCS1-v1_5 with SHA-1 under the consumer's key, blinded with a fresh
    /// random value each time (`sign_with_rng`: the private-key operation's timing says nothing
    /// of the key; RUSTSEC-2023-0071).
    RsaSha1(Box<RsaPrivateKey>),
    /// Section 3.4.4: the secrets themselves.
    Plaintext,
}

/// The consumer (RFC 5849 section 1.1's client) and how it signs.
pub(crate) struct Consumer {
    pub key: String,
    /// Empty for `RSA-SHA1`, which does not use it.
    pub secret: SecretString,
    pub signing: Signing,
}

/// Why a request to the provider's request token or access token endpoint gave no credentials.
#[derive(Debug)]
pub(crate) enum Oauth1Failure {
    /// The provider refused (4xx): its `oauth_problem` (the OAuth Problem Reporting extension)
    /// or `error`, reduced, else Latchkey's code for the status.
    Refused(String),
    /// No answer, a 5xx or a 429: `timeout`, `unreachable`, `temporarily_unavailable`...
    Unavailable(String),
    /// A 2xx that is not a form with the members RFC 5849 requires.
    Unreadable(&'static str),
    /// The endpoint's address is not allowed (the outbound policy).
    Forbidden,
}

impl Oauth1Failure {
    /// The code the authorize error and the logs show.
    pub fn code(&self) -> String {
        match self {
            Self::Refused(code) | Self::Unavailable(code) => code.clone(),
            Self::Unreadable(code) => (*code).to_owned(),
            Self::Forbidden => "destination_refused".to_owned(),
        }
    }
}

/// Latchkey's signature methods as `oauth1-request` takes them: HMAC-SHA256, PLAINTEXT and
/// blinded RSA-SHA1 ([`Signing`]); in tests, one whose "signature" is the base string itself.
#[derive(Clone)]
enum Ours {
    HmacSha256,
    Plaintext,
    RsaSha1(Box<RsaPrivateKey>),
    #[cfg(test)]
    BaseString,
}

/// The section 3.4.2 key of HMAC and the section 3.4.4 signature of PLAINTEXT.
fn signing_key(client_secret: &str, token_secret: Option<&str>) -> String {
    format!("{}&{}", percent_encode(client_secret), percent_encode(token_secret.unwrap_or_default()))
}

/// What [`CollectSign::end`] does with the signature base string it collected: [`Ours`], keyed.
#[derive(Clone)]
enum Finish {
    /// The HMAC key ([`signing_key`]).
    HmacSha256(Vec<u8>),
    /// The signature itself ([`signing_key`]).
    Plaintext(String),
    RsaSha1(Box<RsaPrivateKey>),
    #[cfg(test)]
    BaseString,
}

/// Collects the signature base string (section 3.4.1.1) exactly as the crate's own methods
/// hash it: `METHOD&uri&k%3Dv%26k%3Dv`, the crate having encoded the URI and parameters.
#[derive(Clone)]
struct CollectSign {
    base: String,
    finish: Finish,
}

impl Oauth1Method for Ours {
    type Sign = CollectSign;

    fn sign_with(self, client_secret: &str, token_secret: Option<&str>) -> CollectSign {
        let finish = match self {
            Self::HmacSha256 => Finish::HmacSha256(signing_key(client_secret, token_secret).into_bytes()),
            Self::Plaintext => Finish::Plaintext(signing_key(client_secret, token_secret)),
            Self::RsaSha1(key) => Finish::RsaSha1(key),
            #[cfg(test)]
            Self::BaseString => Finish::BaseString,
        };
        CollectSign { base: String::new(), finish }
    }
}

impl Sign for CollectSign {
    type Signature = String;

    fn get_signature_method_name(&self) -> &'static str {
        match self.finish {
            Finish::HmacSha256(_) => "HMAC-SHA256",
            Finish::Plaintext(_) => "PLAINTEXT",
            Finish::RsaSha1(_) => "RSA-SHA1",
            #[cfg(test)]
            Finish::BaseString => "HMAC-SHA1",
        }
    }

    fn request_method(&mut self, method: &str) {
        self.base.push_str(method);
        self.base.push('&');
    }

    fn uri<T: fmt::Display>(&mut self, uri: T) {
        self.base.push_str(&format!("{uri}&"));
    }

    fn parameter<V: fmt::Display>(&mut self, key: &str, value: V) {
        self.base.push_str(&format!("{key}%3D{value}"));
    }

    fn delimiter(&mut self) {
        self.base.push_str("%26");
    }

    /// The signature as the header carries it: base64, percent-encoded.
    fn end(self) -> String {
        match self.finish {
            Finish::HmacSha256(key) => {
                let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC accepts any key length");
                mac.update(self.base.as_bytes());
                percent_encode(&STANDARD.encode(mac.finalize().into_bytes()))
            }
            Finish::Plaintext(key) => percent_encode(&key),
            Finish::RsaSha1(key) => {
                use rsa::signature::{RandomizedSigner, SignatureEncoding};
                let signer = rsa::pkcs1v15::SigningKey::<sha1::Sha1>::new(*key);
                let signature = signer.sign_with_rng(&mut rsa::rand_core::OsRng, self.base.as_bytes());
                percent_encode(&STANDARD.encode(signature.to_vec()))
            }
            #[cfg(test)]
            Finish::BaseString => self.base,
        }
    }
}

/// The protocol parameters of one request besides the consumer's.
#[derive(Default, Clone, Copy)]
pub(crate) struct Step<'a> {
    /// The token and its secret: the request token (access token request) or the access token.
    pub token: Option<(&'a str, &'a str)>,
    pub callback: Option<&'a str>,
    pub verifier: Option<&'a str>,
    /// A fixed nonce and timestamp (tests of known signatures); otherwise fresh ones.
    pub fixed: Option<(&'a str, u64)>,
}

/// The `Authorization: OAuth ...` header value of a request (RFC 5849 section 3.5.1): `url`'s
/// query parameters are signed as request parameters (section 3.4.1.3.1), the body is empty.
pub(crate) fn authorization(method: &str, url: &url::Url, consumer: &Consumer, step: Step<'_>) -> String {
    let mut base = url.clone();
    base.set_query(None);
    base.set_fragment(None);
    let params = ParameterList::new(query_parameters(url));
    let client = Credentials::new(consumer.key.as_str(), consumer.secret.expose_secret());
    match &consumer.signing {
        Signing::HmacSha1 => sign_with(client, HmacSha1::new(), step, method, &base, &params),
        Signing::HmacSha256 => sign_with(client, Ours::HmacSha256, step, method, &base, &params),
        Signing::Plaintext => sign_with(client, Ours::Plaintext, step, method, &base, &params),
        Signing::RsaSha1(key) => sign_with(client, Ours::RsaSha1(key.clone()), step, method, &base, &params),
    }
}

/// The query parameters of `url` as the crate's `ParameterList` must get them: names already
/// in their base string form (encoded twice: section 3.4.1.3.2, then 3.4.1.1), since the crate
/// writes names as they are; values as they are (the crate encodes those).
fn query_parameters(url: &url::Url) -> Vec<(String, String)> {
    url.query_pairs().map(|(k, v)| (percent_encode(&percent_encode(&k)), v.into_owned())).collect()
}

/// [`authorization`] with one signature method.
fn sign_with<SM: Oauth1Method + Clone>(
    client: Credentials<&str>,
    method_impl: SM,
    step: Step<'_>,
    method: &str,
    base: &url::Url,
    params: &ParameterList<String, String>,
) -> String {
    let mut b: Builder<'_, SM, &str, &str> = Builder::new(client, method_impl);
    b.token(step.token.map(|(t, s)| Credentials::new(t, s)));
    b.callback(step.callback).verifier(step.verifier);
    if let Some((nonce, at)) = step.fixed {
        b.nonce(nonce).timestamp(std::num::NonZeroU64::new(at));
    }
    b.authorize(method, base.as_str(), params)
}

/// Reads a token answer (RFC 5849 sections 2.1 and 2.3): `application/x-www-form-urlencoded`
/// with `oauth_token` and `oauth_token_secret`. `refused_as` is the code of a bare 401.
///
/// # Errors
/// [`Oauth1Failure`]: `Unreadable` for a 2xx without the members, `Unavailable` for a 429 or a
/// 5xx, `Refused` with the provider's problem code (reduced, never its free text) otherwise.
pub(crate) fn read_answer(
    status: u16,
    body: &[u8],
    refused_as: &str,
) -> std::result::Result<BTreeMap<String, String>, Oauth1Failure> {
    let form: BTreeMap<String, String> = url::form_urlencoded::parse(body).into_owned().collect();
    match status {
        200..=299 => {
            let has = |k: &str| form.get(k).is_some_and(|v| !v.is_empty());
            if has("oauth_token") && form.contains_key("oauth_token_secret") {
                Ok(form)
            } else {
                Err(Oauth1Failure::Unreadable("unreadable_answer"))
            }
        }
        429 | 500..=599 => Err(Oauth1Failure::Unavailable("temporarily_unavailable".to_owned())),
        _ => {
            // Never the provider's free text: its problem code at most.
            let code = form.get("oauth_problem").or_else(|| form.get("error")).and_then(|c| provider_code(c));
            Err(Oauth1Failure::Refused(code.unwrap_or_else(|| match status {
                401 => refused_as.to_owned(),
                _ => format!("http_{status}"),
            })))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn consumer(key: &str, secret: &str, signing: Signing) -> Consumer {
        Consumer { key: key.to_owned(), secret: SecretString::from(secret.to_owned()), signing }
    }

    /// The `oauth_signature` of an `Authorization` header, decoded.
    fn signature_of(header: &str) -> String {
        let raw = header.split("oauth_signature=\"").nth(1).and_then(|s| s.split('"').next()).unwrap();
        url::form_urlencoded::parse(format!("s={raw}").as_bytes()).next().unwrap().1.into_owned()
    }

    /// The base string [`authorization`] signs for `url`, with the given signature method name.
    fn base_string(url: &url::Url, token: (&str, &str), fixed: (&str, u64)) -> String {
        let mut b: Builder<'_, _, &str, &str> =
            Builder::new(Credentials::new("9djdj82h48djs9d2", "j49sk3j29djd"), Ours::BaseString);
        b.token(Some(Credentials::new(token.0, token.1)));
        b.nonce(fixed.0).timestamp(std::num::NonZeroU64::new(fixed.1));
        let mut base = url.clone();
        base.set_query(None);
        let header = b.authorize("POST", base.as_str(), &ParameterList::new(query_parameters(url)));
        // The "signature" is the base string itself, as the header carries it (not encoded again).
        header.split("oauth_signature=\"").nth(1).and_then(|s| s.split('"').next()).unwrap().to_owned()
    }

    #[test]
    fn the_signature_base_string_is_rfc_5849_section_3_4_1_1s() {
        // RFC 5849 section 3.4.1.1's example, the body parameters (c2, a3=2 q) left out: Latchkey
        // sends none. The query's b5, a3, c@ and a2 are sorted in among the protocol parameters.
        let url = url::Url::parse("http://example.com/request?b5=%3D%253D&a3=a&c%40=&a2=r%20b").unwrap();
        let raw = base_string(&url, ("kkk9d7dh3k39sjv7", "dh893hdasih9"), ("7d8f3e4a", 137131201));
        let expected = "POST&http%3A%2F%2Fexample.com%2Frequest&a2%3Dr%2520b%26a3%3Da%26b5%3D%253D%25253D\
                        %26c%2540%3D%26oauth_consumer_key%3D9djdj82h48djs9d2%26oauth_nonce%3D7d8f3e4a\
                        %26oauth_signature_method%3DHMAC-SHA1%26oauth_timestamp%3D137131201\
                        %26oauth_token%3Dkkk9d7dh3k39sjv7";
        assert_eq!(raw, expected);
    }

    #[test]
    fn hmac_sha1_signs_rfc_5849_section_1_2s_example() {
        // RFC 5849 section 1.2: printer.example.com's request for the vacation photo.
        let url = url::Url::parse("http://photos.example.net/photos?file=vacation.jpg&size=original").unwrap();
        let c = consumer("dpf43f3p2l4k3l03", "kd94hf93k423kf44", Signing::HmacSha1);
        let step = Step {
            token: Some(("nnch734d00sl2jdk", "pfkkdhi9sl3r4s00")),
            fixed: Some(("chapoH", 137131202)),
            ..Step::default()
        };
        let header = authorization("GET", &url, &c, step);
        assert_eq!(signature_of(&header), "MdpQcU8iPSUjWoN/UDMsK2sui9I=");
        assert!(header.starts_with("OAuth "), "{header}");
        assert!(!header.contains("file="), "query parameters are signed, not repeated in the header: {header}");
    }

    #[test]
    fn hmac_sha256_and_plaintext_sign_with_both_secrets() {
        let url = url::Url::parse("http://photos.example.net/photos?file=vacation.jpg&size=original").unwrap();
        let step = Step {
            token: Some(("nnch734d00sl2jdk", "pfkkdhi9sl3r4s00")),
            fixed: Some(("chapoH", 137131202)),
            ..Step::default()
        };
        // HMAC-SHA256 over the same base string as HMAC-SHA1 above, with the method's name.
        let sha256 =
            authorization("GET", &url, &consumer("dpf43f3p2l4k3l03", "kd94hf93k423kf44", Signing::HmacSha256), step);
        let base = "GET&http%3A%2F%2Fphotos.example.net%2Fphotos&file%3Dvacation.jpg\
                    %26oauth_consumer_key%3Ddpf43f3p2l4k3l03%26oauth_nonce%3DchapoH\
                    %26oauth_signature_method%3DHMAC-SHA256%26oauth_timestamp%3D137131202\
                    %26oauth_token%3Dnnch734d00sl2jdk%26size%3Doriginal";
        let mut mac = Hmac::<Sha256>::new_from_slice(b"kd94hf93k423kf44&pfkkdhi9sl3r4s00").unwrap();
        mac.update(base.as_bytes());
        assert_eq!(signature_of(&sha256), STANDARD.encode(mac.finalize().into_bytes()));
        assert!(sha256.contains("oauth_signature_method=\"HMAC-SHA256\""), "{sha256}");
        // PLAINTEXT (section 3.4.4): the encoded secrets joined by `&`.
        let plain = authorization("GET", &url, &consumer("k", "s&cret", Signing::Plaintext), step);
        assert_eq!(signature_of(&plain), "s%26cret&pfkkdhi9sl3r4s00");
    }

    #[test]
    fn rsa_sha1_signatures_verify_under_the_public_key() {
        use rsa::signature::Verifier;
        let key = RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 1024).unwrap();
        let public = rsa::pkcs1v15::VerifyingKey::<sha1::Sha1>::new(key.to_public_key());
        let url = url::Url::parse("http://photos.example.net/photos?file=vacation.jpg&size=original").unwrap();
        let c = consumer("dpf43f3p2l4k3l03", "", Signing::RsaSha1(Box::new(key)));
        let step = Step {
            token: Some(("nnch734d00sl2jdk", "")),
            fixed: Some(("13917289812797014437", 1196666512)),
            ..Step::default()
        };
        let header = authorization("GET", &url, &c, step);
        assert!(header.contains("oauth_signature_method=\"RSA-SHA1\""), "{header}");
        let base = "GET&http%3A%2F%2Fphotos.example.net%2Fphotos&file%3Dvacation.jpg\
                    %26oauth_consumer_key%3Ddpf43f3p2l4k3l03%26oauth_nonce%3D13917289812797014437\
                    %26oauth_signature_method%3DRSA-SHA1%26oauth_timestamp%3D1196666512\
                    %26oauth_token%3Dnnch734d00sl2jdk%26size%3Doriginal";
        let signature = STANDARD.decode(signature_of(&header)).unwrap();
        let signature = rsa::pkcs1v15::Signature::try_from(signature.as_slice()).unwrap();
        public.verify(base.as_bytes(), &signature).expect("the signature verifies under the public key");
        let other = base.replace("vacation", "holiday");
        assert!(public.verify(other.as_bytes(), &signature).is_err(), "and over that base string only");
    }

    #[test]
    fn answers_are_read_without_echoing_the_provider() {
        let ok = read_answer(200, b"oauth_token=t&oauth_token_secret=s&oauth_callback_confirmed=true", "x").unwrap();
        assert_eq!(ok["oauth_token"], "t");
        assert!(matches!(read_answer(200, b"{\"token\":1}", "x"), Err(Oauth1Failure::Unreadable(_))));
        assert_eq!(read_answer(401, b"", "consumer_rejected").unwrap_err().code(), "consumer_rejected");
        assert_eq!(
            read_answer(400, b"oauth_problem=signature_invalid<script>", "x").unwrap_err().code(),
            "signature_invalidscript"
        );
        assert_eq!(read_answer(503, b"", "x").unwrap_err().code(), "temporarily_unavailable");
        assert_eq!(read_answer(403, b"nope", "x").unwrap_err().code(), "http_403");
    }
}
