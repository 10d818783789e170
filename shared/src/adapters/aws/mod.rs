//! The AWS adapters: DynamoDB store, KMS key provider, EventBridge event sink. SDK types never
//! leave this module.
//!
//! Every AWS call is bounded in time ([`timeout_config`]): a dependency that accepts
//! connections but never answers (an overloaded endpoint, a network black hole, an emulator
//! stopped with SIGSTOP) costs a caller a few seconds, never its whole Lambda timeout. Such a
//! failure is [`StoreError::Unavailable`](crate::ports::StoreError::Unavailable) or
//! [`CryptoError::Unavailable`](crate::crypto::CryptoError::Unavailable), which callers see as
//! HTTP 503 with `Retry-After` (Lambda `errorType` `Unavailable`); the next call tries again,
//! so service resumes as soon as the dependency answers.

use std::time::Duration;

use aws_config::timeout::TimeoutConfig;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;

pub mod dynamodb;
pub mod eventbridge;
pub mod kms;
pub mod schema;

pub use dynamodb::{BY_CUSTOMER, BY_DEFINITION, DynamoStore, LEGACY_INDEXES, LISTING_ATTRIBUTES};
pub use eventbridge::EventBridgeSink;
pub use kms::KmsKeyProvider;

/// Opening a connection (TCP and TLS) to an AWS endpoint; in-region this takes milliseconds.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// One attempt of a call, until its whole response is read. DynamoDB and KMS answer in tens of
/// milliseconds; an attempt that takes longer is stuck, and a retry on a fresh connection is
/// the better bet.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
/// A whole call, retries and their backoff included: what a token lookup waits at most for one
/// DynamoDB or KMS call before it answers 503. Sized for the lookup, the critical caller (its
/// integration waits on it); the sweep, which runs under a deadline, gives up on that
/// connection after the same time and moves on.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(5);

/// The timeouts of every client built from [`sdk_config`] (DynamoDB, KMS, EventBridge, and any
/// other service a function may use): connect, read (time to the response), per attempt and
/// per operation. The SDK's default has only a connect timeout, so a dependency that accepts
/// the connection and never answers would hold the caller until its own timeout.
pub fn timeout_config() -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(ATTEMPT_TIMEOUT)
        .operation_attempt_timeout(ATTEMPT_TIMEOUT)
        .operation_timeout(OPERATION_TIMEOUT)
        .build()
}

/// The standard AWS configuration (`AWS_REGION`, credentials, `AWS_ENDPOINT_URL` and the
/// per-service `AWS_ENDPOINT_URL_<SERVICE>`...) with Latchkey's [`timeout_config`] and
/// [`https_client`].
pub async fn sdk_config() -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .timeout_config(timeout_config())
        .http_client(https_client())
        .load()
        .await
}

/// The HTTP client of every AWS call: the SDK's own hyper client with rustls on ring, the TLS
/// stack reqwest uses for providers and webhooks, so that a function links one (the SDK's
/// default client is rustls on aws-lc-rs; Latchkey's crate leaves it out), trusting the
/// compiled-in roots of `tls_context` (below) rather than the system's. Otherwise as that default:
/// connector settings (the timeouts) and the sleep from the SDK, proxies from the environment
/// (`HTTPS_PROXY`, `NO_PROXY`).
pub fn https_client() -> aws_smithy_runtime_api::client::http::SharedHttpClient {
    use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
    use aws_smithy_http_client::{Builder, ConnectorBuilder, proxy::ProxyConfig};
    let tls = tls_context();
    Builder::new().build_with_connector_fn(move |settings, components| {
        let mut connector =
            ConnectorBuilder::default().tls_provider(Provider::Rustls(CryptoMode::Ring)).tls_context(tls.clone());
        connector.set_connector_settings(settings.cloned());
        if let Some(components) = components {
            connector.set_sleep_impl(components.sleep_impl());
        }
        connector.set_proxy_config(Some(ProxyConfig::from_env()));
        connector.build()
    })
}

