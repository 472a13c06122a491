//! JSON tensor data, flat or nested, decoded in one streaming pass into a flat typed buffer
//! plus the shape its nesting implies. Used by v2 (`data`) and V1 (`instances` / `inputs`).

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, SeqAccess, Visitor};

use sluice_core::error::{ServeError, ServeResult};
use sluice_core::tensor::{DataType, TensorData};

/// The scalars of a JSON array, in row-major order, in the narrowest form that holds them all.
#[derive(Debug, Default, PartialEq)]
pub enum JsonValues {
    #[default]
    Empty,
    Ints(Vec<i64>),
    Floats(Vec<f64>),
    Bools(Vec<bool>),
    Strings(Vec<Vec<u8>>),
}

/// A decoded JSON array: its scalars and the dimensions of its nesting (`[[1,2],[3,4]]` has
/// dims `[2, 2]`; a flat array one dim; a bare scalar none).
#[derive(Debug, Default, PartialEq)]
pub struct JsonTensor {
    pub values: JsonValues,
    pub dims: Vec<usize>,
}

impl JsonTensor {
    pub fn len(&self) -> usize {
        match &self.values {
            JsonValues::Empty => 0,
            JsonValues::Ints(v) => v.len(),
            JsonValues::Floats(v) => v.len(),
            JsonValues::Bools(v) => v.len(),
            JsonValues::Strings(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Converts the scalars to `datatype`, naming `input` in any error.
    pub fn into_data(self, datatype: DataType, input: &str) -> ServeResult<TensorData> {
        let mismatch = |found: &str| {
            ServeError::bad_request(format!(
                "input '{input}': datatype {datatype} cannot hold {found} values"
            ))
        };
        Ok(match (self.values, datatype) {
            (JsonValues::Empty, dt) => TensorData::with_capacity(dt, 0),
            (JsonValues::Floats(v), DataType::F32) => TensorData::F32(to_f32(v, input)?),
            (JsonValues::Floats(v), DataType::F64) => TensorData::F64(v),
            (JsonValues::Ints(v), DataType::F32) => {
                TensorData::F32(v.into_iter().map(|x| x as f32).collect())
            }
            (JsonValues::Ints(v), DataType::F64) => {
                TensorData::F64(v.into_iter().map(|x| x as f64).collect())
            }
            (JsonValues::Ints(v), DataType::I64) => TensorData::I64(v),
            (JsonValues::Ints(v), dt) if dt != DataType::Bool && dt != DataType::Bytes => {
                narrow(v, dt, input)?
            }
            (JsonValues::Floats(_), _) => return Err(mismatch("fractional")),
            (JsonValues::Bools(v), DataType::Bool) => TensorData::Bool(v),
            (JsonValues::Bools(_), _) => return Err(mismatch("boolean")),
            (JsonValues::Strings(v), DataType::Bytes) => TensorData::Bytes(v),
            (JsonValues::Strings(_), _) => return Err(mismatch("string")),
            (JsonValues::Ints(_), _) => return Err(mismatch("integer")),
        })
    }
}

/// JSON numbers into FP32, refusing values beyond its range (`1e39` would become infinity).
fn to_f32(values: Vec<f64>, input: &str) -> ServeResult<Vec<f32>> {
    values
        .into_iter()
        .map(|x| {
            let narrowed = x as f32;
            if narrowed.is_infinite() && x.is_finite() {
                Err(ServeError::bad_request(format!(
                    "input '{input}': value {x:e} is out of range for FP32 (at most {:e})",
                    f32::MAX
                )))
            } else {
                Ok(narrowed)
            }
        })
        .collect()
}

/// Integers into a narrower integer type, refusing values out of its range.
fn narrow(values: Vec<i64>, datatype: DataType, input: &str) -> ServeResult<TensorData> {
    Ok(match datatype {
        DataType::U8 => TensorData::U8(super::narrow(input, datatype, values)?),
        DataType::U16 => TensorData::U16(super::narrow(input, datatype, values)?),
        DataType::U32 => TensorData::U32(super::narrow(input, datatype, values)?),
        DataType::U64 => TensorData::U64(super::narrow(input, datatype, values)?),
        DataType::I8 => TensorData::I8(super::narrow(input, datatype, values)?),
        DataType::I16 => TensorData::I16(super::narrow(input, datatype, values)?),
        DataType::I32 => TensorData::I32(super::narrow(input, datatype, values)?),
        DataType::I64 => TensorData::I64(values),
        other => {
            return Err(ServeError::bad_request(format!(
                "input '{input}': datatype {other} cannot hold integer values"
            )));
        }
    })
}

/// The common `data`, a flat array of JSON numbers, parsed from its text in one pass straight
/// into `datatype`, without serde's generic visitor, the intermediate `Vec<f64>` and the
/// conversion pass after it (profiled: ~5 % of a batch-1 request's CPU). Values convert as the
/// general decoder converts them (FP32 through the nearest f64, integers through i64).
///
/// `None` for anything else (nested arrays, strings, booleans, fractions for an integer type,
/// values out of the type's range): the general decoder then takes the text and names the
/// problem, so the two paths agree on every value and every refusal (a property test holds
/// them equal). The text is valid JSON already (serde_json checked it as a raw value).
pub fn flat_numbers(text: &str, datatype: DataType, expected: usize) -> Option<TensorData> {
    let inner = text.trim_ascii().strip_prefix('[')?.strip_suffix(']')?;
    if inner.trim_ascii().is_empty() {
        return Some(TensorData::with_capacity(datatype, 0));
    }
    // Room for the values the shape asks for (a count that does not match is refused after).
    let count = expected.min(inner.len() / 2 + 1);
    Some(match datatype {
        DataType::F32 => TensorData::F32(collect(inner, count, |t, int| {
            let x = float(t, int)?;
            // Finite in f64 but beyond FP32: the general decoder's range error.
            let narrowed = x as f32;
            narrowed.is_finite().then_some(narrowed)
        })?),
        DataType::F64 => TensorData::F64(collect(inner, count, float)?),
        DataType::I64 => TensorData::I64(collect(inner, count, integer)?),
        DataType::I32 => TensorData::I32(collect(inner, count, narrow_int)?),
        DataType::I16 => TensorData::I16(collect(inner, count, narrow_int)?),
        DataType::I8 => TensorData::I8(collect(inner, count, narrow_int)?),
        DataType::U8 => TensorData::U8(collect(inner, count, narrow_int)?),
        DataType::U16 => TensorData::U16(collect(inner, count, narrow_int)?),
        DataType::U32 => TensorData::U32(collect(inner, count, narrow_int)?),
        DataType::U64 => TensorData::U64(collect(inner, count, narrow_int)?),
        DataType::Bool | DataType::Bytes => return None,
    })
}

/// Each comma-separated token of `inner` through `value` (given the token and whether it is
/// an integer, i.e. has no fraction or exponent); `None` at the first token that is not a
/// number's characters (a string, a boolean, null, a nested array) or that `value` refuses.
fn collect<T>(text: &str, count: usize, value: impl Fn(&str, bool) -> Option<T>) -> Option<Vec<T>> {
    let inner = text.as_bytes();
    let mut values = Vec::with_capacity(count);
    let mut at = 0;
    while at < inner.len() {
        while at < inner.len() && inner[at].is_ascii_whitespace() {
            at += 1;
        }
        let start = at;
        let mut int = true;
        while let Some(&b) = inner.get(at) {
            match b {
                b'0'..=b'9' | b'-' | b'+' => {}
                b'.' | b'e' | b'E' => int = false,
                _ => break,
            }
            at += 1;
        }
        // Both ends sit after ASCII bytes (or at the start): character boundaries.
        let token = text.get(start..at)?;
        while at < inner.len() && inner[at].is_ascii_whitespace() {
            at += 1;
        }
        match inner.get(at) {
            None => {}
            Some(b',') => at += 1,
            Some(_) => return None,
        }
        if token.is_empty() {
            return None;
        }
        values.push(value(token, int)?);
    }
    Some(values)
}

/// A number token as serde_json reads it: integers as i64 when they fit, refused between
/// i64 and u64, floats beyond; `-0` and anything with a fraction or exponent as the nearest
/// f64. Infinite results are refused (the general decoder's range error).
fn float(token: &str, int: bool) -> Option<f64> {
    let x = if int && token != "-0" {
        match token.parse::<i64>() {
            Ok(i) => i as f64,
            Err(_) if token.parse::<u64>().is_ok() => return None,
            Err(_) => token.parse().ok()?,
        }
    } else {
        token.parse().ok()?
    };
    x.is_finite().then_some(x)
}

/// An integer token that fits i64 (`-0` is a float to serde_json).
fn integer(token: &str, int: bool) -> Option<i64> {
    if !int || token == "-0" {
        return None;
    }
    token.parse().ok()
}

fn narrow_int<T: TryFrom<i64>>(token: &str, int: bool) -> Option<T> {
    T::try_from(integer(token, int)?).ok()
}

impl<'de> serde::Deserialize<'de> for JsonTensor {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut builder = Builder::default();
        Level {
            builder: &mut builder,
            depth: 0,
        }
        .deserialize(deserializer)?;
        Ok(JsonTensor {
            values: builder.values,
            dims: builder.dims.into_iter().map(|d| d.unwrap_or(0)).collect(),
        })
    }
}

#[derive(Default)]
struct Builder {
    values: JsonValues,
    dims: Vec<Option<usize>>,
    /// Depth at which scalars sit; every scalar must sit at the same depth.
    leaf_depth: Option<usize>,
}

/// Room for the first values of a tensor: a batch-1 request's few dozen numbers fill it in
/// one allocation instead of four (profiled: growing from one value up was 4 reallocations
/// per request).
const FIRST_VALUES: usize = 32;

fn first<T>(x: T) -> Vec<T> {
    let mut values = Vec::with_capacity(FIRST_VALUES);
    values.push(x);
    values
}

impl Builder {
    fn leaf<E: de::Error>(&mut self, depth: usize) -> Result<(), E> {
        match self.leaf_depth {
            None => {
                self.leaf_depth = Some(depth);
                Ok(())
            }
            Some(d) if d == depth => Ok(()),
            Some(_) => Err(E::custom("ragged data: nested arrays of different depths")),
        }
    }

    fn push_int<E: de::Error>(&mut self, x: i64) -> Result<(), E> {
        match &mut self.values {
            JsonValues::Empty => self.values = JsonValues::Ints(first(x)),
            JsonValues::Ints(v) => v.push(x),
            JsonValues::Floats(v) => v.push(x as f64),
            _ => return Err(E::custom("data mixes numbers with other kinds of values")),
        }
        Ok(())
    }

    fn push_float<E: de::Error>(&mut self, x: f64) -> Result<(), E> {
        match &mut self.values {
            JsonValues::Empty => self.values = JsonValues::Floats(first(x)),
            JsonValues::Floats(v) => v.push(x),
            JsonValues::Ints(v) => {
                let mut floats: Vec<f64> = v.iter().map(|&i| i as f64).collect();
                floats.push(x);
                self.values = JsonValues::Floats(floats);
            }
            _ => return Err(E::custom("data mixes numbers with other kinds of values")),
        }
        Ok(())
    }

    fn push_bool<E: de::Error>(&mut self, x: bool) -> Result<(), E> {
        match &mut self.values {
            JsonValues::Empty => self.values = JsonValues::Bools(vec![x]),
            JsonValues::Bools(v) => v.push(x),
            _ => return Err(E::custom("data mixes booleans with other kinds of values")),
        }
        Ok(())
    }

    fn push_string<E: de::Error>(&mut self, x: Vec<u8>) -> Result<(), E> {
        match &mut self.values {
            JsonValues::Empty => self.values = JsonValues::Strings(vec![x]),
            JsonValues::Strings(v) => v.push(x),
            _ => return Err(E::custom("data mixes strings with other kinds of values")),
        }
        Ok(())
    }
}

/// Visits one nesting level of the array.
struct Level<'b> {
    builder: &'b mut Builder,
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for Level<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Level<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of numbers, booleans or strings (flat or nested)")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if let Some(leaf) = self.builder.leaf_depth
            && leaf <= self.depth
        {
            return Err(de::Error::custom(
                "ragged data: nested arrays of different depths",
            ));
        }
        let mut count = 0usize;
        while seq
            .next_element_seed(Level {
                builder: self.builder,
                depth: self.depth + 1,
            })?
            .is_some()
        {
            count += 1;
        }
        // Inner arrays finish before outer ones, so a level's slot may not exist yet.
        let dims = &mut self.builder.dims;
        if dims.len() <= self.depth {
            dims.resize(self.depth + 1, None);
        }
        match dims[self.depth] {
            None => dims[self.depth] = Some(count),
            Some(seen) if seen != count => {
                return Err(de::Error::custom(format!(
                    "ragged data: arrays at depth {} have different lengths",
                    self.depth + 1
                )));
            }
            Some(_) => {}
        }
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, x: i64) -> Result<(), E> {
        self.builder.leaf(self.depth)?;
        self.builder.push_int(x)
    }

