//! Audio and video codecs: Opus (the `opus` crate over bundled libopus) and VP8 (libvpx).
//!
//! Audio is 48 kHz mono in 20 ms frames ([`AUDIO_FRAME_SAMPLES`] samples). Video frames are
//! planar I420 ([`I420Frame`]).
//!
//! VP8 binding choice: `env-libvpx-sys` (maintained, MPL-2.0) links the system libvpx found by
//! pkg-config (Debian: `libvpx-dev`) and ships pre-generated bindings for libvpx 1.3-1.13, so
//! no bindgen/clang at build time. The few `unsafe` FFI calls live in [`vp8`] only.

use crate::CodecError;

/// Audio sample rate (Hz).
pub const AUDIO_SAMPLE_RATE: u32 = 48_000;
/// Samples per 20 ms mono frame.
pub const AUDIO_FRAME_SAMPLES: usize = 960;
/// Audio frame duration.
pub const AUDIO_FRAME_DURATION: std::time::Duration = std::time::Duration::from_millis(20);
/// Largest Opus packet we produce or accept (RFC 6716 allows up to 1275 bytes per frame).
pub const MAX_OPUS_PACKET: usize = 1500;
/// Largest video dimension accepted anywhere (sources, decoders).
pub const MAX_VIDEO_DIMENSION: u32 = 4096;

/// Opus encoder: 48 kHz, mono, VoIP application, 20 ms frames.
pub struct OpusEncoder {
    inner: opus::Encoder,
}

impl OpusEncoder {
    /// A new encoder at `bitrate` bits per second (e.g. 32000).
    pub fn new(bitrate: i32) -> Result<Self, CodecError> {
        let mut inner = opus::Encoder::new(
            AUDIO_SAMPLE_RATE,
            opus::Channels::Mono,
            opus::Application::Voip,
        )
        .map_err(|e| CodecError::Opus(e.to_string()))?;
        inner
            .set_bitrate(opus::Bitrate::Bits(bitrate))
            .map_err(|e| CodecError::Opus(e.to_string()))?;
        Ok(Self { inner })
    }

    /// Encodes one 20 ms frame of 960 samples into one Opus packet.
    pub fn encode(&mut self, pcm: &[i16]) -> Result<Vec<u8>, CodecError> {
        if pcm.len() != AUDIO_FRAME_SAMPLES {
            return Err(CodecError::BadFrame);
        }
        self.inner
            .encode_vec(pcm, MAX_OPUS_PACKET)
            .map_err(|e| CodecError::Opus(e.to_string()))
    }
}

/// Opus decoder: 48 kHz mono.
pub struct OpusDecoder {
    inner: opus::Decoder,
    pcm: Vec<i16>,
}

impl OpusDecoder {
    /// A new decoder.
    pub fn new() -> Result<Self, CodecError> {
        let inner = opus::Decoder::new(AUDIO_SAMPLE_RATE, opus::Channels::Mono)
            .map_err(|e| CodecError::Opus(e.to_string()))?;
        // 120 ms is the longest Opus packet duration.
        Ok(Self {
            inner,
            pcm: vec![0; AUDIO_FRAME_SAMPLES * 6],
        })
    }

    /// Decodes one packet into PCM samples (960 for a 20 ms packet).
    pub fn decode(&mut self, packet: &[u8]) -> Result<&[i16], CodecError> {
        if packet.len() > MAX_OPUS_PACKET {
            return Err(CodecError::BadFrame);
        }
        let n = self
            .inner
            .decode(packet, &mut self.pcm, false)
            .map_err(|e| CodecError::Opus(e.to_string()))?;
        self.pcm.get(..n).ok_or(CodecError::BadFrame)
    }

    /// Produces concealment audio for one lost 20 ms frame.
    pub fn conceal(&mut self) -> Result<&[i16], CodecError> {
        let buf = self
            .pcm
            .get_mut(..AUDIO_FRAME_SAMPLES)
            .ok_or(CodecError::BadFrame)?;
        let n = self
            .inner
            .decode(&[], buf, false)
            .map_err(|e| CodecError::Opus(e.to_string()))?;
        self.pcm.get(..n).ok_or(CodecError::BadFrame)
    }
}

/// One planar I420 (YUV 4:2:0) picture with even dimensions.
#[derive(Clone, PartialEq, Eq)]
pub struct I420Frame {
    /// Width in pixels (even).
    pub width: u32,
    /// Height in pixels (even).
    pub height: u32,
    /// Luma plane, `width * height` bytes.
    pub y: Vec<u8>,
    /// Cb plane, `width/2 * height/2` bytes.
    pub u: Vec<u8>,
    /// Cr plane, `width/2 * height/2` bytes.
    pub v: Vec<u8>,
}

