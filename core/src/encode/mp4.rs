//! A minimal MP4 (ISO BMFF) muxer for one H.264 video track, `moov` first ("fast start"), so a player can begin
//! before the whole file has arrived.
//!
//! Samples are length-prefixed NAL units (AVCC); SPS and PPS go in the `avcC` box. All samples sit in one chunk
//! of one `mdat`, which is written after `moov` once every sample's size is known. The compressed samples are held
//! in memory until then: H.264 at these bitrates is a small fraction of the raw frames.

use std::io::Write;

/// An MP4 being assembled.
pub struct Mp4Muxer {
    width: u16,
    height: u16,
    timescale: u32,
    sample_delta: u32,
    sps: Option<Vec<u8>>,
    pps: Option<Vec<u8>>,
    data: Vec<u8>,
    sizes: Vec<u32>,
    sync: Vec<u32>,
}

/// Appends a box: 32-bit size, 4-byte type, then what `body` writes.
fn boxed(out: &mut Vec<u8>, kind: &[u8; 4], body: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(kind);
    body(out);
    let size = (out.len() - start) as u32;
    out[start..start + 4].copy_from_slice(&size.to_be_bytes());
}

fn full_box(out: &mut Vec<u8>, kind: &[u8; 4], version: u8, flags: u32, body: impl FnOnce(&mut Vec<u8>)) {
    boxed(out, kind, |o| {
        o.extend_from_slice(&((version as u32) << 24 | flags).to_be_bytes());
        body(o);
    });
}

fn u16be(o: &mut Vec<u8>, v: u16) {
    o.extend_from_slice(&v.to_be_bytes());
}
fn u32be(o: &mut Vec<u8>, v: u32) {
    o.extend_from_slice(&v.to_be_bytes());
}

/// The unity transformation matrix of `mvhd` and `tkhd`.
fn matrix(o: &mut Vec<u8>) {
    for v in [0x0001_0000u32, 0, 0, 0, 0x0001_0000, 0, 0, 0, 0x4000_0000] {
        u32be(o, v);
    }
}

impl Mp4Muxer {
    /// `fps` may be fractional: the media timescale is fps·1000 with one sample every 1000 ticks.
    pub fn new(width: u16, height: u16, fps: f64) -> Self {
        Self {
            width,
            height,
            timescale: (fps * 1000.0).round().max(1.0) as u32,
            sample_delta: 1000,
            sps: None,
            pps: None,
            data: Vec::new(),
            sizes: Vec::new(),
            sync: Vec::new(),
        }
    }

