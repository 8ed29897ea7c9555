//! Puts several screenshots side by side in one PNG, so one artefact shows every tab of a test.

use std::io::Cursor;

use crate::error::BrowserError;

/// Width of the separator between two screenshots, in pixels.
const GAP: u32 = 8;

/// The separator colour (opaque mid grey), RGBA.
const GAP_RGBA: [u8; 4] = [128, 128, 128, 255];

/// A decoded image as 8-bit RGBA rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rgba {
    pub(crate) width: u32,
    pub(crate) height: u32,
    pub(crate) pixels: Vec<u8>,
}

/// Decodes a PNG of any colour type and bit depth into 8-bit RGBA.
pub(crate) fn decode(png_bytes: &[u8]) -> Result<Rgba, BrowserError> {
    let bad = |e: png::DecodingError| BrowserError::Image(format!("cannot decode PNG: {e}"));
    let mut decoder = png::Decoder::new(Cursor::new(png_bytes));
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().map_err(bad)?;
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| BrowserError::Image("PNG too large to decode".into()))?;
    let mut buf = vec![0; size];
    let info = reader.next_frame(&mut buf).map_err(bad)?;
    buf.truncate(info.buffer_size());
    let pixels = match info.color_type {
        png::ColorType::Rgba => buf,
        png::ColorType::Rgb => buf
            .chunks_exact(3)
            .flat_map(|p| [p[0], p[1], p[2], 255])
            .collect(),
        png::ColorType::Grayscale => buf.iter().flat_map(|&g| [g, g, g, 255]).collect(),
        png::ColorType::GrayscaleAlpha => buf
            .chunks_exact(2)
            .flat_map(|p| [p[0], p[0], p[0], p[1]])
            .collect(),
        png::ColorType::Indexed => {
            return Err(BrowserError::Image("indexed PNG was not expanded".into()));
        }
    };
    Ok(Rgba {
        width: info.width,
        height: info.height,
        pixels,
    })
}

/// Encodes 8-bit RGBA as a PNG.
pub(crate) fn encode(image: &Rgba) -> Result<Vec<u8>, BrowserError> {
    let bad = |e: png::EncodingError| BrowserError::Image(format!("cannot encode PNG: {e}"));
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, image.width, image.height);
    encoder.set_color(png::ColorType::Rgba);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(bad)?;
    writer.write_image_data(&image.pixels).map_err(bad)?;
    writer.finish().map_err(bad)?;
    Ok(out)
}

/// Places images left to right, top-aligned, separated by a grey bar; the area below a shorter
/// image stays transparent.
pub(crate) fn side_by_side(images: &[Rgba]) -> Rgba {
    let gaps = u32::try_from(images.len().saturating_sub(1)).unwrap_or(u32::MAX);
    let width = images.iter().map(|i| i.width).sum::<u32>() + gaps * GAP;
    let height = images.iter().map(|i| i.height).max().unwrap_or(0);
    let stride = width as usize * 4;
    let mut pixels = vec![0u8; stride * height as usize];
    let mut left = 0usize;
    for (n, image) in images.iter().enumerate() {
        if n > 0 {
            for row in 0..height as usize {
                for x in left..left + GAP as usize {
                    pixels[row * stride + x * 4..][..4].copy_from_slice(&GAP_RGBA);
                }
            }
            left += GAP as usize;
        }
        let row_bytes = image.width as usize * 4;
        for row in 0..image.height as usize {
            let src = &image.pixels[row * row_bytes..][..row_bytes];
            pixels[row * stride + left * 4..][..row_bytes].copy_from_slice(src);
        }
        left += image.width as usize;
    }
    Rgba {
        width,
        height,
        pixels,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn solid(width: u32, height: u32, rgba: [u8; 4]) -> Rgba {
        Rgba {
            width,
            height,
            pixels: rgba.repeat((width * height) as usize),
        }
    }

    fn pixel(image: &Rgba, x: u32, y: u32) -> [u8; 4] {
        let at = ((y * image.width + x) * 4) as usize;
        image.pixels[at..at + 4].try_into().expect("four bytes")
    }

    #[test]
    fn encode_then_decode_round_trips() {
        let image = solid(3, 2, [10, 20, 30, 255]);
        let decoded = decode(&encode(&image).expect("encode")).expect("decode");
        assert_eq!(decoded, image);
    }

    #[test]
    fn rgb_pngs_decode_to_opaque_rgba() {
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, 2, 1);
        encoder.set_color(png::ColorType::Rgb);
        let mut writer = encoder.write_header().expect("header");
        writer.write_image_data(&[1, 2, 3, 4, 5, 6]).expect("data");
        writer.finish().expect("finish");
        let decoded = decode(&out).expect("decode");
        assert_eq!(decoded.pixels, vec![1, 2, 3, 255, 4, 5, 6, 255]);
    }

    #[test]
    fn side_by_side_places_images_left_to_right_with_a_gap() {
        let red = solid(2, 3, [255, 0, 0, 255]);
        let blue = solid(4, 1, [0, 0, 255, 255]);
        let joined = side_by_side(&[red, blue]);
        assert_eq!((joined.width, joined.height), (2 + GAP + 4, 3));
        assert_eq!(pixel(&joined, 1, 2), [255, 0, 0, 255]);
        assert_eq!(pixel(&joined, 2, 0), GAP_RGBA);
        assert_eq!(pixel(&joined, 2 + GAP, 0), [0, 0, 255, 255]);
        // Below the shorter image nothing was drawn.
        assert_eq!(pixel(&joined, 2 + GAP, 1), [0, 0, 0, 0]);
    }

    #[test]
    fn garbage_is_an_image_error() {
        assert!(matches!(decode(b"not a png"), Err(BrowserError::Image(_))));
    }
}