impl std::fmt::Debug for I420Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "I420Frame({}x{})", self.width, self.height)
    }
}

impl I420Frame {
    /// A black frame; dimensions must be even and at most [`MAX_VIDEO_DIMENSION`].
    pub fn new(width: u32, height: u32) -> Result<Self, CodecError> {
        if width == 0
            || height == 0
            || !width.is_multiple_of(2)
            || !height.is_multiple_of(2)
            || width > MAX_VIDEO_DIMENSION
            || height > MAX_VIDEO_DIMENSION
        {
            return Err(CodecError::BadDimensions);
        }
        let luma = (width * height) as usize;
        Ok(Self {
            width,
            height,
            y: vec![16; luma],
            u: vec![128; luma / 4],
            v: vec![128; luma / 4],
        })
    }

    /// Luma at `(x, y)`, or 0 outside the picture.
    pub fn luma(&self, x: u32, y: u32) -> u8 {
        if x >= self.width || y >= self.height {
            return 0;
        }
        self.y
            .get((y * self.width + x) as usize)
            .copied()
            .unwrap_or(0)
    }

    /// `(Y, U, V)` at `(x, y)`, or zeros outside the picture.
    pub fn yuv(&self, x: u32, y: u32) -> (u8, u8, u8) {
        if x >= self.width || y >= self.height {
            return (0, 0, 0);
        }
        let c = ((y / 2) * (self.width / 2) + x / 2) as usize;
        (
            self.luma(x, y),
            self.u.get(c).copied().unwrap_or(0),
            self.v.get(c).copied().unwrap_or(0),
        )
    }

    /// Converts to packed 8-bit RGB (BT.601 limited range), for PPM output.
    pub fn to_rgb(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity((self.width * self.height * 3) as usize);
        for yy in 0..self.height {
            for xx in 0..self.width {
                let (y, u, v) = self.yuv(xx, yy);
                let c = f32::from(y) - 16.0;
                let d = f32::from(u) - 128.0;
                let e = f32::from(v) - 128.0;
                let r = 1.164 * c + 1.596 * e;
                let g = 1.164 * c - 0.392 * d - 0.813 * e;
                let b = 1.164 * c + 2.017 * d;
                out.push(r.clamp(0.0, 255.0) as u8);
                out.push(g.clamp(0.0, 255.0) as u8);
                out.push(b.clamp(0.0, 255.0) as u8);
            }
        }
        out
    }
}

/// An encoded VP8 frame.
#[derive(Debug, Clone)]
pub struct EncodedVideoFrame {
    /// The VP8 bitstream of one frame.
    pub data: Vec<u8>,
    /// Whether it is a key frame.
    pub keyframe: bool,
}

pub use vp8::{Vp8Decoder, Vp8Encoder};

/// VP8 over libvpx (FFI).
#[allow(unsafe_code)]
pub mod vp8 {
    use std::mem::MaybeUninit;
    use std::os::raw::{c_int, c_ulong};
    use std::ptr;

    use vpx_sys as ffi;

    use super::{EncodedVideoFrame, I420Frame, MAX_VIDEO_DIMENSION};
    use crate::CodecError;

    /// Largest encoded VP8 frame accepted by the decoder.
    pub const MAX_ENCODED_FRAME: usize = 1 << 20;

    /// A realtime VP8 encoder.
    pub struct Vp8Encoder {
        ctx: Box<ffi::vpx_codec_ctx_t>,
        width: u32,
        height: u32,
        pts: i64,
    }

    // SAFETY: the libvpx context is only touched through `&mut self`; libvpx contexts may be
    // used from any thread as long as calls are not concurrent.
    unsafe impl Send for Vp8Encoder {}

    impl Vp8Encoder {
        /// A new encoder for `width`x`height` at `fps`, `bitrate_kbps` target, realtime speed,
        /// with a key frame at least every second.
        pub fn new(
            width: u32,
            height: u32,
            fps: u32,
            bitrate_kbps: u32,
        ) -> Result<Self, CodecError> {
            Self::with_keyframe_interval(width, height, fps, bitrate_kbps, fps)
        }

