//! Azurite (Microsoft's Storage emulator, from npm) on 127.0.0.1, started
//! per test on free ports and stopped by PID on drop; requests carry an
//! account SAS signed with the emulator's well-known development key, over
//! plain http (`--loose`).

#![allow(dead_code)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use azure_storage_queue::QueueClient;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use intune_attest::azure_storage::StorageAccount;
use intune_attest::queue::azure::MessageEncoding;

/// The emulator's account and its published development key.
pub const ACCOUNT: &str = "devstoreaccount1";
const DEV_KEY: &str = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

pub struct Azurite {
    child: Child,
    pub blob_port: u16,
    pub queue_port: u16,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The `azurite` command: `$AZURITE`, else the copy `scripts/test`
/// installs under `target/azurite`, else one on `PATH`.
fn command() -> String {
    if let Ok(path) = std::env::var("AZURITE") {
        return path;
    }
    let local = concat!(env!("CARGO_MANIFEST_DIR"), "/target/azurite/node_modules/.bin/azurite");
    if std::path::Path::new(local).exists() {
        return local.to_owned();
    }
    "azurite".to_owned()
}

impl Azurite {
    pub async fn start() -> Azurite {
        Self::start_on(free_port(), free_port()).await
    }

    /// Azurite on the given ports (a test that first finds them closed).
    pub async fn start_on(blob_port: u16, queue_port: u16) -> Azurite {
        Self::launch(blob_port, queue_port, &[]).await
    }

    /// Azurite over https with the leaf certificate of `pki`, accepting
    /// Entra ID tokens (`--oauth basic`: their claims are checked, not
    /// their signature) as well as SAS.
    pub async fn start_https(pki: &Pki) -> Azurite {
        let (cert, key) = (
            pki.leaf.to_str().unwrap().to_owned(),
            pki.leaf_key.to_str().unwrap().to_owned(),
        );
        Self::launch(
            free_port(),
            free_port(),
            &["--oauth", "basic", "--cert", &cert, "--key", &key],
        )
        .await
    }

