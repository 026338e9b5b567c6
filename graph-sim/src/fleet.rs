//! A seeded fleet of devices with a realistic mix of platforms.

use serde_json::{Value, json};

/// One simulated device.
#[derive(Clone, Debug)]
pub struct SimDevice {
    /// Lower-case GUID.
    pub id: String,
    /// `deviceName`.
    pub name: String,
    /// `operatingSystem`.
    pub os: &'static str,
    /// `osVersion`.
    pub os_version: &'static str,
    /// Whether it is co-managed with Configuration Manager.
    pub comanaged: bool,
    /// `hardwareInformation.tpmSpecificationVersion`: `Some("")` means no
    /// TPM reported, `None` means the field is not reported.
    pub tpm: Option<&'static str>,
    /// `model`.
    pub model: &'static str,
    /// `manufacturer`.
    pub manufacturer: &'static str,
    /// `deviceType`.
    pub device_type: &'static str,
    /// `lastSyncDateTime` (the fleet synced over the four weeks to
    /// 2026-11-28, one device a day in turn).
    pub last_sync: String,
    /// `enrolledDateTime` (enrolled over the twelve months of 2025).
    pub enrolled: String,
    /// `deviceCategoryDisplayName`: `Lab`, `Office` or `Unknown`, in turn.
    pub category: &'static str,
    /// `jailBroken` (`Unknown` on Windows, `False` elsewhere; every
    /// thirtieth non-Windows device `True`).
    pub jailbroken: &'static str,
    /// `complianceState`: `compliant`, every fifth `noncompliant`.
    pub compliance: &'static str,
    /// `userPrincipalName`: one of ten users, `user<n>@contoso.com`.
    pub user: String,
    /// `managementAgent`: `mdm`, `configurationManagerClientMdm` when
    /// co-managed, or an agent with no MDM channel.
    pub agent: &'static str,
    /// `skuFamily` (`Enterprise` on Windows clients).
    pub sku_family: &'static str,
    /// `hardwareInformation.operatingSystemProductType` (48, Professional,
    /// on clients; a server product type on Windows Server).
    pub product_type: Option<u32>,
}

/// The `managementAgentType` members with no Intune MDM channel the fleet
/// uses, in turn.
pub const NON_MDM_AGENTS: [&str; 5] = [
    "msSense",
    "configurationManagerClient",
    "eas",
    "intuneClient",
    "unknown",
];

impl SimDevice {
    /// The device as Graph's managedDevice entity.
    pub fn to_json(&self, with_hardware: bool) -> Value {
        let agent = self.agent;
        let hardware = if with_hardware {
            match self.tpm {
                Some(spec) => {
                    let mut h = json!({"tpmSpecificationVersion": spec, "tpmVersion": if spec.is_empty() {""} else {"2.0"}, "tpmManufacturer": if spec.is_empty() {""} else {"IFX"}});
                    if let Some(t) = self.product_type {
                        h["operatingSystemProductType"] = json!(t);
                    }
                    h
                }
                None => Value::Null,
            }
        } else {
            Value::Null
        };
        json!({
            "id": self.id,
            "deviceName": self.name,
            "operatingSystem": self.os,
            "osVersion": self.os_version,
            "managementAgent": agent,
            "model": self.model,
            "manufacturer": self.manufacturer,
            "deviceType": self.device_type,
            "lastSyncDateTime": self.last_sync,
            "enrolledDateTime": self.enrolled,
            "deviceCategoryDisplayName": self.category,
            "jailBroken": self.jailbroken,
            "complianceState": self.compliance,
            "userPrincipalName": self.user,
            "skuFamily": self.sku_family,
            "hardwareInformation": hardware,
        })
    }

