//! Typed tensors exchanged with the pool: row-major, first dimension is the batch.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::TensorError;

/// Element types the pool serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ElementType {
    /// 32-bit float (`tensor(float)`).
    F32,
    /// 64-bit signed integer (`tensor(int64)`), e.g. token ids.
    I64,
}

impl fmt::Display for ElementType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ElementType::F32 => "float32",
            ElementType::I64 => "int64",
        })
    }
}

/// The elements of a [`Tensor`].
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    /// float32 elements.
    F32(Vec<f32>),
    /// int64 elements.
    I64(Vec<i64>),
}

impl TensorData {
    fn len(&self) -> usize {
        match self {
            TensorData::F32(v) => v.len(),
            TensorData::I64(v) => v.len(),
        }
    }
}

/// A dense row-major tensor whose first dimension is the batch.
///
/// Built only through constructors that check the element count against the shape, so a
/// `Tensor` always has `shape.iter().product() == data.len()` and at least one dimension.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    data: TensorData,
}

fn element_count(shape: &[usize]) -> Result<usize, TensorError> {
    if shape.is_empty() {
        return Err(TensorError::Scalar);
    }
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| TensorError::Overflow(shape.to_vec()))
}

impl Tensor {
    /// A float32 tensor; fails if `data.len()` is not the product of `shape`.
    pub fn f32(shape: impl Into<Vec<usize>>, data: Vec<f32>) -> Result<Self, TensorError> {
        Self::new(shape.into(), TensorData::F32(data))
    }

    /// An int64 tensor; fails if `data.len()` is not the product of `shape`.
    pub fn i64(shape: impl Into<Vec<usize>>, data: Vec<i64>) -> Result<Self, TensorError> {
        Self::new(shape.into(), TensorData::I64(data))
    }

    /// A tensor from shape and data; fails if the element count does not match.
    pub fn new(shape: Vec<usize>, data: TensorData) -> Result<Self, TensorError> {
        let expected = element_count(&shape)?;
        if expected != data.len() {
            return Err(TensorError::LengthMismatch {
                shape,
                expected,
                actual: data.len(),
            });
        }
        Ok(Self { shape, data })
    }

    /// The shape, batch dimension first.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The number of rows (size of the first dimension).
    pub fn rows(&self) -> usize {
        self.shape[0]
    }

    /// The element type.
    pub fn dtype(&self) -> ElementType {
        match self.data {
            TensorData::F32(_) => ElementType::F32,
            TensorData::I64(_) => ElementType::I64,
        }
    }

    /// The elements.
    pub fn data(&self) -> &TensorData {
        &self.data
    }

    /// The elements if this is a float32 tensor.
    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.data {
            TensorData::F32(v) => Some(v),
            TensorData::I64(_) => None,
        }
    }

    /// The elements if this is an int64 tensor.
    pub fn as_i64(&self) -> Option<&[i64]> {
        match &self.data {
            TensorData::I64(v) => Some(v),
            TensorData::F32(_) => None,
        }
    }

    /// Shape and elements, consuming the tensor.
    pub fn into_parts(self) -> (Vec<usize>, TensorData) {
        (self.shape, self.data)
    }

    /// Row `i` (a slice along the batch dimension) as a tensor of batch 1, or `None` if out of range.
    pub fn row(&self, i: usize) -> Option<Tensor> {
        if i >= self.rows() {
            return None;
        }
        let row_len: usize = self.shape[1..].iter().product();
        let range = i * row_len..(i + 1) * row_len;
        let mut shape = self.shape.clone();
        shape[0] = 1;
        let data = match &self.data {
            TensorData::F32(v) => TensorData::F32(v[range].to_vec()),
            TensorData::I64(v) => TensorData::I64(v[range].to_vec()),
        };
        Some(Tensor { shape, data })
    }

    /// Concatenates tensors of the same dtype and trailing shape along dimension 0.
    /// Callers guarantee compatibility; returns `None` if it does not hold.
    pub(crate) fn concat_rows<'a>(
        parts: impl Iterator<Item = &'a Tensor> + Clone,
    ) -> Option<Tensor> {
        let mut iter = parts.clone();
        let first = iter.next()?;
        let trailing = &first.shape[1..];
        let mut rows = 0usize;
        let mut elements = 0usize;
        for t in parts.clone() {
            if t.dtype() != first.dtype() || &t.shape[1..] != trailing {
                return None;
            }
            rows += t.rows();
            elements += t.data.len();
        }
        let mut shape = first.shape.clone();
        shape[0] = rows;
        let data = match first.dtype() {
            ElementType::F32 => {
                let mut out = Vec::with_capacity(elements);
                for t in parts {
                    out.extend_from_slice(t.as_f32()?);
                }
                TensorData::F32(out)
            }
            ElementType::I64 => {
                let mut out = Vec::with_capacity(elements);
                for t in parts {
                    out.extend_from_slice(t.as_i64()?);
                }
                TensorData::I64(out)
            }
        };
        Some(Tensor { shape, data })
    }

    /// Splits along dimension 0 into consecutive pieces of `rows[i]` rows each.
    /// Returns `None` if the row counts do not add up to this tensor's batch.
    pub(crate) fn split_rows(self, rows: &[usize]) -> Option<Vec<Tensor>> {
        if rows.iter().sum::<usize>() != self.rows() {
            return None;
        }
        if rows.len() == 1 {
            return Some(vec![self]);
        }
        let row_len: usize = self.shape[1..].iter().product();
        let mut out = Vec::with_capacity(rows.len());
        let mut start = 0usize;
        for &r in rows {
            let end = start + r * row_len;
            let mut shape = self.shape.clone();
            shape[0] = r;
            let data = match &self.data {
                TensorData::F32(v) => TensorData::F32(v[start..end].to_vec()),
                TensorData::I64(v) => TensorData::I64(v[start..end].to_vec()),
            };
            out.push(Tensor { shape, data });
            start = end;
        }
        Some(out)
    }
}

