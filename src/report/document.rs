//! The report's reading of the two public documents: the parts of a result
//! document and of a status document that it shows. Members it does not
//! know are ignored and members added since a document was written default,
//! so reports can be made from older and newer documents alike.
//!
//! Every part is bounded as it is read, so neither the report's memory nor
//! its page grows with what a document (perhaps a forged one) holds: text
//! is cut to a few hundred characters and cleaned of control and
//! bidirectional characters (the error lines' sanitiser, so no field can act
//! on a terminal either); lists keep their first entries and count the rest
//! ([`Listed`]); maps keep a few dozen entries; and the writes per window are
//! folded into at most [`PACE_COLUMNS`] columns as they are read ([`Pace`]).

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::core::text::bounded;

/// The most characters of a name, code, id or state.
pub const SHORT_TEXT: usize = 200;
/// The most characters of a message, reason or warning.
pub const LONG_TEXT: usize = 1000;
/// The most devices read from a document (the most a run holds by default).
pub const MAX_DEVICES: usize = 50_000;
/// The most warnings read from a document.
pub const MAX_WARNINGS: usize = 50;
/// The most entries read from a map (counts, options, invocation).
pub const MAX_ENTRIES: usize = 40;
/// The most columns of the pace chart: past that, neighbouring windows are
/// folded into one column (the busiest of them).
pub const PACE_COLUMNS: usize = 400;

/// Text as the report shows it: at most `MAX` characters, no control or
/// bidirectional characters. Read without holding the whole string.
struct TextVisitor<const MAX: usize>;

impl<const MAX: usize> Visitor<'_> for TextVisitor<MAX> {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(bounded(v, MAX))
    }
}

fn short<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    d.deserialize_str(TextVisitor::<SHORT_TEXT>)
}

fn long<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    d.deserialize_str(TextVisitor::<LONG_TEXT>)
}

/// Bounded text, as a type (for lists and map keys).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Text<const MAX: usize>(pub String);

impl<'de, const MAX: usize> Deserialize<'de> for Text<MAX> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(TextVisitor::<MAX>).map(Text)
    }
}

impl<const MAX: usize> std::ops::Deref for Text<MAX> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl<const MAX: usize> maud::Render for Text<MAX> {
    fn render_to(&self, buffer: &mut String) {
        self.0.as_str().render_to(buffer);
    }
}

fn short_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<Text<SHORT_TEXT>>::deserialize(d)?.map(|t| t.0))
}

fn long_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<Text<LONG_TEXT>>::deserialize(d)?.map(|t| t.0))
}

/// A list read up to `CAP` entries: the rest are skipped as they are read,
/// and counted.
#[derive(Clone, Debug, PartialEq)]
pub struct Listed<T, const CAP: usize> {
    /// The first entries.
    pub items: Vec<T>,
    /// How many more the document had.
    pub omitted: u64,
}

impl<T, const CAP: usize> Default for Listed<T, CAP> {
    fn default() -> Self {
        Self {
            items: Vec::new(),
            omitted: 0,
        }
    }
}

impl<T, const CAP: usize> std::ops::Deref for Listed<T, CAP> {
    type Target = Vec<T>;
    fn deref(&self) -> &Vec<T> {
        &self.items
    }
}

impl<'de, T: Deserialize<'de>, const CAP: usize> Deserialize<'de> for Listed<T, CAP> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T, const CAP: usize>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>, const CAP: usize> Visitor<'de> for V<T, CAP> {
            type Value = Listed<T, CAP>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Listed::<T, CAP>::default();
                loop {
                    if out.items.len() < CAP {
                        match seq.next_element::<T>()? {
                            Some(item) => out.items.push(item),
                            None => return Ok(out),
                        }
                    } else {
                        match seq.next_element::<IgnoredAny>()? {
                            Some(_) => out.omitted += 1,
                            None => return Ok(out),
                        }
                    }
                }
            }
        }
        d.deserialize_seq(V::<T, CAP>(PhantomData))
    }
}

/// A map of counts read up to [`MAX_ENTRIES`] keys.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Counts(pub BTreeMap<String, u64>);

