//! Models as assets: addressed by the blake3 hash of their file, verified on load.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{InferError, ModelError};
use crate::tensor::{ElementType, Tensor};

/// Content address of a model: the blake3 hash of the `.onnx` file's bytes.
///
/// Displayed and parsed as 64 lowercase hex digits, the same form the asset plane and the session
/// manifest use.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct ModelId([u8; 32]);

impl ModelId {
    /// The id of a model whose file holds `bytes`.
    pub fn of_bytes(bytes: &[u8]) -> Self {
        Self(*blake3::hash(bytes).as_bytes())
    }

    /// The id from a raw 32-byte hash.
    pub fn from_bytes(hash: [u8; 32]) -> Self {
        Self(hash)
    }

    /// The raw 32-byte hash.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The first 12 hex digits, for logs.
    pub fn short(&self) -> String {
        self.to_string()[..12].to_owned()
    }
}

impl fmt::Display for ModelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ModelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ModelId({})", self.short())
    }
}

/// A string is not a model id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a model id: expected 64 hex digits (a blake3 hash)")]
pub struct ParseModelIdError(pub String);

impl FromStr for ModelId {
    type Err = ParseModelIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseModelIdError(s.chars().take(80).collect());
        let bytes = s.as_bytes();
        if bytes.len() != 64 {
            return Err(err());
        }
        let mut out = [0u8; 32];
        for (i, pair) in bytes.chunks_exact(2).enumerate() {
            let hi = (pair[0] as char).to_digit(16).ok_or_else(err)?;
            let lo = (pair[1] as char).to_digit(16).ok_or_else(err)?;
            out[i] = (hi * 16 + lo) as u8;
        }
        Ok(Self(out))
    }
}

impl From<ModelId> for String {
    fn from(id: ModelId) -> String {
        id.to_string()
    }
}

impl TryFrom<String> for ModelId {
    type Error = ParseModelIdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

/// One dimension of a model's input or output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dim {
    /// Any size (symbolic in the graph, e.g. `batch`).
    Dynamic,
    /// Exactly this size.
    Fixed(usize),
}

/// Name, element type and shape of a model's input or output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorSpec {
    /// The graph's name for it.
    pub name: String,
    /// Element type.
    pub dtype: ElementType,
    /// Dimensions, batch first.
    pub dims: Vec<Dim>,
}

impl TensorSpec {
    /// The shape as text, `?` for dynamic dimensions: `[?, 16]`.
    pub fn shape_text(&self) -> String {
        let parts: Vec<String> = self
            .dims
            .iter()
            .map(|d| match d {
                Dim::Dynamic => "?".to_owned(),
                Dim::Fixed(n) => n.to_string(),
            })
            .collect();
        format!("[{}]", parts.join(", "))
    }
}

/// What the pool knows about a registered model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Content hash of the file.
    pub id: ModelId,
    /// Where it was loaded from.
    pub path: PathBuf,
    /// Size of the file.
    pub size_bytes: u64,
    /// The single input.
    pub input: TensorSpec,
    /// The single output.
    pub output: TensorSpec,
    /// Whether requests can be concatenated along dimension 0 (the first input dimension is
    /// dynamic and the output's first dimension follows it).
    pub batchable: bool,
}

impl ModelInfo {
    /// Checks a request's dtype and shape against the model's input.
    pub fn validate(&self, input: &Tensor) -> Result<(), InferError> {
        if input.dtype() != self.input.dtype {
            return Err(InferError::DtypeMismatch {
                model: self.id,
                input: self.input.name.clone(),
                expected: self.input.dtype,
                actual: input.dtype(),
            });
        }
        let shape = input.shape();
        let fits = shape.len() == self.input.dims.len()
            && shape[0] > 0
            && shape.iter().zip(&self.input.dims).all(|(&s, d)| match d {
                Dim::Dynamic => s > 0,
                Dim::Fixed(n) => s == *n,
            });
        if !fits {
            return Err(InferError::ShapeMismatch {
                model: self.id,
                input: self.input.name.clone(),
                expected: self.input.shape_text(),
                actual: shape.to_vec(),
            });
        }
        Ok(())
    }
}

