//! ONNX Runtime through the `ort` crate, loaded dynamically: nothing is linked at build time,
//! the shared library is found at start-up (`ORT_DYLIB_PATH`, `runtime.ort_library`, `.ort/`).

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::environment::Environment;
use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, PrimitiveTensorElementType, TensorElementType, TensorRef, ValueType};

use super::{Backend, BackendError, LoadError};
use sluice_core::tensor::{DataType, ModelSignature, Tensor, TensorData, TensorSpec};

/// The process-wide ONNX Runtime environment. The library can be loaded once per process, so
/// the first successful (or failed) initialisation is shared by every server in it.
#[derive(Clone)]
pub struct OrtRuntime {
    env: Environment,
    library: PathBuf,
}

static ORT: OnceLock<Result<OrtRuntime, String>> = OnceLock::new();

impl OrtRuntime {
    pub fn init(library: &Path) -> Result<OrtRuntime, String> {
        ORT.get_or_init(|| {
            let describe = |e: &dyn std::fmt::Display| {
                format!("cannot load ONNX Runtime from {}: {e}", library.display())
            };
            let builder = ort::init_from(library).map_err(|e| describe(&e))?;
            let env = builder
                .with_name("sluice")
                .build()
                .map_err(|e| describe(&e))?;
            Ok(OrtRuntime {
                env,
                library: library.to_path_buf(),
            })
        })
        .clone()
    }

    pub fn library(&self) -> &Path {
        &self.library
    }

    /// One session for the model at `path`.
    pub fn load(&self, path: &Path, options: &OrtOptions) -> Result<OrtBackend, LoadError> {
        let fail = |e: ort::Error| LoadError(format!("onnxruntime: {e}"));
        let level = match options.optimization {
            OrtOptimization::Disable => GraphOptimizationLevel::Disable,
            OrtOptimization::Basic => GraphOptimizationLevel::Level1,
            OrtOptimization::Extended => GraphOptimizationLevel::Level2,
            OrtOptimization::All => GraphOptimizationLevel::All,
        };
        let mut builder = Session::builder(&self.env)
            .map_err(fail)?
            .with_optimization_level(level)
            .map_err(|e| fail(e.into()))?
            .with_intra_threads(options.intra_threads)
            .map_err(|e| fail(e.into()))?
            .with_inter_threads(1)
            .map_err(|e| fail(e.into()))?
            .with_memory_pattern(options.memory_pattern)
            .map_err(|e| fail(e.into()))?;
        if !options.cpu_arena {
            let plain = MemoryInfo::new(
                AllocationDevice::CPU,
                0,
                AllocatorType::Device,
                MemoryType::Default,
            )
            .map_err(fail)?;
            builder = builder.with_allocator(plain).map_err(|e| fail(e.into()))?;
        }
        if options.intra_threads > 1 && !options.spinning {
            builder = builder
                .with_intra_op_spinning(false)
                .map_err(|e| fail(e.into()))?;
        }
        let session = builder.commit_from_file(path).map_err(fail)?;
        let signature = signature_of(&session)?;
        Ok(OrtBackend { session, signature })
    }
}

/// How ONNX Runtime sessions are built (`[runtime.ort]`). The defaults are what measured best
/// here for many small concurrent requests (see `cargo bench -p sluice --bench ort_options`).
#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OrtOptions {
    /// Intra-op threads per session. 1 runs each request on its worker thread alone; more
    /// splits one large request across cores, at the cost of handing work between threads.
    pub intra_threads: usize,
    /// Whether idle intra-op threads spin waiting for work (only with `intra_threads > 1`):
    /// lower latency for back-to-back large requests, burnt CPU otherwise.
    pub spinning: bool,
    /// Graph optimisation level applied at load.
    pub optimization: OrtOptimization,
    /// Plan buffer sizes from the first run and reuse them (helps fixed shapes).
    pub memory_pattern: bool,
    /// Serve allocations from ONNX Runtime's growing arena instead of the system allocator.
    pub cpu_arena: bool,
}

