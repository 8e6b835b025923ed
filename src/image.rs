//! Image file bytes → normalised pixel tensor [3, S, S], as open_clip's validation transform
//! does it with PIL: shorter side to S (bicubic with PIL's antialiasing and 8-bit fixed-point
//! arithmetic), centre crop, ÷255, CLIP mean/std (docs/openflamingo.md §9).
//!
//! Two deliberate departures from the reference's PIL path: EXIF orientation is applied, and
//! transparent pixels are composited onto white.

use std::io::Cursor;

use candle_core::{Device, Tensor};
use image::{DynamicImage, ImageDecoder, ImageReader, RgbImage};

use crate::error::{Error, Result};

/// The most pixels an image may have: PIL's limit (twice its `MAX_IMAGE_PIXELS`), above which
/// it refuses a file as a decompression bomb. A header claiming more is refused before any
/// pixel memory is allocated, with the limit in the message.
pub const MAX_PIXELS: u64 = 178_956_970;

/// The most memory one decode may allocate (a GIF's canvas and frame, a 16-bit PNG's rows).
const MAX_DECODE_BYTES: u64 = 2 << 30;

fn check_size(w: u32, h: u32) -> std::result::Result<(), String> {
    let pixels = w as u64 * h as u64;
    if pixels > MAX_PIXELS {
        return Err(format!(
            "{w}×{h} is {pixels} pixels, more than the {MAX_PIXELS} an image may have (a \
             decompression bomb, or far larger than the model's 224-pixel view needs)"
        ));
    }
    Ok(())
}

/// Decodes any image the `image` crate reads, applies EXIF orientation and flattens alpha
/// onto white. `name` is used in error messages. Images over [`MAX_PIXELS`] are refused from
/// their header.
pub fn decode_rgb(bytes: &[u8], name: &str) -> Result<RgbImage> {
    let err = |reason: String| Error::Image {
        name: name.to_string(),
        reason,
    };
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| err(e.to_string()))?;
    match reader.format() {
        None => {
            return Err(err(
                "not an image file (unknown or unsupported format)".into()
            ))
        }
        Some(image::ImageFormat::Jpeg) => return decode_jpeg(bytes).map_err(err),
        Some(_) => {}
    }
    let mut reader = reader;
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(|e| err(e.to_string()))?;
    let (w, h) = decoder.dimensions();
    check_size(w, h).map_err(err)?;
    let orientation = decoder.orientation().ok();
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| err(e.to_string()))?;
    if let Some(o) = orientation {
        img.apply_orientation(o);
    }
    if img.width() == 0 || img.height() == 0 {
        return Err(err("the image is empty".into()));
    }
    Ok(flatten_on_white(img))
}

/// Whether a JPEG's data ends before its end-of-image marker: no `FF D9` after the last
/// start-of-scan (`FF DA`). Data a camera appends after the marker is allowed.
fn is_truncated_jpeg(bytes: &[u8]) -> bool {
    let last_scan = bytes.windows(2).rposition(|w| w == [0xFF, 0xDA]);
    match last_scan {
        Some(i) => !bytes[i..].windows(2).any(|w| w == [0xFF, 0xD9]),
        None => false,
    }
}