    /// How an initiated attestation ends on this device: `done`,
    /// `failed` (no usable TPM, an old build) or `notSupported` (a virtual
    /// machine or Cloud PC), with the attestation status Intune then shows.
    pub fn attestation_end(&self) -> (&'static str, &'static str) {
        if self.device_type == "cloudPC"
            || self.model == "Virtual Machine"
            || self.is_server()
            || !self.has_mdm_channel()
        {
            ("notSupported", "notSupported")
        } else if self.tpm == Some("")
            || self.tpm.is_some_and(|t| t.starts_with("1."))
            || self.os_version.starts_with("10.0.19044")
        {
            ("failed", "unTrusted")
        } else {
            ("done", "trusted")
        }
    }

    /// Whether attestation can be initiated on it.
    pub fn is_windows(&self) -> bool {
        self.os == "Windows"
    }

    /// Whether it runs Windows Server.
    pub fn is_server(&self) -> bool {
        self.sku_family.starts_with("Server")
    }

    /// Whether Intune manages it through MDM (and so can send it actions).
    pub fn has_mdm_channel(&self) -> bool {
        !NON_MDM_AGENTS.contains(&self.agent)
    }
}

/// The platform mix of a generated fleet, as fractions that sum to at most
/// 1; the rest is Windows with a TPM.
#[derive(Clone, Debug)]
pub struct FleetSpec {
    /// Devices in the fleet.
    pub size: usize,
    /// Seed: the same seed gives the same fleet.
    pub seed: u64,
    /// Windows devices that report an empty TPM specification.
    pub windows_no_tpm: f64,
    /// Windows devices that do not report hardware information.
    pub windows_unknown_tpm: f64,
    /// macOS, iOS, Android and Linux devices together.
    pub non_windows: f64,
    /// Fraction of Windows devices that are co-managed.
    pub comanaged: f64,
    /// Windows devices with a TPM 1.2.
    pub tpm_1_2: f64,
    /// Windows virtual machines (Hyper-V / Azure, Azure Virtual Desktop).
    pub virtual_machines: f64,
    /// Windows 365 Cloud PCs.
    pub cloud_pcs: f64,
    /// Windows 10 devices on a build older than attestation needs.
    pub old_builds: f64,
    /// Windows devices whose `managementAgent` has no MDM channel
    /// (Defender for Endpoint, Configuration Manager only, EAS, the retired
    /// PC agent, unknown; in turn).
    pub not_mdm: f64,
    /// Windows Server 2022, 2019 and 2025 (in turn; the last two on builds
    /// clients share, told apart by product type and SKU family).
    pub servers: f64,
    /// Windows 11 on builds newer than Microsoft's list names (24H2, 25H2).
    pub unlisted_builds: f64,
}

impl Default for FleetSpec {
    fn default() -> Self {
        Self {
            size: 200,
            seed: 7,
            windows_no_tpm: 0.05,
            windows_unknown_tpm: 0.05,
            non_windows: 0.2,
            comanaged: 0.15,
            tpm_1_2: 0.0,
            virtual_machines: 0.0,
            cloud_pcs: 0.0,
            old_builds: 0.0,
            not_mdm: 0.0,
            servers: 0.0,
            unlisted_builds: 0.0,
        }
    }
}

