//! The AWS adapters: DynamoDB store, KMS key provider, EventBridge event sink. SDK types never
//! leave this module.

pub mod dynamodb;
pub mod eventbridge;
pub mod kms;
pub mod schema;

pub use dynamodb::DynamoStore;
pub use eventbridge::EventBridgeSink;
pub use kms::KmsKeyProvider;

/// The standard AWS configuration: `AWS_REGION`, credentials, `AWS_ENDPOINT_URL`...
pub async fn sdk_config() -> aws_config::SdkConfig {
    aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await
}
