//! Quantized weights read in place from a memory map of the app's model cache.
//!
//! candle's x86 kernels multiply through a repacked copy of each quantized weight, made once
//! from its compact blocks; a weight read into memory the usual way keeps both copies for the
//! whole session. Read through a map instead, the compact blocks are pages of the file: once a
//! weight's repacked copy is made, [`FilePages::release`] hands its pages back to the system,
//! and whatever reads them again later (a product candle does not repack, a dequantize) gets
//! them back from the file, unchanged.

use std::sync::Arc;

use candle_core::quantized::k_quants::{self, BlockQ4K, BlockQ8_0, GgmlType};
use candle_core::quantized::{GgmlDType, QStorage, QTensor, QuantizedType};
use candle_core::CpuStorage;
use memmap2::Mmap;

/// A byte range of a mapped file.
#[derive(Clone)]
pub struct FilePages {
    map: Arc<Mmap>,
    start: usize,
    len: usize,
}

impl std::fmt::Debug for FilePages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FilePages({}..{})", self.start, self.start + self.len)
    }
}

impl FilePages {
    /// The range `start..start + len` of `map`, or None when the file is shorter.
    pub fn new(map: Arc<Mmap>, start: usize, len: usize) -> Option<Self> {
        let end = start.checked_add(len)?;
        (end <= map.len()).then_some(Self { map, start, len })
    }

    /// The range `offset..offset + len` of this one, or None past its end.
    pub fn sub(&self, offset: usize, len: usize) -> Option<Self> {
        (offset.checked_add(len)? <= self.len).then(|| Self {
            map: self.map.clone(),
            start: self.start + offset,
            len,
        })
    }

    pub fn bytes(&self) -> &[u8] {
        &self.map[self.start..self.start + self.len]
    }

    /// Drops the range's pages from this process's memory (the file keeps the bytes; the
    /// next read brings them back). A no-op where the system has no such call.
    pub fn release(&self) {
        #[cfg(unix)]
        {
            // SAFETY: the map is a shared, read-only mapping of a file that nothing in this
            // process writes; after MADV_DONTNEED a read faults the same bytes back in from the
            // file, so every slice over the map stays valid and keeps its contents. (The app
            // replaces its cache files by renaming new ones over them, which leaves a mapped
            // file untouched.)
            let _ = unsafe {
                self.map.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    self.start,
                    self.len,
                )
            };
        }
    }
}

/// The blocks of one quantized weight: in the file, or (once overwritten) in memory.
enum Blocks<T> {
    Mapped(FilePages),
    Owned(Vec<T>),
}

/// candle's CPU storage of a quantized tensor, over blocks of type `T`.
struct MappedBlocks<T> {
    blocks: Blocks<T>,
}

impl<T: GgmlType> MappedBlocks<T> {
    fn new(pages: FilePages) -> Option<Self> {
        let size = std::mem::size_of::<T>();
        let aligned = (pages.bytes().as_ptr() as usize).is_multiple_of(std::mem::align_of::<T>());
        (aligned && pages.len.is_multiple_of(size)).then_some(Self {
            blocks: Blocks::Mapped(pages),
        })
    }

    fn blocks(&self) -> &[T] {
        match &self.blocks {
            Blocks::Mapped(p) => {
                let bytes = p.bytes();
                // SAFETY: `new` checked the alignment and that the length is a whole number of
                // blocks; the block types used here (BlockQ8_0, BlockQ4K) are plain f16 and
                // integer fields, valid for any bytes; the map lives as long as `self`.
                unsafe {
                    std::slice::from_raw_parts(
                        bytes.as_ptr() as *const T,
                        bytes.len() / std::mem::size_of::<T>(),
                    )
                }
            }
            Blocks::Owned(v) => v,
        }
    }

    fn count(&self) -> usize {
        self.blocks().len()
    }
}

impl<T: GgmlType + 'static> QuantizedType for MappedBlocks<T> {
    fn dtype(&self) -> GgmlDType {
        T::DTYPE
    }

    fn matmul_t(
        &self,
        mkn: (usize, usize, usize),
        lhs: &[f32],
        dst: &mut [f32],
    ) -> candle_core::Result<()> {
        k_quants::matmul(mkn, lhs, self.blocks(), dst)
    }

    fn matmul_t_f16(
        &self,
        mkn: (usize, usize, usize),
        lhs: &[half::f16],
        dst: &mut [half::f16],
    ) -> candle_core::Result<()> {
        k_quants::matmul_f16(mkn, lhs, self.blocks(), dst)
    }

    fn embedding(
        &self,
        ids: &[u32],
        rows: usize,
        hidden: usize,
    ) -> candle_core::Result<CpuStorage> {
        let per_row = hidden / T::BLCK_SIZE;
        if !hidden.is_multiple_of(T::BLCK_SIZE) || per_row * rows != self.count() {
            candle_core::bail!("a quantized embedding of {rows}x{hidden} does not fit its blocks")
        }
        let blocks = self.blocks();
        let mut out = vec![0f32; ids.len() * hidden];
        for (dst, &id) in out.chunks_exact_mut(hidden).zip(ids) {
            let row = id as usize;
            if row >= rows {
                candle_core::bail!("embedding id {row} is past the {rows} rows")
            }
            T::to_float(&blocks[row * per_row..(row + 1) * per_row], dst);
        }
        Ok(CpuStorage::F32(out))
    }

    fn dequantize(&self, elem_count: usize) -> candle_core::Result<CpuStorage> {
        let mut ys = vec![0f32; elem_count];
        T::to_float(self.blocks(), &mut ys);
        Ok(CpuStorage::F32(ys))
    }

    fn storage_size_in_bytes(&self) -> usize {
        self.count() * std::mem::size_of::<T>()
    }

    fn as_ptr(&self) -> *const u8 {
        self.blocks().as_ptr() as *const u8
    }

    fn block_size(&self) -> usize {
        T::BLCK_SIZE
    }

    fn from_float(&mut self, xs: &[f32]) {
        let mut v = vec![T::zeros(); self.count()];
        T::from_float(xs, &mut v);
        self.blocks = Blocks::Owned(v);
    }

    fn from_float_imatrix(&mut self, xs: &[f32], imatrix_weights: &[f32], n_per_row: usize) {
        let mut v = vec![T::zeros(); self.count()];
        T::from_float_imatrix(xs, &mut v, imatrix_weights, n_per_row);
        self.blocks = Blocks::Owned(v);
    }

    fn size(&self) -> usize {
        self.storage_size_in_bytes()
    }
}

/// A CPU tensor of `shape` over the quantized blocks in `pages`, for the block types the
/// model cache holds (q8_0, q4k); None for other types or when the bytes do not fit the shape.
pub fn qtensor(dtype: GgmlDType, shape: &[usize], pages: FilePages) -> Option<QTensor> {
    let elems: usize = shape.iter().product();
    let expected = elems / dtype.block_size() * dtype.type_size();
    if !elems.is_multiple_of(dtype.block_size()) || pages.len != expected {
        return None;
    }
    let storage: Box<dyn QuantizedType> = match dtype {
        GgmlDType::Q8_0 => Box::new(MappedBlocks::<BlockQ8_0>::new(pages)?),
        GgmlDType::Q4K => Box::new(MappedBlocks::<BlockQ4K>::new(pages)?),
        _ => return None,
    };
    QTensor::new(QStorage::Cpu(storage), shape).ok()
}
