//! An ordered name -> value map, serialized as a JSON object.
//!
//! serde_json (without `preserve_order`) would sort a BTreeMap alphabetically and a HashMap
//! randomly; per-function figures read best in probe order (malloc, calloc, realloc, ...).

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::marker::PhantomData;

/// Entries in insertion order; keys are function names (`EventKind::symbol`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KindMap<T>(pub Vec<(String, T)>);

impl<T> KindMap<T> {
    pub fn get(&self, name: &str) -> Option<&T> {
        self.0
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &T)> {
        self.0.iter().map(|(key, value)| (key.as_str(), value))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<T> FromIterator<(String, T)> for KindMap<T> {
    fn from_iter<I: IntoIterator<Item = (String, T)>>(iter: I) -> Self {
        KindMap(iter.into_iter().collect())
    }
}

impl<T: Serialize> Serialize for KindMap<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (key, value) in &self.0 {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for KindMap<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct OrderedVisitor<T>(PhantomData<T>);

        impl<'de, T: Deserialize<'de>> Visitor<'de> for OrderedVisitor<T> {
            type Value = KindMap<T>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map from function name to value")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::with_capacity(access.size_hint().unwrap_or(0));
                while let Some(entry) = access.next_entry()? {
                    entries.push(entry);
                }
                Ok(KindMap(entries))
            }
        }

        deserializer.deserialize_map(OrderedVisitor(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_insertion_order_through_json() {
        let map = KindMap(vec![("malloc".to_owned(), 3u64), ("calloc".to_owned(), 1)]);
        let json = serde_json::to_string(&map).unwrap();
        assert_eq!(json, r#"{"malloc":3,"calloc":1}"#);
        let back: KindMap<u64> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, map);
        assert_eq!(back.get("calloc"), Some(&1));
        assert_eq!(back.get("free"), None);
    }
}
