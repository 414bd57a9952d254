//! Types that validate themselves while they are deserialized, for the registry file, policy
//! documents and the state file. The check runs inside the deserializer's visitor, so a refusal
//! carries the line, column and field path of the very value at fault (serde_norway and
//! serde_json both report the position being read when a visitor fails).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, DeserializeOwned, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Splits a serde_norway error into its position (1-based line and column) and its message,
/// which starts with the field path (such as `policies[0].source.spiffe_id: ...`).
pub fn split_error(e: &serde_norway::Error) -> (Option<(usize, usize)>, String) {
    let text = e.to_string();
    let Some(at) = e.location() else {
        return (None, text);
    };
    // The library appends the position in its own words; callers state it up front.
    let message = match text.rfind(" at line ") {
        Some(cut) => text[..cut].to_string(),
        None => text,
    };
    (Some((at.line(), at.column())), message)
}

/// A rule that a string field must follow.
pub trait Rule {
    /// What the field holds, for type errors ("a SPIFFE ID").
    const EXPECTING: &'static str;

    /// Checks `s`; the error says what is wrong with it.
    fn check(s: &str) -> Result<(), String>;
}

/// A string that passed the rule `R`.
pub struct Text<R> {
    value: String,
    rule: PhantomData<R>,
}

impl<R: Rule> Text<R> {
    /// Checks `value` against the rule.
    pub fn new(value: &str) -> Result<Self, String> {
        R::check(value)?;
        Ok(Self {
            value: value.to_owned(),
            rule: PhantomData,
        })
    }

    /// The string.
    pub fn as_str(&self) -> &str {
        &self.value
    }
}

impl<R> Clone for Text<R> {
    fn clone(&self) -> Self {
        Self {
            value: self.value.clone(),
            rule: PhantomData,
        }
    }
}

impl<R> PartialEq for Text<R> {
    fn eq(&self, other: &Self) -> bool {
        self.value == other.value
    }
}

impl<R> Eq for Text<R> {}

impl<R> fmt::Debug for Text<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.value, f)
    }
}

impl<R> fmt::Display for Text<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.value)
    }
}

impl<R> Serialize for Text<R> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.value)
    }
}

impl<'de, R: Rule> Deserialize<'de> for Text<R> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct TextVisitor<R>(PhantomData<R>);
        impl<R: Rule> Visitor<'_> for TextVisitor<R> {
            type Value = Text<R>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(R::EXPECTING)
            }

            fn visit_str<E: de::Error>(self, s: &str) -> Result<Text<R>, E> {
                Text::new(s).map_err(E::custom)
            }
        }
        d.deserialize_str(TextVisitor(PhantomData))
    }
}

/// A TCP port, 1 to 65535, written as an integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Port(pub u16);

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct PortVisitor;
        impl Visitor<'_> for PortVisitor {
            type Value = Port;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port number (1-65535)")
            }

            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Port, E> {
                let port = edgeward_ca::policy::check_port(n).map_err(E::custom)?;
                Ok(Port(port))
            }

            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Port, E> {
                match u64::try_from(n) {
                    Ok(n) => self.visit_u64(n),
                    Err(_) => Err(E::custom(format!("port {n} is outside 1-65535"))),
                }
            }
        }
        // Any: a negative number or a string must reach the visitor to be refused by it.
        d.deserialize_any(PortVisitor)
    }
}

/// Workload labels (`key: value`), each checked by the label rules, no key twice.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Labels(pub BTreeMap<String, String>);

impl Labels {
    /// Whether there is no label.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'de> Deserialize<'de> for Labels {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct LabelsVisitor;
        impl<'de> Visitor<'de> for LabelsVisitor {
            type Value = Labels;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping of label keys to values")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Labels, A::Error> {
                let mut labels = BTreeMap::new();
                while let Some(key) = map.next_key::<String>()? {
                    let seed = LabelValue {
                        key: &key,
                        taken: &labels,
                    };
                    let value = map.next_value_seed(seed)?;
                    labels.insert(key, value);
                }
                Ok(Labels(labels))
            }
        }
        d.deserialize_map(LabelsVisitor)
    }
}

/// Reads one label value and checks the whole label there, so that an error points at it.
struct LabelValue<'a> {
    key: &'a str,
    taken: &'a BTreeMap<String, String>,
}

impl<'de> DeserializeSeed<'de> for LabelValue<'_> {
    type Value = String;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for LabelValue<'_> {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a label value")
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<String, E> {
        if self.taken.contains_key(self.key) {
            let msg = format!("label key {:?} appears twice", self.key);
            return Err(E::custom(msg));
        }
        edgeward_ca::policy::check_label(self.key, value).map_err(E::custom)?;
        Ok(value.to_owned())
    }
}

/// A mapping with a check of the whole (fields that depend on each other).
pub trait Validate {
    /// Checks the value; the error names the fields concerned.
    fn validate(&self) -> Result<(), String>;
}

/// A mapping that passed its [`Validate`] check as it was read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Valid<T>(pub T);

impl<'de, T: DeserializeOwned + Validate> Deserialize<'de> for Valid<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ValidVisitor<T>(PhantomData<T>);
        impl<'de, T: DeserializeOwned + Validate> Visitor<'de> for ValidVisitor<T> {
            type Value = Valid<T>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping")
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Valid<T>, A::Error> {
                let value = T::deserialize(de::value::MapAccessDeserializer::new(map))?;
                value.validate().map_err(de::Error::custom)?;
                Ok(Valid(value))
            }
        }
        d.deserialize_map(ValidVisitor(PhantomData))
    }
}