        /// Like [`Vp8Encoder::new`] with a key frame at least every `keyframe_interval` frames.
        pub fn with_keyframe_interval(
            width: u32,
            height: u32,
            fps: u32,
            bitrate_kbps: u32,
            keyframe_interval: u32,
        ) -> Result<Self, CodecError> {
            if width == 0
                || height == 0
                || width > MAX_VIDEO_DIMENSION
                || height > MAX_VIDEO_DIMENSION
            {
                return Err(CodecError::BadDimensions);
            }
            let fps = fps.clamp(1, 120);
            // SAFETY: vpx_codec_vp8_cx returns a static interface pointer; the config struct
            // is plain data fully initialised by vpx_codec_enc_config_default on success.
            unsafe {
                let iface = ffi::vpx_codec_vp8_cx();
                let mut cfg = MaybeUninit::<ffi::vpx_codec_enc_cfg_t>::zeroed();
                check(ffi::vpx_codec_enc_config_default(
                    iface,
                    cfg.as_mut_ptr(),
                    0,
                ))?;
                let mut cfg = cfg.assume_init();
                cfg.g_w = width;
                cfg.g_h = height;
                cfg.g_timebase = ffi::vpx_rational {
                    num: 1,
                    den: fps as c_int,
                };
                cfg.rc_target_bitrate = bitrate_kbps;
                cfg.g_threads = 1;
                cfg.g_lag_in_frames = 0;
                cfg.g_error_resilient = 1;
                cfg.rc_end_usage = ffi::vpx_rc_mode::VPX_CBR;
                cfg.kf_mode = ffi::vpx_kf_mode::VPX_KF_AUTO;
                cfg.kf_max_dist = keyframe_interval.max(1);
                let mut ctx = Box::new(MaybeUninit::<ffi::vpx_codec_ctx_t>::zeroed().assume_init());
                check(ffi::vpx_codec_enc_init_ver(
                    &mut *ctx,
                    iface,
                    &cfg,
                    0,
                    ffi::VPX_ENCODER_ABI_VERSION as c_int,
                ))?;
                // Fastest realtime speed; failure only costs CPU, so it is ignored.
                let _ = ffi::vpx_codec_control_(
                    &mut *ctx,
                    ffi::vp8e_enc_control_id::VP8E_SET_CPUUSED as c_int,
                    8 as c_int,
                );
                Ok(Self {
                    ctx,
                    width,
                    height,
                    pts: 0,
                })
            }
        }

        /// Encodes one frame (must match the encoder's dimensions).
        pub fn encode(
            &mut self,
            frame: &I420Frame,
            force_keyframe: bool,
        ) -> Result<Vec<EncodedVideoFrame>, CodecError> {
            if frame.width != self.width || frame.height != self.height {
                return Err(CodecError::BadDimensions);
            }
            let luma = (frame.width * frame.height) as usize;
            if frame.y.len() != luma || frame.u.len() != luma / 4 || frame.v.len() != luma / 4 {
                return Err(CodecError::BadFrame);
            }
            let mut out = Vec::new();
            // SAFETY: the image struct only borrows the frame's planes for the duration of the
            // vpx_codec_encode call (libvpx copies input frames when lag_in_frames = 0); the
            // strides match the plane sizes checked above. Packets returned by
            // vpx_codec_get_cx_data stay valid until the next encode call; we copy them.
            unsafe {
                let mut img = MaybeUninit::<ffi::vpx_image_t>::zeroed().assume_init();
                img.fmt = ffi::vpx_img_fmt::VPX_IMG_FMT_I420;
                img.w = frame.width;
                img.h = frame.height;
                img.d_w = frame.width;
                img.d_h = frame.height;
                img.x_chroma_shift = 1;
                img.y_chroma_shift = 1;
                img.bit_depth = 8;
                img.bps = 12;
                img.planes[0] = frame.y.as_ptr() as *mut u8;
                img.planes[1] = frame.u.as_ptr() as *mut u8;
                img.planes[2] = frame.v.as_ptr() as *mut u8;
                img.stride[0] = frame.width as c_int;
                img.stride[1] = (frame.width / 2) as c_int;
                img.stride[2] = (frame.width / 2) as c_int;
                let flags = if force_keyframe {
                    ffi::VPX_EFLAG_FORCE_KF as i64
                } else {
                    0
                };
                check(ffi::vpx_codec_encode(
                    &mut *self.ctx,
                    &img,
                    self.pts,
                    1,
                    flags as _,
                    ffi::VPX_DL_REALTIME as c_ulong,
                ))?;
                self.pts += 1;
                let mut iter: ffi::vpx_codec_iter_t = ptr::null();
                loop {
                    let pkt = ffi::vpx_codec_get_cx_data(&mut *self.ctx, &mut iter);
                    if pkt.is_null() {
                        break;
                    }
                    if (*pkt).kind != ffi::vpx_codec_cx_pkt_kind::VPX_CODEC_CX_FRAME_PKT {
                        continue;
                    }
                    let f = (*pkt).data.frame;
                    let data = std::slice::from_raw_parts(f.buf as *const u8, f.sz as usize);
                    out.push(EncodedVideoFrame {
                        data: data.to_vec(),
                        keyframe: (f.flags & ffi::VPX_FRAME_IS_KEY) != 0,
                    });
                }
            }
            Ok(out)
        }
    }

