//! Reading a reference sample: a numpy `.npy` file (little-endian `f4`/`f8`, C order, 1-D or
//! 2-D) or a numeric `.csv` (header line optional). Small on purpose: a sample is training
//! rows for a profile, not a data-frame library's job.

use std::path::Path;

/// Rows of numbers, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub rows: usize,
    pub columns: usize,
    pub values: Vec<f64>,
}

impl Sample {
    /// Column `j`, top to bottom.
    pub fn column(&self, j: usize) -> impl Iterator<Item = f64> + '_ {
        self.values
            .iter()
            .skip(j)
            .step_by(self.columns.max(1))
            .copied()
    }
}

/// A sample file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

/// Reads a `.npy` or `.csv` sample, chosen by the file extension.
pub fn read(path: &Path) -> Result<Sample, SampleError> {
    let shown = path.display().to_string();
    let invalid = |message: String| SampleError::Invalid {
        path: shown.clone(),
        message,
    };
    let bytes = std::fs::read(path).map_err(|source| SampleError::Read {
        path: shown.clone(),
        source,
    })?;
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let sample = match extension.as_deref() {
        Some("npy") => parse_npy(&bytes).map_err(invalid)?,
        Some("csv") => {
            let text =
                std::str::from_utf8(&bytes).map_err(|_| invalid("not UTF-8 text".to_string()))?;
            parse_csv(text).map_err(invalid)?
        }
        _ => return Err(invalid("expected a .npy or .csv file".to_string())),
    };
    if sample.rows == 0 || sample.columns == 0 {
        return Err(invalid("the sample holds no values".to_string()));
    }
    Ok(sample)
}

/// Parses numpy's format (versions 1-3): magic, header length, a Python dict literal header,
/// then the raw array.
pub fn parse_npy(bytes: &[u8]) -> Result<Sample, String> {
    let array = npy_array(bytes)?;
    let element = match array.descr {
        "<f4" => 4,
        "<f8" => 8,
        other => {
            return Err(format!(
                "dtype {other} is not supported: store the sample as little-endian float32 \
                 or float64 (e.g. x.astype('<f4'))"
            ));
        }
    };
    let (rows, columns) = match array.dims.as_slice() {
        [rows] => (*rows, 1),
        [rows, columns] => (*rows, *columns),
        _ => {
            return Err(format!(
                "expected a 1-D or 2-D array, got shape {}",
                array.shape
            ));
        }
    };
    let count = rows
        .checked_mul(columns)
        .ok_or_else(|| format!("shape {} is too large", array.shape))?;
    array.expect_bytes(count, element)?;
    let values = if element == 4 {
        array
            .data
            .chunks_exact(4)
            .map(|b| f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])))
            .collect()
    } else {
        array
            .data
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
            .collect()
    };
    Ok(Sample {
        rows,
        columns,
        values,
    })
}

/// A `.npy` file's header, read, and its raw data: what [`parse_npy`] and the labels reader of
/// `sluice profile --labels` decode, each for the dtypes it takes.
pub(crate) struct NpyArray<'a> {
    /// The dtype, unquoted (`<f4`, `<i8`, `|u1`, ...).
    pub descr: &'a str,
    /// The shape as written, for messages.
    pub shape: &'a str,
    pub dims: Vec<usize>,
    pub data: &'a [u8],
}

impl NpyArray<'_> {
    /// Checks that the data holds exactly `count` elements of `element` bytes.
    pub fn expect_bytes(&self, count: usize, element: usize) -> Result<(), String> {
        let needed = count
            .checked_mul(element)
            .ok_or_else(|| format!("shape {} is too large", self.shape))?;
        if self.data.len() != needed {
            return Err(format!(
                "shape {} needs {needed} data bytes, the file has {}",
                self.shape,
                self.data.len()
            ));
        }
        Ok(())
    }
}

/// Reads a C-ordered `.npy` file's header (format versions 1-3).
pub(crate) fn npy_array(bytes: &[u8]) -> Result<NpyArray<'_>, String> {
    const MAGIC: &[u8] = b"\x93NUMPY";
    if bytes.len() < 10 || !bytes.starts_with(MAGIC) {
        return Err("not a .npy file (bad magic)".into());
    }
    let major = bytes[6];
    let (header_len, header_start) = match major {
        1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        _ => return Err(format!("unsupported .npy format version {major}")),
    };
    let data_start = header_start + header_len;
    let header = bytes
        .get(header_start..data_start)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or("truncated or non-text .npy header")?;
    let descr = dict_value(header, "descr").ok_or("the .npy header has no 'descr'")?;
    if dict_value(header, "fortran_order").map(str::trim) != Some("False") {
        return Err(
            "Fortran-ordered arrays are not supported: save np.ascontiguousarray(x)".into(),
        );
    }
    let shape = dict_value(header, "shape").ok_or("the .npy header has no 'shape'")?;
    let dims: Vec<usize> = shape
        .trim_matches(|c| c == '(' || c == ')')
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| d.parse::<usize>().map_err(|_| format!("bad shape {shape}")))
        .collect::<Result<_, _>>()?;
    Ok(NpyArray {
        descr: descr.trim_matches(|c| c == '\'' || c == '"'),
        shape,
        dims,
        data: &bytes[data_start.min(bytes.len())..],
    })
}

