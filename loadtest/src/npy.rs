//! `--npy`: v2 JSON request bodies built from rows of a sample `.npy` file.
//!
//! The bodies are built once at start-up (at most [`MAX_BODIES`]) and cycled through while the
//! load runs, so the hot path never encodes JSON. Rows are taken round-robin, `batch` to a body,
//! so consecutive requests differ. Columns can be shifted or scaled first, to provoke drift.

use std::path::Path;

use anyhow::{Context, bail};
use bytes::Bytes;
use serde::Serialize;

/// Most bodies built; beyond it the rows still seen are those of the first bodies again.
pub const MAX_BODIES: usize = 1000;

const MAGIC: &[u8] = b"\x93NUMPY";

/// A row-major float32 matrix, as read from a 2-D `.npy` file.
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    /// `rows * cols` values, row after row.
    pub data: Vec<f32>,
}

/// A change to one feature column: `--shift COL=DELTA` or `--scale COL=FACTOR`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ColumnChange {
    pub col: usize,
    pub value: f32,
}

impl Matrix {
    /// Reads a `.npy` file; see [`Matrix::parse`].
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        Self::parse(&bytes).with_context(|| format!("{} is not a usable .npy file", path.display()))
    }

    /// Parses a `.npy` file of format version 1.0 or 2.0 holding a 2-D little-endian float32
    /// (`'<f4'`) array in C order (`fortran_order: False`).
    pub fn parse(bytes: &[u8]) -> anyhow::Result<Self> {
        let Some(rest) = bytes.strip_prefix(MAGIC) else {
            bail!("no .npy magic string");
        };
        let (header, data) = match rest {
            [1, 0, a, b, rest @ ..] => split(rest, usize::from(u16::from_le_bytes([*a, *b])))?,
            [2, 0, a, b, c, d, rest @ ..] => {
                split(rest, usize::try_from(u32::from_le_bytes([*a, *b, *c, *d]))?)?
            }
            [major, minor, ..] => bail!("unsupported .npy format version {major}.{minor}"),
            _ => bail!("truncated .npy header"),
        };
        let header = std::str::from_utf8(header).context("the header is not text")?;

        let descr = header_value(header, "descr")?;
        if !matches!(descr, "'<f4'" | "\"<f4\"") {
            bail!("dtype {descr} is not supported, only '<f4' (little-endian float32)");
        }
        let fortran = header_value(header, "fortran_order")?;
        if fortran != "False" {
            bail!("fortran_order {fortran} is not supported, only False");
        }
        let shape = header_value(header, "shape")?;
        let dims: Vec<usize> = shape
            .trim_start_matches('(')
            .trim_end_matches(')')
            .split(',')
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .map(|d| {
                d.parse::<usize>()
                    .with_context(|| format!("bad shape {shape}"))
            })
            .collect::<anyhow::Result<_>>()?;
        let [rows, cols] = dims[..] else {
            bail!("shape {shape} is not 2-D");
        };
        if rows == 0 || cols == 0 {
            bail!("shape {shape} is empty");
        }
        let expected = rows
            .checked_mul(cols)
            .and_then(|n| n.checked_mul(4))
            .context("shape too large")?;
        if data.len() != expected {
            bail!(
                "shape {shape} needs {expected} bytes of data, the file has {}",
                data.len()
            );
        }
        let data = data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok(Self { rows, cols, data })
    }

    /// Multiplies column `col` by `value` (`--scale`) or adds `value` to it (`--shift`).
    pub fn apply(&mut self, change: ColumnChange, scale: bool) -> anyhow::Result<()> {
        if change.col >= self.cols {
            bail!(
                "column {} does not exist; the sample has columns 0 to {}",
                change.col,
                self.cols - 1
            );
        }
        for row in self.data.chunks_exact_mut(self.cols) {
            let x = &mut row[change.col];
            *x = if scale {
                *x * change.value
            } else {
                *x + change.value
            };
        }
        Ok(())
    }

    /// v2 JSON bodies for input `input_name`, `batch` rows each, rows taken round-robin; as many
    /// as it takes to use every row once as the start of a cycle, at most [`MAX_BODIES`].
    pub fn bodies(&self, input_name: &str, batch: usize) -> anyhow::Result<Vec<Bytes>> {
        if batch == 0 {
            bail!("--batch must be at least 1");
        }
        // Body k starts at row k * batch (mod rows): the pattern repeats after rows / gcd bodies.
        let count = (self.rows / gcd(self.rows, batch)).min(MAX_BODIES);
        let mut values = Vec::with_capacity(batch * self.cols);
        (0..count)
            .map(|k| {
                values.clear();
                for j in 0..batch {
                    let row = (k * batch + j) % self.rows;
                    values.extend_from_slice(&self.data[row * self.cols..(row + 1) * self.cols]);
                }
                let body = V2Request {
                    inputs: [V2Input {
                        name: input_name,
                        shape: [batch, self.cols],
                        datatype: "FP32",
                        data: &values,
                    }],
                };
                Ok(Bytes::from(serde_json::to_vec(&body)?))
            })
            .collect()
    }
}

#[derive(Serialize)]
struct V2Request<'a> {
    inputs: [V2Input<'a>; 1],
}

#[derive(Serialize)]
struct V2Input<'a> {
    name: &'a str,
    shape: [usize; 2],
    datatype: &'static str,
    data: &'a [f32],
}

