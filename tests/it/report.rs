//! The HTML report in a real browser: headless Chromium loads the page the
//! CLI wrote for a 2,000-device run with a verdict, and the rendered DOM is
//! checked against the JSON documents it came from.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::cli::{assert_valid_result, invoke, invoke_to_file, make_report, status_doc};
use crate::common::sim_config;
use graph_sim::Sim;

const HOSTILE: &str = "<img src=x onerror=alert(1)>";

/// Chromium: `$CHROMIUM`, or Debian's package (which `scripts/test` installs).
fn chromium() -> PathBuf {
    if let Some(path) = std::env::var_os("CHROMIUM") {
        return path.into();
    }
    let debian = PathBuf::from("/usr/bin/chromium");
    assert!(
        debian.exists(),
        "headless Chromium is needed at /usr/bin/chromium (scripts/test installs Debian's chromium package) or $CHROMIUM"
    );
    debian
}

/// Runs headless Chromium on `url` with `args` and returns its stdout. It
/// is started so that it makes no connection of its own.
async fn browse(url: &str, args: &[&str]) -> String {
    let profile = std::env::temp_dir().join(format!("report-chromium-{}-{}", std::process::id(), fastrand::u64(..)));
    let out = tokio::process::Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), out)
        .await
        .expect("Chromium finishes within two minutes")
        .expect("Chromium runs");
    let _ = std::fs::remove_dir_all(&profile);
    assert!(
        out.status.success(),
        "Chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The number shown on the summary card with `id`.
fn card(dom: &str, id: &str) -> u64 {
    let at = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no card {id}"));
    let rest = &dom[at..];
    let start = rest.find("<span class=\"n\">").expect("a number") + "<span class=\"n\">".len();
    let end = start + rest[start..].find('<').expect("the number ends");
    rest[start..end]
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("card {id}: {}", &rest[start..end]))
}

