//! Greyscale images as feature values: how an image column is declared, how its cells are read
//! (space-separated pixel values, JSON pixel arrays, base64 PNG), how it is profiled for the
//! monitor, and the IDX files Fashion-MNIST and MNIST ship as.
//!
//! An image is always held as `height * width` pixel values, row-major, in the units the column
//! declares (`0..=max_value`; 16 for scikit-learn's digits, 255 for MNIST). A PNG, whatever its
//! bit depth or colour type, is converted to grey (ITU-R BT.601 luma) and rescaled from its own
//! range to `0..=max_value`, so a PNG and the pixel array it was drawn from mean the same thing.

use std::io::Read;

use base64::Engine;
use serde::{Deserialize, Serialize};

/// Largest side accepted, in pixels: far beyond what a small CNN takes, small enough that a
/// declared shape can never ask for an absurd allocation.
pub const MAX_IMAGE_SIDE: usize = 1024;

/// The shape and range of an image column.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImageSpec {
    /// Rows of pixels.
    pub height: usize,
    /// Pixels per row.
    pub width: usize,
    /// The brightest pixel value (0 is black); values are refused outside `0..=max_value`.
    pub max_value: f64,
}

impl ImageSpec {
    /// Pixels per image.
    pub fn pixels(&self) -> usize {
        self.height * self.width
    }

    /// Checks the declared shape and range, naming the column.
    pub fn validate(&self, column: &str) -> Result<(), String> {
        if !(1..=MAX_IMAGE_SIDE).contains(&self.height)
            || !(1..=MAX_IMAGE_SIDE).contains(&self.width)
        {
            return Err(format!(
                "image column '{column}' must be between 1x1 and {MAX_IMAGE_SIDE}x{MAX_IMAGE_SIDE} \
                 pixels, not {}x{}",
                self.height, self.width
            ));
        }
        if !(self.max_value.is_finite() && self.max_value > 0.0) {
            return Err(format!(
                "image column '{column}' needs a max_value above 0 (16 for 0..16 pixels, 255 for \
                 8-bit images)"
            ));
        }
        Ok(())
    }

    /// Checks one image's pixel values: count and range.
    fn check(&self, pixels: &[f32]) -> Result<(), String> {
        if pixels.len() != self.pixels() {
            return Err(format!(
                "the image has {} pixel values; this column takes {}x{} = {}",
                pixels.len(),
                self.height,
                self.width,
                self.pixels()
            ));
        }
        let max = self.max_value as f32;
        if let Some(p) = pixels.iter().find(|p| !(0.0..=max).contains(*p)) {
            return Err(format!("pixel value {p} is outside 0..={}", self.max_value));
        }
        Ok(())
    }
}

/// The prefix of a data URL holding a PNG; optional before the base64 text.
const DATA_URL: &str = "data:image/png;base64,";

/// The base64 text every PNG starts with: its 8-byte signature, encoded.
const PNG_BASE64_MAGIC: &str = "iVBORw0KGgo";

/// Whether `text` is a base64 PNG (with or without a `data:image/png;base64,` prefix) rather
/// than pixel values.
pub fn is_base64_png(text: &str) -> bool {
    let t = text.trim();
    t.starts_with(DATA_URL) || t.starts_with(PNG_BASE64_MAGIC)
}

/// Reads an image cell: a base64 PNG, or `height * width` pixel values separated by spaces or
/// commas (row-major).
pub fn parse_image_text(text: &str, spec: &ImageSpec) -> Result<Vec<f32>, String> {
    let text = text.trim();
    if is_base64_png(text) {
        let b64 = text.strip_prefix(DATA_URL).unwrap_or(text);
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|e| {
                format!("the image looks like a base64 PNG but is not valid base64: {e}")
            })?;
        return decode_png(&bytes, spec);
    }
    let mut pixels = Vec::with_capacity(spec.pixels());
    for token in text
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|t| !t.is_empty())
    {
        if pixels.len() > spec.pixels() {
            break;
        }
        let value: f64 = token.parse().map_err(|_| {
            format!("'{token}' is not a pixel value; an image is a base64 PNG or pixel numbers")
        })?;
        if !value.is_finite() {
            return Err(format!("'{token}' is not a finite pixel value"));
        }
        pixels.push(value as f32);
    }
    if pixels.len() > spec.pixels() {
        return Err(format!(
            "the image has more than {} pixel values; this column takes {}x{}",
            spec.pixels(),
            spec.height,
            spec.width
        ));
    }
    spec.check(&pixels)?;
    Ok(pixels)
}