    async fn launch(blob_port: u16, queue_port: u16, extra: &[&str]) -> Azurite {
        let table_port = free_port();
        let dir = std::env::temp_dir().join(format!("azurite-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let child = Command::new(command())
            .args([
                "--inMemoryPersistence",
                "--loose",
                "--skipApiVersionCheck",
                "--disableTelemetry",
                "--silent",
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                &blob_port.to_string(),
                "--queueHost",
                "127.0.0.1",
                "--queuePort",
                &queue_port.to_string(),
                "--tableHost",
                "127.0.0.1",
                "--tablePort",
                &table_port.to_string(),
            ])
            .args(extra)
            // In memory: nothing is written but its debug log, if any.
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("azurite is installed (scripts/test installs it under target/azurite)");
        let azurite = Azurite {
            child,
            blob_port,
            queue_port,
            _dir: TempDir(dir),
        };
        for port in [blob_port, queue_port] {
            let mut up = false;
            for _ in 0..400 {
                if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                    up = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert!(up, "azurite did not listen on {port}");
        }
        azurite
    }

    /// An account SAS for blobs and queues (every permission), signed with
    /// the development key.
    pub fn sas() -> String {
        let (sv, ss, srt, sp, se, spr) = (
            "2021-08-06",
            "bq",
            "sco",
            "rwdlacup",
            "2099-01-01T00:00:00Z",
            "https,http",
        );
        let to_sign = format!("{ACCOUNT}\n{sp}\n{ss}\n{srt}\n\n{se}\n\n{spr}\n{sv}\n\n");
        let key = base64::engine::general_purpose::STANDARD.decode(DEV_KEY).unwrap();
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
        mac.update(to_sign.as_bytes());
        let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        let sig: String = url::form_urlencoded::byte_serialize(sig.as_bytes()).collect();
        format!("sv={sv}&ss={ss}&srt={srt}&sp={sp}&se={se}&spr={spr}&sig={sig}")
    }

    pub fn queue_service(&self) -> String {
        format!("http://127.0.0.1:{}/{ACCOUNT}?{}", self.queue_port, Self::sas())
    }

    pub fn blob_service(&self) -> String {
        format!("http://127.0.0.1:{}/{ACCOUNT}?{}", self.blob_port, Self::sas())
    }

    /// The handler's settings for this account: the work queue and the
    /// state container (both created here).
    pub async fn settings(&self, queue: &str, container: &str) -> Vec<(String, String)> {
        self.create_queue(queue).await;
        self.create_container(container).await;
        vec![
            ("AzureWebJobsStorage__queueServiceUri".into(), self.queue_service()),
            ("AzureWebJobsStorage__blobServiceUri".into(), self.blob_service()),
            ("ATTEST_WORK_QUEUE".into(), queue.into()),
            ("ATTEST_STATE_CONTAINER".into(), container.into()),
        ]
    }

    pub fn account(&self) -> StorageAccount {
        let get = |k: &str| match k {
            "AzureWebJobsStorage__queueServiceUri" => Some(self.queue_service()),
            "AzureWebJobsStorage__blobServiceUri" => Some(self.blob_service()),
            _ => None,
        };
        StorageAccount::from_env(get).unwrap().unwrap()
    }

    pub async fn create_queue(&self, name: &str) -> QueueClient {
        let q = self.account().queue(name).unwrap();
        q.create(None).await.unwrap();
        q
    }

    pub async fn create_container(&self, name: &str) -> azure_storage_blob::BlobContainerClient {
        let c = self.account().container(name).unwrap();
        c.create(None).await.unwrap();
        c
    }
}

/// A message taken from the queue as the queue trigger takes it.
pub struct Received {
    pub id: String,
    pub pop_receipt: String,
    pub dequeue_count: i64,
    /// The payload, decoded per the trigger's encoding.
    pub payload: String,
}

/// Takes up to `n` visible messages, hidden for `hide` while they run.
pub async fn receive(q: &QueueClient, n: i32, hide: Duration) -> Vec<Received> {
    let options = azure_storage_queue::models::QueueClientReceiveMessagesOptions {
        number_of_messages: Some(n),
        visibility_timeout: Some(hide.as_secs().max(1) as i32),
        ..Default::default()
    };
    let got = q.receive_messages(Some(options)).await.unwrap().into_model().unwrap();
    got.items
        .unwrap_or_default()
        .into_iter()
        .map(|m| Received {
            id: m.message_id.unwrap_or_default(),
            pop_receipt: m.pop_receipt.unwrap_or_default(),
            dequeue_count: m.dequeue_count.unwrap_or_default(),
            payload: MessageEncoding::Base64
                .decode(m.message_text.as_deref().unwrap_or_default())
                .expect("every message is base64, as the queue trigger expects"),
        })
        .collect()
}

pub async fn delete(q: &QueueClient, m: &Received) {
    q.delete_message(&m.id, &m.pop_receipt, None).await.unwrap();
}

/// How many messages the queue holds, visible or not.
pub async fn approximate_count(q: &QueueClient) -> i32 {
    let props = q.get_properties(None).await.unwrap();
    props
        .headers()
        .get_optional_str(&azure_core::http::headers::HeaderName::from_static(
            "x-ms-approximate-messages-count",
        ))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A test CA and a server certificate it signed for 127.0.0.1 (a
/// self-signed CA used as the server's own certificate is refused by
/// rustls as `CaUsedAsEndEntity`). Made with the `openssl` command.
pub struct Pki {
    pub ca: std::path::PathBuf,
    pub leaf: std::path::PathBuf,
    pub leaf_key: std::path::PathBuf,
    _dir: TempDir,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = std::env::temp_dir().join(format!("pki-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let run = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .output()
                .expect("openssl is installed");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        std::fs::write(
            dir.join("leaf.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=intune-attest test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "leaf.key",
            "-out",
            "leaf.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        run(&[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "leaf.pem",
            "-days",
            "2",
            "-extfile",
            "leaf.ext",
        ]);
        Pki {
            ca: dir.join("ca.pem"),
            leaf: dir.join("leaf.pem"),
            leaf_key: dir.join("leaf.key"),
            _dir: TempDir(dir),
        }
    }

    /// A client options' transport that trusts the test CA.
    pub fn transport(&self) -> azure_core::http::Transport {
        let ca = reqwest::Certificate::from_pem(&std::fs::read(&self.ca).unwrap()).unwrap();
        let client = reqwest::Client::builder().add_root_certificate(ca).build().unwrap();
        azure_core::http::Transport::new(std::sync::Arc::new(client))
    }
}