impl Default for OrtOptions {
    fn default() -> Self {
        OrtOptions {
            intra_threads: 1,
            spinning: false,
            optimization: OrtOptimization::All,
            memory_pattern: true,
            cpu_arena: true,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OrtOptimization {
    Disable,
    Basic,
    Extended,
    All,
}

/// Where to look for `libonnxruntime.so`: the environment, the config, then `.ort/` in the
/// working directory or above the executable (where `scripts/fetch-ort.sh` puts it).
pub fn find_ort_library(configured: Option<&Path>) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    if let Some(path) = configured {
        return Some(path.to_path_buf());
    }
    let file = Path::new(".ort").join("libonnxruntime.so");
    let mut candidates = vec![file.clone()];
    if let Ok(exe) = std::env::current_exe() {
        candidates.extend(exe.ancestors().skip(1).take(4).map(|dir| dir.join(&file)));
    }
    candidates.into_iter().find(|p| p.is_file())
}

pub struct OrtBackend {
    session: Session,
    signature: ModelSignature,
}

impl OrtBackend {
    pub fn signature(&self) -> &ModelSignature {
        &self.signature
    }
}

impl Backend for OrtBackend {
    fn run(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, BackendError> {
        let fail = |e: ort::Error| BackendError(format!("onnxruntime: {e}"));
        let mut feeds: Vec<(Cow<'_, str>, SessionInputValue<'_>)> =
            Vec::with_capacity(inputs.len());
        for (tensor, spec) in inputs.iter().zip(&self.signature.inputs) {
            feeds.push((
                Cow::Borrowed(spec.name.as_str()),
                to_ort(tensor).map_err(fail)?,
            ));
        }
        let outputs = self.session.run(feeds).map_err(fail)?;
        self.signature
            .outputs
            .iter()
            .map(|spec| {
                let value = outputs.get(&spec.name).ok_or_else(|| {
                    BackendError(format!("onnxruntime: output '{}' missing", spec.name))
                })?;
                from_ort(value, spec).map_err(fail)
            })
            .collect()
    }
}

fn signature_of(session: &Session) -> Result<ModelSignature, LoadError> {
    let spec = |name: &str, dtype: &ValueType| -> Result<TensorSpec, LoadError> {
        let ValueType::Tensor { ty, shape, .. } = dtype else {
            return Err(LoadError(format!(
                "tensor '{name}' is a {dtype:?}, not a tensor (export classifiers without ZipMap)"
            )));
        };
        let datatype = datatype_of(*ty)
            .ok_or_else(|| LoadError(format!("tensor '{name}' has unsupported type {ty:?}")))?;
        Ok(TensorSpec {
            name: name.to_string(),
            datatype,
            shape: shape.iter().copied().collect(),
        })
    };
    Ok(ModelSignature {
        inputs: session
            .inputs()
            .iter()
            .map(|o| spec(o.name(), o.dtype()))
            .collect::<Result<_, _>>()?,
        outputs: session
            .outputs()
            .iter()
            .map(|o| spec(o.name(), o.dtype()))
            .collect::<Result<_, _>>()?,
    })
}

fn datatype_of(ty: TensorElementType) -> Option<DataType> {
    Some(match ty {
        TensorElementType::Bool => DataType::Bool,
        TensorElementType::Uint8 => DataType::U8,
        TensorElementType::Uint16 => DataType::U16,
        TensorElementType::Uint32 => DataType::U32,
        TensorElementType::Uint64 => DataType::U64,
        TensorElementType::Int8 => DataType::I8,
        TensorElementType::Int16 => DataType::I16,
        TensorElementType::Int32 => DataType::I32,
        TensorElementType::Int64 => DataType::I64,
        TensorElementType::Float32 => DataType::F32,
        TensorElementType::Float64 => DataType::F64,
        TensorElementType::String => DataType::Bytes,
        _ => return None,
    })
}

/// Borrows the tensor's buffer as an ORT value without copying (strings are the exception:
/// ORT keeps its own copy).
fn to_ort(tensor: &Tensor) -> ort::Result<SessionInputValue<'_>> {
    fn view<T: PrimitiveTensorElementType + std::fmt::Debug + Clone + 'static>(
        shape: Vec<i64>,
        data: &[T],
    ) -> ort::Result<SessionInputValue<'_>> {
        Ok(TensorRef::from_array_view((shape, data))?.into())
    }
    let shape: Vec<i64> = tensor.shape.iter().map(|&d| d as i64).collect();
    match &tensor.data {
        TensorData::Bool(v) => view(shape, v),
        TensorData::U8(v) => view(shape, v),
        TensorData::U16(v) => view(shape, v),
        TensorData::U32(v) => view(shape, v),
        TensorData::U64(v) => view(shape, v),
        TensorData::I8(v) => view(shape, v),
        TensorData::I16(v) => view(shape, v),
        TensorData::I32(v) => view(shape, v),
        TensorData::I64(v) => view(shape, v),
        TensorData::F32(v) => view(shape, v),
        TensorData::F64(v) => view(shape, v),
        TensorData::Bytes(v) => {
            let strings: Vec<String> = v
                .iter()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .collect();
            Ok(ort::value::Tensor::from_string_array((shape, strings.as_slice()))?.into())
        }
    }
}

fn from_ort(value: &DynValue, spec: &TensorSpec) -> ort::Result<Tensor> {
    fn copy<T: PrimitiveTensorElementType + Clone>(
        value: &DynValue,
    ) -> ort::Result<(Vec<usize>, Vec<T>)> {
        let (shape, data) = value.try_extract_tensor::<T>()?;
        Ok((shape.iter().map(|&d| d as usize).collect(), data.to_vec()))
    }
    let (shape, data) = match spec.datatype {
        DataType::Bool => copy(value).map(|(s, v)| (s, TensorData::Bool(v)))?,
        DataType::U8 => copy(value).map(|(s, v)| (s, TensorData::U8(v)))?,
        DataType::U16 => copy(value).map(|(s, v)| (s, TensorData::U16(v)))?,
        DataType::U32 => copy(value).map(|(s, v)| (s, TensorData::U32(v)))?,
        DataType::U64 => copy(value).map(|(s, v)| (s, TensorData::U64(v)))?,
        DataType::I8 => copy(value).map(|(s, v)| (s, TensorData::I8(v)))?,
        DataType::I16 => copy(value).map(|(s, v)| (s, TensorData::I16(v)))?,
        DataType::I32 => copy(value).map(|(s, v)| (s, TensorData::I32(v)))?,
        DataType::I64 => copy(value).map(|(s, v)| (s, TensorData::I64(v)))?,
        DataType::F32 => copy(value).map(|(s, v)| (s, TensorData::F32(v)))?,
        DataType::F64 => copy(value).map(|(s, v)| (s, TensorData::F64(v)))?,
        DataType::Bytes => {
            let (shape, strings) = value.try_extract_strings()?;
            (
                shape.iter().map(|&d| d as usize).collect(),
                TensorData::Bytes(strings.into_iter().map(String::into_bytes).collect()),
            )
        }
    };
    Ok(Tensor {
        name: spec.name.clone(),
        shape,
        data,
    })
}
