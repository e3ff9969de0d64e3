//! Codecs and media I/O: Opus and VP8 round trips, WAV, Y4M, the test pattern.

use cove_media::codec::{I420Frame, OpusDecoder, OpusEncoder, Vp8Decoder, Vp8Encoder};
use cove_media::source::{
    AudioInput, AudioSource, PatternSource, ToneSource, VideoInput, VideoSource, WavSink,
    WavSource, Y4mSink, Y4mSource, dominant_frequency, pattern_bar_match,
};

#[test]
fn opus_round_trip_keeps_the_tone() {
    let mut tone = ToneSource::new(440.0, 0.5);
    let mut enc = OpusEncoder::new(32_000).unwrap();
    let mut dec = OpusDecoder::new().unwrap();
    let mut out = Vec::new();
    for _ in 0..50 {
        let pkt = enc.encode(&tone.next_frame()).unwrap();
        assert!(!pkt.is_empty() && pkt.len() < 400);
        out.extend_from_slice(dec.decode(&pkt).unwrap());
    }
    assert_eq!(out.len(), 50 * 960);
    let (f, share) = dominant_frequency(&out[4800..], &[220.0, 440.0, 880.0]).unwrap();
    assert_eq!(f, 440.0);
    assert!(share > 0.9);
    assert!(enc.encode(&[0; 10]).is_err());
    // Garbage packets are an error or concealment, never a panic.
    for len in [0usize, 1, 3, 100, 2000] {
        let junk: Vec<u8> = (0..len).map(|i| (i * 91 + 7) as u8).collect();
        let _ = dec.decode(&junk);
    }
}

#[test]
fn vp8_round_trip_keeps_the_pattern() {
    let mut pattern = PatternSource::new(320, 240).unwrap();
    let mut enc = Vp8Encoder::new(320, 240, 15, 800).unwrap();
    let mut dec = Vp8Decoder::new().unwrap();
    let mut decoded = Vec::new();
    for i in 0..20 {
        for f in enc.encode(&pattern.next_frame(), i == 0).unwrap() {
            if i == 0 {
                assert!(f.keyframe);
            }
            decoded.extend(dec.decode(&f.data).unwrap());
        }
    }
    assert!(decoded.len() >= 18);
    let last = decoded.last().unwrap();
    assert!(pattern_bar_match(last, 20) >= 0.875);
    assert!(
        enc.encode(&I420Frame::new(160, 120).unwrap(), false)
            .is_err()
    );
    assert!(dec.decode(&[1, 2, 3, 4, 5]).is_err());
    assert!(dec.decode(&[]).is_err());
}

#[test]
fn wav_and_y4m_files_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("t.wav");
    let mut sink = WavSink::create(&wav).unwrap();
    let mut tone = ToneSource::new(660.0, 0.3);
    for _ in 0..10 {
        sink.write(&tone.next_frame()).unwrap();
    }
    sink.finish().unwrap();
    let mut src = WavSource::open(&wav).unwrap();
    let frame = src.next_frame();
    assert_eq!(
        dominant_frequency(&frame, &[440.0, 660.0, 880.0])
            .unwrap()
            .0,
        660.0
    );
    let parsed: AudioInput = wav.to_str().unwrap().parse().unwrap();
    assert!(parsed.open().is_ok());
    assert_eq!(
        "tone:440".parse::<AudioInput>().unwrap(),
        AudioInput::Tone(440.0)
    );
    assert!("tone:abc".parse::<AudioInput>().is_err());

    let y4m = dir.path().join("t.y4m");
    let mut pattern = PatternSource::new(64, 48).unwrap();
    let frames: Vec<_> = (0..3).map(|_| pattern.next_frame()).collect();
    let mut sink = Y4mSink::create(&y4m, 64, 48, 15).unwrap();
    for f in &frames {
        sink.write(f).unwrap();
    }
    sink.finish().unwrap();
    let mut src = Y4mSource::open(&y4m).unwrap();
    assert_eq!(src.dimensions(), (64, 48));
    for f in &frames {
        assert_eq!(&src.next_frame(), f);
    }
    // Loops at the end.
    assert_eq!(&src.next_frame(), &frames[0]);
    let parsed: VideoInput = y4m.to_str().unwrap().parse().unwrap();
    assert!(parsed.open().is_ok());

    // Garbage files are refused cleanly.
    std::fs::write(dir.path().join("bad.y4m"), b"YUV4MPEG2 W99999 H1\n").unwrap();
    assert!(Y4mSource::open(&dir.path().join("bad.y4m")).is_err());
    std::fs::write(dir.path().join("bad.wav"), b"RIFF....WAVE").unwrap();
    assert!(WavSource::open(&dir.path().join("bad.wav")).is_err());
}

