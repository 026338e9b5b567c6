//! The benchmark's code path at tiny scale, so it cannot rot unnoticed.

#[path = "../../benches/support/harness.rs"]
mod harness;

use std::path::PathBuf;

use harness::{Client, Scenario, run, settled_at};

#[tokio::test]
async fn both_clients_initiate_the_same_devices_and_figures_add_up() {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_intune-attest"));
    let s = |client| Scenario {
        devices: 60,
        scale: 200,
        ceiling: 200,
        budget: 190,
        client,
    };
    let ours = run(&s(Client::IntuneAttest(bin))).await;
    let base = run(&s(Client::Baseline)).await;
    assert!(ours.initiated > 0);
    assert_eq!(
        ours.initiated, base.initiated,
        "both attest the Windows devices with a TPM"
    );
    assert_eq!(ours.per_window.iter().sum::<usize>(), ours.initiated);
    assert!(
        ours.http_requests < base.http_requests / 5,
        "{} vs {}",
        ours.http_requests,
        base.http_requests
    );
    assert!(ours.peak_rss.is_some() && ours.cpu.as_nanos() > 0);
    assert_eq!(settled_at(&[10, 100, 100, 100, 5], 100, 0.9), Some(1));
    assert_eq!(settled_at(&[10, 50, 100, 5], 100, 0.9), Some(2));
    assert_eq!(settled_at(&[10, 50, 5], 100, 0.9), None);
}