/// Reads an image from JSON: a flat array of `height * width` numbers, an array of `height`
/// rows of `width` numbers, or a string ([`parse_image_text`]).
pub fn pixels_from_json(value: &serde_json::Value, spec: &ImageSpec) -> Result<Vec<f32>, String> {
    use serde_json::Value as J;
    let number = |v: &J| -> Result<f32, String> {
        match v.as_f64() {
            Some(x) if x.is_finite() => Ok(x as f32),
            _ => Err(format!("pixel values must be numbers, got {v}")),
        }
    };
    let pixels = match value {
        J::String(s) => return parse_image_text(s, spec),
        J::Array(items) if items.iter().all(J::is_array) && !items.is_empty() => {
            if items.len() != spec.height {
                return Err(format!(
                    "the image has {} rows; this column takes {}x{} images",
                    items.len(),
                    spec.height,
                    spec.width
                ));
            }
            let mut pixels = Vec::with_capacity(spec.pixels());
            for (r, row) in items.iter().enumerate() {
                let row = row.as_array().map(Vec::as_slice).unwrap_or_default();
                if row.len() != spec.width {
                    return Err(format!(
                        "row {} of the image has {} pixels; this column takes {} per row",
                        r + 1,
                        row.len(),
                        spec.width
                    ));
                }
                for v in row {
                    pixels.push(number(v)?);
                }
            }
            pixels
        }
        J::Array(items) => items.iter().map(number).collect::<Result<Vec<_>, _>>()?,
        other => {
            return Err(format!(
                "an image is an array of pixel values or a base64 PNG string, not {other}"
            ));
        }
    };
    spec.check(&pixels)?;
    Ok(pixels)
}

/// Decodes a PNG into grey pixel values scaled to `0..=spec.max_value`; its size must be the
/// column's.
pub fn decode_png(bytes: &[u8], spec: &ImageSpec) -> Result<Vec<f32>, String> {
    let mut decoder = png::Decoder::new_with_limits(
        std::io::Cursor::new(bytes),
        png::Limits {
            bytes: 4 * MAX_IMAGE_SIDE * MAX_IMAGE_SIDE,
        },
    );
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let bad = |e: png::DecodingError| format!("the image is not a readable PNG: {e}");
    let mut reader = decoder.read_info().map_err(bad)?;
    let (width, height) = {
        let info = reader.info();
        (info.width as usize, info.height as usize)
    };
    if (height, width) != (spec.height, spec.width) {
        return Err(format!(
            "the PNG is {height}x{width} (height x width); this column takes {}x{} images",
            spec.height, spec.width
        ));
    }
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| "the PNG is too large to decode".to_string())?;
    let mut buffer = vec![0u8; size];
    let frame = reader.next_frame(&mut buffer).map_err(bad)?;
    let channels = frame.color_type.samples();
    let scale = spec.max_value / 255.0;
    let mut pixels = Vec::with_capacity(spec.pixels());
    for row in buffer.chunks_exact(frame.line_size).take(height) {
        for px in row.chunks_exact(channels).take(width) {
            let grey = match frame.color_type {
                png::ColorType::Rgb | png::ColorType::Rgba => {
                    0.299 * f64::from(px[0]) + 0.587 * f64::from(px[1]) + 0.114 * f64::from(px[2])
                }
                _ => f64::from(px[0]),
            };
            pixels.push((grey * scale) as f32);
        }
    }
    spec.check(&pixels)?;
    Ok(pixels)
}

/// Encodes pixel values (in `0..=spec.max_value`) as an 8-bit greyscale PNG.
pub fn encode_png(pixels: &[f32], spec: &ImageSpec) -> Vec<u8> {
    let scale = 255.0 / spec.max_value;
    let bytes: Vec<u8> = pixels
        .iter()
        .map(|&p| (f64::from(p) * scale).round().clamp(0.0, 255.0) as u8)
        .collect();
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, spec.width as u32, spec.height as u32);
        encoder.set_color(png::ColorType::Grayscale);
        encoder.set_depth(png::BitDepth::Eight);
        // Writing into a Vec cannot fail, and the header matches the data by construction.
        let mut writer = encoder.write_header().expect("PNG header into memory");
        writer
            .write_image_data(&bytes)
            .expect("PNG data of the declared size");
    }
    out
}

