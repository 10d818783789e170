//! Records every AWS call that reaches the wire through the clients it is attached to: as
//! `Service.Operation` (for counting) and as the IAM actions the call needs (for least privilege).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use aws_sdk_dynamodb::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_dynamodb::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_smithy_runtime_api::client::orchestrator::Metadata;

#[derive(Debug, Default)]
struct Recorded {
    /// `DynamoDB.GetItem`, in call order.
    calls: Vec<String>,
    /// `dynamodb:GetItem`, `kms:Decrypt`, ...; `dynamodb:Query` on an index is recorded as
    /// `dynamodb:Query (index)` too, as it needs the index's ARN.
    actions: BTreeSet<String>,
}

#[derive(Debug, Clone, Default)]
pub struct Calls(Arc<Mutex<Recorded>>);

impl Intercept for Calls {
    fn name(&self) -> &'static str {
        "CallRecorder"
    }

    fn read_before_transmit(
        &self,
        ctx: &BeforeTransmitInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), aws_sdk_dynamodb::error::BoxError> {
        // Once per attempt that reaches the wire; retries would count as calls, as they cost.
        let (service, operation) = cfg.load::<Metadata>().map_or_else(
            || ("unknown".to_owned(), "unknown".to_owned()),
            |m| (m.service().to_owned(), m.name().to_owned()),
        );
        let body: serde_json::Value =
            ctx.request().body().bytes().and_then(|b| serde_json::from_slice(b).ok()).unwrap_or_default();
        let mut recorded = self.0.lock().unwrap();
        recorded.calls.push(format!("{service}.{operation}"));
        for action in iam_actions(&service, &operation, &body) {
            recorded.actions.insert(action);
        }
        Ok(())
    }
}

/// The IAM actions a call needs. `TransactWriteItems` is not an IAM action: each item of the
/// transaction is authorized as its own `PutItem`, `UpdateItem`, `DeleteItem` or
/// `ConditionCheckItem`.
fn iam_actions(service: &str, operation: &str, body: &serde_json::Value) -> Vec<String> {
    let prefix = match service {
        "DynamoDB" => "dynamodb",
        "KMS" => "kms",
        "EventBridge" => "events",
        "SQS" => "sqs",
        other => return vec![format!("{other}:{operation}")],
    };
    match (prefix, operation) {
        ("dynamodb", "TransactWriteItems") => {
            let items = body["TransactItems"].as_array().cloned().unwrap_or_default();
            items
                .iter()
                .filter_map(|item| item.as_object()?.keys().next().cloned())
                .map(|kind| match kind.as_str() {
                    "Put" => "dynamodb:PutItem".to_owned(),
                    "Update" => "dynamodb:UpdateItem".to_owned(),
                    "Delete" => "dynamodb:DeleteItem".to_owned(),
                    "ConditionCheck" => "dynamodb:ConditionCheckItem".to_owned(),
                    other => format!("dynamodb:Transact{other}"),
                })
                .collect()
        }
        // A batch of messages is authorized as `SendMessage`.
        ("sqs", "SendMessageBatch") => vec!["sqs:SendMessage".to_owned()],
        ("dynamodb", "Query") if body.get("IndexName").is_some() => {
            vec!["dynamodb:Query".to_owned(), "dynamodb:Query (index)".to_owned()]
        }
        _ => vec![format!("{prefix}:{operation}")],
    }
}

impl Calls {
    /// The calls since the last `take`, as `Service.Operation`.
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut self.0.lock().unwrap().calls)
    }

    /// Every IAM action the calls so far needed.
    pub fn actions(&self) -> BTreeSet<String> {
        self.0.lock().unwrap().actions.clone()
    }

    /// DynamoDB, KMS and EventBridge clients on `config` that record into this.
    pub fn clients(
        &self,
        config: &aws_config::SdkConfig,
    ) -> (aws_sdk_dynamodb::Client, aws_sdk_kms::Client, aws_sdk_eventbridge::Client) {
        let ddb = aws_sdk_dynamodb::Client::from_conf(
            aws_sdk_dynamodb::config::Builder::from(config).interceptor(self.clone()).build(),
        );
        let kms = aws_sdk_kms::Client::from_conf(
            aws_sdk_kms::config::Builder::from(config).interceptor(self.clone()).build(),
        );
        let eb = aws_sdk_eventbridge::Client::from_conf(
            aws_sdk_eventbridge::config::Builder::from(config).interceptor(self.clone()).build(),
        );
        (ddb, kms, eb)
    }
}
