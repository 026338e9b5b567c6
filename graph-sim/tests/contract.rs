//! The simulator keeps Graph's contract where intune-attest depends on it.

use graph_sim::{CLIENT_ID, CLIENT_SECRET, Sim, SimConfig, TENANT_ID};
use serde_json::{Value, json};

async fn token(sim: &Sim) -> String {
    let url = format!("{}/{TENANT_ID}/oauth2/v2.0/token", sim.url());
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", CLIENT_ID),
        ("client_secret", CLIENT_SECRET),
        ("scope", "https://graph.microsoft.com/.default"),
    ];
    let body: Value = reqwest::Client::new()
        .post(url)
        .form(&form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["access_token"].as_str().unwrap().to_owned()
}

async fn batch(sim: &Sim, token: &str, body: Value) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!("{}/beta/$batch", sim.url()))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn item(id: &str, url: &str) -> Value {
    json!({"id": id, "method": "POST", "url": url, "headers": {"Content-Type": "application/json"}, "body": {}})
}

#[tokio::test]
async fn batch_limits_are_graphs() {
    let sim = Sim::start(SimConfig::default()).await.unwrap();
    let t = token(&sim).await;
    let dev = sim.fleet().iter().find(|d| d.is_windows()).unwrap().id.clone();
    let url = format!("/deviceManagement/managedDevices/{dev}/initiateDeviceAttestation");
    let too_many: Vec<Value> = (1..=21).map(|i| item(&i.to_string(), &url)).collect();
    assert_eq!(batch(&sim, &t, json!({"requests": too_many})).await.0, 400);
    let dup = vec![item("A", &url), item("a", &url)];
    assert_eq!(batch(&sim, &t, json!({"requests": dup})).await.0, 400);
    assert!(sim.ledger().is_empty(), "a refused batch must not act");
    let absolute = vec![item("1", &format!("/beta{url}"))];
    let (status, body) = batch(&sim, &t, json!({"requests": absolute})).await;
    assert_eq!((status, body["responses"][0]["status"].as_u64()), (200, Some(400)));
}

#[tokio::test]
async fn both_action_spellings_and_both_collections_are_served() {
    let sim = Sim::start(SimConfig::default()).await.unwrap();
    let t = token(&sim).await;
    let co = sim.fleet().iter().find(|d| d.comanaged).unwrap().id.clone();
    let requests = vec![
        item(
            "1",
            &format!("/deviceManagement/managedDevices/{co}/initiateDeviceAttestation"),
        ),
        item(
            "2",
            &format!("/deviceManagement/comanagedDevices/{co}/microsoft.graph.initiateDeviceAttestation"),
        ),
    ];
    let (status, body) = batch(&sim, &t, json!({"requests": requests})).await;
    assert_eq!(status, 200);
    let statuses: Vec<u64> = body["responses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, vec![204, 204]);
    assert_eq!(sim.ledger().len(), 2);
}

#[tokio::test]
async fn reads_select_fields_and_lists_page() {
    let sim = Sim::start(SimConfig {
        max_page: 10,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let t = token(&sim).await;
    let client = reqwest::Client::new();
    let dev = &sim.fleet()[0];
    let url = format!(
        "{}/beta/deviceManagement/managedDevices/{}?$select=id,operatingSystem,hardwareInformation",
        sim.url(),
        dev.id
    );
    let body: Value = client
        .get(url)
        .bearer_auth(&t)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["id"], dev.id);
    assert!(body.get("deviceName").is_none());
    assert!(
        body.get("@odata.context").is_some(),
        "real Graph returns the entity at top level"
    );
    let mut next = Some(format!(
        "{}/beta/deviceManagement/managedDevices?$filter=operatingSystem%20eq%20'Windows'&$top=999",
        sim.url()
    ));
    let mut seen = 0;
    let mut pages = 0;
    while let Some(url) = next {
        let page: Value = client
            .get(url)
            .bearer_auth(&t)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        seen += page["value"].as_array().unwrap().len();
        pages += 1;
        next = page["@odata.nextLink"].as_str().map(str::to_owned);
    }
    assert_eq!(seen, sim.fleet().iter().filter(|d| d.is_windows()).count());
    assert!(pages > 1);
    let bad = format!(
        "{}/beta/deviceManagement/managedDevices?$filter=deviceName%20like%20'x'",
        sim.url()
    );
    assert_eq!(
        client.get(bad).bearer_auth(&t).send().await.unwrap().status().as_u16(),
        400
    );
}

#[tokio::test]
async fn tokens_are_checked() {
    let sim = Sim::start(SimConfig::default()).await.unwrap();
    let (status, _) = batch(&sim, "forged", json!({"requests": []})).await;
    assert_eq!(status, 401);
    let url = format!("{}/{TENANT_ID}/oauth2/v2.0/token", sim.url());
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", CLIENT_ID),
        ("client_secret", "wrong"),
        ("scope", "x/.default"),
    ];
    let resp = reqwest::Client::new().post(url).form(&form).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "invalid_client");
    let t = token(&sim).await;
    sim.revoke_tokens();
    assert_eq!(batch(&sim, &t, json!({"requests": []})).await.0, 401);
}

#[tokio::test]
async fn a_filter_outside_the_documented_properties_is_ignored_unless_strict() {
    let sim = Sim::start(SimConfig {
        fleet: graph_sim::FleetSpec {
            size: 60,
            virtual_machines: 0.3,
            ..graph_sim::FleetSpec::default()
        },
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let t = token(&sim).await;
    let count = |filter: &'static str| {
        let (url, t) = (sim.url(), t.clone());
        async move {
            let list = url::Url::parse_with_params(
                &format!("{url}/beta/deviceManagement/managedDevices"),
                [("$filter", filter), ("$top", "999")],
            )
            .unwrap();
            let body: Value = reqwest::Client::new()
                .get(list)
                .bearer_auth(t)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            body["value"].as_array().unwrap().len()
        }
    };
    let vms = sim.fleet().iter().filter(|d| d.model == "Virtual Machine").count();
    let windows = sim.fleet().iter().filter(|d| d.is_windows()).count();
    assert!(vms > 0 && vms < 60 && windows < 60);
    assert_eq!(count("model eq 'Virtual Machine'").await, 60, "ignored: every device");
    assert_eq!(
        count("operatingSystem eq 'Windows' and model eq 'Virtual Machine'").await,
        60,
        "one undocumented property and the whole filter is ignored"
    );
    assert_eq!(count("operatingSystem eq 'Windows'").await, windows);
    sim.configure(|c| c.filter_support = graph_sim::FilterSupport::Strict);
    assert_eq!(count("model eq 'Virtual Machine'").await, vms);
    sim.configure(|c| c.filter_support = graph_sim::FilterSupport::Ignored);
    assert_eq!(count("operatingSystem eq 'Windows'").await, 60);
}
