//! MessagePack payloads shown as JSON, whatever they hold (the JSON-lines
//! recordings, the `tickbus` tool).
//!
//! Decoding straight into `serde_json::Value` (as the JSON-lines recordings
//! do) refuses two things MessagePack has and JSON lacks: `bin` values (a
//! `#[serde(with = "serde_bytes")]` field) and map keys that are not strings.
//! Here a `bin` becomes an array of byte values and a key that is not a string
//! becomes its JSON text (`{"1": …}`), so that every well-formed payload can
//! be shown.

use crate::codec::{self, CodecLimits};
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// A MessagePack payload (one value, within the codec's default limits) as
/// JSON, for people: `bin` values become arrays of byte values, map keys that
/// are not strings become their JSON text, NaN and infinities become `null`.
///
/// # Errors
///
/// The codec's: [`ErrorKind::Malformed`](crate::ErrorKind::Malformed) for bytes
/// that are not one well-formed MessagePack value.
///
/// # Examples
///
/// ```
/// // {"px": 101.5, "raw": bin [1, 2]}
/// let data = [0x82, 0xa2, b'p', b'x', 0xcb, 0x40, 0x59, 0x60, 0, 0, 0, 0, 0,
///             0xa3, b'r', b'a', b'w', 0xc4, 0x02, 0x01, 0x02];
/// let json = tickbus::payload_json(&data)?;
/// assert_eq!(json.to_string(), r#"{"px":101.5,"raw":[1,2]}"#);
/// # Ok::<(), tickbus::Error>(())
/// ```
pub fn payload_json(data: &[u8]) -> crate::Result<Value> {
    codec::decode_payload::<Shown>(data, &CodecLimits::default()).map(|shown| shown.0)
}

/// A JSON value built from any self-describing input.
struct Shown(Value);

impl<'de> Deserialize<'de> for Shown {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ShownVisitor).map(Shown)
    }
}

struct ShownVisitor;

impl<'de> Visitor<'de> for ShownVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any MessagePack value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        // NaN and infinities have no JSON form.
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Value, E> {
        Ok(Value::Array(
            v.iter().map(|&b| Value::Number(b.into())).collect(),
        ))
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(ShownVisitor)
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Value, D::Error> {
        deserializer.deserialize_any(ShownVisitor)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(Shown(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some((Shown(key), Shown(value))) = map.next_entry()? {
            let key = match key {
                Value::String(text) => text,
                other => other.to_string(),
            };
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn plain_values_are_what_serde_json_gives() {
        let data = codec::encode_payload(
            &json!({"symbol": "ETH-PERP", "qty": -5.12, "n": 7, "ok": true, "none": null, "xs": [1, "a"]}),
            &CodecLimits::default(),
        )
        .unwrap();
        assert_eq!(
            payload_json(&data).unwrap(),
            json!({"symbol": "ETH-PERP", "qty": -5.12, "n": 7, "ok": true, "none": null, "xs": [1, "a"]})
        );
    }

    #[test]
    fn bin_is_an_array_of_bytes() {
        // bin8 of 3 bytes, in an array with a fixint.
        assert_eq!(
            payload_json(&[0x92, 0xc4, 0x03, b'a', b'b', 0xff, 0x05]).unwrap(),
            json!([[97, 98, 255], 5])
        );
    }

    #[test]
    fn keys_that_are_not_strings_become_their_json_text() {
        // {1: "x", nil: 2, [1]: 3}
        let data = [0x83, 0x01, 0xa1, b'x', 0xc0, 0x02, 0x91, 0x01, 0x03];
        assert_eq!(
            payload_json(&data).unwrap(),
            json!({"1": "x", "null": 2, "[1]": 3})
        );
    }

    #[test]
    fn non_finite_floats_are_null() {
        let data = codec::encode_payload(&f64::NAN, &CodecLimits::default()).unwrap();
        assert_eq!(payload_json(&data).unwrap(), Value::Null);
    }

    #[test]
    fn bytes_that_are_not_messagepack_are_an_error() {
        assert!(payload_json(&[0xc1]).is_err());
        assert!(payload_json(&[0xa3, b'a']).is_err());
        assert!(payload_json(b"\xa3abc trailing").is_err());
    }
}
