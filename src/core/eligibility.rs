//! Who can attest, as Intune's "Windows enrollment attestation" page states
//! it: Windows with TPM 2.0 or later, on a physical device (not a Hyper-V or
//! Azure virtual machine, Azure Virtual Desktop, a Windows 365 Cloud PC or
//! Dev Box), at Windows 10 build 10.0.19045.3996 or later, or Windows 11 at
//! 10.0.22000.2713 / 10.0.22621.2792 / 10.0.22631.2792 or later on those
//! branches. Intune sends the action only through its MDM channel, so a
//! device whose `managementAgent` has none cannot take it; Windows Server is
//! not a client release the page lists; a client build newer than (or
//! between) the listed ones is attempted with a warning. Read from the
//! device's own report in the validation GET; a device found ineligible
//! costs no write.

use serde::{Serialize, Serializer};

use super::gateway::{DeviceInfo, TpmReport};

/// Why a device ended as it did, for machines (the `reason` is for people).
/// [`ReasonCode::as_str`] is the one source of its name: the JSON documents,
/// the table and the docs use it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReasonCode {
    /// Graph has no such device.
    NotFound,
    /// Not a Windows device.
    NotWindows,
    /// The device reported no TPM.
    NoTpm,
    /// The device's TPM is older than 2.0.
    TpmBelow20,
    /// A virtual machine (Hyper-V, Azure, Azure Virtual Desktop or another
    /// hypervisor).
    VirtualMachine,
    /// A Windows 365 Cloud PC or Dev Box.
    CloudPc,
    /// Windows older than the first build that can attest.
    OsBuildTooOld,
    /// The device did not report its TPM: attempted, with this warning.
    TpmUnknown,
    /// Its `managementAgent` has no Intune MDM channel (Defender for
    /// Endpoint security settings management, Configuration Manager only,
    /// EAS, Jamf, the retired PC agent...): Intune cannot send the action.
    NotMdmManaged,
    /// Windows Server, which is not a client release attestation lists.
    WindowsServer,
    /// A Windows build Microsoft's list does not name (newer than, or
    /// between, the listed ones): attempted, with this warning.
    OsBuildUnlisted,
}

impl ReasonCode {
    /// Every reason code, in the order the docs list them.
    pub const ALL: [ReasonCode; 11] = [
        ReasonCode::NotFound,
        ReasonCode::NotWindows,
        ReasonCode::NotMdmManaged,
        ReasonCode::NoTpm,
        ReasonCode::TpmBelow20,
        ReasonCode::VirtualMachine,
        ReasonCode::CloudPc,
        ReasonCode::WindowsServer,
        ReasonCode::OsBuildTooOld,
        ReasonCode::TpmUnknown,
        ReasonCode::OsBuildUnlisted,
    ];

    /// The name used in every document and view.
    pub fn as_str(self) -> &'static str {
        match self {
            ReasonCode::NotFound => "not_found",
            ReasonCode::NotWindows => "not_windows",
            ReasonCode::NoTpm => "no_tpm",
            ReasonCode::TpmBelow20 => "tpm_below_2_0",
            ReasonCode::VirtualMachine => "virtual_machine",
            ReasonCode::CloudPc => "cloud_pc",
            ReasonCode::OsBuildTooOld => "os_build_too_old",
            ReasonCode::TpmUnknown => "tpm_unknown",
            ReasonCode::NotMdmManaged => "not_mdm_managed",
            ReasonCode::WindowsServer => "windows_server",
            ReasonCode::OsBuildUnlisted => "os_build_unlisted",
        }
    }
}

impl Serialize for ReasonCode {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// What the rules say of a device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Eligibility {
    /// It can attest.
    Eligible,
    /// It may attest, but the rules could not all be checked: attempt it and
    /// say why.
    Unconfirmed(ReasonCode, String),
    /// It cannot attest: no write is spent on it.
    Ineligible(ReasonCode, String),
}

/// The first build of each branch that can attest, with its revision.
const MIN_BUILDS: [(u32, u32); 4] = [(19045, 3996), (22000, 2713), (22621, 2792), (22631, 2792)];

/// The `managementAgentType` members through which Intune manages a device
/// by MDM, and so can send it a remote action. Every other member
/// (`msSense`, `configurationManagerClient`, `eas`, `easIntuneClient`,
/// `jamf`, `google`, `googleCloudDevicePolicyController`, `intuneClient`,
/// `intuneAosp`, `unknown`, `unknownFutureValue`) and any value Graph adds
/// later is not one.
const MDM_AGENTS: [&str; 5] = [
    "mdm",
    "easMdm",
    "configurationManagerClientMdm",
    "configurationManagerClientMdmEas",
    "microsoft365ManagedMdm",
];