/// Reads a model file, refusing files over `limit` bytes.
pub(crate) fn read_model_file(path: &Path, limit: u64) -> Result<Vec<u8>, ModelError> {
    let read_err = |source| ModelError::Read {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let size = file.metadata().map_err(read_err)?.len();
    if size > limit {
        return Err(ModelError::TooLarge {
            path: path.to_owned(),
            size,
            limit,
        });
    }
    let mut bytes = Vec::with_capacity(size as usize);
    // take(limit + 1) so a file that grows between stat and read is still caught
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > limit {
        return Err(ModelError::TooLarge {
            path: path.to_owned(),
            size: bytes.len() as u64,
            limit,
        });
    }
    Ok(bytes)
}

/// Converts ONNX Runtime's description of an input or output into a [`TensorSpec`].
pub(crate) fn spec_from_ort(
    id: ModelId,
    name: &str,
    ty: &ort::value::ValueType,
) -> Result<TensorSpec, ModelError> {
    use ort::tensor::TensorElementType;
    let unsupported = |reason: String| ModelError::Unsupported { id, reason };
    match ty {
        ort::value::ValueType::Tensor { ty, shape, .. } => {
            let dtype = match ty {
                TensorElementType::Float32 => ElementType::F32,
                TensorElementType::Int64 => ElementType::I64,
                other => {
                    return Err(unsupported(format!(
                        "`{name}` has element type {other:?}; the pool serves float32 and int64"
                    )))
                }
            };
            let dims: Vec<Dim> = shape
                .iter()
                .map(|&d| {
                    if d < 0 {
                        Dim::Dynamic
                    } else {
                        Dim::Fixed(d as usize)
                    }
                })
                .collect();
            if dims.is_empty() {
                return Err(unsupported(format!(
                    "`{name}` is a scalar; the pool needs a batch dimension"
                )));
            }
            Ok(TensorSpec {
                name: name.to_owned(),
                dtype,
                dims,
            })
        }
        other => Err(unsupported(format!("`{name}` is {other:?}, not a tensor"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_id_round_trips_through_hex_and_serde() {
        let id = ModelId::of_bytes(b"model");
        let text = id.to_string();
        assert_eq!(text.len(), 64);
        assert_eq!(text.parse::<ModelId>().unwrap(), id);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(serde_json::from_str::<ModelId>(&json).unwrap(), id);
    }

    #[test]
    fn model_id_rejects_bad_text() {
        assert!("abc".parse::<ModelId>().is_err());
        assert!("zz".repeat(32).parse::<ModelId>().is_err());
        assert!("é".repeat(32).parse::<ModelId>().is_err());
    }

    fn info() -> ModelInfo {
        ModelInfo {
            id: ModelId::of_bytes(b"m"),
            path: PathBuf::from("m.onnx"),
            size_bytes: 1,
            input: TensorSpec {
                name: "x".into(),
                dtype: ElementType::F32,
                dims: vec![Dim::Dynamic, Dim::Fixed(4)],
            },
            output: TensorSpec {
                name: "y".into(),
                dtype: ElementType::F32,
                dims: vec![Dim::Dynamic, Dim::Fixed(2)],
            },
            batchable: true,
        }
    }

    #[test]
    fn validate_checks_dtype_rank_and_fixed_dims() {
        let m = info();
        assert!(m
            .validate(&Tensor::f32([3, 4], vec![0.0; 12]).unwrap())
            .is_ok());
        assert!(matches!(
            m.validate(&Tensor::i64([3, 4], vec![0; 12]).unwrap()),
            Err(InferError::DtypeMismatch { .. })
        ));
        assert!(matches!(
            m.validate(&Tensor::f32([3, 5], vec![0.0; 15]).unwrap()),
            Err(InferError::ShapeMismatch { .. })
        ));
        assert!(matches!(
            m.validate(&Tensor::f32([12], vec![0.0; 12]).unwrap()),
            Err(InferError::ShapeMismatch { .. })
        ));
        assert!(matches!(
            m.validate(&Tensor::f32([0, 4], vec![]).unwrap()),
            Err(InferError::ShapeMismatch { .. })
        ));
    }

    #[test]
    fn read_model_file_enforces_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.onnx");
        std::fs::write(&path, vec![0u8; 100]).unwrap();
        assert!(matches!(
            read_model_file(&path, 99),
            Err(ModelError::TooLarge { size: 100, .. })
        ));
        assert_eq!(read_model_file(&path, 100).unwrap().len(), 100);
        assert!(matches!(
            read_model_file(&dir.path().join("missing.onnx"), 100),
            Err(ModelError::Read { .. })
        ));
    }
}