/// [`encode_png`] as base64 text, what a JSON request or a CSV cell carries.
pub fn encode_png_base64(pixels: &[f32], spec: &ImageSpec) -> String {
    base64::engine::general_purpose::STANDARD.encode(encode_png(pixels, spec))
}

/// An image's mean intensity and contrast (standard deviation), both as shares of
/// `max_value` (0 black, 1 white): the monitor watches these two per image column.
pub fn intensity(pixels: &[f32], max_value: f64) -> (f64, f64) {
    let n = pixels.len().max(1) as f64;
    let mean = pixels.iter().map(|&p| f64::from(p)).sum::<f64>() / n;
    let var = pixels
        .iter()
        .map(|&p| (f64::from(p) - mean).powi(2))
        .sum::<f64>()
        / n;
    (mean / max_value, var.sqrt() / max_value)
}

/// The training split's intensity statistics of one image column, the monitor's reference.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageProfile {
    /// Mean intensity of each training image (capped like numeric samples).
    pub mean_intensity: Vec<f64>,
    /// Contrast of each training image, at the same rows.
    pub contrast: Vec<f64>,
}

/// Images read from an IDX file (`idx3-ubyte`, optionally gzipped).
#[derive(Clone, Debug, PartialEq)]
pub struct IdxImages {
    pub height: usize,
    pub width: usize,
    /// `count * height * width` bytes, image after image, row-major.
    pub pixels: Vec<u8>,
}

impl IdxImages {
    pub fn count(&self) -> usize {
        self.pixels.len() / (self.height * self.width).max(1)
    }
}

/// Most items an IDX file may declare: Fashion-MNIST has 70,000.
const MAX_IDX_ITEMS: usize = 10_000_000;

/// The bytes of an IDX file, gunzipped when they start with gzip's magic number.
fn idx_bytes(bytes: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>, String> {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(bytes)
            .read_to_end(&mut out)
            .map_err(|e| format!("the file looks gzipped but cannot be decompressed: {e}"))?;
        Ok(out.into())
    } else {
        Ok(bytes.into())
    }
}

/// Reads an IDX header of unsigned bytes with `dims` dimensions and returns them and the data.
fn idx_header(bytes: &[u8], dims: u8, what: &str) -> Result<(Vec<usize>, usize), String> {
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        return Err(format!("not an IDX file (expected {what})"));
    }
    if bytes[2] != 0x08 {
        return Err(format!(
            "the IDX file holds type 0x{:02x}; only unsigned bytes (0x08) are read",
            bytes[2]
        ));
    }
    if bytes[3] != dims {
        return Err(format!(
            "the IDX file has {} dimensions; {what} have {dims}",
            bytes[3]
        ));
    }
    let header = 4 + 4 * usize::from(dims);
    if bytes.len() < header {
        return Err("the IDX file ends inside its header".into());
    }
    let sizes: Vec<usize> = bytes[4..header]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let expected = sizes
        .iter()
        .try_fold(1usize, |acc, &s| acc.checked_mul(s))
        .filter(|&n| sizes[0] <= MAX_IDX_ITEMS && n <= bytes.len())
        .ok_or_else(|| format!("the IDX file declares {sizes:?} but holds fewer bytes"))?;
    if bytes.len() - header != expected {
        return Err(format!(
            "the IDX file declares {sizes:?} ({expected} bytes) but holds {}",
            bytes.len() - header
        ));
    }
    Ok((sizes, header))
}

/// Reads an `idx3-ubyte` image file (as Fashion-MNIST's `train-images-idx3-ubyte.gz`).
pub fn read_idx_images(bytes: &[u8]) -> Result<IdxImages, String> {
    let bytes = idx_bytes(bytes)?;
    let (sizes, header) = idx_header(&bytes, 3, "images")?;
    Ok(IdxImages {
        height: sizes[1],
        width: sizes[2],
        pixels: bytes[header..].to_vec(),
    })
}

/// Reads an `idx1-ubyte` label file (as Fashion-MNIST's `train-labels-idx1-ubyte.gz`).
pub fn read_idx_labels(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let bytes = idx_bytes(bytes)?;
    let (_, header) = idx_header(&bytes, 1, "labels")?;
    Ok(bytes[header..].to_vec())
}