/// An entry of a [`Unique`] list.
pub trait Keyed {
    /// The field that must be unique, and its value.
    fn key(&self) -> (&'static str, String);
}

/// A list of mappings in which no two entries share a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Unique<T>(pub Vec<T>);

impl<T> Default for Unique<T> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<T> Unique<T> {
    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'de, T: DeserializeOwned + Keyed> Deserialize<'de> for Unique<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ListVisitor<T>(PhantomData<T>);
        impl<'de, T: DeserializeOwned + Keyed> Visitor<'de> for ListVisitor<T> {
            type Value = Unique<T>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Unique<T>, A::Error> {
                let mut seen = BTreeMap::new();
                let mut entries = Vec::new();
                loop {
                    let entry = Entry {
                        index: entries.len(),
                        seen: &mut seen,
                        kind: PhantomData,
                    };
                    match seq.next_element_seed(entry)? {
                        Some(value) => entries.push(value),
                        None => return Ok(Unique(entries)),
                    }
                }
            }
        }
        d.deserialize_seq(ListVisitor(PhantomData))
    }
}

/// Reads one entry of a [`Unique`] list and checks its key there, so that a duplicate is
/// reported at the entry that repeats it.
struct Entry<'a, T> {
    index: usize,
    seen: &'a mut BTreeMap<String, usize>,
    kind: PhantomData<T>,
}

impl<'de, T: DeserializeOwned + Keyed> DeserializeSeed<'de> for Entry<'_, T> {
    type Value = T;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<T, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, T: DeserializeOwned + Keyed> Visitor<'de> for Entry<'_, T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        let value = T::deserialize(de::value::MapAccessDeserializer::new(map))?;
        let (field, key) = value.key();
        if let Some(first) = self.seen.get(&key) {
            let msg = format!("{field} {key:?} is already used by entry [{first}] of this list");
            return Err(de::Error::custom(msg));
        }
        self.seen.insert(key, self.index);
        Ok(value)
    }
}

/// A list of ports without repeats, in order.
pub fn port_set(ports: &[Port]) -> BTreeSet<u16> {
    ports.iter().map(|p| p.0).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Lower;
    impl Rule for Lower {
        const EXPECTING: &'static str = "a lower-case word";
        fn check(s: &str) -> Result<(), String> {
            match s.bytes().all(|b| b.is_ascii_lowercase()) && !s.is_empty() {
                true => Ok(()),
                false => Err(format!("{s:?} is not lower case")),
            }
        }
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Item {
        name: Text<Lower>,
        #[serde(default)]
        ports: Vec<Port>,
        #[serde(default)]
        labels: Labels,
    }

    impl Keyed for Item {
        fn key(&self) -> (&'static str, String) {
            ("name", self.name.to_string())
        }
    }

    #[derive(Debug, Deserialize)]
    struct Doc {
        items: Unique<Item>,
    }

    fn error_of(text: &str) -> String {
        let e = serde_norway::from_str::<Doc>(text).unwrap_err();
        let (at, message) = split_error(&e);
        let (line, column) = at.expect("a position");
        format!("line {line}, column {column}: {message}")
    }

    #[test]
    fn errors_point_at_the_value_and_name_the_field() {
        let e = error_of("items:\n  - name: Bad\n");
        assert_eq!(
            e,
            "line 2, column 11: items[0].name: \"Bad\" is not lower case"
        );

        let e = error_of("items:\n  - name: a\n    ports: [80, 0]\n");
        assert!(
            e.starts_with("line 3, column 17: items[0].ports[1]: port 0"),
            "{e}"
        );
        let e = error_of("items:\n  - name: a\n    ports: [-1]\n");
        assert!(
            e.starts_with("line 3, column 13: items[0].ports[0]: port -1"),
            "{e}"
        );
        let e = error_of("items:\n  - name: a\n    ports: [http]\n");
        assert!(e.contains("items[0].ports[0]: invalid type"), "{e}");

        let e = error_of("items:\n  - name: a\n    labels:\n      app: x\n      app: y\n");
        assert!(
            e.starts_with("line 5, column 12: items[0].labels.app:"),
            "{e}"
        );
        assert!(e.contains("appears twice"), "{e}");
        let e = error_of("items:\n  - name: a\n    labels: {\"-x\": y}\n");
        assert!(
            e.contains("items[0].labels.-x: label key \"-x\" is invalid"),
            "{e}"
        );

        let text = "items:\n  - name: a\n    labels: {k: ''}\n";
        let doc: Doc = serde_norway::from_str(text).unwrap();
        assert_eq!(
            doc.items.0[0].labels.0["k"], "",
            "an empty value is allowed"
        );
    }

    #[test]
    fn a_repeated_key_is_reported_at_the_repeating_entry() {
        let e = error_of("items:\n  - name: a\n  - name: b\n  - name: a\n");
        assert_eq!(
            e,
            "line 4, column 5: items[2]: name \"a\" is already used by entry [0] of this list"
        );
    }

    #[test]
    fn the_same_types_read_json() {
        let doc: Doc = serde_json::from_str(r#"{"items": [{"name": "a", "ports": [1]}]}"#).unwrap();
        assert_eq!(doc.items.0[0].ports, vec![Port(1)]);
        let e = serde_json::from_str::<Doc>(r#"{"items": [{"name": "A"}]}"#).unwrap_err();
        assert!(
            e.to_string().contains("not lower case") && e.line() == 1,
            "{e}"
        );
    }
}
