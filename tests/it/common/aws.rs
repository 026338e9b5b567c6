//! A moto server on 127.0.0.1 (the real Secrets Manager, SQS and
//! EventBridge wire protocols), started per test and stopped on drop.

#![allow(dead_code)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Moto {
    child: Child,
    pub url: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Moto {
    pub async fn start() -> Moto {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server is installed (scripts/test installs it)");
        let url = format!("http://127.0.0.1:{port}");
        let moto = Moto { child, url };
        for _ in 0..300 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                return moto;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("moto_server did not start on port {port}");
    }

    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ENDPOINT_URL".into(), self.url.clone()),
            ("AWS_REGION".into(), "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID".into(), "testing".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), "testing".into()),
        ]
    }

    pub async fn config(&self) -> aws_config::SdkConfig {
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(&self.url)
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_sqs::config::Credentials::new(
                "testing", "testing", None, None, "tests",
            ))
            .load()
            .await
    }
}

pub struct Clients {
    pub secrets: aws_sdk_secretsmanager::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub events: aws_sdk_eventbridge::Client,
    pub dynamodb: aws_sdk_dynamodb::Client,
}

impl Clients {
    pub async fn new(moto: &Moto) -> Clients {
        let cfg = moto.config().await;
        Clients {
            secrets: aws_sdk_secretsmanager::Client::new(&cfg),
            sqs: aws_sdk_sqs::Client::new(&cfg),
            events: aws_sdk_eventbridge::Client::new(&cfg),
            dynamodb: aws_sdk_dynamodb::Client::new(&cfg),
        }
    }

    /// The state table as the template declares it: `pk` and `sk` strings,
    /// on demand.
    pub async fn state_table(&self, name: &str) -> String {
        use aws_sdk_dynamodb::types::{
            AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
        };
        let attr = |n: &str| {
            AttributeDefinition::builder()
                .attribute_name(n)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap()
        };
        let key = |n: &str, t: KeyType| {
            KeySchemaElement::builder()
                .attribute_name(n)
                .key_type(t)
                .build()
                .unwrap()
        };
        self.dynamodb
            .create_table()
            .table_name(name)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(attr("pk"))
            .attribute_definitions(attr("sk"))
            .key_schema(key("pk", KeyType::Hash))
            .key_schema(key("sk", KeyType::Range))
            .send()
            .await
            .unwrap();
        name.to_owned()
    }

    pub async fn secret(&self, name: &str, value: &str) -> String {
        let out = self
            .secrets
            .create_secret()
            .name(name)
            .secret_string(value)
            .send()
            .await
            .unwrap();
        out.arn().unwrap().to_owned()
    }

    pub async fn queue(&self, name: &str) -> String {
        self.queue_with(name, None).await
    }

    /// A queue whose `MaximumMessageSize` is `bytes`.
    pub async fn queue_with_limit(&self, name: &str, bytes: usize) -> String {
        self.queue_with(name, Some(bytes)).await
    }

    async fn queue_with(&self, name: &str, max_bytes: Option<usize>) -> String {
        self.sqs
            .create_queue()
            .queue_name(name)
            .set_attributes(max_bytes.map(|b| {
                [(
                    aws_sdk_sqs::types::QueueAttributeName::MaximumMessageSize,
                    b.to_string(),
                )]
                .into()
            }))
            .send()
            .await
            .unwrap()
            .queue_url()
            .unwrap()
            .to_owned()
    }

    /// A bus whose events all land in a queue, so tests can read them back.
    pub async fn bus_into_queue(&self, bus: &str) -> String {
        self.events.create_event_bus().name(bus).send().await.unwrap();
        let queue_url = self.queue(&format!("{bus}-events")).await;
        let arn = self
            .sqs
            .get_queue_attributes()
            .queue_url(&queue_url)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
            .send()
            .await
            .unwrap()
            .attributes()
            .unwrap()[&aws_sdk_sqs::types::QueueAttributeName::QueueArn]
            .clone();
        self.events
            .put_rule()
            .name(format!("{bus}-all"))
            .event_bus_name(bus)
            .event_pattern(r#"{"source": ["intune-attest"]}"#)
            .send()
            .await
            .unwrap();
        let target = aws_sdk_eventbridge::types::Target::builder()
            .id("q")
            .arn(arn)
            .build()
            .unwrap();
        self.events
            .put_targets()
            .rule(format!("{bus}-all"))
            .event_bus_name(bus)
            .targets(target)
            .send()
            .await
            .unwrap();
        queue_url
    }

    /// Every message on a queue (bodies), waiting briefly for stragglers.
    pub async fn drain(&self, queue_url: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut empty = 0;
        while empty < 2 {
            let got = self
                .sqs
                .receive_message()
                .queue_url(queue_url)
                .max_number_of_messages(10)
                .wait_time_seconds(0)
                .send()
                .await
                .unwrap();
            let msgs = got.messages();
            if msgs.is_empty() {
                empty += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            for m in msgs {
                out.push(m.body().unwrap_or_default().to_owned());
                self.sqs
                    .delete_message()
                    .queue_url(queue_url)
                    .receipt_handle(m.receipt_handle().unwrap())
                    .send()
                    .await
                    .unwrap();
            }
        }
        out
    }
}