fn read(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[tokio::test]
async fn the_report_opens_in_chromium_with_the_runs_numbers_and_shows_graph_text_as_text() {
    // The quick start's fleet and filter, its devices taken without
    // validation, so Intune's verdict varies; three named non-Windows
    // devices make Graph answer with markup in its error message.
    let mut cfg = sim_config();
    cfg.fleet = graph_sim::FleetSpec {
        size: 2000,
        tpm_1_2: 0.01,
        virtual_machines: 0.03,
        cloud_pcs: 0.02,
        old_builds: 0.03,
        ..graph_sim::FleetSpec::default()
    };
    cfg.action_delay = Duration::from_millis(300);
    cfg.platform_error_message = HOSTILE.to_string();
    let sim = Sim::start(cfg).await.unwrap();
    let hostile: Vec<String> = sim
        .fleet()
        .iter()
        .filter(|d| d.os != "Windows")
        .take(3)
        .map(|d| d.id.clone())
        .collect();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/report");
    std::fs::create_dir_all(&dir).unwrap();
    let (result, status, page) = (
        dir.join("result.json"),
        dir.join("status.json"),
        dir.join("report.html"),
    );
    let payload = serde_json::to_vec(&serde_json::json!({
        "managed_device_ids": hostile,
        "device_filter": "operatingSystem eq 'Windows'",
        "validate_device_exists": false,
        "correlation_id": "report-check"
    }))
    .unwrap();
    let run = invoke_to_file(&sim, payload, &result).await;
    assert_eq!(run.status.code(), Some(1), "{}", String::from_utf8_lossy(&run.stderr));
    let doc = assert_valid_result(&run.stdout);
    assert_eq!(doc, read(&result));
    tokio::time::sleep(Duration::from_millis(400)).await;
    let checked = invoke(
        &sim,
        &[],
        &[
            "status",
            "--result",
            result.to_str().unwrap(),
            "--status-file",
            status.to_str().unwrap(),
        ],
        None,
    )
    .await;
    assert_eq!(checked.status.code(), Some(0));
    let verdict = status_doc(&checked.stdout);
    let made = make_report(&sim, &result, Some(&status), &page).await;
    assert_eq!(made.status.code(), Some(0), "{}", String::from_utf8_lossy(&made.stderr));
    let size = std::fs::metadata(&page).unwrap().len();
    assert!(size < 2 * 1024 * 1024, "the report is {size} bytes");

    let url = format!("file://{}", page.display());
    let dom = browse(&url, &["--dump-dom"]).await;

    // The numbers are the JSON's.
    let summary = &doc["summary"];
    let requested = summary["requested"].as_u64().unwrap();
    assert!(requested > 1500, "{summary}");
    assert_eq!(card(&dom, "requested"), requested);
    assert_eq!(card(&dom, "initiated"), summary["initiated"].as_u64().unwrap());
    assert_eq!(
        card(&dom, "not-initiated"),
        requested - summary["initiated"].as_u64().unwrap()
    );
    let states = &verdict["summary"]["action_states"];
    assert_eq!(card(&dom, "checked"), verdict["summary"]["devices"].as_u64().unwrap());
    assert_eq!(card(&dom, "done"), states["done"].as_u64().unwrap());
    assert!(states["not_supported"].as_u64().unwrap() > 0, "{states}");
    // Failed, not supported and untrusted are each their own card.
    assert_eq!(card(&dom, "failed"), states["failed"].as_u64().unwrap_or(0));
    assert_eq!(card(&dom, "not-supported"), states["not_supported"].as_u64().unwrap());
    let statuses = &verdict["summary"]["attestation_statuses"];
    let untrusted = statuses["untrusted"].as_u64().unwrap_or(0);
    assert_eq!(card(&dom, "untrusted"), untrusted);
    assert_eq!(dom.contains("id=\"untrusted-badge\""), untrusted > 0);
    // One row per device, in the document's order, with its verdict.
    assert_eq!(dom.matches("<tr data-outcome=").count() as u64, requested);
    let first = &doc["devices"][0];
    assert_eq!(first["outcome"], "failed");
    let row = &dom[dom
        .find(first["device_id"].as_str().unwrap())
        .expect("the first device's row")..];
    let row = &row[..row.find("</tr>").unwrap()];
    assert!(
        row.contains(">failed<") && row.contains(">400<") && row.contains("BadRequest"),
        "{row}"
    );
    assert!(
        row.contains("not checked"),
        "a device that was not initiated has no verdict: {row}"
    );
    // Graph's markup is text: escaped in the DOM, and no element was made
    // of it, so there is no handler to run.
    assert!(
        row.contains("<span class=\"graph-message\">&lt;img src=x onerror=alert(1)&gt;</span>"),
        "{row}"
    );
    assert!(!dom.contains("<img"), "an element was made from Graph's text");
    // The page's script ran under its own policy: the count line is its.
    assert!(dom.contains(&format!("{requested} of {requested} devices shown")));

    // The outcome filter, preselected from the address, in the browser.
    let filtered = browse(&format!("{url}#outcome=failed"), &["--dump-dom"]).await;
    let failed = summary["failed"].as_u64().unwrap();
    assert_eq!(failed, 3);
    assert!(filtered.contains(&format!("{failed} of {requested} devices shown")));
    assert_eq!(
        filtered.matches("hidden=\"\"").count() as u64,
        requested - failed,
        "every other row is hidden"
    );
    assert_eq!(filtered.matches("<tr data-outcome=\"failed\"").count(), 3);
    // The verdict filter, from the address, with the outcome filter. This
    // Graph serves no attestation status (as the current beta schema), so
    // a device's verdict is its action state: the initiated devices whose
    // attestation is done.
    assert_eq!(statuses.as_object().unwrap().keys().collect::<Vec<_>>(), ["null"]);
    let done = states["done"].as_u64().unwrap();
    let both = browse(&format!("{url}#outcome=initiated&verdict=done"), &["--dump-dom"]).await;
    assert!(
        both.contains(&format!("{done} of {requested} devices shown")),
        "{done} done"
    );
    assert_eq!(
        both.matches("hidden=\"\"").count() as u64,
        requested - done,
        "every other row is hidden"
    );
    // A device name column and its filter (this run read no device, so
    // the names are empty).
    assert!(
        dom.contains("<th>Device name</th>") && dom.contains("id=\"name-filter\""),
        "device names"
    );

    // Nothing is cut off at 1280 px: the device table fits, so the page's
    // script keeps the scroll hint hidden; in a narrower window it shows.
    let hint_hidden = |dom: &str| {
        let at = dom.find("id=\"scroll-hint\"").expect("the scroll hint");
        let open = dom[..at].rfind('<').unwrap();
        let close = at + dom[at..].find('>').unwrap();
        dom[open..close].contains("hidden")
    };
    let wide = browse(&url, &["--window-size=1280,1000", "--dump-dom"]).await;
    assert!(hint_hidden(&wide), "the table overflows at 1280 px");
    let narrow = browse(&url, &["--window-size=900,1000", "--dump-dom"]).await;
    assert!(!hint_hidden(&narrow), "a 900 px window scrolls the table and says so");
    // This Graph serves no attestation status: the page says what "done"
    // does not tell.
    assert!(dom.contains("id=\"no-verdict\""), "the verdict's absence is said");

    // A screenshot of the page as a reviewer sees it.
    let shot = dir.join("report.png");
    let _ = std::fs::remove_file(&shot);
    browse(
        &url,
        &[&format!("--screenshot={}", shot.display()), "--window-size=1280,2200"],
    )
    .await;
    let png = std::fs::read(&shot).expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 20_000, "{} bytes", png.len());
}
