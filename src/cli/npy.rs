//! Minimal NumPy `.npy` (format 1.0, little-endian f32, C order) writer and reader.

use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};

pub fn write_f32(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    let shape_s = match shape.len() {
        1 => format!("({},)", shape[0]),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_s}, }}");
    // magic(6) + version(2) + len(2) + header + '\n' must be a multiple of 64.
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut buf = Vec::with_capacity(10 + header.len() + data.len() * 4);
    buf.extend_from_slice(b"\x93NUMPY\x01\x00");
    buf.extend_from_slice(&(header.len() as u16).to_le_bytes());
    buf.extend_from_slice(header.as_bytes());
    for v in data {
        buf.extend_from_slice(&v.to_le_bytes());
    }
    let mut f = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    f.write_all(&buf).map_err(|e| Error::io(path, e))
}

/// Reads an f32 `.npy` written by [`write_f32`] or numpy; returns (shape, data).
pub fn read_f32(path: &Path) -> Result<(Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bad = |r: &str| Error::BadWeights {
        path: path.to_path_buf(),
        reason: r.to_string(),
    };
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("not a .npy file"));
    }
    let (hlen, start) = if bytes[6] == 1 || bytes.len() < 12 {
        (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10)
    } else {
        (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        )
    };
    if bytes.len() < start + hlen {
        return Err(bad("truncated header"));
    }
    let header = std::str::from_utf8(&bytes[start..start + hlen]).map_err(|_| bad("bad header"))?;
    if !header.contains("'<f4'") || header.contains("'fortran_order': True") {
        return Err(bad("only little-endian f32 C-order arrays are supported"));
    }
    let s = header.find("'shape': (").ok_or_else(|| bad("no shape"))? + "'shape': (".len();
    let e = header[s..].find(')').ok_or_else(|| bad("no shape"))? + s;
    let shape: Vec<usize> = header[s..e]
        .split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(|x| x.parse().map_err(|_| bad("bad shape")))
        .collect::<Result<_>>()?;
    let data: Vec<f32> = bytes[start + hlen..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    if data.len() != shape.iter().product::<usize>() {
        return Err(bad("data length does not match the shape"));
    }
    Ok((shape, data))
}

#[cfg(test)]
mod tests {
    #[test]
    fn roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.npy");
        super::write_f32(&p, &[2, 3], &[1., 2., 3., 4., 5., 6.]).unwrap();
        let (s, d) = super::read_f32(&p).unwrap();
        assert_eq!(s, vec![2, 3]);
        assert_eq!(d, vec![1., 2., 3., 4., 5., 6.]);
        // The header is 64-byte aligned as numpy requires.
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!((bytes.len() - 24) % 64, 0);
    }
}
