//! The deployment files stay what they claim: least privilege, the queue and
//! timeout relations, and every JSON/YAML file under `infra/` parses.

use std::path::{Path, PathBuf};

use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap();
    let y: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::to_value(y).unwrap()
}

fn template() -> Value {
    yaml(&root().join("template.yaml"))
}

fn default_number(t: &Value, param: &str) -> u64 {
    let d = &t["Parameters"][param]["Default"];
    d.as_u64()
        .or_else(|| d.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or_else(|| panic!("{param} has no numeric default"))
}

#[test]
fn the_function_is_provided_al2023_on_arm64_with_tracing() {
    let t = template();
    let f = &t["Resources"]["AttestFunction"]["Properties"];
    assert_eq!(f["Runtime"], "provided.al2023");
    assert_eq!(f["Handler"], "bootstrap");
    assert_eq!(t["Parameters"]["Architecture"]["Default"], "arm64");
    assert_eq!(f["Tracing"], "Active");
    assert_eq!(
        f["Environment"]["Variables"]["SECRET_ID"]["Fn::If"],
        serde_json::json!(["UseSecret", {"Ref": "CredentialsSecretArn"}, {"Ref": "AWS::NoValue"}])
    );
}

#[test]
fn a_federated_deployment_stores_and_reads_no_secret_and_its_role_signs_only_for_entra() {
    let t = template();
    let p = &t["Parameters"]["CredentialSource"];
    assert_eq!(p["AllowedValues"], serde_json::json!(["secret", "federation"]));
    let f = &t["Resources"]["AttestFunction"]["Properties"];
    let vars = &f["Environment"]["Variables"];
    assert_eq!(
        vars["ATTEST_FEDERATION"]["Fn::If"],
        serde_json::json!(["UseFederation", "aws", {"Ref": "AWS::NoValue"}])
    );
    for (var, param) in [
        ("AZURE_TENANT_ID", "AzureTenantId"),
        ("AZURE_CLIENT_ID", "AzureClientId"),
    ] {
        assert_eq!(vars[var]["Fn::If"][0], "UseFederation");
        assert_eq!(vars[var]["Fn::If"][1]["Ref"], param);
    }
    assert_eq!(vars["ATTEST_CLOUD"]["Ref"], "Cloud");
    // No secret is created, and with federation the credentials secret is
    // not readable: its statement exists only when some secret is read, and
    // names the credentials secret only with CredentialSource secret.
    let types: Vec<&str> = t["Resources"]
        .as_object()
        .unwrap()
        .values()
        .filter_map(|r| r["Type"].as_str())
        .collect();
    assert!(!types.contains(&"AWS::SecretsManager::Secret"), "{types:?}");
    assert_eq!(
        t["Conditions"]["ReadsASecret"]["Fn::Or"],
        serde_json::json!([{"Condition": "UseSecret"}, {"Condition": "HasWebhookSecret"}])
    );
    let statements = f["Policies"][0]["Statement"].as_array().unwrap();
    let conditional = |sid: &str| {
        statements
            .iter()
            .filter_map(|s| s.get("Fn::If"))
            .find(|s| s[1]["Sid"] == sid)
            .unwrap_or_else(|| panic!("no conditional statement {sid}"))
            .clone()
    };
    let read = conditional("ReadTheCredentialsSecret");
    assert_eq!(read[0], "ReadsASecret");
    assert_eq!(
        read[1]["Resource"][0]["Fn::If"],
        serde_json::json!(["UseSecret", {"Ref": "CredentialsSecretArn"}, {"Ref": "AWS::NoValue"}])
    );
    let sign = conditional("SignInWithTheRolesWebIdentity");
    assert_eq!(sign[0], "UseFederation");
    assert_eq!(sign[1]["Action"], "sts:GetWebIdentityToken");
    let condition = &sign[1]["Condition"];
    assert_eq!(
        condition["ForAllValues:StringEquals"]["sts:IdentityTokenAudience"][0]["Fn::FindInMap"],
        serde_json::json!(["FederationAudience", {"Ref": "Cloud"}, "Audience"])
    );
    assert_eq!(condition["StringEquals"]["sts:SigningAlgorithm"], "RS256");
    assert_eq!(condition["NumericLessThanEquals"]["sts:DurationSeconds"], 300);
    let audiences = &t["Mappings"]["FederationAudience"];
    assert_eq!(audiences["global"]["Audience"], "api://AzureADTokenExchange");
    assert_eq!(audiences["usgov"]["Audience"], "api://AzureADTokenExchangeUSGov");
    assert_eq!(audiences["china"]["Audience"], "api://AzureADTokenExchangeChina");
    // The role to name as the federated credential's subject.
    assert_eq!(
        t["Outputs"]["ExecutionRoleArn"]["Value"]["Fn::GetAtt"],
        serde_json::json!(["AttestFunctionRole", "Arn"])
    );
    let rules = t["Rules"].to_string();
    assert!(
        rules.contains("AzureTenantId") && rules.contains("AzureClientId"),
        "{rules}"
    );
}

/// Every resource in a policy statement: named resources only, never `*`.
fn resources(v: &Value, out: &mut Vec<Value>) {
    match v {
        Value::Array(a) => a.iter().for_each(|x| resources(x, out)),
        Value::Object(o) if o.contains_key("Fn::If") => {
            let branches = o["Fn::If"].as_array().unwrap();
            resources(&branches[1], out);
            resources(&branches[2], out);
        }
        other => out.push(other.clone()),
    }
}

#[test]
fn the_policies_name_exactly_the_resources_they_need() {
    let t = template();
    let policies = t["Resources"]["AttestFunction"]["Properties"]["Policies"]
        .as_array()
        .unwrap();
    assert_eq!(policies.len(), 1, "only the inline statement; no managed policies");
    // A conditional statement counts as its "if" branch.
    let statements: Vec<Value> = policies[0]["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.get("Fn::If").map_or_else(|| s.clone(), |f| f[1].clone()))
        .collect();
    let mut actions = Vec::new();
    for s in &statements {
        assert_eq!(s["Effect"], "Allow");
        let named: Vec<String> = match &s["Action"] {
            Value::String(a) => vec![a.clone()],
            Value::Array(a) => a.iter().map(|v| v.as_str().unwrap().to_owned()).collect(),
            other => panic!("an action list expected: {other}"),
        };
        assert!(named.iter().all(|a| !a.contains('*')), "{named:?}");
        let action = named.join(",");
        actions.extend(named);
        // GetWebIdentityToken has no resource type: `*`, limited by its
        // condition keys (checked in the federation test).
        if action == "sts:GetWebIdentityToken" {
            assert_eq!(s["Resource"], "*");
            assert!(s["Condition"]["ForAllValues:StringEquals"]["sts:IdentityTokenAudience"].is_array());
            continue;
        }
        let mut rs = Vec::new();
        resources(&s["Resource"], &mut rs);
        for r in rs {
            let named = r.get("Ref").is_some() || r.get("Fn::GetAtt").is_some() || r.get("Fn::Sub").is_some();
            assert!(
                named || r == serde_json::json!({"Ref": "AWS::NoValue"}),
                "{action}: {r}"
            );
            assert!(!r.to_string().contains('*'), "{action}: {r}");
        }
    }
    actions.sort();
    assert_eq!(
        actions,
        vec![
            "dynamodb:DeleteItem",
            "dynamodb:GetItem",
            "dynamodb:PutItem",
            "dynamodb:Query",
            "dynamodb:UpdateItem",
            "events:PutEvents",
            "secretsmanager:GetSecretValue",
            "secretsmanager:GetSecretValue",
            "sqs:GetQueueAttributes",
            "sqs:SendMessage",
            "sts:GetWebIdentityToken"
        ]
    );
    let tenants = statements
        .iter()
        .find(|s| s["Sid"] == "ReadTheTenantSecrets")
        .expect("a statement for the tenants' secrets");
    assert_eq!(tenants["Resource"], serde_json::json!({"Ref": "TenantSecretArns"}));
    let table = statements
        .iter()
        .find(|s| s["Sid"] == "SharedState")
        .expect("a statement for the state table");
    assert_eq!(
        table["Resource"],
        serde_json::json!({"Fn::GetAtt": ["StateTable", "Arn"]})
    );
    let by_action = |a: &str| statements.iter().find(|s| s["Action"] == a).unwrap()["Resource"].clone();
    for action in ["sqs:SendMessage", "sqs:GetQueueAttributes"] {
        assert_eq!(
            by_action(action),
            serde_json::json!({"Fn::GetAtt": ["WorkQueue", "Arn"]})
        );
    }
    let secrets = by_action("secretsmanager:GetSecretValue").to_string();
    assert!(
        secrets.contains("CredentialsSecretArn") && secrets.contains("WebhookSecretArn"),
        "{secrets}"
    );
}

#[test]
fn the_queue_outlives_six_function_timeouts_and_has_a_dead_letter_queue() {
    let t = template();
    let timeouts = t["Parameters"]["FunctionTimeout"]["AllowedValues"].as_array().unwrap();
    assert!(!timeouts.is_empty());
    for timeout in timeouts {
        let secs = timeout.as_u64().unwrap();
        let visibility = t["Mappings"]["QueueVisibility"][secs.to_string()]["Seconds"]
            .as_u64()
            .unwrap();
        assert!(visibility >= 6 * secs, "timeout {secs}: visibility {visibility}");
    }
    let queue = &t["Resources"]["WorkQueue"]["Properties"];
    assert_eq!(queue["VisibilityTimeout"]["Fn::FindInMap"][1]["Ref"], "FunctionTimeout");
    assert_eq!(
        queue["RedrivePolicy"]["deadLetterTargetArn"]["Fn::GetAtt"][0],
        "WorkDeadLetterQueue"
    );
    assert!(queue["RedrivePolicy"]["maxReceiveCount"].as_u64().unwrap() >= 1);
}

#[test]
fn queue_consumers_share_the_intune_budget() {
    let t = template();
    let event = &t["Resources"]["AttestFunction"]["Properties"]["Events"]["Work"]["Properties"];
    assert_eq!(
        event["FunctionResponseTypes"],
        serde_json::json!(["ReportBatchItemFailures"])
    );
    assert_eq!(
        event["ScalingConfig"]["MaximumConcurrency"]["Ref"],
        "QueueMaxConcurrency"
    );
    // Every invocation draws on one budget in the state table, so the
    // budget is the app registration's, whatever the concurrency.
    let budget = default_number(&t, "WriteBudget");
    assert!(budget <= 200, "{budget} exceeds Intune's 200 writes per 20 s");
    assert_eq!(t["Parameters"]["WriteBudget"]["MaxValue"], 200);
    assert_eq!(
        t["Resources"]["AttestFunction"]["Properties"]["Environment"]["Variables"]["STATE_TABLE"]["Ref"], "StateTable",
        "the shared budget lives in the state table"
    );
    assert_eq!(
        t["Resources"]["AttestFunction"]["Properties"]["Environment"]["Variables"]["ATTEST_WRITE_BUDGET"]["Ref"],
        "WriteBudget"
    );
}

#[test]
fn the_url_is_iam_by_default_and_none_needs_the_signing_secret() {
    let t = template();
    assert_eq!(t["Parameters"]["FunctionUrlAuthType"]["Default"], "AWS_IAM");
    let rule = t["Rules"]["UnauthenticatedUrlNeedsASigningSecret"].to_string();
    assert!(rule.contains("NONE") && rule.contains("WebhookSecretArn"), "{rule}");
    let sweep = &t["Resources"]["AttestFunction"]["Properties"]["Events"]["Sweep"]["Properties"];
    assert_eq!(
        t["Parameters"]["SweepEnabled"]["Default"], "false",
        "the sweep is off unless asked for"
    );
    assert!(sweep["State"].to_string().contains("DISABLED"));
    for alarm in ["DeadLetterAlarm", "FunctionErrorsAlarm", "ThrottledRunsAlarm"] {
        assert_eq!(t["Resources"][alarm]["Type"], "AWS::CloudWatch::Alarm", "{alarm}");
    }
    assert!(t["Resources"]["AttestLogGroup"]["Properties"]["RetentionInDays"].is_object());
    for output in ["FunctionArn", "FunctionUrl", "WorkQueueUrl", "EventBusName"] {
        assert!(t["Outputs"].get(output).is_some(), "{output}");
    }
}

#[test]
fn platform_limits_are_set_where_the_code_relies_on_them() {
    let t = template();
    let f = &t["Resources"]["AttestFunction"]["Properties"];
    // The shared state: on demand, with TTL, named to the function.
    let table = &t["Resources"]["StateTable"]["Properties"];
    assert_eq!(table["BillingMode"], "PAY_PER_REQUEST");
    assert_eq!(table["TimeToLiveSpecification"]["Enabled"], true);
    assert_eq!(f["Environment"]["Variables"]["STATE_TABLE"]["Ref"], "StateTable");
    // One message per invocation: a returned, unstarted record would count
    // toward maxReceiveCount.
    assert_eq!(f["Events"]["Work"]["Properties"]["BatchSize"], 1);
    // The queue's message limit is explicit; the function reads it.
    assert_eq!(t["Resources"]["WorkQueue"]["Properties"]["MaximumMessageSize"], 262_144);
    let policy = f["Policies"].to_string();
    assert!(policy.contains("sqs:GetQueueAttributes"), "{policy}");
    // The IAM caller context is honoured only where the URL is IAM.
    assert_eq!(
        f["Environment"]["Variables"]["FUNCTION_URL_AUTH_TYPE"]["Ref"],
        "FunctionUrlAuthType"
    );
    assert_eq!(f["ReservedConcurrentExecutions"]["Ref"], "ReservedConcurrency");
    // Lambda's own loop detection would cut a 24-hour verify schedule (96
    // hops on the same queue) after about 16; the function's own bounds
    // guard its chains (tests/it/service_messages.rs).
    assert_eq!(f["RecursiveLoop"], "Allow");
    // Sweeps only where the schedule is enabled.
    assert_eq!(f["Environment"]["Variables"]["SWEEP_ENABLED"]["Ref"], "SweepEnabled");
    assert_eq!(
        f["EventInvokeConfig"]["DestinationConfig"]["OnFailure"]["Destination"]["Fn::GetAtt"][0],
        "FailedRunsQueue"
    );
    assert_eq!(t["Resources"]["FailedRunsAlarm"]["Type"], "AWS::CloudWatch::Alarm");
    for param in ["CredentialsSecretArn", "WebhookSecretArn"] {
        let pattern = t["Parameters"][param]["AllowedPattern"].as_str().unwrap_or_default();
        assert!(pattern.contains("secretsmanager"), "{param}: {pattern}");
    }
}

#[test]
fn the_playbook_retries_every_error_that_can_pass_later() {
    let asl: Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("infra/aws/incident-response.asl.json")).unwrap())
            .unwrap();
    let retried = asl["States"]["AttestDevices"]["Retry"].to_string();
    use intune_attest::service::ServiceError as E;
    let retryable = [
        E::CredentialsUnavailable(String::new()),
        E::GraphUnavailable(String::new()),
        E::ResultDeliveryFailed(String::new()),
        E::InProgress(String::new()),
        E::StateUnavailable(intune_attest::state::StoreError::Contended { key: String::new() }),
    ];
    for e in retryable {
        assert!(e.is_retryable());
        assert!(
            retried.contains(e.error_type()),
            "the playbook does not retry {}",
            e.error_type()
        );
    }
}

