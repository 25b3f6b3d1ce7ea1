//! A finished video's thumbnail and spritesheet (the OpenAI door's `download_content` variants), drawn from the
//! lossless animated PNG its job wrote beside the MP4: the thumbnail is the first frame; the spritesheet is up to
//! 16 frames taken evenly across the video, left to right and top to bottom in a near-square grid. Both are PNGs.

/// The most frames a spritesheet shows.
const MAX_TILES: usize = 16;

/// The PNG for `apng`'s thumbnail, or its spritesheet when `sheet`.
pub fn render(apng: &[u8], sheet: bool) -> Result<Vec<u8>, String> {
    let (width, height, frames) = frames(apng)?;
    let (w, h) = (width as usize, height as usize);
    let picked: Vec<&Vec<u8>> = if sheet {
        let n = frames.len().min(MAX_TILES);
        (0..n).map(|i| &frames[i * (frames.len() - 1) / (n - 1).max(1)]).collect()
    } else {
        vec![&frames[0]]
    };
    let columns = (picked.len() as f64).sqrt().ceil() as usize;
    let rows = picked.len().div_ceil(columns);
    let (sw, sh) = (w * columns, h * rows);
    let mut out = vec![0u8; sw * sh * 3];
    for (i, frame) in picked.iter().enumerate() {
        let (x0, y0) = ((i % columns) * w, (i / columns) * h);
        for y in 0..h {
            let to = ((y0 + y) * sw + x0) * 3;
            out[to..to + w * 3].copy_from_slice(&frame[y * w * 3..(y + 1) * w * 3]);
        }
    }
    let mut png = Vec::new();
    let mut e = png::Encoder::new(&mut png, sw as u32, sh as u32);
    e.set_color(png::ColorType::Rgb);
    e.set_depth(png::BitDepth::Eight);
    e.write_header().and_then(|mut w| w.write_image_data(&out)).map_err(|e| e.to_string())?;
    Ok(png)
}

/// Every frame of an animated PNG as RGB8, with its size. vgen writes every frame whole (no sub-rectangles).
fn frames(apng: &[u8]) -> Result<(u32, u32, Vec<Vec<u8>>), String> {
    let mut decoder = png::Decoder::new(std::io::Cursor::new(apng));
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().map_err(|e| format!("the video's frames: {e}"))?;
    let (width, height) = (reader.info().width, reader.info().height);
    let count = reader.info().animation_control().map_or(1, |a| a.num_frames as usize);
    let mut out = Vec::with_capacity(count);
    let mut buf = vec![0; reader.output_buffer_size().ok_or("the video's frames are too large")?];
    for _ in 0..count {
        let frame = reader.next_frame(&mut buf).map_err(|e| format!("the video's frames: {e}"))?;
        if (frame.width, frame.height) != (width, height) {
            return Err(format!("a frame of {}x{} in a {width}x{height} video", frame.width, frame.height));
        }
        let channels = frame.color_type.samples();
        let rgb: Vec<u8> = buf[..frame.buffer_size()]
            .chunks(channels)
            .flat_map(|px| if channels < 3 { [px[0], px[0], px[0]] } else { [px[0], px[1], px[2]] })
            .collect();
        out.push(rgb);
    }
    if out.is_empty() {
        return Err("the video has no frames".into());
    }
    Ok((width, height, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An animated PNG of `n` 4x2 frames, frame i all grey level 10·i.
    fn apng(n: u32) -> Vec<u8> {
        let mut out = Vec::new();
        let mut e = png::Encoder::new(&mut out, 4, 2);
        e.set_color(png::ColorType::Rgb);
        e.set_animated(n, 0).unwrap();
        let mut w = e.write_header().unwrap();
        for i in 0..n {
            w.write_image_data(&[(10 * i) as u8; 4 * 2 * 3]).unwrap();
        }
        w.finish().unwrap();
        out
    }

    fn decode(png: &[u8]) -> (u32, u32, Vec<u8>) {
        let mut r = png::Decoder::new(std::io::Cursor::new(png)).read_info().unwrap();
        let mut buf = vec![0; r.output_buffer_size().unwrap()];
        let f = r.next_frame(&mut buf).unwrap();
        (f.width, f.height, buf[..f.buffer_size()].to_vec())
    }

    #[test]
    fn the_thumbnail_is_the_first_frame_and_the_sheet_a_grid_of_frames_in_order() {
        let (w, h, px) = decode(&render(&apng(5), false).unwrap());
        assert_eq!((w, h), (4, 2));
        assert!(px.iter().all(|&v| v == 0));
        // 5 frames: a 3-column grid of 2 rows, tiles in order, the last row's empty tile black.
        let (w, h, px) = decode(&render(&apng(5), true).unwrap());
        assert_eq!((w, h), (12, 4));
        let tile = |c: usize, r: usize| px[((r * 2) * 12 + c * 4) * 3];
        assert_eq!([tile(0, 0), tile(1, 0), tile(2, 0), tile(0, 1), tile(1, 1)], [0, 10, 20, 30, 40]);
        // Many frames: 16 tiles, first and last included.
        let (w, h, px) = decode(&render(&apng(40), true).unwrap());
        assert_eq!((w, h), (16, 8));
        assert_eq!((px[0], px[(6 * 16 + 12) * 3]), (0, (10 * 39) as u8), "the first frame and the last (tile 16)");
        assert!(render(b"not a png", true).is_err());
    }
}
