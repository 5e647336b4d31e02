//! What a backend answers the edge proxy's HTTP/1.1 fast path, from arbitrary bytes: the
//! response head (after any interim responses) and the body's end, found by `Chunked` for a
//! chunked body. The head the client gets must frame the body the way the proxy sends it, and
//! `Chunked` must find the same end however the body is split across reads.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rollout::proxy::h1::{self, Chunked, Framing, Response};

fuzz_target!(|data: &[u8]| {
    // The first byte: HEAD or not, client connection closing or not, and a read size.
    let Some((&flags, mut buf)) = data.split_first() else {
        return;
    };
    let head_method = flags & 1 != 0;
    let close = flags & 2 != 0;
    let step = usize::from(flags >> 2) + 1;
    let mut out = Vec::new();
    let head = loop {
        match h1::parse_response(buf, head_method, close, &mut out) {
            Response::Partial | Response::Invalid => return,
            Response::Interim(n) => {
                assert!(n > 0 && n <= buf.len());
                buf = &buf[n..];
            }
            Response::Final(head) => break head,
        }
    };
    assert!(head.head_len > 0 && head.head_len <= buf.len());

    // What the client reads.
    let mut headers = [httparse::EMPTY_HEADER; h1::MAX_HEADERS + 3];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(&out) {
        Ok(httparse::Status::Complete(n)) => assert_eq!(n, out.len()),
        other => panic!(
            "the client cannot read the head ({other:?}): {:?}",
            String::from_utf8_lossy(&out)
        ),
    }
    assert_eq!((resp.version, resp.code), (Some(1), Some(head.status)));
    let value = |name: &str| -> Vec<&[u8]> {
        resp.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
            .collect()
    };
    let lengths = value("content-length");
    let codings = value("transfer-encoding");
    match head.framing {
        Framing::Empty => {}
        Framing::Length(n) => {
            assert!(codings.is_empty(), "Transfer-Encoding beside a length");
            let want = n.to_string();
            assert!(
                !lengths.is_empty(),
                "a {n}-byte body sent without Content-Length"
            );
            assert!(
                lengths.iter().all(|v| v.trim_ascii() == want.as_bytes()),
                "Content-Length differs from the {n} bytes sent"
            );
        }
        Framing::Chunked | Framing::UntilClose => {
            assert!(lengths.is_empty(), "Content-Length beside chunked");
            assert_eq!(
                codings,
                [&b"chunked"[..]],
                "the client gets one chunked coding"
            );
        }
    }
    assert_eq!(
        value("connection")
            .iter()
            .any(|v| v.eq_ignore_ascii_case(b"close")),
        close
    );

    if head.framing == Framing::Chunked {
        let body = &buf[head.head_len..];
        let mut whole = Chunked::default();
        let all = whole.advance(body);
        let mut split = Chunked::default();
        let mut taken = 0;
        let mut failed = false;
        for piece in body.chunks(step) {
            match split.advance(piece) {
                Ok(n) => {
                    assert!(n <= piece.len());
                    taken += n;
                    if split.is_done() {
                        break;
                    }
                }
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        match all {
            Ok(n) => {
                assert!(!failed, "a split read fails where a whole one does not");
                assert_eq!(whole.is_done(), split.is_done());
                if whole.is_done() {
                    assert_eq!(n, taken, "the body ends elsewhere when read in pieces");
                }
            }
            Err(_) => assert!(failed, "a whole read fails where a split one does not"),
        }
    }
});
