//! The KMS key provider: `GenerateDataKey` (AES_256) and `Decrypt`, both with the record's
//! encryption context, which KMS enforces and CloudTrail logs (so it holds identifiers only).

use async_trait::async_trait;
use aws_sdk_kms::Client;
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::DataKeySpec;

use crate::crypto::KeyProvider;
use crate::crypto::{CryptoError, DataKey, EncryptionContext, PlainKey};
use crate::ports::BackendError;

/// What a KMS error means for Latchkey, by its error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KmsFailure {
    /// The ciphertext does not belong to this key or context, or was tampered with.
    Decrypt,
    /// The key exists but cannot be used: disabled, pending deletion or import, or gone.
    KeyUnusable,
    /// The request rate exceeded the account's KMS quota, after the SDK's retries.
    Throttled,
    /// Anything else: network, permissions.
    Other,
}

/// Classifies a KMS error code. moto lets disabled keys work, so this mapping is what the
/// unit tests pin down.
pub fn classify(code: Option<&str>) -> KmsFailure {
    match code {
        Some("InvalidCiphertextException" | "IncorrectKeyException") => KmsFailure::Decrypt,
        Some("DisabledException" | "KMSInvalidStateException" | "KeyUnavailableException" | "NotFoundException") => {
            KmsFailure::KeyUnusable
        }
        Some("ThrottlingException" | "LimitExceededException") => KmsFailure::Throttled,
        _ => KmsFailure::Other,
    }
}

fn failure(code: Option<&str>, e: impl Into<BackendError>) -> CryptoError {
    match classify(code) {
        KmsFailure::Decrypt => CryptoError::Decrypt,
        KmsFailure::KeyUnusable => CryptoError::Provider(
            format!(
                "the KMS key cannot be used ({}): enable it or point LATCHKEY_KMS_KEY_ID at a usable key",
                code.unwrap_or("?")
            )
            .into(),
        ),
        KmsFailure::Throttled => {
            // The `kms_throttled` field is counted on Lambda (telemetry::metrics, an EMF line
            // for Latchkey/KmsThrottled) and watched by the stack's KmsThrottledAlarm.
            tracing::warn!(kms_throttled = true, "KMS throttled a request after the SDK's retries");
            CryptoError::Unavailable(e.into())
        }
        KmsFailure::Other => CryptoError::Provider(e.into()),
    }
}

/// An SDK error of any KMS operation, classified by its error code; a call that timed out or
/// could not reach KMS is [`CryptoError::Unavailable`] (the caller may retry shortly).
fn sdk_failure<E>(e: aws_sdk_kms::error::SdkError<E>) -> CryptoError
where
    E: aws_sdk_kms::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let code = aws_sdk_kms::error::ProvideErrorMetadata::code(&e).map(str::to_owned);
    if super::is_unavailable(&e) && classify(code.as_deref()) != KmsFailure::Throttled {
        return CryptoError::Unavailable(e.into());
    }
    failure(code.as_deref(), e)
}

fn context_map(ctx: &EncryptionContext) -> std::collections::HashMap<String, String> {
    ctx.pairs().map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
}

pub struct KmsKeyProvider {
    client: Client,
    key_id: String,
}

impl KmsKeyProvider {
    /// `key_id`: a key id, ARN or alias (`alias/latchkey`).
    pub fn new(client: Client, key_id: impl Into<String>) -> Self {
        Self { client, key_id: key_id.into() }
    }
}

#[async_trait]
impl KeyProvider for KmsKeyProvider {
    async fn generate_data_key(&self, ctx: &EncryptionContext) -> Result<DataKey, CryptoError> {
        let out = self
            .client
            .generate_data_key()
            .key_id(&self.key_id)
            .key_spec(DataKeySpec::Aes256)
            .set_encryption_context(Some(context_map(ctx)))
            .send()
            .await
            .map_err(sdk_failure)?;
        let plaintext = out
            .plaintext
            .as_ref()
            .and_then(|b| PlainKey::try_from_slice(b.as_ref()))
            .ok_or_else(|| CryptoError::Provider("GenerateDataKey returned no 256-bit plaintext key".into()))?;
        let wrapped = out
            .ciphertext_blob
            .map(Blob::into_inner)
            .ok_or_else(|| CryptoError::Provider("GenerateDataKey returned no ciphertext".into()))?;
        // KMS answers with the key's ARN: stored beside the record for rotation and Decrypt.
        let key_id = out.key_id.unwrap_or_else(|| self.key_id.clone());
        Ok(DataKey { plaintext, wrapped, key_id })
    }

    async fn decrypt_data_key(
        &self,
        key_id: &str,
        wrapped: &[u8],
        ctx: &EncryptionContext,
    ) -> Result<PlainKey, CryptoError> {
        let out = self
            .client
            .decrypt()
            .key_id(key_id)
            .ciphertext_blob(Blob::new(wrapped))
            .set_encryption_context(Some(context_map(ctx)))
            .send()
            .await
            .map_err(sdk_failure)?;
        out.plaintext
            .as_ref()
            .and_then(|b| PlainKey::try_from_slice(b.as_ref()))
            .ok_or_else(|| CryptoError::Provider("Decrypt returned no 256-bit plaintext key".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kms_errors_map_to_what_they_mean() {
        assert_eq!(classify(Some("InvalidCiphertextException")), KmsFailure::Decrypt);
        assert_eq!(classify(Some("IncorrectKeyException")), KmsFailure::Decrypt);
        // moto keeps using disabled keys; real KMS refuses them with these codes.
        assert_eq!(classify(Some("DisabledException")), KmsFailure::KeyUnusable);
        assert_eq!(classify(Some("KMSInvalidStateException")), KmsFailure::KeyUnusable);
        assert_eq!(classify(Some("ThrottlingException")), KmsFailure::Throttled);
        assert_eq!(classify(Some("AccessDeniedException")), KmsFailure::Other);
        assert_eq!(classify(None), KmsFailure::Other);
    }

    #[test]
    fn throttling_is_logged_and_counted_for_the_stacks_alarm() {
        let (logs, metrics) = (crate::telemetry::Captured::default(), crate::telemetry::Captured::default());
        let subscriber = crate::telemetry::lambda_subscriber("warn".parse().unwrap(), logs.clone(), metrics.clone());
        let e = tracing::subscriber::with_default(subscriber, || failure(Some("ThrottlingException"), "slow down"));
        assert!(matches!(e, CryptoError::Unavailable(_)), "retry later: {e:?}");
        let lines = logs.lines();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(lines[0]["kms_throttled"], true, "{lines:?}");
        // infra/template.yaml: KmsThrottledAlarm watches Latchkey/KmsThrottled.
        let counts = metrics.lines();
        assert_eq!(counts.len(), 1, "{counts:?}");
        assert_eq!(counts[0]["_aws"]["CloudWatchMetrics"][0]["Namespace"], "Latchkey");
        assert_eq!(counts[0]["KmsThrottled"], 1, "{counts:?}");
    }

    #[test]
    fn an_unusable_key_is_a_provider_error_that_names_the_fix() {
        let e = failure(Some("DisabledException"), "disabled");
        assert!(matches!(&e, CryptoError::Provider(inner) if inner.to_string().contains("LATCHKEY_KMS_KEY_ID")));
        assert!(matches!(failure(Some("InvalidCiphertextException"), "x"), CryptoError::Decrypt));
    }
}
