//! The raw tensor byte layout shared by the v2 binary tensor extension (HTTP) and gRPC's
//! `raw_input_contents` / `raw_output_contents`: elements flattened in row-major order,
//! little-endian, no padding; BOOL one byte each; BYTES elements each preceded by their length
//! as a 4-byte little-endian integer. One module, so the two protocols cannot disagree.

use sluice_core::error::{ServeError, ServeResult};
use sluice_core::tensor::{DataType, TensorData, format_dims};

/// Decodes the raw bytes of one input of `datatype` and `shape`. Every size is checked before
/// anything is allocated, and every message names the input.
pub fn decode(
    input: &str,
    datatype: DataType,
    shape: &[usize],
    bytes: &[u8],
) -> ServeResult<TensorData> {
    let count = checked_count(input, shape)?;
    let Some(size) = datatype.element_size() else {
        return decode_bytes(input, shape, count, bytes);
    };
    let expected = count
        .checked_mul(size)
        .ok_or_else(|| too_large(input, shape))?;
    if bytes.len() != expected {
        return Err(ServeError::bad_request(format!(
            "input '{input}': shape {} of {datatype} needs {expected} bytes ({count} elements of \
             {size}), raw data has {}",
            dims(shape),
            bytes.len()
        )));
    }
    Ok(match datatype {
        DataType::Bool => TensorData::Bool(bytes.iter().map(|&b| b != 0).collect()),
        DataType::U8 => TensorData::U8(bytes.to_vec()),
        DataType::I8 => TensorData::I8(bytes.iter().map(|&b| b as i8).collect()),
        DataType::U16 => TensorData::U16(from_le(bytes, u16::from_le_bytes)),
        DataType::I16 => TensorData::I16(from_le(bytes, i16::from_le_bytes)),
        DataType::U32 => TensorData::U32(from_le(bytes, u32::from_le_bytes)),
        DataType::I32 => TensorData::I32(from_le(bytes, i32::from_le_bytes)),
        DataType::F32 => TensorData::F32(from_le(bytes, f32::from_le_bytes)),
        DataType::U64 => TensorData::U64(from_le(bytes, u64::from_le_bytes)),
        DataType::I64 => TensorData::I64(from_le(bytes, i64::from_le_bytes)),
        DataType::F64 => TensorData::F64(from_le(bytes, f64::from_le_bytes)),
        DataType::Bytes => decode_bytes(input, shape, count, bytes)?,
    })
}

/// Reads fixed-size little-endian elements; the caller has checked that the length is a whole
/// number of elements.
fn from_le<const N: usize, T>(bytes: &[u8], convert: fn([u8; N]) -> T) -> Vec<T> {
    let (elements, _) = bytes.as_chunks::<N>();
    elements.iter().map(|&e| convert(e)).collect()
}

/// BYTES: `count` elements, each a 4-byte little-endian length and that many bytes.
fn decode_bytes(
    input: &str,
    shape: &[usize],
    count: usize,
    bytes: &[u8],
) -> ServeResult<TensorData> {
    // The shape is the client's word; the capacity is bounded by what the data can hold.
    let mut elements = Vec::with_capacity(count.min(bytes.len() / 4));
    let mut rest = bytes;
    while !rest.is_empty() {
        let index = elements.len();
        let Some((prefix, tail)) = rest.split_first_chunk::<4>() else {
            return Err(ServeError::bad_request(format!(
                "input '{input}': BYTES element {index} is truncated: its 4-byte length prefix \
                 has only {} bytes",
                rest.len()
            )));
        };
        let len = u32::from_le_bytes(*prefix) as usize;
        if len > tail.len() {
            return Err(ServeError::bad_request(format!(
                "input '{input}': BYTES element {index} is truncated: its length prefix says \
                 {len} bytes, {} remain",
                tail.len()
            )));
        }
        let (element, after) = tail.split_at(len);
        elements.push(element.to_vec());
        rest = after;
    }
    if elements.len() != count {
        return Err(ServeError::bad_request(format!(
            "input '{input}': shape {} needs {count} BYTES elements, raw data holds {}",
            dims(shape),
            elements.len()
        )));
    }
    Ok(TensorData::Bytes(elements))
}

/// Bytes that [`encode_into`] appends for `data`.
pub fn encoded_len(data: &TensorData) -> usize {
    match data {
        TensorData::Bytes(elements) => elements.iter().map(|e| 4 + e.len()).sum(),
        other => other.len() * other.datatype().element_size().unwrap_or(0),
    }
}

/// Appends the raw encoding of `data` to `out`.
pub fn encode_into(data: &TensorData, out: &mut Vec<u8>) {
    out.reserve(encoded_len(data));
    match data {
        TensorData::Bool(v) => out.extend(v.iter().map(|&b| u8::from(b))),
        TensorData::U8(v) => out.extend_from_slice(v),
        TensorData::Bytes(elements) => {
            for element in elements {
                // Outputs are bounded by model memory, far below 4 GiB per element; saturating
                // keeps this total without a failure path no real output can reach.
                let len = u32::try_from(element.len()).unwrap_or(u32::MAX);
                out.extend_from_slice(&len.to_le_bytes());
                out.extend_from_slice(element);
            }
        }
        TensorData::I8(v) => out.extend(v.iter().map(|&x| x as u8)),
        TensorData::U16(v) => to_le(v, out, u16::to_le_bytes),
        TensorData::I16(v) => to_le(v, out, i16::to_le_bytes),
        TensorData::U32(v) => to_le(v, out, u32::to_le_bytes),
        TensorData::I32(v) => to_le(v, out, i32::to_le_bytes),
        TensorData::F32(v) => to_le(v, out, f32::to_le_bytes),
        TensorData::U64(v) => to_le(v, out, u64::to_le_bytes),
        TensorData::I64(v) => to_le(v, out, i64::to_le_bytes),
        TensorData::F64(v) => to_le(v, out, f64::to_le_bytes),
    }
}

