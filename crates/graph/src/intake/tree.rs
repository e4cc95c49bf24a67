//! A document tree that borrows its text: what the intake reads an item
//! into before it knows the item's kind.
//!
//! [`Tree`] holds what a `serde_json::Value` holds, with the same
//! semantics (numbers as [`serde_json::Number`], mappings ordered by key
//! with one value a key, the last one written when JSON repeats a key),
//! but its scalars and keys borrow the input text where they can, and a
//! mapping is one vector of pairs. Typed objects are deserialized from it
//! exactly as `serde_json::from_value` deserializes them from the equal
//! `Value` (the same visitor calls, in the same order, and the same
//! errors), so warnings quote the same messages; only the strings and maps
//! the `Value` would allocate and free are gone.

use std::borrow::Cow;
use std::fmt;

use serde::de::value::{MapDeserializer, SeqDeserializer};
use serde::de::{
    self, Deserialize, DeserializeSeed, Deserializer, Expected, IntoDeserializer, MapAccess,
    SeqAccess, Unexpected, Visitor,
};
use serde_json::{Error, Number, Value};

/// A document's value, its strings borrowed from the text where they
/// can be.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tree<'a> {
    Null,
    Bool(bool),
    Number(Number),
    String(Cow<'a, str>),
    Array(Vec<Tree<'a>>),
    /// Sorted by key, each key once (as `serde_json::Map`).
    Object(Vec<(Cow<'a, str>, Tree<'a>)>),
}

/// Sort `pairs` by key and keep the last value of a repeated key, as
/// inserting them one by one into a `serde_json::Map` does.
pub(crate) fn object<'a>(mut pairs: Vec<(Cow<'a, str>, Tree<'a>)>) -> Tree<'a> {
    if !pairs.is_sorted_by(|a, b| a.0 < b.0) {
        // Stable: of equal keys, the last written stays last.
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out: Vec<(Cow<'a, str>, Tree<'a>)> = Vec::with_capacity(pairs.len());
        for p in pairs {
            match out.last_mut() {
                Some(last) if last.0 == p.0 => *last = p,
                _ => out.push(p),
            }
        }
        pairs = out;
    }
    Tree::Object(pairs)
}

impl<'a> Tree<'a> {
    /// The value of `key`, when this is a mapping that has it.
    pub(crate) fn get(&self, key: &str) -> Option<&Tree<'a>> {
        match self {
            Tree::Object(pairs) => pairs
                .binary_search_by(|(k, _)| k.as_ref().cmp(key))
                .ok()
                .map(|i| &pairs[i].1),
            _ => None,
        }
    }

    /// The string, when this is one.
    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            Tree::String(s) => Some(s),
            _ => None,
        }
    }

    /// Remove `key` from a mapping and return its value.
    pub(crate) fn remove(&mut self, key: &str) -> Option<Tree<'a>> {
        match self {
            Tree::Object(pairs) => pairs
                .binary_search_by(|(k, _)| k.as_ref().cmp(key))
                .ok()
                .map(|i| pairs.remove(i).1),
            _ => None,
        }
    }

    /// Set `key` of a mapping to `value` (as `serde_json::Map::insert`).
    pub(crate) fn insert(&mut self, key: &'a str, value: Tree<'a>) {
        if let Tree::Object(pairs) = self {
            match pairs.binary_search_by(|(k, _)| k.as_ref().cmp(key)) {
                Ok(i) => pairs[i].1 = value,
                Err(i) => pairs.insert(i, (Cow::Borrowed(key), value)),
            }
        }
    }

    /// The equal `serde_json::Value`.
    pub(crate) fn into_value(self) -> Value {
        match self {
            Tree::Null => Value::Null,
            Tree::Bool(b) => Value::Bool(b),
            Tree::Number(n) => Value::Number(n),
            Tree::String(s) => Value::String(s.into_owned()),
            Tree::Array(a) => Value::Array(a.into_iter().map(Tree::into_value).collect()),
            Tree::Object(pairs) => Value::Object(
                pairs
                    .into_iter()
                    .map(|(k, v)| (k.into_owned(), v.into_value()))
                    .collect(),
            ),
        }
    }

    /// The equal tree of a `serde_json::Value`.
    pub(crate) fn from_value(value: Value) -> Tree<'static> {
        match value {
            Value::Null => Tree::Null,
            Value::Bool(b) => Tree::Bool(b),
            Value::Number(n) => Tree::Number(n),
            Value::String(s) => Tree::String(Cow::Owned(s)),
            Value::Array(a) => Tree::Array(a.into_iter().map(Tree::from_value).collect()),
            // Already sorted and unique.
            Value::Object(m) => Tree::Object(
                m.into_iter()
                    .map(|(k, v)| (Cow::Owned(k), Tree::from_value(v)))
                    .collect(),
            ),
        }
    }

    fn unexpected(&self) -> Unexpected<'_> {
        match self {
            Tree::Null => Unexpected::Unit,
            Tree::Bool(b) => Unexpected::Bool(*b),
            Tree::Number(n) => number_unexpected(n),
            Tree::String(s) => Unexpected::Str(s),
            Tree::Array(_) => Unexpected::Seq,
            Tree::Object(_) => Unexpected::Map,
        }
    }

    #[cold]
    fn invalid_type(&self, exp: &dyn Expected) -> Error {
        de::Error::invalid_type(self.unexpected(), exp)
    }
}

