use crate::error::LoadError;
use crate::model::{NativeInput, TreeModel};

pub fn load(_text: &str, _input: NativeInput) -> Result<TreeModel, LoadError> {
    Err(LoadError::unsupported("todo"))
}