/// The text of `key`'s value in a flat Python dict literal such as
/// `{'descr': '<f4', 'fortran_order': False, 'shape': (1000, 12), }`.
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let quoted = [format!("'{key}'"), format!("\"{key}\"")];
    let at = quoted
        .iter()
        .find_map(|k| header.find(k.as_str()).map(|i| i + k.len()))?;
    let rest = header[at..].trim_start().strip_prefix(':')?.trim_start();
    let end = if rest.starts_with('(') {
        rest.find(')')? + 1
    } else {
        rest.find([',', '}']).unwrap_or(rest.len())
    };
    Some(rest[..end].trim())
}

/// Parses comma-separated numbers, one row per line. A first line that is not all numbers is
/// a header and skipped; blank lines are skipped; every row must have the same width.
pub fn parse_csv(text: &str) -> Result<Sample, String> {
    let mut values = Vec::new();
    let mut columns = None;
    let mut rows = 0;
    let mut seen_first = false;
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let fields: Result<Vec<f64>, _> = line.split(',').map(|f| parse_number(f.trim())).collect();
        let fields = match fields {
            Ok(fields) => fields,
            Err(_) if !seen_first => {
                seen_first = true;
                continue; // header
            }
            Err(field) => return Err(format!("line {}: '{field}' is not a number", number + 1)),
        };
        seen_first = true;
        match columns {
            None => columns = Some(fields.len()),
            Some(width) if width != fields.len() => {
                return Err(format!(
                    "line {}: {} fields, earlier rows have {width}",
                    number + 1,
                    fields.len()
                ));
            }
            Some(_) => {}
        }
        values.extend(fields);
        rows += 1;
    }
    Ok(Sample {
        rows,
        columns: columns.unwrap_or(0),
        values,
    })
}

/// A CSV field as a number; an empty field or "nan" is a missing value (NaN), which the
/// profile leaves out of that feature's distribution.
fn parse_number(field: &str) -> Result<f64, String> {
    if field.is_empty() || field.eq_ignore_ascii_case("nan") {
        return Ok(f64::NAN);
    }
    field
        .trim_matches('"')
        .parse::<f64>()
        .map_err(|_| field.to_string())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An .npy file of `data` (already little-endian bytes) as numpy writes it (format 1.0),
    /// for the readers' tests here and in `profiling::labels`.
    pub(crate) fn npy(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
        let mut header =
            format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend((header.len() as u16).to_le_bytes());
        bytes.extend(header.as_bytes());
        bytes.extend(data);
        bytes
    }

    #[test]
    fn reads_f4_and_f8() {
        let data: Vec<u8> = [1.0f32, 2.0, 3.0, 4.5, 5.0, 6.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let s = parse_npy(&npy("<f4", "(3, 2)", &data)).unwrap();
        assert_eq!((s.rows, s.columns), (3, 2));
        assert_eq!(s.column(1).collect::<Vec<_>>(), vec![2.0, 4.5, 6.0]);
        let data: Vec<u8> = [0.25f64, -1.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let s = parse_npy(&npy("<f8", "(2,)", &data)).unwrap();
        assert_eq!((s.rows, s.columns, s.values), (2, 1, vec![0.25, -1.0]));
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        assert!(
            parse_npy(&npy("<i8", "(1,)", &[0; 8]))
                .unwrap_err()
                .contains("<i8")
        );
        assert!(parse_npy(&npy(">f4", "(1,)", &[0; 4])).is_err());
        assert!(
            parse_npy(&npy("<f4", "(2, 2)", &[0; 12]))
                .unwrap_err()
                .contains("needs 16")
        );
        assert!(parse_npy(b"PK\x03\x04").is_err());
    }

    #[test]
    fn reads_the_churn_bench_sample() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bench/churn_sample.npy");
        let s = read(&path).unwrap();
        assert_eq!((s.rows, s.columns), (1000, 12));
    }

    #[test]
    fn csv_with_and_without_header() {
        let s = parse_csv("a,b\n1,2\n\n3.5,-4e-1\n").unwrap();
        assert_eq!(
            (s.rows, s.columns, s.values),
            (2, 2, vec![1.0, 2.0, 3.5, -0.4])
        );
        let s = parse_csv("1,2\n3,\n").unwrap();
        assert_eq!(s.rows, 2);
        assert!(s.values[3].is_nan());
        assert!(parse_csv("1,2\n3\n").unwrap_err().contains("line 2"));
        assert!(parse_csv("1,2\nx,3\n").unwrap_err().contains("'x'"));
    }
}