#[test]
fn the_playbook_branches_on_states_the_status_document_has() {
    let text = std::fs::read_to_string(root().join("infra/aws/incident-response.asl.json")).unwrap();
    let asl: Value = serde_json::from_str(&text).unwrap();
    let read = &asl["States"]["ReadVerdict"];
    assert_eq!(read["Parameters"]["Payload"]["read_status"], true);
    let retried = read["Retry"].to_string();
    assert!(retried.contains("GraphUnavailable") && retried.contains("CredentialsUnavailable"));
    use intune_attest::core::status::{ActionState, AttestationStatus};
    let states: Vec<&str> = ActionState::ALL.iter().map(|s| s.as_str()).collect();
    let statuses: Vec<&str> = AttestationStatus::ALL.iter().map(|s| s.as_str()).collect();
    let mut seen = 0;
    for (prefix, known) in [
        ("$.verdict.summary.action_states.", &states),
        ("$.verdict.summary.attestation_statuses.", &statuses),
    ] {
        for (i, _) in text.match_indices(prefix) {
            let name: String = text[i + prefix.len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            assert!(
                known.contains(&name.as_str()),
                "the playbook reads {prefix}{name}, which no status has"
            );
            seen += 1;
        }
    }
    assert!(seen >= 6, "{seen} branches on the verdict");
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, out);
        } else {
            out.push(path);
        }
    }
}