    fn visit_u64<E: de::Error>(self, x: u64) -> Result<(), E> {
        self.builder.leaf(self.depth)?;
        match i64::try_from(x) {
            Ok(i) => self.builder.push_int(i),
            Err(_) => Err(E::custom(format!("integer {x} is too large"))),
        }
    }

    fn visit_f64<E: de::Error>(self, x: f64) -> Result<(), E> {
        self.builder.leaf(self.depth)?;
        self.builder.push_float(x)
    }

    fn visit_bool<E: de::Error>(self, x: bool) -> Result<(), E> {
        self.builder.leaf(self.depth)?;
        self.builder.push_bool(x)
    }

    fn visit_str<E: de::Error>(self, x: &str) -> Result<(), E> {
        self.builder.leaf(self.depth)?;
        self.builder.push_string(x.as_bytes().to_vec())
    }

    fn visit_string<E: de::Error>(self, x: String) -> Result<(), E> {
        self.builder.leaf(self.depth)?;
        self.builder.push_string(x.into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The general decoder's answer for a text: what [`flat_numbers`] must agree with.
    fn general(text: &str, datatype: DataType) -> Option<TensorData> {
        let json: JsonTensor = serde_json::from_str(text).ok()?;
        json.into_data(datatype, "x").ok()
    }

    proptest! {
        /// Any JSON numbers (integers, fractions, exponents, signs, zeros, values too large
        /// for the type), spaced any way: the fast path answers exactly what the general
        /// decoder answers, and answers whenever the general decoder accepts.
        #[test]
        fn the_fast_path_agrees_with_the_general_decoder(
            numbers in prop::collection::vec(
                "-?(0|[1-9][0-9]{0,20})(\\.[0-9]{1,20})?([eE][+-]?[0-9]{1,2})?", 0..12),
            spaces in prop::collection::vec("[ \t\n]{0,2}", 12),
            dt in 0..DataType::ALL.len(),
        ) {
            let datatype = DataType::ALL[dt];
            let text = format!("[{}]", numbers.iter().zip(&spaces)
                .map(|(n, s)| format!("{s}{n}{s}")).collect::<Vec<_>>().join(","));
            let fast = flat_numbers(&text, datatype, numbers.len());
            let general = general(&text, datatype);
            if let Some(fast) = &fast {
                prop_assert_eq!(Some(fast), general.as_ref(), "{}", text);
            }
            if general.is_some() && !matches!(datatype, DataType::Bool | DataType::Bytes) {
                prop_assert!(fast.is_some(), "{} as {}", text, datatype);
            }
        }
    }

    #[test]
    fn the_fast_path_leaves_what_it_does_not_know_to_the_general_decoder() {
        for text in [
            "[[1, 2], [3, 4]]",
            "[true]",
            "[\"1\"]",
            "[1, null]",
            "[1.5]",
        ] {
            let datatype = if text == "[1.5]" {
                DataType::I64
            } else {
                DataType::F32
            };
            assert_eq!(flat_numbers(text, datatype, 4), None, "{text}");
        }
        assert_eq!(flat_numbers("[1e39]", DataType::F32, 1), None);
        assert_eq!(flat_numbers("[300]", DataType::U8, 1), None);
        assert_eq!(
            flat_numbers(" [ ] ", DataType::F32, 0),
            Some(TensorData::F32(vec![]))
        );
        assert_eq!(
            flat_numbers("[-0.9356936812400818, 3, 1e-3]", DataType::F32, 3),
            Some(TensorData::F32(vec![-0.935_693_7, 3.0, 0.001]))
        );
    }

    fn parse(json: &str) -> Result<JsonTensor, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn flat_and_nested() {
        let flat = parse("[1, 2, 3]").unwrap();
        assert_eq!(flat.values, JsonValues::Ints(vec![1, 2, 3]));
        assert_eq!(flat.dims, vec![3]);
        let nested = parse("[[1.5, 2], [3, 4]]").unwrap();
        assert_eq!(nested.values, JsonValues::Floats(vec![1.5, 2.0, 3.0, 4.0]));
        assert_eq!(nested.dims, vec![2, 2]);
        let strings = parse(r#"[["a"], ["b"]]"#).unwrap();
        assert_eq!(strings.dims, vec![2, 1]);
        assert_eq!(parse("[]").unwrap().dims, vec![0]);
    }

    #[test]
    fn ragged_and_mixed_are_refused() {
        assert!(
            parse("[[1, 2], [3]]")
                .unwrap_err()
                .to_string()
                .contains("ragged")
        );
        assert!(
            parse("[[1, 2], 3]")
                .unwrap_err()
                .to_string()
                .contains("ragged")
        );
        assert!(
            parse("[1, [2]]")
                .unwrap_err()
                .to_string()
                .contains("ragged")
        );
        assert!(
            parse("[1, true]")
                .unwrap_err()
                .to_string()
                .contains("mixes")
        );
        assert!(parse(r#"[1, {"a": 1}]"#).is_err());
    }

    #[test]
    fn conversions() {
        let ints = || parse("[1, -2]").unwrap();
        assert_eq!(
            ints().into_data(DataType::F32, "x").unwrap(),
            TensorData::F32(vec![1.0, -2.0])
        );
        assert_eq!(
            ints().into_data(DataType::I32, "x").unwrap(),
            TensorData::I32(vec![1, -2])
        );
        let err = ints().into_data(DataType::U8, "x").unwrap_err();
        assert_eq!(err.message, "input 'x': value -2 is out of range for UINT8");
        let err = parse("[1.5]")
            .unwrap()
            .into_data(DataType::I64, "x")
            .unwrap_err();
        assert_eq!(
            err.message,
            "input 'x': datatype INT64 cannot hold fractional values"
        );
        let err = parse("[true]")
            .unwrap()
            .into_data(DataType::F32, "x")
            .unwrap_err();
        assert!(err.message.contains("boolean"));
        let err = parse("[1.0, 1e39]")
            .unwrap()
            .into_data(DataType::F32, "x")
            .unwrap_err();
        assert_eq!(
            err.message,
            "input 'x': value 1e39 is out of range for FP32 (at most 3.4028235e38)"
        );
        assert_eq!(
            parse("[3.0e38]")
                .unwrap()
                .into_data(DataType::F32, "x")
                .unwrap(),
            TensorData::F32(vec![3.0e38])
        );
        assert_eq!(
            parse("[]")
                .unwrap()
                .into_data(DataType::Bytes, "x")
                .unwrap(),
            TensorData::Bytes(vec![])
        );
    }
}