impl std::ops::Deref for Counts {
    type Target = BTreeMap<String, u64>;
    fn deref(&self) -> &BTreeMap<String, u64> {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Counts {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Counts;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of counts")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Counts, A::Error> {
                let mut out = BTreeMap::new();
                while let Some(key) = map.next_key::<Text<SHORT_TEXT>>()? {
                    if out.len() < MAX_ENTRIES {
                        out.insert(key.0, map.next_value::<u64>()?);
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(Counts(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// A JSON value as the footer shows it: a scalar as text (strings without
/// quotes, null as a dash), an object's members one level down (`key.member`),
/// anything deeper as an ellipsis; read without holding the value.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Fields(pub Vec<(String, String)>);

/// A scalar, or an ellipsis for anything else.
struct Plain(String);

impl<'de> Deserialize<'de> for Plain {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Plain;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a value")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Plain, E> {
                Ok(Plain(bounded(v, LONG_TEXT)))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Plain, E> {
                Ok(Plain(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Plain, E> {
                Ok(Plain(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Plain, E> {
                Ok(Plain(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Plain, E> {
                Ok(Plain(v.to_string()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Plain, E> {
                Ok(Plain("-".into()))
            }
            fn visit_none<E: de::Error>(self) -> Result<Plain, E> {
                Ok(Plain("-".into()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Plain, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Plain("[…]".into()))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Plain, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Plain("{…}".into()))
            }
        }
        d.deserialize_any(V)
    }
}

/// An option's value: a scalar, or an object's members.
enum Member {
    Plain(String),
    Object(Vec<(String, String)>),
}

impl<'de> Deserialize<'de> for Member {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Member;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a value")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Member, E> {
                Ok(Member::Plain(bounded(v, LONG_TEXT)))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Member, E> {
                Ok(Member::Plain(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Member, E> {
                Ok(Member::Plain(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Member, E> {
                Ok(Member::Plain(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Member, E> {
                Ok(Member::Plain(v.to_string()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Member, E> {
                Ok(Member::Plain("-".into()))
            }
            fn visit_none<E: de::Error>(self) -> Result<Member, E> {
                Ok(Member::Plain("-".into()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Member, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Member::Plain("[…]".into()))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Member, A::Error> {
                let mut out = Vec::new();
                while let Some(key) = map.next_key::<Text<SHORT_TEXT>>()? {
                    if out.len() < MAX_ENTRIES {
                        out.push((key.0, map.next_value::<Plain>()?.0));
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(Member::Object(out))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for Fields {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Fields;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields, A::Error> {
                let mut out = Vec::new();
                while let Some(key) = map.next_key::<Text<SHORT_TEXT>>()? {
                    if out.len() >= MAX_ENTRIES {
                        map.next_value::<IgnoredAny>()?;
                        continue;
                    }
                    match map.next_value::<Member>()? {
                        Member::Plain(v) => out.push((key.0, v)),
                        Member::Object(members) => {
                            for (k, v) in members.into_iter().take(MAX_ENTRIES - out.len()) {
                                out.push((format!("{}.{k}", key.0), v));
                            }
                        }
                    }
                }
                out.sort();
                Ok(Fields(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// Writes per throttle window, folded as they are read: each column is the
/// busiest of `per_column` neighbouring windows (a power of two), so a
/// window over the budget is never hidden, and there are at most
/// [`PACE_COLUMNS`] columns however many windows the document lists.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pace {
    /// The busiest window of each column.
    pub columns: Vec<u32>,
    /// Windows per column.
    pub per_column: u64,
    /// Windows the document listed.
    pub windows: u64,
}

impl Pace {
    /// The pace of `writes`, one window after another.
    pub fn of(writes: impl IntoIterator<Item = u32>) -> Self {
        let mut pace = Pace {
            per_column: 1,
            ..Pace::default()
        };
        for w in writes {
            pace.push(w);
        }
        pace
    }

    fn push(&mut self, writes: u32) {
        self.per_column = self.per_column.max(1);
        let starts_column = self.windows.is_multiple_of(self.per_column);
        if starts_column && self.columns.len() == PACE_COLUMNS {
            // Full: fold pairs of columns into one, twice as wide (every
            // column is whole here, so the new one starts a column too).
            self.columns = self
                .columns
                .chunks(2)
                .map(|c| c.iter().copied().max().unwrap_or(0))
                .collect();
            self.per_column *= 2;
        }
        match self.columns.last_mut() {
            Some(last) if !starts_column => *last = (*last).max(writes),
            _ => self.columns.push(writes),
        }
        self.windows += 1;
    }
}

impl<'de> Deserialize<'de> for Pace {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Pace;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of counts")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Pace, A::Error> {
                let mut pace = Pace::of([]);
                while let Some(w) = seq.next_element::<u32>()? {
                    pace.push(w);
                }
                Ok(pace)
            }
        }
        d.deserialize_seq(V)
    }
}

/// A result document (`schema/result.schema.json`), as the report reads it.
#[derive(Clone, Debug, Deserialize)]
pub struct ResultDocument {
    /// The run's correlation id.
    #[serde(deserialize_with = "short")]
    pub correlation_id: String,
    /// `succeeded`, `partially_failed` or `failed`.
    #[serde(deserialize_with = "short")]
    pub status: String,
    /// Whether the caller should treat the run as failed.
    #[serde(default)]
    pub failed: bool,
    /// Whether this was a dry run.
    #[serde(default)]
    pub dry_run: bool,
    /// RFC 3339 start time.
    #[serde(deserialize_with = "short")]
    pub started_at: String,
    /// RFC 3339 end time.
    #[serde(deserialize_with = "short")]
    pub finished_at: String,
    /// Counts per outcome, and `requested`.
    pub summary: Counts,
    /// The run's warnings.
    #[serde(default)]
    pub warnings: Listed<Text<LONG_TEXT>, MAX_WARNINGS>,
    /// Traffic figures.
    #[serde(default)]
    pub stats: Stats,
    /// The request's options, as the payload named them.
    #[serde(default)]
    pub options: Option<Fields>,
    /// How the run was invoked.
    #[serde(default)]
    pub invocation: Option<Fields>,
    /// Present when the document lists only some devices.
    #[serde(default)]
    pub truncated: Option<Truncated>,
    /// The last status read under `verify` (the CLI waits for it).
    #[serde(default)]
    pub verdict: Option<StatusDocument>,
    /// The devices listed.
    pub devices: Listed<ResultDevice, MAX_DEVICES>,
}

/// The result's `stats`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Stats {
    /// HTTP requests sent.
    #[serde(default)]
    pub http_requests: u64,
    /// 429 answers.
    #[serde(default)]
    pub throttled_responses: u64,
    /// How long the run took.
    #[serde(default)]
    pub duration_ms: u64,
    /// The throttle window, in milliseconds (0 in documents without it).
    #[serde(default)]
    pub throttle_window_ms: u64,
    /// The instance's write budget per window (0 in documents without it).
    #[serde(default)]
    pub write_budget: u32,
    /// Writes sent per throttle window, folded.
    #[serde(default)]
    pub writes_per_window: Pace,
}

/// The result's `truncated` member.
#[derive(Clone, Debug, Deserialize)]
pub struct Truncated {
    /// Devices listed.
    pub devices_listed: u64,
    /// Devices left out.
    pub devices_omitted: u64,
    /// Where every device is.
    #[serde(deserialize_with = "long")]
    pub full_result: String,
}

/// One device of a result document.
#[derive(Clone, Debug, Deserialize)]
pub struct ResultDevice {
    /// The device ID.
    #[serde(deserialize_with = "short")]
    pub device_id: String,
    /// `managed` or `comanaged`.
    #[serde(deserialize_with = "short")]
    pub kind: String,
    /// Graph's `deviceName`, when the validation read found the device.
    #[serde(default, deserialize_with = "short_opt")]
    pub device_name: Option<String>,
    /// What happened.
    #[serde(deserialize_with = "short")]
    pub outcome: String,
    /// Why, in words.
    #[serde(default, deserialize_with = "long_opt")]
    pub reason: Option<String>,
    /// Why, for machines.
    #[serde(default, deserialize_with = "short_opt")]
    pub reason_code: Option<String>,
    /// Graph's last HTTP status.
    #[serde(default)]
    pub http_status: Option<u16>,
    /// Graph's error code.
    #[serde(default, deserialize_with = "short_opt")]
    pub error_code: Option<String>,
    /// Graph's error message (opaque text).
    #[serde(default, deserialize_with = "long_opt")]
    pub message: Option<String>,
    /// Graph's request id.
    #[serde(default, deserialize_with = "short_opt")]
    pub request_id: Option<String>,
}

/// A status document (`schema/status.schema.json`), as the report reads it.
#[derive(Clone, Debug, Deserialize)]
pub struct StatusDocument {
    /// The run the devices belong to.
    #[serde(default, deserialize_with = "short_opt")]
    pub correlation_id: Option<String>,
    /// When the status was read.
    #[serde(deserialize_with = "short")]
    pub checked_at: String,
    /// Counts.
    pub summary: StatusSummary,
    /// Warnings (Graph not serving the attestation status...).
    #[serde(default)]
    pub warnings: Listed<Text<LONG_TEXT>, MAX_WARNINGS>,
    /// One entry per device.
    pub devices: Listed<StatusDevice, MAX_DEVICES>,
}

/// The status document's counts.
#[derive(Clone, Debug, Deserialize)]
pub struct StatusSummary {
    /// Devices asked about.
    pub devices: u64,
    /// Per action state.
    #[serde(default)]
    pub action_states: Counts,
    /// Per attestation status.
    #[serde(default)]
    pub attestation_statuses: Counts,
    /// Devices that could not be read.
    #[serde(default)]
    pub unread: u64,
}

/// One device of a status document.
#[derive(Clone, Debug, Deserialize)]
pub struct StatusDevice {
    /// The device ID.
    #[serde(deserialize_with = "short")]
    pub device_id: String,
    /// Where the attestation action stands; `None` when the device could
    /// not be read.
    #[serde(default, deserialize_with = "short_opt")]
    pub action_state: Option<String>,
    /// When the action last changed.
    #[serde(default, deserialize_with = "short_opt")]
    pub action_updated_at: Option<String>,
    /// Intune's verdict, when Graph served it.
    #[serde(default, deserialize_with = "short_opt")]
    pub attestation_status: Option<String>,
    /// Why the device could not be read.
    #[serde(default, deserialize_with = "long_opt")]
    pub read_error: Option<String>,
}
