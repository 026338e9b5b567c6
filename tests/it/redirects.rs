//! A Graph endpoint that redirects elsewhere never receives a follow-up with
//! the bearer token: redirects are not followed, and the call is reported.

use std::sync::{Arc, Mutex};

use crate::common::{harness_with, sim_config};
use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use graph_sim::Sim;
use intune_attest::core::outcome::Outcome;
use serde_json::json;

#[tokio::test]
async fn redirects_are_not_followed_with_the_token() {
    // The host a redirect points to records whatever reaches it.
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let record = seen.clone();
    let elsewhere = Router::new().fallback(move |headers: HeaderMap| {
        let record = record.clone();
        async move {
            record.lock().unwrap().push(format!("{headers:?}"));
            StatusCode::OK
        }
    });
    let other = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let other_url = format!("http://{}/beta/$batch", other.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(other, elsewhere).await });

    // A "Graph" that issues tokens like the simulator but redirects every batch.
    let sim = Sim::start(sim_config()).await.unwrap();
    let token_host = sim.url();
    let location = other_url.clone();
    let graph = Router::new().fallback(move || {
        let location = location.clone();
        async move { (StatusCode::TEMPORARY_REDIRECT, [("location", location)]) }
    });
    let redirecting = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let graph_url = format!("http://{}", redirecting.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(redirecting, graph).await });

    let h = harness_with(
        sim_config(),
        &[("GRAPH_ENDPOINT", &graph_url), ("AZURE_AUTHORITY_HOST", &token_host)],
        |e| e.backoff.attempts = 2,
    )
    .await;
    let id = sim.fleet()[0].id.clone();
    let result = h
        .run(json!({"managed_device_ids": [id], "validate_device_exists": false}))
        .await
        .unwrap();
    assert_eq!(result.devices[0].outcome, Outcome::Failed);
    assert_eq!(result.devices[0].http_status, Some(307));
    assert!(
        seen.lock().unwrap().is_empty(),
        "a request reached the redirect target: {:?}",
        seen.lock().unwrap()
    );
}
