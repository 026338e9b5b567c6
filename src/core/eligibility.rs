//! Who can attest, as Intune's "Windows enrollment attestation" page states
//! it: Windows with TPM 2.0 or later, on a physical device (not a Hyper-V or
//! Azure virtual machine, Azure Virtual Desktop, a Windows 365 Cloud PC or
//! Dev Box), at Windows 10 build 10.0.19045.3996 or later, or Windows 11 at
//! 10.0.22000.2713 / 10.0.22621.2792 / 10.0.22631.2792 or later on those
//! branches (later branches qualify). Read from the device's own report in
//! the validation GET; a device found ineligible costs no write.

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
}

impl ReasonCode {
    /// Every reason code, in the order the docs list them.
    pub const ALL: [ReasonCode; 8] = [
        ReasonCode::NotFound,
        ReasonCode::NotWindows,
        ReasonCode::NoTpm,
        ReasonCode::TpmBelow20,
        ReasonCode::VirtualMachine,
        ReasonCode::CloudPc,
        ReasonCode::OsBuildTooOld,
        ReasonCode::TpmUnknown,
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
    if let Some(version) = info.os_version.as_deref()
        && let Some((build, revision)) = build_of(version)
        && !build_can_attest(build, revision)
    {
        return Ineligible(
            ReasonCode::OsBuildTooOld,
            format!(
                "Windows {version} is older than the first build that can attest (10.0.19045.3996, or 10.0.22000.2713 / 22621.2792 / 22631.2792)"
            ),
        );
    }
    match &info.tpm {
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
    }
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
/// listed branches, any build on a later branch, none before 19045.
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
            let got = code(check(&windows(version, tpm2())));
            assert_eq!(got.is_none(), ok, "{version}: {got:?}");
            if !ok {
                assert_eq!(got, Some(ReasonCode::OsBuildTooOld), "{version}");
            }
        }
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