/// Fashion-MNIST's class names, by label.
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// A CSV (`image,label`) of IDX images and labels, each image as space-separated pixels;
/// labels are named by `class_names` when given (label `i` is `class_names[i]`).
pub fn idx_to_csv(
    images: &IdxImages,
    labels: &[u8],
    class_names: Option<&[&str]>,
) -> Result<Vec<u8>, String> {
    if images.count() != labels.len() {
        return Err(format!(
            "the image file holds {} images but the label file {} labels",
            images.count(),
            labels.len()
        ));
    }
    let mut out = String::with_capacity(images.pixels.len() * 4 + 16);
    out.push_str("image,label\n");
    let size = images.height * images.width;
    for (image, &label) in images.pixels.chunks_exact(size.max(1)).zip(labels) {
        for (i, p) in image.iter().enumerate() {
            if i > 0 {
                out.push(' ');
            }
            out.push_str(&p.to_string());
        }
        out.push(',');
        match class_names {
            Some(names) => {
                let name = names.get(usize::from(label)).ok_or_else(|| {
                    format!("label {label} has no class name ({} given)", names.len())
                })?;
                // Names are quoted: "T-shirt/top" is plain, but others may hold commas.
                out.push('"');
                out.push_str(&name.replace('"', "\"\""));
                out.push('"');
            }
            None => out.push_str(&label.to_string()),
        }
        out.push('\n');
    }
    Ok(out.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ImageSpec {
        ImageSpec {
            height: 2,
            width: 3,
            max_value: 16.0,
        }
    }

    #[test]
    fn pixel_text_is_read_in_row_order_and_checked() {
        assert_eq!(
            parse_image_text(" 0 1 2\n3,4 16 ", &spec()).unwrap(),
            vec![0.0, 1.0, 2.0, 3.0, 4.0, 16.0]
        );
        let err = parse_image_text("0 1 2 3 4", &spec()).unwrap_err();
        assert!(
            err.contains("has 5 pixel values; this column takes 2x3 = 6"),
            "{err}"
        );
        let err = parse_image_text("0 1 2 3 4 5 6", &spec()).unwrap_err();
        assert!(err.contains("more than 6"), "{err}");
        let err = parse_image_text("0 1 2 3 4 17", &spec()).unwrap_err();
        assert!(err.contains("outside 0..=16"), "{err}");
        let err = parse_image_text("0 1 two 3 4 5", &spec()).unwrap_err();
        assert!(err.contains("'two' is not a pixel value"), "{err}");
    }

    #[test]
    fn json_images_are_flat_or_nested_arrays_or_strings() {
        let flat = serde_json::json!([0, 1, 2, 3, 4, 5]);
        let nested = serde_json::json!([[0, 1, 2], [3, 4, 5]]);
        let want = vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(pixels_from_json(&flat, &spec()).unwrap(), want);
        assert_eq!(pixels_from_json(&nested, &spec()).unwrap(), want);
        assert_eq!(
            pixels_from_json(&serde_json::json!("0 1 2 3 4 5"), &spec()).unwrap(),
            want
        );
        let err = pixels_from_json(&serde_json::json!([[0, 1], [3, 4]]), &spec()).unwrap_err();
        assert!(err.contains("row 1 of the image has 2 pixels"), "{err}");
        let err = pixels_from_json(&serde_json::json!([[0, 1, 2]]), &spec()).unwrap_err();
        assert!(err.contains("has 1 rows"), "{err}");
        let err = pixels_from_json(&serde_json::json!([0, 1, "x", 3, 4, 5]), &spec()).unwrap_err();
        assert!(err.contains("must be numbers"), "{err}");
        let err = pixels_from_json(&serde_json::json!({"a": 1}), &spec()).unwrap_err();
        assert!(
            err.contains("array of pixel values or a base64 PNG"),
            "{err}"
        );
    }

    #[test]
    fn a_png_round_trips_to_the_pixels_it_was_drawn_from() {
        let spec = ImageSpec {
            height: 2,
            width: 3,
            max_value: 255.0,
        };
        let pixels = vec![0.0, 17.0, 128.0, 200.0, 254.0, 255.0];
        let b64 = encode_png_base64(&pixels, &spec);
        assert!(is_base64_png(&b64), "{b64}");
        assert_eq!(parse_image_text(&b64, &spec).unwrap(), pixels);
        let url = format!("data:image/png;base64,{b64}");
        assert_eq!(
            pixels_from_json(&serde_json::Value::String(url), &spec).unwrap(),
            pixels
        );
        // A 0..16 column reads the same PNG rescaled to its own range.
        let digits = ImageSpec {
            max_value: 16.0,
            ..spec
        };
        let scaled = parse_image_text(&b64, &digits).unwrap();
        assert!(
            (scaled[2] - 128.0 * 16.0 / 255.0).abs() < 1e-5,
            "{scaled:?}"
        );
        // The wrong size and broken data are refused by name.
        let other = ImageSpec {
            height: 3,
            width: 2,
            max_value: 255.0,
        };
        let err = parse_image_text(&b64, &other).unwrap_err();
        assert!(err.contains("the PNG is 2x3"), "{err}");
        let err = parse_image_text("iVBORw0KGgo!!!", &spec).unwrap_err();
        assert!(err.contains("not valid base64"), "{err}");
        let err = parse_image_text("iVBORw0KGgoAAAAA", &spec).unwrap_err();
        assert!(err.contains("not a readable PNG"), "{err}");
    }

    #[test]
    fn colour_pngs_are_read_as_luma() {
        let mut out = Vec::new();
        {
            let mut encoder = png::Encoder::new(&mut out, 2, 1);
            encoder.set_color(png::ColorType::Rgb);
            encoder.set_depth(png::BitDepth::Eight);
            let mut writer = encoder.write_header().unwrap();
            writer
                .write_image_data(&[255, 0, 0, 255, 255, 255])
                .unwrap();
        }
        let spec = ImageSpec {
            height: 1,
            width: 2,
            max_value: 255.0,
        };
        let pixels = decode_png(&out, &spec).unwrap();
        assert!((pixels[0] - 0.299 * 255.0).abs() < 1e-3, "{pixels:?}");
        assert!((pixels[1] - 255.0).abs() < 1e-3, "{pixels:?}");
    }

    #[test]
    fn intensity_is_a_share_of_the_range() {
        let (mean, contrast) = intensity(&[0.0, 16.0, 0.0, 16.0], 16.0);
        assert_eq!((mean, contrast), (0.5, 0.5));
    }

    fn idx(magic_dims: u8, sizes: &[u32], data: &[u8]) -> Vec<u8> {
        let mut out = vec![0, 0, 0x08, magic_dims];
        for s in sizes {
            out.extend_from_slice(&s.to_be_bytes());
        }
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn idx_files_are_read_plain_or_gzipped_and_checked() {
        let pixels: Vec<u8> = (0..12).collect();
        let images = idx(3, &[2, 2, 3], &pixels);
        let labels = idx(1, &[2], &[1, 0]);
        let read = read_idx_images(&images).unwrap();
        assert_eq!((read.count(), read.height, read.width), (2, 2, 3));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &images).unwrap();
        assert_eq!(read_idx_images(&gz.finish().unwrap()).unwrap(), read);
        let labels = read_idx_labels(&labels).unwrap();
        let csv = String::from_utf8(idx_to_csv(&read, &labels, None).unwrap()).unwrap();
        assert_eq!(csv, "image,label\n0 1 2 3 4 5,1\n6 7 8 9 10 11,0\n");
        let named = idx_to_csv(&read, &labels, Some(&FASHION_MNIST_CLASSES)).unwrap();
        assert!(
            String::from_utf8(named)
                .unwrap()
                .ends_with(",\"T-shirt/top\"\n")
        );

        let err = read_idx_images(&idx(3, &[3, 2, 3], &pixels)).unwrap_err();
        assert!(
            err.contains("holds fewer bytes") || err.contains("declares"),
            "{err}"
        );
        let err = read_idx_images(&idx(1, &[2], &[1, 0])).unwrap_err();
        assert!(err.contains("1 dimensions; images have 3"), "{err}");
        let err = read_idx_labels(b"hello").unwrap_err();
        assert!(err.contains("not an IDX file"), "{err}");
        let err = idx_to_csv(&read, &[1], None).unwrap_err();
        assert!(
            err.contains("2 images but the label file 1 labels"),
            "{err}"
        );
    }
}
