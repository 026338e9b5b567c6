//! The local route docs/aws.md offers: the built binary under cargo-lambda's
//! own Runtime API emulator (`cargo lambda watch --only-lambda-apis`,
//! invoked with `cargo lambda invoke`), against the Graph simulator.
//! cargo-lambda sends every invocation the constant deadline `600000` ms
//! since 1970; runs must still go ahead, bounded by `timeouts.invoke`.
//! `scripts/test` installs cargo-lambda (PyPI `cargo-lambda`).

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use graph_sim::Sim;
use serde_json::Value;

use crate::common::{env_of, sim_config};

/// A process group killed when dropped (cargo runs cargo-lambda as a child).
struct Group(Child);

impl Drop for Group {
    fn drop(&mut self) {
        // SAFETY: signals the process group this test started.
        unsafe {
            libc::kill(-(self.0.id() as i32), libc::SIGKILL);
        }
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn invoke(port: u16, event: &str) -> Value {
    let out = Command::new("cargo")
        .args([
            "lambda",
            "invoke",
            "-A",
            "127.0.0.1",
            "-P",
            &port.to_string(),
            "--data-file",
        ])
        .arg(format!("{}/events/{event}", env!("CARGO_MANIFEST_DIR")))
        .output()
        .expect("cargo lambda invoke runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{event}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{event}: {e}: {stdout}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_binary_runs_under_cargo_lambdas_emulator_and_its_constant_deadline() {
    let found = Command::new("cargo").args(["lambda", "--version"]).output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "cargo-lambda is missing: `python3 -m pip install cargo-lambda==1.9.2` (scripts/test does)"
    );
    let sim = Sim::start(sim_config()).await.unwrap();
    let port = free_port();
    let _emulator = Group(
        Command::new("cargo")
            .args([
                "lambda",
                "watch",
                "--only-lambda-apis",
                "-A",
                "127.0.0.1",
                "-P",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("cargo lambda watch starts"),
    );
    let mut listening = false;
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            listening = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(listening, "the emulator did not listen");
    let log = tempfile_path("cargo-lambda-function.log");
    let function = Group(
        Command::new(env!("CARGO_BIN_EXE_intune-attest"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env_of(&sim, &[]))
            // What the emulator says its function must be given.
            .env("AWS_LAMBDA_RUNTIME_API", format!("http://127.0.0.1:{port}/.rt"))
            .env("AWS_LAMBDA_FUNCTION_NAME", "_")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "4096")
            .env("AWS_REGION", "us-east-1")
            .env("ATTEST_METRICS", "off")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .process_group(0)
            .spawn()
            .expect("the function starts"),
    );
    let port_for = port;
    let direct = tokio::task::spawn_blocking(move || invoke(port_for, "direct-invoke.json"))
        .await
        .unwrap();
    assert_eq!(direct["summary"]["initiated"], 4, "{direct}");
    let sqs = tokio::task::spawn_blocking(move || invoke(port_for, "sqs-batch.json"))
        .await
        .unwrap();
    assert_eq!(
        sqs,
        serde_json::json!({"batchItemFailures": []}),
        "nothing returned for retry"
    );
    assert_eq!(sim.ledger().len(), 4 + 4, "the direct invoke's devices and the batch's");
    drop(function);
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert_eq!(stderr.matches("deadline had passed").count(), 1, "{stderr}");
    assert!(!stderr.contains("no attempt made before the deadline"), "{stderr}");
}

fn tempfile_path(name: &str) -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let _ = std::fs::create_dir_all(dir);
    dir.join(name)
}