/// The roots every AWS call trusts: Mozilla's set as the `webpki-root-certs` crate compiles it
/// in (the set reqwest trusts for providers, webhooks and JWKS through webpki-roots), and, off
/// Lambda only, the system's too ([`trusts_system_roots`]).
///
/// The SDK's default trust store loads the system's roots with rustls-native-certs when its
/// first client is built, during a function's init: on Debian that read and parsed the bundle
/// and then each of the few hundred files of `/etc/ssl/certs`, about half of a function's init
/// (docs/performance.md, "Function init and binary size"). Every AWS endpoint Latchkey calls
/// (DynamoDB, KMS, EventBridge, SQS, STS, their FIPS and VPC endpoints) chains to Amazon's
/// roots, which are in Mozilla's set, so a function needs no other. On a laptop or a build
/// agent (`latchkey serve`, `bootstrap`, `doctor`, `keys rotate` against AWS) the system's roots
/// are added: an operator behind a TLS-inspecting proxy has its CA there (`SSL_CERT_FILE`,
/// `SSL_CERT_DIR` as rustls-native-certs reads them), and a command's start is not worth
/// saving milliseconds on.
///
/// The SDK takes custom roots as PEM only, so each compiled-in DER certificate is wrapped in one
/// (a base64 line between the markers); the SDK parses them when it builds its connector.
fn tls_context() -> aws_smithy_http_client::tls::TlsContext {
    use aws_smithy_http_client::tls::{TlsContext, TrustStore};
    let system = trusts_system_roots(std::env::var_os("AWS_LAMBDA_RUNTIME_API").as_deref());
    let mut roots = TrustStore::empty().with_native_roots(system);
    for cert in webpki_root_certs::TLS_SERVER_ROOT_CERTS {
        roots.add_pem_certificate(pem(cert));
    }
    TlsContext::builder().with_trust_store(roots).build().expect("a TLS context of a trust store alone always builds")
}

/// Whether the AWS client also trusts the system's roots: everywhere but on Lambda, which
/// gives every function the Runtime API's address in `AWS_LAMBDA_RUNTIME_API` (as do `cargo
/// lambda watch` and the init bench's stand-in), `runtime_api` here.
fn trusts_system_roots(runtime_api: Option<&std::ffi::OsStr>) -> bool {
    runtime_api.is_none_or(|address| address.is_empty())
}

/// One DER certificate as PEM: its base64 on one line (PEM readers take any line length).
fn pem(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    format!("-----BEGIN CERTIFICATE-----\n{b64}\n-----END CERTIFICATE-----\n")
}

/// Error codes that mean "not now" rather than "no": throttling past the SDK's retries, and
/// the services' own transient failures.
const TRANSIENT_CODES: &[&str] = &[
    "ThrottlingException",
    "ProvisionedThroughputExceededException",
    "RequestLimitExceeded",
    "InternalServerError",
    "ServiceUnavailable",
    "KMSInternalException",
    "DependencyTimeoutException",
];

/// Whether a service's answer (its error code and HTTP status) means "not now" rather than "no".
fn transient(code: Option<&str>, status: u16) -> bool {
    (500..600).contains(&status) || code.is_some_and(|c| TRANSIENT_CODES.contains(&c))
}