    impl Drop for Vp8Encoder {
        fn drop(&mut self) {
            // SAFETY: ctx was initialised by vpx_codec_enc_init_ver and is destroyed once.
            unsafe {
                ffi::vpx_codec_destroy(&mut *self.ctx);
            }
        }
    }

    /// A VP8 decoder.
    pub struct Vp8Decoder {
        ctx: Box<ffi::vpx_codec_ctx_t>,
    }

    // SAFETY: as for the encoder, all access goes through `&mut self`.
    unsafe impl Send for Vp8Decoder {}

    impl Vp8Decoder {
        /// A new decoder.
        pub fn new() -> Result<Self, CodecError> {
            // SAFETY: the config is plain data; ctx is initialised by vpx_codec_dec_init_ver.
            unsafe {
                let cfg = ffi::vpx_codec_dec_cfg_t {
                    threads: 1,
                    w: 0,
                    h: 0,
                };
                let mut ctx = Box::new(MaybeUninit::<ffi::vpx_codec_ctx_t>::zeroed().assume_init());
                check(ffi::vpx_codec_dec_init_ver(
                    &mut *ctx,
                    ffi::vpx_codec_vp8_dx(),
                    &cfg,
                    0,
                    ffi::VPX_DECODER_ABI_VERSION as c_int,
                ))?;
                Ok(Self { ctx })
            }
        }

        /// Decodes one VP8 frame; returns the pictures it produced (normally one).
        pub fn decode(&mut self, data: &[u8]) -> Result<Vec<I420Frame>, CodecError> {
            if data.is_empty() || data.len() > MAX_ENCODED_FRAME {
                return Err(CodecError::BadFrame);
            }
            let mut out = Vec::new();
            // SAFETY: data is a valid slice for the call; libvpx validates the bitstream.
            // Images returned by vpx_codec_get_frame stay valid until the next decode call;
            // we copy their planes row by row using the strides libvpx reports.
            unsafe {
                check(ffi::vpx_codec_decode(
                    &mut *self.ctx,
                    data.as_ptr(),
                    data.len() as _,
                    ptr::null_mut(),
                    0,
                ))?;
                let mut iter: ffi::vpx_codec_iter_t = ptr::null();
                loop {
                    let img = ffi::vpx_codec_get_frame(&mut *self.ctx, &mut iter);
                    if img.is_null() {
                        break;
                    }
                    let img = &*img;
                    if img.fmt != ffi::vpx_img_fmt::VPX_IMG_FMT_I420 {
                        return Err(CodecError::BadFrame);
                    }
                    let (w, h) = (img.d_w & !1, img.d_h & !1);
                    let mut frame = I420Frame::new(w, h)?;
                    copy_plane(&mut frame.y, img.planes[0], img.stride[0], w, h);
                    copy_plane(&mut frame.u, img.planes[1], img.stride[1], w / 2, h / 2);
                    copy_plane(&mut frame.v, img.planes[2], img.stride[2], w / 2, h / 2);
                    out.push(frame);
                }
            }
            Ok(out)
        }
    }

    /// Copies `h` rows of `w` bytes from a strided plane.
    ///
    /// SAFETY (caller): `src` points to a plane of at least `h` rows of `stride >= w` bytes.
    unsafe fn copy_plane(dst: &mut [u8], src: *const u8, stride: c_int, w: u32, h: u32) {
        let (w, h) = (w as usize, h as usize);
        let stride = stride.max(0) as usize;
        if src.is_null() || stride < w {
            return;
        }
        for row in 0..h {
            // SAFETY: see the function contract.
            let line = unsafe { std::slice::from_raw_parts(src.add(row * stride), w) };
            if let Some(d) = dst.get_mut(row * w..(row + 1) * w) {
                d.copy_from_slice(line);
            }
        }
    }

    impl Drop for Vp8Decoder {
        fn drop(&mut self) {
            // SAFETY: ctx was initialised by vpx_codec_dec_init_ver and is destroyed once.
            unsafe {
                ffi::vpx_codec_destroy(&mut *self.ctx);
            }
        }
    }

    fn check(err: ffi::vpx_codec_err_t) -> Result<(), CodecError> {
        if err == ffi::vpx_codec_err_t::VPX_CODEC_OK {
            Ok(())
        } else {
            Err(CodecError::Vpx(format!("{err:?}")))
        }
    }
}
