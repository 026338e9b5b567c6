//! Device identifiers and the two Intune device collections.

use std::fmt;

use serde::{Serialize, Serializer};

/// A validated Intune managed-device ID: a hyphenated GUID, stored in lower
/// case. Only values of this type are ever placed in a Graph URL.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId([u8; 36]);

impl DeviceId {
    /// Parses the 8-4-4-4-12 hexadecimal form, in either case. Braces, URNs,
    /// the unhyphenated form and surrounding white space are refused.
    pub fn parse(raw: &str) -> Option<Self> {
        let bytes = raw.as_bytes();
        if bytes.len() != 36 {
            return None;
        }
        let mut out = [0u8; 36];
        for (i, &b) in bytes.iter().enumerate() {
            let hyphen = matches!(i, 8 | 13 | 18 | 23);
            out[i] = match (hyphen, b) {
                (true, b'-') => b'-',
                (false, b'0'..=b'9' | b'a'..=b'f') => b,
                (false, b'A'..=b'F') => b.to_ascii_lowercase(),
                _ => return None,
            };
        }
        Some(Self(out))
    }

    /// The lower-case hyphenated form.
    pub fn as_str(&self) -> &str {
        // Only ASCII hex digits and hyphens are ever stored.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceId({})", self.as_str())
    }
}

impl Serialize for DeviceId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Which Graph collection a device is addressed through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    /// `/deviceManagement/managedDevices/{id}`: devices fully managed by Intune.
    Managed,
    /// `/deviceManagement/comanagedDevices/{id}`: co-managed with Configuration Manager.
    Comanaged,
}

impl DeviceKind {
    /// The Graph collection segment for this kind.
    pub fn collection(self) -> &'static str {
        match self {
            DeviceKind::Managed => "managedDevices",
            DeviceKind::Comanaged => "comanagedDevices",
        }
    }
}

/// One device to act on: an ID and the collection it is addressed through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DeviceRef {
    /// The device ID.
    pub id: DeviceId,
    /// The collection.
    pub kind: DeviceKind,
}

impl DeviceRef {
    /// Relative URL (for `$batch`) of the attestation action on this device.
    pub fn action_path(&self) -> String {
        format!(
            "/deviceManagement/{}/{}/initiateDeviceAttestation",
            self.kind.collection(),
            self.id
        )
    }

    /// Relative URL (for `$batch`) that reads the fields validation needs.
    /// Co-managed devices are read through `managedDevices` too: Graph does
    /// not serve a GET on `comanagedDevices/{id}`.
    pub fn read_path(&self) -> String {
        format!(
            "/deviceManagement/managedDevices/{}?$select=id,deviceName,operatingSystem,osVersion,managementAgent,model,manufacturer,deviceType,skuFamily,hardwareInformation",
            self.id
        )
    }
}

/// A request's devices: the `named` ones, then the managed devices a filter
/// `selected` that are not named as managed already, each once. Also says
/// how many selected devices were named already.
pub fn with_selected(named: &[DeviceRef], selected: Vec<DeviceId>) -> (Vec<DeviceRef>, usize) {
    let mut devices = named.to_vec();
    let managed: std::collections::HashSet<DeviceId> = named
        .iter()
        .filter(|d| d.kind == DeviceKind::Managed)
        .map(|d| d.id)
        .collect();
    let mut seen = std::collections::HashSet::new();
    let mut overlap = 0;
    for id in selected {
        if managed.contains(&id) {
            overlap += 1;
        } else if seen.insert(id) {
            devices.push(DeviceRef {
                id,
                kind: DeviceKind::Managed,
            });
        }
    }
    (devices, overlap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_either_case_and_normalises_to_lower() {
        let id = DeviceId::parse("12345678-ABCD-1234-abcd-123456789ABC").unwrap();
        assert_eq!(id.as_str(), "12345678-abcd-1234-abcd-123456789abc");
        assert_eq!(id, DeviceId::parse("12345678-abcd-1234-ABCD-123456789abc").unwrap());
    }

    #[test]
    fn refuses_everything_that_is_not_a_plain_guid() {
        for bad in [
            "",
            "12345678123412341234123456789abc",
            "{12345678-1234-1234-1234-123456789abc}",
            " 12345678-1234-1234-1234-123456789abc",
            "12345678-1234-1234-1234-123456789abg",
            "12345678-1234-1234-1234_123456789abc",
            "../45678-1234-1234-1234-123456789abc",
            "12345678-1234-1234-1234-12345678%2Fc",
            "12345678-1234-1234-1234-1234567?9abc",
            "１2345678-1234-1234-1234-123456789ab",
            "urn:uuid:12345678-1234-1234-1234-123456789abc",
        ] {
            assert!(DeviceId::parse(bad).is_none(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn paths_use_the_right_collection() {
        let id = DeviceId::parse("aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee").unwrap();
        let co = DeviceRef {
            id,
            kind: DeviceKind::Comanaged,
        };
        assert_eq!(
            co.action_path(),
            "/deviceManagement/comanagedDevices/aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee/initiateDeviceAttestation"
        );
        assert!(co.read_path().starts_with("/deviceManagement/managedDevices/aaaaaaaa-"));
    }

    #[test]
    fn a_selection_adds_each_managed_device_once_after_the_named_ones() {
        let id = |n: u32| DeviceId::parse(&format!("00000000-0000-4000-8000-{n:012}")).unwrap();
        let named = [
            DeviceRef {
                id: id(1),
                kind: DeviceKind::Managed,
            },
            DeviceRef {
                id: id(2),
                kind: DeviceKind::Comanaged,
            },
        ];
        let (all, overlap) = with_selected(&named, vec![id(3), id(1), id(2), id(3)]);
        let ids: Vec<(DeviceId, DeviceKind)> = all.iter().map(|d| (d.id, d.kind)).collect();
        assert_eq!(
            ids,
            [
                (id(1), DeviceKind::Managed),
                (id(2), DeviceKind::Comanaged),
                (id(3), DeviceKind::Managed),
                (id(2), DeviceKind::Managed),
            ]
        );
        assert_eq!(overlap, 1, "only a device named as managed was named already");
    }
}