/// Whether an SDK error means the service is unavailable for now: a call that timed out, a
/// connection that could not be made or broke, an answer that could not be read, throttling
/// or a 5xx. Such failures may succeed when retried shortly; anything else is a real failure.
pub(crate) fn is_unavailable<E: ProvideErrorMetadata>(e: &SdkError<E, HttpResponse>) -> bool {
    match e {
        SdkError::TimeoutError(_) | SdkError::ResponseError(_) => true,
        SdkError::DispatchFailure(d) => d.is_timeout() || d.is_io(),
        SdkError::ServiceError(s) => transient(s.err().code(), s.raw().status().as_u16()),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_call_has_a_connect_read_attempt_and_operation_timeout() {
        let t = timeout_config();
        assert_eq!(t.connect_timeout(), Some(CONNECT_TIMEOUT));
        assert_eq!(t.read_timeout(), Some(ATTEMPT_TIMEOUT));
        assert_eq!(t.operation_attempt_timeout(), Some(ATTEMPT_TIMEOUT));
        assert_eq!(t.operation_timeout(), Some(OPERATION_TIMEOUT));
        // Two attempts fit in one operation: a stuck connection is retried once on a fresh one.
        assert!(ATTEMPT_TIMEOUT * 2 < OPERATION_TIMEOUT);
    }

    #[test]
    fn timeouts_broken_connections_and_throttling_are_unavailable_but_refusals_are_not() {
        use aws_sdk_dynamodb::error::ConnectorError;
        use aws_sdk_dynamodb::operation::get_item::GetItemError;

        let timeout: SdkError<GetItemError, HttpResponse> = SdkError::timeout_error("attempt timed out");
        assert!(is_unavailable(&timeout));
        let refused: SdkError<GetItemError, HttpResponse> =
            SdkError::dispatch_failure(ConnectorError::io("connection refused".into()));
        assert!(is_unavailable(&refused));
        let unbuilt: SdkError<GetItemError, HttpResponse> = SdkError::construction_failure("no region");
        assert!(!is_unavailable(&unbuilt));

        assert!(transient(Some("ProvisionedThroughputExceededException"), 400));
        assert!(transient(Some("ThrottlingException"), 400));
        assert!(transient(Some("KMSInternalException"), 500));
        assert!(transient(None, 503));
        assert!(!transient(Some("ResourceNotFoundException"), 400));
        assert!(!transient(Some("AccessDeniedException"), 400));
        assert!(!transient(Some("ConditionalCheckFailedException"), 400));
        assert!(!transient(Some("InvalidCiphertextException"), 400));
    }

    #[test]
    fn functions_on_lambda_trust_the_compiled_in_roots_alone_and_other_processes_the_systems_too() {
        use std::ffi::OsStr;
        assert!(!trusts_system_roots(Some(OsStr::new("127.0.0.1:9001"))), "a function on Lambda");
        assert!(trusts_system_roots(None), "latchkey serve, the CLI");
        assert!(trusts_system_roots(Some(OsStr::new(""))), "a blank variable counts as unset");
    }

    #[test]
    fn the_trust_store_is_mozillas_roots_each_a_pem_that_reads_back_as_a_trust_anchor() {
        use rustls_pki_types::CertificateDer;
        use rustls_pki_types::pem::PemObject;

        let roots = webpki_root_certs::TLS_SERVER_ROOT_CERTS;
        assert!(roots.len() > 100, "Mozilla's set has over 100 roots (118 in 1.0.11), got {}", roots.len());
        for cert in roots {
            let read: Vec<CertificateDer<'_>> =
                CertificateDer::pem_slice_iter(pem(cert).as_bytes()).collect::<Result<_, _>>().unwrap();
            assert_eq!(read, std::slice::from_ref(cert));
            webpki::anchor_from_trusted_cert(&read[0]).expect("a root the SDK can trust");
        }
        // Amazon's own roots, to which every AWS endpoint chains, are among them.
        let amazon = roots.iter().filter(|c| c.windows(b"Amazon Root CA".len()).any(|w| w == b"Amazon Root CA"));
        assert!(amazon.count() >= 4, "Amazon Root CA 1 to 4");
    }

    /// The client builds its TLS connector with the compiled-in roots (the SDK parses them then,
    /// and panics on one it cannot read) and speaks TLS to an `https` endpoint: a server on
    /// loopback that reads the first bytes and hangs up sees a TLS handshake record, and the
    /// call fails as unavailable (a broken connection), not as a panic or a refusal.
    #[tokio::test]
    async fn the_client_builds_with_the_compiled_in_roots_and_speaks_tls() {
        use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
        use tokio::io::AsyncReadExt;

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut head = [0u8; 3];
            conn.read_exact(&mut head).await.unwrap();
            head
        });
        let config = aws_sdk_dynamodb::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("eu-west-1"))
            .credentials_provider(Credentials::new("AKIDTLSTEST", "not-a-secret", None, None, "test"))
            .endpoint_url(format!("https://127.0.0.1:{port}"))
            .http_client(https_client())
            .timeout_config(timeout_config())
            .build();
        let call = aws_sdk_dynamodb::Client::from_conf(config).list_tables().send().await;

        let head = server.await.unwrap();
        assert_eq!(head[0], 0x16, "a TLS handshake record, not plain HTTP: {head:?}");
        assert_eq!(head[1], 0x03, "TLS record version 3.x: {head:?}");
        let err = call.expect_err("the server hung up");
        assert!(is_unavailable(&err), "{err:?}");
    }
}