/// Windows Server 2022's build: no client release has it.
const SERVER_ONLY_BUILD: u32 = 20348;

/// `GetProductInfo` product types of Windows Server editions (standard,
/// datacenter, enterprise, web, cluster, their core, Hyper-V-less and
/// evaluation forms, and the Azure editions).
const SERVER_PRODUCT_TYPES: [u32; 21] = [
    7, 8, 10, 12, 13, 14, 15, 17, 18, 29, 36, 37, 38, 39, 40, 41, 42, 79, 80, 145, 146,
];

/// Models and manufacturers of virtual machines, lower case.
const VM_MARKERS: [&str; 8] = [
    "virtual machine",
    "vmware",
    "virtualbox",
    "kvm",
    "qemu",
    "parallels",
    "xen",
    "bochs",
];

/// Applies the rules to what the device reported.
pub fn check(info: &DeviceInfo) -> Eligibility {
    use Eligibility::{Eligible, Ineligible, Unconfirmed};
    match info.operating_system.as_deref() {
        Some(os) if os.eq_ignore_ascii_case("windows") => {}
        Some(os) => {
            return Ineligible(
                ReasonCode::NotWindows,
                format!("operating system is {os:?}, not Windows"),
            );
        }
        None => {
            return Ineligible(
                ReasonCode::NotWindows,
                "operating system not reported; attestation needs Windows".into(),
            );
        }
    }
    if let Some(agent) = info.management_agent.as_deref()
        && !MDM_AGENTS.iter().any(|a| a.eq_ignore_ascii_case(agent))
    {
        return Ineligible(
            ReasonCode::NotMdmManaged,
            format!(
                "managementAgent is {agent:?}: Intune does not manage the device through MDM, so it cannot send the action"
            ),
        );
    }
    let model = info.model.as_deref().unwrap_or_default().to_lowercase();
    let maker = info.manufacturer.as_deref().unwrap_or_default().to_lowercase();
    if info
        .device_type
        .as_deref()
        .is_some_and(|t| t.eq_ignore_ascii_case("cloudPC"))
        || model.starts_with("cloud pc")
        || model.contains("dev box")
    {
        return Ineligible(
            ReasonCode::CloudPc,
            "a Windows 365 Cloud PC or Dev Box cannot attest (no physical TPM)".into(),
        );
    }
    if let Some(marker) = VM_MARKERS.iter().find(|m| model.contains(*m) || maker.contains(*m)) {
        return Ineligible(
            ReasonCode::VirtualMachine,
            format!("a virtual machine ({marker}) cannot attest: attestation needs a physical device"),
        );
    }
    let build = info.os_version.as_deref().and_then(build_of);
    if let Some(why) = server_marker(info, build.map(|(b, _)| b)) {
        return Ineligible(
            ReasonCode::WindowsServer,
            format!("Windows Server ({why}) cannot attest: attestation is for Windows 10 and 11 clients"),
        );
    }
    if let (Some(version), Some((build, revision))) = (info.os_version.as_deref(), build)
        && !build_can_attest(build, revision)
    {
        return Ineligible(
            ReasonCode::OsBuildTooOld,
            format!(
                "Windows {version} is older than the first build that can attest (10.0.19045.3996, or 10.0.22000.2713 / 22621.2792 / 22631.2792)"
            ),
        );
    }
    let tpm = match &info.tpm {
        TpmReport::Empty => Ineligible(ReasonCode::NoTpm, "no TPM reported".into()),
        TpmReport::Present(spec) => match tpm_major(spec) {
            Some(major) if major < 2 => Ineligible(
                ReasonCode::TpmBelow20,
                format!(
                    "TPM {} reported; attestation needs TPM 2.0",
                    spec.split(',').next().unwrap_or(spec).trim()
                ),
            ),
            Some(_) => Eligible,
            None => Unconfirmed(
                ReasonCode::TpmUnknown,
                "the TPM version reported could not be read; attempted".into(),
            ),
        },
        TpmReport::Unknown => Unconfirmed(
            ReasonCode::TpmUnknown,
            "the device did not report its TPM; attempted".into(),
        ),
    };
    match (tpm, info.os_version.as_deref(), build) {
        (Eligible, Some(version), Some((build, _))) if !build_listed(build) => Unconfirmed(
            ReasonCode::OsBuildUnlisted,
            format!("Windows {version} is a build Microsoft's list of builds that can attest does not name; attempted"),
        ),
        (tpm, ..) => tpm,
    }
}

