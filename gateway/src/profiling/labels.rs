//! Reading `sluice profile --labels FILE`: one true label per row of the profile sample, in
//! the sample's order. A numpy `.npy` file (a 1-D array, or `[rows, 1]`, of little-endian
//! integers, floats or booleans) or text with one number per line (blank lines skipped, a
//! first line that is not a number taken as a header, as in a one-column CSV).

use std::path::Path;

use crate::drift::sample::{self, SampleError};

/// The labels file's values, one per sample row.
#[derive(Clone, Debug, PartialEq)]
pub struct Labels {
    /// The file's name, for the profile's reader.
    pub file: String,
    pub values: Vec<f64>,
}

/// Reads a labels file: `.npy` by its extension, anything else as text.
pub fn read(path: &Path) -> Result<Labels, SampleError> {
    let shown = path.display().to_string();
    let invalid = |message: String| SampleError::Invalid {
        path: shown.clone(),
        message,
    };
    let bytes = std::fs::read(path).map_err(|source| SampleError::Read {
        path: shown.clone(),
        source,
    })?;
    let npy = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("npy"));
    let values = if npy {
        parse_npy(&bytes).map_err(invalid)?
    } else {
        let text =
            std::str::from_utf8(&bytes).map_err(|_| invalid("not UTF-8 text".to_string()))?;
        parse_text(text).map_err(invalid)?
    };
    if values.is_empty() {
        return Err(invalid("the file holds no labels".to_string()));
    }
    let file = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(Labels { file, values })
}

/// A 1-D (or one-column) numeric `.npy` array.
pub fn parse_npy(bytes: &[u8]) -> Result<Vec<f64>, String> {
    let array = sample::npy_array(bytes)?;
    let rows = match array.dims.as_slice() {
        [rows] | [rows, 1] => *rows,
        _ => {
            return Err(format!(
                "expected one label per row (a 1-D array), got shape {}",
                array.shape
            ));
        }
    };
    // `|` marks a one-byte type, which has no byte order.
    let (kind, size) = match array.descr.as_bytes() {
        [b'<' | b'|', kind, size @ ..] => (
            *kind,
            std::str::from_utf8(size)
                .ok()
                .and_then(|s| s.parse::<usize>().ok()),
        ),
        _ => (0, None),
    };
    let decode: fn(&[u8]) -> f64 = match (kind, size) {
        (b'i', Some(1)) => |b| f64::from(i8::from_le_bytes([b[0]])),
        (b'i', Some(2)) => |b| f64::from(i16::from_le_bytes([b[0], b[1]])),
        (b'i', Some(4)) => |b| f64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        (b'i', Some(8)) => |b| i64::from_le_bytes(eight(b)) as f64,
        (b'u' | b'b', Some(1)) => |b| f64::from(b[0]),
        (b'u', Some(2)) => |b| f64::from(u16::from_le_bytes([b[0], b[1]])),
        (b'u', Some(4)) => |b| f64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        (b'u', Some(8)) => |b| u64::from_le_bytes(eight(b)) as f64,
        (b'f', Some(4)) => |b| f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        (b'f', Some(8)) => |b| f64::from_le_bytes(eight(b)),
        _ => {
            return Err(format!(
                "dtype {} is not supported: store the labels as little-endian integers or \
                 floats (e.g. y.astype('<i8'))",
                array.descr
            ));
        }
    };
    let size = size.unwrap_or(1);
    array.expect_bytes(rows, size)?;
    Ok(array.data.chunks_exact(size).map(decode).collect())
}

fn eight(b: &[u8]) -> [u8; 8] {
    [b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]
}

/// One number per line; blank lines are skipped and a first line that is not a number is a
/// header.
pub fn parse_text(text: &str) -> Result<Vec<f64>, String> {
    let mut values = Vec::new();
    let mut seen_first = false;
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let first = !seen_first;
        seen_first = true;
        if line.contains(',') {
            return Err(format!(
                "line {}: expected one label per line, got '{line}'",
                number + 1
            ));
        }
        match line.trim_matches('"').parse::<f64>() {
            Ok(v) => values.push(v),
            Err(_) if first => {} // a header
            Err(_) => return Err(format!("line {}: '{line}' is not a number", number + 1)),
        }
    }
    Ok(values)
}

/// The values as class labels: each a whole number.
pub fn classes(labels: &Labels) -> Result<Vec<i64>, String> {
    labels
        .values
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            if v.is_finite() && v.fract() == 0.0 && v.abs() < 2f64.powi(53) {
                Ok(v as i64)
            } else {
                Err(format!(
                    "{} row {}: {v} is not a class label (a whole number)",
                    labels.file,
                    i + 1
                ))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::drift::sample::tests::npy;

    #[test]
    fn reads_integer_float_and_boolean_arrays() {
        let data: Vec<u8> = [3i64, 0, -1].iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(
            parse_npy(&npy("<i8", "(3,)", &data)).unwrap(),
            [3.0, 0.0, -1.0]
        );
        let data: Vec<u8> = [7i32, 1].iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(parse_npy(&npy("<i4", "(2, 1)", &data)).unwrap(), [7.0, 1.0]);
        assert_eq!(parse_npy(&npy("|u1", "(2,)", &[9, 0])).unwrap(), [9.0, 0.0]);
        assert_eq!(parse_npy(&npy("|b1", "(2,)", &[1, 0])).unwrap(), [1.0, 0.0]);
        let data: Vec<u8> = [1.0f32, 0.5].iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(parse_npy(&npy("<f4", "(2,)", &data)).unwrap(), [1.0, 0.5]);
    }

    #[test]
    fn refuses_what_is_not_one_label_per_row() {
        let two_columns = parse_npy(&npy("<f8", "(2, 2)", &[0; 32])).unwrap_err();
        assert!(two_columns.contains("one label per row"), "{two_columns}");
        let big_endian = parse_npy(&npy(">i8", "(1,)", &[0; 8])).unwrap_err();
        assert!(big_endian.contains(">i8"), "{big_endian}");
        let short = parse_npy(&npy("<i8", "(2,)", &[0; 8])).unwrap_err();
        assert!(short.contains("needs 16"), "{short}");
    }

    #[test]
    fn text_one_number_a_line() {
        assert_eq!(parse_text("label\n1\n\n0\n2.0\n").unwrap(), [1.0, 0.0, 2.0]);
        assert_eq!(parse_text("\n\n1\n0").unwrap(), [1.0, 0.0]);
        assert!(parse_text("1\nx\n").unwrap_err().contains("line 2: 'x'"));
        assert!(
            parse_text("1,0\n")
                .unwrap_err()
                .contains("one label per line")
        );
        assert!(parse_text("label\nclass\n").unwrap_err().contains("line 2"));
    }

    #[test]
    fn classes_are_whole_numbers() {
        let labels = |values: Vec<f64>| Labels {
            file: "y.txt".into(),
            values,
        };
        assert_eq!(classes(&labels(vec![1.0, 0.0, 9.0])).unwrap(), [1, 0, 9]);
        let error = classes(&labels(vec![1.0, 0.5])).unwrap_err();
        assert_eq!(
            error,
            "y.txt row 2: 0.5 is not a class label (a whole number)"
        );
        assert!(classes(&labels(vec![f64::NAN])).is_err());
    }
}