#[test]
fn every_json_and_yaml_file_under_infra_parses() {
    let mut all = Vec::new();
    files(&root().join("infra"), &mut all);
    let mut checked = 0;
    for path in all {
        match path.extension().and_then(|e| e.to_str()) {
            Some("json") => {
                let text = std::fs::read_to_string(&path).unwrap();
                serde_json::from_str::<Value>(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                checked += 1;
            }
            Some("yaml" | "yml") => {
                yaml(&path);
                checked += 1;
            }
            _ => {}
        }
    }
    assert!(checked >= 6, "{checked} files");
}

#[test]
fn the_azure_function_app_matches_the_handler() {
    let azure = root().join("infra/azure");
    let host: Value = serde_json::from_str(&std::fs::read_to_string(azure.join("host.json")).unwrap()).unwrap();
    assert_eq!(
        host["customHandler"]["description"]["defaultExecutablePath"],
        "intune-attest"
    );
    assert!(host["extensionBundle"]["id"].is_string());
    for (function, trigger) in [
        ("attest-queue", "queueTrigger"),
        ("attest-http", "httpTrigger"),
        ("attest-sweep", "timerTrigger"),
    ] {
        let f: Value =
            serde_json::from_str(&std::fs::read_to_string(azure.join(function).join("function.json")).unwrap())
                .unwrap();
        let bindings = f["bindings"].as_array().unwrap();
        assert_eq!(bindings[0]["type"], trigger, "{function}");
        assert!(
            bindings
                .iter()
                .any(|b| b["name"] == intune_attest::frontdoor::azure::RESULT_BINDING && b["direction"] == "out"),
            "{function}"
        );
    }
    let http: Value =
        serde_json::from_str(&std::fs::read_to_string(azure.join("attest-http/function.json")).unwrap()).unwrap();
    assert!(
        http["bindings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["name"] == intune_attest::frontdoor::azure::HTTP_BINDING)
    );
    assert_eq!(http["bindings"][0]["authLevel"], "function");
    // Many instances, several messages each: claims, replays and the budget
    // are shared through the storage account, so nothing caps the scale-out
    // but the Bicep template's parameter.
    let queues = &host["extensions"]["queues"];
    assert!(queues["batchSize"].as_u64().is_some_and(|n| n > 1), "{queues}");
    // The trigger decodes base64, which the work queue encodes.
    assert_eq!(queues["messageEncoding"], "base64");
    let settings: Value =
        serde_json::from_str(&std::fs::read_to_string(azure.join("app-settings.json")).unwrap()).unwrap();
    let setting = |name: &str| {
        settings
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .map(|s| s["value"].clone())
    };
    assert_eq!(setting("WEBSITE_MAX_DYNAMIC_APPLICATION_SCALE_OUT"), None);
    let queue_trigger: Value =
        serde_json::from_str(&std::fs::read_to_string(azure.join("attest-queue/function.json")).unwrap()).unwrap();
    assert_eq!(
        setting("ATTEST_WORK_QUEUE"),
        Some(queue_trigger["bindings"][0]["queueName"].clone()),
        "the handler queues to the queue its trigger reads"
    );
    assert_eq!(setting("FUNCTIONS_WORKER_RUNTIME"), Some("Custom".into()));
    // Secretless: the user-assigned identity's token is the credential.
    assert_eq!(setting("ATTEST_FEDERATION"), Some("managed_identity".into()));
    assert!(setting("ATTEST_MANAGED_IDENTITY_CLIENT_ID").is_some());
    assert_eq!(setting("AZURE_CLIENT_SECRET"), None);
    assert!(!settings.to_string().contains("KeyVault"));
}

/// The string a Bicep `var` is set to.
fn bicep_var(bicep: &str, name: &str) -> String {
    let line = bicep
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("var {name} = ")))
        .unwrap_or_else(|| panic!("main.bicep has no var {name}"));
    line.split('\'').nth(1).unwrap().to_owned()
}

