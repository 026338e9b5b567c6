//! Property tests (bounded, run in CI) for everything that parses untrusted
//! input: payloads, filters, durations, device IDs, Lambda events, webhook
//! signatures. None may panic, and every refusal stays bounded.

use intune_attest::core::device::DeviceId;
use intune_attest::core::duration::parse_go_duration;
use intune_attest::core::filter::DeviceFilter;
use intune_attest::core::request::{AttestationRequest, RequestLimits};
use intune_attest::frontdoor::lambda::classify;
use intune_attest::service::signature as webhook;
use proptest::prelude::*;
use secrecy::SecretString;
use serde_json::Value;

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,40}".prop_map(Value::String),
        "[0-9a-fA-F-]{30,40}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::hash_map(
                prop_oneof![
                    Just("managed_device_ids".to_string()),
                    Just("comanaged_device_ids".to_string()),
                    Just("device_filter".to_string()),
                    Just("timeouts".to_string()),
                    Just("invoke".to_string()),
                    Just("Records".to_string()),
                    Just("part".to_string()),
                    ".{0,12}"
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn payloads_never_panic_and_refusals_are_bounded(v in json_value()) {
        if let Err(e) = AttestationRequest::from_value(&v, RequestLimits::default()) {
            let text = e.to_string();
            prop_assert!(text.len() < 6000, "{} bytes", text.len());
            prop_assert!(!text.contains('\n'));
        }
        let _ = classify(&v);
    }

    #[test]
    fn raw_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = AttestationRequest::from_slice(&bytes, RequestLimits::default());
    }

    #[test]
    fn filters_never_panic_and_canonical_forms_are_stable(text in ".{0,120}") {
        if let Ok(f) = DeviceFilter::parse(&text) {
            let canonical = f.to_string();
            let again = DeviceFilter::parse(&canonical).expect("a canonical filter parses");
            prop_assert_eq!(again.to_string(), canonical);
        }
    }

    #[test]
    fn grammar_shaped_filters_round_trip(
        field in prop::sample::select(vec!["operatingSystem", "managementAgent", "complianceState", "deviceType"]),
        value in "[a-zA-Z0-9' -]{0,12}",
        joiner in prop::sample::select(vec![" and ", " or "]),
        day in 1u32..28,
    ) {
        let lit = value.replace('\'', "''");
        let text = format!(
            "({field} eq '{lit}'{joiner}manufacturer eq '{lit}') and contains(deviceName,'{lit}') and lastSyncDateTime gt 2026-11-{day:02}T00:00:00Z"
        );
        let f = DeviceFilter::parse(&text).expect("well-formed");
        prop_assert_eq!(DeviceFilter::parse(&f.to_string()).unwrap(), f);
    }

    #[test]
    fn durations_never_panic(text in ".{0,30}") {
        let _ = parse_go_duration(&text);
    }

    #[test]
    fn device_ids_normalise(text in "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}") {
        let id = DeviceId::parse(&text).expect("a GUID");
        prop_assert_eq!(id.as_str(), text.to_ascii_lowercase());
        prop_assert_eq!(DeviceId::parse(id.as_str()), Some(id));
    }

    #[test]
    fn arbitrary_ids_are_refused_or_are_plain_guids(text in ".{0,40}") {
        if let Some(id) = DeviceId::parse(&text) {
            prop_assert_eq!(id.as_str().len(), 36);
            prop_assert!(id.as_str().bytes().all(|b| b.is_ascii_hexdigit() || b == b'-'));
        }
    }

    #[test]
    fn signature_headers_never_panic_and_never_pass_unsigned(header in ".{0,200}", body in prop::collection::vec(any::<u8>(), 0..64)) {
        let secrets = [SecretString::from("k".to_string())];
        prop_assert!(webhook::verify(Some(&header), &body, &secrets, 1_000).is_err());
    }

    #[test]
    fn signatures_verify_only_their_own_body(t in 0u64..2_000_000_000, body in prop::collection::vec(any::<u8>(), 0..64), flip in any::<u8>()) {
        let secret = SecretString::from("whsec".to_string());
        let header = webhook::sign(&secret, t, &body);
        prop_assert!(webhook::verify(Some(&header), &body, std::slice::from_ref(&secret), t).is_ok());
        let mut other = body.clone();
        other.push(flip);
        prop_assert!(webhook::verify(Some(&header), &other, &[secret], t).is_err());
    }
}