/// As `serde_json::Number` describes itself in an error.
fn number_unexpected(n: &Number) -> Unexpected<'static> {
    if let Some(u) = n.as_u64() {
        Unexpected::Unsigned(u)
    } else if let Some(i) = n.as_i64() {
        Unexpected::Signed(i)
    } else {
        Unexpected::Float(n.as_f64().unwrap_or(f64::NAN))
    }
}

// --- Reading a tree (from JSON text) ---

impl<'de> Deserialize<'de> for Tree<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Tree<'de>, D::Error> {
        d.deserialize_any(TreeVisitor)
    }
}

/// Builds a [`Tree`] as `serde_json::Value`'s visitor builds a value.
struct TreeVisitor;

impl<'de> Visitor<'de> for TreeVisitor {
    type Value = Tree<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any valid JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Tree<'de>, E> {
        Ok(Tree::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Tree<'de>, E> {
        Ok(Tree::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Tree<'de>, E> {
        Ok(Tree::Number(v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Tree<'de>, E> {
        Ok(Number::from_f64(v).map_or(Tree::Null, Tree::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Tree<'de>, E> {
        Ok(Tree::String(Cow::Owned(v.to_owned())))
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Tree<'de>, E> {
        Ok(Tree::String(Cow::Borrowed(v)))
    }
    fn visit_string<E>(self, v: String) -> Result<Tree<'de>, E> {
        Ok(Tree::String(Cow::Owned(v)))
    }
    fn visit_none<E>(self) -> Result<Tree<'de>, E> {
        Ok(Tree::Null)
    }
    fn visit_unit<E>(self) -> Result<Tree<'de>, E> {
        Ok(Tree::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Tree<'de>, D::Error> {
        Deserialize::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Tree<'de>, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Tree::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Tree<'de>, A::Error> {
        let mut pairs = Vec::new();
        while let Some(key) = map.next_key_seed(KeySeed)? {
            let value = map.next_value()?;
            pairs.push((key, value));
        }
        Ok(object(pairs))
    }
}

/// A mapping key, borrowed where the text allows.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Cow<'de, str>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Cow<'de, str>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string key")
    }
    fn visit_str<E>(self, v: &str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_string<E>(self, v: String) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v))
    }
}

// --- Typed objects from a tree, as `serde_json::from_value` ---

/// Deserialize a `T` from `tree` as `serde_json::from_value` deserializes
/// it from the equal value.
pub(crate) fn from_tree<'de, T: Deserialize<'de>>(tree: Tree<'de>) -> Result<T, Error> {
    T::deserialize(tree)
}

fn visit_string<'de, V: Visitor<'de>>(s: Cow<'de, str>, visitor: V) -> Result<V::Value, Error> {
    match s {
        Cow::Borrowed(s) => visitor.visit_borrowed_str(s),
        Cow::Owned(s) => visitor.visit_string(s),
    }
}