fn to_le<const N: usize, T: Copy>(values: &[T], out: &mut Vec<u8>, convert: fn(T) -> [u8; N]) {
    for &x in values {
        out.extend_from_slice(&convert(x));
    }
}

/// The raw encoding of `data` as a new buffer.
pub fn encode(data: &TensorData) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(data, &mut out);
    out
}

/// Elements a client-given shape holds, refusing shapes whose product overflows.
pub fn checked_count(input: &str, shape: &[usize]) -> ServeResult<usize> {
    sluice_core::tensor::checked_element_count(shape).ok_or_else(|| too_large(input, shape))
}

fn too_large(input: &str, shape: &[usize]) -> ServeError {
    ServeError::bad_request(format!(
        "input '{input}': shape {} is too large",
        dims(shape)
    ))
}

fn dims(shape: &[usize]) -> String {
    format_dims(&shape.iter().map(|&d| d as i64).collect::<Vec<_>>())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(data: TensorData, shape: &[usize]) {
        let bytes = encode(&data);
        assert_eq!(bytes.len(), encoded_len(&data));
        assert_eq!(decode("x", data.datatype(), shape, &bytes).unwrap(), data);
    }

    #[test]
    fn every_datatype_round_trips() {
        round_trip(TensorData::Bool(vec![true, false, true]), &[3]);
        round_trip(TensorData::U8(vec![0, 255]), &[2]);
        round_trip(TensorData::I8(vec![-128, 127]), &[1, 2]);
        round_trip(TensorData::U16(vec![1, 65535]), &[2]);
        round_trip(TensorData::I16(vec![-2, 300]), &[2]);
        round_trip(TensorData::U32(vec![7, u32::MAX]), &[2]);
        round_trip(TensorData::I32(vec![-7, i32::MAX]), &[2, 1]);
        round_trip(TensorData::U64(vec![u64::MAX]), &[1]);
        round_trip(TensorData::I64(vec![i64::MIN, 3]), &[2]);
        round_trip(TensorData::F32(vec![1.5, -0.25, f32::MAX]), &[3]);
        round_trip(TensorData::F64(vec![std::f64::consts::PI]), &[1, 1]);
        round_trip(
            TensorData::Bytes(vec![b"abc".to_vec(), Vec::new(), "é".into()]),
            &[3],
        );
        round_trip(TensorData::F32(Vec::new()), &[0, 12]);
    }

    #[test]
    fn layout_is_little_endian_with_length_prefixes() {
        assert_eq!(encode(&TensorData::I32(vec![1])), [1, 0, 0, 0]);
        assert_eq!(encode(&TensorData::F32(vec![1.0])), 1.0f32.to_le_bytes());
        assert_eq!(
            encode(&TensorData::Bytes(vec![b"hi".to_vec()])),
            [2, 0, 0, 0, b'h', b'i']
        );
        assert_eq!(
            decode("x", DataType::Bool, &[2], &[0, 7]).unwrap(),
            TensorData::Bool(vec![false, true])
        );
    }

    #[test]
    fn size_must_match_shape() {
        let err = decode("input", DataType::F32, &[1, 12], &[0; 44]).unwrap_err();
        assert_eq!(
            err.message,
            "input 'input': shape [1,12] of FP32 needs 48 bytes (12 elements of 4), raw data \
             has 44"
        );
        let err = decode("x", DataType::I64, &[usize::MAX, 2], &[]).unwrap_err();
        assert!(err.message.contains("too large"), "{}", err.message);
    }

    #[test]
    fn bytes_framing_errors_name_the_input() {
        let err = |bytes: &[u8], shape: &[usize]| {
            decode("s", DataType::Bytes, shape, bytes)
                .unwrap_err()
                .message
        };
        assert_eq!(
            err(&[5, 0, 0, 0, b'a'], &[1]),
            "input 's': BYTES element 0 is truncated: its length prefix says 5 bytes, 1 remain"
        );
        assert_eq!(
            err(&[1, 0, 0, 0, b'a', 3, 0], &[2]),
            "input 's': BYTES element 1 is truncated: its 4-byte length prefix has only 2 bytes"
        );
        assert_eq!(
            err(&[1, 0, 0, 0, b'a'], &[2]),
            "input 's': shape [2] needs 2 BYTES elements, raw data holds 1"
        );
        assert!(err(&[0, 0, 0, 0, 0, 0, 0, 0], &[1]).contains("needs 1 BYTES elements"));
        // A huge shape with little data is refused without allocating for the shape.
        assert!(err(&[], &[1 << 40]).contains("holds 0"));
    }
}