fn guid() -> impl Strategy<Value = String> {
    "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
}

fn valid_payload() -> impl Strategy<Value = Value> {
    (
        prop::collection::vec(guid(), 0..6),
        prop::collection::vec(guid(), 0..4),
        prop::option::of(prop_oneof![
            Just("operatingSystem eq 'Windows'".to_string()),
            Just("(operatingSystem eq 'a''b' or deviceType eq 'x') and deviceName eq 'Windows'".to_string()),
            Just("contains(deviceName,'LAB') and lastSyncDateTime gt 2026-11-22T00:00:00Z".to_string()),
        ]),
        (any::<bool>(), any::<bool>(), any::<bool>()),
        prop::option::of(1_000_000_000u64..100_000_000_000),
        prop::option::of("[A-Za-z0-9._:/-]{1,40}"),
        (prop::option::of(1u32..1000), prop::option::of("[A-Za-z0-9._-]{1,20}"), any::<bool>()),
        // verify (after, until beyond it, in seconds), and a check's number
        // and due time (ms since the epoch) when the devices are named.
        prop::option::of((1u64..3600, 0u64..80_000, 1u32..100, 1_600_000_000_000u64..1_900_000_000_000)),
    )
        .prop_filter("selects something", |(m, c, f, ..)| {
            !m.is_empty() || !c.is_empty() || f.is_some()
        })
        .prop_map(
            |(managed, comanaged, filter, (ignore, validate, dry), timeout_ns, corr, (part, tenant, read_status), verify)| {
                let mut v = serde_json::json!({
                    "managed_device_ids": managed,
                    "comanaged_device_ids": comanaged,
                    "ignore_partial_failures": ignore,
                    "validate_device_exists": validate,
                    "dry_run": dry,
                });
                if let Some(f) = filter {
                    v["device_filter"] = f.into();
                }
                if let Some(ns) = timeout_ns {
                    v["timeouts"] = serde_json::json!({"invoke": format!("{ns}ns")});
                }
                if let Some(c) = corr {
                    v["correlation_id"] = c.into();
                }
                if let Some(p) = part {
                    v["part"] = p.into();
                }
                if let Some(t) = tenant {
                    v["tenant"] = t.into();
                }
                if read_status && verify.is_none() && !dry {
                    v["read_status"] = true.into();
                }
                if let Some((after, extra, number, due_ms)) = verify {
                    v["verify"] = serde_json::json!({"after": format!("{after}s"), "until": format!("{}s", after + extra)});
                    if v.get("device_filter").is_none() {
                        let at = |ms: u64| {
                            humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
                                .to_string()
                        };
                        v["check"] = serde_json::json!({"number": number, "due_at": at(due_ms), "until_at": at(due_ms + extra * 1000)});
                    }
                }
                v
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// What the service writes onto its queue reads back as the same request.
    #[test]
    fn a_request_encoded_as_a_payload_reads_back_as_itself(v in valid_payload()) {
        let limits = RequestLimits::default();
        let first = AttestationRequest::from_value(&v, limits).unwrap();
        let encoded = first.to_payload().to_json().unwrap();
        let again = AttestationRequest::from_slice(encoded.as_bytes(), limits).unwrap();
        prop_assert_eq!(&again.devices, &first.devices);
        prop_assert_eq!(&again.device_filter, &first.device_filter);
        prop_assert_eq!(again.timeout, first.timeout);
        prop_assert_eq!(
            (again.ignore_partial_failures, again.validate_device_exists, again.dry_run, again.part),
            (first.ignore_partial_failures, first.validate_device_exists, first.dry_run, first.part)
        );
        prop_assert_eq!(&again.correlation_id, &first.correlation_id);
        prop_assert_eq!(&again.tenant, &first.tenant);
        prop_assert_eq!((again.verify, again.check, again.read_status), (first.verify, first.check, first.read_status));
        prop_assert_eq!(again.to_payload(), first.to_payload());
    }
}