impl TryFrom<ndarray::ArrayD<f32>> for Tensor {
    type Error = TensorError;
    fn try_from(a: ndarray::ArrayD<f32>) -> Result<Self, TensorError> {
        let shape = a.shape().to_vec();
        let data = a.as_standard_layout().iter().copied().collect();
        Tensor::f32(shape, data)
    }
}

impl TryFrom<ndarray::ArrayD<i64>> for Tensor {
    type Error = TensorError;
    fn try_from(a: ndarray::ArrayD<i64>) -> Result<Self, TensorError> {
        let shape = a.shape().to_vec();
        let data = a.as_standard_layout().iter().copied().collect();
        Tensor::i64(shape, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constructors_check_element_count() {
        assert!(Tensor::f32([2, 3], vec![0.0; 6]).is_ok());
        assert_eq!(
            Tensor::f32([2, 3], vec![0.0; 5]),
            Err(TensorError::LengthMismatch {
                shape: vec![2, 3],
                expected: 6,
                actual: 5
            })
        );
        assert_eq!(Tensor::i64(Vec::new(), vec![1]), Err(TensorError::Scalar));
        assert!(matches!(
            Tensor::i64([usize::MAX, 2], vec![]),
            Err(TensorError::Overflow(_))
        ));
    }

    #[test]
    fn concat_then_split_round_trips() {
        let a = Tensor::f32([1, 2], vec![1.0, 2.0]).unwrap();
        let b = Tensor::f32([2, 2], vec![3.0, 4.0, 5.0, 6.0]).unwrap();
        let c = Tensor::concat_rows([&a, &b].into_iter()).unwrap();
        assert_eq!(c.shape(), &[3, 2]);
        let parts = c.split_rows(&[1, 2]).unwrap();
        assert_eq!(parts, vec![a, b]);
    }

    #[test]
    fn concat_rejects_mixed_shapes_and_types() {
        let a = Tensor::f32([1, 2], vec![1.0, 2.0]).unwrap();
        let b = Tensor::f32([1, 3], vec![1.0, 2.0, 3.0]).unwrap();
        let c = Tensor::i64([1, 2], vec![1, 2]).unwrap();
        assert!(Tensor::concat_rows([&a, &b].into_iter()).is_none());
        assert!(Tensor::concat_rows([&a, &c].into_iter()).is_none());
    }

    #[test]
    fn split_rejects_wrong_row_counts() {
        let a = Tensor::f32([2, 1], vec![1.0, 2.0]).unwrap();
        assert!(a.split_rows(&[1, 2]).is_none());
    }

    #[test]
    fn row_slices_the_batch() {
        let a = Tensor::i64([3, 2], vec![1, 2, 3, 4, 5, 6]).unwrap();
        assert_eq!(a.row(1).unwrap(), Tensor::i64([1, 2], vec![3, 4]).unwrap());
        assert!(a.row(3).is_none());
    }

    #[test]
    fn from_ndarray_keeps_shape() {
        let arr = ndarray::ArrayD::<f32>::zeros(ndarray::IxDyn(&[2, 4]));
        let t = Tensor::try_from(arr).unwrap();
        assert_eq!(t.shape(), &[2, 4]);
        assert_eq!(t.dtype(), ElementType::F32);
    }
}
