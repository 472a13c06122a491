//! Values of the small constant tensors the ensemble graphs carry (attributes, initializers).

use super::proto::{TensorProto, data_type};
use crate::error::LoadError;

/// A float or double tensor's values, exactly, as f64.
pub fn reals(t: &TensorProto, what: &str) -> Result<Vec<f64>, LoadError> {
    if !t.external_data.is_empty() || t.data_location == 1 {
        return Err(LoadError::unsupported(format!(
            "{what} is stored in an external file"
        )));
    }
    let values: Vec<f64> = match t.data_type {
        data_type::FLOAT if !t.raw_data.is_empty() => chunks::<4>(&t.raw_data, what)?
            .map(|b| f32::from_le_bytes(b) as f64)
            .collect(),
        data_type::FLOAT => t.float_data.iter().map(|&f| f as f64).collect(),
        data_type::DOUBLE if !t.raw_data.is_empty() => chunks::<8>(&t.raw_data, what)?
            .map(f64::from_le_bytes)
            .collect(),
        data_type::DOUBLE => t.double_data.clone(),
        other => {
            return Err(LoadError::unsupported(format!(
                "{what} has element type {other}, not float or double"
            )));
        }
    };
    let expected: i64 = t.dims.iter().product();
    if t.dims.iter().any(|&d| d < 0) || expected as usize != values.len() {
        return Err(LoadError::invalid(format!(
            "{what} has dims {:?} but {} values",
            t.dims,
            values.len()
        )));
    }
    Ok(values)
}

fn chunks<'a, const N: usize>(
    raw: &'a [u8],
    what: &str,
) -> Result<impl Iterator<Item = [u8; N]> + 'a, LoadError> {
    if !raw.len().is_multiple_of(N) {
        return Err(LoadError::invalid(format!(
            "{what}'s raw data is {} bytes, not a multiple of {N}",
            raw.len()
        )));
    }
    Ok(raw
        .chunks_exact(N)
        .map(|c| <[u8; N]>::try_from(c).unwrap_or([0; N])))
}