/// Parses `COL=VALUE`.
pub fn parse_column_change(arg: &str) -> anyhow::Result<ColumnChange> {
    let Some((col, value)) = arg.split_once('=') else {
        bail!("expected COL=VALUE, got '{arg}'");
    };
    let col = col
        .trim()
        .parse()
        .with_context(|| format!("'{}' is not a column index", col.trim()))?;
    let value: f32 = value
        .trim()
        .parse()
        .with_context(|| format!("'{}' is not a number", value.trim()))?;
    if !value.is_finite() {
        bail!("'{arg}': the value must be finite");
    }
    Ok(ColumnChange { col, value })
}

fn split(rest: &[u8], header_len: usize) -> anyhow::Result<(&[u8], &[u8])> {
    if rest.len() < header_len {
        bail!("truncated .npy header");
    }
    Ok(rest.split_at(header_len))
}

/// The text of `key`'s value in the header's Python dict literal, e.g. `'<f4'`, `False`,
/// `(1000, 12)`.
fn header_value<'a>(header: &'a str, key: &str) -> anyhow::Result<&'a str> {
    let at = ["'", "\""]
        .iter()
        .find_map(|q| {
            header
                .find(&format!("{q}{key}{q}"))
                .map(|i| i + key.len() + 2)
        })
        .with_context(|| format!("header has no '{key}'"))?;
    let value = header[at..]
        .trim_start()
        .strip_prefix(':')
        .with_context(|| format!("malformed header near '{key}'"))?
        .trim_start();
    let end = if value.starts_with('(') {
        value.find(')').map(|i| i + 1)
    } else {
        value.find([',', '}'])
    }
    .with_context(|| format!("malformed header near '{key}'"))?;
    Ok(value[..end].trim())
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `.npy` file as numpy writes it.
    fn npy(version: u8, descr: &str, fortran: &str, shape: &str, values: &[f32]) -> Vec<u8> {
        let mut header =
            format!("{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {shape}, }}");
        let prefix = if version == 1 { 10 } else { 12 };
        while (prefix + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut out = MAGIC.to_vec();
        out.extend([version, 0]);
        if version == 1 {
            out.extend(u16::try_from(header.len()).unwrap_or(0).to_le_bytes());
        } else {
            out.extend(u32::try_from(header.len()).unwrap_or(0).to_le_bytes());
        }
        out.extend(header.as_bytes());
        for v in values {
            out.extend(v.to_le_bytes());
        }
        out
    }

    #[test]
    fn parses_versions_1_and_2() -> anyhow::Result<()> {
        let values = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        for version in [1, 2] {
            let m = Matrix::parse(&npy(version, "<f4", "False", "(3, 2)", &values))?;
            assert_eq!((m.rows, m.cols), (3, 2));
            assert_eq!(m.data, values);
        }
        Ok(())
    }

    #[test]
    fn rejects_what_it_cannot_read() {
        let v = [0.0; 4];
        let err = |bytes: Vec<u8>| {
            format!(
                "{:#}",
                Matrix::parse(&bytes)
                    .err()
                    .unwrap_or_else(|| anyhow::anyhow!("parsed"))
            )
        };
        assert!(err(npy(1, "<f8", "False", "(2, 2)", &v)).contains("'<f8'"));
        assert!(err(npy(1, "<f4", "True", "(2, 2)", &v)).contains("fortran_order"));
        assert!(err(npy(1, "<f4", "False", "(4,)", &v)).contains("not 2-D"));
        assert!(err(npy(1, "<f4", "False", "(3, 2)", &v)).contains("bytes of data"));
        assert!(err(b"not numpy".to_vec()).contains("magic"));
        let mut v3 = npy(1, "<f4", "False", "(2, 2)", &v);
        v3[6] = 3;
        assert!(err(v3).contains("version 3.0"));
    }

    #[test]
    fn bodies_take_rows_round_robin() -> anyhow::Result<()> {
        let mut m = Matrix {
            rows: 3,
            cols: 2,
            data: vec![0.0, 1.0, 10.0, 11.0, 20.0, 21.0],
        };
        m.apply(parse_column_change("1=2")?, true)?;
        m.apply(parse_column_change("0=0.5")?, false)?;
        assert!(m.apply(parse_column_change("2=1")?, false).is_err());

        let bodies = m.bodies("x", 2)?;
        // Starts 0, 2, 4 = 1 (mod 3): three distinct bodies, then the cycle repeats.
        assert_eq!(bodies.len(), 3);
        let body: serde_json::Value = serde_json::from_slice(&bodies[1])?;
        assert_eq!(
            body,
            serde_json::json!({"inputs": [{
                "name": "x", "shape": [2, 2], "datatype": "FP32",
                "data": [20.5, 42.0, 0.5, 2.0],
            }]})
        );
        assert_eq!(m.bodies("x", 3)?.len(), 1);
        Ok(())
    }

    #[test]
    fn reads_the_churn_sample_when_present() -> anyhow::Result<()> {
        let path = Path::new("/work/shared/bench-models/data/churn_sample.npy");
        if !path.exists() {
            return Ok(());
        }
        let m = Matrix::read(path)?;
        assert_eq!((m.rows, m.cols), (1000, 12));
        assert_eq!(m.bodies("input", 1)?.len(), 1000);
        Ok(())
    }
}