    /// Adds one frame given as NAL units (Annex B start codes stripped). SPS and PPS are kept for `avcC`.
    pub fn add_frame<'a>(&mut self, nals: impl IntoIterator<Item = &'a [u8]>) {
        let start = self.data.len();
        let mut keyframe = false;
        for nal in nals {
            match nal.first().map(|b| b & 0x1f) {
                Some(7) => self.sps = Some(nal.to_vec()),
                Some(8) => self.pps = Some(nal.to_vec()),
                Some(t) => {
                    keyframe |= t == 5;
                    self.data.extend_from_slice(&(nal.len() as u32).to_be_bytes());
                    self.data.extend_from_slice(nal);
                }
                None => {}
            }
        }
        self.sizes.push((self.data.len() - start) as u32);
        if keyframe {
            self.sync.push(self.sizes.len() as u32);
        }
    }

    pub fn frame_count(&self) -> usize {
        self.sizes.len()
    }

    /// Writes the file: `ftyp`, `moov`, `mdat`.
    pub fn write(&self, out: &mut impl Write) -> std::io::Result<()> {
        let (Some(sps), Some(pps)) = (&self.sps, &self.pps) else {
            return Err(std::io::Error::other("the H.264 stream has no SPS/PPS"));
        };
        let mut head = Vec::new();
        boxed(&mut head, b"ftyp", |o| {
            o.extend_from_slice(b"isom");
            u32be(o, 0x200);
            for brand in [b"isom", b"iso2", b"avc1", b"mp41"] {
                o.extend_from_slice(brand);
            }
        });
        // moov holds the offset of mdat's data, which depends on moov's own size: build it once to measure.
        let moov_len = self.moov(0, sps, pps).len();
        let data_offset = (head.len() + moov_len + 8) as u32;
        head.extend_from_slice(&self.moov(data_offset, sps, pps));
        out.write_all(&head)?;
        out.write_all(&((self.data.len() + 8) as u32).to_be_bytes())?;
        out.write_all(b"mdat")?;
        out.write_all(&self.data)
    }

    fn moov(&self, data_offset: u32, sps: &[u8], pps: &[u8]) -> Vec<u8> {
        let n = self.sizes.len() as u32;
        let media_duration = n * self.sample_delta;
        let movie_duration = (media_duration as u64 * 1000 / self.timescale as u64) as u32;
        let (w, h) = (self.width, self.height);
        let mut o = Vec::new();
        boxed(&mut o, b"moov", |o| {
            full_box(o, b"mvhd", 0, 0, |o| {
                u32be(o, 0);
                u32be(o, 0);
                u32be(o, 1000);
                u32be(o, movie_duration);
                u32be(o, 0x0001_0000); // rate 1.0
                u16be(o, 0x0100); // volume 1.0
                o.extend_from_slice(&[0; 10]);
                matrix(o);
                o.extend_from_slice(&[0; 24]);
                u32be(o, 2); // next track id
            });
            boxed(o, b"trak", |o| {
                full_box(o, b"tkhd", 0, 3, |o| {
                    u32be(o, 0);
                    u32be(o, 0);
                    u32be(o, 1); // track id
                    u32be(o, 0);
                    u32be(o, movie_duration);
                    o.extend_from_slice(&[0; 8]);
                    u16be(o, 0); // layer
                    u16be(o, 0); // alternate group
                    u16be(o, 0); // volume: video
                    u16be(o, 0);
                    matrix(o);
                    u32be(o, (w as u32) << 16);
                    u32be(o, (h as u32) << 16);
                });
                boxed(o, b"mdia", |o| {
                    full_box(o, b"mdhd", 0, 0, |o| {
                        u32be(o, 0);
                        u32be(o, 0);
                        u32be(o, self.timescale);
                        u32be(o, media_duration);
                        u16be(o, 0x55c4); // language "und"
                        u16be(o, 0);
                    });
                    full_box(o, b"hdlr", 0, 0, |o| {
                        u32be(o, 0);
                        o.extend_from_slice(b"vide");
                        o.extend_from_slice(&[0; 12]);
                        o.extend_from_slice(b"vgen video\0");
                    });
                    boxed(o, b"minf", |o| {
                        full_box(o, b"vmhd", 0, 1, |o| o.extend_from_slice(&[0; 8]));
                        boxed(o, b"dinf", |o| {
                            full_box(o, b"dref", 0, 0, |o| {
                                u32be(o, 1);
                                full_box(o, b"url ", 0, 1, |_| {});
                            });
                        });
                        boxed(o, b"stbl", |o| self.stbl(o, data_offset, sps, pps));
                    });
                });
            });
        });
        o
    }

    fn stbl(&self, o: &mut Vec<u8>, data_offset: u32, sps: &[u8], pps: &[u8]) {
        let n = self.sizes.len() as u32;
        full_box(o, b"stsd", 0, 0, |o| {
            u32be(o, 1);
            boxed(o, b"avc1", |o| {
                o.extend_from_slice(&[0; 6]);
                u16be(o, 1); // data reference index
                o.extend_from_slice(&[0; 16]);
                u16be(o, self.width);
                u16be(o, self.height);
                u32be(o, 0x0048_0000); // 72 dpi
                u32be(o, 0x0048_0000);
                u32be(o, 0);
                u16be(o, 1); // frames per sample
                let mut name = [0u8; 32];
                name[0] = 4;
                name[1..5].copy_from_slice(b"vgen");
                o.extend_from_slice(&name);
                u16be(o, 0x18); // depth
                u16be(o, 0xffff); // pre-defined −1
                boxed(o, b"avcC", |o| {
                    o.extend_from_slice(&[
                        1,
                        sps.get(1).copied().unwrap_or(66),
                        sps.get(2).copied().unwrap_or(0),
                        sps.get(3).copied().unwrap_or(30),
                    ]);
                    o.push(0xff); // 4-byte NAL lengths
                    o.push(0xe1); // one SPS
                    u16be(o, sps.len() as u16);
                    o.extend_from_slice(sps);
                    o.push(1); // one PPS
                    u16be(o, pps.len() as u16);
                    o.extend_from_slice(pps);
                });
            });
        });
        full_box(o, b"stts", 0, 0, |o| {
            u32be(o, 1);
            u32be(o, n);
            u32be(o, self.sample_delta);
        });
        full_box(o, b"stss", 0, 0, |o| {
            u32be(o, self.sync.len() as u32);
            for s in &self.sync {
                u32be(o, *s);
            }
        });
        full_box(o, b"stsc", 0, 0, |o| {
            u32be(o, 1);
            u32be(o, 1);
            u32be(o, n);
            u32be(o, 1);
        });
        full_box(o, b"stsz", 0, 0, |o| {
            u32be(o, 0);
            u32be(o, n);
            for s in &self.sizes {
                u32be(o, *s);
            }
        });
        full_box(o, b"stco", 0, 0, |o| {
            u32be(o, 1);
            u32be(o, data_offset);
        });
    }
}