/// Why the device is Windows Server, if it is: Server 2022's build, or a
/// product type, SKU family or edition that names a server (Server 2016,
/// 2019 and 2025 share their builds with client releases).
fn server_marker(info: &DeviceInfo, build: Option<u32>) -> Option<String> {
    if build == Some(SERVER_ONLY_BUILD) {
        return Some(format!("build {SERVER_ONLY_BUILD}"));
    }
    if let Some(t) = info.os_product_type.filter(|t| SERVER_PRODUCT_TYPES.contains(t)) {
        return Some(format!("operatingSystemProductType {t}"));
    }
    [
        ("skuFamily", &info.sku_family),
        ("operatingSystemEdition", &info.os_edition),
    ]
    .into_iter()
    .find_map(|(name, v)| {
        v.as_deref()
            .filter(|s| s.to_ascii_lowercase().contains("server"))
            .map(|s| format!("{name} {s:?}"))
    })
}

/// Whether Microsoft's list names the build's branch.
fn build_listed(build: u32) -> bool {
    MIN_BUILDS.iter().any(|(b, _)| *b == build)
}

/// The build and revision of `10.0.<build>.<revision>`.
fn build_of(version: &str) -> Option<(u32, u32)> {
    let mut parts = version.trim().split('.');
    let (major, _minor) = (parts.next()?, parts.next()?);
    if major != "10" {
        return None;
    }
    let build = parts.next()?.parse().ok()?;
    let revision = parts.next().and_then(|r| r.parse().ok()).unwrap_or(0);
    Some((build, revision))
}

/// Whether a Windows build can attest: at or past the first revision on the
/// listed branches, any build on a later (unlisted) branch, none before
/// 19045.
fn build_can_attest(build: u32, revision: u32) -> bool {
    match MIN_BUILDS.iter().find(|(b, _)| *b == build) {
        Some((_, min)) => revision >= *min,
        None => build > MIN_BUILDS[0].0,
    }
}