fn visit_array<'de, V: Visitor<'de>>(array: Vec<Tree<'de>>, visitor: V) -> Result<V::Value, Error> {
    let len = array.len();
    let mut items = array.into_iter();
    let value = visitor.visit_seq(SeqDeserializer::new(&mut items))?;
    if items.len() == 0 {
        Ok(value)
    } else {
        Err(de::Error::invalid_length(len, &"fewer elements in array"))
    }
}

fn visit_object<'de, V: Visitor<'de>>(
    pairs: Vec<(Cow<'de, str>, Tree<'de>)>,
    visitor: V,
) -> Result<V::Value, Error> {
    let len = pairs.len();
    let mut entries = pairs
        .into_iter()
        .map(|(key, value)| (KeyDeserializer { key }, value));
    let value = visitor.visit_map(MapDeserializer::new(&mut entries))?;
    if entries.len() == 0 {
        Ok(value)
    } else {
        Err(de::Error::invalid_length(len, &"fewer elements in map"))
    }
}

macro_rules! deserialize_number {
    ($($method:ident)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            match self {
                Tree::Number(n) => n.deserialize_any(visitor),
                _ => Err(self.invalid_type(&visitor)),
            }
        }
    )*};
}

/// Methods that take only the kinds of value listed, each visited as
/// `serde_json::Value` visits it, and refuse any other with its error.
macro_rules! deserialize_kinds {
    ($visitor:ident; $($method:ident: $($kind:pat => $visit:expr),+;)*) => {$(
        fn $method<V: Visitor<'de>>(self, $visitor: V) -> Result<V::Value, Error> {
            match self {
                $($kind => $visit,)+
                _ => Err(self.invalid_type(&$visitor)),
            }
        }
    )*};
}

/// Methods that do what another does, their extra arguments unused.
macro_rules! deserialize_as {
    ($($method:ident($($arg:ident: $ty:ty),*) => $target:ident;)*) => {$(
        fn $method<V: Visitor<'de>>(self, $($arg: $ty,)* visitor: V) -> Result<V::Value, Error> {
            self.$target(visitor)
        }
    )*};
}