/// A GUID from the generator.
pub fn guid(rng: &mut fastrand::Rng) -> String {
    let b: [u8; 16] = std::array::from_fn(|_| rng.u8(..));
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The kinds the generator marks beyond platform and build.
#[derive(Clone, Copy)]
enum Kind {
    NotMdm,
    Server,
    Other,
}

/// Generates the fleet.
pub fn generate(spec: &FleetSpec) -> Vec<SimDevice> {
    let mut rng = fastrand::Rng::with_seed(spec.seed);
    let others: [(&str, &str); 4] = [
        ("macOS", "14.5"),
        ("iOS", "17.5.1"),
        ("Android", "14"),
        ("Linux", "22.04"),
    ];
    (0..spec.size)
        .map(|i| {
            let id = guid(&mut rng);
            let roll = rng.f64();
            // (os, osVersion, TPM, model, manufacturer, deviceType)
            let physical = ("Latitude 7440", "Dell Inc.", "windowsRT");
            let mut kind = Kind::Other;
            let mut bucket = roll;
            let mut take = |share: f64| {
                bucket -= share;
                bucket < 0.0
            };
            let (os, os_version, tpm, (model, manufacturer, device_type)) = if take(spec.non_windows) {
                let (os, v) = others[rng.usize(..others.len())];
                (os, v, None, ("", "", "other"))
            } else if take(spec.windows_no_tpm) {
                ("Windows", "10.0.19045.4529", Some(""), physical)
            } else if take(spec.windows_unknown_tpm) {
                ("Windows", "10.0.22631.3737", None, physical)
            } else if take(spec.tpm_1_2) {
                ("Windows", "10.0.19045.4529", Some("1.2, 2, 3"), physical)
            } else if take(spec.virtual_machines) {
                (
                    "Windows",
                    "10.0.22631.3737",
                    Some("2.0, 0, 1.38"),
                    ("Virtual Machine", "Microsoft Corporation", "windowsRT"),
                )
            } else if take(spec.cloud_pcs) {
                (
                    "Windows",
                    "10.0.22631.3737",
                    Some("2.0, 0, 1.38"),
                    (
                        "Cloud PC Enterprise 2vCPU/8GB/128GB",
                        "Microsoft Corporation",
                        "cloudPC",
                    ),
                )
            } else if take(spec.old_builds) {
                ("Windows", "10.0.19044.3086", Some("2.0, 0, 1.59"), physical)
            } else if take(spec.not_mdm) {
                kind = Kind::NotMdm;
                ("Windows", "10.0.22631.3737", Some("2.0, 0, 1.59"), physical)
            } else if take(spec.servers) {
                kind = Kind::Server;
                let version = ["10.0.20348.2527", "10.0.17763.5936", "10.0.26100.1742"][i % 3];
                (
                    "Windows",
                    version,
                    Some("2.0, 0, 1.59"),
                    ("PowerEdge R650", "Dell Inc.", "windowsRT"),
                )
            } else if take(spec.unlisted_builds) {
                (
                    "Windows",
                    ["10.0.26100.1742", "10.0.26200.6584"][i % 2],
                    Some("2.0, 0, 1.59"),
                    physical,
                )
            } else {
                ("Windows", "10.0.22631.3737", Some("2.0, 0, 1.59"), physical)
            };
            let comanaged = os == "Windows" && rng.f64() < spec.comanaged;
            let (agent, sku_family, product_type) = match kind {
                Kind::NotMdm => (NON_MDM_AGENTS[i % NON_MDM_AGENTS.len()], "Enterprise", Some(48)),
                Kind::Server => (
                    "mdm",
                    ["ServerStandard", "ServerDatacenter"][i % 2],
                    Some([7, 8][i % 2]),
                ),
                Kind::Other if os != "Windows" => ("mdm", "", None),
                Kind::Other if comanaged => ("configurationManagerClientMdm", "Enterprise", Some(48)),
                Kind::Other => ("mdm", "Enterprise", Some(48)),
            };
            SimDevice {
                id,
                name: format!("DEV-{i:06}"),
                os,
                os_version,
                comanaged,
                tpm,
                model,
                manufacturer,
                device_type,
                last_sync: format!("2026-11-{:02}T{:02}:00:00Z", i % 28 + 1, i % 24),
                enrolled: format!("2025-{:02}-{:02}T08:30:00.1234567Z", i % 12 + 1, i % 27 + 1),
                category: ["Lab", "Office", "Unknown"][i % 3],
                jailbroken: match (os, i % 30) {
                    ("Windows", _) => "Unknown",
                    (_, 0) => "True",
                    _ => "False",
                },
                compliance: if i % 5 == 0 { "noncompliant" } else { "compliant" },
                user: format!("user{}@contoso.com", i % 10),
                agent,
                sku_family,
                product_type,
            }
        })
        .collect()
}