/// The major version of a `tpmSpecificationVersion` such as `"2.0, 0, 1.59"`.
fn tpm_major(spec: &str) -> Option<u32> {
    let first = spec.split(',').next()?.trim();
    first.split('.').next()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn windows(os_version: &str, tpm: TpmReport) -> DeviceInfo {
        DeviceInfo {
            operating_system: Some("Windows".into()),
            os_version: Some(os_version.into()),
            tpm,
            ..DeviceInfo::default()
        }
    }

    fn code(e: Eligibility) -> Option<ReasonCode> {
        match e {
            Eligibility::Eligible => None,
            Eligibility::Unconfirmed(c, _) | Eligibility::Ineligible(c, _) => Some(c),
        }
    }

    #[test]
    fn the_json_name_is_the_one_as_str_gives() {
        for code in ReasonCode::ALL {
            let json = serde_json::to_value(code).unwrap_or_default();
            assert_eq!(json.as_str(), Some(code.as_str()), "{code:?}");
        }
        assert_eq!(ReasonCode::TpmBelow20.as_str(), "tpm_below_2_0");
    }

    #[test]
    fn builds_follow_the_documented_minimums() {
        let tpm2 = || TpmReport::Present("2.0, 0, 1.59".into());
        for (version, ok) in [
            ("10.0.19045.3996", true),
            ("10.0.19045.3995", false),
            ("10.0.19044.9999", false),
            ("10.0.22000.2713", true),
            ("10.0.22000.2712", false),
            ("10.0.22621.2792", true),
            ("10.0.22621.2000", false),
            ("10.0.22631.2792", true),
            ("10.0.22631.2791", false),
            ("10.0.26100.1", true),
        ] {
            let verdict = check(&windows(version, tpm2()));
            assert_eq!(
                !matches!(verdict, Eligibility::Ineligible(..)),
                ok,
                "{version}: {verdict:?}"
            );
            let got = code(verdict);
            if !ok {
                assert_eq!(got, Some(ReasonCode::OsBuildTooOld), "{version}");
            }
        }
    }

    #[test]
    fn only_an_mdm_channel_can_carry_the_action() {
        let v = "10.0.22631.3737";
        for (agent, ok) in [
            ("mdm", true),
            ("easMdm", true),
            ("configurationManagerClientMdm", true),
            ("configurationManagerClientMdmEas", true),
            ("microsoft365ManagedMdm", true),
            ("msSense", false),
            ("configurationManagerClient", false),
            ("eas", false),
            ("easIntuneClient", false),
            ("jamf", false),
            ("googleCloudDevicePolicyController", false),
            ("intuneClient", false),
            ("unknown", false),
            ("unknownFutureValue", false),
            ("someAgentAddedLater", false),
        ] {
            let mut d = windows(v, TpmReport::Present("2.0".into()));
            d.management_agent = Some(agent.into());
            let got = code(check(&d));
            assert_eq!(got, (!ok).then_some(ReasonCode::NotMdmManaged), "{agent}");
        }
        // Not reported: nothing to judge by.
        assert_eq!(code(check(&windows(v, TpmReport::Present("2.0".into())))), None);
    }

    #[test]
    fn windows_server_is_told_apart_from_the_clients_that_share_its_builds() {
        let tpm2 = || TpmReport::Present("2.0, 0, 1.59".into());
        assert_eq!(
            code(check(&windows("10.0.20348.2527", tpm2()))),
            Some(ReasonCode::WindowsServer),
            "Server 2022's build is no client's"
        );
        for version in ["10.0.14393.7070", "10.0.17763.5936", "10.0.26100.1742"] {
            let mut server = windows(version, tpm2());
            server.os_product_type = Some(8);
            assert_eq!(code(check(&server)), Some(ReasonCode::WindowsServer), "{version}");
            let mut server = windows(version, tpm2());
            server.sku_family = Some("ServerDatacenter".into());
            assert_eq!(code(check(&server)), Some(ReasonCode::WindowsServer), "{version}");
            let mut server = windows(version, tpm2());
            server.os_edition = Some("ServerStandard".into());
            assert_eq!(code(check(&server)), Some(ReasonCode::WindowsServer), "{version}");
            let mut client = windows(version, tpm2());
            client.os_product_type = Some(48);
            client.sku_family = Some("Enterprise".into());
            assert_ne!(code(check(&client)), Some(ReasonCode::WindowsServer), "{version}");
        }
    }

    #[test]
    fn a_build_the_list_does_not_name_is_attempted_with_a_warning() {
        let tpm2 = || TpmReport::Present("2.0, 0, 1.59".into());
        for version in ["10.0.26100.1742", "10.0.26200.6584", "10.0.22635.4000"] {
            match check(&windows(version, tpm2())) {
                Eligibility::Unconfirmed(ReasonCode::OsBuildUnlisted, why) => assert!(why.contains(version)),
                other => panic!("{version}: {other:?}"),
            }
        }
        assert_eq!(check(&windows("10.0.22631.3737", tpm2())), Eligibility::Eligible);
        // An unread TPM says so first.
        assert_eq!(
            code(check(&windows("10.0.26100.1742", TpmReport::Unknown))),
            Some(ReasonCode::TpmUnknown)
        );
    }

    #[test]
    fn each_kind_that_cannot_attest_has_its_code() {
        let v = "10.0.22631.3737";
        assert_eq!(code(check(&windows(v, TpmReport::Empty))), Some(ReasonCode::NoTpm));
        assert_eq!(
            code(check(&windows(v, TpmReport::Present("1.2, 2, 3".into())))),
            Some(ReasonCode::TpmBelow20)
        );
        assert_eq!(
            code(check(&windows(v, TpmReport::Unknown))),
            Some(ReasonCode::TpmUnknown)
        );
        let mut vm = windows(v, TpmReport::Present("2.0".into()));
        vm.model = Some("Virtual Machine".into());
        vm.manufacturer = Some("Microsoft Corporation".into());
        assert_eq!(code(check(&vm)), Some(ReasonCode::VirtualMachine));
        let mut cloud = windows(v, TpmReport::Present("2.0".into()));
        cloud.device_type = Some("cloudPC".into());
        assert_eq!(code(check(&cloud)), Some(ReasonCode::CloudPc));
        cloud.device_type = None;
        cloud.model = Some("Cloud PC Enterprise 2vCPU/8GB/128GB".into());
        assert_eq!(code(check(&cloud)), Some(ReasonCode::CloudPc));
        let mac = DeviceInfo {
            operating_system: Some("macOS".into()),
            ..DeviceInfo::default()
        };
        assert_eq!(code(check(&mac)), Some(ReasonCode::NotWindows));
        assert_eq!(
            code(check(&windows(v, TpmReport::Present("2.0, 0, 1.59".into())))),
            None
        );
    }
}