impl<'de> Deserializer<'de> for Tree<'de> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self {
            Tree::Null => visitor.visit_unit(),
            Tree::Bool(b) => visitor.visit_bool(b),
            Tree::Number(n) => n.deserialize_any(visitor),
            Tree::String(s) => visit_string(s, visitor),
            Tree::Array(a) => visit_array(a, visitor),
            Tree::Object(o) => visit_object(o, visitor),
        }
    }

    deserialize_number!(
        deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64 deserialize_i128
        deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64 deserialize_u128
        deserialize_f32 deserialize_f64
    );

    deserialize_kinds! { visitor;
        deserialize_bool: Tree::Bool(b) => visitor.visit_bool(b);
        deserialize_string: Tree::String(s) => visit_string(s, visitor);
        deserialize_byte_buf:
            Tree::String(s) => visit_string(s, visitor),
            Tree::Array(a) => visit_array(a, visitor);
        deserialize_unit: Tree::Null => visitor.visit_unit();
        deserialize_seq: Tree::Array(a) => visit_array(a, visitor);
        deserialize_map: Tree::Object(o) => visit_object(o, visitor);
    }

    deserialize_as! {
        deserialize_char() => deserialize_string;
        deserialize_str() => deserialize_string;
        deserialize_identifier() => deserialize_string;
        deserialize_bytes() => deserialize_byte_buf;
        deserialize_unit_struct(_name: &'static str) => deserialize_unit;
        deserialize_tuple(_len: usize) => deserialize_seq;
        deserialize_tuple_struct(_name: &'static str, _len: usize) => deserialize_seq;
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match self {
            Tree::Array(a) => visit_array(a, visitor),
            Tree::Object(o) => visit_object(o, visitor),
            _ => Err(self.invalid_type(&visitor)),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self {
            Tree::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        // No object kproxy reads has one: as the value does it.
        self.into_value().deserialize_enum(name, variants, visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        drop(self);
        visitor.visit_unit()
    }
}

impl<'de> IntoDeserializer<'de, Error> for Tree<'de> {
    type Deserializer = Self;
    fn into_deserializer(self) -> Self {
        self
    }
}

/// A mapping key, as `serde_json`'s value deserializer gives its keys to
/// string and field visitors (the objects kproxy reads have no keys of
/// other types: numeric keys are given as strings).
struct KeyDeserializer<'de> {
    key: Cow<'de, str>,
}

impl<'de> IntoDeserializer<'de, Error> for KeyDeserializer<'de> {
    type Deserializer = Self;
    fn into_deserializer(self) -> Self {
        self
    }
}

impl<'de> Deserializer<'de> for KeyDeserializer<'de> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visit_string(self.key, visitor)
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.key.as_ref() {
            "true" => visitor.visit_bool(true),
            "false" => visitor.visit_bool(false),
            _ => Err(de::Error::invalid_type(
                Unexpected::Str(&self.key),
                &visitor,
            )),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        // Map keys cannot be null.
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        IntoDeserializer::<Error>::into_deserializer(self.key.into_owned())
            .deserialize_enum(name, variants, visitor)
    }

    serde::forward_to_deserialize_any! {
        i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64
        char str string bytes byte_buf unit unit_struct seq tuple tuple_struct
        map struct identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::discovery::v1::EndpointSlice;

    /// `json` read into a tree and into a value: the same value, and the
    /// same typed object or error.
    #[track_caller]
    fn same<T: de::DeserializeOwned + PartialEq + fmt::Debug>(json: &str) {
        let tree: Tree<'_> = serde_json::from_str(json).unwrap();
        let value: Value = serde_json::from_str(json).unwrap();
        assert_eq!(tree.clone().into_value(), value, "{json}");
        assert_eq!(Tree::from_value(value.clone()), tree, "{json}");
        let typed = from_tree::<T>(tree).map_err(|e| e.to_string());
        let reference = serde_json::from_value::<T>(value).map_err(|e| e.to_string());
        assert_eq!(typed, reference, "{json}");
    }

    #[test]
    fn objects_and_errors_are_those_of_serde_json_values() {
        for json in [
            r#"{"kind":"Service","metadata":{"name":"a","namespace":"n","labels":{"x":"y","a":"b"}},"spec":{"clusterIP":"10.0.0.1","ports":[{"port":80,"targetPort":"http"},{"port":81,"targetPort":8081}]}}"#,
            r#"{"apiVersion":"v2","kind":"Service"}"#,
            r#"{"spec":{"ports":"not-a-list"},"metadata":{"name":7}}"#,
            r#"{"spec":{"ports":[{"port":99999999999}]}}"#,
            r#"{"spec":{"ports":[{"port":-1.5}]}}"#,
            r#"{"spec":{"ports":[{"port":-3}]}}"#,
            r#"{"spec":{"ports":[{"port":null}]}}"#,
            r#"{"spec":{"ports":[{"port":true}]}}"#,
            r#"{"spec":[1,2]}"#,
            r#"{"spec":{"clusterIP":"a\"b","clusterIP":"dup"}}"#,
            r#"{"metadata":{"creationTimestamp":"yesterday"}}"#,
            r#"[]"#,
            r#""x""#,
        ] {
            same::<Service>(json);
        }
        for json in [
            r#"{"addressType":"IPv4","endpoints":[{"addresses":["10.0.0.1"],"conditions":{"ready":true}}],"ports":[{"port":80}]}"#,
            r#"{"addressType":"IPv4","endpoints":[{"addresses":"10.0.0.1"}]}"#,
            r#"{"endpoints":[]}"#,
            r#"{"addressType":"IPv4","endpoints":[{"addresses":[],"conditions":{"ready":"yes"}}]}"#,
        ] {
            same::<EndpointSlice>(json);
        }
    }

    #[test]
    fn keys_are_sorted_and_the_last_of_a_repeated_key_wins() {
        let tree: Tree<'_> = serde_json::from_str(r#"{"b":1,"a":2,"b":3,"c":{}}"#).unwrap();
        let value: Value = serde_json::from_str(r#"{"b":1,"a":2,"b":3,"c":{}}"#).unwrap();
        assert_eq!(tree.get("b"), Some(&Tree::Number(3.into())));
        assert_eq!(tree.into_value(), value);
    }
}