/// JPEG through libjpeg (mozjpeg's build of libjpeg-turbo's decoder), as PIL decodes it: the
/// `image` crate's pure-Rust decoders differ from it by up to 11 levels on 4:2:0 chroma.
/// libjpeg reports fatal errors by unwinding, which is caught here.
fn decode_jpeg(bytes: &[u8]) -> std::result::Result<RgbImage, String> {
    if is_truncated_jpeg(bytes) {
        // libjpeg fills the missing rows with grey and only warns; PIL refuses the file.
        return Err("the JPEG is truncated (its data ends before the end-of-image marker)".into());
    }
    let corrupt = |e: std::io::Error| format!("corrupt or unsupported JPEG ({e})");
    let decoded = std::panic::catch_unwind(|| -> std::result::Result<_, String> {
        let d = mozjpeg::Decompress::new_mem(bytes).map_err(corrupt)?;
        check_size(d.width() as u32, d.height() as u32)?;
        let mut img = d.rgb().map_err(corrupt)?;
        let (w, h) = (img.width() as u32, img.height() as u32);
        let px: Vec<[u8; 3]> = img.read_scanlines().map_err(corrupt)?;
        img.finish().map_err(corrupt)?;
        Ok((w, h, px.into_iter().flatten().collect::<Vec<u8>>()))
    });
    let (w, h, rgb) = match decoded {
        Ok(r) => r?,
        Err(_) => return Err("corrupt or unsupported JPEG".into()),
    };
    if w == 0 || h == 0 {
        return Err("the image is empty".into());
    }
    let mut img = RgbImage::from_raw(w, h, rgb).ok_or("JPEG pixel data has the wrong size")?;
    // EXIF orientation from the header (the image crate parses it without decoding pixels).
    let orientation = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .ok()
        .and_then(|r| r.into_decoder().ok())
        .and_then(|mut d| d.orientation().ok());
    if let Some(o) = orientation {
        let mut dynimg = DynamicImage::ImageRgb8(img);
        dynimg.apply_orientation(o);
        img = dynimg.to_rgb8();
    }
    Ok(img)
}

fn flatten_on_white(img: DynamicImage) -> RgbImage {
    if !img.color().has_alpha() {
        return img.to_rgb8();
    }
    let rgba = img.to_rgba8();
    let (w, h) = rgba.dimensions();
    let mut out = RgbImage::new(w, h);
    for (o, p) in out.pixels_mut().zip(rgba.pixels()) {
        let a = p[3] as u32;
        for c in 0..3 {
            o[c] = ((p[c] as u32 * a + 255 * (255 - a) + 127) / 255) as u8;
        }
    }
    out
}

/// Target size of torchvision's `Resize(size)` for an int size: shorter side → `size`,
/// longer side → int(size·long/short).
pub fn resized_size(w: u32, h: u32, size: u32) -> (u32, u32) {
    let (short, long) = if w <= h { (w, h) } else { (h, w) };
    let new_long = ((size as u64 * long as u64) as f64 / short as f64) as u32;
    if w <= h {
        (size, new_long)
    } else {
        (new_long, size)
    }
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// PIL's `precompute_coeffs` + `normalize_coeffs_8bpc` for one axis.
fn coefficients(in_size: usize, out_size: usize) -> (Vec<(usize, usize)>, Vec<i32>, usize) {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut kk = vec![0i32; out_size * ksize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C casts truncate toward zero.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let n = xmax - xmin;
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(n) {
            let w = bicubic((x as f64 + xmin as f64 - center + 0.5) * ss);
            *kx = w;
            ww += w;
        }
        for x in 0..ksize {
            let w = if x < n && ww != 0.0 { k[x] / ww } else { 0.0 };
            let f = w * (1u64 << PRECISION_BITS) as f64;
            kk[xx * ksize + x] = if w < 0.0 {
                (f - 0.5) as i32
            } else {
                (f + 0.5) as i32
            };
        }
        bounds.push((xmin, n));
    }
    (bounds, kk, ksize)
}

fn clip8(v: i64) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// PIL `Image.resize((w, h), BICUBIC)` for an RGB8 image (horizontal pass, then vertical).
pub fn resize_bicubic_pil(img: &RgbImage, out_w: u32, out_h: u32) -> RgbImage {
    let (in_w, in_h) = img.dimensions();
    let mut cur = img.clone();
    if out_w != in_w {
        let (bounds, kk, ksize) = coefficients(in_w as usize, out_w as usize);
        let mut out = RgbImage::new(out_w, in_h);
        for y in 0..in_h {
            for (xx, &(xmin, n)) in bounds.iter().enumerate() {
                let k = &kk[xx * ksize..xx * ksize + n];
                for c in 0..3 {
                    let mut ss: i64 = 1 << (PRECISION_BITS - 1);
                    for (x, &kv) in k.iter().enumerate() {
                        ss += cur.get_pixel((xmin + x) as u32, y)[c] as i64 * kv as i64;
                    }
                    out.get_pixel_mut(xx as u32, y)[c] = clip8(ss);
                }
            }
        }
        cur = out;
    }
    if out_h != in_h {
        let (bounds, kk, ksize) = coefficients(in_h as usize, out_h as usize);
        let w = cur.width();
        let mut out = RgbImage::new(w, out_h);
        for (yy, &(ymin, n)) in bounds.iter().enumerate() {
            let k = &kk[yy * ksize..yy * ksize + n];
            for x in 0..w {
                for c in 0..3 {
                    let mut ss: i64 = 1 << (PRECISION_BITS - 1);
                    for (y, &kv) in k.iter().enumerate() {
                        ss += cur.get_pixel(x, (ymin + y) as u32)[c] as i64 * kv as i64;
                    }
                    out.get_pixel_mut(x, yy as u32)[c] = clip8(ss);
                }
            }
        }
        cur = out;
    }
    cur
}

/// Python's round() (half to even) of a non-negative half-integer-or-integer value.
fn round_half_even(x: f64) -> i64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 && (r as i64) % 2 != 0 {
        r as i64 - 1
    } else {
        r as i64
    }
}