/// The value expression of an app setting in the Bicep template.
fn bicep_setting(bicep: &str, name: &str) -> Option<String> {
    let at = bicep.find(&format!("name: '{name}'"))?;
    let rest = &bicep[at..];
    let value = rest.lines().nth(1)?.trim().strip_prefix("value: ")?;
    Some(value.to_owned())
}

#[test]
fn the_bicep_template_agrees_with_the_function_app_and_the_handler() {
    let azure = root().join("infra/azure");
    let bicep = std::fs::read_to_string(azure.join("main.bicep")).unwrap();
    let json = |p: &str| -> Value { serde_json::from_str(&std::fs::read_to_string(azure.join(p)).unwrap()).unwrap() };
    let (work, results, state) = (
        bicep_var(&bicep, "workQueueName"),
        bicep_var(&bicep, "resultQueueName"),
        bicep_var(&bicep, "stateContainerName"),
    );
    // The trigger reads the queue the template creates and the handler
    // queues to; every result binding writes to the results queue.
    let queue = json("attest-queue/function.json");
    assert_eq!(queue["bindings"][0]["queueName"], work.as_str());
    for f in ["attest-queue", "attest-http", "attest-sweep"] {
        let doc = json(&format!("{f}/function.json"));
        for b in doc["bindings"].as_array().unwrap() {
            if b["type"] == "queue" || b["type"] == "queueTrigger" {
                assert_eq!(b["connection"], "AzureWebJobsStorage", "{f}");
                assert!(
                    b["queueName"] == work.as_str() || b["queueName"] == results.as_str(),
                    "{f}: {b}"
                );
            }
        }
    }
    assert!(
        bicep.contains("name: '${workQueueName}-poison'"),
        "the poison queue the host moves messages to"
    );
    assert_eq!(
        bicep_setting(&bicep, "ATTEST_WORK_QUEUE").as_deref(),
        Some("workQueueName")
    );
    assert_eq!(
        bicep_setting(&bicep, "ATTEST_STATE_CONTAINER").as_deref(),
        Some("stateContainerName")
    );
    assert_eq!(
        bicep_setting(&bicep, "AzureWebJobsStorage__credential").as_deref(),
        Some("'managedidentity'")
    );
    assert!(bicep_setting(&bicep, "AzureWebJobsStorage__accountName").is_some());
    assert!(bicep_setting(&bicep, "AzureWebJobsStorage__clientId").is_some());
    // Flex Consumption takes the runtime in functionAppConfig, not the setting.
    assert!(bicep_setting(&bicep, "FUNCTIONS_WORKER_RUNTIME").is_none());
    assert!(bicep.contains("tier: 'FlexConsumption'") && bicep.contains("name: 'custom'"));
    assert!(
        bicep.contains("maximumInstanceCount: maximumInstanceCount"),
        "the instance cap is a parameter"
    );
    // The settings file for other plans names the same queue and container.
    let settings = json("app-settings.json");
    let setting = |name: &str| {
        settings
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .map(|s| s["value"].as_str().unwrap_or_default().to_owned())
    };
    assert_eq!(setting("ATTEST_WORK_QUEUE"), Some(work.clone()));
    assert_eq!(setting("ATTEST_STATE_CONTAINER"), Some(state.clone()));
    // The handler reads the same settings the template sets.
    let env = |k: &str| -> Option<String> {
        match k {
            "AzureWebJobsStorage__accountName" => Some("attestexample".into()),
            "AzureWebJobsStorage__credential" => Some("managedidentity".into()),
            "ATTEST_WORK_QUEUE" => Some(work.clone()),
            "ATTEST_STATE_CONTAINER" => Some(state.clone()),
            "AZURE_TENANT_ID" => Some("00000000-0000-0000-0000-000000000001".into()),
            "AZURE_CLIENT_ID" => Some("00000000-0000-0000-0000-000000000002".into()),
            _ => None,
        }
    };
    let host_json = std::fs::read_to_string(azure.join("host.json")).unwrap();
    assert!(intune_attest::frontdoor::azure::build_service_with(env, Some(&host_json)).is_ok());
    // Exactly the storage roles it needs, on that account.
    for role in [
        "974c5e8b-45b9-4653-ba55-5f855dd0fb88",
        "ba92f5b4-2d11-453d-a403-e96b0029c9fe",
    ] {
        assert!(bicep.contains(role), "{role}");
    }
    assert!(
        !bicep.contains("b7e6dc6d-f1e8-4753-8033-0f276bb0955b"),
        "no Storage Blob Data Owner"
    );
    // No Bicep that checkov cannot parse (see scripts/lint-template).
    for construct in ["import ", "func ", "=> ", "..."] {
        assert!(
            !bicep
                .lines()
                .any(|l| !l.trim_start().starts_with("//") && l.contains(construct)),
            "{construct}"
        );
    }
}