/// Without the `devices` feature, device inputs fail with `DevicesUnavailable`; with it, the
/// camera fails with `DeviceNotImplemented` and an unknown audio device with `UnknownDevice`.
#[test]
fn devices_are_behind_a_feature() {
    use cove_media::MediaIoError;
    use cove_media::source::{AudioInput, AudioOutput};
    let mic = AudioInput::Device("no-such-device-xyz".into()).open().err();
    if cfg!(feature = "devices") {
        assert!(matches!(
            cove_media::source::open_camera().err(),
            Some(MediaIoError::DeviceNotImplemented)
        ));
        assert!(
            matches!(&mic, Some(MediaIoError::UnknownDevice { kind: "input", name, .. }) if name == "no-such-device-xyz"),
            "{mic:?}"
        );
    } else {
        assert!(matches!(
            cove_media::source::open_microphone().err(),
            Some(MediaIoError::DevicesUnavailable)
        ));
        assert!(matches!(
            cove_media::source::open_camera().err(),
            Some(MediaIoError::DevicesUnavailable)
        ));
        assert!(matches!(mic, Some(MediaIoError::DevicesUnavailable)));
    }
    // The CLI syntax: devices, files, tones.
    assert_eq!(
        "default".parse::<AudioInput>().unwrap(),
        AudioInput::Device("default".into())
    );
    assert_eq!(
        "mic".parse::<AudioInput>().unwrap(),
        AudioInput::Device("mic".into())
    );
    assert_eq!(
        "tone".parse::<AudioInput>().unwrap(),
        AudioInput::Tone(440.0)
    );
    assert_eq!(
        "tone:660".parse::<AudioInput>().unwrap(),
        AudioInput::Tone(660.0)
    );
    assert_eq!(
        "voice.wav".parse::<AudioInput>().unwrap(),
        AudioInput::Wav("voice.wav".into())
    );
    assert_eq!(
        "./voice".parse::<AudioInput>().unwrap(),
        AudioInput::Wav("./voice".into())
    );
    assert_eq!("none".parse::<AudioOutput>().unwrap(), AudioOutput::None);
    assert_eq!(
        "out.wav".parse::<AudioOutput>().unwrap(),
        AudioOutput::Wav("out.wav".into())
    );
    assert_eq!(
        "cove_b".parse::<AudioOutput>().unwrap(),
        AudioOutput::Device("cove_b".into())
    );
}

/// Call signals round-trip through the wire codec the core carries them with (inside MLS);
/// control messages round-trip as the JSON of the data channel.
#[test]
fn signalling_values_round_trip() {
    use cove_media::CallSignal;
    use cove_media::session::ControlMessage;
    for s in [
        CallSignal::Offer {
            sdp: "v=0\r\n".into(),
            fingerprint: "sha-256 AB:CD".into(),
            video: true,
        },
        CallSignal::Answer {
            sdp: "v=0\r\n".into(),
            fingerprint: "sha-256 AB:CD".into(),
        },
        CallSignal::Candidate {
            candidate: "candidate:1 1 udp 1 127.0.0.1 9 typ host".into(),
            sdp_mid: Some("0".into()),
            sdp_mline_index: Some(0),
            username_fragment: None,
        },
    ] {
        let bytes = cove_wire::encode(&s).unwrap();
        assert_eq!(cove_wire::decode::<CallSignal>(&bytes).unwrap(), s);
    }
    for m in [
        ControlMessage::Hangup,
        ControlMessage::Mute {
            audio: true,
            video: false,
        },
        ControlMessage::Text { text: "hi".into() },
        ControlMessage::KeyframeRequest,
    ] {
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<ControlMessage>(&json).unwrap(), m);
    }
    assert_eq!(
        serde_json::to_string(&ControlMessage::KeyframeRequest).unwrap(),
        r#"{"type":"keyframe_request"}"#
    );
}