/// Resize (shorter side) + centre crop to `size`×`size`, as RGB8.
pub fn resize_and_crop(img: &RgbImage, size: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    let (nw, nh) = resized_size(w, h, size);
    let resized = resize_bicubic_pil(img, nw, nh);
    let top = round_half_even((nh as f64 - size as f64) / 2.0).max(0) as u32;
    let left = round_half_even((nw as f64 - size as f64) / 2.0).max(0) as u32;
    image::imageops::crop_imm(&resized, left, top, size, size).to_image()
}

/// Normalised CHW f32 tensor of a cropped RGB8 image.
pub fn to_tensor(img: &RgbImage, mean: [f32; 3], std: [f32; 3], device: &Device) -> Result<Tensor> {
    let (w, h) = img.dimensions();
    let (w, h) = (w as usize, h as usize);
    let mut data = vec![0f32; 3 * w * h];
    for (x, y, p) in img.enumerate_pixels() {
        for c in 0..3 {
            let v = p[c] as f32 / 255.0;
            data[c * w * h + y as usize * w + x as usize] = (v - mean[c]) / std[c];
        }
    }
    Ok(Tensor::from_vec(data, (3, h, w), device)?)
}

/// The whole pipeline: file bytes → [3, size, size].
pub fn preprocess(
    bytes: &[u8],
    name: &str,
    size: u32,
    mean: [f32; 3],
    std: [f32; 3],
    device: &Device,
) -> Result<Tensor> {
    let rgb = decode_rgb(bytes, name)?;
    to_tensor(&resize_and_crop(&rgb, size), mean, std, device)
}

/// Reads a file and preprocesses it.
pub fn preprocess_file(
    path: &std::path::Path,
    size: u32,
    mean: [f32; 3],
    std: [f32; 3],
    device: &Device,
) -> Result<Tensor> {
    let bytes = std::fs::read(path).map_err(|e| Error::Image {
        name: path.display().to_string(),
        reason: e.to_string(),
    })?;
    preprocess(&bytes, &path.display().to_string(), size, mean, std, device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torchvision_resize_sizes() {
        assert_eq!(resized_size(300, 200, 224), (336, 224));
        assert_eq!(resized_size(200, 300, 224), (224, 336));
        assert_eq!(resized_size(1000, 150, 224), (1493, 224));
        assert_eq!(resized_size(224, 224, 224), (224, 224));
    }

    #[test]
    fn python_rounding() {
        assert_eq!(round_half_even(0.5), 0);
        assert_eq!(round_half_even(1.5), 2);
        assert_eq!(round_half_even(2.5), 2);
        assert_eq!(round_half_even(3.0), 3);
    }

    #[test]
    fn alpha_goes_onto_white() {
        let mut img = image::RgbaImage::new(2, 1);
        img.put_pixel(0, 0, image::Rgba([0, 0, 0, 0]));
        img.put_pixel(1, 0, image::Rgba([10, 20, 30, 255]));
        let rgb = flatten_on_white(DynamicImage::ImageRgba8(img));
        assert_eq!(rgb.get_pixel(0, 0).0, [255, 255, 255]);
        assert_eq!(rgb.get_pixel(1, 0).0, [10, 20, 30]);
    }
}
